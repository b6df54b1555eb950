//! One model's endpoints: their live state (health, outstanding requests, passive ejection), the
//! choice of which one takes the next attempt, and the queue of requests waiting for a slot.
//!
//! Choosing an endpoint reads a handful of counters and increments one with a compare-and-swap.
//! The state is approximate under races (two requests may both see the same endpoint as least
//! loaded), which only makes balancing slightly less even; `max_concurrent` itself is never
//! exceeded because the increment is conditional.
//!
//! **Waiting** (DESIGN §6, "Upstream protection"). With `max_concurrent` set and a queue
//! (`queue_size > 0`), a request that finds every usable endpoint full waits in the model's
//! [`WaitQueue`], served by priority (higher first) and then arrival. The rules:
//!
//! - Every claim of a slot on such a pool happens under the queue's mutex, which is held for a
//!   few atomic operations and never across an `.await`. A claim first serves the queue
//!   (`dispatch`), and only then tries for itself, so a newcomer never takes a slot a queued
//!   request could use. (Stricter than "only when nobody is queued" only in that a free slot
//!   no waiter can use, because every waiter already tried that endpoint, may still be taken.)
//! - Releasing a slot is a lock-free decrement. If anyone is queued, the releaser then takes the
//!   mutex and dispatches: the slot is claimed again, for the first waiter that can use it, and
//!   sent over that waiter's oneshot channel. Since nobody else can claim while waiters exist,
//!   this is a hand-off. A lost wake-up (a waiter queuing just as the last slot is released
//!   unseen) is ruled out by the queue length being published, then a `SeqCst` fence, then the
//!   slots re-read, on the waiting side, against decrement, fence, read the queue length on
//!   the releasing side: at least one of the two sees the other.
//! - An endpoint coming back into rotation (health check, end of an ejection) is no event;
//!   waiters notice it by re-dispatching every [`RECHECK_INTERVAL`] while queued. On that
//!   re-check a waiter whose remaining endpoints are all out of rotation stops waiting, so the
//!   caller can go on to fallbacks.
//! - A waiter that stops waiting (timeout, re-check, or its future dropped) leaves the queue
//!   under the mutex; if a slot had been sent to it meanwhile, it finds it in its channel and
//!   drops it (after unlocking), which passes it on to the next waiter or frees it.
//!
//! Without a queue (no `max_concurrent`, or `queue_size = 0`) nothing takes the mutex: claims
//! are lock-free and a full pool is shed at once.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use url::Url;

use crate::client::Origin;
use crate::queue::WaitQueue;

/// How many times selection re-runs when the endpoint it picked filled up between reading its
/// count and claiming a slot. Each lost race means another request got the slot, so a few
/// rounds are plenty; after that the pool is treated as full.
const CLAIM_ROUNDS: usize = 8;

/// How often a queued request re-dispatches the queue, so that an endpoint that came back into
/// rotation (which releases no slot and so wakes nobody) is used within this long.
pub(crate) const RECHECK_INTERVAL: Duration = Duration::from_millis(100);

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
    /// Where to connect, and the connections kept alive to it.
    origin: Arc<Origin>,
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
            origin: Arc::new(Origin::new(url)),
            healthy: AtomicBool::new(true),
            outstanding: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            epoch,
            ejection,
        }
    }

    pub(crate) fn origin(&self) -> &Arc<Origin> {
        &self.origin
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

    /// How long the endpoint stays ejected, if it is.
    pub(crate) fn ejected_for(&self) -> Option<Duration> {
        let left = self.ejected_until_ms.load(Ordering::Acquire).checked_sub(self.now_ms())?;
        (left > 0).then(|| Duration::from_millis(left))
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

    /// Takes a request slot unless the endpoint is at `max_concurrent`. The caller wraps a
    /// success in an [`EndpointGuard`], which gives the slot back.
    fn try_increment(&self, max_concurrent: Option<u64>) -> bool {
        self.outstanding
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |current| match max_concurrent {
                Some(max) if current >= max => None,
                _ => Some(current.saturating_add(1)),
            })
            .is_ok()
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

/// One outstanding request on an endpoint. Dropping it frees the slot (or hands it to a queued
/// request); the response body owns it, so a stream keeps its slot until it ends or is dropped.
pub(crate) struct EndpointGuard {
    pool: Arc<Shared>,
    index: usize,
}

impl EndpointGuard {
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.pool.endpoints[self.index]
    }
}

impl fmt::Debug for EndpointGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EndpointGuard").field(&self.endpoint().base).finish()
    }
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.endpoint().outstanding.fetch_sub(1, Ordering::SeqCst);
        self.pool.released();
    }
}

