//! Property tests: the invariants that make limits hold, under arbitrary sequences with explicit time.
#![allow(clippy::unwrap_used, reason = "test helpers: a failure is a failed test")]

use std::collections::HashMap;

use portcullis_limits::window::{DAY_MS, days_from_civil};
use portcullis_limits::{
    BucketState, Demand, DenialReason, Gcra, GcraState, LimitKind, Limits, MemoryLimiter, Millis, Money, Period,
    Reservation, Scope, TokenBucket, Usage,
};
use proptest::prelude::*;

const UNITS_PER_TOKEN: u128 = 60_000;

#[derive(Clone, Debug)]
enum BucketOp {
    Take(u64),
    Refund(u64),
    Advance(u64),
    /// Another caller's slightly older `now`.
    Lag(u64),
}

fn bucket_op() -> impl Strategy<Value = BucketOp> {
    prop_oneof![
        (0..20_000u64).prop_map(BucketOp::Take),
        (0..30_000u64).prop_map(BucketOp::Refund),
        (0..120_000u64).prop_map(BucketOp::Advance),
        (0..5_000u64).prop_map(BucketOp::Lag),
    ]
}

/// Applies one op at the clock `now` (advanced or lagged as the op says) and returns the time used.
fn apply(bucket: &TokenBucket, state: &mut BucketState, op: &BucketOp, now: &mut Millis) {
    match *op {
        BucketOp::Take(n) => {
            let before = bucket.available(state, *now);
            let taken = bucket.take(state, n, *now).is_ok();
            // A take succeeds exactly when the whole amount is there.
            assert_eq!(taken, before >= n, "take {n} with {before} available");
        }
        BucketOp::Refund(n) => state.refund(n),
        BucketOp::Advance(ms) => *now += ms,
        BucketOp::Lag(ms) => {
            let lagged = now.saturating_sub(ms);
            assert!(bucket.take(state, 0, lagged).is_ok());
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

/// The four calendar quotas and what the model keeps for each: `(used, reserved)` per window index.
struct Quota {
    kind: LimitKind,
    limit: Option<u64>,
    period: Period,
    money: bool,
    windows: HashMap<u64, (u64, u64)>,
}

struct Outstanding {
    reservation: Reservation,
    demand: Demand,
    day: u64,
    month: u64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Used and reserved match an exact model after every step (so nothing underflows or leaks), and
    /// `used + reserved ≤ limit` always: the settled usage of a window never exceeds its quota or budget.
    #[test]
    fn quotas_and_budgets_are_never_overspent(
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
        let scope = Scope::Key("k".into());
        let scopes = [(scope.clone(), limits.clone())];
        let limiter = MemoryLimiter::new();
        // Start near the end of February of a leap year so runs cross days and months.
        let mut now = days_from_civil(2028, 2, 27) * DAY_MS + start_offset;
        let mut outstanding: Vec<Outstanding> = Vec::new();

        for op in ops {
            match op {
                Op::Admit { tokens, cost } => {
                    let demand = Demand { tokens, cost: Money(cost) };
                    let amount = |q: &Quota| if q.money { cost } else { tokens };
                    let never = quotas.iter().any(|q| q.limit.is_some_and(|l| amount(q) > l));
                    let fits = quotas.iter().all(|q| {
                        let (used, reserved) = q.windows.get(&q.period.index(now)).copied().unwrap_or_default();
                        q.limit.is_none_or(|l| amount(q) == 0 || used + reserved + amount(q) <= l)
                    });
                    match limiter.admit_sync(&scopes, demand, now) {
                        Ok(reservation) => {
                            prop_assert!(!never && fits, "admitted {demand:?} against the model");
                            if limits.is_unlimited() {
                                continue;
                            }
                            for q in &mut quotas {
                                let amount = amount(q);
                                q.windows.entry(q.period.index(now)).or_default().1 += amount;
                            }
                            let (day, month) = (Period::Day.index(now), Period::Month.index(now));
                            outstanding.push(Outstanding { reservation, demand, day, month });
                        }
                        Err(denial) => {
                            let expected = if never { DenialReason::NeverFits } else { DenialReason::QuotaExhausted };
                            prop_assert!(never || !fits, "refused {demand:?}: {denial}");
                            prop_assert_eq!(denial.reason, expected);
                        }
                    }
                }
                Op::Settle { pick, .. } | Op::Drop { pick } if !outstanding.is_empty() => {
                    let held = outstanding.swap_remove(pick % outstanding.len());
                    let actual = match op {
                        Op::Settle { tokens, cost, .. } => Usage { tokens, cost: Money(cost) },
                        _ => Usage { tokens: held.demand.tokens, cost: held.demand.cost },
                    };
                    for q in &mut quotas {
                        let (reserved, actual) = if q.money {
                            (held.demand.cost.0, actual.cost.0)
                        } else {
                            (held.demand.tokens, actual.tokens)
                        };
                        let index = if q.period == Period::Day { held.day } else { held.month };
                        let window = q.windows.entry(index).or_default();
                        window.1 -= reserved;
                        window.0 += actual.min(reserved);
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
                let (used, reserved) = q.windows.get(&q.period.index(now)).copied().unwrap_or_default();
                prop_assert_eq!((state.used, state.reserved), (used, reserved), "{:?}", q.kind);
                prop_assert!(state.used + state.reserved <= limit, "{:?} overspent", q.kind);
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
    /// A refused admission changes nothing in any scope, whichever scope refused; an admitted one never
    /// takes a scope past its concurrency or token-rate limit.
    #[test]
    fn refused_admission_changes_no_scope(
        key_limits in limits_strategy(),
        team_limits in limits_strategy(),
        ops in prop::collection::vec(op(), 0..60),
    ) {
        let scopes = [(Scope::Key("k".into()), key_limits), (Scope::Team("t".into()), team_limits)];
        let limiter = MemoryLimiter::new();
        let mut now = days_from_civil(2027, 12, 30) * DAY_MS;
        let mut outstanding = Vec::new();
        let snapshots = |now| scopes.iter().map(|(s, l)| limiter.snapshot_sync(s, l, now)).collect::<Vec<_>>();
        for op in ops {
            match op {
                Op::Admit { tokens, cost } => {
                    let before = snapshots(now);
                    match limiter.admit_sync(&scopes, Demand { tokens, cost: Money(cost) }, now) {
                        Ok(reservation) => outstanding.push(reservation),
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
                    prop_assert!(state.used + state.reserved <= state.limit || state.kind == LimitKind::RequestsPerMinute,
                        "{state:?}");
                    prop_assert!(state.remaining <= state.limit || state.kind == LimitKind::RequestsPerMinute);
                }
            }
        }
    }
}
