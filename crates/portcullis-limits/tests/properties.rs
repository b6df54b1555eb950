//! Property tests: the invariants that make limits hold, under arbitrary sequences with explicit time.
#![allow(clippy::unwrap_used, reason = "test helpers: a failure is a failed test")]

use std::collections::HashMap;

use portcullis_limits::window::{DAY_MS, days_from_civil};
use portcullis_limits::{
    BucketState, Demand, DenialReason, Gcra, GcraState, LimitKind, LimitScope, Limits, MemoryLimiter, Millis, Money,
    Period, Reservation, TakeError, TokenBucket, Usage,
};
use proptest::prelude::*;

const UNITS_PER_TOKEN: u128 = 60_000;

#[derive(Clone, Debug)]
enum BucketOp {
    Take(u64),
    Refund(u64),
    /// A settlement that used more than it took.
    Charge(u64),
    Advance(u64),
    /// Another caller's slightly older `now`.
    Lag(u64),
}

fn bucket_op() -> impl Strategy<Value = BucketOp> {
    prop_oneof![
        (0..20_000u64).prop_map(BucketOp::Take),
        (0..30_000u64).prop_map(BucketOp::Refund),
        (0..30_000u64).prop_map(BucketOp::Charge),
        (0..120_000u64).prop_map(BucketOp::Advance),
        (0..5_000u64).prop_map(BucketOp::Lag),
    ]
}

/// Applies one op at the clock `now` (advanced or lagged as the op says) and returns the time used.
fn apply(bucket: &TokenBucket, state: &mut BucketState, op: &BucketOp, now: &mut Millis) {
    match *op {
        BucketOp::Take(n) => {
            let (before, deficit) = (bucket.available(state, *now), bucket.deficit_units(state, *now));
            let capacity = bucket.capacity();
            let taken = bucket.take(state, n, *now).is_ok();
            // A take succeeds exactly when the whole amount is there, which is never while in debt (a zero
            // capacity, which can never repay one, aside).
            let in_debt = deficit > u128::from(capacity) * UNITS_PER_TOKEN;
            assert_eq!(taken, before >= n && (!in_debt || capacity == 0), "take {n} with {before} available");
        }
        BucketOp::Refund(n) => state.refund(n),
        BucketOp::Charge(n) => state.charge(n),
        BucketOp::Advance(ms) => *now += ms,
        BucketOp::Lag(ms) => {
            let lagged = now.saturating_sub(ms);
            let in_debt = bucket.deficit_units(state, lagged) > u128::from(bucket.capacity()) * UNITS_PER_TOKEN;
            assert_eq!(bucket.take(state, 0, lagged).is_ok(), !in_debt || bucket.capacity() == 0);
        }
    }
}

