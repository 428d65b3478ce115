//! One gzip member read through once, as a walk over its deflate blocks: the one owner of "walk
//! the upstream's blocks, report where each ends as (input bit, output byte)". Its header is
//! skipped, its deflate data inflated (the bytes go to the caller, for the tar stream's SHA-1 and
//! length, and for the UEC splicer's tar reader), and every BFINAL bit is cleared in the
//! compressed bytes it keeps, so any run of its blocks can be copied into a longer stream. The
//! trailer's CRC-32 and ISIZE are checked against what inflated, and nothing may follow the member.
//!
//! The caller decides which compressed bytes it still needs ([`Walker::release`]): the raw-image
//! splice passes them on as soon as they are settled, the UEC splice keeps the block it may copy.

use super::Unsuitable;
use crate::bundle::BundleError;
use crate::limits::{SPLICE_MAX_GZIP_HEADER_BYTES, SPLICE_READ_BYTES, SPLICE_WINDOW_BYTES};
use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY,
    TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
};
use miniz_oxide::inflate::core::{DecompressorOxide, decompress};
use std::io::{self, Read};

/// Compressed bytes behind the inflater's read position that may still change: the inflater
/// buffers up to 64 bits ahead, and a BFINAL bit to clear may sit in any of them.
const LAG: usize = 16;
/// Deflate's window: the farthest back a match may reach.
const HISTORY: usize = 32 << 10;

/// How the member's deflate data ended.
pub struct End {
    /// The image's exact length, counted (ISIZE is only modulo 2^32).
    pub length: u64,
    /// The CRC-32 of the inflated bytes, checked against the trailer's.
    pub crc: crc32fast::Hasher,
    /// The last, partly used byte of the deflate data (at `bit / 8`) and how many of its bits
    /// are used (1-7), or 0 bits when the data ended on a byte boundary.
    pub last_byte: u8,
    pub last_bits: u8,
}

/// What the walk met next.
pub enum Step {
    /// `len` more inflated bytes, in [`Walker::inflated`] until the next step.
    Inflated { len: usize },
    /// A block ends (and the next begins) at input bit `bit`, after `out` inflated bytes.
    Boundary { bit: u64, out: u64 },
    /// The last block has ended (its boundary was the step before) and the trailer checked.
    End(End),
}

/// The compressed source in a growing buffer: `buf[..released]` may be dropped, `buf[..pos]`
/// consumed by the inflater, `buf[pos..]` not yet.
struct Input<'a> {
    source: &'a mut dyn Read,
    buf: Vec<u8>,
    /// Offset in the source of `buf[0]`.
    base: u64,
    pos: usize,
    released: usize,
    eof: bool,
    /// The CRC-32 of the header bytes read so far, for FHCRC.
    header_crc: crc32fast::Hasher,
}

impl Input<'_> {
    /// Reads more of the source onto the end of the buffer, first dropping what the caller
    /// released. False at the end of the source.
    fn refill(&mut self) -> Result<bool, BundleError> {
        self.buf.drain(..self.released);
        self.base += self.released as u64;
        self.pos -= self.released;
        self.released = 0;
        if self.eof {
            return Ok(false);
        }
        let filled = self.buf.len();
        self.buf.resize(filled + SPLICE_READ_BYTES, 0);
        let n = loop {
            match self.source.read(&mut self.buf[filled..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BundleError::Read(e)),
            }
        };
        self.buf.truncate(filled + n);
        self.eof = n == 0;
        Ok(n > 0)
    }

    /// At least `n` bytes after `pos`, or `Truncated`.
    fn need(&mut self, n: usize) -> Result<(), BundleError> {
        while self.buf.len() - self.pos < n {
            if !self.refill()? {
                return Err(Unsuitable::Truncated.into());
            }
        }
        Ok(())
    }

    /// Skips a zero-terminated header field (FNAME, FCOMMENT).
    fn skip_zero_terminated(&mut self) -> Result<(), BundleError> {
        loop {
            self.need(1)?;
            let byte = self.buf[self.pos];
            self.header_crc.update(&[byte]);
            self.pos += 1;
            self.released = self.pos;
            if byte == 0 {
                return Ok(());
            }
            if self.base + self.pos as u64 > SPLICE_MAX_GZIP_HEADER_BYTES as u64 {
                return Err(Unsuitable::Header("a header field longer than 64 KiB").into());
            }
        }
    }

    /// Takes `n` header bytes, hashed for FHCRC.
    fn take(&mut self, n: usize) -> Result<&[u8], BundleError> {
        self.need(n)?;
        let bytes = &self.buf[self.pos..self.pos + n];
        self.header_crc.update(bytes);
        self.pos += n;
        self.released = self.pos;
        Ok(bytes)
    }

    /// Reads past the gzip header (RFC 1952 §2.3); none of it is kept.
    fn skip_header(&mut self) -> Result<(), BundleError> {
        const FHCRC: u8 = 2;
        const FEXTRA: u8 = 4;
        const FNAME: u8 = 8;
        const FCOMMENT: u8 = 16;
        let fixed: [u8; 10] = self.take(10)?.try_into().expect("10 bytes");
        if fixed[..2] != [0x1f, 0x8b] {
            return Err(Unsuitable::Header("no gzip magic").into());
        }
        if fixed[2] != 8 {
            return Err(Unsuitable::Header("a compression method other than deflate").into());
        }
        let flags = fixed[3];
        if flags & 0xe0 != 0 {
            return Err(Unsuitable::Header("reserved flag bits set").into());
        }
        if flags & FEXTRA != 0 {
            let xlen = self.take(2)?;
            let xlen = usize::from(u16::from_le_bytes([xlen[0], xlen[1]]));
            self.take(xlen)?;
        }
        if flags & FNAME != 0 {
            self.skip_zero_terminated()?;
        }
        if flags & FCOMMENT != 0 {
            self.skip_zero_terminated()?;
        }
        if flags & FHCRC != 0 {
            let expected = (self.header_crc.clone().finalize() & 0xffff) as u16;
            self.need(2)?;
            let stated = u16::from_le_bytes([self.buf[self.pos], self.buf[self.pos + 1]]);
            self.pos += 2;
            self.released = self.pos;
            if stated != expected {
                return Err(Unsuitable::Header("a header CRC that does not match").into());
            }
        }
        Ok(())
    }
}

