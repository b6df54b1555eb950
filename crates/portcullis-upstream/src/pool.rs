//! One model's endpoints: their live state (health, outstanding requests, passive ejection) and
//! the choice of which one takes the next attempt.
//!
//! Everything on the request path is an atomic: choosing an endpoint reads a handful of
//! counters and increments one with a compare-and-swap, so concurrent requests never queue
//! behind a lock. The state is approximate under races (two requests may both see the same
//! endpoint as least loaded), which only makes balancing slightly less even; `max_concurrent`
//! itself is never exceeded because the increment is conditional.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use url::Url;

/// How many times selection re-runs when the endpoint it picked filled up between reading its
/// count and claiming a slot. Each lost race means another request got the slot, so a few
/// rounds are plenty; after that the pool is treated as full.
const CLAIM_ROUNDS: usize = 8;

/// When an endpoint is taken out of rotation after failing repeatedly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EjectionPolicy {
    /// Consecutive failures that eject; 0 turns passive ejection off.
    pub consecutive_failures: u32,
    pub duration: Duration,
}

/// One upstream server of a model.
pub(crate) struct Endpoint {
    /// Origin plus path prefix, without a trailing slash and without credentials. Request paths
    /// are appended to it, and it is what logs, metrics and the admin API show.
    base: String,
    /// Set by active health checks; starts `true` so traffic flows before the first check.
    healthy: AtomicBool,
    outstanding: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Milliseconds after `epoch` until which the endpoint is ejected; 0 (or any past value)
    /// means it is in rotation. Comparing against the clock makes the return automatic.
    ejected_until_ms: AtomicU64,
    /// The zero of `ejected_until_ms`: a `tokio` instant so paused-time tests can drive it.
    epoch: Instant,
    ejection: EjectionPolicy,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &self.base)
            .field("healthy", &self.is_healthy())
            .field("ejected", &self.is_ejected())
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

impl Endpoint {
    pub(crate) fn new(url: &Url, ejection: EjectionPolicy, epoch: Instant) -> Endpoint {
        Endpoint {
            base: base_of(url),
            healthy: AtomicBool::new(true),
            outstanding: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            epoch,
            ejection,
        }
    }

