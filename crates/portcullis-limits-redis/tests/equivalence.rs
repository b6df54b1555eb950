//! The Redis limiter and the in-memory limiter, fed the same random sequences side by side, decide
//! identically: the same admissions and denials, the same rate headers, the same snapshots after every
//! step. Covers money far above 2^53 pico-units, day and month rollover (through a leap day and New
//! Year), bursts, rate changes on reload, concurrency, lagging callers, settlement and dropped reservations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests: a failure is a failed test")]

mod common;

use std::sync::OnceLock;

use common::utc;
use portcullis_limits::window::DAY_MS;
use portcullis_limits::{Demand, LimitScope, Limiter, Limits, MemoryLimiter, Millis, Money, Reservation, Usage};
use proptest::prelude::*;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
}

const SCOPES: usize = 4;

fn scope(i: usize) -> LimitScope {
    match i {
        0 => LimitScope::Key("k1".into()),
        1 => LimitScope::Key("k2".into()),
        2 => LimitScope::Team("t".into()),
        _ => LimitScope::Global,
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Scopes by bit mask (caller order: the mask's bits from a rotating start, with a repeat sometimes).
    Admit {
        mask: u8,
        start: usize,
        repeat: bool,
        tokens: u64,
        cost: u64,
        lag: Option<u64>,
    },
    Settle {
        pick: usize,
        tokens: u64,
        cost: u64,
    },
    Drop {
        pick: usize,
    },
    Advance(u64),
    /// A config reload: the scope switches to its other limits.
    Reload {
        scope: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1..16u8, 0..SCOPES, prop::bool::weighted(0.1), 0..3_000u64, 0..3_000u64, prop::option::weighted(0.1, prop_oneof![1..90_000u64, 1..DAY_MS]))
            .prop_map(|(mask, start, repeat, tokens, cost, lag)| Op::Admit { mask, start, repeat, tokens, cost, lag }),
        3 => (any::<usize>(), 0..4_000u64, 0..4_000u64).prop_map(|(pick, tokens, cost)| Op::Settle { pick, tokens, cost }),
        1 => any::<usize>().prop_map(|pick| Op::Drop { pick }),
        3 => prop_oneof![0..3_000u64, 0..120_000u64, 0..DAY_MS].prop_map(Op::Advance),
        1 => (0..SCOPES).prop_map(|scope| Op::Reload { scope }),
    ]
}

/// Limits in "units": token amounts as they are, money multiplied by the case's money scale later.
fn limits() -> impl Strategy<Value = Limits> {
    let small = |max: u64| prop::option::weighted(0.5, 0..max);
    (
        prop::option::weighted(0.5, 0..30u64),
        small(12),
        prop::option::weighted(0.5, 0..8_000u64),
        small(4),
        (small(20_000), small(60_000), small(20_000), small(60_000)),
    )
        .prop_map(|(rpm, burst, tpm, concurrent, (day, month, budget_day, budget_month))| Limits {
            requests_per_minute: rpm,
            burst,
            tokens_per_minute: tpm,
            max_concurrent: concurrent,
            tokens_per_day: day,
            tokens_per_month: month,
            budget_per_day: budget_day.map(Money),
            budget_per_month: budget_month.map(Money),
        })
}

/// Money in units of `scale` pico-units: with the large scales every sum lies far above 2^53.
fn scaled(limits: &Limits, scale: u64) -> Limits {
    let money = |m: Option<Money>| m.map(|m| Money(m.0.saturating_mul(scale)));
    Limits {
        budget_per_day: money(limits.budget_per_day),
        budget_per_month: money(limits.budget_per_month),
        ..limits.clone()
    }
}

fn start_time() -> impl Strategy<Value = Millis> {
    prop_oneof![
        // Two days before a leap day's month end, and New Year's Eve.
        (0..3 * DAY_MS).prop_map(|offset| utc(2028, 2, 27, 0, 0) + offset),
        (0..2 * DAY_MS).prop_map(|offset| utc(2027, 12, 30, 0, 0) + offset),
        (0..DAY_MS).prop_map(|offset| utc(2027, 7, 21, 0, 0) + offset),
    ]
}

fn money_scale() -> impl Strategy<Value = u64> {
    // 1 pico-unit, ~2^53 / 1000 (sums cross 2^53), and ~1e15 + 7 (odd, sums up to ~1e19).
    prop_oneof![Just(1u64), Just(9_007_199_254_741u64), Just(1_000_000_000_000_007u64)]
}

struct Held {
    memory: Reservation,
    redis: Reservation,
}

#[derive(Debug)]
struct Case {
    limits: Vec<(Limits, Limits)>,
    scale: u64,
    start: Millis,
    seeds: Vec<(usize, u64, u64)>,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec((limits(), limits()), SCOPES),
        money_scale(),
        start_time(),
        prop::collection::vec((0..SCOPES, 0..5_000u64, 0..5_000u64), 0..3),
        prop::collection::vec(op(), 1..70),
    )
        .prop_map(|(limits, scale, start, seeds, ops)| Case { limits, scale, start, seeds, ops })
}