/// A slot handed to a request: the endpoint's index in the pool and the guard holding it.
pub(crate) type Grant = (usize, EndpointGuard);

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NoEndpoint {
    /// Untried endpoints skipped because they were at `max_concurrent`.
    pub full: usize,
    /// Untried endpoints skipped because they were unhealthy or ejected.
    pub out_of_rotation: usize,
}

/// What the untried endpoints look like right now, without claiming anything.
#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    free: usize,
    full: usize,
    out_of_rotation: usize,
}

/// The outcome of [`Pool::claim`].
#[derive(Debug)]
pub(crate) enum Claim {
    /// A slot, at once.
    Ready(Grant),
    /// Every usable endpoint is full and the request is queued: [`Ticket::wait`] for the slot.
    Queued(Ticket),
    /// Every usable endpoint is full and the request may not wait: no queue, the queue is full,
    /// or the caller asked not to wait.
    Shed(NoEndpoint),
    /// Nothing to wait for: every untried endpoint is out of rotation (or there is none left).
    Unusable(NoEndpoint),
}

/// How a wait in the queue ended without a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The deadline passed; the request left the queue.
    TimedOut,
    /// Every endpoint the request could still use went out of rotation; it left the queue.
    Unusable(NoEndpoint),
}

/// The queue of one pool. Its length is mirrored in an atomic so that releases (and metrics)
/// can check for waiters without taking the mutex.
struct Queue {
    waiters: Mutex<WaitQueue<Grant>>,
    len: AtomicUsize,
    /// 0 when requests never wait (no `max_concurrent`, or `queue_size = 0`).
    capacity: usize,
    recheck: Duration,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, WaitQueue<Grant>> {
        // Nothing under the lock leaves the heap half-updated, so a poisoned one is still sound.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes the heap's length after a change (under the lock).
    fn publish(&self, waiters: &WaitQueue<Grant>) {
        self.len.store(waiters.len(), Ordering::SeqCst);
    }
}

/// What the pool's guards, tickets and handle share.
struct Shared {
    endpoints: Vec<Arc<Endpoint>>,
    max_concurrent: Option<u64>,
    /// Where the next selection starts scanning; advancing it on every selection makes ties
    /// between equally loaded endpoints go round robin.
    next: AtomicUsize,
    queue: Queue,
}

impl Shared {
    fn try_claim(self: &Arc<Self>, index: usize) -> Option<EndpointGuard> {
        let endpoint = self.endpoints.get(index)?;
        endpoint.try_increment(self.max_concurrent).then(|| EndpointGuard { pool: Arc::clone(self), index })
    }

    /// Picks the endpoint with the fewest outstanding requests among those that are healthy,
    /// not ejected, below `max_concurrent` and not marked in `tried` (indexed like the pool),
    /// and claims a slot on it. Ties go round robin: the scan starts one position further on
    /// each call and the first of the equally loaded endpoints wins.
    fn select(self: &Arc<Self>, tried: &[bool]) -> Result<Grant, NoEndpoint> {
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
            if let Some(guard) = self.try_claim(index) {
                return Ok((index, guard));
            }
        }
        // Lost every race for a slot: the pool is, in effect, full.
        skipped.full = skipped.full.max(1);
        Err(skipped)
    }

