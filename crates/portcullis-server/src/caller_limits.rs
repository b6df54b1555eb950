//! Which limits apply to a caller (key, team and global, each a tier's defaults under its own
//! overrides), and how the limiter's answers look on the wire: `x-ratelimit-*` headers and the
//! 429 / 400 errors.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use portcullis_config::Live;
use portcullis_limits::{Denial, DenialReason, LimitKind, LimitScope, Limits, Money, Price, RateHeaders, RateState};
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

/// What a refused request asked for, so that its refusal can say what would pass instead.
#[derive(Clone, Copy, Debug)]
pub struct Asked {
    /// The parameter of its completion cap (`max_tokens`, `max_output_tokens`) and the cap per
    /// choice it reserved; `None` for what generates nothing.
    pub cap: Option<(&'static str, u64)>,
    /// The field its prompt is in.
    pub prompt_param: &'static str,
    /// Tokens its prompt may take, as reserved.
    pub prompt_bound: u64,
    pub choices: u64,
    pub price: Price,
}

impl Asked {
    /// The largest completion cap under its own with which the request fits `available` of a limit
    /// of `kind` (tokens, or pico-units for budgets): the worst case it would reserve is then
    /// within it. `None` when it generates nothing, or not even a cap of 1 fits.
    fn fitting_cap(&self, kind: LimitKind, available: u64) -> Option<u64> {
        let (_, cap) = self.cap?;
        let choices = self.choices.max(1);
        let fitting = if kind.is_money() {
            let prompt = self.price.input_per_token.0.saturating_mul(self.prompt_bound);
            let per_token = self.price.output_per_token.0.saturating_mul(choices);
            // A free completion is never what a budget refuses.
            available.checked_sub(prompt)?.checked_div(per_token)?
        } else {
            available.checked_sub(self.prompt_bound)? / choices
        };
        (1..cap).contains(&fitting).then_some(fitting)
    }
}

/// The answer to a denied admission: what the client can do about it, in its own terms — the
/// largest completion cap that fits now when a smaller one would, the time a window resets, or
/// that a limit of 0 pays for nothing.
pub fn denial_error(denial: &Denial, asked: &Asked) -> ApiError {
    let scope = match &denial.scope {
        LimitScope::Key(_) => "this key".to_string(),
        LimitScope::Team(team) => format!("team '{team}'"),
        LimitScope::Global => "the gateway".to_string(),
    };
    let limit = denial.limit.config_name();
    let retry_after_secs = denial.retry_after_ms.map(|ms| ms.div_ceil(1000).max(1));
    let fitting = denial.available.and_then(|available| asked.fitting_cap(denial.limit, available));
    let smaller = fitting.zip(asked.cap).map(|(cap, (param, _))| format!("'{param}' of at most {cap} fits now"));
    match denial.reason {
        DenialReason::RateLimited => {
            let retry_after_secs = retry_after_secs.unwrap_or(1);
            ApiError::RateLimited {
                message: format!("Rate limit reached: {limit} of {scope}. Retry after {retry_after_secs}s."),
                retry_after_secs,
            }
        }
        DenialReason::QuotaExhausted => {
            let resets = retry_after_secs.map_or(String::new(), |secs| format!(" It resets in {secs}s."));
            let message = match smaller {
                Some(smaller) => format!("Quota too low for this request: {limit} of {scope}; {smaller}.{resets}"),
                None => format!("Quota exhausted: {limit} of {scope}.{resets}"),
            };
            ApiError::InsufficientQuota { message, retry_after_secs }
        }
        // Refused after waiting for them as long as the model's queue_timeout allows.
        DenialReason::HeldByReservations => {
            let held =
                format!("Quota held by running requests: {limit} of {scope} is reserved by requests still running");
            let message = match smaller {
                Some(smaller) => format!("{held}; {smaller}, or retry when they finish."),
                None => format!("{held}; retry when they finish."),
            };
            ApiError::InsufficientQuota { message, retry_after_secs: Some(1) }
        }
        DenialReason::NeverFits => match (fitting, asked.cap) {
            (Some(cap), Some((param, _))) => ApiError::RequestExceedsLimit {
                message: format!("This request could never fit {limit} of {scope}; lower '{param}' to at most {cap}."),
                param,
            },
            _ if denial.available.is_none_or(|available| available == 0) => ApiError::InsufficientQuota {
                message: format!("The {limit} of {scope} is 0: it admits no request."),
                retry_after_secs: None,
            },
            _ => ApiError::RequestExceedsLimit {
                message: format!(
                    "This request's prompt alone could never fit {limit} of {scope}; shorten '{}'.",
                    asked.prompt_param
                ),
                param: asked.prompt_param,
            },
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

    fn denial(limit: LimitKind, reason: DenialReason, retry_after_ms: Option<u64>, available: Option<u64>) -> Denial {
        Denial { scope: LimitScope::Key(Arc::from("k")), limit, reason, retry_after_ms, available }
    }

    fn chat(prompt_bound: u64, cap: u64, choices: u64, price: Price) -> Asked {
        Asked { cap: Some(("max_tokens", cap)), prompt_param: "messages", prompt_bound, choices, price }
    }

    /// Status, code, message and `Retry-After` of an answer.
    fn answer(error: &ApiError) -> (u16, String, String, Option<u64>) {
        use axum::response::IntoResponse;
        let body = error.body().error;
        let response = error.clone().into_response();
        let retry = response.headers().get(http::header::RETRY_AFTER).map(|v| v.to_str().unwrap().parse().unwrap());
        (error.status_code().as_u16(), body.code.unwrap_or_default(), body.message, retry)
    }

    fn param(error: &ApiError) -> Option<String> {
        error.body().error.param
    }

    #[test]
    fn a_quota_with_room_for_a_smaller_cap_names_the_largest_that_fits_now() {
        // 500 tokens left, a prompt of up to 100, two choices: (500 − 100) / 2 = 200 each.
        let spent = denial(LimitKind::TokensPerDay, DenialReason::QuotaExhausted, Some(3_600_000), Some(500));
        let (status, code, message, retry) = answer(&denial_error(&spent, &chat(100, 256, 2, Price::FREE)));
        assert_eq!((status, code.as_str(), retry), (429, "insufficient_quota", Some(3_600)));
        assert!(message.contains("'max_tokens' of at most 200 fits now"), "{message}");
        // Too little left even for a cap of 1: only the reset time.
        let (_, _, message, _) = answer(&denial_error(&spent, &chat(499, 256, 2, Price::FREE)));
        assert_eq!(message, "Quota exhausted: tokens_per_day of this key. It resets in 3600s.");
    }

    #[test]
    fn a_budget_hint_counts_the_prompt_and_completion_prices() {
        // 0.10 per million in, 0.20 out: 100 000 and 200 000 pico-units a token.
        let price = Price::per_million(0.10, 0.20);
        let left = 100 * 100_000 + 37 * 200_000 + 199_999;
        let held = denial(LimitKind::BudgetPerMonth, DenialReason::HeldByReservations, None, Some(left));
        let (status, code, message, retry) = answer(&denial_error(&held, &chat(100, 512, 1, price)));
        assert_eq!((status, code.as_str(), retry), (429, "insufficient_quota", Some(1)));
        assert!(message.starts_with("Quota held by running requests: budget_per_month of this key"), "{message}");
        assert!(message.contains("'max_tokens' of at most 37 fits now"), "{message}");
        let responses = Asked { cap: Some(("max_output_tokens", 512)), ..chat(100, 512, 1, price) };
        assert!(answer(&denial_error(&held, &responses)).2.contains("'max_output_tokens' of at most 37"));
    }

    #[test]
    fn a_limit_of_zero_is_insufficient_quota_not_a_smaller_cap() {
        let zero = denial(LimitKind::BudgetPerDay, DenialReason::NeverFits, None, Some(0));
        let (status, code, message, retry) =
            answer(&denial_error(&zero, &chat(20, 64, 1, Price::per_million(1.0, 1.0))));
        assert_eq!((status, code.as_str(), retry), (429, "insufficient_quota", None));
        assert_eq!(message, "The budget_per_day of this key is 0: it admits no request.");
        let no_requests = denial(LimitKind::Concurrent, DenialReason::NeverFits, None, None);
        assert_eq!(answer(&denial_error(&no_requests, &chat(20, 64, 1, Price::FREE))).0, 429);
    }

    #[test]
    fn a_request_larger_than_the_whole_limit_names_the_cap_that_would_fit() {
        let whole = denial(LimitKind::TokensPerDay, DenialReason::NeverFits, None, Some(1_000));
        let error = denial_error(&whole, &chat(100, 4_096, 1, Price::FREE));
        let (status, code, message, _) = answer(&error);
        assert_eq!(
            (status, code.as_str(), param(&error).as_deref()),
            (400, "request_exceeds_limit", Some("max_tokens"))
        );
        assert!(message.ends_with("lower 'max_tokens' to at most 900."), "{message}");
        // A prompt that alone exceeds the limit: no cap helps, the prompt must shrink.
        let error = denial_error(&whole, &chat(1_200, 16, 1, Price::FREE));
        assert_eq!((error.status_code().as_u16(), param(&error).as_deref()), (400, Some("messages")));
        let embeddings = Asked { cap: None, prompt_param: "input", ..chat(1_200, 0, 1, Price::FREE) };
        assert_eq!(param(&denial_error(&whole, &embeddings)).as_deref(), Some("input"));
    }

    #[test]
    fn rate_limits_keep_their_own_answer() {
        let rate = denial(LimitKind::RequestsPerMinute, DenialReason::RateLimited, Some(1_500), None);
        let (status, code, _, retry) = answer(&denial_error(&rate, &chat(10, 10, 1, Price::FREE)));
        assert_eq!((status, code.as_str(), retry), (429, "rate_limit_exceeded", Some(2)));
    }

    #[test]
    fn reset_text_matches_openai_style() {
        assert_eq!(reset_text(20), "20ms");
        assert_eq!(reset_text(1000), "1s");
        assert_eq!(reset_text(1001), "2s");
        assert_eq!(reset_text(360_000), "6m0s");
    }
}
