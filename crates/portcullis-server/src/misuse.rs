//! Misuse signals: client addresses that keep failing authentication are blocked for a while,
//! and a key whose request rate jumps far above its own recent baseline is flagged.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;
use portcullis_config::SecurityThresholds;

/// Weight of the newest minute in a key's moving baseline.
const BASELINE_WEIGHT: f64 = 0.2;
/// Minutes of history a key needs before its rate can look anomalous.
const MIN_HISTORY_MINUTES: u64 = 3;

/// The counters of misuse. The thresholds (`[security]`) are passed in with each event, read
/// from the live configuration, so a reload changes them without losing a count: a failure
/// window runs with the length it started with, a block ends when it was set to, and the next
/// window, block or minute uses the new values.
#[derive(Debug)]
pub struct Misuse {
    /// Failures per address in its current window (the entry expires with the window).
    failures: Cache<IpAddr, Arc<FailureWindow>>,
    /// Blocked addresses and when their block ends (the entry expires then).
    blocked: Cache<IpAddr, Instant>,
    rates: Cache<String, Arc<KeyRate>>,
}

#[derive(Debug)]
struct FailureWindow {
    started: Instant,
    length: Duration,
    count: AtomicU32,
    /// Set by the failure that blocked the address, so that one block is reported once.
    blocked: AtomicBool,
}

/// Entries live as long as what they stand for: a failure window, or a block.
struct Lifetimes;

impl Expiry<IpAddr, Arc<FailureWindow>> for Lifetimes {
    fn expire_after_create(&self, _: &IpAddr, window: &Arc<FailureWindow>, created: Instant) -> Option<Duration> {
        Some((window.started + window.length).saturating_duration_since(created))
    }
}

impl Expiry<IpAddr, Instant> for Lifetimes {
    fn expire_after_create(&self, _: &IpAddr, until: &Instant, created: Instant) -> Option<Duration> {
        Some(until.saturating_duration_since(created))
    }
}

/// What a failed authentication led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    Counted,
    /// This failure reached the limit: the address is blocked from now on.
    Blocked,
}

impl Misuse {
    pub fn new() -> Misuse {
        Misuse {
            failures: Cache::builder().max_capacity(100_000).expire_after(Lifetimes).build(),
            blocked: Cache::builder().max_capacity(100_000).expire_after(Lifetimes).build(),
            rates: Cache::builder().max_capacity(1_000_000).time_to_idle(Duration::from_secs(3600)).build(),
        }
    }

    /// Seconds left on the address's block, rounded up (a `Retry-After` that ends early only
    /// earns another refusal), if it is blocked.
    pub fn blocked_for(&self, client: IpAddr, now: Instant) -> Option<u64> {
        let until = self.blocked.get(&client)?;
        let left = until.checked_duration_since(now).filter(|left| !left.is_zero())?;
        Some(u64::try_from(left.as_millis().div_ceil(1000)).unwrap_or(u64::MAX))
    }

    /// Counts a failure; the address is blocked once its window's count reaches the limit (at
    /// once, if a reload lowered the limit below the count).
    pub fn auth_failed(&self, client: IpAddr, now: Instant, thresholds: &SecurityThresholds) -> FailureOutcome {
        if thresholds.auth_failure_limit == 0 {
            return FailureOutcome::Counted;
        }
        let fresh = || Arc::new(FailureWindow::new(now, thresholds.auth_failure_window.0));
        let mut window = self.failures.get_with(client, fresh);
        if now.saturating_duration_since(window.started) >= window.length {
            window = fresh();
            self.failures.insert(client, window.clone());
        }
        let count = window.count.fetch_add(1, Ordering::Relaxed) + 1;
        if count >= thresholds.auth_failure_limit && !window.blocked.swap(true, Ordering::Relaxed) {
            self.blocked.insert(client, now + thresholds.block_duration.0);
            self.failures.invalidate(&client);
            return FailureOutcome::Blocked;
        }
        FailureOutcome::Counted
    }

    /// Counts a request of `key_id` in minute `minute` (unix minutes); `Some(count)` the one
    /// time a minute's count crosses the key's anomaly threshold.
    pub fn key_request(&self, key_id: &str, minute: u64, thresholds: &SecurityThresholds) -> Option<u64> {
        let rate = self.rates.get_with_by_ref(key_id, || Arc::new(KeyRate::new(minute)));
        rate.count(minute, thresholds.anomaly_factor, u64::from(thresholds.anomaly_min_requests))
    }
}

impl FailureWindow {
    fn new(started: Instant, length: Duration) -> FailureWindow {
        FailureWindow { started, length, count: AtomicU32::new(0), blocked: AtomicBool::new(false) }
    }
}

