//! `GET /v1/usage` (Portcullis extension): the caller's own limits, what is left of them, and
//! its spend this UTC day and month.

use axum::Json;
use axum::extract::State;
use http::HeaderMap;
use portcullis_auth::Scope;
use portcullis_limits::Money;
use portcullis_store::{UsageGrouping, UsageQuery, usage_add};
use portcullis_types::chain;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::ProxyState;
use super::{caller, team_of};
use crate::caller_limits::scopes_for;
use crate::clock::unix_millis;
use crate::error::ApiError;
use crate::exchange::Exchange;
use crate::limit_view;
use crate::principal::{Credential, Principal};

/// Any valid credential may read its own usage; no scope is needed (it reveals nothing about others).
pub async fn usage(
    State(state): State<ProxyState>,
    exchange: Exchange,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = caller(&state, &exchange, &headers, None::<Scope>).await?;
    let live = state.runtime().live.clone();
    let team = team_of(&state, &live, &principal).await?;
    let now = OffsetDateTime::now_utc();
    let scopes = scopes_for(&live, &principal, team.as_deref());
    let limits = limit_view::snapshot(state.limiter().as_ref(), &scopes, unix_millis(now)).await;
    let spend = spend(&state, &principal.id, now).await?;
    let tier = principal.tier(team.as_deref(), &live);
    let mut answer = json!({
        "object": "usage",
        "principal": principal_json(&principal, tier),
        "limits": serde_json::to_value(limits).map_err(|_| ApiError::Internal)?,
        "spend": spend,
    });
    // `key` predates `principal` and stays for key callers, whose clients may read it.
    if principal.credential == Credential::Key {
        answer["key"] = json!({ "id": principal.id, "team": principal.team, "tier": tier });
    }
    Ok(Json(answer))
}

/// Who the caller is: its principal id and kind, and for a token or certificate its issuer and
/// subject (never the credential).
fn principal_json(principal: &Principal, tier: &str) -> Value {
    let (issuer, subject) = match &principal.credential {
        Credential::Key => (None, None),
        Credential::External { issuer, subject, .. } => (Some(issuer), Some(subject)),
    };
    json!({
        "id": principal.id,
        "kind": principal.credential.principal_kind().name(),
        "issuer": issuer,
        "subject": subject,
        "team": principal.team,
        "tier": tier,
    })
}

/// Recorded usage (written within a second of each request's end) for today and this month.
async fn spend(state: &ProxyState, key_id: &str, now: OffsetDateTime) -> Result<Value, ApiError> {
    let today = now.replace_time(time::Time::MIDNIGHT);
    let month = today.replace_day(1).unwrap_or(today);
    let query = UsageQuery {
        key_id: Some(key_id.to_string()),
        team: None,
        model: None,
        since: month,
        until: now,
        group_by: UsageGrouping::Day,
    };
    let rows = state.stores().usage.usage_report(&query).await.map_err(|error| {
        tracing::error!(error = %chain(&error), "usage report failed");
        ApiError::Internal
    })?;
    let sum = |rows: &mut dyn Iterator<Item = &portcullis_store::UsageRow>| {
        let (mut requests, mut tokens, mut cost) = (0u64, 0u64, 0u64);
        // Saturating like the store's own sums: rows at the limit must not overflow here either.
        for row in rows {
            requests = usage_add(requests, row.requests);
            tokens = usage_add(tokens, usage_add(row.prompt_tokens, row.completion_tokens));
            cost = usage_add(cost, row.cost_pico);
        }
        json!({"requests": requests, "tokens": tokens, "cost": Money(cost).to_units()})
    };
    Ok(json!({
        "today": sum(&mut rows.iter().filter(|row| row.bucket.is_some_and(|bucket| bucket >= today))),
        "month": sum(&mut rows.iter()),
    }))
}
