//! Upstream HTTP (SPEC §5, §6): small documents with a size cap, and streaming file downloads that
//! resume with `Range`, never store more than the signed size, and hash while the bytes flow.
//! Nothing downloaded is trusted until the verified download (`verified.rs`) has checked size,
//! SHA-256 and signature; only then is it recorded and promoted (`cache.rs`).
//!
//! The rooms: this file holds the HTTP client and small capped GETs; `retry.rs` the retry and
//! stall policy (the cloud client uses it too); `stream.rs` the size-cap and digest adapters;
//! `download.rs` the resumable ranged download; `ranged.rs` a large file over several connections
//! at once; `verified.rs` a file's road from partial to
//! verified in the cache.
//!
//! What is transient (retried with a doubling pause, [`RetryPolicy::attempts`] tries in all, the
//! download resuming with `Range`): transport errors, a connection cut or a response that ends
//! before the signed size, HTTP 5xx/408/429, and a stall ([`StallRule`]: a trickle is treated as a
//! cut, so a link that crawls cannot hold an install forever). What is permanent (fails at once):
//! other HTTP statuses, a body announced or sent past the signed size (nothing past it is ever
//! written), and a full disk (the partial file is removed so the failure can be recorded).

mod download;
pub mod growing;
pub mod hosts;
mod ranged;
pub mod rate;
pub mod retry;
pub mod stream;
pub mod verified;

pub use hosts::{HostPolicy, HostRefusal};
pub use rate::RateLimit;
pub use retry::{RetryPolicy, StallRule};

use crate::limits::{CONNECT_TIMEOUT, UPSTREAM_READ_TIMEOUT};
use crate::metrics;
use retry::{Retryable, with_retries};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What went wrong with an exchange upstream, each variant naming its URL (or path) so the one
/// line an install fails with says where; [`FetchError::metric_kind`] says whose doing it was.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The exchange failed below HTTP (connect, TLS, a reset), said as one short cause by
    /// [`describe`], which is why `cause` is no `#[source]`: `{:#}` would repeat it.
    #[error("GET {url}: {}", describe(.cause))]
    Transport { url: String, cause: reqwest::Error },
    #[error("GET {url}: no answer within {seconds}s")]
    NoAnswer { url: String, seconds: u64 },
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
    #[error("GET {url}: the transfer stopped at {got} of {expected} bytes: {}", cut_cause(.cause))]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
        /// The broken body's error (printed by [`describe`], so no `#[source]`), or none when
        /// the response ended cleanly before the signed size.
        cause: Option<reqwest::Error>,
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
    /// A ranged request answered with other bytes than asked for (another range, or more).
    #[error("GET {url}: asked for bytes {asked}, the server answered {answered}")]
    WrongRange {
        url: String,
        asked: String,
        answered: String,
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
    /// A URL whose host the policy refuses (`hosts.rs`): nothing was sent to it.
    #[error("GET {url}: {refusal}")]
    Host { url: String, refusal: HostRefusal },
    #[error("cancelled")]
    Cancelled,
}

fn sent_or_announced(announced: &Option<u64>) -> String {
    match announced {
        Some(length) => format!("announced {length} bytes,"),
        None => "sent".to_string(),
    }
}

fn cut_cause(cause: &Option<reqwest::Error>) -> String {
    match cause {
        Some(error) => describe(error),
        None => "the response ended early".to_string(),
    }
}

impl FetchError {
    /// The `kind` label of `image_store_proxy_upstream_errors_total`; `None` for what is not
    /// upstream's doing (our disk, a cancel).
    pub fn metric_kind(&self) -> Option<&'static str> {
        match self {
            FetchError::Transport { .. } | FetchError::NoAnswer { .. } => Some("transport"),
            FetchError::Status { .. } | FetchError::WrongRange { .. } => Some("http-status"),
            FetchError::TooLarge { .. } | FetchError::Oversized { .. } => Some("too-large"),
            FetchError::Truncated { .. } => Some("truncated"),
            FetchError::Stalled { .. } => Some("stalled"),
            FetchError::Digest { .. } => Some("checksum"),
            FetchError::Host { .. } => Some("refused-host"),
            FetchError::Disk { .. } | FetchError::DiskFull { .. } | FetchError::Cancelled => None,
        }
    }

    /// Counts this failure in the metrics, if it is upstream's.
    pub fn record(&self) {
        if let Some(kind) = self.metric_kind() {
            metrics::global().upstream_error(kind);
        }
    }
}