proptest! {
    #[test]
    fn token_bucket_never_exceeds_its_capacity(capacity in 0..10_000u64, ops in prop::collection::vec(bucket_op(), 0..60)) {
        let bucket = TokenBucket::new(capacity);
        let mut state = BucketState::default();
        let mut now = 1_000_000;
        for op in &ops {
            apply(&bucket, &mut state, op, &mut now);
            prop_assert!(bucket.level_units(&state, now) <= u128::from(capacity) * UNITS_PER_TOKEN);
            prop_assert!(bucket.available(&state, now) <= capacity);
        }
    }

    #[test]
    fn refund_never_creates_tokens(
        capacity in 1..10_000u64,
        history in prop::collection::vec(bucket_op(), 0..30),
        take in 0..10_000u64,
        elapsed in 0..90_000u64,
        refund_share in 0.0..=1.0f64,
    ) {
        let bucket = TokenBucket::new(capacity);
        let mut state = BucketState::default();
        let mut now = 1_000_000;
        for op in &history {
            apply(&bucket, &mut state, op, &mut now);
        }
        let before = bucket.level_units(&state, now);
        if bucket.take(&mut state, take, now).is_ok() {
            let refund = (take as f64 * refund_share) as u64;
            state.refund(refund.min(take));
            let after = bucket.level_units(&state, now + elapsed);
            let refilled = u128::from(elapsed) * u128::from(capacity);
            let cap = u128::from(capacity) * UNITS_PER_TOKEN;
            prop_assert!(after <= (before + refilled).min(cap), "{after} > min({before} + {refilled}, {cap})");
            if elapsed == 0 {
                prop_assert!(after <= before);
            }
        }
    }

    /// Settlement charges what was used: after a take of `reserved` settled with `actual` (a refund or a
    /// charge), the bucket lacks exactly `actual` more than before the take, debt included.
    #[test]
    fn a_settled_take_leaves_exactly_the_actual_taken(
        capacity in 1..10_000u64,
        history in prop::collection::vec(bucket_op(), 0..30),
        reserved in 0..10_000u64,
        actual in 0..100_000u64,
    ) {
        let bucket = TokenBucket::new(capacity);
        let mut state = BucketState::default();
        let mut now = 1_000_000;
        for op in &history {
            apply(&bucket, &mut state, op, &mut now);
        }
        let before = bucket.deficit_units(&state, now);
        if bucket.take(&mut state, reserved, now).is_ok() {
            if actual < reserved {
                state.refund(reserved - actual);
            } else {
                state.charge(actual - reserved);
            }
            prop_assert_eq!(bucket.deficit_units(&state, now), before + u128::from(actual) * UNITS_PER_TOKEN);
        }
    }

    /// A debt is repaid at exactly the refill rate, and the reported waits are exact: a take refused with
    /// `Wait(ms)` succeeds `ms` later and not a ms sooner; `reset_ms` is when the deficit reaches 0.
    #[test]
    fn a_debt_is_repaid_at_exactly_the_refill_rate(
        capacity in 1..10_000u64,
        taken in 0..10_000u64,
        over in 0..1_000_000u64,
        tokens in 0..10_000u64,
        elapsed in prop::collection::vec(0..600_000u64, 1..8),
    ) {
        let bucket = TokenBucket::new(capacity);
        let (taken, tokens) = (taken.min(capacity), tokens.min(capacity));
        let mut state = BucketState::default();
        let start = 5_000_000;
        bucket.take(&mut state, taken, start).unwrap();
        state.charge(over);
        let deficit = bucket.deficit_units(&state, start);
        prop_assert_eq!(deficit, u128::from(taken + over) * UNITS_PER_TOKEN);
        for ms in elapsed {
            let refilled = u128::from(ms) * u128::from(capacity);
            prop_assert_eq!(bucket.deficit_units(&state, start + ms), deficit.saturating_sub(refilled));
        }
        let reset = bucket.reset_ms(&state, start);
        prop_assert_eq!(u128::from(reset), deficit.div_ceil(u128::from(capacity)));
        prop_assert!(state.is_full_at(start + reset) && (reset == 0 || !state.is_full_at(start + reset - 1)));
        match bucket.check(&state, tokens, start) {
            Ok(()) => prop_assert!(deficit + u128::from(tokens) * UNITS_PER_TOKEN <= u128::from(capacity) * UNITS_PER_TOKEN),
            Err(TakeError::Wait(ms)) => {
                prop_assert!(ms > 0);
                prop_assert!(bucket.check(&state, tokens, start + ms - 1).is_err());
                let mut later = state;
                prop_assert_eq!(bucket.take(&mut later, tokens, start + ms), Ok(()));
            }
            Err(TakeError::NeverFits) => prop_assert!(false, "{tokens} <= {capacity} never fits"),
        }
    }

    #[test]
    fn gcra_admits_at_most_burst_plus_rate_in_any_interval(
        per_minute in 1..1_000u64,
        burst in prop::option::of(1..50u64),
        gaps in prop::collection::vec(0..5_000u64, 1..200),
    ) {
        let rate = Gcra::new(per_minute, burst).unwrap();
        let mut state = GcraState::default();
        let mut now = 5_000_000;
        let mut admitted = Vec::new();
        for gap in gaps {
            now += gap;
            if rate.take(&mut state, now).is_ok() {
                admitted.push(now);
            }
        }
        for i in 0..admitted.len() {
            for j in i..admitted.len() {
                let span = u128::from(admitted[j] - admitted[i]);
                let allowed = u128::from(rate.burst()) + span * u128::from(per_minute) / 60_000;
                prop_assert!((j - i + 1) as u128 <= allowed, "{} admitted in {span} ms", j - i + 1);
            }
        }
    }

    #[test]
    fn gcra_admits_the_whole_burst_of_an_idle_scope(per_minute in 1..10_000u64, burst in 1..100u64, now in 0..u64::MAX / 2) {
        let rate = Gcra::new(per_minute, Some(burst)).unwrap();
        let mut state = GcraState::default();
        for _ in 0..burst {
            prop_assert!(rate.take(&mut state, now).is_ok());
        }
        prop_assert!(rate.take(&mut state, now).is_err());
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Admit { tokens: u64, cost: u64 },
    Settle { pick: usize, tokens: u64, cost: u64 },
    Drop { pick: usize },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3_000u64, 0..3_000u64).prop_map(|(tokens, cost)| Op::Admit { tokens, cost }),
        3 => (any::<usize>(), 0..4_000u64, 0..4_000u64).prop_map(|(pick, tokens, cost)| Op::Settle { pick, tokens, cost }),
        1 => any::<usize>().prop_map(|pick| Op::Drop { pick }),
        2 => (0..DAY_MS).prop_map(Op::Advance),
    ]
}

