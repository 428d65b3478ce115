//! Deflate's bit order (RFC 1951 §3.1.1: fields packed from the least significant bit of each
//! byte), just enough of it to frame pieces around copied upstream blocks: a stored block, and
//! the gzjoin-style alignment that ends a block at a byte boundary without shifting what follows.

/// Bytes of a deflate stream under construction; the last byte may be partly filled.
#[derive(Debug, Default)]
pub struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte of `bytes`: 0 when the stream is byte-aligned.
    phase: u8,
}

impl BitWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bits used in the last byte (0-7).
    #[cfg(test)]
    pub fn phase(&self) -> u8 {
        self.phase
    }

    /// The low `count` bits of `value`, least significant first (a block header's fields; a
    /// Huffman code must be reversed by the caller).
    pub fn push_bits(&mut self, value: u32, count: u8) {
        for i in 0..count {
            if self.phase == 0 {
                self.bytes.push(0);
            }
            let bit = ((value >> i) & 1) as u8;
            *self.bytes.last_mut().expect("a byte was pushed") |= bit << self.phase;
            self.phase = (self.phase + 1) % 8;
        }
    }

    /// Whole bytes; the stream must be byte-aligned.
    pub fn push_bytes(&mut self, data: &[u8]) {
        debug_assert_eq!(self.phase, 0, "bytes go in on a byte boundary");
        self.bytes.extend_from_slice(data);
    }

    /// Bits `from..to` of `src` (bit `i` is bit `i % 8` of byte `i / 8`, deflate's order),
    /// appended at the current phase: upstream blocks copied into the stream wherever they and
    /// it happen to stand, shifted as needed (a UEC member's interior blocks, a qcow2 cluster's
    /// stream).
    pub fn push_bit_range(&mut self, src: &[u8], from: u64, to: u64) {
        assert!(
            from <= to && to <= src.len() as u64 * 8,
            "the range lies in the source"
        );
        let mut at = from;
        // Single bits up to a whole source byte, then whole source bytes, then the rest.
        while at < to && !at.is_multiple_of(8) {
            self.push_bits(u32::from(src[(at / 8) as usize] >> (at % 8)) & 1, 1);
            at += 1;
        }
        let whole = &src[(at / 8) as usize..(to / 8) as usize];
        if at < to && !whole.is_empty() {
            self.push_whole_bytes_shifted(whole);
            at += whole.len() as u64 * 8;
        }
        if at < to {
            let rest = (to - at) as u8;
            self.push_bits(u32::from(src[(at / 8) as usize]), rest);
        }
    }

    /// Whole bytes at any phase: each lands split across the partly filled byte and the next.
    fn push_whole_bytes_shifted(&mut self, data: &[u8]) {
        if self.phase == 0 {
            self.bytes.extend_from_slice(data);
            return;
        }
        let phase = self.phase;
        self.bytes.reserve(data.len());
        let mut carry = self.bytes.pop().expect("a partly filled byte");
        for &byte in data {
            self.bytes.push(carry | (byte << phase));
            carry = byte >> (8 - phase);
        }
        self.bytes.push(carry);
    }

    /// Zero bits up to the next byte boundary (a stored block's padding).
    fn pad(&mut self) {
        self.phase = 0;
    }

    /// A stored block of `data` (at most 65,535 bytes) from any bit phase: its 3 header bits,
    /// padding to the byte, LEN and NLEN, the bytes. Ends byte-aligned.
    pub fn stored_block(&mut self, data: &[u8], last: bool) {
        let len = u16::try_from(data.len()).expect("a stored block holds at most 65,535 bytes");
        self.push_bits(u32::from(last), 1);
        self.push_bits(0b00, 2);
        self.pad();
        self.push_bytes(&len.to_le_bytes());
        self.push_bytes(&(!len).to_le_bytes());
        self.push_bytes(data);
    }

    /// Ends the stream on a byte boundary with empty non-final blocks, as zlib's gzjoin does, so
    /// the next piece is appended as bytes, unshifted: from an even phase, empty fixed-Huffman
    /// blocks (10 bits each: header and end-of-block code); from an odd one, an empty stored block.
    pub fn align(&mut self) {
        match self.phase {
            0 => {}
            phase if phase % 2 == 0 => {
                for _ in 0..(8 - phase) / 2 {
                    // BFINAL 0, BTYPE 01 (fixed Huffman), then code 256 (end of block): 7 zero bits.
                    self.push_bits(0b010, 3);
                    self.push_bits(0, 7);
                }
            }
            _ => self.stored_block(&[], false),
        }
        debug_assert_eq!(self.phase, 0);
    }

    /// The whole bytes written so far, leaving a partly filled last byte in place.
    pub fn take_whole_bytes(&mut self) -> Vec<u8> {
        let whole = self.bytes.len() - usize::from(self.phase != 0);
        let rest = self.bytes.split_off(whole);
        std::mem::replace(&mut self.bytes, rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress, Status};

    /// A fixed-Huffman literal 144-255: 9 bits, code 0b110010000 + (literal - 144), sent most
    /// significant bit first.
    fn push_literal(bits: &mut BitWriter, literal: u8) {
        assert!(literal >= 144);
        let code = 0b1_1001_0000u32 + u32::from(literal - 144);
        let reversed = (0..9).fold(0, |acc, i| acc | (((code >> i) & 1) << (8 - i)));
        bits.push_bits(reversed, 9);
    }

    /// A non-final fixed block of `n` 9-bit literals leaves the stream at phase (2 + n) % 8.
    fn fixed_block_of(n: usize) -> (BitWriter, Vec<u8>) {
        let mut bits = BitWriter::new();
        bits.push_bits(0b010, 3);
        let literals: Vec<u8> = (0..n).map(|i| 200 + i as u8).collect();
        for &literal in &literals {
            push_literal(&mut bits, literal);
        }
        bits.push_bits(0, 7);
        (bits, literals)
    }

    fn inflate_raw(stream: &[u8]) -> Vec<u8> {
        let mut inflater = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 16);
        let status = inflater
            .decompress_vec(stream, &mut out, FlushDecompress::Finish)
            .unwrap();
        assert_eq!(
            status,
            Status::StreamEnd,
            "the stream ends with its final block"
        );
        assert_eq!(
            inflater.total_in(),
            stream.len() as u64,
            "nothing after the final block"
        );
        out
    }

    #[test]
    fn align_reaches_a_byte_boundary_from_every_phase_and_the_stream_still_inflates() {
        let mut phases = Vec::new();
        for n in 0..8 {
            let (mut bits, literals) = fixed_block_of(n);
            let phase = bits.phase();
            phases.push(phase);
            bits.align();
            assert_eq!(bits.phase(), 0);
            let mut stream = bits.take_whole_bytes();
            // The next piece goes in as bytes, unshifted: a final stored block.
            let mut next = BitWriter::new();
            next.stored_block(b"after the seam", true);
            stream.extend(next.take_whole_bytes());
            let mut expected = literals;
            expected.extend_from_slice(b"after the seam");
            assert_eq!(inflate_raw(&stream), expected, "from phase {phase}");
        }
        phases.sort();
        assert_eq!(phases, (0..8).collect::<Vec<u8>>(), "all 8 phases met");
    }

    #[test]
    fn align_costs_what_gzjoin_pays_at_each_phase() {
        // Bytes added after the partly filled one: 3, 2 or 1 fixed blocks from an even phase, an
        // empty stored block from an odd one.
        for n in 0..8 {
            let (mut bits, _) = fixed_block_of(n);
            let phase = bits.phase();
            let before = bits.bytes.len();
            bits.align();
            let added = bits.bytes.len() - before;
            let expected = match phase {
                0 => 0,
                2 => 3,
                4 => 2,
                6 => 1,
                7 => 5,
                _ => 4,
            };
            assert_eq!(added, expected, "phase {phase}");
        }
    }

    #[test]
    fn a_stored_block_frames_its_bytes_from_every_phase() {
        for n in 0..8 {
            let (mut bits, literals) = fixed_block_of(n);
            let phase = bits.phase();
            bits.stored_block(&[7u8; 600], true);
            assert_eq!(bits.phase(), 0);
            let mut expected = literals;
            expected.extend([7u8; 600]);
            assert_eq!(
                inflate_raw(&bits.take_whole_bytes()),
                expected,
                "from phase {phase}"
            );
        }
    }

    #[test]
    fn push_bit_range_appends_the_same_bits_as_one_at_a_time_from_every_phase() {
        let src: Vec<u8> = (0..40u32).map(|i| (i * 37 + 11) as u8).collect();
        let total = src.len() as u64 * 8;
        for phase in 0..8u8 {
            for (from, to) in [
                (0, total),
                (3, 3),
                (5, 9),
                (8, 16),
                (1, total - 1),
                (13, 301),
            ] {
                let mut fast = BitWriter::new();
                let mut slow = BitWriter::new();
                fast.push_bits(0b1011_0110, phase);
                slow.push_bits(0b1011_0110, phase);
                fast.push_bit_range(&src, from, to);
                for bit in from..to {
                    slow.push_bits(u32::from(src[(bit / 8) as usize] >> (bit % 8)) & 1, 1);
                }
                assert_eq!(fast.phase(), slow.phase(), "phase {phase}, {from}..{to}");
                assert_eq!(fast.bytes, slow.bytes, "phase {phase}, {from}..{to}");
            }
        }
    }

    #[test]
    fn take_whole_bytes_keeps_the_partly_filled_byte() {
        let mut bits = BitWriter::new();
        bits.push_bytes(&[1, 2]);
        bits.push_bits(0b101, 3);
        assert_eq!(bits.take_whole_bytes(), vec![1, 2]);
        bits.push_bits(0b11111, 5);
        assert_eq!(bits.take_whole_bytes(), vec![0b1111_1101]);
        assert_eq!(bits.phase(), 0);
    }
}
