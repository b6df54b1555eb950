//! Behaviour of `MemoryLimiter` with explicit times: admission, denial reasons, headers, settlement.
#![allow(clippy::unwrap_used, reason = "test helpers: a failure is a failed test")]

use portcullis_limits::window::{DAY_MS, days_from_civil};
use portcullis_limits::{
    Demand, DenialReason, LimitKind, LimitScope, LimitState, Limiter, Limits, MemoryLimiter, Millis, Money, RateState,
    Usage,
};

fn key(id: &str) -> LimitScope {
    LimitScope::Key(id.into())
}

fn team(id: &str) -> LimitScope {
    LimitScope::Team(id.into())
}

fn utc(year: u64, month: u64, day: u64, hour: u64, minute: u64) -> Millis {
    days_from_civil(year, month, day) * DAY_MS + hour * 3_600_000 + minute * 60_000
}

fn demand(tokens: u64, cost: u64) -> Demand {
    Demand { tokens, cost: Money(cost) }
}

fn usage(tokens: u64, cost: u64) -> Usage {
    Usage { tokens, cost: Money(cost) }
}

fn state_of(limiter: &MemoryLimiter, scope: &LimitScope, limits: &Limits, now: Millis, kind: LimitKind) -> LimitState {
    let snapshot = limiter.snapshot_sync(scope, limits, now);
    *snapshot.iter().find(|s| s.kind == kind).unwrap()
}

fn all_limits() -> Limits {
    Limits {
        requests_per_minute: Some(60),
        burst: Some(10),
        tokens_per_minute: Some(10_000),
        max_concurrent: Some(4),
        tokens_per_day: Some(100_000),
        tokens_per_month: Some(1_000_000),
        budget_per_day: Some(Money::from_units(1.0)),
        budget_per_month: Some(Money::from_units(10.0)),
    }
}

const NOON: Millis = 1_816_171_200_000; // 2027-07-21 12:00 UTC

#[test]
fn noon_constant_is_noon() {
    assert_eq!(NOON, utc(2027, 7, 21, 12, 0));
}

#[test]
fn scope_without_limits_is_skipped_and_gets_no_state() {
    let limiter = MemoryLimiter::new();
    let reservation = limiter.admit_sync(&[(key("k"), Limits::default())], demand(10, 10), NOON).unwrap();
    assert_eq!(reservation.scopes().len(), 0);
    assert!(limiter.is_empty());
    limiter.settle_sync(reservation, usage(10, 10), NOON);
}

#[test]
fn key_passing_and_team_failing_leaves_key_counters_unchanged() {
    let limiter = MemoryLimiter::new();
    let key_limits = all_limits();
    let team_limits = Limits { tokens_per_day: Some(1_000), ..Limits::default() };
    let scopes = [(key("k"), key_limits.clone()), (team("t"), team_limits.clone())];
    let first = limiter.admit_sync(&scopes, demand(900, 1), NOON).unwrap();
    let before = limiter.snapshot_sync(&key("k"), &key_limits, NOON);

    let denial = limiter.admit_sync(&scopes, demand(200, 1), NOON).unwrap_err();
    assert_eq!(
        (denial.scope, denial.limit, denial.reason, denial.available),
        (team("t"), LimitKind::TokensPerDay, DenialReason::HeldByReservations, Some(100))
    );
    assert_eq!(limiter.snapshot_sync(&key("k"), &key_limits, NOON), before);
    assert_eq!(state_of(&limiter, &team("t"), &team_limits, NOON, LimitKind::TokensPerDay).reserved, 900);
    drop(first);
}

#[test]
fn never_fits_is_reported_before_any_state_is_touched() {
    let limiter = MemoryLimiter::new();
    let scopes = [
        (key("k"), Limits { requests_per_minute: Some(1), ..Limits::default() }),
        (team("t"), Limits { tokens_per_minute: Some(100), ..Limits::default() }),
    ];
    let denial = limiter.admit_sync(&scopes, demand(101, 0), NOON).unwrap_err();
    assert_eq!(
        (denial.scope, denial.limit, denial.reason),
        (team("t"), LimitKind::TokensPerMinute, DenialReason::NeverFits)
    );
    assert_eq!(denial.retry_after_ms, None);
    assert!(limiter.is_empty());
    // The key's single request per minute is still there.
    limiter.admit_sync(&scopes, demand(100, 0), NOON).unwrap();
}

