//! A compressed qcow2 whole disk spliced into the bundle's gzip member (issue 16): Ubuntu's
//! `disk1.img` is `qemu-img convert -c`, and each of its compressed clusters is an independent
//! raw deflate stream of exactly one cluster. Walked in guest order (`unpack::qcow2`'s walker,
//! which judges every table entry), each compressed cluster is inflated in memory (for the tar
//! stream's SHA-1 and CRC-32, and to prove it is exactly one cluster that refers to nothing before
//! its start) and its deflate bits are copied at whatever bit the member stands, its final
//! block's BFINAL cleared, up to the bit where its stream ends (qcow2 rounds the data up to
//! sectors: what follows the stream is not copied). Everything else is fresh deflate at
//! `gzip.level`, byte-aligned and non-final: a run of uncompressed clusters (a new compressor per
//! run, sync-flushed), each unallocated or zero cluster (one cluster of zeros deflated once and
//! repeated), the last cluster when the virtual size cuts it short (just its bytes inside the
//! disk). The tar header goes first as a stored block, the tar padding and end-of-archive last as
//! a final block, then the CRC-32 and ISIZE of the tar stream: one ordinary gzip member whose tar
//! stream is byte for byte what `qemu-img convert -O raw` and recompression give.
//!
//! Anything unexpected is an [`Unsuitable`] (a [`Refusal`]) and the pipeline converts and
//! recompresses instead, whose converter reports real corruption with its usual error: a
//! structure the walker refuses (encryption, an external data file, a feature it does not read,
//! a table out of place), a cluster that does not inflate on its own to exactly one cluster. A
//! read of the source that fails is the install's error, as the converter's would be. An image
//! whose first mapped L2 table holds more uncompressed than compressed clusters (one made
//! without `-c`) is left to the parallel deflate, which is faster for it on every core.

use super::bits::BitWriter;
use super::{GZIP_HEADER, Unsuitable, deflate_final};
use crate::bundle::SourceImage;
use crate::bundle::format::{self, Bundle, BundleError, PartSink};
use crate::bundle::gzip::GzipSettings;
use crate::bundle::keys::BundleKeys;
use crate::unpack::qcow2::{ClusterKind, Qcow2Error, Qcow2Image};
use crate::unpack::{self, UnpackError};
use flate2::{Compress, Compression, FlushCompress};
use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY, TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{DecompressorOxide, decompress};
use sha1::{Digest, Sha1};
use std::io::{Read, Seek, Write};
use std::path::Path;

/// Output gathered before it is written on: whole bytes taken about every MiB, so that thousands
/// of small cluster streams cost few writes.
const BATCH_BYTES: usize = 1 << 20;
/// The fresh compressor's output buffer.
const DEFLATE_BUFFER_BYTES: usize = 256 << 10;

/// Why a qcow2 disk is converted and recompressed rather than spliced: each a whole line after
/// "the upstream's compressed data cannot be spliced: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The walker's own refusal, as one line: the converter meets it again and reports it.
    #[error("the qcow2 reader refuses it: {0}")]
    Walker(String),
    #[error(
        "its compressed cluster at guest offset {guest_offset} (host byte {host_offset}) {fault}"
    )]
    Cluster {
        guest_offset: u64,
        host_offset: u64,
        fault: Fault,
    },
    #[error(
        "{data} of the {allocated} allocated clusters its first L2 table maps are stored uncompressed: deflate on every core is faster"
    )]
    MostlyUncompressed { data: u64, allocated: u64 },
}

/// What is wrong with one compressed cluster's deflate stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error(
        "does not inflate on its own (corrupt deflate data, or a match reaching before its start)"
    )]
    Corrupt,
    #[error("inflates to fewer bytes than a cluster")]
    Short,
    #[error("inflates to more bytes than a cluster")]
    Long,
    #[error("does not end within its sectors")]
    Unterminated,
}

impl From<Refusal> for BundleError {
    fn from(why: Refusal) -> Self {
        BundleError::NotSpliceable(Unsuitable::Qcow2(why))
    }
}

/// Bundles the qcow2 disk `image` (its virtual size `size`) into `dir` by splicing its
/// compressed clusters; `consumed` is told the source bytes read. [`BundleError::NotSpliceable`]
/// when it is not a disk to splice: nothing is then finished, and the caller recompresses.
pub fn bundle(
    image: &SourceImage<'_>,
    keys: &BundleKeys,
    dir: &Path,
    gzip: GzipSettings,
    size: u64,
    consumed: &(dyn Fn(u64) + Sync),
    sink: &mut dyn PartSink,
) -> Result<Bundle, BundleError> {
    let spec = image.bundle_spec(size, gzip);
    let path = image.path;
    unpack::with_source_file(image.source(), consumed, |file| {
        let mut disk = Qcow2Image::open(file).map_err(|error| refused(path, error))?;
        if disk.virtual_size() != size {
            return Err(BundleError::SizeMismatch {
                expected: size,
                actual: disk.virtual_size(),
            });
        }
        census(&mut disk, path)?;
        format::write_bundle_with(&spec, keys, dir, sink, &mut |out, tick| {
            write_member(&mut disk, path, image.prefix, gzip.level, out, tick)
                .map(|spliced| spliced.digest)
        })
    })
}

