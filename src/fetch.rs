//! Upstream HTTP (SPEC §5, §6): small documents with a size cap, and streaming file downloads that
//! resume with `Range`, never store more than the signed size, and hash while the bytes flow.
//! Nothing downloaded here is trusted yet: callers verify, then promote (`cache.rs`).
//!
//! What is transient (retried with a doubling pause, [`RetryPolicy::attempts`] tries in all, the
//! download resuming with `Range`): transport errors, a connection cut or a response that ends
//! before the signed size, HTTP 5xx/408/429, and a stall ([`StallRule`]: a trickle is treated as a
//! cut, so a link that crawls cannot hold an install forever). What is permanent (fails at once):
//! other HTTP statuses, a body announced or sent past the signed size (nothing past it is ever
//! written), and a full disk (the partial file is removed so the failure can be recorded).

use crate::cache::Sha256Hex;
use crate::limits::{CONNECT_TIMEOUT, DOWNLOAD_WRITE_BUFFER, UPSTREAM_READ_TIMEOUT};
use crate::metrics;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {cause}")]
    Transport { url: String, cause: String },
    #[error("GET {url}: the server answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: the server {} more than the signed size of {expected} bytes", sent_or_announced(.announced))]
    TooLarge {
        url: String,
        expected: u64,
        /// The `Content-Length` that promised too much, when that is how we knew.
        announced: Option<u64>,
    },
    #[error("GET {url}: the answer is larger than the {cap} bytes accepted")]
    Oversized { url: String, cap: u64 },
    #[error("GET {url}: the transfer stopped at {got} of {expected} bytes: {cause}")]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
        cause: String,
    },
    #[error(
        "GET {url}: the transfer stalled at {got} of {expected} bytes: less than {min_rate} bytes/s for {seconds}s"
    )]
    Stalled {
        url: String,
        got: u64,
        expected: u64,
        min_rate: u64,
        seconds: u64,
    },
    #[error(
        "SHA-256 mismatch for {url}: the signed catalog says {expected}, the download is {actual}"
    )]
    Digest {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("writing {path}: {source}")]
    Disk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no space left on device writing {path} ({got} of {expected} bytes received); the partial download was removed to free the space"
    )]
    DiskFull {
        path: PathBuf,
        got: u64,
        expected: u64,
    },
    #[error("cancelled")]
    Cancelled,
}

fn sent_or_announced(announced: &Option<u64>) -> String {
    match announced {
        Some(length) => format!("announced {length} bytes,"),
        None => "sent".to_string(),
    }
}

impl FetchError {
    /// The `kind` label of `image_store_proxy_upstream_errors_total`; `None` for what is not
    /// upstream's doing (our disk, a cancel).
    pub fn metric_kind(&self) -> Option<&'static str> {
        match self {
            FetchError::Transport { .. } => Some("transport"),
            FetchError::Status { .. } => Some("http-status"),
            FetchError::TooLarge { .. } | FetchError::Oversized { .. } => Some("too-large"),
            FetchError::Truncated { .. } => Some("truncated"),
            FetchError::Stalled { .. } => Some("stalled"),
            FetchError::Digest { .. } => Some("checksum"),
            FetchError::Disk { .. } | FetchError::DiskFull { .. } | FetchError::Cancelled => None,
        }
    }

    /// Counts this failure in the metrics, if it is upstream's.
    pub fn record(&self) {
        if let Some(kind) = self.metric_kind() {
            metrics::global().upstream_error(kind);
        }
    }

    /// Worth another try after a pause: the network or the server may recover.
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Transport { .. }
            | FetchError::Truncated { .. }
            | FetchError::Stalled { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }
}

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included, over one download (progress does not reset the count:
    /// a link that keeps failing fails the install in bounded time).
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// When a slow download counts as stalled (and so as a transient failure).
    pub stall: StallRule,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            stall: StallRule::default(),
        }
    }
}

/// A download that brings fewer than `min_bytes_per_second` on average over any `window` has
/// stalled (curl's `--speed-limit`/`--speed-time`): the exchange is dropped and resumed with
/// `Range` after the retry pause, like a cut connection. The read timeout alone would not do: a
/// server that sends one byte a minute never lets it fire. 1 KiB/s over 30 s by default: far
/// below any working link, far above a stuck one. A rate of 0 turns the rule off.
#[derive(Debug, Clone, Copy)]
pub struct StallRule {
    pub min_bytes_per_second: u64,
    pub window: Duration,
}

