//! One gzip member read through once: its header skipped, its deflate data inflated (the bytes
//! go to the caller, for the tar stream's SHA-1 and length) and passed on compressed as it is,
//! every BFINAL bit cleared so the stream goes on past the upstream's last block, which ends
//! wherever it ends (the caller aligns it). The trailer's CRC-32 and ISIZE are checked against
//! what inflated, and nothing may follow the member.

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

/// Compressed bytes held back from the caller behind the inflater's read position: the inflater
/// buffers up to 64 bits ahead, and a BFINAL bit to clear may sit in any of them.
const LAG: usize = 16;
/// Deflate's window: the farthest back a match may reach.
const HISTORY: usize = 32 << 10;

/// How the member's deflate data ended.
pub struct End {
    /// The image's exact length, counted (ISIZE is only modulo 2^32).
    pub length: u64,
    /// The CRC-32 of the image, checked against the trailer's.
    pub crc: crc32fast::Hasher,
    /// The last, partly used byte of the deflate data and how many of its bits are used (1-7),
    /// or 0 bits when the data ended on a byte boundary.
    pub last_byte: u8,
    pub last_bits: u8,
}

/// The compressed source in a growing buffer: `buf[..forwarded]` is passed on (or skipped),
/// `buf[..pos]` consumed by the inflater, `buf[pos..]` not yet.
struct Input<'a> {
    source: &'a mut dyn Read,
    buf: Vec<u8>,
    /// Offset in the source of `buf[0]`.
    base: u64,
    pos: usize,
    forwarded: usize,
    eof: bool,
    /// The CRC-32 of the header bytes read so far, for FHCRC.
    header_crc: crc32fast::Hasher,
}

impl Input<'_> {
    /// Reads more of the source onto the end of the buffer, first handing the caller what the
    /// inflater is safely past and dropping it from the buffer. False at the end of the source.
    fn refill(
        &mut self,
        deflate: &mut dyn FnMut(&[u8]) -> Result<(), BundleError>,
    ) -> Result<bool, BundleError> {
        let safe = self.pos.saturating_sub(LAG);
        if safe > self.forwarded {
            deflate(&self.buf[self.forwarded..safe])?;
            self.forwarded = safe;
        }
        self.drop_forwarded();
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

    fn drop_forwarded(&mut self) {
        self.buf.drain(..self.forwarded);
        self.base += self.forwarded as u64;
        self.pos -= self.forwarded;
        self.forwarded = 0;
    }

    /// At least `n` bytes after `pos`, or `Truncated`. Header bytes only: nothing is forwarded.
    fn need(&mut self, n: usize) -> Result<(), BundleError> {
        while self.buf.len() - self.pos < n {
            if !self.refill(&mut |_| Ok(()))? {
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
        Ok(bytes)
    }

    /// Reads past the gzip header (RFC 1952 §2.3); nothing of it is passed on.
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
            if stated != expected {
                return Err(Unsuitable::Header("a header CRC that does not match").into());
            }
        }
        self.forwarded = self.pos;
        Ok(())
    }
}