/// A walker's error: a failed read of the source is the install's (the converter would fail
/// the same way); any other refusal sends the disk to the converter, which reports it.
fn refused(path: &Path, error: Qcow2Error) -> BundleError {
    match error {
        Qcow2Error::Io { .. } | Qcow2Error::Length { .. } => UnpackError::Qcow2 {
            path: path.to_owned(),
            source: error,
        }
        .into(),
        other => Refusal::Walker(other.to_string()).into(),
    }
}

/// Refuses a disk made without `-c`: among the clusters of the first L2 table that maps any
/// (near the file's start, so an arriving file need not be whole), more stored than compressed.
fn census<R: Read + Seek>(disk: &mut Qcow2Image<R>, path: &Path) -> Result<(), BundleError> {
    let per_table = disk.cluster_size() / 8;
    let (mut data, mut compressed) = (0u64, 0u64);
    let mut end = disk.cluster_count();
    let mut index = 0;
    while index < end {
        let cluster = disk.cluster(index).map_err(|error| refused(path, error))?;
        let allocated = match cluster.kind {
            ClusterKind::Data { .. } => {
                data += 1;
                true
            }
            ClusterKind::Compressed(_) => {
                compressed += 1;
                true
            }
            ClusterKind::Unallocated | ClusterKind::Zero => false,
        };
        if allocated && data + compressed == 1 {
            end = end.min((index / per_table + 1) * per_table);
        }
        index += 1;
    }
    if data > compressed {
        return Err(Refusal::MostlyUncompressed {
            data,
            allocated: data + compressed,
        }
        .into());
    }
    Ok(())
}

/// What [`write_member`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spliced {
    /// The tar stream's SHA-1, hex.
    pub digest: String,
    /// Compressed clusters whose deflate bits were copied, and how many bits that was.
    pub copied_clusters: u64,
    pub copied_bits: u64,
    /// Clusters deflated afresh (uncompressed ones, and a short last cluster).
    pub deflated_clusters: u64,
    /// Stored clusters that look incompressible (see [`looks_incompressible`]), copied as
    /// stored deflate blocks.
    pub stored_clusters: u64,
}

/// Writes the tar stream of the raw disk of `disk` (the member `name`) into `out` as one gzip
/// member, its compressed clusters spliced, the rest deflated at `level`. `tick` is told the
/// image bytes done and says whether to go on; `path` names the file in a read error.
pub fn write_member<R: Read + Seek>(
    disk: &mut Qcow2Image<R>,
    path: &Path,
    name: &str,
    level: u32,
    out: &mut dyn Write,
    tick: &mut dyn FnMut(u64) -> bool,
) -> Result<Spliced, BundleError> {
    let size = disk.virtual_size();
    let cluster_size = disk.cluster_size() as usize;
    let mut member = Member::new(out, name, level, cluster_size);
    let header = format::tar_header(name, size);
    member.hash(&header);
    member.bits.push_bytes(&GZIP_HEADER);
    member.bits.stored_block(&header, false);

    let mut inflater = Box::<DecompressorOxide>::default();
    // One byte more than a cluster, so that a stream that inflates to more shows.
    let mut inflated = vec![0u8; cluster_size + 1];
    let mut stream = Vec::with_capacity(2 * cluster_size);
    let mut stats = Spliced {
        digest: String::new(),
        copied_clusters: 0,
        copied_bits: 0,
        deflated_clusters: 0,
        stored_clusters: 0,
    };
    let mut ticked = 0;
    for index in 0..disk.cluster_count() {
        let cluster = disk.cluster(index).map_err(|error| refused(path, error))?;
        let len = cluster.len as usize;
        match cluster.kind {
            ClusterKind::Unallocated | ClusterKind::Zero if len == cluster_size => {
                member.zero_cluster()?
            }
            ClusterKind::Compressed(compressed) if len == cluster_size => {
                stream.clear();
                stream.extend_from_slice(
                    disk.compressed_data(&cluster)
                        .map_err(|error| refused(path, error))?,
                );
                let end = inflate_cluster(&mut inflater, &mut stream, &mut inflated, cluster_size)
                    .map_err(|fault| Refusal::Cluster {
                        guest_offset: cluster.guest_offset,
                        host_offset: compressed.host_offset,
                        fault,
                    })?;
                member.hash(&inflated[..cluster_size]);
                member.copy(&stream, end)?;
                stats.copied_clusters += 1;
                stats.copied_bits += end;
            }
            // Stored clusters, and a last cluster cut by the virtual size whatever its kind.
            kind => {
                disk.read_cluster(&cluster, &mut inflated)
                    .map_err(|error| refused(path, error))?;
                let bytes = &inflated[..len];
                member.hash(bytes);
                if matches!(kind, ClusterKind::Data { .. }) && looks_incompressible(bytes) {
                    member.stored(bytes)?;
                    stats.stored_clusters += 1;
                } else {
                    member.fresh(bytes)?;
                    stats.deflated_clusters += 1;
                }
            }
        }
        let done = cluster.guest_offset + cluster.len;
        if done - ticked >= 1 << 20 || done == size {
            ticked = done;
            if !tick(done) {
                return Err(BundleError::Cancelled);
            }
        }
    }
    stats.digest = member.finish(size)?;
    Ok(stats)
}

