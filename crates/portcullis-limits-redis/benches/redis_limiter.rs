//! Admit + settle round trips for a key and its team with every limit set: the Redis limiter against the
//! machine's Redis (`PORTCULLIS_TEST_REDIS_URL`, default 127.0.0.1:6379), sequential and 64 at a time,
//! with the in-memory limiter as the baseline. Skipped, loudly, without Redis.
//!
//! Run: `cargo bench -p portcullis-limits-redis -- --warm-up-time 1 --measurement-time 3`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr, reason = "benchmark harness")]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis_limits::{Demand, LimitScope, Limiter, Limits, MemoryLimiter, Millis, Money, Usage};
use portcullis_limits_redis::{RedisLimiter, RedisLimiterOptions};

const NOW: Millis = 1_816_171_200_000;
const DEMAND: Demand = Demand { tokens: 1_500, cost: Money(150_000_000) };
const ACTUAL: Usage = Usage { tokens: 700, cost: Money(70_000_000) };

fn limits() -> Limits {
    Limits {
        requests_per_minute: Some(60_000_000),
        burst: None,
        tokens_per_minute: Some(50_000_000_000),
        max_concurrent: Some(1_000_000),
        tokens_per_day: Some(u64::MAX / 4),
        tokens_per_month: Some(u64::MAX / 4),
        budget_per_day: Some(Money(u64::MAX / 4)),
        budget_per_month: Some(Money(u64::MAX / 4)),
    }
}

fn scopes(i: usize) -> Vec<(LimitScope, Limits)> {
    vec![(LimitScope::Key(format!("key{}", i % 64).into()), limits()), (LimitScope::Team("team".into()), limits())]
}

async fn round_trip(limiter: &dyn Limiter, scopes: &[(LimitScope, Limits)]) {
    let reservation = limiter.admit(scopes, DEMAND, NOW).await.expect("admitted");
    limiter.settle(black_box(reservation), ACTUAL, NOW).await;
}

fn bench(c: &mut Criterion) {
    let url = portcullis_testkit::redis_url();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let redis: Arc<dyn Limiter> = Arc::new(runtime.block_on(async {
        let prefix = portcullis_testkit::unique_name("bench");
        RedisLimiter::connect(RedisLimiterOptions { key_prefix: prefix, ..RedisLimiterOptions::new(url.clone()) })
            .await
            .unwrap()
    }));
    if runtime.block_on(redis.admit(&scopes(0), DEMAND, NOW)).is_err() {
        eprintln!("\n!!!!!!!! SKIPPED: no Redis at {url} !!!!!!!!\n");
        return;
    }
    let memory: Arc<dyn Limiter> = Arc::new(MemoryLimiter::new());
    let fixed = scopes(0);

    let mut group = c.benchmark_group("admit_settle");
    group.throughput(Throughput::Elements(1));
    for (name, limiter) in [("memory", &memory), ("redis", &redis)] {
        group.bench_function(format!("{name}/sequential"), |b| {
            b.iter(|| runtime.block_on(round_trip(limiter.as_ref(), &fixed)));
        });
    }
    group.throughput(Throughput::Elements(64));
    for (name, limiter) in [("memory", &memory), ("redis", &redis)] {
        group.bench_function(format!("{name}/64_concurrent"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let tasks: Vec<_> = (0..64)
                        .map(|i| {
                            let limiter = Arc::clone(limiter);
                            tokio::spawn(async move { round_trip(limiter.as_ref(), &scopes(i)).await })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                });
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
