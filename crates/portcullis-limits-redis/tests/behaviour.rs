//! The Redis limiter's own behaviour beyond equivalence: construction errors, seeding, key expiry, and
//! what needs no Redis at all.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests: a failure is a failed test")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{NOON, demand, key, team, usage};
use portcullis_limits::window::DAY_MS;
use portcullis_limits::{DenialReason, LimitKind, Limiter, Limits, Money, Period, Refusal};
use portcullis_limits_redis::{BackendState, OnBackendError, RedisLimiter, RedisLimiterError, RedisLimiterOptions};

fn quota() -> Limits {
    Limits { tokens_per_day: Some(1_000), budget_per_month: Some(Money(5_000)), ..Limits::default() }
}

#[tokio::test]
async fn malformed_options_are_errors_but_an_unreachable_redis_is_not() {
    let url = format!("redis://127.0.0.1:{}", portcullis_testkit::free_port());
    let error = RedisLimiter::connect(RedisLimiterOptions::new("http://nope")).await.unwrap_err();
    assert!(matches!(error, RedisLimiterError::Url(_)), "{error}");
    let error =
        RedisLimiter::connect(RedisLimiterOptions { key_prefix: "a{b".into(), ..RedisLimiterOptions::new(&url) })
            .await
            .unwrap_err();
    assert!(matches!(error, RedisLimiterError::KeyPrefix { .. }), "{error}");
    let error = RedisLimiter::connect(RedisLimiterOptions {
        lease: Duration::from_millis(10),
        ..RedisLimiterOptions::new(&url)
    })
    .await
    .unwrap_err();
    assert!(matches!(error, RedisLimiterError::Option { field: "lease", .. }), "{error}");

    let start = Instant::now();
    let limiter = RedisLimiter::connect(RedisLimiterOptions::new(&url)).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(matches!(limiter.backend_state(), BackendState::Degraded { .. }));
}

#[tokio::test]
async fn never_fits_and_unlimited_scopes_are_answered_without_redis() {
    // Nothing listens on this port: only answers that need no state can be given.
    let url = format!("redis://127.0.0.1:{}", portcullis_testkit::free_port());
    let limiter = RedisLimiter::connect(RedisLimiterOptions::new(url)).await.unwrap();
    let too_big = limiter.admit(&[(key("k"), quota())], demand(1_001, 0), NOON).await;
    let Err(Refusal::Denied(denial)) = too_big else { panic!("never fits, whatever Redis says") };
    assert_eq!((denial.limit, denial.reason), (LimitKind::TokensPerDay, DenialReason::NeverFits));
    let free = limiter.admit(&[(key("k"), Limits::default())], demand(10, 10), NOON).await.unwrap();
    assert!(free.scopes().is_empty());
    free.settle(usage(10, 10), NOON).await;
    assert!(matches!(
        limiter.admit(&[(key("k"), quota())], demand(1, 0), NOON).await,
        Err(Refusal::Unavailable { .. })
    ));
    assert!(limiter.snapshot(&key("k"), &quota(), NOON).await.is_empty(), "nothing known under Deny");
}

#[tokio::test]
async fn seeding_keeps_the_larger_of_redis_and_the_store() {
    let Some((limiter, _)) = common::fresh_limiter("seed").await else { return };
    let scope = key("k");
    let scopes = [(scope.clone(), quota())];
    let running = limiter.admit(&scopes, demand(50, 0), NOON).await.unwrap();
    limiter.seed(&scope, usage(900, 10), usage(2_000, 4_900), NOON).await;
    // Another replica seeds from an older store: Redis keeps what it already counted.
    limiter.seed(&scope, usage(400, 10), usage(2_000, 100), NOON).await;
    let snapshot = limiter.snapshot(&scope, &quota(), NOON).await;
    let day = snapshot.iter().find(|s| s.kind == LimitKind::TokensPerDay).unwrap();
    assert_eq!((day.used, day.reserved), (900, 50), "running reservations stay");
    let month = snapshot.iter().find(|s| s.kind == LimitKind::BudgetPerMonth).unwrap();
    assert_eq!(month.used, 4_900);
    let Err(Refusal::Denied(denial)) = limiter.admit(&scopes, demand(51, 0), NOON).await else { panic!("day spent") };
    assert_eq!(denial.limit, LimitKind::TokensPerDay);
    running.settle(usage(50, 0), NOON).await;
}

