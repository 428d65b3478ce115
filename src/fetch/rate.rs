//! `--max-download-rate`: one token bucket every download draws from (the single stream, each
//! connection of a ranged download), so a controller's uplink keeps room for the rest of the
//! cloud however many installs and connections run at once.
//!
//! A taker may run the bucket into debt and then sleeps until the debt is paid at the rate: the
//! bytes already arrived are not held back, the next read is, and TCP's window slows the sender
//! (after the few socket buffers' worth the kernel takes on its own). Takers that come while
//! another sleeps add to the debt and sleep longer, so the rate holds over all of them together.
//! Small GETs (catalogs, signatures) are [`RateLimit::charge`]d without waiting: a catalog
//! refresh must not time out under a low cap, and the downloads make up for its bytes.

use crate::limits::DOWNLOAD_RATE_BURST;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct RateLimit {
    bucket: Mutex<Bucket>,
}

struct Bucket {
    /// Bytes a second; 0 is no cap.
    rate: u64,
    /// Bytes that may go now; negative is debt.
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Tops the bucket up for the time since the last look, to at most the burst.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let burst = self.rate as f64 * DOWNLOAD_RATE_BURST.as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(burst);
    }
}

impl RateLimit {
    /// `rate` bytes a second shared by all takers; `None` is no cap.
    pub fn new(rate: Option<u64>) -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                rate: rate.unwrap_or(0),
                tokens: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// A new rate from now on (a reload); what is owed is forgiven.
    pub fn set_rate(&self, rate: Option<u64>) {
        let mut bucket = self.lock();
        bucket.rate = rate.unwrap_or(0);
        bucket.tokens = 0.0;
        bucket.last = Instant::now();
    }

    pub fn rate(&self) -> Option<u64> {
        Some(self.lock().rate).filter(|&rate| rate > 0)
    }

    /// `bytes` arrived: waits until the bucket has paid for them. Returns how long it waited,
    /// which the stall rule does not count against the connection.
    pub async fn take(&self, bytes: u64) -> Duration {
        let wait = self.debit(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// `bytes` arrived that may not wait (a small GET): they count, later takers pay.
    pub fn charge(&self, bytes: u64) {
        self.debit(bytes);
    }

    fn debit(&self, bytes: u64) -> Duration {
        let mut bucket = self.lock();
        if bucket.rate == 0 {
            return Duration::ZERO;
        }
        bucket.refill(Instant::now());
        bucket.tokens -= bytes as f64;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-bucket.tokens / bucket.rate as f64)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four takers at once, 32 KiB at a time, 1 MiB in all at 1 MiB/s: a second together (a
    /// loaded machine may oversleep, never undersleep); no cap is no wait.
    #[tokio::test]
    async fn takers_together_get_the_rate_and_no_cap_is_no_wait() {
        let limit = std::sync::Arc::new(RateLimit::new(Some(1 << 20)));
        let start = Instant::now();
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let limit = limit.clone();
                tokio::spawn(async move {
                    for _ in 0..8 {
                        limit.take(32 << 10).await;
                    }
                })
            })
            .collect();
        for taker in takers {
            taker.await.unwrap();
        }
        let took = start.elapsed().as_secs_f64();
        assert!((0.95..=3.0).contains(&took), "{took}");

        let free = RateLimit::new(None);
        assert_eq!(free.take(1 << 30).await, Duration::ZERO);
        free.set_rate(Some(1 << 20));
        assert_eq!(free.rate(), Some(1 << 20));
        free.charge(1 << 20);
        let waited = free.take(0).await.as_secs_f64();
        assert!(
            (0.9..=1.0).contains(&waited),
            "a charge is paid by the next taker: {waited}"
        );
    }
}
