//! Per-path faults: what one path's next requests get wrong, switched on by a test at run time.
//! The request layer (`http.rs`) takes the matching rule as the request arrives; a status is
//! answered at once, the other faults shape the file body ([`shape_body`]).

use axum::body::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One way to get a download wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status (any path, the catalog included).
    Status(u16),
    /// Send the body no faster than this many bytes per second.
    Trickle { bytes_per_second: u64 },
    /// Send this many bytes of the body, then cut the connection.
    DropAfter(u64),
    /// `Content-Length` says this many bytes fewer than the body holds: the client reads what the
    /// header says and takes the response as complete.
    ShortContentLength(u64),
    /// `Content-Length` says this many bytes more than the body holds: the connection ends first.
    LongContentLength(u64),
    /// Flip every bit of the byte at this offset of the file, in flight (the file is unchanged).
    Corrupt { offset: u64 },
    /// After the file's bytes keep sending more, forever, without a `Content-Length`.
    Endless,
}

/// A rule: the next `times` requests for `path` get `fault` (`None`: all of them). A status
/// applies to any path; the other faults shape file and catalog bodies (a cut: files only).
#[derive(Debug, Clone)]
pub struct PathFault {
    /// The request path after `/api/`: `dashboard`, `files/karmic/image.gz`, `files/karmic/image.gz.asc`.
    pub path: String,
    pub fault: Fault,
    pub times: Option<u32>,
}

