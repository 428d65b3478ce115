//! A large file over several connections (`--download-connections`): the bytes the partial file
//! lacks are split into pieces of [`DOWNLOAD_PIECE_BYTES`], each fetched with `Range: bytes=S-E`
//! and written at its offset, each retried and resumed on its own (the retry loop and stall rule
//! of `retry.rs`). For links where one TCP stream is slower than the pipe.
//!
//! The connections take the pieces in file order, each the next one nobody has taken, so the
//! contiguous prefix (what is hashed, and what the bundler reads while the file grows) trails the
//! furthest byte by a few pieces, not by most of the file: one range per connection would leave
//! the in-order readers three quarters of the work to do after the last byte arrives.
//!
//! What is on disk is said by a small record beside the partial file (`<hex>.part.ranges`,
//! [`crate::cache::ranges_record`]): each range's start, end and how far it is written. It is
//! written before any byte of a range and updated only after bytes reached the file, so after a
//! kill it never claims a byte that was not written; a resume asks each range only for what it
//! lacks. Without a record a partial file is a plain prefix (a one-stream download's).
//!
//! The SHA-256 is taken in file order while the ranges arrive: a follower reads back the
//! contiguous prefix as it grows (from the page cache, a 64 KiB buffer), so memory stays flat and
//! the file is not read again once whole. An upstream that answers the first ranged request with
//! anything but the exact 206 asked for does not do ranges: the download goes on as one stream
//! from the contiguous prefix.