/// The gzip member as it is written: bits not yet written on, the tar stream's hashes, the fresh
/// compressor and whether a fresh run is open.
struct Member<'o> {
    out: &'o mut dyn Write,
    name: &'o str,
    level: u32,
    bits: BitWriter,
    /// Bytes pushed into `bits` since it was last written on (about).
    pending: usize,
    sha1: Sha1,
    crc: crc32fast::Hasher,
    compressor: Compress,
    deflated: Vec<u8>,
    in_run: bool,
    zeros: Vec<u8>,
    /// One cluster of zeros deflated on its own, byte-aligned and non-final, and its CRC-32.
    zero_stream: Vec<u8>,
    zero_crc: crc32fast::Hasher,
}

impl<'o> Member<'o> {
    fn new(out: &'o mut dyn Write, name: &'o str, level: u32, cluster_size: usize) -> Self {
        let zeros = vec![0u8; cluster_size];
        let mut compressor = Compress::new(Compression::new(level.min(9)), false);
        let mut deflated = vec![0u8; DEFLATE_BUFFER_BYTES];
        let mut zero_stream = Vec::new();
        deflate(
            &mut compressor,
            &mut deflated,
            &zeros,
            FlushCompress::Sync,
            &mut |bytes| zero_stream.extend_from_slice(bytes),
        );
        let mut zero_crc = crc32fast::Hasher::new();
        zero_crc.update(&zeros);
        Member {
            out,
            name,
            level,
            bits: BitWriter::new(),
            pending: 0,
            sha1: Sha1::new(),
            crc: crc32fast::Hasher::new(),
            compressor,
            deflated,
            in_run: false,
            zeros,
            zero_stream,
            zero_crc,
        }
    }

    /// Bytes of the tar stream, in order.
    fn hash(&mut self, bytes: &[u8]) {
        self.sha1.update(bytes);
        self.crc.update(bytes);
    }

    /// Bits `0..end` of a compressed cluster's stream (its BFINAL cleared), at the current phase.
    fn copy(&mut self, stream: &[u8], end: u64) -> Result<(), BundleError> {
        self.end_run();
        self.bits.push_bit_range(stream, 0, end);
        self.pending += (end / 8) as usize;
        self.write_batch()
    }

    /// Guest bytes deflated in the open fresh run, or a new one.
    fn fresh(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        if !self.in_run {
            self.bits.align();
            self.compressor.reset();
            self.in_run = true;
        }
        let bits = &mut self.bits;
        let pending = &mut self.pending;
        deflate(
            &mut self.compressor,
            &mut self.deflated,
            bytes,
            FlushCompress::None,
            &mut |out| {
                bits.push_bytes(out);
                *pending += out.len();
            },
        );
        self.write_batch()
    }

    /// Guest bytes as stored blocks (at most 65,535 bytes each), from any phase.
    fn stored(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        self.end_run();
        for block in bytes.chunks(usize::from(u16::MAX)) {
            self.bits.stored_block(block, false);
            self.pending += block.len() + 5;
        }
        self.write_batch()
    }

    /// Ends an open fresh run on a byte boundary, non-final (a sync flush).
    fn end_run(&mut self) {
        if !self.in_run {
            return;
        }
        self.in_run = false;
        let bits = &mut self.bits;
        let pending = &mut self.pending;
        deflate(
            &mut self.compressor,
            &mut self.deflated,
            &[],
            FlushCompress::Sync,
            &mut |out| {
                bits.push_bytes(out);
                *pending += out.len();
            },
        );
    }

    /// A whole cluster of zeros: the stream deflated once, repeated.
    fn zero_cluster(&mut self) -> Result<(), BundleError> {
        self.end_run();
        self.bits.align();
        self.bits.push_bytes(&self.zero_stream);
        self.pending += self.zero_stream.len();
        self.sha1.update(&self.zeros);
        self.crc.combine(&self.zero_crc);
        self.write_batch()
    }

    fn write_batch(&mut self) -> Result<(), BundleError> {
        if self.pending < BATCH_BYTES {
            return Ok(());
        }
        self.pending = 0;
        let whole = self.bits.take_whole_bytes();
        self.write(&whole)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        super::write_out(self.out, self.name, bytes)
    }

    /// The tar padding and end-of-archive as the final block, the trailer; the tar stream's SHA-1.
    fn finish(mut self, size: u64) -> Result<String, BundleError> {
        self.end_run();
        let tail = vec![0u8; format::tar_tail_len(size) as usize];
        self.hash(&tail);
        self.bits.align();
        self.bits.push_bytes(&deflate_final(&tail, self.level));
        self.bits
            .push_bytes(&self.crc.clone().finalize().to_le_bytes());
        let total = 512 + size + tail.len() as u64;
        self.bits
            .push_bytes(&((total % (1 << 32)) as u32).to_le_bytes());
        let whole = self.bits.take_whole_bytes();
        self.write(&whole)?;
        Ok(hex::encode(self.sha1.finalize()))
    }
}

