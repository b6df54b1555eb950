//! What a `team_admin` may do to its keys' limits: only lower them (docs/admin-api.md, "What a
//! team_admin may change").
//!
//! A request is admitted against its key's scope (`key tier ⊕ key overrides`), its team's scope
//! (`team tier ⊕ team overrides`) and the gateway's, so the most a key may use of a limit is the
//! smallest of the three ([`crate::caller_limits::scopes_for`]). For a team admin's change, per limit:
//!
//! * the **plan** value is the smaller of the key's tier's value and the team scope's value;
//! * the **current** value is the key's scope value now: its override, else its tier's (on
//!   create, the tier's, as for a key without overrides);
//! * the **new** value is the key's scope value after the change.
//!
//! The change is allowed when, for every limit, the new value equals the current one, or is at
//! most both the current and the plan value. An absent limit is "no limit", above every number.
//! So a team admin may set a limit its tier lacks (that lowers "no limit"), lower any limit and
//! resend what is there, but never raise a limit, remove one (a limit left out of a PATCH's
//! `limits` falls back to the tier's value, or to none), or go above its plan. Admins are not
//! bound by this.

use portcullis_config::Live;
use portcullis_limits::{Limits, PICO_PER_UNIT};
use portcullis_store::TeamRecord;
use portcullis_types::admin::LimitOverrides;

use crate::caller_limits::resolve;

/// The limits compared, in [`values`]' order; the last two are money (pico-units).
const NAMES: [&str; 7] = [
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent",
    "tokens_per_day",
    "tokens_per_month",
    "budget_per_day",
    "budget_per_month",
];
const FIRST_MONEY: usize = 5;

fn values(limits: &Limits) -> [Option<u64>; 7] {
    [
        limits.requests_per_minute,
        limits.tokens_per_minute,
        limits.max_concurrent,
        limits.tokens_per_day,
        limits.tokens_per_month,
        limits.budget_per_day.map(|money| money.0),
        limits.budget_per_month.map(|money| money.0),
    ]
}

/// Why a team admin may not give a key of tier `tier` in `team` the overrides `requested`
/// instead of `current` (empty on create), or `None` when it may.
pub fn widening(
    live: &Live,
    tier: &str,
    team: Option<&TeamRecord>,
    current: &LimitOverrides,
    requested: &LimitOverrides,
) -> Option<String> {
    let tier_only = values(&resolve(live, Some(tier), &LimitOverrides::default()));
    let team_scope = values(&team.map(|team| resolve(live, team.tier.as_deref(), &team.limits)).unwrap_or_default());
    let now = values(&resolve(live, Some(tier), current));
    let after = values(&resolve(live, Some(tier), requested));
    (0..NAMES.len()).find_map(|at| {
        let plan = smaller(tier_only[at], team_scope[at]);
        if after[at] == now[at] || at_most(after[at], smaller(now[at], plan)) {
            return None;
        }
        let show = |value: u64| if at >= FIRST_MONEY { units(value) } else { value.to_string() };
        let name = NAMES[at];
        let why = match (after[at], now[at], plan) {
            (None, Some(now), _) => {
                format!(
                    "leaving limits.{name} out would remove the key's limit of {} (PATCH replaces all of `limits`)",
                    show(now)
                )
            }
            (Some(new), _, Some(plan)) if new > plan => {
                format!(
                    "limits.{name} {} is above the plan's {} (the key's tier and its team's limits)",
                    show(new),
                    show(plan)
                )
            }
            (Some(new), Some(now), _) => {
                format!("limits.{name} {} is above the key's current {}", show(new), show(now))
            }
            // Not reached: a new value that is neither the current one nor within both bounds is
            // absent, above the plan or above the current value; kept total rather than panicking.
            _ => format!("limits.{name} would be raised"),
        };
        Some(format!("a team admin may only lower a key's limits: {why}"))
    })
}

/// The tighter of two limits (`None` = no limit).
fn smaller(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (limit, None) | (None, limit) => limit,
    }
}

/// `value ≤ bound`, where `None` is "no limit", above every number.
fn at_most(value: Option<u64>, bound: Option<u64>) -> bool {
    match (value, bound) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(value), Some(bound)) => value <= bound,
    }
}

