//! Where a caller's limits stand, as the API shows them: `GET /v1/usage` and the admin API's
//! credential explanation.

use portcullis_limits::{LimitScope, LimitState, Limiter, Millis, Money};
use portcullis_types::admin::{LimitStateView, ScopeLimitsView, ScopeView};
use serde_json::json;

use crate::caller_limits::{ScopedLimits, scope_kind};

/// Each scope's limits with what is used, reserved and left of them at `now`: one limiter read
/// per scope, nothing taken.
pub async fn snapshot(limiter: &dyn Limiter, scopes: &ScopedLimits, now: Millis) -> Vec<ScopeLimitsView> {
    let mut views = Vec::with_capacity(scopes.len());
    for (scope, limits) in scopes {
        let states = limiter.snapshot(scope, limits, now).await;
        views.push(ScopeLimitsView { scope: scope_view(scope), limits: states.iter().map(limit_state_view).collect() });
    }
    views
}

fn scope_view(scope: &LimitScope) -> ScopeView {
    let id = match scope {
        LimitScope::Key(id) | LimitScope::Team(id) => Some(id.to_string()),
        LimitScope::Global => None,
    };
    ScopeView { kind: scope_kind(scope).to_string(), id }
}

/// Requests and tokens as counts, money in currency units.
fn limit_state_view(state: &LimitState) -> LimitStateView {
    let amount = |value: u64| if state.kind.is_money() { json!(Money(value).to_units()) } else { json!(value) };
    LimitStateView {
        limit: state.kind.config_name().to_string(),
        max: amount(state.limit),
        used: amount(state.used),
        reserved: amount(state.reserved),
        remaining: amount(state.remaining),
        resets_in_ms: state.reset_ms,
    }
}
