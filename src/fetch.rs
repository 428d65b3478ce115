//! Upstream HTTP (SPEC §5, §6): small documents with a size cap, and streaming file downloads that
//! resume with `Range`, never store more than the signed size, and hash while the bytes flow.
//! Nothing downloaded here is trusted yet: callers verify, then promote (`cache.rs`).

use crate::cache::Sha256Hex;
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
    #[error("GET {url}: the server sent more than the signed size of {expected} bytes")]
    TooLarge { url: String, expected: u64 },
    #[error("GET {url}: the transfer stopped at {got} of {expected} bytes: {cause}")]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
        cause: String,
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
    #[error("cancelled")]
    Cancelled,
}

impl FetchError {
    /// The `kind` label of `image_store_proxy_upstream_errors_total`; `None` for what is not
    /// upstream's doing (our disk, a cancel).
    pub fn metric_kind(&self) -> Option<&'static str> {
        match self {
            FetchError::Transport { .. } => Some("transport"),
            FetchError::Status { .. } => Some("http-status"),
            FetchError::TooLarge { .. } => Some("too-large"),
            FetchError::Truncated { .. } => Some("truncated"),
            FetchError::Digest { .. } => Some("checksum"),
            FetchError::Disk { .. } | FetchError::Cancelled => None,
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
            FetchError::Transport { .. } | FetchError::Truncated { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }
}

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
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

/// Buffer between the network and the disk. What it holds dies with the process on a crash and is
/// fetched again after the restart, so it stays small; 64 KiB writes are still few syscalls.
const WRITE_BUFFER: usize = 64 << 10;

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
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
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
                    return Err(FetchError::TooLarge {
                        url: url.to_string(),
                        expected: cap,
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
        if response
            .content_length()
            .is_some_and(|length| *have + length > expected)
        {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                expected,
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
        let mut file = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        file.seek(SeekFrom::Start(*have)).await.map_err(disk)?;
        let outcome = loop {
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk,
                _ = cancel.cancelled() => break Err(FetchError::Cancelled),
            };
            match chunk {
                Ok(Some(bytes)) => {
                    if *have + bytes.len() as u64 > expected {
                        break Err(FetchError::TooLarge {
                            url: url.to_string(),
                            expected,
                        });
                    }
                    if let Err(source) = file.write_all(&bytes).await {
                        break Err(disk(source));
                    }
                    hasher.update(&bytes);
                    metrics::global().add_downloaded(bytes.len() as u64);
                    *have += bytes.len() as u64;
                    progress(*have);
                }
                Ok(None) if *have < expected => {
                    break Err(FetchError::Truncated {
                        url: url.to_string(),
                        got: *have,
                        expected,
                        cause: "the server closed the connection".into(),
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
        let mut buffer = vec![0u8; WRITE_BUFFER];
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
