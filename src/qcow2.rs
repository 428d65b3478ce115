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
//! here); a virtual size past [`MAX_QCOW2_VIRTUAL_BYTES`]; tables past [`MAX_QCOW2_TABLE_BYTES`]; any
//! table or cluster past the end of the file or misaligned; reserved bits set; a table or cluster
//! that overlaps the header, the L1 table, the refcount table, an L2 table or a refcount block
//! (which is also what a cycle is in qcow2: a table naming itself or another table as guest data,
//! or two L1 entries sharing one L2 table); a compressed cluster that does not inflate to exactly
//! one cluster. Two guest clusters may share one data cluster (the refcount allows it), and the
//! internal snapshots' tables are not read: only the active L1 table is the disk.
//!
//! Memory: the L1 table's used part and a sorted list of the metadata clusters (both bounded by
//! [`MAX_QCOW2_TABLE_BYTES`]), one L2 table, and a cluster or two of buffers (2 MiB clusters at most).
//!
//! The seam for issue 16 (splicing the upstream's deflate data): [`Qcow2Image::clusters`] walks
//! guest clusters in order and names each one's [`ClusterKind`]; each compressed cluster is an
//! independent raw deflate stream of exactly one cluster, whose bytes [`Qcow2Image::compressed_data`]
//! gives and [`Qcow2Image::read_cluster`] checks and inflates. [`Qcow2Reader`] is the raw disk.

use crate::limits::{MAX_QCOW2_TABLE_BYTES, MAX_QCOW2_VIRTUAL_BYTES};
use flate2::{Decompress, DecompressError, FlushDecompress, Status};
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};

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

/// The validated header: where everything is, and how big.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    version: u32,
    cluster_bits: u32,
    virtual_size: u64,
    file_len: u64,
    l1_offset: u64,
    l1_size: u32,
    /// L1 entries the virtual size uses (the rest, if any, map a snapshot's VM state).
    l1_used: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

impl Layout {
    /// Parses and judges the header from the file's first cluster (`first`: the first
    /// `cluster_size` bytes, fewer if the file is shorter; at least [`V2_HEADER_BYTES`]).
    fn parse(first: &[u8], file_len: u64) -> Result<Layout, Qcow2Error> {
        let short = |end: usize| Qcow2Error::ShortRead {
            what: Region::Header,
            offset: 0,
            end: end as u64,
            file_len,
        };
        if first.len() < V2_HEADER_BYTES {
            return Err(short(V2_HEADER_BYTES));
        }
        let magic = be32(first, 0);
        if magic != MAGIC {
            return Err(Qcow2Error::BadMagic { found: magic });
        }
        let version = be32(first, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::UnsupportedVersion { version });
        }
        let cluster_bits = be32(first, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Qcow2Error::BadHeader {
                field: "cluster_bits",
                value: cluster_bits.into(),
                reason: "a cluster is 512 B (9) to 2 MiB (21)",
            });
        }
        let cluster_size = 1u64 << cluster_bits;
        let header_len = if version == 3 {
            if first.len() < V3_MIN_HEADER_BYTES {
                return Err(short(V3_MIN_HEADER_BYTES));
            }
            let header_len = be32(first, 100);
            let bad = |reason| Qcow2Error::BadHeader {
                field: "header_length",
                value: header_len.into(),
                reason,
            };
            if (header_len as usize) < V3_MIN_HEADER_BYTES || !header_len.is_multiple_of(8) {
                return Err(bad(
                    "a version 3 header is at least 104 bytes, a multiple of 8",
                ));
            }
            if u64::from(header_len) > cluster_size {
                return Err(bad("the header must fit in the first cluster"));
            }
            if header_len as usize > first.len() {
                return Err(short(header_len as usize));
            }
            header_len as usize
        } else {
            V2_HEADER_BYTES
        };
        let header = &first[..header_len];

        if version == 3 {
            judge_features(header)?;
        }
        let crypt_method = be32(header, 32);
        if crypt_method != 0 {
            let name = match crypt_method {
                1 => "AES",
                2 => "LUKS",
                _ => "an unknown method",
            };
            return Err(Qcow2Error::Encrypted {
                how: format!("crypt_method {crypt_method}, {name}"),
            });
        }
        let backing_file_offset = be64(header, 8);
        if backing_file_offset != 0 {
            return Err(Qcow2Error::BackingFile {
                offset: backing_file_offset,
                len: be32(header, 16),
            });
        }
        judge_extensions(&first[header_len..])?;

        let virtual_size = be64(header, 24);
        if virtual_size > MAX_QCOW2_VIRTUAL_BYTES {
            return Err(Qcow2Error::VirtualSizeTooLarge {
                size: virtual_size,
                cap: MAX_QCOW2_VIRTUAL_BYTES,
            });
        }
        let clusters = virtual_size.div_ceil(cluster_size);
        let l1_used = clusters.div_ceil(cluster_size / 8);
        let l1_size = be32(header, 36);
        if l1_used > u64::from(l1_size) {
            return Err(Qcow2Error::L1TooSmall {
                l1_size,
                needed: l1_used,
            });
        }
        if l1_used * 8 > MAX_QCOW2_TABLE_BYTES {
            return Err(Qcow2Error::TableTooLarge {
                what: Region::L1Table,
                bytes: l1_used * 8,
                cap: MAX_QCOW2_TABLE_BYTES,
            });
        }
        let refcount_table_clusters = be32(header, 56);
        let refcount_table_bytes = u64::from(refcount_table_clusters) << cluster_bits;
        if refcount_table_bytes > MAX_QCOW2_TABLE_BYTES {
            return Err(Qcow2Error::TableTooLarge {
                what: Region::RefcountTable,
                bytes: refcount_table_bytes,
                cap: MAX_QCOW2_TABLE_BYTES,
            });
        }
        let layout = Layout {
            version,
            cluster_bits,
            virtual_size,
            file_len,
            l1_offset: be64(header, 40),
            l1_size,
            l1_used,
            refcount_table_offset: be64(header, 48),
            refcount_table_clusters,
        };
        layout.judge_tables()?;
        Ok(layout)
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    fn cluster_count(&self) -> u64 {
        self.virtual_size.div_ceil(self.cluster_size())
    }

    /// The header cluster, the L1 table and the refcount table, each as whole clusters.
    fn fixed_regions(&self) -> [(Region, u64, u64); 3] {
        let cluster_size = self.cluster_size();
        let round = |end: u64| end.div_ceil(cluster_size).saturating_mul(cluster_size);
        let l1_end = self.l1_offset.saturating_add(u64::from(self.l1_size) * 8);
        let refcount_end = self
            .refcount_table_offset
            .saturating_add(u64::from(self.refcount_table_clusters) << self.cluster_bits);
        [
            (Region::Header, 0, cluster_size),
            (Region::L1Table, self.l1_offset, round(l1_end)),
            (
                Region::RefcountTable,
                self.refcount_table_offset,
                round(refcount_end),
            ),
        ]
    }

    /// The L1 and refcount tables: aligned, inside the file, apart from the header and each other.
    fn judge_tables(&self) -> Result<(), Qcow2Error> {
        let tables = [
            (Region::L1Table, self.l1_offset, u64::from(self.l1_size) * 8),
            (
                Region::RefcountTable,
                self.refcount_table_offset,
                u64::from(self.refcount_table_clusters) << self.cluster_bits,
            ),
        ];
        for (what, offset, bytes) in tables {
            if bytes == 0 {
                continue;
            }
            self.judge_placement(what, offset, bytes)?;
        }
        Ok(())
    }

    /// A table or cluster of `bytes` at `offset`: cluster-aligned, inside the file, and clear of
    /// the fixed regions other than its own.
    fn judge_placement(&self, what: Region, offset: u64, bytes: u64) -> Result<(), Qcow2Error> {
        if offset & (self.cluster_size() - 1) != 0 {
            return Err(Qcow2Error::Misaligned {
                what,
                offset,
                cluster_size: self.cluster_size(),
            });
        }
        let end = offset.saturating_add(bytes);
        if end > self.file_len {
            return Err(Qcow2Error::BeyondEnd {
                what,
                offset,
                end,
                file_len: self.file_len,
            });
        }
        self.judge_apart(what, offset, end)
    }

    /// `offset..end` clear of the header cluster, the L1 table and the refcount table (a
    /// structure is not judged against itself).
    fn judge_apart(&self, what: Region, offset: u64, end: u64) -> Result<(), Qcow2Error> {
        for (other, start, stop) in self.fixed_regions() {
            if other != what && start < stop && offset < stop && start < end {
                return Err(Qcow2Error::Overlap {
                    what,
                    offset,
                    end,
                    other,
                });
            }
        }
        Ok(())
    }
}