#[test]
fn zero_budget_refuses_paid_requests_and_admits_free_ones() {
    let limiter = MemoryLimiter::new();
    let scopes = [(key("k"), Limits { budget_per_month: Some(Money::ZERO), ..Limits::default() })];
    let denial = limiter.admit_sync(&scopes, demand(10, 1), NOON).unwrap_err();
    assert_eq!((denial.limit, denial.reason), (LimitKind::BudgetPerMonth, DenialReason::NeverFits));
    limiter.admit_sync(&scopes, demand(10, 0), NOON).unwrap();
}

#[test]
fn zero_rate_or_concurrency_never_fits() {
    let limiter = MemoryLimiter::new();
    for (limits, kind) in [
        (Limits { requests_per_minute: Some(0), ..Limits::default() }, LimitKind::RequestsPerMinute),
        (Limits { requests_per_minute: Some(5), burst: Some(0), ..Limits::default() }, LimitKind::RequestsPerMinute),
        (Limits { max_concurrent: Some(0), ..Limits::default() }, LimitKind::Concurrent),
    ] {
        let denial = limiter.admit_sync(&[(key("k"), limits)], demand(1, 0), NOON).unwrap_err();
        assert_eq!((denial.limit, denial.reason, denial.retry_after_ms), (kind, DenialReason::NeverFits, None));
    }
}

#[test]
fn spent_day_quota_retries_at_the_next_utc_midnight() {
    let limiter = MemoryLimiter::new();
    let scopes = [(key("k"), Limits { tokens_per_day: Some(100), ..Limits::default() })];
    let late = utc(2027, 7, 21, 23, 0);
    let r = limiter.admit_sync(&scopes, demand(100, 0), late).unwrap();
    limiter.settle_sync(r, usage(100, 0), late);
    let denial = limiter.admit_sync(&scopes, demand(1, 0), late).unwrap_err();
    assert_eq!((denial.reason, denial.retry_after_ms), (DenialReason::QuotaExhausted, Some(3_600_000)));
    assert!(limiter.admit_sync(&scopes, demand(1, 0), utc(2027, 7, 22, 0, 0) - 1).is_err());
    limiter.admit_sync(&scopes, demand(100, 0), utc(2027, 7, 22, 0, 0)).unwrap();
}

#[test]
fn spent_month_budget_retries_on_the_first_of_next_month_across_new_year() {
    let limiter = MemoryLimiter::new();
    let scopes = [(key("k"), Limits { budget_per_month: Some(Money(1_000)), ..Limits::default() })];
    let new_years_eve = utc(2027, 12, 31, 18, 0);
    let r = limiter.admit_sync(&scopes, demand(1, 1_000), utc(2027, 12, 1, 0, 0)).unwrap();
    limiter.settle_sync(r, usage(1, 1_000), utc(2027, 12, 1, 0, 0));
    let denial = limiter.admit_sync(&scopes, demand(1, 1), new_years_eve).unwrap_err();
    assert_eq!((denial.limit, denial.reason), (LimitKind::BudgetPerMonth, DenialReason::QuotaExhausted));
    assert_eq!(denial.retry_after_ms, Some(6 * 3_600_000));
    limiter.admit_sync(&scopes, demand(1, 1_000), utc(2028, 1, 1, 0, 0)).unwrap();
}

#[test]
fn month_quota_rolls_after_a_leap_day() {
    let limiter = MemoryLimiter::new();
    let scopes = [(key("k"), Limits { tokens_per_month: Some(10), ..Limits::default() })];
    let leap_day = utc(2028, 2, 29, 23, 59);
    let r = limiter.admit_sync(&scopes, demand(10, 0), leap_day).unwrap();
    limiter.settle_sync(r, usage(10, 0), leap_day);
    let denial = limiter.admit_sync(&scopes, demand(1, 0), leap_day).unwrap_err();
    assert_eq!(denial.retry_after_ms, Some(60_000));
    limiter.admit_sync(&scopes, demand(10, 0), utc(2028, 3, 1, 0, 0)).unwrap();
}

#[test]
fn request_rate_allows_the_burst_then_reports_the_gcra_wait() {
    let limiter = MemoryLimiter::new();
    let scopes = [(key("k"), Limits { requests_per_minute: Some(2), ..Limits::default() })];
    limiter.admit_sync(&scopes, demand(1, 0), NOON).unwrap();
    limiter.admit_sync(&scopes, demand(1, 0), NOON).unwrap();
    let denial = limiter.admit_sync(&scopes, demand(1, 0), NOON + 10_000).unwrap_err();
    assert_eq!((denial.limit, denial.reason), (LimitKind::RequestsPerMinute, DenialReason::RateLimited));
    assert_eq!(denial.retry_after_ms, Some(20_000));
    limiter.admit_sync(&scopes, demand(1, 0), NOON + 30_000).unwrap();
}