    /// Counts the untried endpoints by state, claiming nothing.
    fn scan(&self, tried: &[bool]) -> Scan {
        let mut scan = Scan::default();
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            if tried.get(index).copied().unwrap_or(false) {
                continue;
            }
            if !endpoint.in_rotation() {
                scan.out_of_rotation += 1;
            } else if self.max_concurrent.is_some_and(|max| endpoint.outstanding() >= max) {
                scan.full += 1;
            } else {
                scan.free += 1;
            }
        }
        scan
    }

    /// Gives free slots to queued requests, best first, each on an endpoint it has not tried.
    /// Called with the queue locked. Returns slots whose waiter had gone (in practice none:
    /// waiters leave the heap before dropping their receiver); the caller drops them after
    /// unlocking, since dropping a guard may take the lock. For the same reason a successful
    /// send cannot drop the slot here: a ticket still in the heap takes this lock before its
    /// receiver goes, so the receiver outlives the send and owns the slot from then on.
    #[must_use]
    fn dispatch(self: &Arc<Self>, waiters: &mut WaitQueue<Grant>) -> Vec<Grant> {
        let mut orphaned = Vec::new();
        if waiters.len() == 0 {
            return orphaned;
        }
        let mut skipped = Vec::new();
        while let Some(waiter) = waiters.pop() {
            match self.select(&waiter.tried) {
                Ok(grant) => {
                    if let Err(grant) = waiter.sender.send(grant) {
                        orphaned.push(grant);
                    }
                }
                Err(_) => {
                    // Nothing free for a request that may use every endpoint means nothing is
                    // free for anyone; a retry (some endpoints tried) may just need another one.
                    let may_use_all = !waiter.tried.contains(&true);
                    skipped.push(waiter);
                    if may_use_all {
                        break;
                    }
                }
            }
        }
        waiters.restore(skipped);
        self.queue.publish(waiters);
        orphaned
    }

    /// After a slot was given back: if anyone is queued, serve them.
    fn released(self: &Arc<Self>) {
        // Pairs with the fence in `Pool::claim` after a request queues (see the module docs).
        fence(Ordering::SeqCst);
        if self.queue.len.load(Ordering::SeqCst) == 0 {
            return;
        }
        let orphaned = {
            let mut waiters = self.queue.lock();
            self.dispatch(&mut waiters)
        };
        drop(orphaned);
    }
}

/// A model's endpoints, the balancing between them and the queue in front of them.
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.shared.endpoints)
            .field("max_concurrent", &self.shared.max_concurrent)
            .field("queue_size", &self.shared.queue.capacity)
            .field("queued", &self.queue_len())
            .finish()
    }
}

impl Pool {
    /// `queue_size` requests may wait for a slot when every endpoint is at `max_concurrent`;
    /// without `max_concurrent` nothing ever waits.
    pub(crate) fn new(endpoints: Vec<Arc<Endpoint>>, max_concurrent: Option<u64>, queue_size: usize) -> Pool {
        let capacity = if max_concurrent.is_some() { queue_size } else { 0 };
        let queue = Queue {
            waiters: Mutex::new(WaitQueue::default()),
            len: AtomicUsize::new(0),
            capacity,
            recheck: RECHECK_INTERVAL,
        };
        Pool { shared: Arc::new(Shared { endpoints, max_concurrent, next: AtomicUsize::new(0), queue }) }
    }