/// Pico-units as exact currency units: `5000001000000` → `5.000001`.
fn units(pico: u64) -> String {
    let (whole, fraction) = (pico / PICO_PER_UNIT, pico % PICO_PER_UNIT);
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:012}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;

    const TIERS: &str = "[tiers.free]\nrequests_per_minute = 60\nbudget_per_day = 5.0\n\n\
                         [tiers.pro]\nrequests_per_minute = 600\n";

    fn config() -> Live {
        portcullis_config::Config::parse(TIERS, |_| None).unwrap().split().1
    }

    fn team(tier: Option<&str>, limits: LimitOverrides) -> TeamRecord {
        TeamRecord {
            name: "acme".into(),
            tier: tier.map(Into::into),
            limits,
            metadata: serde_json::json!({}),
            capture_content: false,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn rpm(value: u64) -> LimitOverrides {
        LimitOverrides { requests_per_minute: Some(value), ..Default::default() }
    }

    fn none() -> LimitOverrides {
        LimitOverrides::default()
    }

    #[test]
    fn the_plan_and_anything_lower_are_allowed_on_create() {
        let config = config();
        let acme = team(Some("free"), none());
        for requested in [none(), rpm(60), rpm(1), rpm(0), LimitOverrides { budget_per_day: Some(5.0), ..rpm(30) }] {
            assert_eq!(widening(&config, "free", Some(&acme), &none(), &requested), None, "{requested:?}");
        }
        // Limits the tier lacks may be set to anything: that lowers "no limit".
        let tpm = LimitOverrides { tokens_per_minute: Some(u64::MAX), max_concurrent: Some(3), ..Default::default() };
        assert_eq!(widening(&config, "free", Some(&acme), &none(), &tpm), None);
        assert_eq!(widening(&config, "free", None, &none(), &tpm), None, "a key in no team");
    }

    #[test]
    fn anything_above_the_tier_is_refused_naming_the_limit() {
        let config = config();
        let acme = team(Some("free"), none());
        let why = widening(&config, "free", Some(&acme), &none(), &rpm(1_000_000)).unwrap();
        assert_eq!(
            why,
            "a team admin may only lower a key's limits: limits.requests_per_minute 1000000 is above the plan's 60 \
             (the key's tier and its team's limits)"
        );
        let budget = LimitOverrides { budget_per_day: Some(5.000001), ..Default::default() };
        let why = widening(&config, "free", Some(&acme), &none(), &budget).unwrap();
        assert!(why.contains("limits.budget_per_day 5.000001 is above the plan's 5 "), "{why}");
        let huge = LimitOverrides { budget_per_day: Some(1e9), ..Default::default() };
        assert!(widening(&config, "free", Some(&acme), &none(), &huge).is_some());
    }

    #[test]
    fn a_team_limit_below_the_tier_is_the_plan() {
        let config = config();
        let acme = team(Some("free"), rpm(10));
        let why = widening(&config, "free", Some(&acme), &none(), &rpm(15)).unwrap();
        assert!(why.contains("limits.requests_per_minute 15 is above the plan's 10 "), "{why}");
        assert_eq!(widening(&config, "free", Some(&acme), &none(), &rpm(10)), None);
        // A team without a tier has only its own limits at team scope.
        let tierless = team(None, rpm(20));
        assert!(widening(&config, "free", Some(&tierless), &none(), &rpm(30)).is_some());
        assert_eq!(widening(&config, "free", Some(&tierless), &none(), &rpm(20)), None);
        // A team on a poorer tier than a key kept from before bounds the key too.
        let downgraded = team(Some("free"), none());
        assert!(widening(&config, "pro", Some(&downgraded), &rpm(50), &rpm(100)).is_some());
        assert_eq!(widening(&config, "pro", Some(&downgraded), &rpm(50), &rpm(40)), None);
    }

    #[test]
    fn a_key_is_never_raised_not_even_back_up_to_the_plan() {
        let config = config();
        let acme = team(Some("free"), none());
        assert!(widening(&config, "free", Some(&acme), &rpm(30), &rpm(60)).is_some());
        assert!(widening(&config, "free", Some(&acme), &rpm(30), &rpm(31)).is_some());
        assert_eq!(widening(&config, "free", Some(&acme), &rpm(30), &rpm(30)), None, "resent as is");
        assert_eq!(widening(&config, "free", Some(&acme), &rpm(30), &rpm(20)), None);
    }

    #[test]
    fn leaving_a_limit_out_of_a_patch_may_not_remove_or_raise_it() {
        let config = config();
        let acme = team(Some("free"), none());
        // An override below the tier: leaving it out goes back up to the tier's value.
        let why = widening(&config, "free", Some(&acme), &rpm(30), &none()).unwrap();
        assert!(why.contains("limits.requests_per_minute 60 is above the key's current 30"), "{why}");
        // A limit the tier lacks: leaving it out removes it.
        let tpm = LimitOverrides { tokens_per_minute: Some(1000), ..Default::default() };
        let why = widening(&config, "free", Some(&acme), &tpm, &none()).unwrap();
        assert!(why.contains("leaving limits.tokens_per_minute out would remove the key's limit of 1000"), "{why}");
        // An override equal to the tier's value may be left out: nothing changes.
        assert_eq!(widening(&config, "free", Some(&acme), &rpm(60), &none()), None);
    }

    #[test]
    fn what_an_admin_granted_above_the_plan_may_be_kept_or_lowered_to_the_plan() {
        let config = config();
        let acme = team(Some("free"), none());
        assert_eq!(widening(&config, "free", Some(&acme), &rpm(1000), &rpm(1000)), None);
        assert_eq!(widening(&config, "free", Some(&acme), &rpm(1000), &rpm(60)), None);
        assert!(widening(&config, "free", Some(&acme), &rpm(1000), &rpm(2000)).is_some());
        // Lowering it but staying above the plan is still above the plan.
        assert!(widening(&config, "free", Some(&acme), &rpm(1000), &rpm(500)).is_some());
    }

    #[test]
    fn money_is_shown_in_exact_units() {
        assert_eq!(units(0), "0");
        assert_eq!(units(5 * PICO_PER_UNIT), "5");
        assert_eq!(units(5_000_001_000_000), "5.000001");
        assert_eq!(units(1), "0.000000000001");
        assert_eq!(units(u64::MAX), "18446744.073709551615");
    }
}
