//! The in-memory limiter: one process, exact, no global lock.
//!
//! Each scope's state sits behind its own `std::sync::Mutex`, held only for the few hundred nanoseconds
//! of integer arithmetic of one admission or settlement and never across an await, so an async-aware lock
//! would only add cost. The scopes live in a sharded concurrent map (`DashMap`): requests of unrelated keys
//! never contend, and a map lock is never held while a scope lock is taken.
//!
//! An admission locks all of its scopes at once, in `LimitScope` order (so two admissions can never wait on
//! each other in a cycle), checks every limit, and only then applies. Settlement gives back scope by scope,
//! one lock at a time: giving back needs no atomicity across scopes.

use std::cmp::Reverse;
use std::sync::{Arc, MutexGuard, PoisonError};

use dashmap::DashMap;

use crate::scope::{Failure, Held, ScopeState, Slot, Took, Windows};
use crate::{
    Demand, Denial, Hold, LimitScope, LimitState, Limiter, Limits, Millis, RateHeaders, RateState, Refusal,
    Reservation, Usage,
};

/// [`Limiter`] kept in this process's memory. State starts empty (every bucket full, every window unused);
/// use [`Limiter::seed`] to carry day and month usage across restarts.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    scopes: DashMap<LimitScope, Arc<Slot>>,
}

impl MemoryLimiter {
    /// An empty limiter.
    pub fn new() -> MemoryLimiter {
        MemoryLimiter::default()
    }

    /// [`Limiter::admit`] without the async wrapper (it never waits on anything but a scope lock).
    pub fn admit_sync(
        &self,
        scopes: &[(LimitScope, Limits)],
        demand: Demand,
        now: Millis,
    ) -> Result<Reservation, Denial> {
        // Which entries count: those with limits, and of a scope listed twice only the first such entry.
        let counts = |i: usize| {
            let (scope, limits) = &scopes[i];
            !limits.is_unlimited() && !scopes[..i].iter().any(|(seen, l)| seen == scope && !l.is_unlimited())
        };
        // A demand larger than a whole capacity is refused before any state is looked at.
        for (i, (scope, limits)) in scopes.iter().enumerate() {
            if let Some(denial) = limits.never_fits_denial(scope, demand).filter(|_| counts(i)) {
                return Err(denial);
            }
        }
        let mut held: Vec<Held> = Vec::with_capacity(scopes.len());
        for (i, (scope, _)) in scopes.iter().enumerate() {
            if counts(i) {
                held.push(Held { slot: self.slot(scope), caller: i });
            }
        }
        // Lock order: by scope, the same for every admission, so no two can wait on each other in a cycle.
        held.sort_unstable_by(|a, b| a.slot.scope.cmp(&b.slot.scope));
        let windows = Windows::at(now);
        loop {
            let guards: Vec<MutexGuard<'_, ScopeState>> = held.iter().map(|h| lock(&h.slot)).collect();
            if guards.iter().any(|guard| guard.evicted) {
                // Evicted between lookup and lock: look up again (a fresh state is in the map by then).
                drop(guards);
                for h in &mut held {
                    h.slot = self.slot(&h.slot.scope);
                }
                continue;
            }

            // Check every scope before changing any. Ties go to the earlier scope in the caller's list.
            let mut worst: Option<(Failure, usize)> = None;
            for (guard, h) in guards.iter().zip(&held) {
                if let Some(failure) = guard.check(&scopes[h.caller].1, demand, now, windows) {
                    let key = (failure.severity(), Reverse(h.caller));
                    if worst.is_none_or(|(w, wi)| key > (w.severity(), Reverse(wi))) {
                        worst = Some((failure, h.caller));
                    }
                }
            }
            if let Some((failure, i)) = worst {
                return Err(failure.into_denial(scopes[i].0.clone()));
            }

            // Everything fits: apply. Each lock is released as soon as its scope is done (all were taken
            // before the check, so nobody can observe a partial admission that later fails).
            let mut headers = RateHeaders::default();
            let mut took = Vec::with_capacity(held.len());
            for (mut guard, h) in guards.into_iter().zip(&held) {
                let limits = &scopes[h.caller].1;
                took.push(guard.take(limits, demand, now, windows));
                let (requests, tokens) = guard.rate_states(limits, now);
                headers.requests = tightest(headers.requests, requests);
                headers.tokens = tightest(headers.tokens, tokens);
            }
            return Ok(Reservation { headers, demand, hold: Hold::Memory(MemoryHold { held, took }) });
        }
    }

