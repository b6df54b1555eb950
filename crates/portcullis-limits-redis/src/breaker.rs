//! Circuit breaker: after a Redis failure, admissions go straight to the outage policy for a retry
//! interval instead of each waiting out a timeout; then one caller probes Redis, and its answer closes
//! the breaker or opens it for another interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Where the limiter's counters are, for the server's metrics and readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    /// Counting in Redis, shared by every replica.
    Shared,
    /// Redis failed; admissions follow the outage policy ([`crate::OnBackendError`]) until it answers again.
    Degraded {
        /// When the current outage began (the first failure after Redis last answered).
        since: SystemTime,
    },
}

#[derive(Debug)]
pub(crate) struct Breaker {
    /// Origin of `retry_at` (a monotonic clock; tokio's, so paused-time tests control it).
    origin: Instant,
    retry_interval: Duration,
    /// Wall-clock ms since the epoch when the outage began; 0 while shared.
    degraded_since_ms: AtomicU64,
    /// Ms since `origin` before which Redis is not tried; 0 when the breaker is closed.
    retry_at: AtomicU64,
    /// Admissions decided by the outage policy.
    fallbacks: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(retry_interval: Duration) -> Breaker {
        Breaker {
            origin: Instant::now(),
            retry_interval,
            degraded_since_ms: AtomicU64::new(0),
            retry_at: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        }
    }

    pub(crate) fn state(&self) -> BackendState {
        match self.degraded_since_ms.load(Ordering::Acquire) {
            0 => BackendState::Shared,
            ms => BackendState::Degraded { since: UNIX_EPOCH + Duration::from_millis(ms) },
        }
    }

    /// Whether this caller should try Redis now. While open, no; once the interval has passed, exactly one
    /// caller gets to probe (the others keep to the policy until it answers or the next interval ends).
    pub(crate) fn should_try(&self) -> bool {
        let at = self.retry_at.load(Ordering::Acquire);
        if at == 0 {
            return true;
        }
        let now = self.elapsed_ms();
        now >= at
            && self.retry_at.compare_exchange(at, self.next_retry(now), Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// True while failures send callers to the policy without trying Redis (no probe is claimed).
    pub(crate) fn is_open(&self) -> bool {
        let at = self.retry_at.load(Ordering::Acquire);
        at != 0 && self.elapsed_ms() < at
    }

    /// Ms until Redis will be tried again (at least 1), for `Retry-After`.
    pub(crate) fn retry_after_ms(&self) -> u64 {
        let at = self.retry_at.load(Ordering::Acquire);
        let left = at.saturating_sub(self.elapsed_ms());
        if left == 0 { duration_ms(self.retry_interval) } else { left }.max(1)
    }

    /// Redis answered: close the breaker; log once if this ends an outage.
    pub(crate) fn success(&self) {
        self.retry_at.store(0, Ordering::Release);
        let since = self.degraded_since_ms.swap(0, Ordering::AcqRel);
        if since != 0 {
            let outage_ms = wall_ms().saturating_sub(since);
            tracing::warn!(outage_ms, "Redis limiter backend answers again; shared counting resumes");
        }
    }

    /// Redis failed: open the breaker for a retry interval; log once if this starts an outage.
    pub(crate) fn failure(&self, error: &dyn std::fmt::Display) {
        self.retry_at.store(self.next_retry(self.elapsed_ms()), Ordering::Release);
        if self.degraded_since_ms.compare_exchange(0, wall_ms().max(1), Ordering::AcqRel, Ordering::Acquire).is_ok() {
            tracing::warn!(
                %error,
                retry_interval_ms = duration_ms(self.retry_interval),
                "Redis limiter backend failed; admitting by the outage policy until it answers"
            );
        } else {
            tracing::debug!(%error, "Redis limiter backend still failing");
        }
    }

    pub(crate) fn count_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    fn elapsed_ms(&self) -> u64 {
        duration_ms(self.origin.elapsed())
    }

    /// Never 0, which means "closed".
    fn next_retry(&self, now: u64) -> u64 {
        now.saturating_add(duration_ms(self.retry_interval)).max(1)
    }
}

pub(crate) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Wall-clock ms since the epoch: the clock of leases (never of limit math, whose `now` is the caller's).
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failure_opens_for_an_interval_then_lets_one_probe_through() {
        let breaker = Breaker::new(Duration::from_secs(1));
        assert!(breaker.should_try());
        assert_eq!(breaker.state(), BackendState::Shared);

        breaker.failure(&"connection refused");
        assert!(matches!(breaker.state(), BackendState::Degraded { .. }));
        assert!(breaker.is_open());
        assert!(!breaker.should_try());
        assert_eq!(breaker.retry_after_ms(), 1_000);

        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(breaker.retry_after_ms(), 600);
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(!breaker.is_open());
        assert!(breaker.should_try(), "the first caller after the interval probes");
        assert!(!breaker.should_try(), "the others keep to the policy meanwhile");

        breaker.success();
        assert_eq!(breaker.state(), BackendState::Shared);
        assert!(breaker.should_try() && breaker.should_try());
    }

    #[tokio::test(start_paused = true)]
    async fn outage_start_is_kept_across_repeated_failures() {
        let breaker = Breaker::new(Duration::from_millis(10));
        breaker.failure(&"first");
        let first = breaker.state();
        tokio::time::advance(Duration::from_millis(50)).await;
        breaker.failure(&"second");
        assert_eq!(breaker.state(), first);
    }
}