#[test]
fn token_rate_reports_the_bucket_wait() {
    let limiter = MemoryLimiter::new();
    let scopes = [(key("k"), Limits { tokens_per_minute: Some(6_000), ..Limits::default() })];
    let _held = limiter.admit_sync(&scopes, demand(6_000, 0), NOON).unwrap();
    let denial = limiter.admit_sync(&scopes, demand(500, 0), NOON).unwrap_err();
    assert_eq!((denial.limit, denial.reason), (LimitKind::TokensPerMinute, DenialReason::RateLimited));
    assert_eq!(denial.retry_after_ms, Some(5_000));
    limiter.admit_sync(&scopes, demand(500, 0), NOON + 5_000).unwrap();
}

#[test]
fn concurrency_slot_is_freed_by_settle_and_has_no_retry_time() {
    let limiter = MemoryLimiter::new();
    let scopes = [(key("k"), Limits { max_concurrent: Some(1), ..Limits::default() })];
    let running = limiter.admit_sync(&scopes, demand(1, 0), NOON).unwrap();
    let denial = limiter.admit_sync(&scopes, demand(1, 0), NOON).unwrap_err();
    assert_eq!(
        (denial.limit, denial.reason, denial.retry_after_ms),
        (LimitKind::Concurrent, DenialReason::RateLimited, None)
    );
    limiter.settle_sync(running, usage(1, 0), NOON);
    limiter.admit_sync(&scopes, demand(1, 0), NOON).unwrap();
}

#[test]
fn denial_names_the_longest_lasting_limit() {
    let limiter = MemoryLimiter::new();
    let key_limits = Limits { requests_per_minute: Some(1), ..Limits::default() };
    let team_limits = Limits { tokens_per_day: Some(10), ..Limits::default() };
    let scopes = [(key("k"), key_limits), (team("t"), team_limits)];
    let spent = limiter.admit_sync(&scopes, demand(10, 0), utc(2027, 7, 21, 20, 0)).unwrap();
    limiter.settle_sync(spent, usage(10, 0), utc(2027, 7, 21, 20, 0));
    let denial = limiter.admit_sync(&scopes, demand(1, 0), utc(2027, 7, 21, 20, 0)).unwrap_err();
    assert_eq!((denial.scope, denial.limit), (team("t"), LimitKind::TokensPerDay));
    assert_eq!(denial.retry_after_ms, Some(4 * 3_600_000));
}

#[test]
fn a_quota_held_by_running_requests_says_so_and_a_rate_limit_outranks_it() {
    let limiter = MemoryLimiter::new();
    let key_limits = Limits { tokens_per_day: Some(1_000), budget_per_day: Some(Money(100)), ..Limits::default() };
    let scopes = [(key("k"), key_limits.clone())];
    let running = limiter.admit_sync(&scopes, demand(700, 60), NOON).unwrap();
    // 400 tokens fit the 1 000 once the 700 held settle, but only 300 are free now.
    let denial = limiter.admit_sync(&scopes, demand(400, 0), NOON).unwrap_err();
    assert_eq!(
        (denial.limit, denial.reason, denial.retry_after_ms, denial.available),
        (LimitKind::TokensPerDay, DenialReason::HeldByReservations, None, Some(300))
    );
    // The budget, in pico-units, the same way.
    let denial = limiter.admit_sync(&scopes, demand(1, 41), NOON).unwrap_err();
    assert_eq!(
        (denial.limit, denial.reason, denial.available),
        (LimitKind::BudgetPerDay, DenialReason::HeldByReservations, Some(40))
    );
    // A request rate refuses at once: it is reported before reservations that may settle.
    let with_rate = [(key("k"), Limits { requests_per_minute: Some(1), ..key_limits.clone() })];
    limiter
        .admit_sync(&[(key("k"), Limits { requests_per_minute: Some(1), ..Limits::default() })], demand(0, 0), NOON)
        .unwrap();
    let denial = limiter.admit_sync(&with_rate, demand(400, 0), NOON).unwrap_err();
    assert_eq!(
        (denial.limit, denial.reason, denial.available),
        (LimitKind::RequestsPerMinute, DenialReason::RateLimited, None)
    );
    // Once they settle at what they used, the held request fits; what they used stays used.
    limiter.settle_sync(running, usage(200, 10), NOON);
    let _second = limiter.admit_sync(&scopes, demand(400, 0), NOON).unwrap();
    let denial = limiter.admit_sync(&scopes, demand(401, 0), NOON).unwrap_err();
    assert_eq!((denial.reason, denial.available), (DenialReason::HeldByReservations, Some(400)));
    let denial = limiter.admit_sync(&scopes, demand(801, 0), NOON).unwrap_err();
    assert_eq!((denial.reason, denial.available), (DenialReason::QuotaExhausted, Some(400)));
    // A budget that stays spent outranks tokens that are only held.
    let denial = limiter.admit_sync(&scopes, demand(401, 91), NOON).unwrap_err();
    assert_eq!((denial.limit, denial.reason), (LimitKind::BudgetPerDay, DenialReason::QuotaExhausted));
}

