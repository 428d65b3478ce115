//! Bytes the unit tests share (built only for `cargo test`).

/// `len` bytes of xorshift noise from `seed`: incompressible, and the same every run.
pub(crate) fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
