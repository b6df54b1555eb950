//! `/healthz` (the process answers) and `/readyz` (it can serve, and how well).
//!
//! `/readyz` answers 503 only while draining. A replica whose store or shared limiter is down
//! still serves what it can (cached keys; limits by policy), and so do all its peers that share
//! the same store and Redis: taking them all out of a load balancer would turn a degradation
//! into an outage. It answers 200 with `"status": "degraded"` and names each component's state,
//! for operators and alerts (the same states are on `/metrics`). Token issuers are named one by
//! one under `issuers`: an issuer whose keys or introspection endpoint cannot be reached makes
//! the replica `degraded`, not unready — keys and the other issuers' tokens still work, and every
//! replica would see the same issuer down.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use portcullis_types::chain;
use serde_json::json;

use std::sync::Arc;

use portcullis_audit::AuditStats;
use portcullis_store::Migrator;

use crate::lifecycle::Lifecycle;
use crate::limiter::LimiterHandle;
use crate::runtime::SharedRuntime;

/// What `/readyz` looks at; both listeners' states hold one.
#[derive(Clone)]
pub struct Readiness {
    pub lifecycle: Lifecycle,
    /// Pinged for the store's state.
    pub store: Arc<dyn Migrator>,
    pub limiter: LimiterHandle,
    pub audit: Arc<AuditStats>,
    /// For the token issuers' states.
    pub runtime: SharedRuntime,
}

pub async fn live() -> impl IntoResponse {
    "ok\n"
}

pub async fn ready(State(state): State<Readiness>) -> Response {
    if state.lifecycle.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "draining" }))).into_response();
    }
    let store = match state.store.ping().await {
        Ok(()) => "ok",
        Err(error) => {
            tracing::warn!(error = %chain(&error), "readiness: store unreachable");
            "unavailable"
        }
    };
    let limiter = state.limiter.health();
    let audit = state.audit.snapshot();
    let audit = if audit.spilled > audit.replayed || audit.unwritten > 0 { "spilling" } else { "ok" };
    let issuers: serde_json::Map<String, serde_json::Value> =
        state.runtime.load().tokens.health().iter().map(|issuer| (issuer.name.clone(), issuer_state(issuer))).collect();
    let issuers_ok = issuers.values().all(|issuer| issuer["keys"] == "ok" && issuer["introspection"] != "unavailable");
    let degraded = store != "ok" || limiter.is_degraded() || audit != "ok" || !issuers_ok;
    let mut body = json!({
        "status": if degraded { "degraded" } else { "ready" },
        "store": store,
        "limiter": limiter.name(),
        "audit": audit,
    });
    if !issuers.is_empty() {
        body["issuers"] = serde_json::Value::Object(issuers);
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// `keys`: `ok`, `loading` (not fetched yet), `stale` (the last fetch failed; the previous keys
/// serve) or `unavailable` (never fetched, and the last try failed); `introspection`: `ok` or
/// `unavailable` (the last call failed), when configured.
fn issuer_state(issuer: &portcullis_oidc::IssuerHealth) -> serde_json::Value {
    let keys = match (issuer.keys, &issuer.last_error) {
        (0, None) => "loading",
        (0, Some(_)) => "unavailable",
        (_, Some(_)) => "stale",
        (_, None) => "ok",
    };
    let mut state = json!({ "keys": keys });
    if let Some(ok) = issuer.introspection_ok {
        state["introspection"] = json!(if ok { "ok" } else { "unavailable" });
    }
    state
}