/// A catalog as served: the document and its detached signature.
#[derive(Debug, Clone)]
pub struct SignedCatalog {
    pub document: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Takes the first rule for `path` that is not used up, counting this use.
pub fn take(rules: &mut [PathFault], path: &str) -> Option<Fault> {
    let rule = rules
        .iter_mut()
        .find(|rule| rule.path == path && rule.times != Some(0))?;
    if let Some(times) = &mut rule.times {
        *times -= 1;
    }
    Some(rule.fault)
}

pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// What a faulty response declares and sends, given the honest `count` bytes of `body`.
pub struct Shaped {
    /// `Content-Length` to declare; `None` for a chunked body.
    pub content_length: Option<u64>,
    pub body: ByteStream,
}

/// Applies `fault` to a body of `count` bytes starting at file offset `start`.
pub fn shape_body(fault: Option<Fault>, body: ByteStream, start: u64, count: u64) -> Shaped {
    match fault {
        None | Some(Fault::Status(_)) | Some(Fault::DropAfter(_)) => Shaped {
            content_length: Some(count),
            body,
        },
        Some(Fault::Trickle { bytes_per_second }) => Shaped {
            content_length: Some(count),
            body: throttle(body, bytes_per_second),
        },
        Some(Fault::ShortContentLength(by)) => Shaped {
            content_length: Some(count.saturating_sub(by)),
            body,
        },
        Some(Fault::LongContentLength(by)) => Shaped {
            content_length: Some(count + by),
            body,
        },
        Some(Fault::Corrupt { offset }) => {
            let mut position = start;
            let body = body
                .map(move |chunk| {
                    let chunk = chunk?;
                    let end = position + chunk.len() as u64;
                    let chunk = if (position..end).contains(&offset) {
                        let mut bytes = chunk.to_vec();
                        bytes[(offset - position) as usize] ^= 0xff;
                        Bytes::from(bytes)
                    } else {
                        chunk
                    };
                    position = end;
                    Ok(chunk)
                })
                .boxed();
            Shaped {
                content_length: Some(count),
                body,
            }
        }
        Some(Fault::Endless) => {
            let more = stream::repeat_with(|| Ok(Bytes::from(vec![0x5a; 64 << 10])));
            Shaped {
                content_length: None,
                body: body.chain(more).boxed(),
            }
        }
    }
}

/// Holds each chunk back until the bytes sent so far fit `rate` bytes per second; chunks are cut
/// to at most a tenth of a second's worth, so that a trickle really trickles.
pub fn throttle(body: ByteStream, rate: u64) -> ByteStream {
    let rate = rate.max(1);
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    in_pieces(body, (rate / 10).max(1) as usize)
        .then(move |chunk| {
            if let Ok(bytes) = &chunk {
                sent += bytes.len() as u64;
            }
            let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            async move {
                tokio::time::sleep_until(due).await;
                chunk
            }
        })
        .boxed()
}

/// `body`'s chunks cut to at most `piece` bytes each (slices, not copies).
fn in_pieces(
    body: ByteStream,
    piece: usize,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> {
    body.flat_map(move |chunk| {
        let pieces: Vec<io::Result<Bytes>> = match chunk {
            Ok(bytes) => (0..bytes.len())
                .step_by(piece)
                .map(|at| Ok(bytes.slice(at..(at + piece).min(bytes.len()))))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        stream::iter(pieces)
    })
}

/// How long a link may stand idle and still make up the time: see [`Link::reserve`].
const LINK_SLACK: Duration = Duration::from_millis(50);

/// One link every file body shares: `--store-kib-per-second`, a pipe of `rate` bytes a second
/// however many connections a client opens (a ranged download over four connections gets the
/// rate once, not four times). Each piece takes the next free slot on the link.
#[derive(Debug)]
pub struct Link {
    rate: u64,
    /// When the link is next free.
    free_at: Mutex<Option<tokio::time::Instant>>,
}

impl Link {
    pub fn new(bytes_per_second: u64) -> Arc<Self> {
        Arc::new(Self {
            rate: bytes_per_second.max(1),
            free_at: Mutex::new(None),
        })
    }

    /// When `bytes` more have crossed the link, sent after everything queued before them. A
    /// link idle for less than [`LINK_SLACK`] lets the time it lost be made up (a token bucket
    /// of that depth), so that one connection paced by a 1 ms timer still gets the whole rate.
    fn reserve(&self, bytes: u64) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        let mut free_at = self.free_at.lock().expect("link lock");
        let start = free_at.filter(|at| *at + LINK_SLACK > now).unwrap_or(now);
        let due = start + Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        *free_at = Some(due);
        due
    }
}

/// Holds each chunk of `body` until `link` has carried it, in pieces of at most 64 KiB so that
/// connections sharing the link interleave finely.
pub fn over_link(body: ByteStream, link: Arc<Link>) -> ByteStream {
    in_pieces(body, 64 << 10)
        .then(move |chunk| {
            let due = match &chunk {
                Ok(bytes) => Some(link.reserve(bytes.len() as u64)),
                Err(_) => None,
            };
            async move {
                if let Some(due) = due {
                    tokio::time::sleep_until(due).await;
                }
                chunk
            }
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two bodies of 256 KiB at once over a 4 MiB/s link take at least 1/8 s between them; were
    /// each held to the rate on its own, they would be done in 1/16 s.
    #[tokio::test]
    async fn connections_sharing_a_link_get_its_rate_between_them() {
        let link = Link::new(4 << 20);
        let body =
            || -> ByteStream { stream::iter(vec![Ok(Bytes::from(vec![1u8; 256 << 10]))]).boxed() };
        let start = tokio::time::Instant::now();
        let (a, b) = tokio::join!(
            over_link(body(), link.clone()).collect::<Vec<_>>(),
            over_link(body(), link.clone()).collect::<Vec<_>>()
        );
        assert_eq!(a.len() + b.len(), 8, "64 KiB pieces");
        let took = start.elapsed().as_secs_f64();
        assert!(
            took >= 0.124,
            "512 KiB over a 4 MiB/s link took only {took} s"
        );
    }

    #[test]
    fn rules_are_used_up_in_order() {
        let mut rules = vec![
            PathFault {
                path: "files/a/kernel".into(),
                fault: Fault::Status(500),
                times: Some(2),
            },
            PathFault {
                path: "files/a/kernel".into(),
                fault: Fault::Endless,
                times: None,
            },
        ];
        assert_eq!(take(&mut rules, "files/a/image"), None);
        assert_eq!(take(&mut rules, "files/a/kernel"), Some(Fault::Status(500)));
        assert_eq!(take(&mut rules, "files/a/kernel"), Some(Fault::Status(500)));
        assert_eq!(take(&mut rules, "files/a/kernel"), Some(Fault::Endless));
        assert_eq!(take(&mut rules, "files/a/kernel"), Some(Fault::Endless));
    }

    #[tokio::test]
    async fn corruption_flips_one_byte_at_its_file_offset() {
        let body = stream::iter(vec![
            Ok(Bytes::from_static(b"abcd")),
            Ok(Bytes::from_static(b"efgh")),
        ])
        .boxed();
        let shaped = shape_body(Some(Fault::Corrupt { offset: 15 }), body, 10, 8);
        let out: Vec<u8> = shaped.body.map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(out, [b"abcde".as_slice(), &[b'f' ^ 0xff], b"gh"].concat());
        assert_eq!(shaped.content_length, Some(8));
    }
}
