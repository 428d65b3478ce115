//! A test hook for the crash-safety tests (`tests/crash_safety.rs`): with
//! `IMAGE_STORE_PROXY_PAUSE_AT=<point>` in its environment the proxy logs "paused at <point>" when
//! an install reaches that point and waits there for ever, so the test can SIGKILL it exactly
//! there. The points are the moments no outside party can hold the install at:
//! - `verify`: a file is wholly downloaded and hashed, its signature not yet checked (in an
//!   overlapped install the bundle's parts go on up meanwhile, and wait there for the verdict);
//! - `bundling`: a bundle is being written, part-way (past a quarter of its source; in an
//!   overlapped install the download goes on past it);
//! - `ahead-staged`: the kernel and ramdisk of a paravirtual image about to overlap are
//!   bundled and sent, parts and manifests, and nothing is registered;
//! - `ahead-registered`: the overlapped image has verified, its kernel and ramdisk are
//!   registered and their ids recorded, the image's manifest not yet written;
//! - `registered`: an artifact is registered and its bundle removed, the id not yet recorded;
//! - `evict`: the cache budget forgot a verified file's record, the file not yet removed.
//!
//! `install/job.rs` holds `verify`, `ahead-staged` and `ahead-registered`, `cache/budget.rs` `evict`, `publish.rs` the other two; a module of its own, so that no
//! stage imports another's just for a test hook. Unset (always, outside those tests) it costs one
//! environment lookup per process.

/// The environment variable naming the point to pause at.
pub const PAUSE_AT: &str = "IMAGE_STORE_PROXY_PAUSE_AT";

/// Read once: the bundling point is asked about at every MiB of a bundle.
fn is_pause_point(point: &str) -> bool {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    WANTED
        .get_or_init(|| std::env::var(PAUSE_AT).ok())
        .as_deref()
        == Some(point)
}

/// In async code: never returns when the proxy was told to pause at `point`.
pub async fn here(point: &str) {
    if is_pause_point(point) {
        tracing::warn!("paused at {point} ({PAUSE_AT})");
        std::future::pending::<()>().await;
    }
}

/// In blocking code (a bundle is written on a blocking thread): the same, parking the thread.
pub fn here_blocking(point: &str) {
    if is_pause_point(point) {
        tracing::warn!("paused at {point} ({PAUSE_AT})");
        loop {
            std::thread::park();
        }
    }
}
