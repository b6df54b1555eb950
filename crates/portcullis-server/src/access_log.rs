//! Around every request on both listeners: its id, then one log line, one metrics sample and
//! one audit record. Called by the accept loop around the router (not as router layers: each
//! layer would box the request's future once more).

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};

use http::header;
use portcullis_audit::AuditEvent;
use portcullis_store::{AuditDecision, AuditKind};
use time::OffsetDateTime;
use tower::ServiceExt;

use crate::audit::DeferredAudit;
use crate::error::ApiError;
use crate::request_id::{self, RequestId};
use crate::state::AppState;

/// What a handler learned that the access log should say: who called, for which model.
/// Handlers put it in the response's extensions.
#[derive(Debug, Clone, Default)]
pub struct AccessInfo {
    pub principal: Option<String>,
    pub team: Option<String>,
    pub model: Option<String>,
    pub upstream: Option<String>,
    pub stream: bool,
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

/// Serves `request` with `router` on `listener` (`"proxy"` or `"admin"`): the request gets its
/// id first, so that every answer, even an error, carries one.
pub async fn serve(listener: &'static str, state: &AppState, router: Router, mut request: Request) -> Response {
    let id = request_id::assign(&mut request);
    let mut response = record(listener, state, router, request).await;
    response.headers_mut().insert(request_id::HEADER, id);
    response
}

async fn record(listener: &'static str, state: &AppState, router: Router, request: Request) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let request_id = request.extensions().get::<RequestId>().cloned();
    let client_ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|peer| crate::proxy::client_ip(peer.0, request.headers(), &state.runtime().config.server.trusted_proxies));
    let user_agent = request.headers().get(header::USER_AGENT).and_then(|value| value.to_str().ok()).map(short);
    let in_flight = state.metrics().in_flight(listener);
    in_flight.inc();
    let Ok(mut response) = router.oneshot(request).await;
    in_flight.dec();
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    // Both were left for this layer alone: taken, not cloned.
    let info = response.extensions_mut().remove::<AccessInfo>().unwrap_or_default();
    let error = response.extensions_mut().remove::<ApiError>();
    let code = error.as_ref().map(|error| error.kind_and_code().1);
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
        error = code,
    );
    if !is_audited(listener, &path, status) {
        return response;
    }
    let (decision, reason) = decision(status, error.as_ref(), info.upstream.is_some());
    let mut event = AuditEvent::new(OffsetDateTime::now_utc(), kind_of(listener), decision, status);
    event.request_id = request_id.map(|id| id.as_str().to_string());
    event.key_id = info.principal;
    event.team = info.team;
    event.client_ip = client_ip.map(|ip| ip.to_string());
    event.method = Some(method.to_string());
    event.path = Some(path);
    event.model = info.model;
    event.upstream = info.upstream;
    event.reason = reason;
    event.stream = info.stream;
    event.latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    event.user_agent = user_agent;
    match response.extensions().get::<DeferredAudit>() {
        // The body is still to come: its settlement completes and submits this record.
        Some(deferred) => deferred.park(event, started),
        None => state.auditor().record(event).await,
    }
    response
}

/// Every proxy request but health probes; on the admin listener only refusals (successful
/// changes are recorded by their handlers, with what they changed; reads are not recorded).
fn is_audited(listener: &str, path: &str, status: u16) -> bool {
    if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return false;
    }
    listener == "proxy" || status >= 400
}

fn kind_of(listener: &str) -> AuditKind {
    if listener == "proxy" { AuditKind::Request } else { AuditKind::Admin }
}

/// Allowed; refused by the gateway (with its error code); or allowed but failed upstream.
fn decision(status: u16, error: Option<&ApiError>, reached_upstream: bool) -> (AuditDecision, Option<String>) {
    match error {
        Some(error) => {
            let (kind, code) = error.kind_and_code();
            let decision = if kind == "upstream_error" { AuditDecision::Error } else { AuditDecision::Deny };
            (decision, Some(code.to_string()))
        }
        None if status >= 400 && reached_upstream => (AuditDecision::Error, Some("upstream_status".into())),
        None if status >= 400 => (AuditDecision::Deny, None),
        None => (AuditDecision::Allow, None),
    }
}

/// Client-supplied text kept to a sane length.
fn short(text: &str) -> String {
    text.chars().take(256).collect()
}