/// Splices the one gzip member `source` holds: `image` is given the inflated bytes in order,
/// `deflate` the member's deflate data with every BFINAL cleared, up to but not including its
/// last byte when that is partly used (returned in [`End`]); `consumed` is told the source
/// bytes read and says whether to go on.
pub fn splice_member(
    source: &mut dyn Read,
    image: &mut dyn FnMut(&[u8]) -> Result<(), BundleError>,
    deflate: &mut dyn FnMut(&[u8]) -> Result<(), BundleError>,
    consumed: &mut dyn FnMut(u64) -> bool,
) -> Result<End, BundleError> {
    let mut input = Input {
        source,
        buf: Vec::with_capacity(SPLICE_READ_BYTES + LAG),
        base: 0,
        pos: 0,
        forwarded: 0,
        eof: false,
        header_crc: crc32fast::Hasher::new(),
    };
    input.skip_header()?;
    let mut inflater = Box::<DecompressorOxide>::default();
    // Not miniz's wrapping buffer, which cannot tell a match reaching before the stream's first
    // byte (zlib refuses it; spliced after our tar header it would read the header): the output
    // follows up to 32 KiB of history, slid to the front when the buffer fills.
    let mut window = vec![0u8; HISTORY + SPLICE_WINDOW_BYTES];
    let mut out_pos = 0usize;
    let mut crc = crc32fast::Hasher::new();
    let mut length = 0u64;

    // The first block's header is the first bit of the data.
    input.need(1)?;
    let mut final_cleared = clear_bit(&mut input.buf[input.pos], 0);
    loop {
        let more = if input.eof {
            0
        } else {
            TINFL_FLAG_HAS_MORE_INPUT
        };
        let (status, used, written) = decompress(
            &mut inflater,
            &input.buf[input.pos..],
            &mut window,
            out_pos,
            TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY | TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF | more,
        );
        input.pos += used;
        if written > 0 {
            let out = &window[out_pos..out_pos + written];
            crc.update(out);
            length += written as u64;
            image(out)?;
            out_pos += written;
        }
        if out_pos == window.len() {
            window.copy_within(out_pos - HISTORY..out_pos, 0);
            out_pos = HISTORY;
        }
        match status {
            TINFLStatus::HasMoreOutput => {}
            TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
                if !input.refill(deflate)? {
                    return Err(Unsuitable::Truncated.into());
                }
                if !consumed(input.base + input.buf.len() as u64) {
                    return Err(BundleError::Cancelled);
                }
            }
            TINFLStatus::BlockBoundary => {
                let mut state = inflater
                    .block_boundary_state()
                    .expect("the inflater stopped between blocks");
                if final_cleared {
                    // The upstream's last block has ended here.
                    return finish(input, state.num_bits, length, crc, deflate);
                }
                // The next block's BFINAL: the lowest unused bit of the last byte consumed, or
                // bit 0 of the next byte.
                if state.num_bits > 0 {
                    if state.bit_buf & 1 == 1 {
                        state.bit_buf &= !1;
                        let at = input.pos - 1;
                        debug_assert!(at >= input.forwarded, "the byte is not passed on yet");
                        clear_bit(&mut input.buf[at], 8 - state.num_bits);
                        *inflater = DecompressorOxide::from_block_boundary_state(&state);
                        final_cleared = true;
                    }
                } else {
                    if input.pos == input.buf.len() && !input.refill(deflate)? {
                        return Err(Unsuitable::Truncated.into());
                    }
                    final_cleared = clear_bit(&mut input.buf[input.pos], 0);
                }
            }
            // Every BFINAL was cleared before the inflater read it.
            TINFLStatus::Done => {
                return Err(Unsuitable::Corrupt(input.base + input.pos as u64).into());
            }
            _ => return Err(Unsuitable::Corrupt(input.base + input.pos as u64).into()),
        }
    }
}

/// Clears bit `bit` of `byte`; whether it was set.
fn clear_bit(byte: &mut u8, bit: u8) -> bool {
    let was = *byte & (1 << bit) != 0;
    *byte &= !(1 << bit);
    was
}

/// The deflate data ended `unused` bits before the end of the last byte consumed: passes on all
/// but a partly used last byte, then checks the trailer and that nothing follows it.
fn finish(
    mut input: Input<'_>,
    unused: u8,
    length: u64,
    crc: crc32fast::Hasher,
    deflate: &mut dyn FnMut(&[u8]) -> Result<(), BundleError>,
) -> Result<End, BundleError> {
    let (whole_end, last_bits) = if unused == 0 {
        (input.pos, 0)
    } else {
        (input.pos - 1, 8 - unused)
    };
    deflate(&input.buf[input.forwarded..whole_end])?;
    let last_byte = if last_bits > 0 {
        input.buf[whole_end] & ((1u8 << last_bits) - 1)
    } else {
        0
    };
    input.forwarded = input.pos;
    input.need(8)?;
    let trailer = &input.buf[input.pos..input.pos + 8];
    let stated_crc = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes"));
    let stated_size = u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes"));
    let actual_crc = crc.clone().finalize();
    if stated_crc != actual_crc {
        return Err(Unsuitable::Crc {
            stated: stated_crc,
            actual: actual_crc,
        }
        .into());
    }
    if u64::from(stated_size) != length % (1 << 32) {
        return Err(Unsuitable::Length {
            stated: stated_size,
            actual: length,
        }
        .into());
    }
    input.pos += 8;
    input.forwarded = input.pos;
    if input.buf.len() == input.pos && !input.refill(&mut |_| Ok(()))? {
        return Ok(End {
            length,
            crc,
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
