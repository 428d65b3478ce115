//! The raw disk as a [`Read`], inflating compressed clusters one at a time and checking each is
//! exactly one cluster; and the fuzz harness over all of it.

use super::*;
use flate2::{Decompress, FlushDecompress, Status};
use std::io::{Read, Seek};

/// Why a compressed cluster's deflate data is not exactly one cluster.
#[derive(Debug)]
pub(super) enum InflateFault {
    Broken(DecompressError),
    Short { produced: u64 },
    Long,
    Unterminated,
}

impl InflateFault {
    pub(super) fn into_error(
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
pub(super) fn inflate_cluster(
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
    pub(super) image: Qcow2Image<R>,
    pub(super) position: u64,
    /// The cluster under `position`, once judged.
    pub(super) current: Option<GuestCluster>,
    /// A compressed cluster inflated for a read that wanted only part of it.
    pub(super) buffer: Vec<u8>,
    pub(super) buffered: Option<u64>,
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