impl Default for StallRule {
    fn default() -> Self {
        Self {
            min_bytes_per_second: 1024,
            window: Duration::from_secs(30),
        }
    }
}

/// Applies a [`StallRule`] to one exchange: windows follow each other from the first byte's wait.
struct StallWatch {
    rule: StallRule,
    window_start: tokio::time::Instant,
    bytes_at_start: u64,
}

impl StallWatch {
    fn new(rule: StallRule, have: u64, now: tokio::time::Instant) -> Self {
        Self {
            rule,
            window_start: now,
            bytes_at_start: have,
        }
    }

    fn enabled(&self) -> bool {
        self.rule.min_bytes_per_second > 0 && !self.rule.window.is_zero()
    }

    fn deadline(&self) -> tokio::time::Instant {
        self.window_start + self.rule.window
    }

    /// Whether the window that ended by `now` brought too little; starts the next window if not.
    fn stalled(&mut self, have: u64, now: tokio::time::Instant) -> bool {
        if !self.enabled() || now < self.deadline() {
            return false;
        }
        let brought = have.saturating_sub(self.bytes_at_start) as f64;
        let needed = self.rule.min_bytes_per_second as f64 * self.rule.window.as_secs_f64();
        if brought < needed {
            return true;
        }
        self.window_start = now;
        self.bytes_at_start = have;
        false
    }
}

impl RetryPolicy {
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        self.first_delay
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_delay)
    }
}

#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    retry: RetryPolicy,
}

