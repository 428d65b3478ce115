//! qcow2 → raw, streamed: the HVM install path (issue 14) reads an upstream's `disk1.img` (Ubuntu's
//! is `qemu-img convert -c -O qcow2`, a compressed whole disk) from the cache file and hands the raw
//! disk to the bundler, memory flat, no raw copy on disk. No well-kept crate reads qcow2 as an
//! untrusted stream, so this is a small reader of the format as qemu's
//! `docs/interop/qcow2.txt` ("the spec" below) defines it: versions 2 and 3; unallocated, zero,
//! standard and deflate-compressed clusters.
//!
//! Nothing in the file is trusted: the header, every table entry and every host range is checked
//! before it is used, and a refusal is one [`Qcow2Error`] line naming the structure and its bytes.
//! Refused: a bad magic or version; a backing file, an external data file, encryption; unknown
//! incompatible features, extended L2 entries, a "corrupt" mark; zstd compression (no zstd crate
//! here); a virtual size past [`crate::limits::MAX_QCOW2_VIRTUAL_BYTES`]; tables past
//! [`crate::limits::MAX_QCOW2_TABLE_BYTES`]; any
//! table or cluster past the end of the file or misaligned; reserved bits set; a table or cluster
//! that overlaps the header, the L1 table, the refcount table, an L2 table or a refcount block
//! (which is also what a cycle is in qcow2: a table naming itself or another table as guest data,
//! or two L1 entries sharing one L2 table); a compressed cluster that does not inflate to exactly
//! one cluster. Two guest clusters may share one data cluster (the refcount allows it), and the
//! internal snapshots' tables are not read: only the active L1 table is the disk.
//!
//! Memory: the L1 table's used part and a sorted list of the metadata clusters (both bounded by
//! [`crate::limits::MAX_QCOW2_TABLE_BYTES`]), one L2 table, and a cluster or two of buffers (2 MiB
//! clusters at most).
//!
//! The seam for issue 16 (splicing the upstream's deflate data, `bundle/splice/cluster.rs`):
//! [`Qcow2Image::cluster`] judges guest clusters in order and names each one's [`ClusterKind`];
//! each compressed cluster is an independent raw deflate stream of exactly one cluster, whose
//! bytes [`Qcow2Image::compressed_data`] gives (the splicer inflates and copies them) and
//! [`Qcow2Image::read_cluster`] checks and inflates. [`Qcow2Reader`] is the raw disk.
//!
//! The files: `header.rs` judges the header, its extensions and where the fixed tables lie;
//! `walk.rs` opens an image and walks its clusters, judging each table entry; `reader.rs` is the
//! raw disk as a [`Read`](std::io::Read) (and the fuzz harness); `tests.rs` builds tiny images by hand.

mod header;
mod reader;
mod walk;

#[cfg(test)]
mod tests;

use flate2::DecompressError;
use std::fmt;
use std::io;

pub use reader::{Qcow2Reader, fuzz_qcow2};
pub use walk::{Clusters, Qcow2Image};

/// "QFI\xfb" (spec: Header, bytes 0-3).
const MAGIC: u32 = 0x5146_49fb;
/// Spec: cluster_bits "must not be less than 9"; qemu opens clusters of at most 2 MiB.
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
/// A version 2 header is exactly 72 bytes; a version 3 header at least 104.
const V2_HEADER_BYTES: usize = 72;
const V3_MIN_HEADER_BYTES: usize = 104;
/// Compressed clusters are addressed in 512-byte sectors.
const SECTOR: u64 = 512;

// incompatible_features bits (spec: Header, bytes 72-79).
const INCOMPATIBLE_DIRTY: u64 = 1 << 0;
const INCOMPATIBLE_CORRUPT: u64 = 1 << 1;
const INCOMPATIBLE_EXTERNAL_DATA: u64 = 1 << 2;
const INCOMPATIBLE_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPATIBLE_EXTENDED_L2: u64 = 1 << 4;
const INCOMPATIBLE_KNOWN: u64 = INCOMPATIBLE_DIRTY
    | INCOMPATIBLE_CORRUPT
    | INCOMPATIBLE_EXTERNAL_DATA
    | INCOMPATIBLE_COMPRESSION_TYPE
    | INCOMPATIBLE_EXTENDED_L2;