#[test]
fn never_fitting_reports_the_whole_capacity() {
    let limiter = MemoryLimiter::new();
    let limits = Limits { tokens_per_day: Some(1_000), budget_per_month: Some(Money(0)), ..Limits::default() };
    let denial = limiter.admit_sync(&[(key("k"), limits.clone())], demand(1_001, 0), NOON).unwrap_err();
    assert_eq!((denial.reason, denial.available), (DenialReason::NeverFits, Some(1_000)));
    let denial = limiter.admit_sync(&[(key("k"), limits)], demand(10, 1), NOON).unwrap_err();
    assert_eq!((denial.limit, denial.available), (LimitKind::BudgetPerMonth, Some(0)));
    let zero_rate = Limits { max_concurrent: Some(0), ..Limits::default() };
    assert_eq!(limiter.admit_sync(&[(key("k"), zero_rate)], demand(1, 0), NOON).unwrap_err().available, None);
}

#[test]
fn headers_come_from_the_tightest_scope_of_each_kind() {
    let limiter = MemoryLimiter::new();
    let scopes = [
        (key("k"), Limits { requests_per_minute: Some(100), tokens_per_minute: Some(1_000), ..Limits::default() }),
        (team("t"), Limits { requests_per_minute: Some(10), tokens_per_minute: Some(100_000), ..Limits::default() }),
        (LimitScope::Global, Limits { max_concurrent: Some(100), ..Limits::default() }),
    ];
    let r = limiter.admit_sync(&scopes, demand(600, 0), NOON).unwrap();
    assert_eq!(r.headers.requests, Some(RateState { limit: 10, remaining: 9, reset_ms: 6_000 }));
    assert_eq!(r.headers.tokens, Some(RateState { limit: 1_000, remaining: 400, reset_ms: 36_000 }));
    limiter.settle_sync(r, usage(100, 0), NOON);
}

#[test]
fn settle_refunds_unused_tokens_releases_concurrency_and_keeps_the_request_counted() {
    let limiter = MemoryLimiter::new();
    let limits = all_limits();
    let scope = key("k");
    let r = limiter.admit_sync(&[(scope.clone(), limits.clone())], demand(1_000, 500), NOON).unwrap();
    let state = |kind| state_of(&limiter, &scope, &limits, NOON, kind);
    assert_eq!(state(LimitKind::Concurrent).used, 1);
    assert_eq!(state(LimitKind::TokensPerMinute).reserved, 1_000);
    assert_eq!((state(LimitKind::TokensPerDay).used, state(LimitKind::TokensPerDay).reserved), (0, 1_000));

    limiter.settle_sync(r, usage(300, 120), NOON);
    assert_eq!(state(LimitKind::Concurrent).used, 0);
    assert_eq!(state(LimitKind::RequestsPerMinute).remaining, 9);
    let tpm = state(LimitKind::TokensPerMinute);
    assert_eq!((tpm.used, tpm.reserved, tpm.remaining), (300, 0, 9_700));
    for kind in [LimitKind::TokensPerDay, LimitKind::TokensPerMonth] {
        assert_eq!((state(kind).used, state(kind).reserved), (300, 0));
    }
    for kind in [LimitKind::BudgetPerDay, LimitKind::BudgetPerMonth] {
        assert_eq!((state(kind).used, state(kind).reserved), (120, 0));
    }
}

