//! One story of overruns — requests that used more than they reserved — told to both limiters, with the
//! figures each must give: the actual usage is charged in full, a token debt is repaid at the bucket's
//! rate, a quota's excess is carried into the next windows, and every refusal's retry time is exact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests: a failure is a failed test")]

mod common;

use common::{NOON, demand, key, team, usage, utc};
use portcullis_limits::window::DAY_MS;
use portcullis_limits::{
    DenialReason, LimitKind, LimitScope, LimitState, Limiter, Limits, MemoryLimiter, Millis, Money, RateState, Refusal,
};

async fn state(limiter: &dyn Limiter, scope: &LimitScope, limits: &Limits, now: Millis, kind: LimitKind) -> LimitState {
    let snapshot = limiter.snapshot(scope, limits, now).await;
    *snapshot.iter().find(|s| s.kind == kind).unwrap_or_else(|| panic!("no {kind:?} in {snapshot:?}"))
}

/// `(limit, reason, retry_after_ms)` of a refusal.
fn refused<T>(result: Result<T, Refusal>) -> (LimitKind, DenialReason, Option<u64>) {
    match result {
        Err(Refusal::Denied(denial)) => (denial.limit, denial.reason, denial.retry_after_ms),
        Err(refusal) => panic!("{refusal}"),
        Ok(_) => panic!("admitted"),
    }
}