/// Whether a stored cluster is not worth deflating: its bytes' order-0 entropy is above 7.9 bits
/// a byte (noise, or data compressed already). `qemu-img convert -c` stores a cluster
/// uncompressed exactly when deflate could not shrink it, and deflating it again at level 6 is
/// most of the CPU a splice of such a disk would spend (`bench/pipeline qcow2`); a cluster a
/// guest wrote later, text or a pattern, is still deflated. The same test compressors use to
/// skip a block (btrfs's heuristic, zstd's), on a 256-bucket histogram.
fn looks_incompressible(bytes: &[u8]) -> bool {
    let mut counts = [0u32; 256];
    for &byte in bytes {
        counts[usize::from(byte)] += 1;
    }
    let total = bytes.len() as f64;
    let entropy: f64 = counts
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let p = f64::from(count) / total;
            -p * p.log2()
        })
        .sum();
    entropy > 7.9
}

/// Deflates `data` with `flush`, handing each piece of output to `emit`; for a sync flush, until
/// the stream is flushed to a byte boundary.
fn deflate(
    compressor: &mut Compress,
    buffer: &mut [u8],
    mut data: &[u8],
    flush: FlushCompress,
    emit: &mut dyn FnMut(&[u8]),
) {
    loop {
        let (before_in, before_out) = (compressor.total_in(), compressor.total_out());
        compressor
            .compress(data, buffer, flush)
            .expect("deflate of bytes in memory does not fail");
        let used = (compressor.total_in() - before_in) as usize;
        let made = (compressor.total_out() - before_out) as usize;
        data = &data[used..];
        emit(&buffer[..made]);
        if data.is_empty() && made < buffer.len() {
            return;
        }
    }
}

/// Clears bit `bit` of `byte`; whether it was set.
fn clear_bit(byte: &mut u8, bit: u8) -> bool {
    let was = *byte & (1 << bit) != 0;
    *byte &= !(1 << bit);
    was
}

