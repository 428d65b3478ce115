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

/// Bundles `image` into `<dir>/<out>` at level 1 on `threads`, with the fake cloud's keys (made
/// once in `<dir>/keys`), telling nobody of its steps.
pub(crate) fn bundle_quietly(
    image: &crate::bundle::SourceImage<'_>,
    dir: &std::path::Path,
    out: &str,
    threads: usize,
    recompress: bool,
) -> Result<crate::bundle::Bundle, crate::bundle::BundleError> {
    struct Quiet;
    impl crate::bundle::BundleSink for Quiet {
        fn step(&self, _: crate::status::Step) {}
    }
    let keys = crate::bundle::keys::fake_cloud_keys(&dir.join("keys")).unwrap();
    let gzip = crate::bundle::gzip::GzipSettings {
        level: 1,
        threads,
        recompress,
    };
    crate::bundle::bundle_artifact(
        image,
        &keys,
        &dir.join(out),
        gzip,
        &Quiet,
        &tokio_util::sync::CancellationToken::new(),
    )
}