fn quota() -> impl Strategy<Value = Option<u64>> {
    prop::option::weighted(0.8, 0..10_000u64)
}

/// The four calendar quotas and what the model keeps for each: `(used, reserved)` per window index, `used`
/// including what the window before carried into it.
struct Quota {
    kind: LimitKind,
    limit: Option<u64>,
    period: Period,
    money: bool,
    windows: HashMap<u64, (u64, u64)>,
}

impl Quota {
    fn amount(&self, usage: Usage) -> u64 {
        if self.money { usage.cost.0 } else { usage.tokens }
    }

    /// `(used, reserved)` seen in window `index` when the scope's counters are in window `current` (the
    /// latest one an admission was made in): a later window has nothing reserved and starts with what is
    /// left of the current one's excess after one quota per window in between.
    fn view(&self, current: u64, index: u64) -> (u64, u64) {
        let (used, reserved) = self.windows.get(&current).copied().unwrap_or_default();
        match self.limit {
            _ if index <= current => (used, reserved),
            Some(limit) if limit > 0 => (used.saturating_sub(limit.saturating_mul(index - current)), 0),
            _ => (0, 0),
        }
    }

    /// Whether `amount` fits in window `index`.
    fn fits(&self, current: u64, index: u64, amount: u64) -> bool {
        let (used, reserved) = self.view(current, index);
        self.limit.is_none_or(|limit| {
            amount == 0 || u128::from(used) + u128::from(reserved) + u128::from(amount) <= u128::from(limit)
        })
    }
}

/// The refusal the model expects of a quota.
struct Expected {
    severity: (u8, u64),
    kind: LimitKind,
    reason: DenialReason,
    retry: Option<u64>,
    available: u64,
}

struct Outstanding {
    reservation: Reservation,
    demand: Demand,
    day: u64,
    month: u64,
}

