//! The image member (or kernel, or ramdisk) of a gzipped UEC tarball, spliced: one inflate pass
//! over the upstream ([`Walker`]) feeds the same tar walk `unpack` makes
//! ([`unpack::with_tar_member`]: the same member picked, the same tarballs refused), which says
//! where the member's bytes `[a, b)` lie in the inflated stream. The bundle's one gzip member is
//! then: our tar header as a stored block; fresh deflate of the member from `a` to the first
//! upstream block boundary at or after `a + 32 KiB`; the upstream's blocks that end inside the
//! member, copied bit for bit wherever they sit (BFINAL cleared); fresh deflate of the rest of
//! the member and the tar padding, final. A copied block starts at least 32 KiB into the member,
//! so every match it makes reaches only member bytes, the same in both streams.
//!
//! A block is known to lie inside the member only once it has ended, so its compressed bytes
//! and its inflated bytes are held until then, each up to [`SPLICE_HOLD_MAX_BYTES`]: a block
//! bigger than that is deflated afresh instead, and copying resumes at the next boundary (any
//! boundary: what precedes it is member bytes either way). Each fresh piece is a new deflate
//! stream (the compressor reset), so it never reaches back before its own start.

use super::bits::BitWriter;
use super::member::{Step, Walker};
use super::{GZIP_HEADER, SourceImage, Unsuitable};
use crate::bundle::format::{self, Bundle, BundleError, PartSink};
use crate::bundle::gzip::GzipSettings;
use crate::bundle::keys::BundleKeys;
use crate::catalog::model::FileKind;
use crate::limits::SPLICE_HOLD_MAX_BYTES;
use crate::unpack::{self, UnpackError};
use flate2::{Compress, FlushCompress, Status};
use sha1::{Digest, Sha1};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::path::Path;

/// Deflate's window: a block starting this far into the member reaches only member bytes.
const HISTORY: u64 = 32 << 10;
/// The tar reader's reads of the member: large, so the hand-over costs little.
const READ: usize = 256 << 10;

/// Bundles `image`'s member of its role from the gzipped tarball, spliced.
pub fn bundle(
    image: &SourceImage<'_>,
    keys: &BundleKeys,
    dir: &Path,
    gzip: GzipSettings,
    consumed: &(dyn Fn(u64) + Sync),
    sink: &mut dyn PartSink,
) -> Result<Bundle, BundleError> {
    // The size is stated by the member's own header, met mid-stream.
    let spec = image.bundle_spec(0, gzip);
    unpack::with_source_bytes(image.source(), consumed, |source| {
        format::write_bundle_sized_by(&spec, keys, dir, sink, &mut |out, tick| {
            let spliced = write_member(
                source,
                image.path,
                image.kind,
                image.prefix,
                gzip.level,
                SPLICE_HOLD_MAX_BYTES,
                out,
                tick,
            )?;
            Ok((spliced.digest, spliced.size))
        })
    })
}

/// What a splice did: how much of the upstream was reused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Upstream blocks copied as they were, and their bits.
    pub copied_blocks: u64,
    pub copied_bits: u64,
    /// Member bytes deflated afresh: the head, the tail, blocks too big to hold.
    pub fresh_bytes: u64,
    /// Blocks too big to hold, deflated afresh.
    pub overflowed_blocks: u64,
}

/// The member's tar stream as spliced.
#[derive(Debug)]
pub struct Spliced {
    /// The tar stream's SHA-1, hex.
    pub digest: String,
    /// The member's size, as its header states it.
    pub size: u64,
    pub stats: Stats,
}