/// The v3 feature bits and compression type: what this reader can honour.
fn judge_features(header: &[u8]) -> Result<(), Qcow2Error> {
    let incompatible = be64(header, 72);
    let unknown = incompatible & !INCOMPATIBLE_KNOWN;
    if unknown != 0 {
        return Err(Qcow2Error::UnknownIncompatibleFeatures { bits: unknown });
    }
    if incompatible & INCOMPATIBLE_EXTERNAL_DATA != 0 {
        return Err(Qcow2Error::ExternalDataFile {
            how: "incompatible feature bit 2",
        });
    }
    if incompatible & INCOMPATIBLE_CORRUPT != 0 {
        return Err(Qcow2Error::UnsupportedFeature {
            feature: "the \"corrupt\" mark (qemu-img check -r all repairs it)",
            bit: 1,
        });
    }
    if incompatible & INCOMPATIBLE_EXTENDED_L2 != 0 {
        return Err(Qcow2Error::UnsupportedFeature {
            feature: "extended L2 entries (subclusters)",
            bit: 4,
        });
    }
    // The dirty bit (0) only says the refcounts may be stale; they are not read here.
    let compression = header.get(104).copied().unwrap_or(0);
    let declared = incompatible & INCOMPATIBLE_COMPRESSION_TYPE != 0;
    match (declared, compression) {
        (false, 0) => Ok(()),
        (false, kind) => Err(Qcow2Error::BadHeader {
            field: "compression_type",
            value: kind.into(),
            reason: "non-zero without incompatible feature bit 3",
        }),
        (true, 0) => Err(Qcow2Error::BadHeader {
            field: "compression_type",
            value: 0,
            reason: "incompatible feature bit 3 says it is not deflate (0)",
        }),
        (true, COMPRESSION_ZSTD) => Err(Qcow2Error::UnsupportedCompression {
            kind: COMPRESSION_ZSTD,
            name: "zstd",
        }),
        (true, kind) => Err(Qcow2Error::UnsupportedCompression {
            kind,
            name: "an unknown compression",
        }),
    }
}

/// The header extensions (after the header, inside the first cluster, until an end marker or
/// the cluster's end): encryption and an external data file are refused, the rest ignored.
fn judge_extensions(area: &[u8]) -> Result<(), Qcow2Error> {
    let mut at = 0usize;
    while at < area.len() {
        let bad = |value: usize| Qcow2Error::BadHeader {
            field: "header extension area",
            value: value as u64,
            reason: "an extension runs past the first cluster",
        };
        if area.len() - at < 8 {
            return Err(bad(at));
        }
        let kind = be32(area, at);
        let len = be32(area, at + 4) as usize;
        if kind == EXTENSION_END {
            return Ok(());
        }
        let end = (at + 8).checked_add(len.next_multiple_of(8));
        let Some(end) = end.filter(|&end| end <= area.len()) else {
            return Err(bad(at));
        };
        match kind {
            EXTENSION_FULL_DISK_ENCRYPTION => {
                return Err(Qcow2Error::Encrypted {
                    how: "a full disk encryption header extension".into(),
                });
            }
            EXTENSION_EXTERNAL_DATA_FILE => {
                return Err(Qcow2Error::ExternalDataFile {
                    how: "an external data file name header extension",
                });
            }
            _ => {}
        }
        at = end;
    }
    Ok(())
}

