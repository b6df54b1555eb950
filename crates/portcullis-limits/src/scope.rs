//! The state of one scope and the rules that check, take and give back against it.
//!
//! Everything here runs with the scope's lock held and is split in two on purpose: `check` only reads, so
//! the limiter can check every scope of an admission before `take` changes any of them (all-or-nothing).
//! What `take` took is returned as a [`Took`] record, and `release` gives back exactly that, independent of
//! the limits in force at settlement time.

use std::sync::{Arc, Mutex};

use crate::{
    BucketState, Demand, Denial, DenialReason, Gcra, GcraState, LimitKind, LimitScope, LimitState, Limits, Millis,
    Period, RateState, TakeError, TokenBucket, Usage, WindowCounter,
};

/// One scope: its name and its state behind its own lock (held for nanoseconds, never across an await).
/// The name lives here so a reservation can say which scopes it holds without cloning them.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) scope: LimitScope,
    pub(crate) state: Mutex<ScopeState>,
}

/// Counters of one scope. Every limited scope tracks all four window counters, whether or not it has
/// that quota today, so a quota added by a config reload starts from the usage this limiter has already
/// seen in the window rather than from zero.
#[derive(Debug, Default)]
pub(crate) struct ScopeState {
    gcra: GcraState,
    bucket: BucketState,
    /// Tokens of the bucket held by running requests (for the snapshot and idleness only).
    bucket_reserved: u64,
    in_flight: u64,
    day_tokens: WindowCounter,
    day_cost: WindowCounter,
    month_tokens: WindowCounter,
    month_cost: WindowCounter,
    /// Set when the limiter removed this state from its map; holders must look the scope up again.
    pub(crate) evicted: bool,
}

/// The day and month window indexes of one `now`, computed once per admission.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Windows {
    day: u64,
    month: u64,
}

impl Windows {
    pub(crate) fn at(now: Millis) -> Windows {
        Windows { day: Period::Day.index(now), month: Period::Month.index(now) }
    }

    fn of(self, period: Period) -> u64 {
        match period {
            Period::Day => self.day,
            Period::Month => self.month,
        }
    }
}

/// A refusal found by `check`, before it is attached to a scope.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Failure {
    pub(crate) limit: LimitKind,
    pub(crate) reason: DenialReason,
    pub(crate) retry_after_ms: Option<u64>,
    pub(crate) available: Option<u64>,
}

impl Failure {
    /// Orders refusals by how long they last ([`DenialReason::rank`]), then a longer wait before a shorter.
    pub(crate) fn severity(&self) -> (u8, u64) {
        (self.reason.rank(), self.retry_after_ms.unwrap_or(0))
    }

    pub(crate) fn into_denial(self, scope: LimitScope) -> Denial {
        let Failure { limit, reason, retry_after_ms, available } = self;
        Denial { scope, limit, reason, retry_after_ms, available }
    }
}

/// What one admission took from one scope.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Took {
    concurrency: bool,
    /// Tokens taken from the bucket, if the scope had a token rate.
    bucket: Option<u64>,
    day: u64,
    month: u64,
}

/// A scope a reservation holds something in: the state itself, so settlement needs no map lookup.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) slot: Arc<Slot>,
    /// Position in the admission's scope list: where its limits are, and the tie-break among refusals.
    pub(crate) caller: usize,
}

/// Per-minute rates of a set of limits; `None` where not configured (or zero, which `never_fits` refuses).
fn rates(limits: &Limits) -> (Option<Gcra>, Option<TokenBucket>) {
    let gcra = limits.requests_per_minute.and_then(|rpm| Gcra::new(rpm, limits.burst));
    (gcra, limits.tokens_per_minute.map(TokenBucket::new))
}

