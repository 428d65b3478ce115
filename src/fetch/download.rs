//! The resumable ranged download (SPEC §6): a file fetched into its `.part` until it holds the
//! signed size, each exchange resuming with `Range` where the last one stopped, each chunk
//! capped, hashed and written as it arrives ([`SizeCap`], [`Digesting`]). What it hands back is
//! only the digest: whether that matches the catalog is the verified download's judgement
//! (`verified.rs`).

use super::retry::{StallWatch, with_retries};
use super::stream::{Digesting, PastTheCap, SizeCap};
use super::{FetchError, Fetcher};
use crate::cache::Sha256Hex;
use crate::limits::{DOWNLOAD_WRITE_BUFFER, PARALLEL_DOWNLOAD_MIN_BYTES};
use crate::metrics;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use sha2::{Digest, Sha256};
use std::io::{BufReader, Read, SeekFrom};
use std::path::Path;
use std::sync::Mutex;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// One file's download: where it comes from and goes, how long it must be, and what has arrived
/// so far. Each exchange (one try of the retry loop) takes up where the last one stopped.
struct Download<'a> {
    url: &'a str,
    partial: &'a Path,
    expected: u64,
    /// Held between exchanges only (never across an await): each try borrows the download
    /// shared, so the retry loop can hand it to the next one.
    arrived: Mutex<Arrived>,
}

/// What a download holds so far: its length and the hash state of those bytes.
#[derive(Default)]
struct Arrived {
    have: u64,
    hasher: Sha256,
}

impl Fetcher {
    /// Downloads `url` into `partial` until it holds `expected` bytes, resuming what is already
    /// there, and returns the SHA-256 of the whole file. A large file goes over several
    /// connections when the upstream answers ranges (`ranged.rs`); otherwise one stream. `progress` gets the byte count so far.
    /// On cancel the partial file is kept for a later resume; bytes past `expected` are refused.
    pub async fn download(
        &self,
        url: &str,
        partial: &Path,
        expected: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<Sha256Hex, FetchError> {
        self.download_growing(url, partial, expected, progress, None, cancel)
            .await
    }

    /// [`Fetcher::download`], telling `growth` how much of the file's start is in place as it
    /// grows (one stream: the bytes written; several ranges: the contiguous prefix the follower
    /// has hashed), so that a reader can follow the download (`growing.rs`). Whether the file
    /// ends whole is the caller's to tell.
    pub async fn download_growing(
        &self,
        url: &str,
        partial: &Path,
        expected: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
        growth: Option<&super::growing::Growth>,
        cancel: &CancellationToken,
    ) -> Result<Sha256Hex, FetchError> {
        self.check_host(url)?;
        if self.connections > 1 && expected >= PARALLEL_DOWNLOAD_MIN_BYTES {
            let ranged = self
                .download_ranges(url, partial, expected, progress, growth, cancel)
                .await?;
            if let Some(digest) = ranged {
                return Ok(digest);
            }
        }
        let settled = partial.to_owned();
        tokio::task::spawn_blocking(move || {
            super::ranged::settle_for_one_stream(&settled, expected)
        })
        .await
        .expect("settling task does not panic")?;
        let progress = &|have: u64| {
            progress(have);
            if let Some(growth) = growth {
                growth.advance(have);
            }
        };
        let download = Download::resume(url, partial, expected).await?;
        let have = download.have();
        progress(have);
        if have < expected {
            let outcome = with_retries(
                &self.retry,
                cancel,
                || download.exchange(self, progress, cancel),
                |error, _| {
                    error.record();
                    let have = download.have();
                    tracing::warn!(%url, have, "download interrupted, resuming: {error}");
                },
            )
            .await;
            match outcome {
                Ok(()) => {}
                Err(FetchError::Disk { source, .. })
                    if source.kind() == std::io::ErrorKind::StorageFull =>
                {
                    return Err(download.give_back_the_space().await);
                }
                Err(error) => {
                    error.record();
                    return Err(error);
                }
            }
        }
        let arrived = download.arrived.into_inner().expect("download state lock");
        Ok(Sha256Hex::from_digest(&arrived.hasher.finalize()))
    }
}

impl<'a> Download<'a> {
    /// Picks up what an earlier attempt left in `partial` (the SHA-256 state is not persisted,
    /// so it is hashed again), or empties it if it is somehow longer than the file can be.
    async fn resume(url: &'a str, partial: &'a Path, expected: u64) -> Result<Self, FetchError> {
        let path = partial.to_owned();
        let (have, hasher) = tokio::task::spawn_blocking(move || hash_existing(&path, expected))
            .await
            .expect("hashing task does not panic")?;
        Ok(Self {
            url,
            partial,
            expected,
            arrived: Mutex::new(Arrived { have, hasher }),
        })
    }