/// Inflates one compressed cluster's raw deflate `stream` (which may run on into its sector's
/// padding) into `out` (a cluster and one byte), clearing its final block's BFINAL in `stream`;
/// the bit at which the stream ends. It must inflate to exactly `cluster_size` bytes with no match
/// reaching before its start (the output buffer does not wrap, so such a match fails).
fn inflate_cluster(
    inflater: &mut DecompressorOxide,
    stream: &mut [u8],
    out: &mut [u8],
    cluster_size: usize,
) -> Result<u64, Fault> {
    inflater.init();
    let Some(first) = stream.first_mut() else {
        return Err(Fault::Unterminated);
    };
    let mut final_cleared = clear_bit(first, 0);
    let (mut pos, mut out_pos) = (0usize, 0usize);
    loop {
        let (status, used, written) = decompress(
            inflater,
            &stream[pos..],
            out,
            out_pos,
            TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY | TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
        );
        pos += used;
        out_pos += written;
        if out_pos > cluster_size {
            return Err(Fault::Long);
        }
        match status {
            TINFLStatus::BlockBoundary => {
                let mut state = inflater
                    .block_boundary_state()
                    .expect("the inflater stopped between blocks");
                if final_cleared {
                    return if out_pos == cluster_size {
                        Ok(pos as u64 * 8 - u64::from(state.num_bits))
                    } else {
                        Err(Fault::Short)
                    };
                }
                // The next block's BFINAL: the lowest unused bit of the last byte consumed, or
                // bit 0 of the next byte.
                if state.num_bits > 0 {
                    if state.bit_buf & 1 == 1 {
                        state.bit_buf &= !1;
                        clear_bit(&mut stream[pos - 1], 8 - state.num_bits);
                        *inflater = DecompressorOxide::from_block_boundary_state(&state);
                        final_cleared = true;
                    }
                } else {
                    let Some(next) = stream.get_mut(pos) else {
                        return Err(Fault::Unterminated);
                    };
                    final_cleared = clear_bit(next, 0);
                }
            }
            TINFLStatus::HasMoreOutput => return Err(Fault::Long),
            TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
                return Err(Fault::Unterminated);
            }
            // Done cannot come: every BFINAL was cleared before the inflater read it.
            _ => return Err(Fault::Corrupt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::noise;
    use flate2::bufread::GzDecoder;
    use std::fs::File;
    use std::process::Command;

    const KIB: usize = 1 << 10;

    /// Whether qemu-img runs here; if not, says the test is skipped.
    fn have_qemu_img(test: &str) -> bool {
        let found = Command::new("qemu-img")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !found {
            eprintln!("skipped {test}: qemu-img is not installed (Debian qemu-utils)");
        }
        found
    }

    fn run(program: &str, args: &[&str]) {
        let out = Command::new(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Words picked by noise: compresses well, not to nothing.
    fn text(seed: u64, len: usize) -> Vec<u8> {
        const WORDS: [&str; 8] = [
            "cloud ", "image ", "qcow2 ", "cluster ", "noble ", "deflate ", "\n", "store ",
        ];
        let mut out = Vec::with_capacity(len + 16);
        for pick in noise(seed, len) {
            if out.len() >= len {
                break;
            }
            out.extend_from_slice(WORDS[usize::from(pick % 8)].as_bytes());
            if pick > 240 {
                out.push(pick);
            }
        }
        out.truncate(len);
        out
    }

    /// A raw disk of text, noise (stored uncompressed even with `-c`), written zeros and holes,
    /// 3 MiB and 7 sectors: not a multiple of any cluster size used here.
    fn mixed_raw() -> Vec<u8> {
        let mut raw = text(1, 300 * KIB + 1000);
        raw.extend(noise(2, 100 * KIB));
        raw.extend(vec![0; 256 * KIB]);
        raw.extend(vec![0; 1024 * KIB]);
        raw.extend(text(3, 200 * KIB));
        raw.extend(noise(4, 70_000));
        raw.extend(text(5, 64 * KIB + 123));
        raw.resize(3 * 1024 * KIB + 7 * 512 - 2000, 0);
        raw.extend(text(6, 2000));
        raw
    }

    /// `raw` as `qemu-img convert OPTIONS -O qcow2` writes it, in `dir`.
    fn qcow2_of(dir: &Path, raw: &[u8], options: &[&str]) -> std::path::PathBuf {
        let raw_path = dir.join("disk.raw");
        std::fs::write(&raw_path, raw).unwrap();
        let qcow2 = dir.join("disk.qcow2");
        let mut args = vec!["convert"];
        args.extend_from_slice(options);
        args.extend_from_slice(&[
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw_path.to_str().unwrap(),
            qcow2.to_str().unwrap(),
        ]);
        run("qemu-img", &args);
        qcow2
    }

    /// `qcow2`'s raw disk as `qemu-img convert -O raw` gives it.
    fn qemu_raw(qcow2: &Path) -> Vec<u8> {
        let raw = qcow2.with_extension("qemu.raw");
        run(
            "qemu-img",
            &[
                "convert",
                "-O",
                "raw",
                qcow2.to_str().unwrap(),
                raw.to_str().unwrap(),
            ],
        );
        let bytes = std::fs::read(&raw).unwrap();
        std::fs::remove_file(&raw).unwrap();
        bytes
    }

    fn tar_stream(name: &str, image: &[u8]) -> Vec<u8> {
        let mut tar = format::tar_header(name, image.len() as u64).to_vec();
        tar.extend_from_slice(image);
        tar.resize(
            tar.len() + format::tar_tail_len(image.len() as u64) as usize,
            0,
        );
        tar
    }

    fn splice_file(qcow2: &Path, level: u32) -> Result<(Vec<u8>, Spliced), BundleError> {
        let mut disk = Qcow2Image::open(File::open(qcow2).unwrap()).unwrap();
        let mut out = Vec::new();
        let spliced = write_member(&mut disk, qcow2, "disk.img", level, &mut out, &mut |_| true)?;
        Ok((out, spliced))
    }

    /// The member is one gzip member, nothing after it, holding exactly the tar stream of
    /// `image`, and its digest is that stream's SHA-1.
    fn assert_holds(member: &[u8], spliced: &Spliced, image: &[u8]) {
        let expected = tar_stream("disk.img", image);
        let mut first = GzDecoder::new(member);
        let mut got = Vec::new();
        first.read_to_end(&mut got).unwrap();
        assert!(got == expected, "the tar stream differs");
        assert!(first.into_inner().is_empty(), "bytes after the member");
        assert_eq!(spliced.digest, hex::encode(Sha1::digest(&expected)));
    }

    /// (compressed clusters a cluster long, clusters of any other kind) by the walker.
    fn census_of(qcow2: &Path) -> (u64, u64) {
        let mut disk = Qcow2Image::open(File::open(qcow2).unwrap()).unwrap();
        let cluster_size = disk.cluster_size();
        let mut counts = (0, 0);
        for cluster in disk.clusters() {
            let cluster = cluster.unwrap();
            match cluster.kind {
                ClusterKind::Compressed(_) if cluster.len == cluster_size => counts.0 += 1,
                _ => counts.1 += 1,
            }
        }
        counts
    }

    #[test]
    fn qemu_img_compressed_disks_splice_to_qemu_s_raw_disk_at_every_cluster_size() {
        if !have_qemu_img("qemu_img_compressed_disks_splice_to_qemu_s_raw_disk") {
            return;
        }
        let raw = mixed_raw();
        for options in [
            &["-c"][..],
            &["-c", "-o", "cluster_size=4096"],
            &["-c", "-o", "cluster_size=65536"],
            &["-c", "-o", "cluster_size=512"],
            &["-c", "-o", "compat=0.10"],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let qcow2 = qcow2_of(dir.path(), &raw, options);
            let image = qemu_raw(&qcow2);
            assert!(image == raw, "{options:?}: qemu reads back the raw disk");
            let (member, spliced) = splice_file(&qcow2, 6).unwrap();
            assert_holds(&member, &spliced, &image);
            let (compressed, _) = census_of(&qcow2);
            assert!(
                compressed > 10,
                "{options:?}: {compressed} compressed clusters"
            );
            assert_eq!(spliced.copied_clusters, compressed, "{options:?}");
            assert!(
                spliced.deflated_clusters > 0,
                "{options:?}: noise and the short last cluster"
            );
        }
    }

    /// At level 0 a fresh deflate stores its bytes: the member is small only because the
    /// clusters' own deflate data was copied, bit for bit, and it was.
    #[test]
    fn compressed_clusters_are_copied_not_deflated_again() {
        if !have_qemu_img("compressed_clusters_are_copied_not_deflated_again") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let raw = text(7, 2 * 1024 * KIB);
        let qcow2 = qcow2_of(dir.path(), &raw, &["-c", "-o", "cluster_size=4096"]);
        let (member, spliced) = splice_file(&qcow2, 0).unwrap();
        assert_holds(&member, &spliced, &raw);
        assert!(
            member.len() * 2 < raw.len(),
            "{} bytes for {} of text at level 0",
            member.len(),
            raw.len()
        );
        // Every cluster's stream, but for its first byte (its BFINAL), lies in the member.
        let mut disk = Qcow2Image::open(File::open(&qcow2).unwrap()).unwrap();
        let mut inflater = Box::<DecompressorOxide>::default();
        let mut out = vec![0u8; 4097];
        let mut copied = 0;
        for index in 0..disk.cluster_count() {
            let cluster = disk.cluster(index).unwrap();
            let mut stream = disk.compressed_data(&cluster).unwrap().to_vec();
            let end = inflate_cluster(&mut inflater, &mut stream, &mut out, 4096).unwrap();
            let whole = (end / 8) as usize;
            if whole > 40 {
                assert!(holds_bits(&member, &stream[1..whole]), "cluster {index}");
                copied += 1;
            }
        }
        assert!(copied as u64 * 2 > disk.cluster_count(), "{copied} checked");
        assert_eq!(spliced.copied_clusters, disk.cluster_count());
        assert_eq!(spliced.deflated_clusters, 0);
    }

    /// Whether `needle`'s bits appear in `haystack` at any bit offset.
    fn holds_bits(haystack: &[u8], needle: &[u8]) -> bool {
        (0..8).any(|shift| {
            // `needle` shifted up by `shift` bits: its inner bytes are whole in the haystack.
            let shifted: Vec<u8> = needle
                .windows(2)
                .map(|pair| (pair[1] << shift) | ((u16::from(pair[0]) >> (8 - shift)) as u8))
                .collect();
            haystack.windows(shifted.len()).any(|w| w == &shifted[..])
        })
    }

    #[test]
    fn uncompressed_clusters_written_by_qemu_io_are_deflated_between_spliced_ones() {
        if !have_qemu_img("uncompressed_clusters_written_by_qemu_io") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let raw = mixed_raw();
        let qcow2 = qcow2_of(dir.path(), &raw, &["-c"]);
        let path = qcow2.to_str().unwrap();
        // A pattern over compressed clusters and a hole: rewritten uncompressed.
        run(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0xab 64k 192k", path],
        );
        run(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x5c 1536k 64k", path],
        );
        // A zero cluster (v3's zero flag) over a compressed one.
        run("qemu-io", &["-f", "qcow2", "-c", "write -z 0 64k", path]);
        let image = qemu_raw(&qcow2);
        assert!(image != raw);
        let (member, spliced) = splice_file(&qcow2, 6).unwrap();
        assert_holds(&member, &spliced, &image);
        assert!(spliced.copied_clusters > 3);
        // The four clusters of patterns at least; noise qemu left uncompressed may be stored.
        assert!(spliced.deflated_clusters >= 4, "{spliced:?}");
    }

    /// Noise that `qemu-img convert -c` left uncompressed goes in as stored blocks (not deflated
    /// again), a pattern a guest wrote later is deflated, and either way the tar stream is qemu's.
    #[test]
    fn clusters_qemu_could_not_compress_are_stored_and_compressible_ones_deflated() {
        if !have_qemu_img("clusters_qemu_could_not_compress_are_stored") {
            return;
        }
        assert!(looks_incompressible(&noise(9, 64 * KIB)));
        assert!(!looks_incompressible(&text(9, 64 * KIB)));
        assert!(!looks_incompressible(&[0xab; 64 * KIB]));
        let dir = tempfile::tempdir().unwrap();
        let mut raw = noise(7, 256 * KIB);
        raw.extend(text(8, 256 * KIB));
        let qcow2 = qcow2_of(dir.path(), &raw, &["-c"]);
        let path = qcow2.to_str().unwrap();
        run(
            "qemu-io",
            &["-f", "qcow2", "-c", "write -P 0x5c 256k 64k", path],
        );
        let image = qemu_raw(&qcow2);
        let (member, spliced) = splice_file(&qcow2, 6).unwrap();
        assert_holds(&member, &spliced, &image);
        assert_eq!(spliced.stored_clusters, 4, "{spliced:?}");
        assert_eq!(spliced.deflated_clusters, 1, "{spliced:?}");
        assert!(spliced.copied_clusters >= 3, "{spliced:?}");
    }

    #[test]
    fn an_empty_disk_and_one_all_of_zeros_are_spliced() {
        if !have_qemu_img("an_empty_disk_and_one_all_of_zeros_are_spliced") {
            return;
        }
        for raw in [Vec::new(), vec![0u8; 5 * 1024 * KIB + 512]] {
            let dir = tempfile::tempdir().unwrap();
            let qcow2 = qcow2_of(dir.path(), &raw, &["-c"]);
            let (member, spliced) = splice_file(&qcow2, 6).unwrap();
            assert_holds(&member, &spliced, &raw);
            // The stored tar header, about 85 bytes a 64 KiB cluster of zeros, the framing.
            assert!(
                member.len() < 600 + raw.len() / 500,
                "{} bytes",
                member.len()
            );
        }
    }

    fn refusal(result: Result<(Vec<u8>, Spliced), BundleError>) -> Refusal {
        match result {
            Err(BundleError::NotSpliceable(Unsuitable::Qcow2(why))) => why,
            Err(other) => panic!("refused otherwise: {other}"),
            Ok(_) => panic!("spliced"),
        }
    }

    /// A 4 KiB-cluster fixture and the host offset and sectors' length of its `n`th compressed
    /// cluster.
    fn with_cluster_replaced(dir: &Path, n: usize, stream: &[u8]) -> std::path::PathBuf {
        let raw = text(8, 64 * KIB);
        let qcow2 = qcow2_of(dir, &raw, &["-c", "-o", "cluster_size=4096"]);
        let mut disk = Qcow2Image::open(File::open(&qcow2).unwrap()).unwrap();
        let cluster = disk.cluster(n as u64).unwrap();
        let ClusterKind::Compressed(compressed) = cluster.kind else {
            panic!("cluster {n} is compressed");
        };
        assert!(
            stream.len() as u64 <= compressed.len,
            "the stream fits its sectors"
        );
        let mut bytes = std::fs::read(&qcow2).unwrap();
        let at = compressed.host_offset as usize;
        bytes[at..at + stream.len()].copy_from_slice(stream);
        std::fs::write(&qcow2, &bytes).unwrap();
        qcow2
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// Each cluster the converter refuses is refused here by name, and the converter (the
    /// pipeline's fallback) refuses it too.
    #[test]
    fn a_cluster_that_is_not_exactly_one_cluster_on_its_own_is_not_spliced() {
        if !have_qemu_img("a_cluster_that_is_not_exactly_one_cluster") {
            return;
        }
        let fault = |stream: &[u8]| {
            let dir = tempfile::tempdir().unwrap();
            let qcow2 = with_cluster_replaced(dir.path(), 3, stream);
            let mut converted = Vec::new();
            let converter = Qcow2Image::open(File::open(&qcow2).unwrap())
                .unwrap()
                .into_reader()
                .read_to_end(&mut converted);
            assert!(converter.is_err(), "the converter refuses it too");
            match refusal(splice_file(&qcow2, 6)) {
                Refusal::Cluster {
                    guest_offset,
                    fault,
                    ..
                } => {
                    assert_eq!(guest_offset, 3 * 4096);
                    fault
                }
                other => panic!("{other}"),
            }
        };
        assert_eq!(fault(&raw_deflate(&[b'a'; 4095])), Fault::Short);
        assert_eq!(fault(&raw_deflate(&[b'a'; 4097])), Fault::Long);
        assert_eq!(fault(&[0xff; 64]), Fault::Corrupt);
        // A match one byte back before anything was written: zlib refuses it, and spliced after
        // the cluster before it, it would read that cluster's last byte.
        let mut bits = BitWriter::new();
        bits.push_bits(0b011, 3); // final, fixed Huffman
        bits.push_bits(0b100_0000, 7); // length code 257 (3 bytes)
        bits.push_bits(0, 5); // distance code 0: 1 byte back
        bits.push_bits(0, 7); // end of block
        bits.align();
        assert_eq!(fault(&bits.take_whole_bytes()), Fault::Corrupt);
        // A stored block of 4096 bytes that the cluster's sectors end inside.
        assert_eq!(fault(&[0, 0x00, 0x10, 0xff, 0xef]), Fault::Unterminated);
    }

    #[test]
    fn a_disk_made_without_compression_is_left_to_the_parallel_deflate() {
        if !have_qemu_img("a_disk_made_without_compression") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let qcow2 = qcow2_of(dir.path(), &mixed_raw(), &[]);
        let mut disk = Qcow2Image::open(File::open(&qcow2).unwrap()).unwrap();
        let refused = census(&mut disk, &qcow2).unwrap_err();
        assert!(
            matches!(
                refused,
                BundleError::NotSpliceable(Unsuitable::Qcow2(Refusal::MostlyUncompressed { .. }))
            ),
            "{refused}"
        );
        // It would still splice correctly.
        let (member, spliced) = splice_file(&qcow2, 1).unwrap();
        assert_holds(&member, &spliced, &mixed_raw());
        assert_eq!(spliced.copied_clusters, 0);
        // With -c, the census lets it through.
        let qcow2 = qcow2_of(dir.path(), &mixed_raw(), &["-c"]);
        let mut disk = Qcow2Image::open(File::open(&qcow2).unwrap()).unwrap();
        census(&mut disk, &qcow2).unwrap();
    }

    /// Through `bundle` as the pipeline calls it: the file at rest, and the same file arriving
    /// through a `GrowingFile` while a thread writes it; the walker's refusals of an image
    /// feature are an `Unsuitable`, a failed download the install's error.
    #[test]
    fn bundle_reads_the_disk_at_rest_and_arriving() {
        use crate::catalog::model::{Compression, FileKind, Packing};
        use crate::fetch::growing::Growth;
        if !have_qemu_img("bundle_reads_the_disk_at_rest_and_arriving") {
            return;
        }
        struct Parts;
        impl PartSink for Parts {
            fn image_bytes(&mut self, _: u64) -> bool {
                true
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let raw = mixed_raw();
        let qcow2 = qcow2_of(dir.path(), &raw, &["-c"]);
        let bytes = std::fs::read(&qcow2).unwrap();
        let keys = crate::bundle::keys::fake_cloud_keys(&dir.path().join("keys")).unwrap();
        let gzip = GzipSettings {
            level: 1,
            threads: 1,
            recompress: false,
        };
        let partial = dir.path().join("disk.part");
        let growth = Growth::new();
        let open = |growth: &Growth| {
            let growth = growth.clone();
            let (partial, promoted) = (partial.clone(), dir.path().join("disk.promoted"));
            let size = bytes.len() as u64;
            move || -> std::io::Result<Box<dyn unpack::SourceRead>> {
                Ok(Box::new(growth.reader(
                    partial.clone(),
                    promoted.clone(),
                    size,
                )))
            }
        };
        let arriving = open(&growth);
        fn machine_image<'a>(
            path: &'a Path,
            size: u64,
            arriving: Option<unpack::OpenArriving<'a>>,
        ) -> SourceImage<'a> {
            SourceImage {
                kind: FileKind::Image,
                path,
                arriving,
                trailer_isize: None,
                size,
                compression: Compression::None,
                packing: Packing::Qcow2,
                prefix: "disk.img",
                arch: "x86_64",
                kernel_id: None,
                ramdisk_id: None,
            }
        }
        let image = |arriving| machine_image(&qcow2, bytes.len() as u64, arriving);
        for out in ["at-rest", "arriving", "failed", "encrypted"] {
            std::fs::create_dir_all(dir.path().join(out)).unwrap();
        }
        let at_rest = bundle(
            &image(None),
            &keys,
            &dir.path().join("at-rest"),
            gzip,
            raw.len() as u64,
            &|_| {},
            &mut Parts,
        )
        .unwrap();
        let writer = std::thread::scope(|scope| {
            let writing = scope.spawn(|| {
                let mut file = File::create(&partial).unwrap();
                for (n, chunk) in bytes.chunks(50_000).enumerate() {
                    file.write_all(chunk).unwrap();
                    file.flush().unwrap();
                    growth.advance(((n + 1) * 50_000).min(bytes.len()) as u64);
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                growth.whole();
            });
            let made = bundle(
                &image(Some(&arriving)),
                &keys,
                &dir.path().join("arriving"),
                gzip,
                raw.len() as u64,
                &|_| {},
                &mut Parts,
            );
            writing.join().unwrap();
            made
        });
        let arrived = writer.unwrap();
        assert_eq!(arrived.digest, at_rest.digest);
        assert_eq!(
            at_rest.digest,
            hex::encode(Sha1::digest(tar_stream("disk.img", &raw)))
        );

        // A download that fails: the install's error, not a fallback.
        let failing = Growth::new();
        let open_failing = open(&failing);
        failing.failed("the upstream went away");
        let error = bundle(
            &image(Some(&open_failing)),
            &keys,
            &dir.path().join("failed"),
            gzip,
            raw.len() as u64,
            &|_| {},
            &mut Parts,
        )
        .unwrap_err();
        assert!(matches!(error, BundleError::Unpack(_)), "{error}");
        assert!(
            error.to_string().contains("the upstream went away"),
            "{error}"
        );

        // An encrypted image: the walker refuses it, and the pipeline converts instead.
        let encrypted = dir.path().join("encrypted.qcow2");
        let made = Command::new("qemu-img")
            .args([
                "create",
                "-f",
                "qcow2",
                "--object",
                "secret,id=s0,data=hunter2",
            ])
            .args(["-o", "encrypt.format=luks,encrypt.key-secret=s0"])
            .arg(&encrypted)
            .arg("1M")
            .output()
            .unwrap();
        if made.status.success() {
            let encrypted_size = std::fs::metadata(&encrypted).unwrap().len();
            let mut image = image(None);
            image.path = &encrypted;
            image.size = encrypted_size;
            let error = bundle(
                &image,
                &keys,
                &dir.path().join("encrypted"),
                gzip,
                1 << 20,
                &|_| {},
                &mut Parts,
            )
            .unwrap_err();
            assert!(
                matches!(
                    error,
                    BundleError::NotSpliceable(Unsuitable::Qcow2(Refusal::Walker(_)))
                ),
                "{error}"
            );
        }
    }
}