fn period_slot(period: Period) -> usize {
    match period {
        Period::Day => 0,
        Period::Month => 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Used and reserved match an exact model after every step (so nothing underflows or leaks), in which
    /// settlement charges the actual usage in full (`charged = actual`), an excess over the quota carries
    /// into later windows one quota at a time, and an overrun settled after its window ended is charged to
    /// the current one. No admission ever starts while `used + reserved + demand > limit`, every refusal is
    /// one, and its retry time is the start of the first window in which the demand fits.
    #[test]
    fn quotas_charge_the_actual_and_admit_nothing_beyond_the_limit(
        tokens_per_day in quota(),
        tokens_per_month in quota(),
        budget_per_day in quota(),
        budget_per_month in quota(),
        start_offset in 0..3 * DAY_MS,
        ops in prop::collection::vec(op(), 0..60),
    ) {
        let limits = Limits {
            tokens_per_day,
            tokens_per_month,
            budget_per_day: budget_per_day.map(Money),
            budget_per_month: budget_per_month.map(Money),
            ..Limits::default()
        };
        let mut quotas = [
            (LimitKind::TokensPerDay, tokens_per_day, Period::Day, false),
            (LimitKind::TokensPerMonth, tokens_per_month, Period::Month, false),
            (LimitKind::BudgetPerDay, budget_per_day, Period::Day, true),
            (LimitKind::BudgetPerMonth, budget_per_month, Period::Month, true),
        ]
        .map(|(kind, limit, period, money)| Quota { kind, limit, period, money, windows: HashMap::new() });
        let scope = LimitScope::Key("k".into());
        let scopes = [(scope.clone(), limits.clone())];
        let limiter = MemoryLimiter::new();
        // Start near the end of February of a leap year so runs cross days and months.
        let mut now = days_from_civil(2028, 2, 27) * DAY_MS + start_offset;
        // The window (day, month) the scope's counters are in: the latest one an admission was made in.
        let mut current = [0u64; 2];
        let mut outstanding: Vec<Outstanding> = Vec::new();

        for op in ops {
            match op {
                Op::Admit { tokens, cost } => {
                    let demand = Demand { tokens, cost: Money(cost) };
                    let wanted = Usage { tokens, cost: Money(cost) };
                    let at = |q: &Quota| q.period.index(now);
                    let never = quotas.iter().any(|q| q.limit.is_some_and(|l| q.amount(wanted) > l));
                    let fits = quotas.iter().all(|q| q.fits(current[period_slot(q.period)], at(q), q.amount(wanted)));
                    match limiter.admit_sync(&scopes, demand, now) {
                        Ok(reservation) => {
                            prop_assert!(!never && fits, "admitted {demand:?} against the model");
                            if limits.is_unlimited() {
                                continue;
                            }
                            for period in [Period::Day, Period::Month] {
                                let index = period.index(now);
                                let slot = period_slot(period);
                                if index > current[slot] {
                                    for q in quotas.iter_mut().filter(|q| q.period == period) {
                                        let carried = q.view(current[slot], index);
                                        q.windows.insert(index, carried);
                                    }
                                    current[slot] = index;
                                }
                            }
                            for q in &mut quotas {
                                let amount = q.amount(wanted);
                                q.windows.entry(q.period.index(now)).or_default().1 += amount;
                            }
                            let (day, month) = (Period::Day.index(now), Period::Month.index(now));
                            outstanding.push(Outstanding { reservation, demand, day, month });
                        }
                        Err(denial) => {
                            prop_assert!(never || !fits, "refused {demand:?}: {denial}");
                            if never {
                                prop_assert_eq!(denial.reason, DenialReason::NeverFits);
                            } else {
                                // Each refusing quota: held by reservations if the demand fits what is used,
                                // else spent until the first later window the demand fits in. A spent one
                                // is reported before a held one, then the longest retry, then the first.
                                let mut worst: Option<Expected> = None;
                                for q in quotas.iter().filter(|q| !q.fits(current[period_slot(q.period)], at(q), q.amount(wanted))) {
                                    let from = current[period_slot(q.period)];
                                    let amount = q.amount(wanted);
                                    let (used, reserved) = q.view(from, at(q));
                                    let limit = q.limit.unwrap();
                                    let available = limit.saturating_sub(used.saturating_add(reserved));
                                    let refusal = if u128::from(used) + u128::from(amount) <= u128::from(limit) {
                                        ((0, 0), DenialReason::HeldByReservations, None)
                                    } else {
                                        let first = (at(q) + 1..).find(|&i| q.fits(from, i, amount)).unwrap();
                                        let retry = q.period.start(first) - now;
                                        ((1, retry), DenialReason::QuotaExhausted, Some(retry))
                                    };
                                    if worst.as_ref().is_none_or(|w| refusal.0 > w.severity) {
                                        let (severity, reason, retry) = refusal;
                                        worst = Some(Expected { severity, kind: q.kind, reason, retry, available });
                                    }
                                }
                                let Expected { kind, reason, retry, available, .. } = worst.unwrap();
                                prop_assert_eq!(
                                    (denial.limit, denial.reason, denial.retry_after_ms, denial.available),
                                    (kind, reason, retry, Some(available))
                                );
                            }
                        }
                    }
                }
                Op::Settle { pick, .. } | Op::Drop { pick } if !outstanding.is_empty() => {
                    let held = outstanding.swap_remove(pick % outstanding.len());
                    let actual = match op {
                        Op::Settle { tokens, cost, .. } => Usage { tokens, cost: Money(cost) },
                        _ => Usage { tokens: held.demand.tokens, cost: held.demand.cost },
                    };
                    let reserved = Usage { tokens: held.demand.tokens, cost: held.demand.cost };
                    for q in &mut quotas {
                        let (reserved, actual) = (q.amount(reserved), q.amount(actual));
                        let index = if q.period == Period::Day { held.day } else { held.month };
                        let now_in = current[period_slot(q.period)];
                        if index == now_in {
                            let window = q.windows.entry(index).or_default();
                            window.1 -= reserved;
                            window.0 += actual;
                        } else {
                            // Its window ended: only what it used beyond its reservation, to the current one.
                            q.windows.entry(now_in).or_default().0 += actual.saturating_sub(reserved);
                        }
                    }
                    match op {
                        Op::Settle { .. } => limiter.settle_sync(held.reservation, actual, now),
                        _ => drop(held.reservation),
                    }
                }
                Op::Settle { .. } | Op::Drop { .. } => {}
                Op::Advance(ms) => now += ms,
            }

            let snapshot = limiter.snapshot_sync(&scope, &limits, now);
            for q in &quotas {
                let Some(limit) = q.limit else { continue };
                let state = snapshot.iter().find(|s| s.kind == q.kind).unwrap();
                let (used, reserved) = q.view(current[period_slot(q.period)], q.period.index(now));
                prop_assert_eq!((state.used, state.reserved), (used, reserved), "{:?}", q.kind);
                prop_assert_eq!(state.remaining, limit.saturating_sub(used + reserved), "{:?}", q.kind);
            }
        }
    }
}

fn limits_strategy() -> impl Strategy<Value = Limits> {
    let small = || prop::option::weighted(0.5, 0..50u64);
    (small(), small(), prop::option::weighted(0.5, 0..5_000u64), small(), quota(), quota(), quota(), quota()).prop_map(
        |(rpm, burst, tpm, concurrent, day, month, budget_day, budget_month)| Limits {
            requests_per_minute: rpm,
            burst,
            tokens_per_minute: tpm,
            max_concurrent: concurrent,
            tokens_per_day: day,
            tokens_per_month: month,
            budget_per_day: budget_day.map(Money),
            budget_per_month: budget_month.map(Money),
        },
    )
}

proptest! {
    /// A refused admission changes nothing in any scope, whichever scope refused; an admitted one started
    /// within every limit of every scope (even while earlier overruns left some beyond theirs).
    #[test]
    fn refused_admission_changes_no_scope(
        key_limits in limits_strategy(),
        team_limits in limits_strategy(),
        ops in prop::collection::vec(op(), 0..60),
    ) {
        let scopes = [(LimitScope::Key("k".into()), key_limits), (LimitScope::Team("t".into()), team_limits)];
        let limiter = MemoryLimiter::new();
        let mut now = days_from_civil(2027, 12, 30) * DAY_MS;
        let mut outstanding = Vec::new();
        let snapshots = |now| scopes.iter().map(|(s, l)| limiter.snapshot_sync(s, l, now)).collect::<Vec<_>>();
        for op in ops {
            match op {
                Op::Admit { tokens, cost } => {
                    let before = snapshots(now);
                    match limiter.admit_sync(&scopes, Demand { tokens, cost: Money(cost) }, now) {
                        Ok(reservation) => {
                            outstanding.push(reservation);
                            for state in before.iter().flatten() {
                                let amount = match state.kind {
                                    LimitKind::RequestsPerMinute | LimitKind::Concurrent => 1,
                                    LimitKind::BudgetPerDay | LimitKind::BudgetPerMonth => cost,
                                    LimitKind::TokensPerMinute | LimitKind::TokensPerDay | LimitKind::TokensPerMonth => tokens,
                                };
                                prop_assert!(amount == 0 || state.remaining >= amount, "admitted {amount} beyond {state:?}");
                            }
                        }
                        Err(_) => prop_assert_eq!(snapshots(now), before),
                    }
                }
                Op::Settle { pick, tokens, cost } if !outstanding.is_empty() => {
                    let reservation = outstanding.swap_remove(pick % outstanding.len());
                    limiter.settle_sync(reservation, Usage { tokens, cost: Money(cost) }, now);
                }
                Op::Drop { pick } if !outstanding.is_empty() => drop(outstanding.swap_remove(pick % outstanding.len())),
                Op::Settle { .. } | Op::Drop { .. } => {}
                Op::Advance(ms) => now += ms / 1_000, // seconds to a day, so rates matter too
            }
            for snapshot in snapshots(now) {
                for state in snapshot {
                    prop_assert!(state.remaining <= state.limit || state.kind == LimitKind::RequestsPerMinute);
                    if state.used.saturating_add(state.reserved) > state.limit && state.kind != LimitKind::RequestsPerMinute {
                        prop_assert_eq!(state.remaining, 0, "{:?}", state);
                    }
                }
            }
        }
    }
}