/// The story; `drained` waits until dropped reservations are released.
async fn overrun_story(limiter: &dyn Limiter, drained: impl AsyncFn()) {
    let midnight = utc(2027, 7, 22, 0, 0);

    // A token bucket of 600 a minute (10 a second) charged 1 000 for a reservation of 100: 400 below empty.
    let tpm = Limits { tokens_per_minute: Some(600), ..Limits::default() };
    let scopes = [(key("tpm"), tpm.clone())];
    let r = limiter.admit(&scopes, demand(100, 0), NOON).await.unwrap();
    limiter.settle(r, usage(1_000, 0), NOON).await;
    let bucket = state(limiter, &key("tpm"), &tpm, NOON, LimitKind::TokensPerMinute).await;
    assert_eq!((bucket.used, bucket.reserved, bucket.remaining, bucket.reset_ms), (1_000, 0, 0, Some(100_000)));
    // 60 tokens fit once 460 have refilled.
    let refusal = refused(limiter.admit(&scopes, demand(60, 0), NOON).await);
    assert_eq!(refusal, (LimitKind::TokensPerMinute, DenialReason::RateLimited, Some(46_000)));
    assert_eq!(refused(limiter.admit(&scopes, demand(60, 0), NOON + 45_999).await).2, Some(1));
    let r = limiter.admit(&scopes, demand(60, 0), NOON + 46_000).await.unwrap();
    assert_eq!(r.headers.tokens, Some(RateState { limit: 600, remaining: 0, reset_ms: 60_000 }));
    limiter.settle(r, usage(60, 0), NOON + 46_000).await;

    // A day quota of 1 000 tokens and a month budget of 10 000 charged 3 500 tokens and 12 000 for a
    // reservation of 100 and 100; the team counts the tokens too.
    let key_limits = Limits { tokens_per_day: Some(1_000), budget_per_month: Some(Money(10_000)), ..Limits::default() };
    let team_limits = Limits { tokens_per_month: Some(100_000), ..Limits::default() };
    let scopes = [(key("quota"), key_limits.clone()), (team("t"), team_limits.clone())];
    let r = limiter.admit(&scopes, demand(100, 100), NOON).await.unwrap();
    limiter.settle(r, usage(3_500, 12_000), NOON).await;
    let day = state(limiter, &key("quota"), &key_limits, NOON, LimitKind::TokensPerDay).await;
    // Whole again on the 4th day after: 3 500 carried, less 1 000 a day.
    assert_eq!((day.used, day.reserved, day.remaining), (3_500, 0, 0));
    assert_eq!(day.reset_ms, Some(midnight + 3 * DAY_MS - NOON));
    let budget = state(limiter, &key("quota"), &key_limits, NOON, LimitKind::BudgetPerMonth).await;
    assert_eq!((budget.used, budget.remaining), (12_000, 0));
    assert_eq!(budget.reset_ms, Some(utc(2027, 9, 1, 0, 0) - NOON), "August repays the 2 000 over");
    assert_eq!(state(limiter, &team("t"), &team_limits, NOON, LimitKind::TokensPerMonth).await.used, 3_500);
    // 10 tokens fit on the day that carries 500: the third after this one.
    let refusal = refused(limiter.admit(&scopes, demand(10, 0), NOON).await);
    assert_eq!(refusal, (LimitKind::TokensPerDay, DenialReason::QuotaExhausted, Some(midnight + 2 * DAY_MS - NOON)));
    for (days, carried) in [(0, 2_500), (1, 1_500), (2, 500), (3, 0)] {
        let at = midnight + days * DAY_MS;
        assert_eq!(state(limiter, &key("quota"), &key_limits, at, LimitKind::TokensPerDay).await.used, carried);
    }
    refused(limiter.admit(&scopes, demand(10, 0), midnight + 2 * DAY_MS - 1).await);
    let r = limiter.admit(&scopes, demand(10, 0), midnight + 2 * DAY_MS).await.unwrap();
    limiter.settle(r, usage(10, 0), midnight + 2 * DAY_MS).await;
    // August starts with the 2 000 July went over its budget.
    let august = utc(2027, 8, 1, 0, 0);
    let refusal = refused(limiter.admit(&scopes, demand(1, 9_000), august).await);
    assert_eq!(
        refusal,
        (LimitKind::BudgetPerMonth, DenialReason::QuotaExhausted, Some(utc(2027, 9, 1, 0, 0) - august))
    );
    let r = limiter.admit(&scopes, demand(1, 8_000), august).await.unwrap();
    limiter.settle(r, usage(1, 8_000), august).await;
    assert_eq!(state(limiter, &key("quota"), &key_limits, august, LimitKind::BudgetPerMonth).await.used, 10_000);

    // Reserved before midnight, settled after it: the overrun is charged to the new day.
    let late = Limits { tokens_per_day: Some(1_000), ..Limits::default() };
    let scopes = [(key("late"), late.clone())];
    let r = limiter.admit(&scopes, demand(100, 0), midnight - 60_000).await.unwrap();
    let next = limiter.admit(&scopes, demand(10, 0), midnight + 60_000).await.unwrap();
    limiter.settle(r, usage(700, 0), midnight + 60_000).await;
    let day = state(limiter, &key("late"), &late, midnight + 60_000, LimitKind::TokensPerDay).await;
    assert_eq!((day.used, day.reserved), (600, 10));
    limiter.settle(next, usage(10, 0), midnight + 60_000).await;

    // A debt survives a reload that lowers the rate: empty at the new size plus the debt, repaid at it.
    let wide = Limits { tokens_per_minute: Some(1_000), ..Limits::default() };
    let narrow = Limits { tokens_per_minute: Some(100), ..Limits::default() };
    let r = limiter.admit(&[(key("reload"), wide)], demand(100, 0), NOON).await.unwrap();
    limiter.settle(r, usage(1_500, 0), NOON).await;
    let bucket = state(limiter, &key("reload"), &narrow, NOON, LimitKind::TokensPerMinute).await;
    assert_eq!((bucket.used, bucket.remaining, bucket.reset_ms), (600, 0, Some(360_000)));
    let scopes = [(key("reload"), narrow)];
    assert_eq!(refused(limiter.admit(&scopes, demand(100, 0), NOON).await).2, Some(360_000));
    limiter.admit(&scopes, demand(100, 0), NOON + 360_000).await.unwrap().settle(usage(100, 0), NOON + 360_000).await;

    // A reservation dropped unsettled is charged its whole reservation, no more and no refund.
    let both = Limits { tokens_per_day: Some(1_000), tokens_per_minute: Some(1_000), ..Limits::default() };
    drop(limiter.admit(&[(key("dropped"), both.clone())], demand(300, 0), NOON).await.unwrap());
    drained().await;
    let day = state(limiter, &key("dropped"), &both, NOON, LimitKind::TokensPerDay).await;
    assert_eq!((day.used, day.reserved), (300, 0));
    assert_eq!(state(limiter, &key("dropped"), &both, NOON, LimitKind::TokensPerMinute).await.remaining, 700);
}

#[tokio::test]
async fn the_memory_limiter_charges_overruns_in_full_and_until_repaid() {
    overrun_story(&MemoryLimiter::new(), async || {}).await;
}

#[tokio::test]
async fn the_redis_limiter_charges_overruns_in_full_and_until_repaid() {
    let Some((limiter, _)) = common::fresh_limiter("overrun").await else { return };
    overrun_story(&limiter, async || limiter.drain().await).await;
    assert_eq!(limiter.fallback_count(), 0);
}
