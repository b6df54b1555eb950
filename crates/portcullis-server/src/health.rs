//! `/healthz` (the process answers) and `/readyz` (it can serve: store reachable, not draining).

use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;

use crate::state::AppState;

pub async fn live() -> impl IntoResponse {
    "ok\n"
}

pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    match state.stores().migrator.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(error) => {
            tracing::warn!(%error, "readiness: store unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
        }
    }
}