/// reqwest is built without a default crypto provider (no C build): rustls needs one chosen before
/// any client is built, or building one panics.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Fetcher {
    pub fn new(retry: RetryPolicy) -> Result<Self, FetchError> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("image-store-proxy/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(UPSTREAM_READ_TIMEOUT)
            .build()
            .map_err(|e| FetchError::Transport {
                url: String::new(),
                cause: e.to_string(),
            })?;
        Ok(Self { client, retry })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// GETs a small document (a catalog, a signature) whole, refusing more than `cap` bytes.
    pub async fn get_small(
        &self,
        url: &str,
        cap: u64,
        timeout: Duration,
    ) -> Result<Vec<u8>, FetchError> {
        let transport = |e: reqwest::Error| FetchError::Transport {
            url: url.to_string(),
            cause: describe(&e),
        };
        let work = async {
            let mut response = self.client.get(url).send().await.map_err(transport)?;
            if !response.status().is_success() {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status: response.status().as_u16(),
                });
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport)? {
                if body.len() as u64 + chunk.len() as u64 > cap {
                    return Err(FetchError::Oversized {
                        url: url.to_string(),
                        cap,
                    });
                }
                metrics::global().add_downloaded(chunk.len() as u64);
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Transport {
                    url: url.to_string(),
                    cause: format!("no answer within {}s", timeout.as_secs()),
                })
            })
            .inspect_err(FetchError::record)
    }

    /// [`Fetcher::get_small`], retrying transient failures as a download does (a file's
    /// signature: a 503 from upstream should not fail an install).
    pub async fn get_small_retrying(
        &self,
        url: &str,
        cap: u64,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, FetchError> {
        let mut failures = 0;
        loop {
            let outcome = tokio::select! {
                outcome = self.get_small(url, cap, timeout) => outcome,
                _ = cancel.cancelled() => return Err(FetchError::Cancelled),
            };
            match outcome {
                Err(error) if error.is_transient() && failures + 1 < self.retry.attempts => {
                    tracing::warn!(%url, "retrying: {error}");
                    tokio::select! {
                        _ = tokio::time::sleep(self.retry.delay(failures)) => {}
                        _ = cancel.cancelled() => return Err(FetchError::Cancelled),
                    }
                    failures += 1;
                }
                other => return other,
            }
        }
    }

    /// Downloads `url` into `partial` until it holds `expected` bytes, resuming what is already
    /// there, and returns the SHA-256 of the whole file. `progress` gets the byte count so far.
    /// On cancel the partial file is kept for a later resume; bytes past `expected` are refused.
    pub async fn download(
        &self,
        url: &str,
        partial: &Path,
        expected: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<Sha256Hex, FetchError> {
        let (mut have, mut hasher) = hash_existing(partial, expected).await?;
        progress(have);
        let mut failures = 0;
        while have < expected {
            match self
                .fetch_from(
                    url,
                    partial,
                    expected,
                    &mut have,
                    &mut hasher,
                    progress,
                    cancel,
                )
                .await
            {
                Ok(()) => {}
                Err(error) if error.is_transient() && failures + 1 < self.retry.attempts => {
                    error.record();
                    tracing::warn!(%url, have, "download interrupted, resuming: {error}");
                    tokio::select! {
                        _ = tokio::time::sleep(self.retry.delay(failures)) => {}
                        _ = cancel.cancelled() => return Err(FetchError::Cancelled),
                    }
                    failures += 1;
                }
                Err(FetchError::Disk { source, .. })
                    if source.kind() == std::io::ErrorKind::StorageFull =>
                {
                    // Leaving the disk full would keep the failure from being recorded (SQLite
                    // needs room too) and starve the rest of the machine: give the space back.
                    let error = FetchError::DiskFull {
                        path: partial.to_owned(),
                        got: have,
                        expected,
                    };
                    if let Err(e) = tokio::fs::remove_file(partial).await {
                        tracing::warn!(path = %partial.display(), "cannot remove: {e}");
                    }
                    return Err(error);
                }
                Err(error) => {
                    error.record();
                    return Err(error);
                }
            }
        }
        Ok(Sha256Hex::from_digest(&hasher.finalize()))
    }

    /// One HTTP exchange: GET (with `Range` when resuming) and append to `partial`.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_from(
        &self,
        url: &str,
        partial: &Path,
        expected: u64,
        have: &mut u64,
        hasher: &mut Sha256,
        progress: &(dyn Fn(u64) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        let transport = |e: reqwest::Error| FetchError::Transport {
            url: url.to_string(),
            cause: describe(&e),
        };
        let mut request = self.client.get(url);
        if *have > 0 {
            request = request.header(RANGE, format!("bytes={have}-"));
        }
        let mut response = tokio::select! {
            response = request.send() => response.map_err(transport)?,
            _ = cancel.cancelled() => return Err(FetchError::Cancelled),
        };
        let status = response.status();
        let resumed =
            status == StatusCode::PARTIAL_CONTENT && content_range_start(&response) == Some(*have);
        if !(status == StatusCode::OK || resumed) {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        if !resumed {
            // The server sent the whole file: start over.
            *have = 0;
            *hasher = Sha256::new();
        }
        if let Some(length) = response
            .content_length()
            .filter(|length| *have + length > expected)
        {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                expected,
                announced: Some(*have + length),
            });
        }
        let disk = |source| FetchError::Disk {
            path: partial.to_owned(),
            source,
        };
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(partial)
            .await
            .map_err(disk)?;
        file.set_len(*have).await.map_err(disk)?;
        let mut file = tokio::io::BufWriter::with_capacity(DOWNLOAD_WRITE_BUFFER, file);
        file.seek(SeekFrom::Start(*have)).await.map_err(disk)?;
        let mut stall = StallWatch::new(self.retry.stall, *have, tokio::time::Instant::now());
        let stalled = |got: u64| FetchError::Stalled {
            url: url.to_string(),
            got,
            expected,
            min_rate: self.retry.stall.min_bytes_per_second,
            seconds: self.retry.stall.window.as_secs(),
        };
        let outcome = loop {
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk,
                _ = cancel.cancelled() => break Err(FetchError::Cancelled),
                _ = tokio::time::sleep_until(stall.deadline()), if stall.enabled() => {
                    if stall.stalled(*have, tokio::time::Instant::now()) {
                        break Err(stalled(*have));
                    }
                    continue;
                }
            };
            match chunk {
                Ok(Some(bytes)) => {
                    if *have + bytes.len() as u64 > expected {
                        break Err(FetchError::TooLarge {
                            url: url.to_string(),
                            expected,
                            announced: None,
                        });
                    }
                    if let Err(source) = file.write_all(&bytes).await {
                        break Err(disk(source));
                    }
                    hasher.update(&bytes);
                    metrics::global().add_downloaded(bytes.len() as u64);
                    *have += bytes.len() as u64;
                    progress(*have);
                    if *have < expected && stall.stalled(*have, tokio::time::Instant::now()) {
                        break Err(stalled(*have));
                    }
                }
                Ok(None) if *have < expected => {
                    break Err(FetchError::Truncated {
                        url: url.to_string(),
                        got: *have,
                        expected,
                        cause: "the response ended early".into(),
                    });
                }
                Ok(None) => break Ok(()),
                Err(e) => {
                    break Err(FetchError::Truncated {
                        url: url.to_string(),
                        got: *have,
                        expected,
                        cause: describe(&e),
                    });
                }
            }
        };
        // Keep what arrived intact (for a resume) whatever happened above.
        let flushed = file.flush().await.map_err(disk);
        outcome.and(flushed)
    }
}

