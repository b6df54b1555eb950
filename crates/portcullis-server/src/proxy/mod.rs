//! The client-facing listener: `/v1/*`, `/healthz`, `/readyz`.

mod admit;
mod authenticate;
mod authorize;
mod body;
mod capture;
mod demand;
mod inference;
mod meter;
mod models;
mod settle;
mod usage;

pub use authenticate::client_ip;
pub use settle::unix_millis;
mod sse;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::routing::{get, post};
use http::HeaderMap;
use portcullis_auth::Scope;

use crate::access_log::AccessInfo;
use crate::error::ApiError;
use crate::health;
use crate::misuse::FailureOutcome;
use crate::principal::Principal;
use crate::security::SecurityEvent;
use crate::state::AppState;

/// Stands in for the peer address when none was recorded (only in in-process tests).
const UNKNOWN_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// The accept loop adds the request id and the access log around it (see [`crate::access_log`]).
/// Authentication is the first step of every `/v1` handler (default deny); the health routes
/// are the only public ones.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(inference::chat))
        .route("/v1/completions", post(inference::completions))
        .route("/v1/embeddings", post(inference::embeddings))
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
async fn caller(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    scope: impl Into<Option<Scope>>,
    info: &mut AccessInfo,
) -> Result<Arc<Principal>, ApiError> {
    let now = time::OffsetDateTime::now_utc();
    let runtime = state.runtime();
    let client = authenticate::client_ip(peer, headers, &runtime.config.server.trusted_proxies);
    let misuse = state.misuse();
    if let Some(retry_after_secs) = misuse.blocked_for(client, Instant::now()) {
        return Err(ApiError::ClientBlocked { retry_after_secs });
    }
    let principal = match authenticate::authenticate(state, headers, now.unix_timestamp()).await {
        Ok(principal) => principal,
        Err(error) => {
            if error == ApiError::InvalidApiKey && misuse.auth_failed(client, Instant::now()) == FailureOutcome::Blocked
            {
                state.security_event(SecurityEvent::ClientBlocked { client });
            }
            return Err(error);
        }
    };
    info.principal = Some(principal.id.clone());
    info.team = principal.team.clone();
    if let Some(count) = misuse.key_request(&principal.id, (now.unix_timestamp() / 60) as u64) {
        state.security_event(SecurityEvent::Anomaly {
            key_id: principal.id.clone(),
            team: principal.team.clone(),
            requests_this_minute: count,
        });
    }
    authorize::check_address(&principal, client)?;
    if let Some(scope) = scope.into() {
        authorize::check_scope(&principal, scope)?;
    }
    Ok(principal)
}