use super::retry::{StallWatch, with_retries};
use super::{FetchError, Fetcher};
use crate::cache::ranges_record;
use crate::limits::{DOWNLOAD_PIECE_BYTES, DOWNLOAD_WRITE_BUFFER};
use crate::metrics;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One range of the file: bytes `start..end`, written up to `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
    at: u64,
}

impl Span {
    fn header(&self) -> String {
        format!("bytes={}-{}", self.at, self.end - 1)
    }

    /// Its line in the record.
    fn line(&self) -> String {
        format!("{:020} {:020} {:020}\n", self.start, self.end, self.at)
    }
}

/// The ranges of one file, in file order, covering `0..expected` without overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spans(Vec<Span>);

const RECORD_MAGIC: &str = "image-store-proxy ranges 1";
/// The record's first two lines: the magic and the file's size.
const RECORD_HEAD_LEN: usize = RECORD_MAGIC.len() + 1 + 21;
/// One range's line in the record: three 20-digit numbers, two spaces, a newline.
const RECORD_LINE_LEN: usize = 3 * 20 + 3;

impl Spans {
    /// `have` bytes from the start are in; the rest split into pieces of `piece` bytes (the last
    /// shorter).
    fn split(have: u64, expected: u64, piece: u64) -> Self {
        let mut spans = Vec::new();
        if have > 0 {
            spans.push(Span {
                start: 0,
                end: have,
                at: have,
            });
        }
        let mut start = have;
        while start < expected {
            let end = expected.min(start.saturating_add(piece.max(1)));
            spans.push(Span {
                start,
                end,
                at: start,
            });
            start = end;
        }
        Spans(spans)
    }

    /// The bytes written from the start with no hole: what may be hashed, or resumed from by one
    /// stream.
    fn prefix(&self) -> u64 {
        let mut prefix = 0;
        for span in &self.0 {
            if span.start != prefix {
                break;
            }
            prefix = span.at;
            if span.at < span.end {
                break;
            }
        }
        prefix
    }

    /// Bytes written in all.
    fn written(&self) -> u64 {
        self.0.iter().map(|span| span.at - span.start).sum()
    }

    /// The record: fixed-width numbers, so each range's line is updated in place alone
    /// ([`Span::line`] at [`Spans::line_offset`]).
    fn record(&self, expected: u64) -> String {
        let mut text = format!("{RECORD_MAGIC}\n{expected:020}\n");
        for span in &self.0 {
            text.push_str(&span.line());
        }
        text
    }

    /// Where range `n`'s line starts in the record.
    fn line_offset(n: usize) -> u64 {
        (RECORD_HEAD_LEN + n * RECORD_LINE_LEN) as u64
    }

    /// A record read back, if it is one for a file of `expected` bytes whose ranges cover it.
    fn parse(text: &str, expected: u64) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != RECORD_MAGIC || lines.next()?.parse::<u64>().ok()? != expected {
            return None;
        }
        let mut spans = Vec::new();
        let mut next = 0;
        for line in lines {
            let numbers: Vec<u64> = line
                .split(' ')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let &[start, end, at] = numbers.as_slice() else {
                return None;
            };
            if start != next || !(start <= at && at <= end) {
                return None;
            }
            spans.push(Span { start, end, at });
            next = end;
        }
        (next == expected).then_some(Spans(spans))
    }
}

/// What is on disk of a file before a download starts: the record's ranges, or the partial file
/// as a prefix (nothing if it is longer than the file can be).
fn on_disk(partial: &Path, expected: u64) -> Result<Option<Spans>, FetchError> {
    let disk = |source| FetchError::Disk {
        path: partial.to_owned(),
        source,
    };
    let length = match std::fs::metadata(partial) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(disk(e)),
    };
    match std::fs::read_to_string(ranges_record(partial)) {
        Ok(text) => match Spans::parse(&text, expected) {
            // Every byte it claims must be in the file (a record is written after its bytes).
            Some(spans)
                if length <= expected
                    && spans.0.iter().all(|s| s.at == s.start || s.at <= length) =>
            {
                return Ok(Some(spans));
            }
            // Not a record of this file: nothing of the partial file can be told apart.
            _ => {
                let _ = std::fs::remove_file(partial);
                let _ = std::fs::remove_file(ranges_record(partial));
                return Ok(None);
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(disk(e)),
    }
    if length > expected {
        std::fs::remove_file(partial).map_err(disk)?;
        return Ok(None);
    }
    Ok(Some(Spans::split(length, expected, expected)).filter(|_| length > 0))
}

/// Before a one-stream download: a partial file a parallel download left is cut to its contiguous
/// prefix and its record removed, so what follows the prefix is fetched, not trusted.
pub(super) fn settle_for_one_stream(partial: &Path, expected: u64) -> Result<(), FetchError> {
    let record = ranges_record(partial);
    if !record.exists() {
        return Ok(());
    }
    let prefix = on_disk(partial, expected)?.map_or(0, |spans| spans.prefix());
    let disk = |source| FetchError::Disk {
        path: partial.to_owned(),
        source,
    };
    if prefix > 0 || partial.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .open(partial)
            .and_then(|file| file.set_len(prefix))
            .map_err(disk)?;
    }
    match std::fs::remove_file(&record) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(disk(e)),
        _ => Ok(()),
    }
}

/// A parallel download under way: its ranges, shared by the range tasks and the hashing follower.
struct Ranged<'a> {
    url: &'a str,
    partial: &'a Path,
    expected: u64,
    spans: Mutex<Spans>,
    /// The record, rewritten in place after each write (a few hundred bytes into the page cache,
    /// under the lock, so records never interleave).
    record: Mutex<std::fs::File>,
    /// Woken after each write: the follower hashes the grown prefix.
    grown: Notify,
    /// Told of the hashed prefix: a reader may follow it.
    growth: Option<&'a super::growing::Growth>,
}

impl Fetcher {
    /// Downloads `url` in pieces over [`Fetcher::with_connections`] connections; `None` when the
    /// upstream does not answer ranges (the partial file then holds its contiguous prefix only,
    /// for one stream to resume).
    pub(super) async fn download_ranges(
        &self,
        url: &str,
        partial: &Path,
        expected: u64,
        progress: &(dyn Fn(u64) + Send + Sync),
        growth: Option<&super::growing::Growth>,
        cancel: &CancellationToken,
    ) -> Result<Option<crate::cache::Sha256Hex>, FetchError> {
        let disk = |source| FetchError::Disk {
            path: partial.to_owned(),
            source,
        };
        let spans = match on_disk(partial, expected)? {
            // A prefix of one stream's: the rest is split.
            Some(spans) if !ranges_record(partial).exists() => {
                Spans::split(spans.prefix(), expected, DOWNLOAD_PIECE_BYTES)
            }
            Some(spans) => spans,
            None => Spans::split(0, expected, DOWNLOAD_PIECE_BYTES),
        };
        progress(spans.written());
        // The record first, then any byte of the ranges.
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(partial)
            .map_err(disk)?;
        let record_path = ranges_record(partial);
        let record = std::fs::File::create(&record_path).map_err(|source| FetchError::Disk {
            path: record_path.clone(),
            source,
        })?;
        let ranged = Ranged {
            url,
            partial,
            expected,
            spans: Mutex::new(spans),
            record: Mutex::new(record),
            grown: Notify::new(),
            growth,
        };
        ranged.write_record()?;
        let outcome = ranged.run(self, progress, cancel).await;
        match outcome {
            Ok(Some(digest)) => {
                std::fs::remove_file(&record_path).map_err(|source| FetchError::Disk {
                    path: record_path,
                    source,
                })?;
                Ok(Some(crate::cache::Sha256Hex::from_digest(
                    &digest.finalize(),
                )))
            }
            Ok(None) => {
                settle_for_one_stream(partial, expected)?;
                Ok(None)
            }
            Err(FetchError::Disk { source, .. })
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                let got = ranged.spans.lock().expect("ranges lock").written();
                let _ = std::fs::remove_file(&record_path);
                let _ = std::fs::remove_file(partial);
                Err(FetchError::DiskFull {
                    path: partial.to_owned(),
                    got,
                    expected,
                })
            }
            Err(error) => {
                error.record();
                Err(error)
            }
        }
    }
}

impl Ranged<'_> {
    fn disk(&self, source: std::io::Error) -> FetchError {
        FetchError::Disk {
            path: self.partial.to_owned(),
            source,
        }
    }

    /// Writes the whole record (once, before any byte of the ranges).
    fn write_record(&self) -> Result<(), FetchError> {
        let text = self
            .spans
            .lock()
            .expect("ranges lock")
            .record(self.expected);
        self.write_record_at(text.as_bytes(), 0)
    }

    /// Rewrites range `n`'s line in the record as it now stands.
    fn record_range(&self, n: usize) -> Result<(), FetchError> {
        let line = self.spans.lock().expect("ranges lock").0[n].line();
        self.write_record_at(line.as_bytes(), Spans::line_offset(n))
    }

    fn write_record_at(&self, bytes: &[u8], offset: u64) -> Result<(), FetchError> {
        let record = self.record.lock().expect("record lock");
        record
            .write_all_at(bytes, offset)
            .map_err(|source| FetchError::Disk {
                path: ranges_record(self.partial),
                source,
            })
    }

    /// The connections, each taking the next open range in file order and fetching it in its own
    /// retry loop, and the follower that hashes; `None` when the first ranged request shows the
    /// upstream does not do ranges.
    async fn run(
        &self,
        fetcher: &Fetcher,
        progress: &(dyn Fn(u64) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<Option<Sha256>, FetchError> {
        let open: Vec<usize> = {
            let spans = self.spans.lock().expect("ranges lock");
            (0..spans.0.len())
                .filter(|&n| spans.0[n].at < spans.0[n].end)
                .collect()
        };
        // The first open range asks first: its answer says whether the upstream does ranges.
        let mut first = None;
        if let Some(&n) = open.first() {
            let response = with_retries(
                &fetcher.retry,
                cancel,
                || self.request(fetcher, n, cancel),
                |error, _| {
                    error.record();
                    tracing::warn!(url = %self.url, "ranged request failed, trying again: {error}");
                },
            )
            .await?;
            match response {
                Some(response) => first = Some(response),
                None => {
                    tracing::info!(url = %self.url, "the upstream does not answer ranges: one stream");
                    return Ok(None);
                }
            }
        }
        let queue = Mutex::new((open.into_iter(), first));
        let take = || {
            let mut queue = queue.lock().expect("range queue lock");
            let n = queue.0.next()?;
            Some((n, queue.1.take()))
        };
        let connection = || async {
            while let Some((n, mut response)) = take() {
                with_retries(
                    &fetcher.retry,
                    cancel,
                    || {
                        let given = response.take();
                        async move { self.fetch_range(fetcher, n, given, progress, cancel).await }
                    },
                    |error, _| {
                        error.record();
                        tracing::warn!(url = %self.url, range = n, "range interrupted, resuming: {error}");
                    },
                )
                .await?;
            }
            Ok::<_, FetchError>(())
        };
        let connections = (0..fetcher.connections).map(|_| connection());
        let (_, hasher) = tokio::try_join!(
            futures_util::future::try_join_all(connections),
            self.follow(cancel)
        )?;
        Ok(Some(hasher))
    }

    /// Sends range `n`'s request; `None` when the answer is not the exact 206 asked for.
    async fn request(
        &self,
        fetcher: &Fetcher,
        n: usize,
        cancel: &CancellationToken,
    ) -> Result<Option<reqwest::Response>, FetchError> {
        let span = self.spans.lock().expect("ranges lock").0[n];
        let request = fetcher.client.get(self.url).header(RANGE, span.header());
        let response = tokio::select! {
            response = request.send() => response.map_err(|cause| FetchError::Transport {
                url: self.url.to_string(),
                cause,
            })?,
            _ = cancel.cancelled() => return Err(FetchError::Cancelled),
        };
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(None);
        }
        if status != StatusCode::PARTIAL_CONTENT {
            return Err(FetchError::Status {
                url: self.url.to_string(),
                status: status.as_u16(),
            });
        }
        Ok(Some(response).filter(|r| self.answers(r, &span).is_ok()))
    }

    /// Whether `response` holds exactly the bytes `span` asked for (its error names what came).
    fn answers(&self, response: &reqwest::Response, span: &Span) -> Result<(), FetchError> {
        let wanted = format!("bytes {}-{}/{}", span.at, span.end - 1, self.expected);
        let came = response
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok());
        let length = response.content_length();
        if response.status() == StatusCode::PARTIAL_CONTENT
            && came == Some(wanted.as_str())
            && length.is_none_or(|length| length == span.end - span.at)
        {
            return Ok(());
        }
        Err(FetchError::WrongRange {
            url: self.url.to_string(),
            asked: span.header(),
            answered: format!(
                "HTTP {} {}",
                response.status().as_u16(),
                came.unwrap_or("without a Content-Range")
            ),
        })
    }

    /// One exchange of range `n`: from where it stopped to its end, written at its offset.
    async fn fetch_range(
        &self,
        fetcher: &Fetcher,
        n: usize,
        given: Option<reqwest::Response>,
        progress: &(dyn Fn(u64) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        let url = self.url;
        let span = self.spans.lock().expect("ranges lock").0[n];
        if span.at == span.end {
            return Ok(());
        }
        let mut response = match given {
            Some(response) => response,
            None => {
                let request = fetcher.client.get(url).header(RANGE, span.header());
                let response = tokio::select! {
                    response = request.send() => response.map_err(|cause| FetchError::Transport {
                        url: url.to_string(),
                        cause,
                    })?,
                    _ = cancel.cancelled() => return Err(FetchError::Cancelled),
                };
                if !response.status().is_success() {
                    return Err(FetchError::Status {
                        url: url.to_string(),
                        status: response.status().as_u16(),
                    });
                }
                self.answers(&response, &span)?;
                response
            }
        };
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(self.partial)
            .await
            .map_err(|e| self.disk(e))?;
        file.seek(std::io::SeekFrom::Start(span.at))
            .await
            .map_err(|e| self.disk(e))?;
        let rule = fetcher.retry.stall;
        let mut stall = StallWatch::new(rule, span.at, tokio::time::Instant::now());
        let mut at = span.at;
        let mut buffer: Vec<u8> = Vec::with_capacity(DOWNLOAD_WRITE_BUFFER);
        let outcome = loop {
            let have = at + buffer.len() as u64;
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk,
                _ = cancel.cancelled() => break Err(FetchError::Cancelled),
                _ = tokio::time::sleep_until(stall.deadline()), if stall.enabled() => {
                    if stall.stalled(have, tokio::time::Instant::now()) {
                        break Err(self.stalled(have, rule));
                    }
                    continue;
                }
            };
            match chunk {
                Ok(Some(bytes)) => {
                    if have + bytes.len() as u64 > span.end {
                        break Err(FetchError::WrongRange {
                            url: url.to_string(),
                            asked: span.header(),
                            answered: "more bytes than asked for".to_string(),
                        });
                    }
                    metrics::global().add_downloaded(bytes.len() as u64);
                    buffer.extend_from_slice(&bytes);
                    tokio::select! {
                        held = fetcher.rate.take(bytes.len() as u64) => stall.excuse(held),
                        _ = cancel.cancelled() => {
                            break Err(FetchError::Cancelled);
                        }
                    }
                    if buffer.len() >= DOWNLOAD_WRITE_BUFFER {
                        if let Err(error) = self.write(&mut file, n, &mut at, &mut buffer).await {
                            break Err(error);
                        }
                        progress(self.spans.lock().expect("ranges lock").written());
                    }
                    let have = at + buffer.len() as u64;
                    if have < span.end && stall.stalled(have, tokio::time::Instant::now()) {
                        break Err(self.stalled(have, rule));
                    }
                }
                Ok(None) if have < span.end => {
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
        // What arrived is kept (written and recorded) for the resume, whatever happened above.
        let written = self.write(&mut file, n, &mut at, &mut buffer).await;
        progress(self.spans.lock().expect("ranges lock").written());
        outcome.and(written)
    }

    fn stalled(&self, got: u64, rule: super::StallRule) -> FetchError {
        rule.stalled(self.url, got, self.expected)
    }

    /// Writes the buffer at `at` in range `n`, then records it: the record never runs ahead of
    /// the file.
    async fn write(
        &self,
        file: &mut tokio::fs::File,
        n: usize,
        at: &mut u64,
        buffer: &mut Vec<u8>,
    ) -> Result<(), FetchError> {
        if buffer.is_empty() {
            return Ok(());
        }
        file.write_all(buffer).await.map_err(|e| self.disk(e))?;
        file.flush().await.map_err(|e| self.disk(e))?;
        *at += buffer.len() as u64;
        buffer.clear();
        self.spans.lock().expect("ranges lock").0[n].at = *at;
        self.record_range(n)?;
        self.grown.notify_one();
        Ok(())
    }

    /// Hashes the file in order as its contiguous prefix grows, reading back what the ranges
    /// wrote; done when the whole file is hashed.
    async fn follow(&self, cancel: &CancellationToken) -> Result<Sha256, FetchError> {
        let mut hasher = Sha256::new();
        let mut hashed = 0;
        let mut file = std::fs::File::open(self.partial).map_err(|e| self.disk(e))?;
        loop {
            let prefix = self.spans.lock().expect("ranges lock").prefix();
            if hashed < prefix {
                let read;
                (file, hasher, read) = tokio::task::spawn_blocking(move || {
                    let read = hash_between(&mut file, &mut hasher, hashed, prefix);
                    (file, hasher, read)
                })
                .await
                .expect("hashing task does not panic");
                read.map_err(|e| self.disk(e))?;
                hashed = prefix;
                if let Some(growth) = self.growth {
                    growth.advance(hashed);
                }
                continue;
            }
            if hashed == self.expected {
                return Ok(hasher);
            }
            tokio::select! {
                _ = self.grown.notified() => {}
                _ = cancel.cancelled() => return Err(FetchError::Cancelled),
            }
        }
    }
}

/// Feeds bytes `from..to` of `file` to `hasher`, 64 KiB at a time.
fn hash_between(
    file: &mut std::fs::File,
    hasher: &mut Sha256,
    from: u64,
    to: u64,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; DOWNLOAD_WRITE_BUFFER];
    let mut at = from;
    while at < to {
        let want = ((to - at) as usize).min(buffer.len());
        let got = file.read_at(&mut buffer[..want], at)?;
        if got == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the partial file is shorter than its written ranges",
            ));
        }
        hasher.update(&buffer[..got]);
        at += got as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_is_split_into_pieces_and_the_prefix_stops_at_the_first_hole() {
        let spans = Spans::split(10, 110, 25);
        let bounds: Vec<_> = spans.0.iter().map(|s| (s.start, s.end, s.at)).collect();
        assert_eq!(
            bounds,
            [
                (0, 10, 10),
                (10, 35, 10),
                (35, 60, 35),
                (60, 85, 60),
                (85, 110, 85)
            ]
        );
        assert_eq!(spans.prefix(), 10);
        let mut grown = spans.clone();
        grown.0[2].at = 50;
        assert_eq!(grown.prefix(), 10, "range 2 is past a hole");
        grown.0[1].at = 35;
        assert_eq!(grown.prefix(), 50);
        assert_eq!(grown.written(), 10 + 25 + 15);
        let ends: Vec<_> = Spans::split(0, 70, 30).0.iter().map(|s| s.end).collect();
        assert_eq!(ends, [30, 60, 70], "the last piece is shorter");
        assert_eq!(Spans::split(0, 3, u64::MAX).0.len(), 1, "one piece at most");
    }

    #[test]
    fn a_record_reads_back_only_for_the_same_file_and_whole_cover() {
        let mut spans = Spans::split(0, 1000, 334);
        spans.0[1].at = 500;
        let record = spans.record(1000);
        assert_eq!(Spans::parse(&record, 1000), Some(spans.clone()));
        assert_eq!(Spans::parse(&record, 999), None, "another size");
        let mut grown = spans.clone();
        grown.0[1].at = 666;
        let mut in_place = record.clone().into_bytes();
        let at = Spans::line_offset(1) as usize;
        in_place[at..at + RECORD_LINE_LEN].copy_from_slice(grown.0[1].line().as_bytes());
        assert_eq!(
            String::from_utf8(in_place).unwrap(),
            grown.record(1000),
            "one range's line rewritten in place is the whole record"
        );
        let holed = record.replacen("00000000000000000668 ", "00000000000000000669 ", 1);
        assert_eq!(Spans::parse(&holed, 1000), None, "ranges must touch");
        assert_eq!(Spans::parse(&record[..record.len() - 30], 1000), None);
    }

    /// A parallel download killed part-way leaves a record; one stream after it (fewer
    /// connections configured, or an upstream that stopped answering ranges) keeps only the
    /// contiguous prefix, never the bytes past a hole.
    #[test]
    fn one_stream_after_a_parallel_download_keeps_only_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("x.part");
        std::fs::write(&partial, vec![7u8; 900]).unwrap();
        let mut spans = Spans::split(0, 1000, 334);
        spans.0[0].at = 200;
        spans.0[1].at = 600;
        std::fs::write(ranges_record(&partial), spans.record(1000)).unwrap();
        assert_eq!(on_disk(&partial, 1000).unwrap(), Some(spans));
        settle_for_one_stream(&partial, 1000).unwrap();
        assert_eq!(std::fs::metadata(&partial).unwrap().len(), 200);
        assert!(!ranges_record(&partial).exists());
        assert_eq!(
            on_disk(&partial, 1000).unwrap().map(|s| s.prefix()),
            Some(200)
        );
    }
}