/// The file, read at offsets; a read that follows the last one does not seek.
struct HostFile<R> {
    inner: R,
    len: u64,
    position: Option<u64>,
}

impl<R: Read + Seek> HostFile<R> {
    fn read_exact_at(
        &mut self,
        offset: u64,
        buf: &mut [u8],
        what: Region,
    ) -> Result<(), Qcow2Error> {
        let io = |source| Qcow2Error::Io {
            what,
            offset,
            source,
        };
        if self.position != Some(offset) {
            self.position = None;
            self.inner.seek(SeekFrom::Start(offset)).map_err(io)?;
        }
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => {
                    self.position = None;
                    return Err(Qcow2Error::ShortRead {
                        what,
                        offset,
                        end: offset + buf.len() as u64,
                        file_len: self.len,
                    });
                }
                Ok(n) => done += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.position = None;
                    return Err(io(error));
                }
            }
        }
        self.position = Some(offset + buf.len() as u64);
        Ok(())
    }
}

/// A cluster that holds metadata other than the fixed regions: an L2 table or a refcount block.
#[derive(Debug, Clone, Copy)]
struct MetadataCluster {
    offset: u64,
    owner: Region,
}

/// An opened, validated qcow2 image: its header and active L1 table judged, its L2 tables and
/// refcount blocks placed. Clusters are judged as they are walked or read.
pub struct Qcow2Image<R> {
    file: HostFile<R>,
    layout: Layout,
    /// The used L1 entries' L2 table offsets (0: none).
    l1: Vec<u64>,
    /// L2 tables and refcount blocks, sorted by offset, none shared.
    metadata: Vec<MetadataCluster>,
    /// The L2 table last read, and its L1 index.
    l2_table: Vec<u8>,
    l2_index: Option<u64>,
    /// The last compressed cluster's deflate data, and a cluster to inflate a short one into.
    compressed: Vec<u8>,
    scratch: Vec<u8>,
    inflater: Decompress,
}

impl<R: Read + Seek> Qcow2Image<R> {
    /// Reads and judges the header, its extensions, the L1 table and the refcount table.
    pub fn open(mut file: R) -> Result<Self, Qcow2Error> {
        let file_len = file
            .seek(SeekFrom::End(0))
            .map_err(|source| Qcow2Error::Length { source })?;
        let mut file = HostFile {
            inner: file,
            len: file_len,
            position: None,
        };
        let mut first = vec![0; V2_HEADER_BYTES.min(file_len as usize)];
        file.read_exact_at(0, &mut first, Region::Header)?;
        if first.len() >= V2_HEADER_BYTES && be32(&first, 0) == MAGIC {
            let cluster_bits = be32(&first, 20);
            if (MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
                first.resize((1u64 << cluster_bits).min(file_len) as usize, 0);
                file.read_exact_at(0, &mut first, Region::Header)?;
            }
        }
        let layout = Layout::parse(&first, file_len)?;
        drop(first);

        let mut image = Qcow2Image {
            file,
            l1: Vec::new(),
            metadata: Vec::new(),
            l2_table: Vec::new(),
            l2_index: None,
            compressed: Vec::new(),
            scratch: Vec::new(),
            inflater: Decompress::new(false),
            layout,
        };
        image.read_l1()?;
        image.read_refcount_table()?;
        image.place_metadata()?;
        Ok(image)
    }

    fn read_l1(&mut self) -> Result<(), Qcow2Error> {
        let layout = &self.layout;
        let mut bytes = vec![0; (layout.l1_used * 8) as usize];
        self.file
            .read_exact_at(layout.l1_offset, &mut bytes, Region::L1Table)?;
        let mut l1 = Vec::with_capacity(layout.l1_used as usize);
        for (l1_index, entry) in bytes.chunks_exact(8).enumerate() {
            let entry = be64(entry, 0);
            let what = Region::L2Table {
                l1_index: l1_index as u64,
            };
            if entry & L1_RESERVED != 0 {
                return Err(Qcow2Error::ReservedBits { what, entry });
            }
            let offset = entry & OFFSET_MASK;
            if offset != 0 {
                layout.judge_placement(what, offset, layout.cluster_size())?;
                self.metadata.push(MetadataCluster {
                    offset,
                    owner: what,
                });
            }
            l1.push(offset);
        }
        self.l1 = l1;
        Ok(())
    }

    fn read_refcount_table(&mut self) -> Result<(), Qcow2Error> {
        let layout = &self.layout;
        let bytes = u64::from(layout.refcount_table_clusters) << layout.cluster_bits;
        let mut table = vec![0; bytes as usize];
        self.file.read_exact_at(
            layout.refcount_table_offset,
            &mut table,
            Region::RefcountTable,
        )?;
        for (index, entry) in table.chunks_exact(8).enumerate() {
            let entry = be64(entry, 0);
            let what = Region::RefcountBlock {
                index: index as u64,
            };
            if entry & REFCOUNT_TABLE_RESERVED != 0 {
                return Err(Qcow2Error::ReservedBits { what, entry });
            }
            if entry != 0 {
                layout.judge_placement(what, entry, layout.cluster_size())?;
                self.metadata.push(MetadataCluster {
                    offset: entry,
                    owner: what,
                });
            }
        }
        Ok(())
    }

    /// Sorts the metadata clusters and refuses any cluster named twice.
    fn place_metadata(&mut self) -> Result<(), Qcow2Error> {
        self.metadata.sort_by_key(|cluster| cluster.offset);
        for pair in self.metadata.windows(2) {
            if pair[0].offset == pair[1].offset {
                return Err(Qcow2Error::Overlap {
                    what: pair[1].owner,
                    offset: pair[1].offset,
                    end: pair[1].offset + self.layout.cluster_size(),
                    other: pair[0].owner,
                });
            }
        }
        Ok(())
    }

