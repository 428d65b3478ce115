//! The bundle's gzip member made from the upstream's own deflate data (issue 16, after zlib's
//! `examples/gzjoin.c`), over one walk of the upstream's blocks (`member.rs`). A UEC tarball's
//! member is `uec.rs`'s: its interior blocks copied, its head and tail deflated afresh.
//!
//! For a gzipped raw image the tar header goes in as a non-final stored
//! block, then the upstream's deflate data with its BFINAL bit cleared, copied byte for byte,
//! then empty blocks to the next byte boundary, then a fresh final deflate of the tar padding
//! and end-of-archive; the CRC-32s are combined. The one inflate pass that finds the upstream's
//! block boundaries also gives the tar stream's SHA-1 and the image's exact length, and checks
//! the upstream's CRC-32 and ISIZE. What comes out is one ordinary gzip member (Python's
//! `tarfile` `r|gz` reads only the first), whose tar stream is byte for byte the one
//! recompression writes: the manifest's digest and size do not change.
//!
//! Anything the splicer does not expect (a second member, bytes after the trailer, a CRC or
//! ISIZE that does not match, corrupt or cut deflate data, an odd header) is an [`Unsuitable`]:
//! the pipeline then recompresses, which reports bad data with its usual error.
//!
//! The splicer reads the source through `std::io::Read` only; `unpack::with_source_bytes` opens it.
//! A compressed qcow2 disk's clusters are spliced by `cluster.rs`, which reads the file at offsets.

mod bits;
pub mod cluster;
mod member;
mod uec;

use super::SourceImage;
use super::format::{self, Bundle, BundleError, PartSink};
use super::gzip::GzipSettings;
use super::keys::BundleKeys;
use crate::catalog::model::{Compression, Packing};
use crate::unpack;
use bits::BitWriter;
use member::Step;
use sha1::{Digest, Sha1};
use std::io::{Read, Write};
use std::path::Path;