/// Writes the tar stream of the member of role `wanted` in the gzipped tarball `source` (named
/// `path` in refusals) as one gzip member named `name` into `out`, spliced from `source`'s
/// deflate data, holding at most `hold` bytes of a block. `tick` is told the member bytes done
/// and says whether to go on. A tarball `unpack` refuses is refused with its error.
#[allow(clippy::too_many_arguments)]
pub fn write_member(
    source: &mut dyn Read,
    path: &Path,
    wanted: FileKind,
    name: &str,
    level: u32,
    hold: usize,
    out: &mut dyn Write,
    tick: &mut dyn FnMut(u64) -> bool,
) -> Result<Spliced, BundleError> {
    let mut go_on = |_| true;
    let walker = Walker::new(source, &mut go_on)?;
    let announced = Cell::new(None);
    let mut follower = Follower {
        walker,
        at: 0,
        len: 0,
        handed: 0,
        announced: &announced,
        ended: false,
        failure: None,
        splice: Splice {
            name,
            hold_limit: hold,
            out,
            tick,
            bits: BitWriter::new(),
            sha1: Sha1::new(),
            crc: crc32fast::Hasher::new(),
            compressor: Compress::new(flate2::Compression::new(level.min(9)), false),
            piece: Vec::with_capacity(READ),
            // Untouched pages cost no memory: only what a block fills is resident.
            held: Vec::with_capacity(hold.saturating_add(READ)),
            member: None,
            done: 0,
            state: State::Before,
            stats: Stats::default(),
        },
    };
    let walked = unpack::with_tar_member(path, &mut follower, wanted, |offset, stream| {
        announced.set(Some((offset, stream.size.unwrap_or_default())));
        let mut buf = vec![0u8; READ];
        loop {
            match stream.reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(UnpackError::reading(path, e)),
            }
        }
    });
    // The splice's own failure first: the tar walk only saw its reads stop.
    if let Some(failure) = follower.failure.take() {
        return Err(failure);
    }
    walked?;
    // The rest of the upstream (what follows the tar's end), for its CRC-32 and ISIZE.
    let drained = io::copy(&mut follower, &mut io::sink());
    if let Some(failure) = follower.failure.take() {
        return Err(failure);
    }
    drained.map_err(BundleError::Read)?;
    let splice = follower.splice;
    match (splice.state, splice.member) {
        (State::Done, Some((_, size))) => Ok(Spliced {
            digest: hex::encode(splice.sha1.finalize()),
            size,
            stats: splice.stats,
        }),
        _ => Err(Unsuitable::Tar("the member's bytes were not all met").into()),
    }
}

/// The inflated stream as the tar walk reads it, each byte handed to the splice as it is read:
/// the splice learns where the member is (`announced`, set by the walk) before its first byte.
struct Follower<'a, 'w> {
    walker: Walker<'w>,
    /// The unread part of the last inflated chunk: `walker.inflated()[at..len]`.
    at: usize,
    len: usize,
    /// Inflated bytes read so far.
    handed: u64,
    announced: &'a Cell<Option<(u64, u64)>>,
    ended: bool,
    /// Why the splice stopped, kept from the tar walk (which sees only an I/O error).
    failure: Option<BundleError>,
    splice: Splice<'a>,
}

impl Follower<'_, '_> {
    /// Inflated bytes to read, walking on as needed; false at the end of the upstream.
    fn fill(&mut self) -> Result<bool, BundleError> {
        while self.at == self.len {
            if self.ended {
                return Ok(false);
            }
            match self.walker.next()? {
                Step::Inflated { len } => {
                    self.at = 0;
                    self.len = len;
                }
                Step::Boundary { bit, out } => {
                    debug_assert_eq!(out, self.handed, "boundaries come after their bytes");
                    self.splice.boundary(&self.walker, bit, out)?;
                }
                Step::End(_) => {
                    self.ended = true;
                    self.splice.ended(self.handed, self.announced.get())?;
                }
            }
            self.splice.keep(&mut self.walker)?;
        }
        Ok(true)
    }

    fn stop(&mut self, error: BundleError) -> io::Error {
        self.failure = Some(error);
        io::Error::other("the splice stopped")
    }
}

impl Read for Follower<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("the splice stopped"));
        }
        match self.fill() {
            Ok(true) => {}
            Ok(false) => return Ok(0),
            Err(error) => return Err(self.stop(error)),
        }
        let n = buf.len().min(self.len - self.at);
        let bytes = &self.walker.inflated()[self.at..self.at + n];
        buf[..n].copy_from_slice(bytes);
        let handed = self.splice.handed(self.handed, bytes, self.announced.get());
        self.at += n;
        self.handed += n as u64;
        handed.map_err(|error| self.stop(error))?;
        Ok(n)
    }
}

/// Where the splice is in the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The member has not begun.
    Before,
    /// Deflating afresh until the first boundary at or after this inflated offset.
    Fresh { until: u64 },
    /// Holding the block that began at this input bit, to copy it if it ends inside the member.
    Hold { bit: u64 },
    /// The gzip member is written whole.
    Done,
}