// Header extension types (spec: Header extensions).
const EXTENSION_END: u32 = 0;
const EXTENSION_FULL_DISK_ENCRYPTION: u32 = 0x0537_be77;
const EXTENSION_EXTERNAL_DATA_FILE: u32 = 0x4441_5441;

/// compression_type values (spec: Additional fields, byte 104).
const COMPRESSION_ZSTD: u8 = 1;

// Table entries (spec: Cluster mapping, Host cluster management).
/// Bits 9-55: the host offset of an L2 table or standard cluster.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const FLAG_COPIED: u64 = 1 << 63;
const FLAG_COMPRESSED: u64 = 1 << 62;
const FLAG_ZERO: u64 = 1;
const L1_RESERVED: u64 = !(OFFSET_MASK | FLAG_COPIED);
const L2_STANDARD_RESERVED: u64 = !(OFFSET_MASK | FLAG_COPIED | FLAG_COMPRESSED | FLAG_ZERO);
const REFCOUNT_TABLE_RESERVED: u64 = 0x1ff;

/// A structure of the image file, as a refusal names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    Header,
    L1Table,
    RefcountTable,
    RefcountBlock { index: u64 },
    L2Table { l1_index: u64 },
    DataCluster { guest_offset: u64 },
    CompressedCluster { guest_offset: u64 },
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Region::Header => write!(f, "the header"),
            Region::L1Table => write!(f, "the L1 table"),
            Region::RefcountTable => write!(f, "the refcount table"),
            Region::RefcountBlock { index } => write!(f, "refcount block {index}"),
            Region::L2Table { l1_index } => write!(f, "the L2 table of L1 entry {l1_index}"),
            Region::DataCluster { guest_offset } => {
                write!(f, "the data cluster of guest offset {guest_offset}")
            }
            Region::CompressedCluster { guest_offset } => {
                write!(f, "the compressed cluster of guest offset {guest_offset}")
            }
        }
    }
}

