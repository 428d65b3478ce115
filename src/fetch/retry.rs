//! The retry and stall policy shared by every exchange with another party, upstream or cloud: how
//! many tries, how long the pause between them, when a slow transfer counts as cut, and the one
//! loop that applies it. Each caller says what is transient in its own error type
//! ([`Retryable`]); the loop owns the counting, the doubling pause and the cancel.

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl RetryPolicy {
    /// The pause after the `attempt`-th failure (counted from 0): doubling, capped.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        self.first_delay
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_delay)
    }
}

/// A failure the retry loop can judge: worth another try or not, and how a cancel is spelled.
pub trait Retryable {
    /// Worth another try after a pause: the network or the other party may recover.
    fn is_transient(&self) -> bool;
    /// The failure that reports a cancel seen by the loop (before an attempt or in a pause).
    fn cancelled() -> Self;
}

/// Runs `attempt` until it succeeds, fails for good, or transient failures use up the policy's
/// tries; the pause doubles each time. `before_retry` hears each failure that will be tried again
/// with the count of failures so far (from 1). A cancel before an attempt or during a pause ends
/// the loop with [`Retryable::cancelled`]; cancelling inside an attempt is the attempt's business
/// (a download keeps what arrived).
pub async fn with_retries<T, E, Fut>(
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    mut attempt: impl FnMut() -> Fut,
    mut before_retry: impl FnMut(&E, u32),
) -> Result<T, E>
where
    E: Retryable,
    Fut: Future<Output = Result<T, E>>,
{
    let mut failures = 0;
    loop {
        if cancel.is_cancelled() {
            return Err(E::cancelled());
        }
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_transient() && failures + 1 < policy.attempts => {
                failures += 1;
                before_retry(&error, failures);
                tokio::select! {
                    _ = tokio::time::sleep(policy.delay(failures - 1)) => {}
                    _ = cancel.cancelled() => return Err(E::cancelled()),
                }
            }
            Err(error) => return Err(error),
        }
    }
}

/// A download that brings fewer than `min_bytes_per_second` on average over any `window` has
/// stalled (curl's `--speed-limit`/`--speed-time`): the exchange is dropped and resumed with
/// `Range` after the retry pause, like a cut connection. The read timeout alone would not do: a
/// server that sends one byte a minute never lets it fire. 1 KiB/s over 30 s by default: far
/// below any working link, far above a stuck one. A rate of 0 turns the rule off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl StallRule {
    /// The failure of a download of `url` this rule found stalled at `got` of `expected` bytes.
    pub(crate) fn stalled(self, url: &str, got: u64, expected: u64) -> super::FetchError {
        super::FetchError::Stalled {
            url: url.to_string(),
            got,
            expected,
            min_rate: self.min_bytes_per_second,
            seconds: self.window.as_secs(),
        }
    }
}

/// Applies a [`StallRule`] to one exchange: windows follow each other from the first byte's wait.
pub(crate) struct StallWatch {
    rule: StallRule,
    window_start: tokio::time::Instant,
    bytes_at_start: u64,
}

impl StallWatch {
    pub(crate) fn new(rule: StallRule, have: u64, now: tokio::time::Instant) -> Self {
        Self {
            rule,
            window_start: now,
            bytes_at_start: have,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.rule.min_bytes_per_second > 0 && !self.rule.window.is_zero()
    }

    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        self.window_start + self.rule.window
    }

    /// Time the download spent held back by `--max-download-rate` (`rate.rs`): not the other
    /// side's slowness, so the window is moved on by it.
    pub(crate) fn excuse(&mut self, held: Duration) {
        self.window_start += held;
    }

    /// Whether the window that ended by `now` brought too little; starts the next window if not.
    pub(crate) fn stalled(&mut self, have: u64, now: tokio::time::Instant) -> bool {
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
    fn the_pause_doubles_up_to_its_cap() {
        let policy = RetryPolicy {
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(3),
            ..RetryPolicy::default()
        };
        let delays: Vec<_> = (0..5).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000]);
    }

    #[derive(Debug, PartialEq)]
    enum Outcome {
        Flaky,
        Broken,
        Cancelled,
    }

    impl Retryable for Outcome {
        fn is_transient(&self) -> bool {
            *self == Outcome::Flaky
        }
        fn cancelled() -> Self {
            Outcome::Cancelled
        }
    }

    fn quick(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            ..RetryPolicy::default()
        }
    }

    #[tokio::test]
    async fn transient_failures_are_tried_again_until_the_tries_run_out() {
        let cancel = CancellationToken::new();
        let mut tries = 0;
        let mut heard = Vec::new();
        let outcome: Result<(), _> = with_retries(
            &quick(3),
            &cancel,
            || {
                tries += 1;
                async { Err(Outcome::Flaky) }
            },
            |_, failures| heard.push(failures),
        )
        .await;
        assert_eq!(outcome, Err(Outcome::Flaky));
        assert_eq!(tries, 3, "three tries in all, the first included");
        assert_eq!(heard, [1, 2], "the last failure is not followed by a retry");

        let mut tries = 0;
        let outcome = with_retries(
            &quick(5),
            &cancel,
            || {
                tries += 1;
                let n = tries;
                async move { if n < 3 { Err(Outcome::Flaky) } else { Ok(n) } }
            },
            |_, _| {},
        )
        .await;
        assert_eq!(outcome, Ok(3));
    }

    #[tokio::test]
    async fn a_permanent_failure_or_a_cancel_stops_at_once() {
        let cancel = CancellationToken::new();
        let mut tries = 0;
        let outcome: Result<(), _> = with_retries(
            &quick(5),
            &cancel,
            || {
                tries += 1;
                async { Err(Outcome::Broken) }
            },
            |_, _| {},
        )
        .await;
        assert_eq!((outcome, tries), (Err(Outcome::Broken), 1));

        let slow = RetryPolicy {
            first_delay: Duration::from_secs(3600),
            max_delay: Duration::from_secs(3600),
            ..quick(5)
        };
        let outcome: Result<(), _> = with_retries(
            &slow,
            &cancel,
            || async { Err(Outcome::Flaky) },
            |_, _| cancel.cancel(),
        )
        .await;
        assert_eq!(outcome, Err(Outcome::Cancelled), "the pause is cut short");
        let outcome: Result<(), _> =
            with_retries(&slow, &cancel, || async { Ok(()) }, |_, _| {}).await;
        assert_eq!(
            outcome,
            Err(Outcome::Cancelled),
            "no attempt once cancelled"
        );
    }
}