impl Retryable for FetchError {
    /// Worth another try after a pause: the network or the server may recover.
    fn is_transient(&self) -> bool {
        match self {
            FetchError::Transport { .. }
            | FetchError::NoAnswer { .. }
            | FetchError::Truncated { .. }
            | FetchError::Stalled { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }

    fn cancelled() -> Self {
        FetchError::Cancelled
    }
}

/// The upstream HTTP client with its retry policy: one per process, cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    retry: RetryPolicy,
    /// Connections a large download is split over (`ranged.rs`).
    connections: usize,
    /// `--max-download-rate`, shared by every clone (`rate.rs`).
    rate: Arc<RateLimit>,
    /// Where fetches may go (`hosts.rs`); the client's resolver applies it to addresses.
    hosts: HostPolicy,
}

fn client(hosts: &HostPolicy) -> Result<reqwest::Client, FetchError> {
    install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("image-store-proxy/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(UPSTREAM_READ_TIMEOUT)
        .dns_resolver(Arc::new(hosts.resolver()))
        .build()
        .map_err(|cause| FetchError::Transport {
            url: String::new(),
            cause,
        })
}

/// reqwest is built without a default crypto provider (no C build): rustls needs one chosen before
/// any client is built, or building one panics.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Fetcher {
    /// The client with the upstream timeouts (`limits.rs`); `retry` governs every retried fetch.
    /// Any host but link-local and metadata ones ([`Fetcher::with_hosts`] narrows it).
    pub fn new(retry: RetryPolicy) -> Result<Self, FetchError> {
        let hosts = HostPolicy::default();
        Ok(Self {
            client: client(&hosts)?,
            hosts,
            retry,
            connections: 1,
            rate: Arc::new(RateLimit::new(None)),
        })
    }

    /// Fetches only from the hosts `hosts` lets through, by URL and by resolved address.
    pub fn with_hosts(self, hosts: HostPolicy) -> Result<Self, FetchError> {
        Ok(Self {
            client: client(&hosts)?,
            hosts,
            ..self
        })
    }

    /// The policy's verdict on `url`, as the failure a fetch of it ends with.
    fn check_host(&self, url: &str) -> Result<(), FetchError> {
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return Ok(()); // reqwest refuses it with its own line
        };
        self.hosts.check(&parsed).map_err(|refusal| {
            let error = FetchError::Host {
                url: url.to_string(),
                refusal,
            };
            error.record();
            error
        })
    }

    /// Every download of this fetcher and its clones draws from `rate`.
    pub fn with_rate_limit(self, rate: Arc<RateLimit>) -> Self {
        Self { rate, ..self }
    }

    /// The bucket downloads draw from (a reload sets its rate).
    pub fn rate_limit(&self) -> &Arc<RateLimit> {
        &self.rate
    }

    /// Downloads files of [`crate::limits::PARALLEL_DOWNLOAD_MIN_BYTES`] and up over
    /// `connections` ranged requests at once (`--download-connections`; 1 is one stream).
    pub fn with_connections(self, connections: usize) -> Self {
        Self {
            connections: connections.max(1),
            ..self
        }
    }

    /// The bare client, for callers that make their own requests upstream.
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
        self.fetch_small(url, cap, timeout)
            .await
            .inspect_err(FetchError::record)
    }

    /// The last `n` bytes of `url`, by a suffix range request (`Range: bytes=-n`), when the
    /// upstream answers exactly that (206 with `n` bytes); `None` otherwise, whatever went wrong.
    /// A hint and never trusted: an overlapped install reads a gzipped image's trailer (its
    /// ISIZE) this way before the download reaches it, and the bundle writer checks the length.
    pub async fn tail(&self, url: &str, n: u64) -> Option<Vec<u8>> {
        self.check_host(url).ok()?;
        let response = self
            .client
            .get(url)
            .header(reqwest::header::RANGE, format!("bytes=-{n}"))
            .timeout(crate::limits::CATALOG_FETCH_TIMEOUT)
            .send()
            .await
            .ok()?;
        if response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return None;
        }
        let body = response.bytes().await.ok()?;
        (body.len() as u64 == n).then(|| body.to_vec())
    }

    /// [`Fetcher::get_small`] of a document upstream may or may not publish (a keyring beside
    /// its catalog): a 404 or 410 is `None`, and not counted as upstream's error.
    pub async fn get_small_if_published(
        &self,
        url: &str,
        cap: u64,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>, FetchError> {
        match self.fetch_small(url, cap, timeout).await {
            Err(FetchError::Status {
                status: 404 | 410, ..
            }) => Ok(None),
            outcome => outcome.map(Some).inspect_err(FetchError::record),
        }
    }

    async fn fetch_small(
        &self,
        url: &str,
        cap: u64,
        timeout: Duration,
    ) -> Result<Vec<u8>, FetchError> {
        self.check_host(url)?;
        let transport = |cause| FetchError::Transport {
            url: url.to_string(),
            cause,
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
                self.rate.charge(chunk.len() as u64);
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::NoAnswer {
                    url: url.to_string(),
                    seconds: timeout.as_secs(),
                })
            })
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
        with_retries(
            &self.retry,
            cancel,
            || async {
                tokio::select! {
                    outcome = self.get_small(url, cap, timeout) => outcome,
                    _ = cancel.cancelled() => Err(FetchError::Cancelled),
                }
            },
            |error, _| tracing::warn!(%url, "retrying: {error}"),
        )
        .await
    }
}

/// A failed exchange with upstream as one short cause ("the image store at host:port refused
/// the connection"): [`crate::report::transport`] says it for every peer.
pub fn describe(error: &reqwest::Error) -> String {
    crate::report::transport(error, "the image store")
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// reqwest's chain is printed once, by `describe`: nothing is left for `{:#}` or an error
    /// reporter walking `source()` to print again.
    #[tokio::test]
    async fn a_transport_error_says_its_cause_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/catalog", listener.local_addr().unwrap());
        drop(listener);
        let fetcher = Fetcher::new(RetryPolicy::default()).unwrap();
        let error = fetcher
            .get_small(&url, 10, Duration::from_secs(10))
            .await
            .unwrap_err();
        let FetchError::Transport { cause, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(error.to_string(), format!("GET {url}: {}", describe(cause)));
        let authority = url
            .trim_start_matches("http://")
            .trim_end_matches("/catalog");
        assert_eq!(
            error.to_string(),
            format!("GET {url}: the image store at {authority} refused the connection")
        );
        assert!(std::error::Error::source(&error).is_none());
    }
}