async fn run(case: Case) -> Result<(), TestCaseError> {
    let Some((redis, _prefix)) = common::fresh_limiter("equivalence").await else { return Ok(()) };
    let memory = MemoryLimiter::new();
    let scale = case.scale;
    let mut current: Vec<Limits> = case.limits.iter().map(|(a, _)| scaled(a, scale)).collect();
    let mut alternate: Vec<Limits> = case.limits.iter().map(|(_, b)| scaled(b, scale)).collect();
    let mut now = case.start;

    // Seeding a fresh state: max(current, seeded) and "replace" agree.
    let mut seeded = [false; SCOPES];
    for &(i, tokens, cost) in &case.seeds {
        if std::mem::replace(&mut seeded[i], true) {
            continue;
        }
        let day = Usage { tokens, cost: Money(cost.saturating_mul(scale)) };
        let month = Usage { tokens: tokens * 3, cost: Money(cost.saturating_mul(3).saturating_mul(scale)) };
        memory.seed(&scope(i), day, month, now).await;
        redis.seed(&scope(i), day, month, now).await;
    }

    let mut held: Vec<Held> = Vec::new();
    for (step, op) in case.ops.into_iter().enumerate() {
        match op {
            Op::Admit { mask, start, repeat, tokens, cost, lag } => {
                let mut list: Vec<(LimitScope, Limits)> = (0..SCOPES)
                    .map(|k| (start + k) % SCOPES)
                    .filter(|&i| mask & (1 << i) != 0)
                    .map(|i| (scope(i), current[i].clone()))
                    .collect();
                if repeat {
                    // A scope listed twice counts once, with its first limits.
                    let first = list[0].0.clone();
                    list.push((first, Limits { max_concurrent: Some(0), ..Limits::default() }));
                }
                let demand = Demand { tokens, cost: Money(cost.saturating_mul(scale)) };
                let at = lag.map_or(now, |lag| now.saturating_sub(lag));
                let from_memory = memory.admit(&list, demand, at).await;
                let from_redis = redis.admit(&list, demand, at).await;
                match (from_memory, from_redis) {
                    (Ok(memory), Ok(redis)) => {
                        prop_assert_eq!(memory.headers, redis.headers, "headers at step {}", step);
                        prop_assert_eq!(memory.scopes(), redis.scopes(), "scopes at step {}", step);
                        held.push(Held { memory, redis });
                    }
                    (Err(memory), Err(redis)) => prop_assert_eq!(memory, redis, "refusal at step {}", step),
                    (memory, redis) => {
                        prop_assert!(
                            false,
                            "step {}: memory {:?} but redis {:?}",
                            step,
                            memory.map(|r| r.headers),
                            redis.map(|r| r.headers)
                        );
                    }
                }
            }
            Op::Settle { pick, tokens, cost } if !held.is_empty() => {
                let Held { memory: m, redis: r } = held.swap_remove(pick % held.len());
                let actual = Usage { tokens, cost: Money(cost.saturating_mul(scale)) };
                memory.settle(m, actual, now).await;
                redis.settle(r, actual, now).await;
            }
            Op::Drop { pick } if !held.is_empty() => {
                drop(held.swap_remove(pick % held.len()));
                redis.drain().await;
            }
            Op::Settle { .. } | Op::Drop { .. } => {}
            Op::Advance(ms) => now += ms,
            Op::Reload { scope } => std::mem::swap(&mut current[scope], &mut alternate[scope]),
        }
        for (i, limits) in current.iter().enumerate() {
            let from_memory = memory.snapshot(&scope(i), limits, now).await;
            let from_redis = redis.snapshot(&scope(i), limits, now).await;
            prop_assert_eq!(from_memory, from_redis, "snapshot of {} after step {}", scope(i), step);
        }
    }
    prop_assert_eq!(redis.fallback_count(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn redis_limiter_decides_exactly_like_the_memory_limiter(case in case()) {
        runtime().block_on(run(case))?;
    }
}

/// Steps that random sequences hit rarely, on both limiters: each step admits (and settles at once) one
/// request for one scope whose limits may have been reloaded, at a time that may lag. It uses half its
/// tokens and a third of its cost, or `over` times both (an overrun) when that is set.
struct Step {
    limits: Limits,
    tokens: u64,
    cost: u64,
    at: Millis,
    over: Option<u64>,
}

async fn agree_on(name: &str, steps: &[Step]) {
    let Some((redis, _)) = common::fresh_limiter(name).await else { return };
    let memory = MemoryLimiter::new();
    let scope = LimitScope::Key(name.into());
    for (n, step) in steps.iter().enumerate() {
        let scopes = [(scope.clone(), step.limits.clone())];
        let demand = Demand { tokens: step.tokens, cost: Money(step.cost) };
        let m = memory.admit(&scopes, demand, step.at).await;
        let r = redis.admit(&scopes, demand, step.at).await;
        let headers =
            |r: &Result<Reservation, portcullis_limits::Refusal>| r.as_ref().map(|r| r.headers).map_err(Clone::clone);
        assert_eq!(headers(&m), headers(&r), "{name} step {n}");
        if let (Ok(m), Ok(r)) = (m, r) {
            let actual = match step.over {
                Some(times) => Usage { tokens: step.tokens * times, cost: Money(step.cost.saturating_mul(times)) },
                None => Usage { tokens: step.tokens / 2, cost: Money(step.cost / 3) },
            };
            memory.settle(m, actual, step.at).await;
            redis.settle(r, actual, step.at).await;
        }
        assert_eq!(
            memory.snapshot(&scope, &step.limits, step.at).await,
            redis.snapshot(&scope, &step.limits, step.at).await,
            "{name} step {n}"
        );
    }
}

#[test]
fn rate_changes_convert_the_arrival_time_like_the_memory_limiter() {
    let rate =
        |rpm: u64, burst: u64| Limits { requests_per_minute: Some(rpm), burst: Some(burst), ..Limits::default() };
    // Rates that do not divide a minute leave remainders that each conversion must round up.
    let rates = [(7, 1), (1, 1), (13, 2), (60, 1), (7, 3), (59, 1), (1_000_003, 5), (3, 1), (1, 4)];
    let steps: Vec<Step> = (0..60u64)
        .map(|n| {
            let (rpm, burst) = rates[(n as usize * 5) % rates.len()];
            Step { limits: rate(rpm, burst), tokens: 1, cost: 0, at: common::NOON + n * 1_733, over: None }
        })
        .collect();
    runtime().block_on(agree_on("rate_changes", &steps));
}

#[test]
fn lagging_callers_use_the_latest_window_like_the_memory_limiter() {
    let quota =
        Limits { tokens_per_day: Some(1_000), budget_per_month: Some(Money(u64::MAX - 5)), ..Limits::default() };
    let midnight = utc(2027, 12, 31, 0, 0) + DAY_MS; // New Year: day and month roll together
    let times = [midnight - 5, midnight + 5, midnight - 1_000, midnight - 1, midnight + 1, midnight - 60_000, midnight];
    let steps: Vec<Step> = times
        .iter()
        .map(|&at| Step { limits: quota.clone(), tokens: 300, cost: u64::MAX / 5, at, over: None })
        .collect();
    runtime().block_on(agree_on("lagging", &steps));
}

#[test]
fn saturating_budgets_and_odd_rates_agree() {
    let cases = [
        Limits { budget_per_month: Some(Money(u64::MAX - 5)), ..Limits::default() },
        Limits { requests_per_minute: Some(7), burst: Some(3), tokens_per_minute: Some(7), ..Limits::default() },
        Limits { requests_per_minute: Some(1), burst: Some(50), ..Limits::default() },
    ];
    for (i, limits) in cases.iter().enumerate() {
        let steps: Vec<Step> = (0..60u64)
            .map(|n| Step {
                limits: limits.clone(),
                tokens: n % 8,
                cost: u64::MAX / 3 - n,
                at: common::NOON + 997 * n * n,
                over: None,
            })
            .collect();
        runtime().block_on(agree_on(&format!("edge{i}"), &steps));
    }
}

#[test]
fn overruns_across_reloads_and_window_ends_agree() {
    // Token debts under reloaded rates, and quota excesses carried across a month's last days and New Year,
    // some far above 2^53 pico-units.
    let budget = Some(Money(u64::MAX / 7));
    let limits = [
        Limits {
            tokens_per_minute: Some(700),
            tokens_per_day: Some(5_000),
            budget_per_month: budget,
            ..Limits::default()
        },
        Limits { tokens_per_minute: Some(90), budget_per_month: budget, ..Limits::default() },
        Limits {
            tokens_per_day: Some(900),
            tokens_per_month: Some(20_000),
            budget_per_day: budget,
            ..Limits::default()
        },
    ];
    let start = utc(2027, 12, 29, 20, 0);
    let steps: Vec<Step> = (0..80u64)
        .map(|n| Step {
            limits: limits[(n as usize * 7 / 3) % limits.len()].clone(),
            tokens: 20 + n % 60,
            cost: u64::MAX / 40 + n,
            at: start + n * n * 61_111,
            over: (n % 3 != 1).then_some(1 + n % 9),
        })
        .collect();
    runtime().block_on(agree_on("overruns", &steps));
}