    /// Origin plus path prefix, no trailing slash, no credentials.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Acquire)
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Records a health check's verdict; returns the previous one so callers can log changes.
    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::AcqRel)
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.now_ms() < self.ejected_until_ms.load(Ordering::Acquire)
    }

    /// Whether the endpoint may take traffic at all (capacity aside).
    pub(crate) fn in_rotation(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    /// A response arrived that was not a server error: the failure streak is over.
    pub(crate) fn record_success(&self) {
        self.consecutive_failures.store(0, Ordering::Release);
    }

    /// A connection error, timeout or 5xx. Enough of them in a row eject the endpoint for the
    /// configured duration; the streak restarts from zero so that, once back, it again takes
    /// `consecutive_failures` failures to eject it.
    pub(crate) fn record_failure(&self) {
        let threshold = self.ejection.consecutive_failures;
        let streak = self.consecutive_failures.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if threshold == 0 || streak < threshold {
            return;
        }
        self.consecutive_failures.store(0, Ordering::Release);
        let until = self.now_ms().saturating_add(millis(self.ejection.duration)).max(1);
        self.ejected_until_ms.store(until, Ordering::Release);
        tracing::warn!(
            endpoint = %self.base,
            failures = streak,
            seconds = self.ejection.duration.as_secs_f64(),
            "upstream endpoint ejected after consecutive failures"
        );
    }

    /// Claims a request slot unless the endpoint is at `max_concurrent`.
    fn try_claim(self: &Arc<Self>, max_concurrent: Option<u64>) -> Option<EndpointGuard> {
        self.outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| match max_concurrent {
                Some(max) if current >= max => None,
                _ => Some(current.saturating_add(1)),
            })
            .ok()
            .map(|_| EndpointGuard { endpoint: Arc::clone(self) })
    }

    fn now_ms(&self) -> u64 {
        millis(Instant::now().saturating_duration_since(self.epoch))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `http://host:port/prefix` from a configured endpoint URL: credentials dropped (configuration
/// rejects them, but this string is logged, so be sure) and the trailing slash trimmed so that
/// appending `/v1/...` gives exactly one slash.
fn base_of(url: &Url) -> String {
    let mut url = url.clone();
    // Both only fail for URLs that cannot have credentials, which then have none to remove.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.as_str().trim_end_matches('/').to_string()
}

/// One outstanding request on an endpoint. Dropping it frees the slot; the response body owns
/// it, so a stream keeps its slot until the stream ends or is dropped.
pub(crate) struct EndpointGuard {
    endpoint: Arc<Endpoint>,
}

impl EndpointGuard {
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl fmt::Debug for EndpointGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EndpointGuard").field(&self.endpoint.base).finish()
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NoEndpoint {
    /// Untried endpoints skipped because they were at `max_concurrent`.
    pub full: usize,
    /// Untried endpoints skipped because they were unhealthy or ejected.
    pub out_of_rotation: usize,
}

/// A model's endpoints and the balancing between them.
#[derive(Debug)]
pub(crate) struct Pool {
    endpoints: Vec<Arc<Endpoint>>,
    max_concurrent: Option<u64>,
    /// Where the next selection starts scanning; advancing it on every selection makes ties
    /// between equally loaded endpoints go round robin.
    next: AtomicUsize,
}

impl Pool {
    pub(crate) fn new(endpoints: Vec<Arc<Endpoint>>, max_concurrent: Option<u64>) -> Pool {
        Pool { endpoints, max_concurrent, next: AtomicUsize::new(0) }
    }

    pub(crate) fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Picks the endpoint with the fewest outstanding requests among those that are healthy,
    /// not ejected, below `max_concurrent` and not marked in `tried` (indexed like the pool),
    /// and claims a slot on it. Ties go round robin: the scan starts one position further on
    /// each call and the first of the equally loaded endpoints wins.
    pub(crate) fn select(&self, tried: &[bool]) -> Result<(usize, EndpointGuard), NoEndpoint> {
        let count = self.endpoints.len();
        if count == 0 {
            return Err(NoEndpoint::default());
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
        let mut skipped = NoEndpoint::default();
        for _ in 0..CLAIM_ROUNDS {
            skipped = NoEndpoint::default();
            let mut best: Option<(usize, u64)> = None;
            for offset in 0..count {
                let index = (start + offset) % count;
                if tried.get(index).copied().unwrap_or(false) {
                    continue;
                }
                let endpoint = &self.endpoints[index];
                if !endpoint.in_rotation() {
                    skipped.out_of_rotation += 1;
                    continue;
                }
                let outstanding = endpoint.outstanding();
                if self.max_concurrent.is_some_and(|max| outstanding >= max) {
                    skipped.full += 1;
                    continue;
                }
                if best.is_none_or(|(_, least)| outstanding < least) {
                    best = Some((index, outstanding));
                }
            }
            let Some((index, _)) = best else {
                return Err(skipped);
            };
            if let Some(guard) = self.endpoints[index].try_claim(self.max_concurrent) {
                return Ok((index, guard));
            }
        }
        // Lost every race for a slot: the pool is, in effect, full.
        skipped.full = skipped.full.max(1);
        Err(skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: EjectionPolicy = EjectionPolicy { consecutive_failures: 3, duration: Duration::from_secs(30) };

    fn pool(size: usize, max_concurrent: Option<u64>) -> Pool {
        let epoch = Instant::now();
        let endpoints = (0..size)
            .map(|i| {
                let url = Url::parse(&format!("http://10.0.0.{i}:8000/")).unwrap();
                Arc::new(Endpoint::new(&url, POLICY, epoch))
            })
            .collect();
        Pool::new(endpoints, max_concurrent)
    }

    fn pick(pool: &Pool) -> (usize, EndpointGuard) {
        pool.select(&vec![false; pool.len()]).unwrap()
    }

    #[test]
    fn base_drops_trailing_slash_and_keeps_prefix() {
        let url = Url::parse("https://user:pw@models.example:8443/llama/").unwrap();
        let endpoint = Endpoint::new(&url, POLICY, Instant::now());
        assert_eq!(endpoint.base(), "https://models.example:8443/llama");
        let bare = Endpoint::new(&Url::parse("http://127.0.0.1:9000").unwrap(), POLICY, Instant::now());
        assert_eq!(bare.base(), "http://127.0.0.1:9000");
    }

    #[test]
    fn selects_the_endpoint_with_fewest_outstanding_requests() {
        let pool = pool(3, None);
        let busy: Vec<_> = [0, 0, 1].iter().map(|&i| pool.endpoints[i].try_claim(None).unwrap()).collect();
        // Outstanding is now [2, 1, 0]: every selection that holds its slot goes to the least loaded.
        let (first, _a) = pick(&pool);
        assert_eq!(first, 2);
        let (second, _b) = pick(&pool);
        assert!(second == 1 || second == 2, "picked {second}, outstanding [2,1,1]");
        drop(busy);
    }

    #[test]
    fn equally_loaded_endpoints_are_chosen_round_robin() {
        let pool = pool(3, None);
        let picks: Vec<usize> = (0..6).map(|_| pick(&pool).0).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_unhealthy_ejected_full_and_tried_endpoints() {
        let pool = pool(4, Some(1));
        pool.endpoints[0].set_healthy(false);
        for _ in 0..POLICY.consecutive_failures {
            pool.endpoints[1].record_failure();
        }
        let _full = pool.endpoints[2].try_claim(Some(1)).unwrap();
        for _ in 0..4 {
            let (index, _guard) = pick(&pool);
            assert_eq!(index, 3);
        }
        let error = pool.select(&[false, false, false, true]).unwrap_err();
        assert_eq!(error, NoEndpoint { full: 1, out_of_rotation: 2 });
    }

    #[test]
    fn max_concurrent_is_never_exceeded_and_dropping_a_guard_frees_the_slot() {
        let pool = pool(1, Some(2));
        let first = pick(&pool);
        let _second = pick(&pool);
        assert_eq!(pool.select(&[false]).unwrap_err(), NoEndpoint { full: 1, out_of_rotation: 0 });
        assert_eq!(pool.endpoints[0].outstanding(), 2);
        drop(first);
        assert_eq!(pool.endpoints[0].outstanding(), 1);
        let _third = pick(&pool);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_until_the_duration_passes() {
        let pool = pool(2, None);
        let endpoint = &pool.endpoints[0];
        endpoint.record_failure();
        endpoint.record_failure();
        assert!(endpoint.in_rotation(), "two failures are below the threshold of three");
        endpoint.record_failure();
        assert!(endpoint.is_ejected());
        assert_eq!(pick(&pool).0, 1);
        assert_eq!(pick(&pool).0, 1);

        tokio::time::advance(POLICY.duration - Duration::from_millis(1)).await;
        assert!(endpoint.is_ejected());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(endpoint.in_rotation(), "back without any task once the duration has passed");
        let picks: Vec<usize> = (0..2).map(|_| pick(&pool).0).collect();
        assert!(picks.contains(&0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_streak() {
        let pool = pool(1, None);
        let endpoint = &pool.endpoints[0];
        endpoint.record_failure();
        endpoint.record_failure();
        endpoint.record_success();
        endpoint.record_failure();
        endpoint.record_failure();
        assert!(!endpoint.is_ejected());
        endpoint.record_failure();
        assert!(endpoint.is_ejected());
    }

    #[test]
    fn zero_consecutive_failures_disables_ejection() {
        let url = Url::parse("http://127.0.0.1:1").unwrap();
        let policy = EjectionPolicy { consecutive_failures: 0, duration: Duration::from_secs(30) };
        let endpoint = Endpoint::new(&url, policy, Instant::now());
        for _ in 0..100 {
            endpoint.record_failure();
        }
        assert!(!endpoint.is_ejected());
    }
}