    /// The qcow2 version, 2 or 3.
    pub fn version(&self) -> u32 {
        self.layout.version
    }

    /// The size of the raw disk, in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.layout.virtual_size
    }

    /// The cluster size, in bytes (512 B to 2 MiB).
    pub fn cluster_size(&self) -> u64 {
        self.layout.cluster_size()
    }

    /// Guest clusters in the disk: the virtual size over the cluster size, rounded up.
    pub fn cluster_count(&self) -> u64 {
        self.layout.cluster_count()
    }

    /// The guest clusters in guest order, each judged as it comes; the walk ends at the first
    /// refusal.
    pub fn clusters(&mut self) -> Clusters<'_, R> {
        Clusters {
            image: self,
            next: 0,
            failed: false,
        }
    }

    /// Guest cluster `index` (below [`Self::cluster_count`]), judged.
    pub fn cluster(&mut self, index: u64) -> Result<GuestCluster, Qcow2Error> {
        let layout = &self.layout;
        let cluster_size = layout.cluster_size();
        debug_assert!(index < layout.cluster_count());
        let guest_offset = index << layout.cluster_bits;
        let len = cluster_size.min(layout.virtual_size.saturating_sub(guest_offset));
        let l2_bits = layout.cluster_bits - 3;
        let l1_index = index >> l2_bits;
        let l2_offset = self.l1.get(l1_index as usize).copied().unwrap_or(0);
        let kind = if l2_offset == 0 {
            ClusterKind::Unallocated
        } else {
            if self.l2_index != Some(l1_index) {
                self.l2_index = None;
                self.l2_table.resize(cluster_size as usize, 0);
                self.file.read_exact_at(
                    l2_offset,
                    &mut self.l2_table,
                    Region::L2Table { l1_index },
                )?;
                self.l2_index = Some(l1_index);
            }
            let at = ((index & ((1 << l2_bits) - 1)) * 8) as usize;
            self.classify(be64(&self.l2_table, at), guest_offset, len)?
        };
        Ok(GuestCluster {
            index,
            guest_offset,
            len,
            kind,
        })
    }

    /// An L2 entry, judged: what the cluster is and where its bytes are.
    fn classify(&self, entry: u64, guest_offset: u64, len: u64) -> Result<ClusterKind, Qcow2Error> {
        let layout = &self.layout;
        if entry & FLAG_COMPRESSED != 0 {
            let what = Region::CompressedCluster { guest_offset };
            let offset_bits = 62 - (layout.cluster_bits - 8);
            let host_offset = entry & ((1 << offset_bits) - 1);
            if host_offset >> 56 != 0 {
                return Err(Qcow2Error::ReservedBits { what, entry });
            }
            let sectors = ((entry & !(FLAG_COPIED | FLAG_COMPRESSED)) >> offset_bits) + 1;
            let compressed_len = sectors * SECTOR - (host_offset % SECTOR);
            let end = host_offset + compressed_len;
            // qemu pads the file to whole sectors; a file cut inside the last one still reads.
            if host_offset >= layout.file_len || end > layout.file_len.next_multiple_of(SECTOR) {
                return Err(Qcow2Error::BeyondEnd {
                    what,
                    offset: host_offset,
                    end,
                    file_len: layout.file_len,
                });
            }
            self.judge_apart_from_metadata(what, host_offset, end)?;
            return Ok(ClusterKind::Compressed(CompressedCluster {
                host_offset,
                len: compressed_len,
            }));
        }
        let what = Region::DataCluster { guest_offset };
        if entry & L2_STANDARD_RESERVED != 0 || (entry & FLAG_ZERO != 0 && layout.version < 3) {
            return Err(Qcow2Error::ReservedBits { what, entry });
        }
        if entry & FLAG_ZERO != 0 {
            return Ok(ClusterKind::Zero);
        }
        let host_offset = entry & OFFSET_MASK;
        if host_offset == 0 && entry & FLAG_COPIED == 0 {
            return Ok(ClusterKind::Unallocated);
        }
        layout.judge_placement(what, host_offset, len)?;
        self.judge_apart_from_metadata(what, host_offset, host_offset + len)?;
        Ok(ClusterKind::Data { host_offset })
    }

    /// `offset..end` clear of the fixed regions and of every L2 table and refcount block.
    fn judge_apart_from_metadata(
        &self,
        what: Region,
        offset: u64,
        end: u64,
    ) -> Result<(), Qcow2Error> {
        self.layout.judge_apart(what, offset, end)?;
        let cluster_size = self.layout.cluster_size();
        let first = self
            .metadata
            .partition_point(|cluster| cluster.offset + cluster_size <= offset);
        match self.metadata.get(first) {
            Some(cluster) if cluster.offset < end => Err(Qcow2Error::Overlap {
                what,
                offset,
                end,
                other: cluster.owner,
            }),
            _ => Ok(()),
        }
    }

    /// A compressed cluster's deflate data as the file holds it (its sectors, cut at the end of
    /// the file): the stream, possibly followed by the head of the next cluster's. Empty for a
    /// cluster of any other kind.
    pub fn compressed_data(&mut self, cluster: &GuestCluster) -> Result<&[u8], Qcow2Error> {
        let ClusterKind::Compressed(compressed) = cluster.kind else {
            return Ok(&[]);
        };
        // At most two clusters (the sector count has cluster_bits - 8 bits), whatever is asked.
        let present = compressed
            .len
            .min(2 * self.cluster_size())
            .min(self.layout.file_len.saturating_sub(compressed.host_offset));
        self.compressed.resize(present as usize, 0);
        self.file.read_exact_at(
            compressed.host_offset,
            &mut self.compressed,
            cluster.region(),
        )?;
        Ok(&self.compressed)
    }

    /// Fills `out[..cluster.len]` with the cluster's guest bytes, a compressed one inflated and
    /// checked to be exactly one cluster. Panics if `out` is shorter than `cluster.len`.
    pub fn read_cluster(
        &mut self,
        cluster: &GuestCluster,
        out: &mut [u8],
    ) -> Result<(), Qcow2Error> {
        let len = cluster.len as usize;
        let out = &mut out[..len];
        match cluster.kind {
            ClusterKind::Unallocated | ClusterKind::Zero => out.fill(0),
            ClusterKind::Data { host_offset } => {
                self.file
                    .read_exact_at(host_offset, out, cluster.region())?
            }
            ClusterKind::Compressed(compressed) => {
                let cluster_size = self.cluster_size() as usize;
                self.compressed_data(cluster)?;
                let mut scratch = std::mem::take(&mut self.scratch);
                let result = if len == cluster_size {
                    inflate_cluster(&mut self.inflater, &self.compressed, out)
                } else {
                    scratch.resize(cluster_size, 0);
                    let result =
                        inflate_cluster(&mut self.inflater, &self.compressed, &mut scratch);
                    out.copy_from_slice(&scratch[..len]);
                    result
                };
                self.scratch = scratch;
                result
                    .map_err(|fault| fault.into_error(cluster, compressed, cluster_size as u64))?
            }
        }
        Ok(())
    }

    /// The raw disk as a [`Read`].
    pub fn into_reader(self) -> Qcow2Reader<R> {
        Qcow2Reader {
            image: self,
            position: 0,
            current: None,
            buffer: Vec::new(),
            buffered: None,
        }
    }
}

