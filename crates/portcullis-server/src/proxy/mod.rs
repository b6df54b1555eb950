//! The client-facing listener: `/v1/*`, `/healthz`, `/readyz`.

mod admit;
mod answer;
mod anthropic;
mod authenticate;
mod authorize;
pub(crate) mod body;
pub(crate) mod capture;
mod demand;
mod dialect;
mod inference;
mod meter;
mod models;
mod prompt;
mod quota_wait;
mod refusal;
mod rename;
mod response_ids;
mod rewrite;
pub(crate) mod sealed;
mod settle;
pub(crate) mod shape;
mod state;
mod stored;
mod stream_error;
mod usage;

pub(crate) mod sse;

pub use response_ids::ResponseIds;
pub use state::{Parts, ProxyState};

pub(crate) use admit::{asked, price, reserve};
pub(crate) use answer::reported_usage;
pub(crate) use authorize::may_use_model;
pub(crate) use demand::TEMPLATE_SLACK;
pub(crate) use inference::serves;
pub(crate) use prompt::counted_bound;
pub(crate) use quota_wait::Patience;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::routing::{get, post};
use http::HeaderMap;
use portcullis_auth::Scope;
use portcullis_config::Live;
use portcullis_store::TeamRecord;

use crate::error::ApiError;
use crate::exchange::Exchange;
use crate::health;
use crate::misuse::FailureOutcome;
use crate::principal::Principal;
use crate::security::SecurityEvent;
use body::Operation;

/// Stands in for the client address when none was recorded (only in in-process tests).
const UNKNOWN_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// The accept loop adds the request id and the access log around it (see `listener::access_log`).
/// Authentication is the first step of every `/v1` handler (default deny); the health routes
/// are the only public ones.
pub fn router(state: ProxyState) -> Router {
    Router::new()
        .route("/v1/chat/completions", inference::route(Operation::Chat))
        .route("/v1/completions", inference::route(Operation::Completions))
        .route("/v1/embeddings", inference::route(Operation::Embeddings))
        .route("/v1/responses", inference::route(Operation::Responses))
        .route("/v1/responses/{id}", get(stored::get).delete(stored::delete))
        .route("/v1/responses/{id}/input_items", get(stored::input_items))
        .route("/v1/responses/{id}/cancel", post(stored::cancel))
        .route("/v1/messages", inference::route(Operation::Messages))
        .route("/v1/messages/count_tokens", inference::route(Operation::CountTokens))
        .route("/v1/rerank", inference::route(Operation::Rerank))
        .route("/v1/tokenize", inference::route(Operation::Tokenize))
        .route("/v1/detokenize", inference::route(Operation::Detokenize))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
        .route("/v1/usage", get(usage::usage))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
}

/// The phases every `/v1` call starts with: authenticate, then check the client address and
/// the scope the call needs (if any).
///
/// A client address blocked for failing authentication too often is refused only what it was
/// blocked for — unauthenticated attempts: behind a shared address (a NAT, an office, a load
/// balancer) a valid key keeps working while someone next to it guesses.
pub(crate) async fn caller(
    state: &ProxyState,
    exchange: &Exchange,
    headers: &HeaderMap,
    scope: impl Into<Option<Scope>>,
) -> Result<Arc<Principal>, ApiError> {
    let now = time::OffsetDateTime::now_utc();
    let client = exchange.meta().client_ip.unwrap_or(UNKNOWN_CLIENT);
    let misuse = state.misuse();
    let live = state.runtime().live.clone();
    let thresholds = &live.security;
    let certificate = exchange.meta().client_certificate.as_deref();
    let principal = match authenticate::authenticate(state, headers, certificate, now.unix_timestamp()).await {
        Ok(principal) => principal,
        Err(refused @ (ApiError::InvalidApiKey | ApiError::InvalidToken { .. })) => {
            if let Some(retry_after_secs) = misuse.blocked_for(client, Instant::now()) {
                return Err(ApiError::ClientBlocked { retry_after_secs });
            }
            if misuse.auth_failed(client, Instant::now(), thresholds) == FailureOutcome::Blocked {
                SecurityEvent::ClientBlocked { client }.raise(state.metrics(), state.auditor());
            }
            return Err(refused);
        }
        Err(error) => return Err(error),
    };
    exchange.note(|info| {
        info.principal = Some(principal.id.clone());
        info.credential = Some(principal.credential.clone());
        info.team = principal.team.clone();
    });
    if let Some(count) = misuse.key_request(&principal.id, (now.unix_timestamp() / 60) as u64, thresholds) {
        let anomaly = SecurityEvent::Anomaly {
            principal: principal.id.clone(),
            credential: principal.credential.clone(),
            team: principal.team.clone(),
            requests_this_minute: count,
        };
        anomaly.raise(state.metrics(), state.auditor());
    }
    authorize::check_address(&principal, client)?;
    if let Some(scope) = scope.into() {
        authorize::check_scope(&principal, scope)?;
    }
    Ok(principal)
}

/// The caller's team, for its limits, its capture setting and (for a key without a tier of its
/// own) its tier; looked up once per request, from memory after the first time.
pub(crate) async fn team_of(
    state: &ProxyState,
    live: &Live,
    principal: &Principal,
) -> Result<Option<Arc<TeamRecord>>, ApiError> {
    let Some(name) = &principal.team else { return Ok(None) };
    let max_age = live.store.cache_max_age.0;
    state.teams().get(name, max_age).await.map_err(|error| ApiError::from_store(&error, "team lookup"))
}
