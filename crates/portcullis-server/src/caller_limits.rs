//! Which limits apply to a caller (key, team and global, each a tier's defaults under its own
//! overrides), and how the limiter's answers look on the wire: `x-ratelimit-*` headers and the
//! 429 / 400 errors.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use portcullis_config::Live;
use portcullis_limits::{Denial, DenialReason, LimitScope, Limits, Money, RateHeaders, RateState};
use portcullis_store::TeamRecord;
use portcullis_types::admin::LimitOverrides;

use crate::error::ApiError;
use crate::principal::Principal;

/// Limits by the scope they apply to.
pub type ScopedLimits = Vec<(LimitScope, Limits)>;

/// Key, team and global limits for one caller; scopes without any limit are left out.
pub fn scopes_for(live: &Live, principal: &Principal, team: Option<&TeamRecord>) -> ScopedLimits {
    let mut scopes = Vec::with_capacity(3);
    let key = resolve(live, Some(principal.tier(team, live)), &principal.limits);
    push(&mut scopes, LimitScope::Key(Arc::from(principal.id.as_str())), key);
    if let Some(team) = team {
        let limits = resolve(live, team.tier.as_deref(), &team.limits);
        push(&mut scopes, LimitScope::Team(Arc::from(team.name.as_str())), limits);
    }
    push(&mut scopes, LimitScope::Global, to_limits(&live.limits.global, None));
    scopes
}

/// `scopes` split in two: the request rate and concurrency, taken before a request's body is
/// read (so that a client cannot hold more bodies open than it may run requests), and the token
/// and money limits, reserved once the body says how much it may use. Scopes left without a
/// limit are dropped from either side.
pub fn split(scopes: ScopedLimits) -> (ScopedLimits, ScopedLimits) {
    let mut requests = Vec::with_capacity(scopes.len());
    let mut tokens = Vec::with_capacity(scopes.len());
    for (scope, limits) in scopes {
        let rate = Limits {
            requests_per_minute: limits.requests_per_minute,
            burst: limits.burst,
            max_concurrent: limits.max_concurrent,
            ..Limits::default()
        };
        let amounts = Limits { requests_per_minute: None, burst: None, max_concurrent: None, ..limits };
        push(&mut requests, scope.clone(), rate);
        push(&mut tokens, scope, amounts);
    }
    (requests, tokens)
}

fn push(scopes: &mut ScopedLimits, scope: LimitScope, limits: Limits) {
    if limits != Limits::default() {
        scopes.push((scope, limits));
    }
}

/// A tier's limits with every override that is set taking its place. The admin API's team_admin
/// rule (`admin::plan`) compares keys' limits through this same function.
pub(crate) fn resolve(live: &Live, tier: Option<&str>, overrides: &LimitOverrides) -> Limits {
    let tier = tier.and_then(|name| live.tier(name));
    let base = tier.map(|tier| &tier.limits);
    let merged = LimitOverrides {
        requests_per_minute: overrides.requests_per_minute.or(base.and_then(|base| base.requests_per_minute)),
        tokens_per_minute: overrides.tokens_per_minute.or(base.and_then(|base| base.tokens_per_minute)),
        max_concurrent: overrides.max_concurrent.or(base.and_then(|base| base.max_concurrent)),
        tokens_per_day: overrides.tokens_per_day.or(base.and_then(|base| base.tokens_per_day)),
        tokens_per_month: overrides.tokens_per_month.or(base.and_then(|base| base.tokens_per_month)),
        budget_per_day: overrides.budget_per_day.or(base.and_then(|base| base.budget_per_day)),
        budget_per_month: overrides.budget_per_month.or(base.and_then(|base| base.budget_per_month)),
    };
    to_limits(&merged, tier.and_then(|tier| tier.burst))
}

fn to_limits(limits: &LimitOverrides, burst: Option<u64>) -> Limits {
    Limits {
        requests_per_minute: limits.requests_per_minute,
        burst: burst.filter(|_| limits.requests_per_minute.is_some()),
        tokens_per_minute: limits.tokens_per_minute,
        max_concurrent: limits.max_concurrent,
        tokens_per_day: limits.tokens_per_day,
        tokens_per_month: limits.tokens_per_month,
        budget_per_day: limits.budget_per_day.map(Money::from_units),
        budget_per_month: limits.budget_per_month.map(Money::from_units),
    }
}

/// The OpenAI `x-ratelimit-*` headers for the tightest request and token limits.
pub fn insert_headers(headers: &mut HeaderMap, rate: &RateHeaders) {
    let mut put = |names: &RateHeaderNames, state: &RateState| {
        headers.insert(names.limit.clone(), HeaderValue::from(state.limit));
        headers.insert(names.remaining.clone(), HeaderValue::from(state.remaining));
        if let Ok(reset) = HeaderValue::try_from(reset_text(state.reset_ms)) {
            headers.insert(names.reset.clone(), reset);
        }
    };
    if let Some(requests) = &rate.requests {
        put(&REQUEST_HEADERS, requests);
    }
    if let Some(tokens) = &rate.tokens {
        put(&TOKEN_HEADERS, tokens);
    }
}

/// The three `x-ratelimit-*` names of one limit, built once (cloning a static name is free).
struct RateHeaderNames {
    limit: http::HeaderName,
    remaining: http::HeaderName,
    reset: http::HeaderName,
}