#[test]
fn an_overrun_is_charged_in_full_and_the_window_refuses_until_it_rolls_over() {
    let limiter = MemoryLimiter::new();
    let limits = Limits { tokens_per_day: Some(1_000), budget_per_day: Some(Money(1_000)), ..Limits::default() };
    let scopes = [(key("k"), limits.clone())];
    let r = limiter.admit_sync(&scopes, demand(100, 100), NOON).unwrap();
    limiter.settle_sync(r, usage(1_500, 1_200), NOON);
    let day = state_of(&limiter, &key("k"), &limits, NOON, LimitKind::TokensPerDay);
    assert_eq!((day.limit, day.used, day.reserved, day.remaining), (1_000, 1_500, 0, 0));
    let budget = state_of(&limiter, &key("k"), &limits, NOON, LimitKind::BudgetPerDay);
    assert_eq!((budget.used, budget.remaining), (1_200, 0));

    let denial = limiter.admit_sync(&scopes, demand(1, 0), NOON).unwrap_err();
    assert_eq!((denial.limit, denial.reason), (LimitKind::TokensPerDay, DenialReason::QuotaExhausted));
    assert_eq!(denial.retry_after_ms, Some(12 * 3_600_000), "the next day repays the 500 over");
    // The next day starts with the 500 tokens (and 200 pico-units) the last one went over.
    let tomorrow = NOON + DAY_MS;
    let day = state_of(&limiter, &key("k"), &limits, tomorrow, LimitKind::TokensPerDay);
    assert_eq!((day.used, day.remaining), (500, 500));
    assert!(limiter.admit_sync(&scopes, demand(501, 0), tomorrow).is_err());
    let r = limiter.admit_sync(&scopes, demand(500, 800), tomorrow).unwrap();
    limiter.settle_sync(r, usage(500, 800), tomorrow);
    assert_eq!(state_of(&limiter, &key("k"), &limits, tomorrow + DAY_MS, LimitKind::TokensPerDay).used, 0);
}

#[test]
fn an_overrun_of_several_quotas_is_repaid_one_window_at_a_time_and_retry_after_says_when() {
    let limiter = MemoryLimiter::new();
    let limits = Limits { tokens_per_day: Some(1_000), ..Limits::default() };
    let scopes = [(key("k"), limits.clone())];
    let r = limiter.admit_sync(&scopes, demand(100, 0), NOON).unwrap();
    limiter.settle_sync(r, usage(3_500, 0), NOON);
    let midnight = utc(2027, 7, 22, 0, 0);
    let day = state_of(&limiter, &key("k"), &limits, NOON, LimitKind::TokensPerDay);
    assert_eq!(day.reset_ms, Some(midnight + 3 * DAY_MS - NOON), "whole again once 3 more days repaid it");
    // 10 tokens fit once what is carried is at most 990: on the third day after (3 500 - 3 * 1 000 = 500).
    let denial = limiter.admit_sync(&scopes, demand(10, 0), NOON).unwrap_err();
    assert_eq!(denial.retry_after_ms, Some(midnight + 2 * DAY_MS - NOON));
    for (days, carried) in [(0, 2_500), (1, 1_500), (2, 500), (3, 0)] {
        let at = midnight + days * DAY_MS;
        assert_eq!(state_of(&limiter, &key("k"), &limits, at, LimitKind::TokensPerDay).used, carried, "day {days}");
    }
    assert!(limiter.admit_sync(&scopes, demand(10, 0), midnight + 2 * DAY_MS - 1).is_err());
    limiter.admit_sync(&scopes, demand(10, 0), midnight + 2 * DAY_MS).unwrap();
}

#[test]
fn the_token_bucket_goes_into_debt_and_refuses_until_it_has_refilled_past_it() {
    let limiter = MemoryLimiter::new();
    let limits = Limits { tokens_per_minute: Some(600), ..Limits::default() }; // 10 tokens a second
    let scopes = [(key("k"), limits.clone())];
    let r = limiter.admit_sync(&scopes, demand(100, 0), NOON).unwrap();
    limiter.settle_sync(r, usage(1_000, 0), NOON);
    // 1 000 taken from a bucket of 600: 400 below empty.
    let tpm = state_of(&limiter, &key("k"), &limits, NOON, LimitKind::TokensPerMinute);
    assert_eq!((tpm.used, tpm.reserved, tpm.remaining, tpm.reset_ms), (1_000, 0, 0, Some(100_000)));
    // 60 tokens fit once 460 have refilled: 46 s.
    let denial = limiter.admit_sync(&scopes, demand(60, 0), NOON).unwrap_err();
    assert_eq!((denial.limit, denial.reason), (LimitKind::TokensPerMinute, DenialReason::RateLimited));
    assert_eq!(denial.retry_after_ms, Some(46_000));
    assert_eq!(limiter.admit_sync(&scopes, demand(60, 0), NOON + 45_999).unwrap_err().retry_after_ms, Some(1));
    let r = limiter.admit_sync(&scopes, demand(60, 0), NOON + 46_000).unwrap();
    assert_eq!(r.headers.tokens, Some(RateState { limit: 600, remaining: 0, reset_ms: 60_000 }));
}