/// The walk over one gzip member's blocks. Pull it with [`Walker::next`].
pub struct Walker<'a> {
    input: Input<'a>,
    inflater: Box<DecompressorOxide>,
    /// Not miniz's wrapping buffer, which cannot tell a match reaching before the stream's first
    /// byte (zlib refuses it; spliced after our tar header it would read the header): the output
    /// follows up to 32 KiB of history, slid to the front when the buffer fills.
    window: Vec<u8>,
    out_pos: usize,
    /// The last [`Step::Inflated`]'s bytes: `window[chunk..out_pos]`.
    chunk: usize,
    crc: crc32fast::Hasher,
    length: u64,
    /// The current block is the upstream's last (its BFINAL was set, and is now cleared).
    last_block: bool,
    /// A boundary met with inflated bytes, returned after them.
    pending: Option<Step>,
    /// The last block ended at this bit: the trailer is next.
    ended_at: Option<u64>,
    done: bool,
    /// Told the source bytes read at each refill; false stops the walk ([`BundleError::Cancelled`]).
    consumed: &'a mut dyn FnMut(u64) -> bool,
}

impl<'a> Walker<'a> {
    /// Reads past `source`'s gzip header, to the first bit of its deflate data.
    pub fn new(
        source: &'a mut dyn Read,
        consumed: &'a mut dyn FnMut(u64) -> bool,
    ) -> Result<Self, BundleError> {
        let mut input = Input {
            source,
            buf: Vec::with_capacity(SPLICE_READ_BYTES + LAG),
            base: 0,
            pos: 0,
            released: 0,
            eof: false,
            header_crc: crc32fast::Hasher::new(),
        };
        input.skip_header()?;
        // The first block's header is the first bit of the data.
        input.need(1)?;
        let last_block = clear_bit(&mut input.buf[input.pos], 0);
        Ok(Self {
            input,
            inflater: Box::default(),
            window: vec![0u8; HISTORY + SPLICE_WINDOW_BYTES],
            out_pos: 0,
            chunk: 0,
            crc: crc32fast::Hasher::new(),
            length: 0,
            last_block,
            pending: None,
            ended_at: None,
            done: false,
            consumed,
        })
    }

    /// Where the deflate data begins, in bits from the start of the source.
    pub fn start_bit(&self) -> u64 {
        (self.input.base + self.input.pos as u64) * 8
    }

    /// The inflated bytes of the last [`Step::Inflated`].
    pub fn inflated(&self) -> &[u8] {
        &self.window[self.chunk..self.out_pos]
    }

    /// Source bytes before this offset are final: no BFINAL bit in them will be cleared again.
    /// Once the last block has ended, its whole bytes (a partly used last byte is in [`End`]).
    pub fn settled(&self) -> u64 {
        match self.ended_at {
            Some(bit) => bit / 8,
            None => self.input.base + self.input.pos.saturating_sub(LAG) as u64,
        }
    }

    /// The caller needs no source bytes before offset `at` any more (at most [`Self::settled`]).
    pub fn release(&mut self, at: u64) {
        let at = at.saturating_sub(self.input.base) as usize;
        debug_assert!(at <= self.input.pos, "only consumed bytes are released");
        self.input.released = self.input.released.max(at.min(self.input.pos));
    }

    /// The source bytes `from..to` (offsets in the source), BFINAL bits cleared; they must not
    /// have been released.
    pub fn bytes(&self, from: u64, to: u64) -> &[u8] {
        let start = usize::try_from(from - self.input.base).expect("kept bytes are in memory");
        let end = usize::try_from(to - self.input.base).expect("kept bytes are in memory");
        debug_assert!(start >= self.input.released, "the bytes were kept");
        &self.input.buf[start..end]
    }