/// Calendar quotas of a set of limits, with the counter and period each one reads.
fn quotas<'a>(
    limits: &Limits,
    state: &'a ScopeState,
    demand: Demand,
) -> [(LimitKind, Option<u64>, &'a WindowCounter, Period, u64); 4] {
    [
        (LimitKind::TokensPerDay, limits.tokens_per_day, &state.day_tokens, Period::Day, demand.tokens),
        (LimitKind::TokensPerMonth, limits.tokens_per_month, &state.month_tokens, Period::Month, demand.tokens),
        (LimitKind::BudgetPerDay, limits.budget_per_day.map(|m| m.0), &state.day_cost, Period::Day, demand.cost.0),
        (
            LimitKind::BudgetPerMonth,
            limits.budget_per_month.map(|m| m.0),
            &state.month_cost,
            Period::Month,
            demand.cost.0,
        ),
    ]
}

impl ScopeState {
    /// The longest-lasting refusal of this scope for `demand` at `now`, or `None` if everything fits.
    /// Assumes `Limits::never_fits` already passed. Reads only.
    pub(crate) fn check(&self, limits: &Limits, demand: Demand, now: Millis, windows: Windows) -> Option<Failure> {
        let mut worst: Option<Failure> = None;
        let mut consider = |failure: Failure| {
            if worst.is_none_or(|w| failure.severity() > w.severity()) {
                worst = Some(failure);
            }
        };
        let (gcra, bucket) = rates(limits);
        if let Some(Err(wait)) = gcra.map(|g| g.check(&self.gcra, now)) {
            consider(rate_limited(LimitKind::RequestsPerMinute, Some(wait)));
        }
        match bucket.map(|b| b.check(&self.bucket, demand.tokens, now)) {
            Some(Err(TakeError::Wait(wait))) => consider(rate_limited(LimitKind::TokensPerMinute, Some(wait))),
            Some(Err(TakeError::NeverFits)) => consider(Failure {
                limit: LimitKind::TokensPerMinute,
                reason: DenialReason::NeverFits,
                retry_after_ms: None,
                available: limits.tokens_per_minute,
            }),
            Some(Ok(())) | None => {}
        }
        if limits.max_concurrent.is_some_and(|max| self.in_flight >= max) {
            consider(rate_limited(LimitKind::Concurrent, None));
        }
        for (limit, quota, counter, period, amount) in quotas(limits, self, demand) {
            // The window indexes of this admission are at hand: the common case (it fits) costs no more.
            if let Some(quota) = quota
                && !counter.fits(windows.of(period), amount, quota)
                && let Some(refusal) = counter.refusal(period, now, amount, quota)
            {
                consider(Failure {
                    limit,
                    reason: refusal.reason,
                    retry_after_ms: refusal.retry_after_ms,
                    available: Some(refusal.available),
                });
            }
        }
        worst
    }

    /// Takes `demand` from every limit (call only after `check` found nothing) and records what it took.
    pub(crate) fn take(&mut self, limits: &Limits, demand: Demand, now: Millis, windows: Windows) -> Took {
        let (gcra, bucket) = rates(limits);
        if let Some(gcra) = gcra {
            // Checked under the same lock just before; cannot fail here.
            let _ = gcra.take(&mut self.gcra, now);
        }
        let bucket = bucket.map(|b| {
            let _ = b.take(&mut self.bucket, demand.tokens, now);
            self.bucket_reserved = self.bucket_reserved.saturating_add(demand.tokens);
            demand.tokens
        });
        let concurrency = limits.max_concurrent.is_some();
        if concurrency {
            self.in_flight = self.in_flight.saturating_add(1);
        }
        let money = |budget: Option<crate::Money>| budget.map(|m| m.0);
        let day = self.day_tokens.reserve(windows.day, demand.tokens, limits.tokens_per_day);
        self.day_cost.reserve(day, demand.cost.0, money(limits.budget_per_day));
        let month = self.month_tokens.reserve(windows.month, demand.tokens, limits.tokens_per_month);
        self.month_cost.reserve(month, demand.cost.0, money(limits.budget_per_month));
        Took { concurrency, bucket, day, month }
    }

    /// Gives back what `took` holds. With a settlement's actual usage, the actual is charged in full: unused
    /// tokens go back to the bucket and tokens used beyond the reservation put it into debt, and quotas and
    /// budgets are charged the whole actual. Without (a dropped reservation) the whole reservation is charged
    /// and nothing is refunded, so a lost settlement never lets anyone overspend.
    pub(crate) fn release(&mut self, took: Took, demand: Demand, settlement: Option<Usage>) {
        if took.concurrency {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        let actual = settlement.unwrap_or(Usage { tokens: demand.tokens, cost: demand.cost });
        if let Some(reserved) = took.bucket {
            self.bucket_reserved = self.bucket_reserved.saturating_sub(reserved);
            if actual.tokens < reserved {
                self.bucket.refund(reserved - actual.tokens);
            } else {
                self.bucket.charge(actual.tokens - reserved);
            }
        }
        self.day_tokens.settle(took.day, demand.tokens, actual.tokens);
        self.day_cost.settle(took.day, demand.cost.0, actual.cost.0);
        self.month_tokens.settle(took.month, demand.tokens, actual.tokens);
        self.month_cost.settle(took.month, demand.cost.0, actual.cost.0);
    }

    /// Replaces `used` of the day and month windows of `now` with persisted totals.
    pub(crate) fn seed(&mut self, day: Usage, month: Usage, now: Millis) {
        let windows = Windows::at(now);
        for (counter, index, used) in [
            (&mut self.day_tokens, windows.day, day.tokens),
            (&mut self.day_cost, windows.day, day.cost.0),
            (&mut self.month_tokens, windows.month, month.tokens),
            (&mut self.month_cost, windows.month, month.cost.0),
        ] {
            *counter = counter.at(index);
            counter.used = used;
        }
    }

    /// Header values of the request and token rates after an admission.
    pub(crate) fn rate_states(&self, limits: &Limits, now: Millis) -> (Option<RateState>, Option<RateState>) {
        let (gcra, bucket) = rates(limits);
        let requests = gcra.map(|g| RateState {
            limit: g.per_minute(),
            remaining: g.remaining(&self.gcra, now),
            reset_ms: g.reset_ms(&self.gcra, now),
        });
        let tokens = bucket.map(|b| RateState {
            limit: b.capacity(),
            remaining: b.available(&self.bucket, now),
            reset_ms: b.reset_ms(&self.bucket, now),
        });
        (requests, tokens)
    }

    /// Every configured limit's state at `now`, in `LimitKind` order.
    pub(crate) fn snapshot(&self, limits: &Limits, now: Millis) -> Vec<LimitState> {
        let mut out = Vec::with_capacity(7);
        let (gcra, bucket) = rates(limits);
        if let Some(g) = gcra {
            let remaining = g.remaining(&self.gcra, now);
            out.push(LimitState {
                kind: LimitKind::RequestsPerMinute,
                limit: g.per_minute(),
                used: g.burst().saturating_sub(remaining),
                reserved: 0,
                remaining,
                reset_ms: Some(g.reset_ms(&self.gcra, now)),
            });
        }
        if let Some(b) = bucket {
            out.push(b.limit_state(&self.bucket, self.bucket_reserved, now));
        }
        if let Some(max) = limits.max_concurrent {
            out.push(LimitState {
                kind: LimitKind::Concurrent,
                limit: max,
                used: self.in_flight,
                reserved: 0,
                remaining: max.saturating_sub(self.in_flight),
                reset_ms: None,
            });
        }
        for (kind, quota, counter, period, _) in quotas(limits, self, Demand::default()) {
            if let Some(quota) = quota {
                out.push(counter.limit_state(kind, quota, period, now));
            }
        }
        out
    }

    /// True when dropping this state and starting afresh later would change nothing a client could see:
    /// nothing in flight or reserved, the request rate and token bucket fully replenished (no debt), and
    /// nothing used in the current day or month (nor carried into it by an overrun).
    pub(crate) fn is_idle(&self, now: Millis) -> bool {
        let windows = Windows::at(now);
        let window_idle = |counter: &WindowCounter, index: u64| counter.reserved == 0 && counter.at(index).used == 0;
        self.in_flight == 0
            && self.bucket_reserved == 0
            && self.gcra.is_idle_at(now)
            && self.bucket.is_full_at(now)
            && window_idle(&self.day_tokens, windows.day)
            && window_idle(&self.day_cost, windows.day)
            && window_idle(&self.month_tokens, windows.month)
            && window_idle(&self.month_cost, windows.month)
    }
}

fn rate_limited(limit: LimitKind, retry_after_ms: Option<u64>) -> Failure {
    Failure { limit, reason: DenialReason::RateLimited, retry_after_ms, available: None }
}