#[test]
fn a_lowered_token_rate_empties_the_bucket_for_a_minute_but_keeps_an_overruns_debt() {
    let limiter = MemoryLimiter::new();
    let wide = Limits { tokens_per_minute: Some(1_000), ..Limits::default() };
    let narrow = Limits { tokens_per_minute: Some(100), ..Limits::default() };
    let r = limiter.admit_sync(&[(key("used"), wide.clone())], demand(1_000, 0), NOON).unwrap();
    limiter.settle_sync(r, usage(1_000, 0), NOON);
    // Reloaded to 100 a minute: empty, and full again one minute later (not after 900 tokens' worth).
    let tpm = state_of(&limiter, &key("used"), &narrow, NOON, LimitKind::TokensPerMinute);
    assert_eq!((tpm.remaining, tpm.reset_ms), (0, Some(60_000)));
    let denial = limiter.admit_sync(&[(key("used"), narrow.clone())], demand(100, 0), NOON).unwrap_err();
    assert_eq!(denial.retry_after_ms, Some(60_000));
    limiter.admit_sync(&[(key("used"), narrow.clone())], demand(100, 0), NOON + 60_000).unwrap();

    // An overrun of 1 400 on the bucket of 1 000 left it 500 below empty; that debt survives the reload.
    let r = limiter.admit_sync(&[(key("over"), wide)], demand(100, 0), NOON).unwrap();
    limiter.settle_sync(r, usage(1_500, 0), NOON);
    let tpm = state_of(&limiter, &key("over"), &narrow, NOON, LimitKind::TokensPerMinute);
    assert_eq!((tpm.used, tpm.remaining, tpm.reset_ms), (600, 0, Some(360_000)));
    let denial = limiter.admit_sync(&[(key("over"), narrow.clone())], demand(100, 0), NOON).unwrap_err();
    assert_eq!(denial.retry_after_ms, Some(360_000));
    limiter.admit_sync(&[(key("over"), narrow)], demand(100, 0), NOON + 360_000).unwrap();
}

#[test]
fn an_overrun_settled_after_midnight_is_charged_to_the_new_day() {
    let limiter = MemoryLimiter::new();
    let limits = Limits { tokens_per_day: Some(1_000), ..Limits::default() };
    let scopes = [(key("k"), limits.clone())];
    let before = utc(2027, 7, 21, 23, 59);
    let after = utc(2027, 7, 22, 0, 1);
    let r = limiter.admit_sync(&scopes, demand(100, 0), before).unwrap();
    let next_day = limiter.admit_sync(&scopes, demand(10, 0), after).unwrap();
    // Its reservation belonged to the day that ended; what it used beyond it is charged to this one.
    limiter.settle_sync(r, usage(700, 0), after);
    let day = state_of(&limiter, &key("k"), &limits, after, LimitKind::TokensPerDay);
    assert_eq!((day.used, day.reserved), (600, 10));
    drop(next_day);
}

#[test]
fn settling_after_midnight_charges_the_month_but_not_the_new_day() {
    let limiter = MemoryLimiter::new();
    let limits = all_limits();
    let scopes = [(key("k"), limits.clone())];
    let before = utc(2027, 7, 21, 23, 59);
    let after = utc(2027, 7, 22, 0, 1);
    let r = limiter.admit_sync(&scopes, demand(1_000, 0), before).unwrap();
    let next_day = limiter.admit_sync(&scopes, demand(10, 0), after).unwrap();
    limiter.settle_sync(r, usage(800, 0), after);
    let day = state_of(&limiter, &key("k"), &limits, after, LimitKind::TokensPerDay);
    assert_eq!((day.used, day.reserved), (0, 10));
    let month = state_of(&limiter, &key("k"), &limits, after, LimitKind::TokensPerMonth);
    assert_eq!((month.used, month.reserved), (800, 10));
    drop(next_day);
}

