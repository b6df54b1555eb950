//! Admit + settle for a key and its team with every limit set, against a naive baseline: one global
//! `Mutex<HashMap<String, Vec<Counter>>>` with fixed-window counters, the first thing one would write.
//!
//! Run: `cargo bench -p portcullis-limits -- --warm-up-time 1 --measurement-time 3`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_limits::{Demand, LimitScope, Limits, MemoryLimiter, Millis, Money, Period, Usage};

const START: Millis = 1_816_171_200_000;

fn limits() -> Limits {
    Limits {
        requests_per_minute: Some(6_000_000), // high enough never to refuse here; `now × rpm` still fits 64 bits
        burst: None,
        tokens_per_minute: Some(1_000_000_000_000),
        max_concurrent: Some(1_000_000),
        tokens_per_day: Some(u64::MAX / 4),
        tokens_per_month: Some(u64::MAX / 4),
        budget_per_day: Some(Money(u64::MAX / 4)),
        budget_per_month: Some(Money(u64::MAX / 4)),
    }
}

const DEMAND: Demand = Demand { tokens: 1_500, cost: Money(150_000_000) };
const ACTUAL: Usage = Usage { tokens: 700, cost: Money(70_000_000) };

/// The naive baseline: one lock for everything, string keys, a vector of fixed-window counters per scope.
#[derive(Default)]
struct NaiveLimiter {
    state: Mutex<HashMap<String, Vec<Counter>>>,
}

#[derive(Clone, Copy)]
enum What {
    Requests,
    Tokens,
    Cost,
    Concurrent,
}

/// A fixed-window counter (`window_ms == 0`: no window, e.g. concurrency).
#[derive(Clone, Copy)]
struct Counter {
    what: What,
    period: Option<Period>,
    window_ms: u64,
    limit: u64,
    window: u64,
    used: u64,
}

struct NaiveReservation {
    keys: Vec<String>,
    demand: Demand,
    windows: Vec<Vec<u64>>,
}

impl NaiveLimiter {
    fn counters(limits: &Limits) -> Vec<Counter> {
        let counter = |what, period, window_ms, limit: Option<u64>| {
            limit.map(|limit| Counter { what, period, window_ms, limit, window: 0, used: 0 })
        };
        [
            counter(What::Requests, None, 60_000, limits.requests_per_minute),
            counter(What::Tokens, None, 60_000, limits.tokens_per_minute),
            counter(What::Concurrent, None, 0, limits.max_concurrent),
            counter(What::Tokens, Some(Period::Day), 0, limits.tokens_per_day),
            counter(What::Tokens, Some(Period::Month), 0, limits.tokens_per_month),
            counter(What::Cost, Some(Period::Day), 0, limits.budget_per_day.map(|m| m.0)),
            counter(What::Cost, Some(Period::Month), 0, limits.budget_per_month.map(|m| m.0)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn window_of(counter: &Counter, now: Millis) -> u64 {
        match counter.period {
            Some(period) => period.index(now),
            None if counter.window_ms > 0 => now / counter.window_ms,
            None => 0,
        }
    }

    fn amount(what: What, demand: Demand) -> u64 {
        match what {
            What::Requests | What::Concurrent => 1,
            What::Tokens => demand.tokens,
            What::Cost => demand.cost.0,
        }
    }

    fn admit(&self, scopes: &[(String, Limits)], demand: Demand, now: Millis) -> Option<NaiveReservation> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, limits) in scopes {
            let counters = state.entry(key.clone()).or_insert_with(|| Self::counters(limits));
            for c in counters.iter() {
                let used = if Self::window_of(c, now) == c.window { c.used } else { 0 };
                if used + Self::amount(c.what, demand) > c.limit {
                    return None;
                }
            }
        }
        let mut windows = Vec::new();
        for (key, _) in scopes {
            let counters = state.get_mut(key)?;
            let mut taken = Vec::new();
            for c in counters.iter_mut() {
                let window = Self::window_of(c, now);
                if window != c.window {
                    *c = Counter { window, used: 0, ..*c };
                }
                c.used += Self::amount(c.what, demand);
                taken.push(window);
            }
            windows.push(taken);
        }
        Some(NaiveReservation { keys: scopes.iter().map(|(k, _)| k.clone()).collect(), demand, windows })
    }

    fn settle(&self, reservation: NaiveReservation, actual: Usage) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, windows) in reservation.keys.iter().zip(&reservation.windows) {
            let Some(counters) = state.get_mut(key) else { continue };
            for (c, window) in counters.iter_mut().zip(windows) {
                if c.window != *window {
                    continue;
                }
                let (reserved, real) = match c.what {
                    What::Requests => continue,
                    What::Concurrent => (1, 0),
                    What::Tokens => (reservation.demand.tokens, actual.tokens),
                    What::Cost => (reservation.demand.cost.0, actual.cost.0),
                };
                c.used = c.used - reserved + real;
            }
        }
    }
}

