//! One story of quotas held by running requests, told to both limiters: a demand that fits what is used
//! but not what is reserved is refused as held (waiting can help), one that does not fit what is used as
//! spent, and either says what is left now — tokens, and money far above 2^53 pico-units, where the
//! script's limbs must stay exact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests: a failure is a failed test")]

mod common;

use common::{NOON, demand, key, team, usage, utc};
use portcullis_limits::{DenialReason, LimitKind, Limiter, Limits, MemoryLimiter, Money, Refusal};

/// `(limit, reason, retry_after_ms, available)` of a refusal.
fn refused<T>(result: Result<T, Refusal>) -> (LimitKind, DenialReason, Option<u64>, Option<u64>) {
    match result {
        Err(Refusal::Denied(denial)) => (denial.limit, denial.reason, denial.retry_after_ms, denial.available),
        Err(refusal) => panic!("{refusal}"),
        Ok(_) => panic!("admitted"),
    }
}

async fn held_story(limiter: &dyn Limiter) {
    use DenialReason::{HeldByReservations as Held, QuotaExhausted as Spent, RateLimited};

    // 2 000 tokens a day: 1 200 reserved, then 300 of another request used.
    let day = Limits { tokens_per_day: Some(2_000), ..Limits::default() };
    let scopes = [(key("k"), day.clone())];
    let running = limiter.admit(&scopes, demand(1_200, 0), NOON).await.unwrap();
    limiter.admit(&scopes, demand(300, 0), NOON).await.unwrap().settle(usage(300, 0), NOON).await;
    assert_eq!(
        refused(limiter.admit(&scopes, demand(501, 0), NOON).await),
        (LimitKind::TokensPerDay, Held, None, Some(500))
    );
    assert_eq!(refused(limiter.admit(&scopes, demand(1_700, 0), NOON).await).1, Held, "300 used + 1 700 = the limit");
    let midnight_in = utc(2027, 7, 22, 0, 0) - NOON;
    assert_eq!(
        refused(limiter.admit(&scopes, demand(1_701, 0), NOON).await),
        (LimitKind::TokensPerDay, Spent, Some(midnight_in), Some(500))
    );
    // The held request fits once the running one settles at what it used.
    limiter.settle(running, usage(18, 0), NOON).await;
    limiter.admit(&scopes, demand(501, 0), NOON).await.unwrap().settle(usage(18, 0), NOON).await;

    // Reservations of a day that has ended hold nothing in the next one.
    let late = utc(2027, 7, 21, 23, 59);
    let yesterday = limiter.admit(&[(key("late"), day.clone())], demand(1_900, 0), late).await.unwrap();
    let next_day = utc(2027, 7, 22, 0, 0);
    limiter
        .admit(&[(key("late"), day.clone())], demand(2_000, 0), next_day)
        .await
        .unwrap()
        .settle(usage(1, 0), next_day)
        .await;
    limiter.settle(yesterday, usage(1_900, 0), next_day).await;

    // A budget in pico-units far above 2^53: held, and spent, with what is left exact.
    let big = (1u64 << 53) + 1;
    let budget = Limits { budget_per_month: Some(Money(3 * big)), ..Limits::default() };
    let scopes = [(team("t"), budget)];
    let running = limiter.admit(&scopes, demand(1, 2 * big), NOON).await.unwrap();
    assert_eq!(
        refused(limiter.admit(&scopes, demand(1, big + 1), NOON).await),
        (LimitKind::BudgetPerMonth, Held, None, Some(big))
    );
    limiter.settle(running, usage(1, 2 * big + 1), NOON).await;
    let refusal = refused(limiter.admit(&scopes, demand(1, big), NOON).await);
    assert_eq!((refusal.1, refusal.3), (Spent, Some(big - 1)));

    // A rate limit is reported before reservations that may settle: it refuses at once.
    let both = Limits { requests_per_minute: Some(1), tokens_per_day: Some(100), ..Limits::default() };
    let scopes = [(key("rate"), both)];
    let running = limiter.admit(&scopes, demand(90, 0), NOON).await.unwrap();
    let refusal = refused(limiter.admit(&scopes, demand(20, 0), NOON).await);
    assert_eq!((refusal.0, refusal.1, refusal.3), (LimitKind::RequestsPerMinute, RateLimited, None));
    limiter.settle(running, usage(10, 0), NOON).await;
}

#[tokio::test]
async fn the_memory_limiter_tells_held_quotas_from_spent_ones() {
    held_story(&MemoryLimiter::new()).await;
}

#[tokio::test]
async fn the_redis_limiter_tells_held_quotas_from_spent_ones() {
    let Some((limiter, _)) = common::fresh_limiter("held").await else { return };
    held_story(&limiter).await;
    assert_eq!(limiter.fallback_count(), 0);
}