/// Why a qcow2 image is refused (or could not be read): one line naming what and where.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("reading {what} at byte {offset}: {source}")]
    Io {
        what: Region,
        offset: u64,
        source: io::Error,
    },
    #[error("finding the length of the image file: {source}")]
    Length { source: io::Error },
    #[error("{what} at bytes {offset}..{end} is cut short: the file ends at byte {file_len}")]
    ShortRead {
        what: Region,
        offset: u64,
        end: u64,
        file_len: u64,
    },
    #[error("not a qcow2 image: its magic is {found:#010x}, not 0x514649fb (\"QFI\\xfb\")")]
    BadMagic { found: u32 },
    #[error("qcow2 version {version} is not supported (2 and 3 are)")]
    UnsupportedVersion { version: u32 },
    #[error("the header's {field} is {value}: {reason}")]
    BadHeader {
        field: &'static str,
        value: u64,
        reason: &'static str,
    },
    #[error(
        "the image has a backing file (a {len}-byte name at byte {offset}): only a standalone image can be installed"
    )]
    BackingFile { offset: u64, len: u32 },
    #[error(
        "the image keeps its data in an external data file ({how}): only a standalone image can be installed"
    )]
    ExternalDataFile { how: &'static str },
    #[error("the image is encrypted ({how}): it cannot be installed")]
    Encrypted { how: String },
    #[error("the image sets incompatible feature bits {bits:#x} that this reader does not know")]
    UnknownIncompatibleFeatures { bits: u64 },
    #[error(
        "the image uses {feature} (incompatible feature bit {bit}), which this reader does not read"
    )]
    UnsupportedFeature { feature: &'static str, bit: u32 },
    #[error(
        "the image's compressed clusters use {name} (compression_type {kind}), which this reader does not decode"
    )]
    UnsupportedCompression { kind: u8, name: &'static str },
    #[error("the virtual size of {size} bytes is past the cap of {cap} bytes")]
    VirtualSizeTooLarge { size: u64, cap: u64 },
    #[error("{what} of {bytes} bytes is past the cap of {cap} bytes")]
    TableTooLarge { what: Region, bytes: u64, cap: u64 },
    #[error("the L1 table has {l1_size} entries, fewer than the {needed} the virtual size needs")]
    L1TooSmall { l1_size: u32, needed: u64 },
    #[error("{what} at bytes {offset}..{end} lies beyond the end of the file ({file_len} bytes)")]
    BeyondEnd {
        what: Region,
        offset: u64,
        end: u64,
        file_len: u64,
    },
    #[error("{what} at byte {offset} is not aligned to the {cluster_size}-byte cluster")]
    Misaligned {
        what: Region,
        offset: u64,
        cluster_size: u64,
    },
    #[error("{what}: its table entry {entry:#018x} sets reserved bits")]
    ReservedBits { what: Region, entry: u64 },
    #[error("{what} at bytes {offset}..{end} overlaps {other}")]
    Overlap {
        what: Region,
        offset: u64,
        end: u64,
        other: Region,
    },
    #[error("{what} at byte {host_offset} holds broken deflate data: {source}")]
    Inflate {
        what: Region,
        host_offset: u64,
        source: DecompressError,
    },
    #[error(
        "{what} at byte {host_offset} inflates to only {produced} of the {cluster_size} bytes of a cluster"
    )]
    InflateShort {
        what: Region,
        host_offset: u64,
        produced: u64,
        cluster_size: u64,
    },
    #[error("{what} at byte {host_offset} inflates to more than one {cluster_size}-byte cluster")]
    InflateLong {
        what: Region,
        host_offset: u64,
        cluster_size: u64,
    },
    #[error(
        "{what} at byte {host_offset} inflates to one cluster but its deflate stream does not end within its {len} bytes"
    )]
    InflateUnterminated {
        what: Region,
        host_offset: u64,
        len: u64,
    },
}

/// A compressed cluster's deflate data in the file: from `host_offset`, at most `len` bytes (the
/// sectors the L2 entry names; the stream may end before, and the file may end up to 511 bytes
/// before: [`Qcow2Image::compressed_data`] gives the bytes present).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressedCluster {
    pub host_offset: u64,
    pub len: u64,
}

/// What a guest cluster is made of. Without a backing file (always: one is refused), an
/// unallocated cluster reads as zeros, like a zero one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    /// No L2 table, or an L2 entry of 0.
    Unallocated,
    /// The v3 zero flag (a preallocated host cluster, if any, is not read).
    Zero,
    /// Stored as is: `cluster_size` bytes at `host_offset` (fewer for the last, short cluster).
    Data { host_offset: u64 },
    /// One raw deflate stream that inflates to exactly one cluster.
    Compressed(CompressedCluster),
}

/// One guest cluster, in guest order: `index` × `cluster_size` = `guest_offset`; `len` is the
/// cluster size except for a last cluster cut by the virtual size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestCluster {
    pub index: u64,
    pub guest_offset: u64,
    pub len: u64,
    pub kind: ClusterKind,
}

impl GuestCluster {
    /// Whether the cluster reads as zeros without a read of the file.
    pub fn reads_as_zeros(&self) -> bool {
        matches!(self.kind, ClusterKind::Unallocated | ClusterKind::Zero)
    }

    fn region(&self) -> Region {
        match self.kind {
            ClusterKind::Compressed(_) => Region::CompressedCluster {
                guest_offset: self.guest_offset,
            },
            _ => Region::DataCluster {
                guest_offset: self.guest_offset,
            },
        }
    }
}