    /// [`Limiter::settle`] without the async wrapper. `now` is accepted for the trait's shape but not needed:
    /// the windows to charge are those recorded in the reservation (or the current one, for an overrun whose
    /// window ended), and a token refund or overrun charge applies as of the bucket's latest change (see
    /// [`crate::BucketState::refund`] and [`crate::BucketState::charge`]).
    pub fn settle_sync(&self, mut reservation: Reservation, actual: Usage, _now: Millis) {
        match std::mem::replace(&mut reservation.hold, Hold::Released) {
            Hold::Memory(hold) => hold.release(reservation.demand, Some(actual)),
            // Not this limiter's reservation: put it back so that dropping it releases it by its own rules.
            other => reservation.hold = other,
        }
    }

    /// [`Limiter::snapshot`] without the async wrapper. A scope never seen reports a fresh state.
    pub fn snapshot_sync(&self, scope: &LimitScope, limits: &Limits, now: Millis) -> Vec<LimitState> {
        let slot = self.scopes.get(scope).map(|entry| Arc::clone(entry.value()));
        match slot {
            Some(slot) => lock(&slot).snapshot(limits, now),
            None => ScopeState::default().snapshot(limits, now),
        }
    }

    /// [`Limiter::seed`] without the async wrapper.
    pub fn seed_sync(&self, scope: &LimitScope, day: Usage, month: Usage, now: Millis) {
        loop {
            let slot = self.slot(scope);
            let mut state = lock(&slot);
            if !state.evicted {
                state.seed(day, month, now);
                return;
            }
        }
    }

    /// Forgets scopes whose state is indistinguishable from a fresh one at `now` (nothing in flight, rates
    /// replenished, nothing used this day or month), so that keys seen once do not stay in memory forever.
    /// Returns how many were removed. Cheap enough to call every few minutes.
    pub fn evict_idle(&self, now: Millis) -> usize {
        let before = self.scopes.len();
        self.scopes.retain(|_, slot| {
            let mut state = lock(slot);
            let idle = state.is_idle(now);
            // A concurrent admission that already cloned this slot sees the flag and looks up again.
            state.evicted = idle;
            !idle
        });
        before.saturating_sub(self.scopes.len())
    }

    /// Number of scopes with state.
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    /// True when no scope has state.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// The state of `scope`, created fresh on first use. The map guard is dropped before returning, so no
    /// map shard lock is ever held while a scope lock is taken.
    fn slot(&self, scope: &LimitScope) -> Arc<Slot> {
        if let Some(entry) = self.scopes.get(scope) {
            return Arc::clone(entry.value());
        }
        let entry = self.scopes.entry(scope.clone()).or_insert_with(|| {
            Arc::new(Slot { scope: scope.clone(), state: std::sync::Mutex::new(ScopeState::default()) })
        });
        Arc::clone(entry.value())
    }
}

/// Locks a scope. A poisoned lock is still consistent — every change is plain arithmetic that cannot panic
/// halfway — so it is used rather than turning one panic into a permanent outage of that scope.
fn lock(slot: &Slot) -> MutexGuard<'_, ScopeState> {
    slot.state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The tighter of two header states: fewer remaining, then the longer reset.
fn tightest(current: Option<RateState>, candidate: Option<RateState>) -> Option<RateState> {
    match (current, candidate) {
        (Some(c), Some(n)) => {
            Some(if (n.remaining, Reverse(n.reset_ms)) < (c.remaining, Reverse(c.reset_ms)) { n } else { c })
        }
        (c, n) => c.or(n),
    }
}

/// What an admission took, scope by scope; gives it back on settlement or drop.
#[derive(Debug)]
pub(crate) struct MemoryHold {
    /// Scopes in lock order, and what was taken from each (same positions; separate so that the taking
    /// can be recorded while the scopes are borrowed by their locks).
    held: Vec<Held>,
    took: Vec<Took>,
}

impl MemoryHold {
    pub(crate) fn scopes(&self) -> impl Iterator<Item = &LimitScope> {
        self.held.iter().map(|held| &held.slot.scope)
    }

    /// Gives back scope by scope, one lock at a time; `None` = unsettled (charge the whole demand).
    pub(crate) fn release(self, demand: Demand, actual: Option<Usage>) {
        for (held, took) in self.held.into_iter().zip(self.took) {
            lock(&held.slot).release(took, demand, actual);
        }
    }
}

#[async_trait::async_trait]
impl Limiter for MemoryLimiter {
    async fn admit(
        &self,
        scopes: &[(LimitScope, Limits)],
        demand: Demand,
        now: Millis,
    ) -> Result<Reservation, Refusal> {
        Ok(self.admit_sync(scopes, demand, now)?)
    }

    async fn snapshot(&self, scope: &LimitScope, limits: &Limits, now: Millis) -> Vec<LimitState> {
        self.snapshot_sync(scope, limits, now)
    }

    async fn seed(&self, scope: &LimitScope, day: Usage, month: Usage, now: Millis) {
        self.seed_sync(scope, day, month, now);
    }
}