#[test]
fn settle_releases_what_was_taken_even_after_limits_change() {
    let limiter = MemoryLimiter::new();
    let old = Limits { max_concurrent: Some(1), tokens_per_minute: Some(1_000), ..Limits::default() };
    let r = limiter.admit_sync(&[(key("k"), old.clone())], demand(1_000, 0), NOON).unwrap();
    // Reload: the key loses its limits while the request runs, then gets them back.
    let reloaded = Limits { requests_per_minute: Some(100), ..Limits::default() };
    limiter.admit_sync(&[(key("k"), reloaded)], demand(1, 0), NOON).unwrap();
    limiter.settle_sync(r, usage(0, 0), NOON);
    limiter.admit_sync(&[(key("k"), old)], demand(1_000, 0), NOON).unwrap();
}

#[test]
fn dropped_reservation_frees_its_slot_and_charges_its_whole_demand() {
    let limiter = MemoryLimiter::new();
    let limits = all_limits();
    let r = limiter.admit_sync(&[(key("k"), limits.clone())], demand(1_000, 70), NOON).unwrap();
    drop(r);
    assert_eq!(state_of(&limiter, &key("k"), &limits, NOON, LimitKind::Concurrent).used, 0);
    let day = state_of(&limiter, &key("k"), &limits, NOON, LimitKind::TokensPerDay);
    assert_eq!((day.used, day.reserved), (1_000, 0));
    assert_eq!(state_of(&limiter, &key("k"), &limits, NOON, LimitKind::BudgetPerMonth).used, 70);
    assert_eq!(state_of(&limiter, &key("k"), &limits, NOON, LimitKind::TokensPerMinute).remaining, 9_000);
}

#[test]
fn seed_replaces_used_of_the_current_windows() {
    let limiter = MemoryLimiter::new();
    let limits = Limits { tokens_per_day: Some(1_000), budget_per_month: Some(Money(5_000)), ..Limits::default() };
    limiter.seed_sync(&key("k"), usage(950, 10), usage(2_000, 4_900), NOON);
    limiter.seed_sync(&key("k"), usage(900, 10), usage(2_000, 4_900), NOON);
    assert_eq!(state_of(&limiter, &key("k"), &limits, NOON, LimitKind::TokensPerDay).used, 900);
    let scopes = [(key("k"), limits.clone())];
    let denial = limiter.admit_sync(&scopes, demand(101, 0), NOON).unwrap_err();
    assert_eq!(denial.limit, LimitKind::TokensPerDay);
    let denial = limiter.admit_sync(&scopes, demand(100, 101), NOON).unwrap_err();
    assert_eq!(denial.limit, LimitKind::BudgetPerMonth);
    limiter.admit_sync(&scopes, demand(100, 100), NOON).unwrap();
}

#[test]
fn snapshot_lists_every_configured_limit_with_reset_times() {
    let limiter = MemoryLimiter::new();
    let limits = all_limits();
    let snapshot = limiter.snapshot_sync(&key("never-seen"), &limits, NOON);
    let kinds: Vec<_> = snapshot.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            LimitKind::RequestsPerMinute,
            LimitKind::TokensPerMinute,
            LimitKind::Concurrent,
            LimitKind::TokensPerDay,
            LimitKind::TokensPerMonth,
            LimitKind::BudgetPerDay,
            LimitKind::BudgetPerMonth,
        ]
    );
    let day = snapshot[3];
    assert_eq!((day.limit, day.used, day.remaining, day.reset_ms), (100_000, 0, 100_000, Some(12 * 3_600_000)));
    let month = snapshot[6];
    assert_eq!(month.reset_ms, Some(utc(2027, 8, 1, 0, 0) - NOON));
    assert_eq!(snapshot[2].reset_ms, None);
    assert!(limiter.snapshot_sync(&key("k"), &Limits::default(), NOON).is_empty());
}

#[test]
fn a_scope_listed_twice_counts_once() {
    let limiter = MemoryLimiter::new();
    let limits = Limits { tokens_per_day: Some(100), ..Limits::default() };
    let scopes = [(key("k"), limits.clone()), (key("k"), Limits { tokens_per_day: Some(1), ..Limits::default() })];
    let r = limiter.admit_sync(&scopes, demand(60, 0), NOON).unwrap();
    assert_eq!(r.scopes().len(), 1);
    assert_eq!(state_of(&limiter, &key("k"), &limits, NOON, LimitKind::TokensPerDay).reserved, 60);
    limiter.settle_sync(r, usage(60, 0), NOON);
}