use tokio::io::AsyncSeekExt;

fn content_range_start(response: &reqwest::Response) -> Option<u64> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// Hashes what an earlier attempt left in `partial` (the SHA-256 state is not persisted), or
/// empties it if it is somehow longer than the file can be.
async fn hash_existing(partial: &Path, expected: u64) -> Result<(u64, Sha256), FetchError> {
    let path = partial.to_owned();
    tokio::task::spawn_blocking(move || {
        let disk = |source| FetchError::Disk {
            path: path.clone(),
            source,
        };
        let mut hasher = Sha256::new();
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, hasher)),
            Err(e) => return Err(disk(e)),
        };
        let length = file.metadata().map_err(disk)?.len();
        if length > expected {
            drop(file);
            std::fs::remove_file(&path).map_err(disk)?;
            return Ok((0, hasher));
        }
        let mut buffer = vec![0u8; DOWNLOAD_WRITE_BUFFER];
        let mut done = 0u64;
        while done < length {
            let n = file.read(&mut buffer).map_err(disk)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            done += n as u64;
        }
        file.seek(SeekFrom::Start(0)).map_err(disk)?;
        Ok((done, hasher))
    })
    .await
    .expect("hashing task does not panic")
}

/// reqwest's top-level message hides the cause ("error sending request"): walk the chain.
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn a_trickle_stalls_and_a_steady_flow_does_not() {
        let rule = StallRule {
            min_bytes_per_second: 1000,
            window: Duration::from_secs(2),
        };
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut watch = StallWatch::new(rule, 500, start);
        // Within the first window nothing is judged, however little arrived.
        assert!(!watch.stalled(500, at(1999)));
        // 2,000 bytes in 2 s: exactly the floor; the next window starts.
        assert!(!watch.stalled(2500, at(2000)));
        assert_eq!(watch.deadline(), at(4000));
        // 1,999 bytes in the next 2 s: stalled.
        assert!(watch.stalled(4499, at(4000)));

        let off = StallWatch::new(
            StallRule {
                min_bytes_per_second: 0,
                ..rule
            },
            0,
            start,
        );
        assert!(!off.enabled());
    }

    #[test]
    fn only_what_may_recover_is_transient() {
        let url = || "http://store/files/a".to_string();
        let status = |status| FetchError::Status { url: url(), status };
        assert!(status(500).is_transient() && status(503).is_transient());
        assert!(status(429).is_transient() && status(408).is_transient());
        assert!(!status(404).is_transient() && !status(403).is_transient());
        let stalled = FetchError::Stalled {
            url: url(),
            got: 1,
            expected: 2,
            min_rate: 1024,
            seconds: 30,
        };
        assert!(stalled.is_transient());
        let too_large = FetchError::TooLarge {
            url: url(),
            expected: 10,
            announced: Some(12),
        };
        assert!(!too_large.is_transient());
        assert_eq!(
            too_large.to_string(),
            "GET http://store/files/a: the server announced 12 bytes, more than the signed size of 10 bytes"
        );
        let full = FetchError::DiskFull {
            path: "/d/x.part".into(),
            got: 5,
            expected: 10,
        };
        assert!(!full.is_transient());
        assert!(full.to_string().starts_with("no space left on device"));
    }
}