    pub(crate) fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.shared.endpoints
    }

    /// When the first endpoint out of rotation may take traffic again: the end of the soonest
    /// ejection, or `unhealthy_wait` for one its health checks took out (when the next check can
    /// bring it back). `None` when every endpoint is in rotation.
    pub(crate) fn back_in(&self, unhealthy_wait: Duration) -> Option<Duration> {
        self.endpoints()
            .iter()
            .filter(|endpoint| !endpoint.in_rotation())
            .map(|endpoint| match endpoint.ejected_for() {
                Some(left) if endpoint.is_healthy() => left,
                Some(left) => left.max(unhealthy_wait),
                None => unhealthy_wait,
            })
            .min()
    }

    pub(crate) fn len(&self) -> usize {
        self.shared.endpoints.len()
    }

    /// Requests waiting for a slot right now.
    pub(crate) fn queue_len(&self) -> usize {
        self.shared.queue.len.load(Ordering::Relaxed)
    }

    /// Picks and claims the least loaded usable endpoint, ignoring the queue: [`Pool::claim`]
    /// is the way in; this is for tests of the balancing.
    #[cfg(test)]
    pub(crate) fn select(&self, tried: &[bool]) -> Result<Grant, NoEndpoint> {
        self.shared.select(tried)
    }

    /// A slot on an endpoint not marked in `tried`, for a request of `priority`: at once when
    /// one is free and no queued request could use it, else a place in the queue when there is
    /// room and `may_wait`, else shed.
    pub(crate) fn claim(&self, tried: &[bool], priority: i64, may_wait: bool) -> Claim {
        let shared = &self.shared;
        let queue = &shared.queue;
        if queue.capacity == 0 {
            return match shared.select(tried) {
                Ok(grant) => Claim::Ready(grant),
                Err(none) if none.full > 0 => Claim::Shed(none),
                Err(none) => Claim::Unusable(none),
            };
        }
        let mut orphaned = Vec::new();
        let claim = {
            let mut waiters = queue.lock();
            // Waiters first: after this, a slot that is still free is one no waiter can use.
            orphaned.extend(shared.dispatch(&mut waiters));
            match shared.select(tried) {
                Ok(grant) => Claim::Ready(grant),
                Err(none) if none.full == 0 => Claim::Unusable(none),
                Err(none) if !may_wait || waiters.len() >= queue.capacity => Claim::Shed(none),
                Err(_) => {
                    let (seq, receiver) = waiters.push(priority, tried.to_vec());
                    queue.publish(&waiters);
                    // Pairs with the fence in `Shared::released`: a slot released between the
                    // failed select above and the publish is seen by this dispatch.
                    fence(Ordering::SeqCst);
                    orphaned.extend(shared.dispatch(&mut waiters));
                    Claim::Queued(Ticket {
                        pool: Arc::clone(shared),
                        seq,
                        tried: tried.to_vec(),
                        receiver,
                        queued: true,
                    })
                }
            }
        };
        drop(orphaned);
        claim
    }
}

/// A request's place in the queue. Dropping it (say, because the client went away) leaves the
/// queue and passes on a slot that had already been handed to it.
pub(crate) struct Ticket {
    pool: Arc<Shared>,
    seq: u64,
    tried: Vec<bool>,
    receiver: oneshot::Receiver<Grant>,
    /// Still in the heap, as far as this side knows (false once it left or got its slot).
    queued: bool,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket").field("seq", &self.seq).field("queued", &self.queued).finish_non_exhaustive()
    }
}

/// What woke a waiting ticket.
enum Wake {
    Granted(Option<Grant>),
    Expired,
    Recheck,
}