fn scopes(key: usize, team: usize) -> Vec<(LimitScope, Limits)> {
    vec![
        (LimitScope::Key(format!("key-{key}").into()), limits()),
        (LimitScope::Team(format!("team-{team}").into()), limits()),
    ]
}

fn naive_scopes(key: usize, team: usize) -> Vec<(String, Limits)> {
    vec![(format!("key:key-{key}"), limits()), (format!("team:team-{team}"), limits())]
}

/// Runs `iters` operations split over `threads` threads and returns the wall time.
fn parallel(threads: usize, iters: u64, op: impl Fn(usize, u64) + Send + Sync + 'static) -> Duration {
    let op = Arc::new(op);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let op = Arc::clone(&op);
            let share = iters / threads as u64 + u64::from((t as u64) < iters % threads as u64);
            thread::spawn(move || (0..share).for_each(|i| op(t, i)))
        })
        .collect();
    for handle in handles {
        let _ = handle.join();
    }
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("admit_settle_key_team");
    // Filler scopes so both maps have the size of a busy gateway rather than two entries.
    let limiter = Arc::new(MemoryLimiter::new());
    let naive = Arc::new(NaiveLimiter::default());
    for i in 0..10_000 {
        let now = START;
        if let Ok(r) = limiter.admit_sync(&scopes(i + 100, i % 100 + 100), DEMAND, now) {
            limiter.settle_sync(r, ACTUAL, now);
        }
        if let Some(r) = naive.admit(&naive_scopes(i + 100, i % 100 + 100), DEMAND, now) {
            naive.settle(r, ACTUAL);
        }
    }

    let clock = Arc::new(AtomicU64::new(START));
    {
        let (limiter, clock, scopes) = (Arc::clone(&limiter), Arc::clone(&clock), scopes(0, 0));
        group.bench_function("memory_limiter/1_thread", move |b| {
            b.iter(|| {
                let now = clock.fetch_add(1, Ordering::Relaxed);
                let r = limiter.admit_sync(black_box(&scopes), DEMAND, now);
                if let Ok(r) = r {
                    limiter.settle_sync(r, ACTUAL, now);
                }
            });
        });
    }
    {
        let (naive, clock, scopes) = (Arc::clone(&naive), Arc::clone(&clock), naive_scopes(0, 0));
        group.bench_function("naive_global_mutex/1_thread", move |b| {
            b.iter(|| {
                let now = clock.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = naive.admit(black_box(&scopes), DEMAND, now) {
                    naive.settle(r, ACTUAL);
                }
            });
        });
    }
    // Two threads (the machine has two cores): different keys, different teams; only the naive one contends.
    {
        let (limiter, clock) = (Arc::clone(&limiter), Arc::clone(&clock));
        group.bench_function("memory_limiter/2_threads_distinct_teams", move |b| {
            b.iter_custom(|iters| {
                let limiter = Arc::clone(&limiter);
                let base = clock.fetch_add(iters, Ordering::Relaxed);
                let per_thread = [scopes(1, 1), scopes(2, 2)];
                parallel(2, iters, move |t, i| {
                    if let Ok(r) = limiter.admit_sync(&per_thread[t], DEMAND, base + i) {
                        limiter.settle_sync(r, ACTUAL, base + i);
                    }
                })
            });
        });
    }
    {
        let (naive, clock) = (Arc::clone(&naive), Arc::clone(&clock));
        group.bench_function("naive_global_mutex/2_threads_distinct_teams", move |b| {
            b.iter_custom(|iters| {
                let naive = Arc::clone(&naive);
                let base = clock.fetch_add(iters, Ordering::Relaxed);
                let per_thread = [naive_scopes(1, 1), naive_scopes(2, 2)];
                parallel(2, iters, move |t, i| {
                    if let Some(r) = naive.admit(&per_thread[t], DEMAND, base + i) {
                        naive.settle(r, ACTUAL);
                    }
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