/// The walk of [`Qcow2Image::clusters`].
pub struct Clusters<'a, R> {
    image: &'a mut Qcow2Image<R>,
    next: u64,
    failed: bool,
}

impl<R: Read + Seek> Iterator for Clusters<'_, R> {
    type Item = Result<GuestCluster, Qcow2Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.image.cluster_count() {
            return None;
        }
        let cluster = self.image.cluster(self.next);
        self.failed = cluster.is_err();
        self.next += 1;
        Some(cluster)
    }
}

/// Why a compressed cluster's deflate data is not exactly one cluster.
#[derive(Debug)]
enum InflateFault {
    Broken(DecompressError),
    Short { produced: u64 },
    Long,
    Unterminated,
}

impl InflateFault {
    fn into_error(
        self,
        cluster: &GuestCluster,
        compressed: CompressedCluster,
        cluster_size: u64,
    ) -> Qcow2Error {
        let what = cluster.region();
        let host_offset = compressed.host_offset;
        match self {
            InflateFault::Broken(source) => Qcow2Error::Inflate {
                what,
                host_offset,
                source,
            },
            InflateFault::Short { produced } => Qcow2Error::InflateShort {
                what,
                host_offset,
                produced,
                cluster_size,
            },
            InflateFault::Long => Qcow2Error::InflateLong {
                what,
                host_offset,
                cluster_size,
            },
            InflateFault::Unterminated => Qcow2Error::InflateUnterminated {
                what,
                host_offset,
                len: compressed.len,
            },
        }
    }
}

/// Inflates one raw deflate stream from `input` (which may run on past the stream's end) into
/// `out`, which it must fill exactly, the stream ending there.
fn inflate_cluster(
    inflater: &mut Decompress,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), InflateFault> {
    inflater.reset(false);
    let status = inflater
        .decompress(input, out, FlushDecompress::Finish)
        .map_err(InflateFault::Broken)?;
    let produced = inflater.total_out();
    if produced < out.len() as u64 {
        return Err(InflateFault::Short { produced });
    }
    if status == Status::StreamEnd {
        return Ok(());
    }
    // A full cluster, and the stream not yet seen to end: its end-of-block code may still be
    // due. Any byte more is a stream longer than a cluster.
    let consumed = inflater.total_in() as usize;
    let mut probe = [0u8; 1];
    let status = inflater
        .decompress(&input[consumed..], &mut probe, FlushDecompress::Finish)
        .map_err(InflateFault::Broken)?;
    if inflater.total_out() > produced {
        Err(InflateFault::Long)
    } else if status == Status::StreamEnd {
        Ok(())
    } else {
        Err(InflateFault::Unterminated)
    }
}

/// The raw disk: exactly [`Qcow2Image::virtual_size`] bytes in guest order. A refusal met while
/// reading comes out as an [`io::Error`] of kind `InvalidData` whose inner error is the
/// [`Qcow2Error`] (a failed read of the file keeps its own kind).
pub struct Qcow2Reader<R> {
    image: Qcow2Image<R>,
    position: u64,
    /// The cluster under `position`, once judged.
    current: Option<GuestCluster>,
    /// A compressed cluster inflated for a read that wanted only part of it.
    buffer: Vec<u8>,
    buffered: Option<u64>,
}

impl<R: Read + Seek> Qcow2Reader<R> {
    /// The image being read.
    pub fn image(&self) -> &Qcow2Image<R> {
        &self.image
    }

    /// Bytes of the raw disk read so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, Qcow2Error> {
        let virtual_size = self.image.virtual_size();
        let cluster_bits = self.image.layout.cluster_bits;
        let mut filled = 0;
        while filled < buf.len() && self.position < virtual_size {
            let index = self.position >> cluster_bits;
            let cluster = match self.current {
                Some(cluster) if cluster.index == index => cluster,
                _ => {
                    let cluster = self.image.cluster(index)?;
                    self.current = Some(cluster);
                    cluster
                }
            };
            let within = self.position - cluster.guest_offset;
            let n = (cluster.len - within).min((buf.len() - filled) as u64) as usize;
            let out = &mut buf[filled..filled + n];
            match cluster.kind {
                ClusterKind::Unallocated | ClusterKind::Zero => out.fill(0),
                ClusterKind::Data { host_offset } => {
                    self.image
                        .file
                        .read_exact_at(host_offset + within, out, cluster.region())?
                }
                ClusterKind::Compressed(_) if within == 0 && n as u64 == cluster.len => {
                    self.image.read_cluster(&cluster, out)?
                }
                ClusterKind::Compressed(_) => {
                    if self.buffered != Some(index) {
                        self.buffered = None;
                        let mut buffer = std::mem::take(&mut self.buffer);
                        buffer.resize(self.image.cluster_size() as usize, 0);
                        let result = self.image.read_cluster(&cluster, &mut buffer);
                        self.buffer = buffer;
                        result?;
                        self.buffered = Some(index);
                    }
                    let within = within as usize;
                    out.copy_from_slice(&self.buffer[within..within + n]);
                }
            }
            filled += n;
            self.position += n as u64;
        }
        Ok(filled)
    }
}

