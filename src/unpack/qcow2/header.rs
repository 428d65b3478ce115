//! The header and its extensions, judged: the version, cluster size, virtual size and features
//! this reader honours, and where the L1 and refcount tables lie (aligned, inside the file, apart
//! from the header and each other).

use super::*;
use crate::limits::{MAX_QCOW2_TABLE_BYTES, MAX_QCOW2_VIRTUAL_BYTES};

/// The validated header: where everything is, and how big.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    pub(super) version: u32,
    pub(super) cluster_bits: u32,
    pub(super) virtual_size: u64,
    pub(super) file_len: u64,
    pub(super) l1_offset: u64,
    pub(super) l1_size: u32,
    /// L1 entries the virtual size uses (the rest, if any, map a snapshot's VM state).
    pub(super) l1_used: u64,
    pub(super) refcount_table_offset: u64,
    pub(super) refcount_table_clusters: u32,
}

pub(super) fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

pub(super) fn be64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

impl Layout {
    /// Parses and judges the header from the file's first cluster (`first`: the first
    /// `cluster_size` bytes, fewer if the file is shorter; at least [`V2_HEADER_BYTES`]).
    pub(super) fn parse(first: &[u8], file_len: u64) -> Result<Layout, Qcow2Error> {
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

    pub(super) fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub(super) fn cluster_count(&self) -> u64 {
        self.virtual_size.div_ceil(self.cluster_size())
    }

    /// The header cluster, the L1 table and the refcount table, each as whole clusters.
    pub(super) fn fixed_regions(&self) -> [(Region, u64, u64); 3] {
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
    pub(super) fn judge_tables(&self) -> Result<(), Qcow2Error> {
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
    pub(super) fn judge_placement(
        &self,
        what: Region,
        offset: u64,
        bytes: u64,
    ) -> Result<(), Qcow2Error> {
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
    pub(super) fn judge_apart(
        &self,
        what: Region,
        offset: u64,
        end: u64,
    ) -> Result<(), Qcow2Error> {
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
