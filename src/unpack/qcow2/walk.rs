//! An opened image and its cluster walk: the active L1 table read, the L2 tables and refcount
//! blocks placed, and each L2 entry judged (in the file, aligned, clear of every table) as the
//! walk reaches it.

use super::header::{Layout, be32, be64};
use super::reader::inflate_cluster;
use super::*;
use flate2::Decompress;
use std::io::{Read, Seek, SeekFrom};

/// The file, read at offsets; a read that follows the last one does not seek.
pub(super) struct HostFile<R> {
    inner: R,
    len: u64,
    position: Option<u64>,
}

impl<R: Read + Seek> HostFile<R> {
    pub(super) fn read_exact_at(
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
    pub(super) file: HostFile<R>,
    pub(super) layout: Layout,
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