#[test]
fn evict_idle_forgets_only_scopes_that_would_look_fresh() {
    let limiter = MemoryLimiter::new();
    let rate = Limits { requests_per_minute: Some(60), ..Limits::default() };
    let quota = Limits { tokens_per_day: Some(100), ..Limits::default() };
    let r = limiter.admit_sync(&[(key("rate"), rate.clone())], demand(0, 0), NOON).unwrap();
    limiter.settle_sync(r, usage(0, 0), NOON);
    let used = limiter.admit_sync(&[(key("quota"), quota.clone())], demand(10, 0), NOON).unwrap();
    limiter.settle_sync(used, usage(10, 0), NOON);
    let running = limiter.admit_sync(&[(key("running"), quota.clone())], demand(0, 0), NOON).unwrap();
    assert_eq!(limiter.len(), 3);

    // "running" holds nothing (zero demand, no concurrency limit), so it already looks fresh.
    assert_eq!(limiter.evict_idle(NOON), 1);
    assert_eq!(limiter.evict_idle(NOON + 1_000), 1); // the request rate replenished after 1 s
    assert_eq!(limiter.len(), 1);
    assert_eq!(limiter.evict_idle(utc(2027, 8, 1, 0, 0)), 1); // a new month: the quota's usage is history
    assert!(limiter.is_empty());
    limiter.settle_sync(running, usage(0, 0), NOON);
    limiter.admit_sync(&[(key("quota"), quota)], demand(100, 0), utc(2027, 8, 1, 0, 0)).unwrap();
}

#[test]
fn evict_idle_keeps_a_scope_while_an_overrun_is_carried() {
    let limiter = MemoryLimiter::new();
    let quota = Limits { tokens_per_day: Some(100), ..Limits::default() };
    let at = utc(2027, 7, 30, 12, 0);
    let r = limiter.admit_sync(&[(key("k"), quota)], demand(10, 0), at).unwrap();
    limiter.settle_sync(r, usage(250, 0), at);
    // On 1 August July's usage no longer counts, but the 50 tokens the 31st could not repay still do.
    assert_eq!(limiter.evict_idle(at + 2 * DAY_MS), 0);
    assert_eq!(limiter.evict_idle(at + 3 * DAY_MS), 1);
}

#[test]
fn a_token_debt_keeps_a_scope_until_it_is_repaid() {
    let limiter = MemoryLimiter::new();
    let rate = Limits { tokens_per_minute: Some(1), ..Limits::default() };
    let at = utc(2027, 7, 31, 23, 0);
    let r = limiter.admit_sync(&[(key("k"), rate)], demand(1, 0), at).unwrap();
    limiter.settle_sync(r, usage(100_000, 0), at);
    // 100 000 tokens at 1 a minute: repaid 100 000 minutes later, long after the month they were used in.
    assert_eq!(limiter.evict_idle(at + 6_000_000_000 - 1), 0);
    assert_eq!(limiter.evict_idle(at + 6_000_000_000), 1);
}

#[tokio::test]
async fn works_through_the_trait_object() {
    let limiter: std::sync::Arc<dyn Limiter> = std::sync::Arc::new(MemoryLimiter::new());
    let limits = all_limits();
    let scopes = [(key("k"), limits.clone()), (team("t"), limits.clone())];
    limiter.seed(&team("t"), usage(5, 5), usage(50, 50), NOON).await;
    let r = limiter.admit(&scopes, demand(100, 10), NOON).await.unwrap();
    limiter.settle(r, usage(40, 4), NOON).await;
    let snapshot = limiter.snapshot(&team("t"), &limits, NOON).await;
    let day = snapshot.iter().find(|s| s.kind == LimitKind::TokensPerDay).unwrap();
    assert_eq!(day.used, 45);
}

#[test]
fn denial_displays_what_to_change() {
    let limiter = MemoryLimiter::new();
    let scopes = [(team("eng"), Limits { tokens_per_minute: Some(10), ..Limits::default() })];
    let denial = limiter.admit_sync(&scopes, demand(11, 0), NOON).unwrap_err();
    assert_eq!(denial.to_string(), "request exceeds the limit: tokens_per_minute of team:eng");
}