    fn have(&self) -> u64 {
        self.arrived.lock().expect("download state lock").have
    }

    /// Takes what arrived so far out for one exchange (which puts it back when it ends).
    fn take_arrived(&self) -> Arrived {
        std::mem::take(&mut *self.arrived.lock().expect("download state lock"))
    }

    fn put_arrived(&self, arrived: Arrived) {
        *self.arrived.lock().expect("download state lock") = arrived;
    }

    fn disk(&self, source: std::io::Error) -> FetchError {
        FetchError::Disk {
            path: self.partial.to_owned(),
            source,
        }
    }

    /// One HTTP exchange: GET (with `Range` when resuming), then each chunk capped at the signed
    /// size, hashed and appended to the partial file. `Ok` once the file is whole.
    async fn exchange(
        &self,
        fetcher: &Fetcher,
        progress: &(dyn Fn(u64) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        let mut arrived = self.take_arrived();
        let outcome = self
            .exchange_from(&mut arrived, fetcher, progress, cancel)
            .await;
        self.put_arrived(arrived);
        outcome
    }

    async fn exchange_from(
        &self,
        arrived: &mut Arrived,
        fetcher: &Fetcher,
        progress: &(dyn Fn(u64) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        let url = self.url;
        let transport = |cause| FetchError::Transport {
            url: url.to_string(),
            cause,
        };
        let mut request = fetcher.client.get(url);
        if arrived.have > 0 {
            request = request.header(RANGE, format!("bytes={}-", arrived.have));
        }
        let mut response = tokio::select! {
            response = request.send() => response.map_err(transport)?,
            _ = cancel.cancelled() => return Err(FetchError::Cancelled),
        };
        let status = response.status();
        let resumed = status == StatusCode::PARTIAL_CONTENT
            && content_range_start(&response) == Some(arrived.have);
        if status == StatusCode::RANGE_NOT_SATISFIABLE && arrived.have > 0 {
            // Nothing past what we have: the file upstream is shorter than its signed size.
            return Err(FetchError::Truncated {
                url: url.to_string(),
                got: arrived.have,
                expected: self.expected,
                cause: None,
            });
        }
        if !(status == StatusCode::OK || resumed) {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        if !resumed {
            // The server sent the whole file: start over.
            arrived.have = 0;
            arrived.hasher = Sha256::new();
        }
        if let Some(length) = response
            .content_length()
            .filter(|length| arrived.have + length > self.expected)
        {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                expected: self.expected,
                announced: Some(arrived.have + length),
            });
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(self.partial)
            .await
            .map_err(|e| self.disk(e))?;
        file.set_len(arrived.have).await.map_err(|e| self.disk(e))?;
        let mut file = tokio::io::BufWriter::with_capacity(DOWNLOAD_WRITE_BUFFER, file);
        file.seek(SeekFrom::Start(arrived.have))
            .await
            .map_err(|e| self.disk(e))?;
        // Cap, hash, write: the hash state goes in with the file and comes out after the flush.
        let hasher = std::mem::take(&mut arrived.hasher);
        let mut sink = SizeCap::new(Digesting::new(file, hasher), self.expected, arrived.have);
        let rule = fetcher.retry.stall;
        let mut stall = StallWatch::new(rule, arrived.have, tokio::time::Instant::now());
        let stalled = |got: u64| rule.stalled(url, got, self.expected);
        let outcome = loop {
            let have = sink.written();
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk,
                _ = cancel.cancelled() => break Err(FetchError::Cancelled),
                _ = tokio::time::sleep_until(stall.deadline()), if stall.enabled() => {
                    if stall.stalled(have, tokio::time::Instant::now()) {
                        break Err(stalled(have));
                    }
                    continue;
                }
            };
            match chunk {
                Ok(Some(bytes)) => {
                    if let Err(error) = sink.write_all(&bytes).await {
                        break Err(if PastTheCap::is_in(&error) {
                            FetchError::TooLarge {
                                url: url.to_string(),
                                expected: self.expected,
                                announced: None,
                            }
                        } else {
                            self.disk(error)
                        });
                    }
                    let have = sink.written();
                    metrics::global().add_downloaded(bytes.len() as u64);
                    progress(have);
                    tokio::select! {
                        held = fetcher.rate.take(bytes.len() as u64) => stall.excuse(held),
                        _ = cancel.cancelled() => break Err(FetchError::Cancelled),
                    }
                    if have < self.expected && stall.stalled(have, tokio::time::Instant::now()) {
                        break Err(stalled(have));
                    }
                }
                Ok(None) if have < self.expected => {
                    break Err(FetchError::Truncated {
                        url: url.to_string(),
                        got: have,
                        expected: self.expected,
                        cause: None,
                    });
                }
                Ok(None) => break Ok(()),
                Err(e) => {
                    break Err(FetchError::Truncated {
                        url: url.to_string(),
                        got: have,
                        expected: self.expected,
                        cause: Some(e),
                    });
                }
            }
        };
        // Keep what arrived intact (for a resume) whatever happened above.
        let flushed = sink.flush().await.map_err(|e| self.disk(e));
        arrived.have = sink.written();
        (_, arrived.hasher) = sink.into_inner().into_parts();
        outcome.and(flushed)
    }

    /// A full disk: the partial file is removed. Leaving the disk full would keep the failure
    /// from being recorded (SQLite needs room too) and starve the rest of the machine.
    async fn give_back_the_space(&self) -> FetchError {
        if let Err(e) = tokio::fs::remove_file(self.partial).await {
            tracing::warn!(path = %self.partial.display(), "cannot remove: {e}");
        }
        FetchError::DiskFull {
            path: self.partial.to_owned(),
            got: self.have(),
            expected: self.expected,
        }
    }
}

fn content_range_start(response: &reqwest::Response) -> Option<u64> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// The length and SHA-256 state of what `path` holds (nothing if it is missing or longer than
/// `expected`, which removes it): the same digest adapter a download writes through.
fn hash_existing(path: &Path, expected: u64) -> Result<(u64, Sha256), FetchError> {
    let disk = |source| FetchError::Disk {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Sha256::new())),
        Err(e) => return Err(disk(e)),
    };
    let length = file.metadata().map_err(disk)?.len();
    if length > expected {
        drop(file);
        std::fs::remove_file(path).map_err(disk)?;
        return Ok((0, Sha256::new()));
    }
    let mut digest = Digesting::new(std::io::sink(), Sha256::new());
    let mut existing = BufReader::with_capacity(DOWNLOAD_WRITE_BUFFER, file.take(length));
    let done = std::io::copy(&mut existing, &mut digest).map_err(disk)?;
    Ok((done, digest.into_parts().1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_hashes_what_is_there_and_drops_what_cannot_be_the_file() {
        let scratch = tempfile::tempdir().unwrap();
        let partial = scratch.path().to_owned().join("x.part");
        let (have, hasher) = hash_existing(&partial, 10).unwrap();
        assert_eq!((have, hasher.finalize()), (0, Sha256::digest(b"")));

        std::fs::write(&partial, b"abcd").unwrap();
        let (have, hasher) = hash_existing(&partial, 10).unwrap();
        assert_eq!((have, hasher.finalize()), (4, Sha256::digest(b"abcd")));

        let (have, _) = hash_existing(&partial, 3).unwrap();
        assert_eq!(have, 0);
        assert!(!partial.exists(), "longer than the signed size: removed");
    }
}
