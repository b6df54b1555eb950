//! How often key sets are fetched: the background schedule, and the limits on fetches that an
//! unknown `kid` may trigger (per issuer and across all of them).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Refresh timings. The defaults are what the gateway runs with; tests shorten them.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    /// Background refresh when the JWKS answer gives no `max-age` (`auth.jwks_refresh_interval`).
    pub interval: Duration,
    /// The least time between two fetches of one issuer's keys caused by unknown `kid`s.
    pub min_interval: Duration,
    /// Fetches caused by unknown `kid`s across all issuers, per minute.
    pub global_per_minute: u32,
    /// Deadline of one HTTP call to the identity provider.
    pub timeout: Duration,
}

impl RefreshPolicy {
    pub fn new(interval: Duration) -> RefreshPolicy {
        RefreshPolicy {
            interval,
            min_interval: Duration::from_secs(10),
            global_per_minute: 20,
            timeout: Duration::from_secs(5),
        }
    }

    /// The next scheduled fetch after a good one: before the answer's `max-age` runs out (at
    /// three quarters of it), bounded so that neither a tiny nor a huge `max-age` rules.
    pub fn refresh_after(&self, max_age: Option<Duration>) -> Duration {
        match max_age {
            Some(max_age) => {
                (max_age * 3 / 4).clamp(self.min_interval.max(Duration::from_secs(1)), Duration::from_secs(86_400))
            }
            None => self.interval,
        }
    }

    /// Back-off after failed fetches: 1 s, 2 s, 4 s … at most a minute.
    pub fn retry_after(&self, failures: u32) -> Duration {
        Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
    }
}

/// A token bucket shared by all issuers: a flood of unknown `kid`s across many issuers still
/// causes a bounded number of fetches.
#[derive(Debug)]
pub struct RefreshBudget {
    per_minute: u32,
    state: Mutex<(f64, Instant)>,
}

impl RefreshBudget {
    pub fn new(per_minute: u32) -> RefreshBudget {
        RefreshBudget { per_minute, state: Mutex::new((f64::from(per_minute), Instant::now())) }
    }

    pub fn take(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, since) = *state;
        let capacity = f64::from(self.per_minute);
        let refilled = (tokens + now.saturating_duration_since(since).as_secs_f64() * capacity / 60.0).min(capacity);
        if refilled >= 1.0 {
            *state = (refilled - 1.0, now);
            true
        } else {
            *state = (refilled, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_its_rate_and_no_more() {
        let budget = RefreshBudget::new(3);
        let start = Instant::now();
        assert!((0..3).all(|_| budget.take(start)));
        assert!(!budget.take(start));
        assert!(budget.take(start + Duration::from_secs(20)));
        assert!(!budget.take(start + Duration::from_secs(21)));
    }

    #[test]
    fn refresh_follows_max_age_within_bounds_and_backs_off() {
        let policy = RefreshPolicy::new(Duration::from_secs(300));
        assert_eq!(policy.refresh_after(None), Duration::from_secs(300));
        assert_eq!(policy.refresh_after(Some(Duration::from_secs(600))), Duration::from_secs(450));
        assert_eq!(policy.refresh_after(Some(Duration::ZERO)), Duration::from_secs(10));
        assert_eq!(policy.retry_after(1), Duration::from_secs(1));
        assert_eq!(policy.retry_after(3), Duration::from_secs(4));
        assert_eq!(policy.retry_after(30), Duration::from_secs(60));
    }
}
