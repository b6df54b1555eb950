//! Many threads racing for one scope: the limits hold exactly, not approximately.
#![allow(clippy::unwrap_used, reason = "test helpers: a failure is a failed test")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use portcullis_limits::{Demand, LimitKind, LimitScope, Limits, MemoryLimiter, Money, Reservation, Usage};

const THREADS: usize = 8;
const ATTEMPTS_PER_THREAD: usize = 2_000;
const NOW: u64 = 1_816_171_200_000;

/// Runs `THREADS` threads that each try `ATTEMPTS_PER_THREAD` admissions (thread `t` as key `k{t}`),
/// holding every reservation, and returns them all.
fn race(
    limiter: &Arc<MemoryLimiter>,
    scopes_of: impl Fn(usize) -> Vec<(LimitScope, Limits)>,
    demand: Demand,
) -> Vec<Reservation> {
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (limiter, barrier, scopes) = (Arc::clone(limiter), Arc::clone(&barrier), scopes_of(t));
            thread::spawn(move || {
                barrier.wait();
                (0..ATTEMPTS_PER_THREAD)
                    .filter_map(|_| limiter.admit_sync(&scopes, demand, NOW).ok())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

#[test]
fn eight_threads_get_exactly_the_demands_a_budget_fits() {
    const FITS: u64 = 137;
    let cost = Money::from_units(0.003);
    let limits = Limits { budget_per_day: Some(Money(cost.0 * FITS)), ..Limits::default() };
    let limiter = Arc::new(MemoryLimiter::new());
    let held =
        race(&limiter, |_| vec![(LimitScope::Key("shared".into()), limits.clone())], Demand { tokens: 100, cost });
    assert_eq!(held.len() as u64, FITS);
}

#[test]
fn keys_sharing_a_team_quota_get_exactly_what_it_fits() {
    const FITS: u64 = 1_000;
    let team = Limits { tokens_per_month: Some(FITS * 64), ..Limits::default() };
    let key = Limits { tokens_per_day: Some(1_000_000), max_concurrent: Some(10_000), ..Limits::default() };
    let limiter = Arc::new(MemoryLimiter::new());
    let held = race(
        &limiter,
        |t| vec![(LimitScope::Key(format!("k{t}").into()), key.clone()), (LimitScope::Team("t".into()), team.clone())],
        Demand { tokens: 64, cost: Money::ZERO },
    );
    assert_eq!(held.len() as u64, FITS);
    // No key took anything for an admission its team refused.
    let in_flight: u64 = (0..THREADS)
        .map(|t| {
            let snapshot = limiter.snapshot_sync(&LimitScope::Key(format!("k{t}").into()), &key, NOW);
            snapshot.iter().find(|s| s.kind == LimitKind::Concurrent).unwrap().used
        })
        .sum();
    assert_eq!(in_flight, FITS);
}

#[test]
fn concurrency_limit_admits_exactly_its_slots() {
    let limits = Limits { max_concurrent: Some(33), requests_per_minute: Some(1_000_000), ..Limits::default() };
    let limiter = Arc::new(MemoryLimiter::new());
    let held = race(&limiter, |_| vec![(LimitScope::Global, limits.clone())], Demand::default());
    assert_eq!(held.len(), 33);
}

#[test]
fn racing_admit_and_settle_admit_nothing_beyond_the_limit_and_charge_the_actual_exactly() {
    const LIMIT: u64 = 50_000;
    let limits = Limits { tokens_per_day: Some(LIMIT), tokens_per_minute: Some(LIMIT), ..Limits::default() };
    let scope = LimitScope::Team("t".into());
    let limiter = Arc::new(MemoryLimiter::new());
    let charged = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS as u64)
        .map(|t| {
            let (limiter, charged, barrier) = (Arc::clone(&limiter), Arc::clone(&charged), Arc::clone(&barrier));
            let scopes = vec![(scope.clone(), limits.clone())];
            thread::spawn(move || {
                barrier.wait();
                for i in 0..ATTEMPTS_PER_THREAD as u64 {
                    let demand = 1 + (i * 7 + t) % 40;
                    if let Ok(reservation) =
                        limiter.admit_sync(&scopes, Demand { tokens: demand, cost: Money::ZERO }, NOW)
                    {
                        // Some use less, some more than they reserved: all of it is charged.
                        let actual = (i + t) % 60;
                        charged.fetch_add(actual, Ordering::Relaxed);
                        limiter.settle_sync(reservation, Usage { tokens: actual, cost: Money::ZERO }, NOW);
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let snapshot = limiter.snapshot_sync(&scope, &limits, NOW);
    let day = snapshot.iter().find(|s| s.kind == LimitKind::TokensPerDay).unwrap();
    assert_eq!(day.reserved, 0);
    assert_eq!(day.used, charged.load(Ordering::Relaxed));
    // Every admission fitted under the limit; beyond it only the overruns of requests already running (one
    // per thread, each at most 59 over) can have been charged.
    assert!(day.used <= LIMIT + THREADS as u64 * 59, "{}", day.used);
    let minute = snapshot.iter().find(|s| s.kind == LimitKind::TokensPerMinute).unwrap();
    assert_eq!((minute.used, minute.reserved), (day.used, 0));
}

/// Probabilistic: the race (a slot evicted between lookup and lock) is hit in most runs, not all.
#[test]
fn eviction_racing_admissions_never_forgets_a_running_request() {
    let limits = Limits { max_concurrent: Some(1), ..Limits::default() };
    let limiter = Arc::new(MemoryLimiter::new());
    let running = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let evictor = {
        let (limiter, stop) = (Arc::clone(&limiter), Arc::clone(&stop));
        thread::spawn(move || {
            let mut evicted = 0;
            while !stop.load(Ordering::Relaxed) {
                evicted += limiter.evict_idle(NOW);
            }
            evicted
        })
    };
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (limiter, running, admitted) = (Arc::clone(&limiter), Arc::clone(&running), Arc::clone(&admitted));
            let scopes = vec![(LimitScope::Key("one-at-a-time".into()), limits.clone())];
            thread::spawn(move || {
                for _ in 0..200_000 {
                    if let Ok(reservation) = limiter.admit_sync(&scopes, Demand::default(), NOW) {
                        assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "two requests in flight");
                        admitted.fetch_add(1, Ordering::Relaxed);
                        running.fetch_sub(1, Ordering::SeqCst);
                        limiter.settle_sync(reservation, Usage::default(), NOW);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let evicted = evictor.join().unwrap();
    assert!(admitted.load(Ordering::Relaxed) > 0);
    assert!(evicted > 0, "the race was not exercised");
}

#[test]
fn shared_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<MemoryLimiter>();
    send_sync::<Reservation>();
    send_sync::<portcullis_limits::Denial>();
}