impl From<Qcow2Error> for io::Error {
    fn from(error: Qcow2Error) -> io::Error {
        let kind = match &error {
            Qcow2Error::Io { source, .. } | Qcow2Error::Length { source } => source.kind(),
            Qcow2Error::ShortRead { .. } => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, error)
    }
}

impl<R: Read + Seek> Read for Qcow2Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.fill(buf)?)
    }
}

/// The fuzz harness (`fuzz/fuzz_targets/qcow2.rs`): any bytes as an image file. A refusal must be
/// one line; an accepted image must read as exactly its virtual size (up to a budget), its
/// unallocated and zero clusters as zeros, and the walk and the reader must agree.
#[doc(hidden)]
pub fn fuzz_qcow2(data: &[u8]) {
    const READ_BUDGET: u64 = 1 << 20;
    const WALK_BUDGET: u64 = 4096;
    let one_line = |text: String| {
        assert!(!text.trim().is_empty(), "empty refusal");
        assert!(
            !text.contains(['\n', '\r']),
            "refusal spans lines: {text:?}"
        );
    };
    let mut image = match Qcow2Image::open(io::Cursor::new(data)) {
        Ok(image) => image,
        Err(error) => return one_line(error.to_string()),
    };
    let mut zeros = Vec::new();
    let mut walk_failed = false;
    for cluster in image.clusters().take(WALK_BUDGET as usize) {
        match cluster {
            Ok(cluster) => zeros.push(cluster.reads_as_zeros()),
            Err(error) => {
                one_line(error.to_string());
                walk_failed = true;
            }
        }
    }
    let cluster_size = image.cluster_size();
    let virtual_size = image.virtual_size();
    let mut reader = image.into_reader();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let at = reader.position();
        if at >= READ_BUDGET {
            return;
        }
        match reader.read(&mut buf) {
            Ok(0) => {
                assert_eq!(at, virtual_size, "the reader ended early");
                assert!(!walk_failed, "the walk refused what the reader read");
                return;
            }
            Ok(n) => {
                let (mut offset, mut rest) = (at, &buf[..n]);
                while !rest.is_empty() {
                    let take = rest
                        .len()
                        .min((cluster_size - offset % cluster_size) as usize);
                    if zeros.get((offset / cluster_size) as usize) == Some(&true) {
                        assert!(
                            rest[..take].iter().all(|&b| b == 0),
                            "a zero cluster read non-zero"
                        );
                    }
                    rest = &rest[take..];
                    offset += take as u64;
                }
            }
            Err(error) => return one_line(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};
    use std::io::Cursor;

    const CLUSTER_BITS: u32 = 9;
    const CLUSTER: usize = 1 << CLUSTER_BITS;

    /// A small v3 image with 512-byte clusters: header (cluster 0), refcount table (1), refcount
    /// block (2), L1 (3), L2 (4), then data clusters; `entries` are the L2 entries.
    fn image(entries: &[u64], data: &[u8], virtual_size: u64) -> Vec<u8> {
        let mut file = vec![0u8; 5 * CLUSTER];
        file[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        file[4..8].copy_from_slice(&3u32.to_be_bytes());
        file[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes());
        file[24..32].copy_from_slice(&virtual_size.to_be_bytes());
        file[36..40].copy_from_slice(&1u32.to_be_bytes());
        file[40..48].copy_from_slice(&(3 * CLUSTER as u64).to_be_bytes());
        file[48..56].copy_from_slice(&(CLUSTER as u64).to_be_bytes());
        file[56..60].copy_from_slice(&1u32.to_be_bytes());
        file[96..100].copy_from_slice(&4u32.to_be_bytes());
        file[100..104].copy_from_slice(&112u32.to_be_bytes());
        file[CLUSTER..CLUSTER + 8].copy_from_slice(&(2 * CLUSTER as u64).to_be_bytes());
        file[3 * CLUSTER..3 * CLUSTER + 8]
            .copy_from_slice(&(FLAG_COPIED | (4 * CLUSTER as u64)).to_be_bytes());
        for (i, entry) in entries.iter().enumerate() {
            let at = 4 * CLUSTER + i * 8;
            file[at..at + 8].copy_from_slice(&entry.to_be_bytes());
        }
        file.extend_from_slice(data);
        file
    }

    fn open(file: &[u8]) -> Result<Qcow2Image<Cursor<&[u8]>>, Qcow2Error> {
        Qcow2Image::open(Cursor::new(file))
    }

    fn read_all(file: &[u8]) -> Result<Vec<u8>, io::Error> {
        let mut out = Vec::new();
        open(file)?.into_reader().read_to_end(&mut out)?;
        Ok(out)
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut compress = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        compress
            .compress_vec(data, &mut out, FlushCompress::Finish)
            .unwrap();
        out
    }

    /// An L2 entry for a compressed cluster of 512-byte clusters at `offset`, `len` bytes.
    fn compressed_entry(offset: u64, len: u64) -> u64 {
        let offset_bits = 62 - (CLUSTER_BITS - 8);
        let sectors = (offset + len).div_ceil(SECTOR) - offset / SECTOR;
        FLAG_COMPRESSED | ((sectors - 1) << offset_bits) | offset
    }

    fn data_offset(n: usize) -> u64 {
        ((5 + n) * CLUSTER) as u64
    }

    #[test]
    fn reads_each_kind_of_cluster() {
        let pattern: Vec<u8> = (0..CLUSTER).map(|i| (i * 7 % 251) as u8).collect();
        let mut data = pattern.clone();
        let packed = deflate(&pattern);
        data.extend_from_slice(&packed);
        let entries = [
            FLAG_COPIED | data_offset(0),
            0,
            FLAG_ZERO,
            compressed_entry(data_offset(1), packed.len() as u64),
        ];
        let file = image(&entries, &data, 4 * CLUSTER as u64 - 100);
        let mut opened = open(&file).unwrap();
        let kinds: Vec<_> = opened.clusters().map(|c| c.unwrap().kind).collect();
        assert_eq!(
            kinds[0],
            ClusterKind::Data {
                host_offset: data_offset(0)
            }
        );
        assert_eq!(kinds[1], ClusterKind::Unallocated);
        assert_eq!(kinds[2], ClusterKind::Zero);
        assert!(matches!(kinds[3], ClusterKind::Compressed(c) if c.host_offset == data_offset(1)));
        let raw = read_all(&file).unwrap();
        assert_eq!(raw.len(), 4 * CLUSTER - 100);
        assert_eq!(&raw[..CLUSTER], &pattern[..]);
        assert!(raw[CLUSTER..3 * CLUSTER].iter().all(|&b| b == 0));
        assert_eq!(&raw[3 * CLUSTER..], &pattern[..CLUSTER - 100]);
    }

    #[test]
    fn reads_through_odd_sized_reads() {
        let pattern: Vec<u8> = (0..2 * CLUSTER).map(|i| (i * 13 % 256) as u8).collect();
        let packed = deflate(&pattern[CLUSTER..]);
        let mut data = pattern[..CLUSTER].to_vec();
        data.extend_from_slice(&packed);
        let entries = [
            data_offset(0),
            compressed_entry(data_offset(1), packed.len() as u64),
        ];
        let file = image(&entries, &data, 2 * CLUSTER as u64);
        let mut reader = open(&file).unwrap().into_reader();
        let mut out = Vec::new();
        let mut buf = [0u8; 77];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, pattern);
    }

    fn refusal(file: &[u8]) -> Qcow2Error {
        match open(file) {
            Err(error) => error,
            Ok(image) => {
                let mut out = Vec::new();
                let error = image.into_reader().read_to_end(&mut out).unwrap_err();
                *error
                    .into_inner()
                    .unwrap()
                    .downcast::<Qcow2Error>()
                    .unwrap()
            }
        }
    }

    #[test]
    fn refuses_bad_headers() {
        let good = image(&[], &[], 4096);
        let patched = |at: usize, bytes: &[u8]| {
            let mut file = good.clone();
            file[at..at + bytes.len()].copy_from_slice(bytes);
            refusal(&file)
        };
        assert!(matches!(patched(0, b"QFI\0"), Qcow2Error::BadMagic { .. }));
        assert!(matches!(
            patched(4, &4u32.to_be_bytes()),
            Qcow2Error::UnsupportedVersion { version: 4 }
        ));
        assert!(matches!(
            patched(20, &40u32.to_be_bytes()),
            Qcow2Error::BadHeader {
                field: "cluster_bits",
                ..
            }
        ));
        assert!(matches!(
            patched(24, &(1u64 << 62).to_be_bytes()),
            Qcow2Error::VirtualSizeTooLarge { .. }
        ));
        assert!(matches!(
            patched(8, &(600u64).to_be_bytes()),
            Qcow2Error::BackingFile { offset: 600, .. }
        ));
        assert!(matches!(
            patched(32, &2u32.to_be_bytes()),
            Qcow2Error::Encrypted { .. }
        ));
        assert!(matches!(
            patched(79, &[1 << 5]),
            Qcow2Error::UnknownIncompatibleFeatures { bits: 0x20 }
        ));
        assert!(matches!(
            patched(79, &[4]),
            Qcow2Error::ExternalDataFile { .. }
        ));
        assert!(matches!(
            patched(79, &[16]),
            Qcow2Error::UnsupportedFeature { bit: 4, .. }
        ));
        assert!(matches!(
            patched(79, &[2]),
            Qcow2Error::UnsupportedFeature { bit: 1, .. }
        ));
        // The dirty bit only says the refcounts may be stale: the image still reads.
        let mut dirty = good.clone();
        dirty[79] = 1;
        assert_eq!(read_all(&dirty).unwrap(), vec![0; 4096]);
        let mut zstd = good.clone();
        zstd[79] = 8;
        zstd[104] = 1;
        assert!(matches!(
            refusal(&zstd),
            Qcow2Error::UnsupportedCompression { kind: 1, .. }
        ));
        assert!(matches!(
            patched(100, &100u32.to_be_bytes()),
            Qcow2Error::BadHeader {
                field: "header_length",
                ..
            }
        ));
        assert!(matches!(
            patched(36, &0u32.to_be_bytes()),
            Qcow2Error::L1TooSmall { .. }
        ));
        assert!(matches!(
            patched(40, &(7 * CLUSTER as u64).to_be_bytes()),
            Qcow2Error::BeyondEnd {
                what: Region::L1Table,
                ..
            }
        ));
        assert!(matches!(
            patched(40, &(0u64).to_be_bytes()),
            Qcow2Error::Overlap {
                what: Region::L1Table,
                other: Region::Header,
                ..
            }
        ));
        assert!(matches!(
            patched(40, &(700u64).to_be_bytes()),
            Qcow2Error::Misaligned { .. }
        ));
        let extension = [0x05, 0x37, 0xbe, 0x77, 0, 0, 0, 16];
        assert!(matches!(
            patched(112, &extension),
            Qcow2Error::Encrypted { .. }
        ));
        let extension = [0x44, 0x41, 0x54, 0x41, 0, 0, 0, 4];
        assert!(matches!(
            patched(112, &extension),
            Qcow2Error::ExternalDataFile { .. }
        ));
        let extension = [0x12, 0x34, 0x56, 0x78, 0, 0, 0xff, 0xff];
        assert!(matches!(
            patched(112, &extension),
            Qcow2Error::BadHeader {
                field: "header extension area",
                ..
            }
        ));
        assert!(matches!(
            refusal(&good[..50]),
            Qcow2Error::ShortRead {
                what: Region::Header,
                ..
            }
        ));
    }

    /// What a refusal must match.
    type Expected = fn(&Qcow2Error) -> bool;

    #[test]
    fn refuses_bad_references() {
        let l2 = 4 * CLUSTER as u64;
        let cases: [(&[u64], Expected); 7] = [
            (&[data_offset(9)], |e| {
                matches!(e, Qcow2Error::BeyondEnd { .. })
            }),
            (&[l2], |e| {
                matches!(
                    e,
                    Qcow2Error::Overlap {
                        other: Region::L2Table { l1_index: 0 },
                        ..
                    }
                )
            }),
            (&[3 * CLUSTER as u64], |e| {
                matches!(
                    e,
                    Qcow2Error::Overlap {
                        other: Region::L1Table,
                        ..
                    }
                )
            }),
            (&[2 * CLUSTER as u64], |e| {
                matches!(
                    e,
                    Qcow2Error::Overlap {
                        other: Region::RefcountBlock { index: 0 },
                        ..
                    }
                )
            }),
            (&[FLAG_COPIED], |e| {
                matches!(
                    e,
                    Qcow2Error::Overlap {
                        other: Region::Header,
                        ..
                    }
                )
            }),
            (&[data_offset(0) | 2], |e| {
                matches!(e, Qcow2Error::ReservedBits { .. })
            }),
            (&[compressed_entry(l2 + 8, 100)], |e| {
                matches!(e, Qcow2Error::Overlap { .. })
            }),
        ];
        for (entries, expected) in cases {
            let file = image(entries, &[0; CLUSTER], CLUSTER as u64);
            let error = refusal(&file);
            assert!(expected(&error), "{entries:x?}: {error}");
        }
        // The L1 entry names the refcount table, or the L1 table itself, as its L2 table.
        for target in [CLUSTER as u64, 3 * CLUSTER as u64] {
            let mut file = image(&[], &[], CLUSTER as u64);
            file[3 * CLUSTER..3 * CLUSTER + 8].copy_from_slice(&target.to_be_bytes());
            assert!(matches!(
                refusal(&file),
                Qcow2Error::Overlap {
                    what: Region::L2Table { .. },
                    ..
                }
            ));
        }
        // The L2 table is also the refcount block.
        let mut file = image(&[], &[], CLUSTER as u64);
        file[3 * CLUSTER..3 * CLUSTER + 8].copy_from_slice(&(2 * CLUSTER as u64).to_be_bytes());
        assert!(matches!(refusal(&file), Qcow2Error::Overlap { .. }));
    }

    #[test]
    fn refuses_a_compressed_cluster_that_is_not_one_cluster() {
        let check = |payload: &[u8], expected: Expected| {
            let entries = [compressed_entry(data_offset(0), payload.len() as u64)];
            let file = image(&entries, payload, CLUSTER as u64);
            let error = refusal(&file);
            assert!(expected(&error), "{error}");
            assert!(!error.to_string().contains('\n'));
        };
        check(&deflate(&[5; CLUSTER - 1]), |e| {
            matches!(e, Qcow2Error::InflateShort { produced: 511, .. })
        });
        check(&deflate(&[5; CLUSTER + 1]), |e| {
            matches!(e, Qcow2Error::InflateLong { .. })
        });
        let whole = deflate(&[5; CLUSTER]);
        check(&whole[..whole.len() / 2], |e| {
            matches!(
                e,
                Qcow2Error::InflateShort { .. } | Qcow2Error::InflateUnterminated { .. }
            )
        });
        check(&[0xff; 16], |e| matches!(e, Qcow2Error::Inflate { .. }));
    }

    #[test]
    fn inflates_a_stream_followed_by_other_bytes() {
        let mut input = deflate(&[9; CLUSTER]);
        input.extend_from_slice(&[0xff; 40]);
        let mut out = vec![0; CLUSTER];
        inflate_cluster(&mut Decompress::new(false), &input, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 9));
    }

    #[test]
    fn fuzz_harness_takes_what_it_is_given() {
        let pattern: Vec<u8> = (0..CLUSTER).map(|i| i as u8).collect();
        fuzz_qcow2(&image(&[data_offset(0)], &pattern, CLUSTER as u64));
        fuzz_qcow2(&[]);
        fuzz_qcow2(b"QFI\xfb");
        fuzz_qcow2(&image(&[], &[], 1 << 40));
    }

    /// The fuzz seeds are real qemu-img images (512-byte clusters): each opens and reads whole.
    #[test]
    fn fuzz_seeds_are_images_that_read() {
        let seeds: [&[u8]; 3] = [
            include_bytes!("../fuzz/corpus/qcow2/seed-compressed-v3-512.qcow2"),
            include_bytes!("../fuzz/corpus/qcow2/seed-v2-512.qcow2"),
            include_bytes!("../fuzz/corpus/qcow2/seed-empty-v3.qcow2"),
        ];
        for seed in seeds {
            fuzz_qcow2(seed);
            let raw = read_all(seed).unwrap();
            assert_eq!(raw.len() as u64, open(seed).unwrap().virtual_size());
        }
        let raw = read_all(seeds[0]).unwrap();
        assert!(raw.starts_with(b"cloud image store proxy qcow2 1\n"));
        assert_eq!(raw, read_all(seeds[1]).unwrap());
    }
}
