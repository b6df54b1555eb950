//! Outages, against a `redis-server` the test owns: the Deny policy refuses quickly, the Local policy
//! admits within each replica's share, and shared counting resumes when Redis is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests: a failure is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::{NOON, demand, key, usage};
use portcullis_limits::{DenialReason, LimitKind, Limiter, Limits, Refusal};
use portcullis_limits_redis::{BackendState, OnBackendError, RedisLimiter, RedisLimiterOptions};
use portcullis_testkit::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(250);
const RETRY: Duration = Duration::from_millis(500);

async fn limiter(server: &RedisServer, prefix: &str, policy: OnBackendError) -> RedisLimiter {
    RedisLimiter::connect(RedisLimiterOptions {
        key_prefix: prefix.to_owned(),
        timeout: TIMEOUT,
        retry_interval: RETRY,
        on_backend_error: policy,
        ..RedisLimiterOptions::new(server.url())
    })
    .await
    .unwrap()
}

fn rate(rpm: u64) -> Limits {
    Limits { requests_per_minute: Some(rpm), ..Limits::default() }
}

/// Admits (and settles) a probe request until the limiter counts in Redis again; panics after 10 s.
async fn wait_until_shared(limiter: &RedisLimiter) -> Duration {
    let start = Instant::now();
    let mut n = 0u64;
    while limiter.backend_state() != BackendState::Shared {
        assert!(start.elapsed() < Duration::from_secs(10), "Redis limiter did not recover");
        n += 1;
        if let Ok(reservation) = limiter.admit(&[(key(&format!("probe{n}")), rate(1_000))], demand(0, 0), NOON).await {
            reservation.settle(usage(0, 0), NOON).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

async fn redis_has_key(url: &str, key: &str) -> bool {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("EXISTS").arg(key).query_async::<i64>(&mut connection).await.unwrap() == 1
}

fn is_unavailable(result: &Result<portcullis_limits::Reservation, Refusal>) -> bool {
    matches!(result, Err(Refusal::Unavailable { retry_after_ms }) if *retry_after_ms > 0 && *retry_after_ms <= 500)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_policy_refuses_quickly_while_redis_is_down_and_recovers_when_it_returns() {
    let Some(mut server) = RedisServer::start_or_skip().await else { return };
    server.stop();
    let prefix = portcullis_testkit::unique_name("deny");
    let scopes = [(key("k"), rate(60))];

    // Built while Redis is down: no error, it starts degraded.
    let limiter = limiter(&server, &prefix, OnBackendError::Deny).await;
    assert!(matches!(limiter.backend_state(), BackendState::Degraded { .. }));
    assert!(is_unavailable(&limiter.admit(&scopes, demand(1, 0), NOON).await));

    server.restart().await;
    let recovered_in = wait_until_shared(&limiter).await;
    assert!(recovered_in < 3 * RETRY, "recovered in {recovered_in:?}");
    limiter.admit(&scopes, demand(1, 0), NOON).await.unwrap();

    // Killed: the first call fails fast, the following ones skip Redis altogether.
    server.stop();
    let fallbacks = limiter.fallback_count();
    let start = Instant::now();
    assert!(is_unavailable(&limiter.admit(&scopes, demand(1, 0), NOON).await));
    assert!(start.elapsed() < Duration::from_millis(600), "first refusal took {:?}", start.elapsed());
    assert!(matches!(limiter.backend_state(), BackendState::Degraded { .. }));
    let start = Instant::now();
    for _ in 0..100 {
        assert!(is_unavailable(&limiter.admit(&scopes, demand(1, 0), NOON).await));
    }
    assert!(start.elapsed() < Duration::from_millis(100), "breaker-open refusals took {:?}", start.elapsed());
    assert_eq!(limiter.fallback_count(), fallbacks + 101);

    // Back (empty: no persistence): shared counting resumes in Redis.
    server.restart().await;
    wait_until_shared(&limiter).await;
    let reservation = limiter.admit(&scopes, demand(1, 0), NOON).await.unwrap();
    assert!(redis_has_key(&server.url(), &format!("{{{prefix}}}:v2:s:k:k")).await);
    reservation.settle(usage(1, 0), NOON).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_fails_calls_within_the_timeout() {
    let Some(server) = RedisServer::start_or_skip().await else { return };
    let prefix = portcullis_testkit::unique_name("hung");
    let limiter = limiter(&server, &prefix, OnBackendError::Deny).await;
    let scopes = [(key("k"), rate(60))];
    let running = limiter.admit(&scopes, demand(1, 0), NOON).await.unwrap();

    server.freeze();
    let start = Instant::now();
    assert!(is_unavailable(&limiter.admit(&scopes, demand(1, 0), NOON).await));
    let took = start.elapsed();
    assert!(took >= TIMEOUT && took < TIMEOUT * 3, "refused after {took:?}");
    // A settlement does not hang either (the breaker is open: it is left to the lease).
    let start = Instant::now();
    running.settle(usage(1, 0), NOON).await;
    assert!(start.elapsed() < TIMEOUT * 2);

    server.thaw();
    wait_until_shared(&limiter).await;
    limiter.admit(&scopes, demand(1, 0), NOON).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_policy_admits_each_replicas_share_while_degraded_then_shares_again() {
    let Some(mut server) = RedisServer::start_or_skip().await else { return };
    let prefix = portcullis_testkit::unique_name("local");
    let limiter = limiter(&server, &prefix, OnBackendError::Local { replicas: 3 }).await;
    assert_eq!(limiter.backend_state(), BackendState::Shared);
    let limits = Limits {
        requests_per_minute: Some(60),
        max_concurrent: Some(3),
        tokens_per_day: Some(3_000),
        ..Limits::default()
    };
    let shared = limiter.admit(&[(key("before"), limits.clone())], demand(1, 0), NOON).await.unwrap();
    assert!(redis_has_key(&server.url(), &format!("{{{prefix}}}:v2:s:k:before")).await);
    shared.settle(usage(1, 0), NOON).await;

    server.stop();
    let scopes = [(key("k"), limits.clone())];
    let mut admitted = 0;
    for _ in 0..30 {
        match limiter.admit(&scopes, demand(10, 0), NOON).await {
            Ok(reservation) => {
                admitted += 1;
                reservation.settle(usage(10, 0), NOON).await;
            }
            Err(Refusal::Denied(denial)) => assert_eq!(denial.limit, LimitKind::RequestsPerMinute),
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!(admitted, 20, "60 per minute over 3 replicas");
    assert!(matches!(limiter.backend_state(), BackendState::Degraded { .. }));
    assert!(limiter.fallback_count() >= 30);

    // Concurrency 3 over 3 replicas: one at a time here.
    let other = [(key("conc"), limits.clone())];
    let running = limiter.admit(&other, demand(1, 0), NOON).await.unwrap();
    let Err(Refusal::Denied(denial)) = limiter.admit(&other, demand(1, 0), NOON).await else { panic!("one slot") };
    assert_eq!((denial.limit, denial.reason), (LimitKind::Concurrent, DenialReason::RateLimited));
    // Fits the fleet's quota (3 000) but not one replica's share (1 000): an outage answer, not a 400.
    assert!(matches!(limiter.admit(&other, demand(2_000, 0), NOON).await, Err(Refusal::Unavailable { .. })));
    // The local state reports the local share.
    let snapshot = limiter.snapshot(&key("k"), &limits, NOON).await;
    let rpm = snapshot.iter().find(|s| s.kind == LimitKind::RequestsPerMinute).unwrap();
    assert_eq!((rpm.limit, rpm.remaining), (20, 0));

    server.restart().await;
    wait_until_shared(&limiter).await;
    // Counting is in Redis again: the (empty, restarted) Redis sees this admission, not the local ones.
    let reservation = limiter.admit(&scopes, demand(10, 0), NOON).await.unwrap();
    assert!(redis_has_key(&server.url(), &format!("{{{prefix}}}:v2:s:k:k")).await);
    let snapshot = limiter.snapshot(&key("k"), &limits, NOON).await;
    let rpm = snapshot.iter().find(|s| s.kind == LimitKind::RequestsPerMinute).unwrap();
    assert_eq!((rpm.limit, rpm.remaining), (60, 59));
    reservation.settle(usage(10, 0), NOON).await;
    // The reservation made locally settles locally.
    running.settle(usage(1, 0), NOON).await;
}
