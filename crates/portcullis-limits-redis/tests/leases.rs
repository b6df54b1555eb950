//! Leases: a crashed replica's reservations are freed (and charged in full) after their lease; a live
//! replica's reservations are renewed and never expire while it runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests: a failure is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::{NOON, demand, key, usage};
use portcullis_limits::{LimitKind, LimitScope, LimitState, Limiter, Limits, Refusal};
use portcullis_limits_redis::{RedisLimiter, RedisLimiterOptions};

const LEASE: Duration = Duration::from_secs(1);

fn limits() -> Limits {
    Limits {
        max_concurrent: Some(1),
        tokens_per_day: Some(10_000),
        tokens_per_minute: Some(1_000),
        ..Limits::default()
    }
}

async fn short_lease(url: &str, prefix: &str) -> RedisLimiter {
    RedisLimiter::connect(RedisLimiterOptions {
        lease: LEASE,
        timeout: Duration::from_millis(250),
        ..common::options(url, prefix)
    })
    .await
    .unwrap()
}

async fn state(limiter: &RedisLimiter, scope: &LimitScope, kind: LimitKind) -> LimitState {
    let snapshot = limiter.snapshot(scope, &limits(), NOON).await;
    *snapshot.iter().find(|s| s.kind == kind).unwrap()
}

fn is_busy(result: &Result<portcullis_limits::Reservation, Refusal>) -> bool {
    matches!(result, Err(Refusal::Denied(denial)) if denial.limit == LimitKind::Concurrent)
}

#[tokio::test]
async fn a_crashed_replicas_reservation_is_freed_after_its_lease_and_charged_in_full() {
    let Some(url) = portcullis_testkit::redis_or_skip() else { return };
    let prefix = portcullis_testkit::unique_name("crash");
    let scopes = [(key("k"), limits())];

    let crashing = short_lease(&url, &prefix).await;
    let reserved_at = Instant::now();
    let reservation = crashing.admit(&scopes, demand(300, 0), NOON).await.unwrap();
    // A crash: no settlement, no drop, no renewal.
    std::mem::forget(reservation);
    drop(crashing);

    let survivor = common::connect(&url, &prefix, portcullis_limits_redis::OnBackendError::Deny).await;
    assert!(is_busy(&survivor.admit(&scopes, demand(1, 0), NOON).await), "the slot is held during the lease");
    tokio::time::sleep(LEASE / 2).await;
    let result = survivor.admit(&scopes, demand(1, 0), NOON).await;
    if reserved_at.elapsed() < LEASE {
        assert!(is_busy(&result), "still held before the lease ends");
    }

    tokio::time::sleep(LEASE.saturating_sub(reserved_at.elapsed()) + Duration::from_millis(100)).await;
    let after = survivor.admit(&scopes, demand(1, 0), NOON).await.unwrap();
    let day = state(&survivor, &key("k"), LimitKind::TokensPerDay).await;
    assert_eq!((day.used, day.reserved), (300, 1), "charged in full, and the new request reserved");
    let minute = state(&survivor, &key("k"), LimitKind::TokensPerMinute).await;
    assert_eq!((minute.used, minute.reserved), (300, 1), "no token refund for an expired reservation");
    after.settle(usage(1, 0), NOON).await;
    assert_eq!(state(&survivor, &key("k"), LimitKind::Concurrent).await.used, 0);
}

#[tokio::test]
async fn a_live_reservation_outlasting_several_leases_is_renewed_not_expired() {
    let Some(url) = portcullis_testkit::redis_or_skip() else { return };
    let prefix = portcullis_testkit::unique_name("renew");
    let scopes = [(key("k"), limits())];
    let streaming = short_lease(&url, &prefix).await;
    let other = short_lease(&url, &prefix).await;

    let long = streaming.admit(&scopes, demand(500, 0), NOON).await.unwrap();
    for _ in 0..7 {
        tokio::time::sleep(LEASE / 2).await;
        // The other replica's calls expire overdue leases: this one must never be among them.
        assert!(is_busy(&other.admit(&scopes, demand(1, 0), NOON).await), "the live reservation still holds its slot");
    }
    long.settle(usage(120, 0), NOON).await;
    let day = state(&other, &key("k"), LimitKind::TokensPerDay).await;
    assert_eq!((day.used, day.reserved), (120, 0), "settled with its real usage, not expired in full");
    other.admit(&scopes, demand(1, 0), NOON).await.unwrap();
}

#[tokio::test]
async fn a_dropped_reservation_is_released_in_the_background_and_charged_in_full() {
    let Some((limiter, _)) = common::fresh_limiter("dropped").await else { return };
    let scopes = [(key("k"), limits())];
    let reservation = limiter.admit(&scopes, demand(700, 0), NOON).await.unwrap();
    drop(reservation);
    limiter.drain().await;
    assert_eq!(state(&limiter, &key("k"), LimitKind::Concurrent).await.used, 0);
    let day = state(&limiter, &key("k"), LimitKind::TokensPerDay).await;
    assert_eq!((day.used, day.reserved), (700, 0));
    assert_eq!(state(&limiter, &key("k"), LimitKind::TokensPerMinute).await.remaining, 300);
}

#[tokio::test]
async fn settling_after_the_lease_expired_charges_nothing_twice() {
    let Some(url) = portcullis_testkit::redis_or_skip() else { return };
    let prefix = portcullis_testkit::unique_name("late");
    let scopes = [(key("k"), limits())];
    let stalled = short_lease(&url, &prefix).await;
    let reservation = stalled.admit(&scopes, demand(300, 0), NOON).await.unwrap();
    // The renewal stops with the limiter; the reservation lives on (a replica stalled past its lease).
    drop(stalled);
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    let other = short_lease(&url, &prefix).await;
    other.admit(&scopes, demand(1, 0), NOON).await.unwrap().settle(usage(1, 0), NOON).await;
    reservation.settle(usage(10, 0), NOON).await;
    let day = state(&other, &key("k"), LimitKind::TokensPerDay).await;
    assert_eq!((day.used, day.reserved), (301, 0), "expired in full once; the late settlement changes nothing");
    assert_eq!(state(&other, &key("k"), LimitKind::Concurrent).await.used, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_leases_in_one_scope_are_all_renewed() {
    let Some(url) = portcullis_testkit::redis_or_skip() else { return };
    let prefix = portcullis_testkit::unique_name("many");
    let limiter = std::sync::Arc::new(short_lease(&url, &prefix).await);
    let scopes = [(key("k"), Limits { max_concurrent: Some(10_000), ..Limits::default() })];
    // More leases in one scope than Lua could pass to one command (its C stack holds 8 000 values), so
    // the renewal has to batch them.
    let tasks: Vec<_> = (0..4_100)
        .map(|_| {
            let limiter = std::sync::Arc::clone(&limiter);
            let scopes = scopes.clone();
            tokio::spawn(async move { limiter.admit(&scopes, demand(1, 0), NOON).await.unwrap() })
        })
        .collect();
    let mut held = Vec::new();
    for task in tasks {
        held.push(task.await.unwrap());
    }
    tokio::time::sleep(LEASE * 2).await;
    let snapshot = limiter.snapshot(&key("k"), &scopes[0].1, NOON).await;
    assert_eq!(snapshot[0].used, 4_100, "every lease renewed, none expired");
    for reservation in held {
        reservation.settle(usage(1, 0), NOON).await;
    }
    assert_eq!(limiter.snapshot(&key("k"), &scopes[0].1, NOON).await[0].used, 0);
}