    /// Source bytes held in memory from offset `from` on (what a caller keeping them costs).
    pub fn held_since(&self, from: u64) -> u64 {
        (self.input.base + self.input.buf.len() as u64).saturating_sub(from)
    }

    /// The next thing met. After [`Step::End`], the walk is over: calling again is a bug.
    pub fn next(&mut self) -> Result<Step, BundleError> {
        assert!(!self.done, "the walk is over");
        if let Some(step) = self.pending.take() {
            return Ok(step);
        }
        if let Some(bit) = self.ended_at {
            self.done = true;
            return self.finish(bit).map(Step::End);
        }
        loop {
            if self.out_pos == self.window.len() {
                self.window
                    .copy_within(self.out_pos - HISTORY..self.out_pos, 0);
                self.out_pos = HISTORY;
            }
            self.chunk = self.out_pos;
            let more = if self.input.eof {
                0
            } else {
                TINFL_FLAG_HAS_MORE_INPUT
            };
            let (status, used, written) = decompress(
                &mut self.inflater,
                &self.input.buf[self.input.pos..],
                &mut self.window,
                self.out_pos,
                TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY | TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | more,
            );
            self.input.pos += used;
            if written > 0 {
                let out = &self.window[self.out_pos..self.out_pos + written];
                self.crc.update(out);
                self.length += written as u64;
                self.out_pos += written;
            }
            let step = match status {
                TINFLStatus::HasMoreOutput => None,
                TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
                    if !self.input.refill()? {
                        return Err(Unsuitable::Truncated.into());
                    }
                    if !(self.consumed)(self.input.base + self.input.buf.len() as u64) {
                        return Err(BundleError::Cancelled);
                    }
                    None
                }
                TINFLStatus::BlockBoundary => Some(self.boundary()?),
                // Every BFINAL was cleared before the inflater read it.
                _ => {
                    return Err(Unsuitable::Corrupt(self.input.base + self.input.pos as u64).into());
                }
            };
            match (written, step) {
                (0, Some(step)) => return Ok(step),
                (0, None) => {}
                // The bytes first; the boundary after them is the next step.
                (len, step) => {
                    self.pending = step;
                    return Ok(Step::Inflated { len });
                }
            }
        }
    }

    /// The inflater stopped between blocks: clears the next block's BFINAL (the lowest unused
    /// bit of the last byte consumed, or bit 0 of the next byte), or notes the end.
    fn boundary(&mut self) -> Result<Step, BundleError> {
        let mut state = self
            .inflater
            .block_boundary_state()
            .expect("the inflater stopped between blocks");
        let bit = (self.input.base + self.input.pos as u64) * 8 - u64::from(state.num_bits);
        let step = Step::Boundary {
            bit,
            out: self.length,
        };
        if self.last_block {
            self.ended_at = Some(bit);
            return Ok(step);
        }
        if state.num_bits > 0 {
            if state.bit_buf & 1 == 1 {
                state.bit_buf &= !1;
                let at = self.input.pos - 1;
                debug_assert!(at >= self.input.released, "the byte is kept");
                clear_bit(&mut self.input.buf[at], 8 - state.num_bits);
                *self.inflater = DecompressorOxide::from_block_boundary_state(&state);
                self.last_block = true;
            }
        } else {
            if self.input.pos == self.input.buf.len() && !self.input.refill()? {
                return Err(Unsuitable::Truncated.into());
            }
            self.last_block = clear_bit(&mut self.input.buf[self.input.pos], 0);
        }
        Ok(step)
    }

    /// The deflate data ended at `bit`: checks the trailer and that nothing follows it.
    fn finish(&mut self, bit: u64) -> Result<End, BundleError> {
        let last_bits = (bit % 8) as u8;
        let last_byte = if last_bits > 0 {
            self.bytes(bit / 8, bit / 8 + 1)[0] & ((1u8 << last_bits) - 1)
        } else {
            0
        };
        let input = &mut self.input;
        input.need(8)?;
        let trailer = &input.buf[input.pos..input.pos + 8];
        let stated_crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
        let stated_size = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
        let actual_crc = self.crc.clone().finalize();
        if stated_crc != actual_crc {
            return Err(Unsuitable::Crc {
                stated: stated_crc,
                actual: actual_crc,
            }
            .into());
        }
        if u64::from(stated_size) != self.length % (1 << 32) {
            return Err(Unsuitable::Length {
                stated: stated_size,
                actual: self.length,
            }
            .into());
        }
        input.pos += 8;
        input.released = input.pos;
        if input.buf.len() == input.pos && !input.refill()? {
            return Ok(End {
                length: self.length,
                crc: self.crc.clone(),
                last_byte,
                last_bits,
            });
        }
        let after = &input.buf[input.pos..];
        if after.len() >= 2 && after[..2] == [0x1f, 0x8b] {
            Err(Unsuitable::SecondMember.into())
        } else {
            Err(Unsuitable::TrailingData.into())
        }
    }
}

/// Clears bit `bit` of `byte`; whether it was set.
fn clear_bit(byte: &mut u8, bit: u8) -> bool {
    let was = *byte & (1 << bit) != 0;
    *byte &= !(1 << bit);
    was
}
