//! Three `RedisLimiter`s sharing one prefix stand for three gateway replicas: limits hold across them
//! together under concurrent load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests: a failure is a failed test")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{NOON, demand, key, team};
use portcullis_limits::{DenialReason, LimitKind, LimitScope, Limiter, Limits, Money, PICO_PER_UNIT, Refusal, Usage};
use portcullis_limits_redis::{OnBackendError, RedisLimiter};

async fn replicas(name: &str) -> Option<Vec<Arc<RedisLimiter>>> {
    let url = portcullis_testkit::redis_or_skip()?;
    let prefix = portcullis_testkit::unique_name(name);
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(Arc::new(common::connect(&url, &prefix, OnBackendError::Deny).await));
    }
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_concurrent_admits_over_three_replicas_admit_exactly_the_rate() {
    let Some(replicas) = replicas("rate_race").await else { return };
    let limits = Limits { requests_per_minute: Some(60), ..Limits::default() };
    let tasks: Vec<_> = (0..600)
        .map(|i| {
            let limiter = Arc::clone(&replicas[i % 3]);
            let scopes = vec![(key("busy"), limits.clone())];
            tokio::spawn(async move {
                match limiter.admit(&scopes, demand(1, 0), NOON).await {
                    Ok(reservation) => {
                        reservation.settle(Usage { tokens: 1, cost: Money(0) }, NOON).await;
                        true
                    }
                    Err(Refusal::Denied(denial)) => {
                        assert_eq!(
                            (denial.limit, denial.reason),
                            (LimitKind::RequestsPerMinute, DenialReason::RateLimited)
                        );
                        assert_eq!(denial.retry_after_ms, Some(1_000));
                        false
                    }
                    Err(other) => panic!("unexpected refusal {other:?}"),
                }
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 60);
    for limiter in &replicas {
        assert_eq!(limiter.fallback_count(), 0);
    }
    // One second later exactly one more fits, whichever replica asks.
    let scopes = [(key("busy"), limits)];
    replicas[1].admit(&scopes, demand(1, 0), NOON + 1_000).await.unwrap();
    assert!(replicas[2].admit(&scopes, demand(1, 0), NOON + 1_000).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_spend_over_three_replicas_never_exceeds_the_budget() {
    let Some(replicas) = replicas("budget_race").await else { return };
    // 20 000 units = 2 × 10^16 pico-units, beyond 2^53: the race is on exact limb arithmetic.
    let budget = Money(20_000 * PICO_PER_UNIT);
    let key_limits = Limits { budget_per_day: Some(budget), max_concurrent: Some(50), ..Limits::default() };
    let team_limits = Limits { budget_per_month: Some(budget), tokens_per_day: Some(10_000_000), ..Limits::default() };
    let settled = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..24u64)
        .map(|worker| {
            let limiter = Arc::clone(&replicas[(worker % 3) as usize]);
            let scopes = vec![(key("spender"), key_limits.clone()), (team("payers"), team_limits.clone())];
            let settled = Arc::clone(&settled);
            tokio::spawn(async move {
                for round in 0..40u64 {
                    // 100..~1 300 units each, odd amounts of pico-units.
                    let cost = (100 + (worker * 37 + round * 91) % 1_200) * PICO_PER_UNIT + worker * 7 + round;
                    match limiter.admit(&scopes, demand(10, cost), NOON).await {
                        Ok(reservation) => {
                            settled.fetch_add(cost, Ordering::Relaxed);
                            reservation.settle(Usage { tokens: 10, cost: Money(cost) }, NOON).await;
                        }
                        Err(Refusal::Denied(denial)) => {
                            assert!(
                                matches!(
                                    denial.limit,
                                    LimitKind::BudgetPerDay | LimitKind::BudgetPerMonth | LimitKind::Concurrent
                                ),
                                "{denial}"
                            );
                        }
                        Err(other) => panic!("unexpected refusal {other:?}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let total = settled.load(Ordering::Relaxed);
    assert!(total <= budget.0, "spent {total} of {}", budget.0);
    assert!(total > budget.0 / 2, "the race should come close to the budget, spent {total}");
    for (scope, limits, kind) in [
        (key("spender"), &key_limits, LimitKind::BudgetPerDay),
        (team("payers"), &team_limits, LimitKind::BudgetPerMonth),
    ] {
        let snapshot = replicas[0].snapshot(&scope, limits, NOON).await;
        let state = snapshot.iter().find(|s| s.kind == kind).unwrap();
        assert_eq!((state.used, state.reserved), (total, 0), "{scope}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_slots_are_shared_by_every_replica() {
    let Some(replicas) = replicas("slots").await else { return };
    let scopes = [(LimitScope::Global, Limits { max_concurrent: Some(2), ..Limits::default() })];
    let first = replicas[0].admit(&scopes, demand(0, 0), NOON).await.unwrap();
    let second = replicas[1].admit(&scopes, demand(0, 0), NOON).await.unwrap();
    let Err(Refusal::Denied(denial)) = replicas[2].admit(&scopes, demand(0, 0), NOON).await else {
        panic!("a third request fits nowhere")
    };
    assert_eq!((denial.limit, denial.retry_after_ms), (LimitKind::Concurrent, None));
    first.settle(Usage::default(), NOON).await;
    replicas[2].admit(&scopes, demand(0, 0), NOON).await.unwrap();
    drop(second);
}

#[tokio::test]
async fn a_message_on_a_channel_reaches_every_subscribed_replica() {
    let Some(replicas) = replicas("channel").await else { return };
    let channels: Vec<_> = replicas.iter().map(|limiter| limiter.channel("test:messages")).collect();
    assert!(channels[0].name().ends_with("}:test:messages"), "{}", channels[0].name());
    let mut receivers: Vec<_> = channels[1..].iter().map(|channel| channel.subscribe()).collect();
    // Subscribing takes a round trip of its own: publish until both hear.
    let mut heard = 0;
    for _ in 0..100 {
        heard = channels[0].publish(b"hello").await.unwrap();
        if heard == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(heard, 2);
    channels[0].publish(b"\x00binary\xff").await.unwrap();
    for receiver in &mut receivers {
        let mut got = Vec::new();
        while got.last().map(Vec::as_slice) != Some(b"\x00binary\xff".as_slice()) {
            got.push(receiver.recv().await.unwrap());
        }
        assert!(got[..got.len() - 1].iter().all(|message| message == b"hello"), "{got:?}");
    }
}
