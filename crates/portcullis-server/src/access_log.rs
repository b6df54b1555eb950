//! One log line and one metrics sample per request, on both listeners.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::request_id::RequestId;
use crate::state::AppState;

/// What a handler learned that the access log should say: who called, for which model.
/// Handlers put it in the response's extensions.
#[derive(Debug, Clone, Default)]
pub struct AccessInfo {
    pub principal: Option<String>,
    pub team: Option<String>,
    pub model: Option<String>,
    pub upstream: Option<String>,
}

impl AccessInfo {
    /// The handler's result as a response that carries this record.
    pub fn respond<T: IntoResponse>(self, result: Result<T, ApiError>) -> Response {
        let mut response = match result {
            Ok(body) => body.into_response(),
            Err(error) => error.into_response(),
        };
        response.extensions_mut().insert(self);
        response
    }
}

pub async fn proxy(State(state): State<AppState>, request: Request, next: Next) -> Response {
    record("proxy", state, request, next).await
}

pub async fn admin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    record("admin", state, request, next).await
}

async fn record(listener: &'static str, state: AppState, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let request_id = request.extensions().get::<RequestId>().cloned();
    let in_flight = state.metrics().in_flight(listener);
    in_flight.inc();
    let response = next.run(request).await;
    in_flight.dec();
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let info = response.extensions().get::<AccessInfo>().cloned().unwrap_or_default();
    let error = response.extensions().get::<ApiError>().map(|error| error.kind_and_code().1);
    state.metrics().record(listener, info.model.as_deref().unwrap_or(""), status, elapsed);
    tracing::info!(
        target: "portcullis::access",
        listener,
        %method,
        path,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = request_id.as_ref().map(RequestId::as_str),
        principal = info.principal,
        team = info.team,
        model = info.model,
        upstream = info.upstream,
        error,
    );
    response
}