/// One key's requests this minute and its moving per-minute baseline. Atomics, not a lock:
/// the detector is a heuristic, and a rare lost update at a minute boundary is harmless.
#[derive(Debug)]
struct KeyRate {
    minute: AtomicU64,
    count: AtomicU64,
    /// Baseline requests per minute, in thousandths.
    baseline_milli: AtomicU64,
    first_minute: u64,
}

impl KeyRate {
    fn new(minute: u64) -> KeyRate {
        KeyRate {
            minute: AtomicU64::new(minute),
            count: AtomicU64::new(0),
            baseline_milli: AtomicU64::new(0),
            first_minute: minute,
        }
    }

    fn count(&self, minute: u64, factor: f64, min_requests: u64) -> Option<u64> {
        let current = self.minute.load(Ordering::Relaxed);
        if minute > current
            && self.minute.compare_exchange(current, minute, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            // Fold the finished minute (and any silent ones since) into the baseline.
            let finished = self.count.swap(0, Ordering::Relaxed) as f64;
            let mut baseline = self.baseline_milli.load(Ordering::Relaxed) as f64 / 1000.0;
            baseline = baseline * (1.0 - BASELINE_WEIGHT) + finished * BASELINE_WEIGHT;
            for _ in 1..(minute - current).min(60) {
                baseline *= 1.0 - BASELINE_WEIGHT;
            }
            self.baseline_milli.store((baseline * 1000.0) as u64, Ordering::Relaxed);
        }
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if minute < self.first_minute + MIN_HISTORY_MINUTES {
            return None;
        }
        let baseline = self.baseline_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        let threshold = ((baseline * factor).ceil() as u64).max(min_requests);
        (count == threshold + 1).then_some(count)
    }
}

#[cfg(test)]
mod tests {
    use portcullis_config::ConfigDuration;

    use super::*;

    fn thresholds(limit: u32) -> SecurityThresholds {
        SecurityThresholds {
            auth_failure_limit: limit,
            auth_failure_window: ConfigDuration(Duration::from_secs(60)),
            block_duration: ConfigDuration(Duration::from_secs(300)),
            anomaly_factor: 10.0,
            anomaly_min_requests: 20,
        }
    }

    #[test]
    fn an_address_is_blocked_at_the_failure_limit_and_others_are_not() {
        let (misuse, limits) = (Misuse::new(), thresholds(3));
        let (bad, good): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let now = Instant::now();
        assert_eq!(misuse.auth_failed(bad, now, &limits), FailureOutcome::Counted);
        assert_eq!(misuse.auth_failed(bad, now, &limits), FailureOutcome::Counted);
        assert_eq!(misuse.blocked_for(bad, now), None);
        assert_eq!(misuse.auth_failed(bad, now, &limits), FailureOutcome::Blocked);
        assert_eq!(misuse.blocked_for(bad, now), Some(300));
        assert_eq!(misuse.blocked_for(bad, now + Duration::from_millis(500)), Some(300), "rounded up");
        assert_eq!(misuse.blocked_for(bad, now + Duration::from_secs(301)), None, "the block ends");
        assert_eq!(misuse.blocked_for(good, now), None);
    }

    #[test]
    fn a_zero_limit_never_blocks() {
        let (misuse, limits) = (Misuse::new(), thresholds(0));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..100 {
            assert_eq!(misuse.auth_failed(ip, Instant::now(), &limits), FailureOutcome::Counted);
        }
    }

    #[test]
    fn a_rate_far_above_the_keys_own_baseline_is_flagged_once() {
        let (misuse, limits) = (Misuse::new(), thresholds(3));
        // Ten quiet minutes at 5 requests a minute.
        for minute in 100..110 {
            for _ in 0..5 {
                assert_eq!(misuse.key_request("key_a", minute, &limits), None);
            }
        }
        // Then a burst: flagged exactly once, when it crosses max(20, 10 × ~5).
        let flagged: Vec<u64> = (0..200).filter_map(|_| misuse.key_request("key_a", 110, &limits)).collect();
        assert_eq!(flagged.len(), 1, "{flagged:?}");
        assert!(flagged[0] > 20 && flagged[0] <= 60, "{flagged:?}");
        // A new key has no baseline yet: no alarm in its first minutes.
        assert!((0..500).all(|_| misuse.key_request("key_new", 110, &limits).is_none()));
    }

    #[test]
    fn new_thresholds_apply_to_the_counts_already_made() {
        let misuse = Misuse::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(misuse.auth_failed(ip, now, &thresholds(100)), FailureOutcome::Counted);
        }
        // A reload lowers the limit below the count: the next failure blocks, for the new time.
        let lowered = SecurityThresholds { block_duration: ConfigDuration(Duration::from_secs(7)), ..thresholds(3) };
        assert_eq!(misuse.auth_failed(ip, now, &lowered), FailureOutcome::Blocked);
        assert_eq!(misuse.blocked_for(ip, now), Some(7));
    }
}
