//! Writer adapters that check bytes as they pass (after awslabs/tough's `io.rs`): [`SizeCap`]
//! refuses any byte past the signed size, [`Digesting`] hashes what its writer took. A download is
//! then "cap, hash, write", and the same pieces serve any other stream (a bundle's tar stream is
//! hashed by a `Digesting` too). Both work
//! over `std::io::Write` and tokio's `AsyncWrite`.

use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;

/// Passes writes on until `limit` bytes have gone through; a write that would go past it is
/// refused whole, so nothing past the limit ever reaches the inner writer.
pub struct SizeCap<W> {
    inner: W,
    limit: u64,
    written: u64,
}

/// The error a [`SizeCap`] refuses with, inside an `io::Error` (see [`PastTheCap::is_in`]).
#[derive(Debug, thiserror::Error)]
#[error("more than the {limit} bytes allowed")]
pub struct PastTheCap {
    pub limit: u64,
}

impl PastTheCap {
    /// Whether `error` is a [`SizeCap`]'s refusal rather than its inner writer's failure.
    pub fn is_in(error: &io::Error) -> bool {
        error.get_ref().is_some_and(|e| e.is::<PastTheCap>())
    }
}

impl<W> SizeCap<W> {
    /// `written` bytes already count against `limit` (a resumed download's earlier part).
    pub fn new(inner: W, limit: u64, written: u64) -> Self {
        Self {
            inner,
            limit,
            written,
        }
    }

    /// Bytes counted so far, those given to `new` included.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn into_inner(self) -> W {
        self.inner
    }

    fn admit(&self, len: usize) -> io::Result<()> {
        if self.written.saturating_add(len as u64) > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                PastTheCap { limit: self.limit },
            ));
        }
        Ok(())
    }
}

impl<W: Write> Write for SizeCap<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.admit(buf.len())?;
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SizeCap<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.admit(buf.len())?;
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Hashes (SHA-256 for a download, SHA-1 for a bundle's tar stream) exactly the bytes its inner
/// writer accepted, so the digest describes what was written, not what was offered.
pub struct Digesting<W, D = Sha256> {
    inner: W,
    hasher: D,
}

impl<W, D: Digest> Digesting<W, D> {
    /// Continues `hasher`, which may already hold the earlier part of the stream.
    pub fn new(inner: W, hasher: D) -> Self {
        Self { inner, hasher }
    }

    /// The writer and the hash state so far (to continue or to finalize).
    pub fn into_parts(self) -> (W, D) {
        (self.inner, self.hasher)
    }
}

impl<W: Write, D: Digest> Write for Digesting<W, D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: AsyncWrite + Unpin, D: Digest + Unpin> AsyncWrite for Digesting<W, D> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.hasher.update(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_takes_up_to_the_limit_and_refuses_one_byte_more() {
        let mut cap = SizeCap::new(Vec::new(), 10, 4);
        cap.write_all(b"abcdef").unwrap();
        assert_eq!(cap.written(), 10);
        let refused = cap.write_all(b"g").unwrap_err();
        assert!(PastTheCap::is_in(&refused), "{refused}");
        assert_eq!(refused.to_string(), "more than the 10 bytes allowed");
        assert_eq!(cap.written(), 10);
        assert_eq!(
            cap.into_inner(),
            b"abcdef",
            "nothing past the limit got through"
        );
    }

    #[test]
    fn a_write_that_would_cross_the_limit_is_refused_whole() {
        let mut cap = SizeCap::new(Vec::new(), 3, 0);
        assert!(cap.write_all(b"abcd").is_err());
        assert_eq!(cap.written(), 0);
        assert!(cap.into_inner().is_empty());
        let disk = io::Error::from(io::ErrorKind::StorageFull);
        assert!(!PastTheCap::is_in(&disk));
    }

    #[test]
    fn a_resumed_digest_carries_the_first_part_on() {
        let data: Vec<u8> = (0..10_000u32).map(|n| (n * 7 % 251) as u8).collect();
        let mut first = Digesting::new(io::sink(), Sha256::new());
        first.write_all(&data[..1000]).unwrap();
        let (_, hasher) = first.into_parts();
        let mut rest = Digesting::new(io::sink(), hasher);
        rest.write_all(&data[1000..]).unwrap();
        assert_eq!(rest.into_parts().1.finalize(), Sha256::digest(&data));
    }

    /// A writer that takes at most 3 bytes a call: the digest covers what it took, no more.
    struct Short(Vec<u8>);

    impl Write for Short {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_digest_counts_only_what_the_writer_took() {
        let mut digesting = Digesting::new(Short(Vec::new()), Sha256::new());
        assert_eq!(digesting.write(b"abcdef").unwrap(), 3);
        let (short, hasher) = digesting.into_parts();
        assert_eq!(short.0, b"abc");
        assert_eq!(hasher.finalize(), Sha256::digest(b"abc"));
    }
}

/// The same adapters over tokio's `AsyncWrite`, as a download uses them.
#[cfg(test)]
mod async_tests {
    use super::{Digesting, PastTheCap, SizeCap};
    use sha2::{Digest, Sha256};
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_async_cap_refuses_as_the_blocking_one_does() {
        let mut cap = SizeCap::new(Vec::new(), 2, 0);
        cap.write_all(b"ab").await.unwrap();
        let refused = cap.write_all(b"c").await.unwrap_err();
        assert!(PastTheCap::is_in(&refused));
        assert_eq!(cap.into_inner(), b"ab");
    }

    #[tokio::test]
    async fn the_digest_is_sha256_of_the_bytes_written_in_any_pieces() {
        let data: Vec<u8> = (0..100_000u32).map(|n| (n * 7 % 251) as u8).collect();
        let mut digesting = Digesting::new(Vec::new(), Sha256::new());
        for piece in data.chunks(4093) {
            digesting.write_all(piece).await.unwrap();
        }
        let (written, hasher) = digesting.into_parts();
        assert_eq!(written, data);
        assert_eq!(hasher.finalize(), Sha256::digest(&data));
    }

    #[tokio::test]
    async fn cap_then_digest_hashes_only_what_the_cap_let_through() {
        let mut sink = SizeCap::new(Digesting::new(Vec::new(), Sha256::new()), 5, 0);
        sink.write_all(b"abc").await.unwrap();
        assert!(sink.write_all(b"def").await.is_err());
        let (written, hasher) = sink.into_inner().into_parts();
        assert_eq!(written, b"abc");
        assert_eq!(hasher.finalize(), Sha256::digest(b"abc"));
    }
}