#[tokio::test]
async fn keys_expire_after_the_month_they_count() {
    let Some(url) = portcullis_testkit::redis_or_skip() else { return };
    let Some((limiter, prefix)) = common::fresh_limiter("ttl").await else { return };
    let running = limiter.admit(&[(team("t"), quota())], demand(5, 5), NOON).await.unwrap();
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let month_left = Period::Month.until_next(NOON);
    for kind in ["s", "l"] {
        let ttl: i64 =
            redis::cmd("PTTL").arg(format!("{{{prefix}}}:v2:{kind}:t:t")).query_async(&mut connection).await.unwrap();
        let ttl = u64::try_from(ttl).unwrap_or_else(|_| panic!("{kind} key has no expiry: {ttl}"));
        assert!(ttl > month_left && ttl <= month_left + DAY_MS, "{kind}: {ttl} ms");
    }
    running.settle(usage(5, 5), NOON).await;
}

#[tokio::test]
async fn keys_outlive_a_token_debt_and_a_carried_excess() {
    let Some(url) = portcullis_testkit::redis_or_skip() else { return };
    let Some((limiter, prefix)) = common::fresh_limiter("outlive").await else { return };
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut ttl = async |scope: &str| -> u64 {
        let ttl: i64 =
            redis::cmd("PTTL").arg(format!("{{{prefix}}}:v2:s:{scope}")).query_async(&mut connection).await.unwrap();
        u64::try_from(ttl).unwrap_or_else(|_| panic!("{scope} has no expiry: {ttl}"))
    };
    // 100 000 tokens over a bucket of 1 a minute: a debt of about 69 days, longer than the month.
    let slow = Limits { tokens_per_minute: Some(1), ..Limits::default() };
    let r = limiter.admit(&[(key("debt"), slow)], demand(1, 0), NOON).await.unwrap();
    r.settle(usage(100_000, 0), NOON).await;
    assert!(ttl("k:debt").await > 100_000 * 60_000, "the keys outlive the debt");
    // 3 500 of a month budget of 1 000: carried into August, September and October.
    let budget = Limits { budget_per_month: Some(Money(1_000)), ..Limits::default() };
    let r = limiter.admit(&[(key("carry"), budget.clone())], demand(1, 10), NOON).await.unwrap();
    r.settle(usage(1, 3_500), NOON).await;
    assert!(ttl("k:carry").await > common::utc(2027, 11, 1, 0, 0) - NOON, "the keys outlive the excess");
    let october = common::utc(2027, 10, 15, 0, 0);
    let snapshot = limiter.snapshot(&key("carry"), &budget, october).await;
    assert_eq!((snapshot[0].used, snapshot[0].remaining), (500, 500));
}

#[tokio::test]
async fn works_through_the_trait_object() {
    let Some((limiter, _)) = common::fresh_limiter("dyn").await else { return };
    let limiter: Arc<dyn Limiter> = Arc::new(limiter);
    let limits = Limits { tokens_per_day: Some(100_000), max_concurrent: Some(2), ..Limits::default() };
    let scopes = [(key("k"), limits.clone()), (team("t"), limits.clone())];
    limiter.seed(&team("t"), usage(5, 5), usage(50, 50), NOON).await;
    let reservation = limiter.admit(&scopes, demand(100, 10), NOON).await.unwrap();
    assert_eq!(reservation.scopes(), [&team("t"), &key("k")], "in scope order");
    limiter.settle(reservation, usage(40, 4), NOON).await;
    let snapshot = limiter.snapshot(&team("t"), &limits, NOON).await;
    let day = snapshot.iter().find(|s| s.kind == LimitKind::TokensPerDay).unwrap();
    assert_eq!(day.used, 45);
}

#[tokio::test]
async fn local_policy_seeds_each_replicas_share_of_the_usage() {
    let url = format!("redis://127.0.0.1:{}", portcullis_testkit::free_port());
    let limiter = RedisLimiter::connect(RedisLimiterOptions {
        on_backend_error: OnBackendError::Local { replicas: 3 },
        ..RedisLimiterOptions::new(url)
    })
    .await
    .unwrap();
    let limits = Limits { tokens_per_day: Some(3_000), ..Limits::default() };
    limiter.seed(&key("k"), usage(1_500, 0), usage(1_500, 0), NOON).await;
    let snapshot = limiter.snapshot(&key("k"), &limits, NOON).await;
    let day = snapshot.iter().find(|s| s.kind == LimitKind::TokensPerDay).unwrap();
    assert_eq!((day.limit, day.used, day.remaining), (1_000, 500, 500));
}