static REQUEST_HEADERS: RateHeaderNames = RateHeaderNames {
    limit: http::HeaderName::from_static("x-ratelimit-limit-requests"),
    remaining: http::HeaderName::from_static("x-ratelimit-remaining-requests"),
    reset: http::HeaderName::from_static("x-ratelimit-reset-requests"),
};

static TOKEN_HEADERS: RateHeaderNames = RateHeaderNames {
    limit: http::HeaderName::from_static("x-ratelimit-limit-tokens"),
    remaining: http::HeaderName::from_static("x-ratelimit-remaining-tokens"),
    reset: http::HeaderName::from_static("x-ratelimit-reset-tokens"),
};

/// OpenAI's duration style: `20ms`, `1s`, `6m0s`.
fn reset_text(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let seconds = ms.div_ceil(1000);
    if seconds < 60 { format!("{seconds}s") } else { format!("{}m{}s", seconds / 60, seconds % 60) }
}

/// `key`, `team` or `global`: a metric label that never grows with the number of callers.
pub fn scope_kind(scope: &LimitScope) -> &'static str {
    match scope {
        LimitScope::Key(_) => "key",
        LimitScope::Team(_) => "team",
        LimitScope::Global => "global",
    }
}

/// The answer to a denied admission. `oversized` names the request parameter that made a
/// request too big for a limit's whole capacity.
pub fn denial_error(denial: &Denial, oversized: &'static str) -> ApiError {
    let scope = match &denial.scope {
        LimitScope::Key(_) => "this key".to_string(),
        LimitScope::Team(team) => format!("team '{team}'"),
        LimitScope::Global => "the gateway".to_string(),
    };
    let limit = denial.limit.config_name();
    let retry_after_secs = denial.retry_after_ms.map_or(1, |ms| ms.div_ceil(1000).max(1));
    match denial.reason {
        DenialReason::RateLimited => ApiError::RateLimited {
            message: format!("Rate limit reached: {limit} of {scope}. Retry after {retry_after_secs}s."),
            retry_after_secs,
        },
        DenialReason::QuotaExhausted => ApiError::InsufficientQuota {
            message: format!("Quota exhausted: {limit} of {scope}. It resets in {retry_after_secs}s."),
            retry_after_secs,
        },
        DenialReason::NeverFits => ApiError::RequestExceedsLimit {
            message: format!("This request could never fit {limit} of {scope}; lower '{oversized}'."),
            param: oversized,
        },
    }
}

/// Restores the day and month counters from persisted usage, so a restart neither resets
/// quotas nor counts anything twice.
pub async fn seed_from_usage(
    limiter: &dyn portcullis_limits::Limiter,
    usage: &dyn portcullis_store::UsageStore,
    now: time::OffsetDateTime,
) -> Result<(), portcullis_store::StoreError> {
    use std::collections::HashMap;

    use portcullis_limits::Usage;

    let day_start = now.replace_time(time::Time::MIDNIGHT);
    let month_start = day_start.replace_day(1).unwrap_or(day_start);
    let mut totals: HashMap<LimitScope, (Usage, Usage)> = HashMap::new();
    for (since, is_day) in [(month_start, false), (day_start, true)] {
        for total in usage.usage_totals_since(since).await? {
            let amount = Usage { tokens: total.tokens, cost: Money(total.cost_pico) };
            let mut scopes = vec![LimitScope::Global, LimitScope::Key(Arc::from(total.key_id.as_str()))];
            scopes.extend(total.team.as_deref().map(|team| LimitScope::Team(Arc::from(team))));
            for scope in scopes {
                let (day, month) = totals.entry(scope).or_default();
                let window = if is_day { day } else { month };
                window.tokens = window.tokens.saturating_add(amount.tokens);
                window.cost = window.cost.saturating_add(amount.cost);
            }
        }
    }
    let now_ms = crate::clock::unix_millis(now);
    for (scope, (day, month)) in &totals {
        limiter.seed(scope, *day, *month, now_ms).await;
    }
    tracing::info!(scopes = totals.len(), "limits restored from recorded usage");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_puts_rate_and_concurrency_before_the_body_and_amounts_after() {
        let key = LimitScope::Key(Arc::from("k"));
        let all = Limits {
            requests_per_minute: Some(10),
            burst: Some(2),
            max_concurrent: Some(3),
            tokens_per_minute: Some(100),
            tokens_per_day: Some(1000),
            budget_per_month: Some(Money::from_units(1.0)),
            ..Limits::default()
        };
        let only_tokens = Limits { tokens_per_day: Some(5), ..Limits::default() };
        let (requests, tokens) = split(vec![(key.clone(), all), (LimitScope::Global, only_tokens.clone())]);
        assert_eq!(
            requests,
            vec![(
                key.clone(),
                Limits { requests_per_minute: Some(10), burst: Some(2), max_concurrent: Some(3), ..Limits::default() }
            )]
        );
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].1.tokens_per_minute, Some(100));
        assert_eq!((tokens[0].1.requests_per_minute, tokens[0].1.max_concurrent), (None, None));
        assert_eq!(tokens[1], (LimitScope::Global, only_tokens));
    }

    #[test]
    fn reset_text_matches_openai_style() {
        assert_eq!(reset_text(20), "20ms");
        assert_eq!(reset_text(1000), "1s");
        assert_eq!(reset_text(1001), "2s");
        assert_eq!(reset_text(360_000), "6m0s");
    }
}