impl Ticket {
    /// Waits for a slot until `deadline`. A slot that arrives as the deadline passes is still
    /// taken. Dropping the future leaves the ticket queued; dropping the ticket leaves the queue.
    pub(crate) async fn wait(&mut self, deadline: Instant) -> Result<Grant, Waited> {
        if !self.queued {
            return Err(Waited::TimedOut);
        }
        let expiry = tokio::time::sleep_until(deadline);
        tokio::pin!(expiry);
        let period = self.pool.queue.recheck;
        let mut recheck = tokio::time::interval_at(Instant::now() + period, period);
        recheck.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                biased;
                granted = &mut self.receiver => Wake::Granted(granted.ok()),
                () = &mut expiry => Wake::Expired,
                _ = recheck.tick() => Wake::Recheck,
            };
            match wake {
                Wake::Granted(Some(grant)) => {
                    self.queued = false;
                    return Ok(grant);
                }
                // The sender went without sending: only if the waiter was dropped from the heap,
                // which nothing but this ticket does. Report what is there to wait for.
                Wake::Granted(None) => {
                    self.queued = false;
                    let scan = self.pool.scan(&self.tried);
                    return Err(Waited::Unusable(NoEndpoint {
                        full: scan.full,
                        out_of_rotation: scan.out_of_rotation,
                    }));
                }
                Wake::Expired => return self.leave().ok_or(Waited::TimedOut),
                Wake::Recheck => {
                    if let Some(none) = self.recheck() {
                        return Err(Waited::Unusable(none));
                    }
                }
            }
        }
    }

    /// Leaves the queue; returns the slot if one was handed over before it could.
    fn leave(&mut self) -> Option<Grant> {
        self.queued = false;
        let removed = {
            let mut waiters = self.pool.queue.lock();
            let removed = waiters.remove(self.seq);
            self.pool.queue.publish(&waiters);
            removed
        };
        // Not in the heap any more, so it was served: the slot was sent under the lock and is
        // in the channel now.
        if removed { None } else { self.receiver.try_recv().ok() }
    }

    /// Serves the queue (an endpoint may have come back into rotation) and, if this request is
    /// still waiting with nothing left to wait for, takes it out and says why.
    fn recheck(&mut self) -> Option<NoEndpoint> {
        let mut gave_up = None;
        let orphaned = {
            let mut waiters = self.pool.queue.lock();
            let orphaned = self.pool.dispatch(&mut waiters);
            if waiters.contains(self.seq) {
                let scan = self.pool.scan(&self.tried);
                if scan.free == 0 && scan.full == 0 {
                    waiters.remove(self.seq);
                    self.pool.queue.publish(&waiters);
                    self.queued = false;
                    gave_up = Some(NoEndpoint { full: 0, out_of_rotation: scan.out_of_rotation });
                }
            }
            orphaned
        };
        drop(orphaned);
        gave_up
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.queued {
            let mut waiters = self.pool.queue.lock();
            waiters.remove(self.seq);
            self.pool.queue.publish(&waiters);
        }
        // Outside the lock: a slot handed over in the meantime is given back here, which serves
        // the next waiter or frees it.
        self.receiver.close();
        if let Ok(grant) = self.receiver.try_recv() {
            drop(grant);
        }
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
        Pool::new(endpoints, max_concurrent, 0)
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
        let busy: Vec<_> = [0, 0, 1].iter().map(|&i| pool.shared.try_claim(i).unwrap()).collect();
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
        pool.endpoints()[0].set_healthy(false);
        for _ in 0..POLICY.consecutive_failures {
            pool.endpoints()[1].record_failure();
        }
        let _full = pool.shared.try_claim(2).unwrap();
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
        assert_eq!(pool.endpoints()[0].outstanding(), 2);
        drop(first);
        assert_eq!(pool.endpoints()[0].outstanding(), 1);
        let _third = pick(&pool);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_until_the_duration_passes() {
        let pool = pool(2, None);
        let endpoint = &pool.endpoints()[0];
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
        let endpoint = &pool.endpoints()[0];
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

    // --- The queue -------------------------------------------------------------------------

    const FAR: Duration = Duration::from_secs(3600);

    fn queued_pool(size: usize, max_concurrent: u64, queue_size: usize) -> Pool {
        let epoch = Instant::now();
        let endpoints = (0..size)
            .map(|i| {
                let url = Url::parse(&format!("http://10.0.1.{i}:8000/")).unwrap();
                Arc::new(Endpoint::new(&url, POLICY, epoch))
            })
            .collect();
        Pool::new(endpoints, Some(max_concurrent), queue_size)
    }

    fn untried(pool: &Pool) -> Vec<bool> {
        vec![false; pool.len()]
    }

    fn ready(claim: Claim) -> Grant {
        match claim {
            Claim::Ready(grant) => grant,
            other => panic!("expected a slot at once, got {other:?}"),
        }
    }

    fn ticket(claim: Claim) -> Ticket {
        match claim {
            Claim::Queued(ticket) => ticket,
            other => panic!("expected a queued request, got {other:?}"),
        }
    }

    /// The slot if one was handed to `ticket` already, without waiting.
    fn granted(ticket: &mut Ticket) -> Option<Grant> {
        use futures_util::FutureExt;
        ticket.wait(Instant::now() + FAR).now_or_never().map(|result| result.unwrap())
    }

    fn total_outstanding(pool: &Pool) -> u64 {
        pool.endpoints().iter().map(|endpoint| endpoint.outstanding()).sum()
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_slot_is_handed_to_the_waiter_without_being_freed() {
        let pool = queued_pool(1, 1, 4);
        let (_, holder) = ready(pool.claim(&untried(&pool), 0, true));
        let mut waiting = ticket(pool.claim(&untried(&pool), 0, true));
        assert_eq!(pool.queue_len(), 1);
        assert!(granted(&mut waiting).is_none());

        drop(holder);
        assert_eq!(total_outstanding(&pool), 1, "handed over, not freed");
        assert_eq!(pool.queue_len(), 0);
        let (index, guard) = waiting.wait(Instant::now()).await.unwrap();
        assert_eq!(index, 0);
        drop(guard);
        assert_eq!(total_outstanding(&pool), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_by_priority_then_arrival() {
        let pool = queued_pool(1, 1, 8);
        let mut current = Some(ready(pool.claim(&untried(&pool), 0, true)));
        let mut tickets: Vec<(&str, Ticket)> = [("a", 0), ("b", 0), ("c", 10), ("d", 0), ("e", 10)]
            .into_iter()
            .map(|(name, priority)| (name, ticket(pool.claim(&untried(&pool), priority, true))))
            .collect();
        assert_eq!(pool.queue_len(), 5);
        let mut served = Vec::new();
        while !tickets.is_empty() {
            drop(current.take());
            let mut winners = Vec::new();
            for (at, (name, ticket)) in tickets.iter_mut().enumerate() {
                if let Some(grant) = granted(ticket) {
                    winners.push((at, *name, grant));
                }
            }
            assert_eq!(winners.len(), 1, "one release serves exactly one waiter");
            let (at, name, grant) = winners.remove(0);
            served.push(name);
            tickets.remove(at);
            current = Some(grant);
            assert_eq!(total_outstanding(&pool), 1);
        }
        assert_eq!(served, ["c", "e", "a", "b", "d"]);
        drop(current);
        assert_eq!(total_outstanding(&pool), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newcomer_cannot_take_a_slot_a_waiter_is_owed() {
        let pool = queued_pool(1, 1, 4);
        let (_, holder) = ready(pool.claim(&untried(&pool), 0, true));
        let mut waiting = ticket(pool.claim(&untried(&pool), 0, true));
        // Out of rotation when the slot is released, so the waiter is not served then...
        pool.endpoints()[0].set_healthy(false);
        drop(holder);
        assert_eq!(total_outstanding(&pool), 0);
        assert_eq!(pool.queue_len(), 1);
        // ...and back before any re-check: a free slot and a waiter, with no release to wake it.
        pool.endpoints()[0].set_healthy(true);
        let mut newcomer = ticket(pool.claim(&untried(&pool), 100, true));
        assert!(granted(&mut newcomer).is_none(), "the newcomer queues even with a higher priority");
        let (_, guard) = granted(&mut waiting).expect("the waiter got the slot");
        drop(guard);
        assert!(granted(&mut newcomer).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_sheds_at_once() {
        let pool = queued_pool(1, 1, 2);
        let _holder = ready(pool.claim(&untried(&pool), 0, true));
        let _first = ticket(pool.claim(&untried(&pool), 0, true));
        let _second = ticket(pool.claim(&untried(&pool), 0, true));
        let shed = pool.claim(&untried(&pool), 99, true);
        assert!(matches!(shed, Claim::Shed(NoEndpoint { full: 1, out_of_rotation: 0 })), "{shed:?}");
        assert_eq!(pool.queue_len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_queue_or_permission_to_wait_a_full_pool_is_shed() {
        let pool = queued_pool(1, 1, 0);
        let _holder = ready(pool.claim(&untried(&pool), 0, true));
        assert!(matches!(pool.claim(&untried(&pool), 0, true), Claim::Shed(_)));
        assert_eq!(pool.queue_len(), 0);

        let pool = queued_pool(1, 1, 4);
        let _holder = ready(pool.claim(&untried(&pool), 0, true));
        assert!(matches!(pool.claim(&untried(&pool), 0, false), Claim::Shed(_)));
        assert_eq!(pool.queue_len(), 0);

        let unlimited = pool_without_limit();
        let _grants: Vec<_> = (0..100).map(|_| ready(unlimited.claim(&[false], 0, true))).collect();
    }

    fn pool_without_limit() -> Pool {
        let url = Url::parse("http://10.0.2.1:8000/").unwrap();
        Pool::new(vec![Arc::new(Endpoint::new(&url, POLICY, Instant::now()))], None, 64)
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_times_out_at_its_deadline_and_leaves_the_queue() {
        let pool = queued_pool(1, 1, 4);
        let _holder = ready(pool.claim(&untried(&pool), 0, true));
        let mut waiting = ticket(pool.claim(&untried(&pool), 0, true));
        let started = Instant::now();
        let outcome = waiting.wait(started + Duration::from_secs(2)).await;
        assert_eq!(outcome.unwrap_err(), Waited::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(pool.queue_len(), 0);
        assert_eq!(total_outstanding(&pool), 1, "only the holder's slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_ticket_leaves_the_queue() {
        let pool = queued_pool(1, 1, 4);
        let (_, holder) = ready(pool.claim(&untried(&pool), 0, true));
        let waiting = ticket(pool.claim(&untried(&pool), 0, true));
        drop(waiting);
        assert_eq!(pool.queue_len(), 0);
        drop(holder);
        assert_eq!(total_outstanding(&pool), 0);
        let _next = ready(pool.claim(&untried(&pool), 0, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_handed_to_a_dropped_ticket_passes_to_the_next_waiter_or_is_freed() {
        let pool = queued_pool(1, 1, 4);
        let (_, holder) = ready(pool.claim(&untried(&pool), 0, true));
        let first = ticket(pool.claim(&untried(&pool), 0, true));
        let mut second = ticket(pool.claim(&untried(&pool), 0, true));
        drop(holder);
        // The slot now sits in `first`'s channel; the client goes away before taking it.
        drop(first);
        assert_eq!(total_outstanding(&pool), 1);
        let (_, guard) = granted(&mut second).expect("passed on to the next waiter");
        assert_eq!(pool.queue_len(), 0);

        let third = ticket(pool.claim(&untried(&pool), 0, true));
        drop(guard);
        drop(third);
        assert_eq!(total_outstanding(&pool), 0, "nobody left to pass it to: freed");
        assert_eq!(pool.queue_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_arriving_with_the_deadline_is_taken() {
        let pool = queued_pool(1, 1, 4);
        let (_, holder) = ready(pool.claim(&untried(&pool), 0, true));
        let mut waiting = ticket(pool.claim(&untried(&pool), 0, true));
        drop(holder);
        let outcome = waiting.wait(Instant::now() - Duration::from_millis(1)).await;
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(total_outstanding(&pool), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_stops_waiting_when_nothing_it_may_use_is_in_rotation() {
        let pool = queued_pool(1, 1, 4);
        let _holder = ready(pool.claim(&untried(&pool), 0, true));
        let mut waiting = ticket(pool.claim(&untried(&pool), 0, true));
        pool.endpoints()[0].set_healthy(false);
        let started = Instant::now();
        let outcome = waiting.wait(started + FAR).await;
        assert_eq!(outcome.unwrap_err(), Waited::Unusable(NoEndpoint { full: 0, out_of_rotation: 1 }));
        assert_eq!(started.elapsed(), RECHECK_INTERVAL);
        assert_eq!(pool.queue_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_back_in_rotation_serves_a_waiter_within_a_recheck() {
        let pool = queued_pool(2, 1, 4);
        pool.endpoints()[1].set_healthy(false);
        let (index, _holder) = ready(pool.claim(&untried(&pool), 0, true));
        assert_eq!(index, 0);
        let mut waiting = ticket(pool.claim(&untried(&pool), 0, true));
        tokio::time::advance(Duration::from_millis(30)).await;
        pool.endpoints()[1].set_healthy(true);
        let started = Instant::now();
        let (index, _guard) = waiting.wait(started + FAR).await.unwrap();
        assert_eq!(index, 1);
        assert!(started.elapsed() <= RECHECK_INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_only_for_endpoints_it_has_not_tried() {
        let pool = queued_pool(2, 1, 4);
        let (a, guard_a) = ready(pool.claim(&untried(&pool), 0, true));
        let (b, guard_b) = ready(pool.claim(&untried(&pool), 0, true));
        let mut tried = untried(&pool);
        tried[a] = true;
        let mut retry = ticket(pool.claim(&tried, 10, true));
        let mut fresh = ticket(pool.claim(&untried(&pool), 0, true));

        drop(guard_a);
        assert!(granted(&mut retry).is_none(), "the retry already tried that endpoint");
        let (index, _fresh_slot) = granted(&mut fresh).expect("the next waiter that may use it");
        assert_eq!(index, a);
        drop(guard_b);
        let (index, _retry_slot) = granted(&mut retry).expect("the endpoint the retry waits for");
        assert_eq!(index, b);

        // A free slot only tried requests are waiting for may go to a newcomer directly.
        let pool = queued_pool(2, 1, 4);
        let (a, guard_a) = ready(pool.claim(&untried(&pool), 0, true));
        let (_, _guard_b) = ready(pool.claim(&untried(&pool), 0, true));
        let mut tried = untried(&pool);
        tried[a] = true;
        let _retry = ticket(pool.claim(&tried, 10, true));
        drop(guard_a);
        let (index, _) = ready(pool.claim(&untried(&pool), 0, true));
        assert_eq!(index, a);
    }

    /// The race a lost wake-up needs: one thread releases the only slot while another claims.
    /// The hand-off is synchronous, so once both are done a queued claimer must already hold
    /// the slot; nothing else claims, so nothing could cover up a missed wake-up.
    #[test]
    fn a_release_racing_a_claim_never_strands_the_claimer() {
        const ROUNDS: usize = 20_000;
        let pool = queued_pool(1, 1, 4);
        let barrier = std::sync::Barrier::new(2);
        let (stranded, queued) = (AtomicUsize::new(0), AtomicUsize::new(0));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..ROUNDS {
                    let grant = ready(pool.claim(&untried(&pool), 0, true));
                    barrier.wait();
                    drop(grant);
                    barrier.wait();
                    barrier.wait();
                }
            });
            scope.spawn(|| {
                for _ in 0..ROUNDS {
                    barrier.wait();
                    let claim = pool.claim(&untried(&pool), 0, true);
                    barrier.wait();
                    match claim {
                        Claim::Ready(grant) => drop(grant),
                        Claim::Queued(mut ticket) => {
                            queued.fetch_add(1, Ordering::Relaxed);
                            if ticket.receiver.try_recv().is_err() {
                                stranded.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        other => panic!("{other:?}"),
                    }
                    barrier.wait();
                }
            });
        });
        assert_eq!(stranded.load(Ordering::Relaxed), 0, "of {} queued claims", queued.load(Ordering::Relaxed));
        assert_eq!(total_outstanding(&pool), 0);
        assert_eq!(pool.queue_len(), 0);
    }

    /// Many tasks on several threads claim, wait and release over and over, with re-checks
    /// off: nobody gets stuck, no lock is taken twice, and no slot or queue entry is left over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_tasks_claiming_and_releasing_finish_with_nothing_left_over() {
        let mut pool = queued_pool(2, 1, 10_000);
        Arc::get_mut(&mut pool.shared).unwrap().queue.recheck = FAR;
        let pool = Arc::new(pool);
        let tasks: Vec<_> = (0..16i64)
            .map(|task| {
                let pool = Arc::clone(&pool);
                tokio::spawn(async move {
                    let tried = untried(&pool);
                    for round in 0..500i64 {
                        let grant = match pool.claim(&tried, (task + round) % 3, true) {
                            Claim::Ready(grant) => grant,
                            Claim::Queued(mut ticket) => {
                                let deadline = Instant::now() + Duration::from_secs(10);
                                ticket.wait(deadline).await.expect("no lost wake-up")
                            }
                            other => panic!("{other:?}"),
                        };
                        if round % 2 == 0 {
                            tokio::task::yield_now().await;
                        }
                        drop(grant);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(total_outstanding(&pool), 0);
        assert_eq!(pool.queue_len(), 0);
    }
}