/// Why an upstream's gzip is recompressed rather than spliced: each a whole line after "the
/// upstream's compressed data cannot be spliced: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsuitable {
    #[error("its header has {0}")]
    Header(&'static str),
    #[error("its deflate data is corrupt near compressed byte {0}")]
    Corrupt(u64),
    #[error("it ends before its deflate data or trailer does")]
    Truncated,
    #[error("its trailer's CRC-32 is {stated:08x}, the data's {actual:08x}")]
    Crc { stated: u32, actual: u32 },
    #[error("its trailer's ISIZE is {stated}, the data is {actual} bytes")]
    Length { stated: u32, actual: u64 },
    #[error("a second gzip member follows the first")]
    SecondMember,
    #[error("bytes that are not a gzip member follow its trailer")]
    TrailingData,
    #[error("its image's size is not known before its bytes")]
    UnknownSize,
    #[error("its tar stream could not be followed: {0}")]
    Tar(&'static str),
    #[error(transparent)]
    Qcow2(cluster::Refusal),
}

impl From<Unsuitable> for BundleError {
    fn from(why: Unsuitable) -> Self {
        BundleError::NotSpliceable(why)
    }
}

/// ID1 ID2, deflate, no flags, no mtime, no extra flags, OS unknown: as `gzip.rs` writes it.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// Whether `image` is bundled by splicing: a gzipped raw image or UEC tarball, or a qcow2 disk
/// (its compressed clusters), unless `--recompress`.
pub fn applies(image: &SourceImage<'_>, gzip: GzipSettings) -> bool {
    !gzip.recompress
        && matches!(
            (image.compression, image.packing),
            (Compression::Gzip, Packing::Raw | Packing::Tar) | (Compression::None, Packing::Qcow2)
        )
}

/// Bundles `image` into `dir` by splicing (a qcow2 disk: `cluster.rs`; a UEC tarball's member:
/// `uec.rs`); `size` is the image's when known before its bytes (a raw image's trailer guess, a
/// qcow2's virtual size: a tarball's member states its own); `consumed` is told the source bytes
/// read. [`BundleError::NotSpliceable`] when the upstream's data is not one to splice: nothing is
/// then finished (no manifest), and the caller recompresses.
pub fn bundle(
    image: &SourceImage<'_>,
    keys: &BundleKeys,
    dir: &Path,
    gzip: GzipSettings,
    size: Option<u64>,
    consumed: &(dyn Fn(u64) + Sync),
    sink: &mut dyn PartSink,
) -> Result<Bundle, BundleError> {
    let size = match (image.packing, size) {
        (Packing::Tar, _) => return uec::bundle(image, keys, dir, gzip, consumed, sink),
        (_, None) => return Err(Unsuitable::UnknownSize.into()),
        (Packing::Qcow2, Some(size)) => {
            return cluster::bundle(image, keys, dir, gzip, size, consumed, sink);
        }
        (_, Some(size)) => size,
    };
    let spec = image.bundle_spec(size, gzip);
    unpack::with_source_bytes(image.source(), consumed, |source| {
        format::write_bundle_with(&spec, keys, dir, sink, &mut |out, tick| {
            write_member(source, image.prefix, size, gzip.level, out, tick)
        })
    })
}

/// Writes the tar stream of the `size`-byte image whose gzip `source` is, as one gzip member
/// spliced from `source`'s deflate data, into `out`; the tar stream's SHA-1, hex. `tick` is
/// told the image bytes done and says whether to go on.
pub fn write_member(
    source: &mut dyn Read,
    name: &str,
    size: u64,
    level: u32,
    out: &mut dyn Write,
    tick: &mut dyn FnMut(u64) -> bool,
) -> Result<String, BundleError> {
    let header = format::tar_header(name, size);
    let mut sha1 = Sha1::new();
    sha1.update(header);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header);

    let mut bits = BitWriter::new();
    bits.push_bytes(&GZIP_HEADER);
    bits.stored_block(&header, false);
    write_out(out, name, &bits.take_whole_bytes())?;

    let done = std::cell::Cell::new(0u64);
    let mut cancelled = |_| tick(done.get());
    let mut walker = member::Walker::new(source, &mut cancelled)?;
    // Passed on as soon as settled: the upstream's data whole, BFINAL bits cleared.
    let mut forwarded = walker.start_bit() / 8;
    let end = loop {
        let end = match walker.next()? {
            Step::Inflated { len } => {
                done.set(done.get() + len as u64);
                if done.get() > size {
                    return Err(BundleError::SizeMismatch {
                        expected: size,
                        actual: done.get(),
                    });
                }
                sha1.update(walker.inflated());
                None
            }
            Step::Boundary { .. } => None,
            Step::End(end) => Some(end),
        };
        if let Some(end) = end {
            break end;
        }
        let settled = walker.settled();
        if settled > forwarded {
            write_out(out, name, walker.bytes(forwarded, settled))?;
            walker.release(settled);
            forwarded = settled;
        }
    };
    if end.length != size {
        return Err(BundleError::SizeMismatch {
            expected: size,
            actual: end.length,
        });
    }
    crc.combine(&end.crc);

    let tail = vec![0u8; format::tar_tail_len(size) as usize];
    sha1.update(&tail);
    crc.update(&tail);
    let mut bits = BitWriter::new();
    bits.push_bits(u32::from(end.last_byte), end.last_bits);
    bits.align();
    bits.push_bytes(&deflate_final(&tail, level));
    bits.push_bytes(&crc.finalize().to_le_bytes());
    let total = 512 + size + tail.len() as u64;
    bits.push_bytes(&((total % (1 << 32)) as u32).to_le_bytes());
    write_out(out, name, &bits.take_whole_bytes())?;
    Ok(hex::encode(sha1.finalize()))
}

/// Writes `bytes` of the gzip member of `name`'s bundle to `out`: every splicer's one way out.
fn write_out(out: &mut dyn Write, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
    out.write_all(bytes).map_err(|source| BundleError::Write {
        path: format!("bundle of {name}").into(),
        source,
    })
}

/// `data` as a raw deflate stream ending in a final block.
fn deflate_final(data: &[u8], level: u32) -> Vec<u8> {
    let mut compressor = flate2::Compress::new(flate2::Compression::new(level.min(9)), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    let status = compressor
        .compress_vec(data, &mut out, flate2::FlushCompress::Finish)
        .expect("deflate of bytes in memory does not fail");
    assert_eq!(
        status,
        flate2::Status::StreamEnd,
        "the output had room for the whole stream"
    );
    out
}

#[cfg(test)]
mod tests;

pub use uec::{Spliced, Stats, write_member as write_tarball_member};