/// The bundle's gzip member as it is written.
struct Splice<'a> {
    name: &'a str,
    hold_limit: usize,
    out: &'a mut dyn Write,
    tick: &'a mut dyn FnMut(u64) -> bool,
    bits: BitWriter,
    /// Of our tar stream.
    sha1: Sha1,
    crc: crc32fast::Hasher,
    compressor: Compress,
    /// The compressor's output, written as it comes.
    piece: Vec<u8>,
    /// The held block's inflated bytes.
    held: Vec<u8>,
    /// The member's data offset in the inflated stream and its size.
    member: Option<(u64, u64)>,
    /// Member bytes met.
    done: u64,
    state: State,
    stats: Stats,
}

impl Splice<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        super::write_out(self.out, self.name, bytes)
    }

    fn write_bits(&mut self) -> Result<(), BundleError> {
        let whole = self.bits.take_whole_bytes();
        self.write(&whole)
    }

    /// The end of the member, `b`.
    fn member_end(&self) -> u64 {
        self.member.map_or(u64::MAX, |(a, size)| a + size)
    }

    /// The tar walk read `bytes`, which begin at inflated offset `at`; `announced` is the member
    /// once the walk has met it.
    fn handed(
        &mut self,
        at: u64,
        bytes: &[u8],
        announced: Option<(u64, u64)>,
    ) -> Result<(), BundleError> {
        if !(self.tick)(self.done) {
            return Err(BundleError::Cancelled);
        }
        if self.state == State::Before {
            let Some((a, size)) = announced else {
                return Ok(());
            };
            if at != a {
                return Err(
                    Unsuitable::Tar("the member's bytes are not where its header ends").into(),
                );
            }
            self.begin(a, size)?;
        }
        if self.state == State::Done {
            return Ok(());
        }
        let b = self.member_end();
        let end = at + bytes.len() as u64;
        let inside = &bytes[..b.min(end).saturating_sub(at) as usize];
        self.member_bytes(inside)?;
        // A held block that reaches past the member is not copied: its bytes are deflated.
        match self.state {
            State::Fresh { .. } if end >= b => self.tail(),
            State::Hold { .. } if end > b => {
                self.fresh_from_held()?;
                self.tail()
            }
            _ => Ok(()),
        }
    }

    /// The member is announced: the gzip header and our tar header go out, and the head's
    /// fresh deflate begins.
    fn begin(&mut self, a: u64, size: u64) -> Result<(), BundleError> {
        self.member = Some((a, size));
        let header = format::tar_header(self.name, size);
        self.sha1.update(header);
        self.crc.update(&header);
        self.bits.push_bytes(&GZIP_HEADER);
        self.bits.stored_block(&header, false);
        self.write_bits()?;
        self.compressor.reset();
        self.state = State::Fresh { until: a + HISTORY };
        Ok(())
    }

    fn member_bytes(&mut self, bytes: &[u8]) -> Result<(), BundleError> {
        self.sha1.update(bytes);
        self.crc.update(bytes);
        self.done += bytes.len() as u64;
        match self.state {
            State::Fresh { .. } => {
                self.stats.fresh_bytes += bytes.len() as u64;
                self.deflate(bytes, FlushCompress::None)
            }
            State::Hold { .. } => {
                self.held.extend_from_slice(bytes);
                if self.held.len() > self.hold_limit {
                    self.overflow()?;
                }
                Ok(())
            }
            State::Before | State::Done => Ok(()),
        }
    }

    /// A block boundary at input bit `bit`, after `out` inflated bytes.
    fn boundary(&mut self, walker: &Walker<'_>, bit: u64, out: u64) -> Result<(), BundleError> {
        let b = self.member_end();
        match self.state {
            State::Fresh { until } if out >= until && out < b => {
                self.deflate(&[], FlushCompress::Sync)?;
                self.held.clear();
                self.state = State::Hold { bit };
            }
            State::Hold { bit: start } => {
                // It ended inside the member (past it, it would have been deflated instead).
                let from = start / 8;
                let src = walker.bytes(from, bit.div_ceil(8));
                self.bits
                    .push_bit_range(src, start - from * 8, bit - from * 8);
                self.write_bits()?;
                self.stats.copied_blocks += 1;
                self.stats.copied_bits += bit - start;
                self.held.clear();
                if out == b {
                    self.start_piece()?;
                    self.tail()?;
                } else {
                    self.state = State::Hold { bit };
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The upstream ended after `handed` inflated bytes; `announced` as in [`Self::handed`].
    fn ended(&mut self, handed: u64, announced: Option<(u64, u64)>) -> Result<(), BundleError> {
        if let (State::Before, Some((a, size))) = (self.state, announced) {
            // An empty member last in a tarball without an end-of-archive: no byte was read.
            if handed != a {
                return Err(
                    Unsuitable::Tar("the member's bytes are not where its header ends").into(),
                );
            }
            self.begin(a, size)?;
        }
        match self.state {
            State::Done | State::Before => Ok(()),
            _ if handed < self.member_end() => {
                Err(Unsuitable::Tar("the upstream ends inside the member").into())
            }
            State::Hold { .. } => {
                self.fresh_from_held()?;
                self.tail()
            }
            State::Fresh { .. } => self.tail(),
        }
    }

    /// Releases the compressed bytes no longer needed; a held block too big becomes fresh.
    fn keep(&mut self, walker: &mut Walker<'_>) -> Result<(), BundleError> {
        let settled = walker.settled();
        match self.state {
            State::Hold { bit } => {
                if walker.held_since(bit / 8) > self.hold_limit as u64 {
                    self.overflow()?;
                    walker.release(settled);
                } else {
                    walker.release(settled.min(bit / 8));
                }
            }
            _ => walker.release(settled),
        }
        Ok(())
    }

    /// The held block is too big: deflated afresh from its start, copying resuming at the next
    /// boundary.
    fn overflow(&mut self) -> Result<(), BundleError> {
        self.stats.overflowed_blocks += 1;
        self.fresh_from_held()
    }

    /// A fresh piece begins with the held block's bytes.
    fn fresh_from_held(&mut self) -> Result<(), BundleError> {
        self.start_piece()?;
        self.state = State::Fresh { until: 0 };
        self.stats.fresh_bytes += self.held.len() as u64;
        let held = std::mem::take(&mut self.held);
        let deflated = self.deflate(&held, FlushCompress::None);
        self.held = held;
        self.held.clear();
        deflated
    }

    /// A fresh piece begins on a byte boundary, its compressor knowing nothing before it.
    fn start_piece(&mut self) -> Result<(), BundleError> {
        self.bits.align();
        self.write_bits()?;
        self.compressor.reset();
        Ok(())
    }

    /// The member's last bytes are in the running fresh piece: the tar padding and
    /// end-of-archive after them, the final block, the gzip trailer.
    fn tail(&mut self) -> Result<(), BundleError> {
        let (_, size) = self.member.expect("the member began");
        let zeros = vec![0u8; format::tar_tail_len(size) as usize];
        self.sha1.update(&zeros);
        self.crc.update(&zeros);
        self.deflate(&zeros, FlushCompress::Finish)?;
        let total = 512 + size + zeros.len() as u64;
        let mut trailer = self.crc.clone().finalize().to_le_bytes().to_vec();
        trailer.extend(((total % (1 << 32)) as u32).to_le_bytes());
        self.write(&trailer)?;
        self.state = State::Done;
        Ok(())
    }

    /// `data` into the running fresh piece (which starts byte-aligned), its output written.
    /// `Sync` ends the piece on a byte boundary, non-final; `Finish` ends the stream.
    fn deflate(&mut self, mut data: &[u8], flush: FlushCompress) -> Result<(), BundleError> {
        loop {
            self.piece.clear();
            let before = self.compressor.total_in();
            let status = self
                .compressor
                .compress_vec(data, &mut self.piece, flush)
                .expect("deflate of bytes in memory does not fail");
            data = &data[(self.compressor.total_in() - before) as usize..];
            let full = self.piece.len() == self.piece.capacity();
            let piece = std::mem::take(&mut self.piece);
            let written = self.write(&piece);
            self.piece = piece;
            written?;
            let finished = match flush {
                FlushCompress::Finish => status == Status::StreamEnd,
                _ => data.is_empty() && !full,
            };
            if finished {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
#[path = "uec_tests.rs"]
mod tests;
