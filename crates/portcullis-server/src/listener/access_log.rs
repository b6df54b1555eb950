//! Around every request on both listeners: its id, the checks on its head that hyper leaves to
//! us, a catch for panics, and its [`Exchange`] — which yields one log line, one metrics sample
//! and one audit record however the request ends. Called by the accept loop around the router
//! (not as router layers: each layer would box the request's future once more).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderMap, Version, header};
use portcullis_audit::{AuditDecision, AuditEvent};
use portcullis_types::openai::ErrorBody;
use time::OffsetDateTime;
use tower::ServiceExt;

use std::sync::Arc;

use super::{SiteContext, gate};
use crate::client_addr;
use crate::client_certificate::ClientCertificate;
use crate::error::ApiError;
use crate::error_shape::ErrorShape;
use crate::exchange::{AuditAtBodyEnd, Exchange, RequestMeta};
use crate::listener_kind::ListenerKind;
use crate::metrics::Metrics;
use crate::request_id::{self, RequestId};

/// Serves `request` with `router` on `listener`: the request gets its
/// id first, so that every answer, even an error, carries one.
///
/// Admin requests run to the end even when their client leaves (a change must not be cut off
/// between the store and its audit record); proxy requests are dropped with their client, which
/// also stops the model server's work, and their exchange records them as abandoned — and so
/// are the authorizer's checks, whose gateway will not forward a request it got no answer for.
pub async fn serve(
    listener: ListenerKind,
    context: &Arc<SiteContext>,
    router: Router,
    mut request: Request,
) -> Response {
    let id = request_id::assign(&mut request, &context.redactor);
    let mut response = if listener != ListenerKind::Admin {
        record(listener, Arc::clone(context), router, request).await
    } else {
        let detached = tokio::spawn(record(listener, Arc::clone(context), router, request));
        detached.await.unwrap_or_else(|_| ApiError::Internal.into_response())
    };
    response.headers_mut().insert(request_id::HEADER, id);
    response
}

async fn record(listener: ListenerKind, context: Arc<SiteContext>, router: Router, mut request: Request) -> Response {
    let started = Instant::now();
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|peer| peer.0);
    let client = peer.map(|peer| {
        let runtime = context.runtime.load();
        let server = &runtime.live.server;
        client_addr::resolve(peer, request.headers(), &server.trusted_proxies, server.forwarded_header)
    });
    let meta = RequestMeta {
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        request_id: request.extensions().get::<RequestId>().cloned(),
        client_ip: match (&client, peer) {
            (Some(Ok(ip)), _) => Some(*ip),
            (_, peer) => peer.map(|peer| peer.ip()),
        },
        user_agent: request.headers().get(header::USER_AGENT).and_then(|value| value.to_str().ok()).map(|agent| {
            let agent = short(agent);
            match context.redactor.redact_credentials(&agent) {
                Cow::Borrowed(_) => agent,
                Cow::Owned(redacted) => redacted,
            }
        }),
        client_certificate: request.extensions().get::<Arc<ClientCertificate>>().cloned(),
    };
    let exchange = Exchange::new(listener, Arc::clone(&context.recording), meta, started);
    request.extensions_mut().insert(exchange.clone());
    if let Some(Ok(ip)) = client {
        request.extensions_mut().insert(client_addr::ClientIp(ip));
    }
    let in_flight = InFlight::start(context.metrics(), listener);
    let checked = match client {
        Some(Err(unparsable)) => Err(ApiError::MalformedRequest { message: unparsable.to_string() }),
        _ => check_head(&context, request.version(), request.headers()),
    };
    let mut response = match checked {
        Err(error) => error.into_response(),
        Ok(()) => match AssertUnwindSafe(router.oneshot(request)).catch_unwind().await {
            Ok(Ok(response)) => response,
            Err(_) => {
                context.metrics().panicked(listener);
                tracing::error!(listener = listener.name(), request_id = ?exchange.meta().request_id, "a handler panicked");
                ApiError::Internal.into_response()
            }
        },
    };
    drop(in_flight);
    let error = response.extensions_mut().remove::<ApiError>();
    let relayed = response.extensions_mut().remove::<ErrorBody>();
    // Errors are rendered in the OpenAI shape wherever they arise; the route decides the shape
    // the client reads (see `error_shape`).
    let shape =
        if listener == ListenerKind::Proxy { ErrorShape::of_path(&exchange.meta().path) } else { ErrorShape::OpenAi };
    if shape != ErrorShape::OpenAi
        && let Some(body) = error.as_ref().map(ApiError::body).or(relayed)
    {
        shape.rewrite(&mut response, &body);
    }
    let body_pending = response.extensions_mut().remove::<AuditAtBodyEnd>().is_some();
    exchange.answered(response.status().as_u16(), error.as_ref(), body_pending).await;
    response
}

/// What an HTTP/2 request must not carry either (HTTP/1 heads were checked by the gate, see
/// `listener::gate`): more header fields than allowed, or a second `Host`, `Authorization` or
/// `x-api-key` (which one would count?).
fn check_head(context: &SiteContext, version: Version, headers: &HeaderMap) -> Result<(), ApiError> {
    if version < Version::HTTP_2 {
        return Ok(());
    }
    if headers.len() > context.max_headers {
        return Err(ApiError::HeaderTooLarge);
    }
    for name in gate::SINGLE_HEADERS {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(gate::repeated(name));
        }
    }
    Ok(())
}

/// The in-flight gauge, counted down however the request ends.
struct InFlight(prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>);

impl InFlight {
    fn start(metrics: &Metrics, listener: ListenerKind) -> InFlight {
        let gauge = metrics.in_flight(listener);
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The answer to a request head refused before hyper parsed it (too large, malformed, badly
/// framed), as raw HTTP/1.1: it is logged, counted and audited like any refusal, with a fresh
/// request id and the peer's address (nothing in such a head can be believed).
pub fn refuse_head(listener: ListenerKind, context: &SiteContext, peer: SocketAddr, error: ApiError) -> Bytes {
    let status = error.status_code();
    let request_id = request_id::fresh();
    let (_, code) = error.kind_and_code();
    context.metrics().record(listener, "", status.as_u16(), std::time::Duration::ZERO);
    tracing::info!(
        target: "portcullis::access",
        listener = listener.name(),
        status = status.as_u16(),
        request_id = request_id.to_str().unwrap_or_default(),
        client = %peer.ip(),
        error = code,
        "request head refused",
    );
    let mut event =
        AuditEvent::new(OffsetDateTime::now_utc(), listener.audit_kind(), AuditDecision::Deny, status.as_u16());
    event.request_id = request_id.to_str().ok().map(str::to_string);
    event.client_ip = Some(peer.ip().to_string());
    event.reason = Some(code.to_string());
    drop(context.recording.auditor.record_detached(event));
    let body = serde_json::to_vec(&error.body()).unwrap_or_default();
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        request_id.to_str().unwrap_or_default(),
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    Bytes::from(answer)
}

/// Client-supplied text kept to a sane length.
fn short(text: &str) -> String {
    match text.char_indices().nth(256) {
        Some((end, _)) => text[..end].to_string(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;

    use super::*;

    async fn context() -> Arc<SiteContext> {
        crate::state::AppState::in_memory_for_tests(None).await.0.site_context()
    }

    async fn panics() -> &'static str {
        panic!("a bug in a handler")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_with_a_request_id_and_is_counted() {
        let context = context().await;
        let router = Router::new().route("/boom", get(panics));
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut request = http::Request::builder().uri("/boom").header("host", "x").body(Body::empty()).unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = serve(ListenerKind::Proxy, &context, router.clone(), request).await;
        assert_eq!(response.status(), 500);
        assert!(response.headers().contains_key(request_id::HEADER));
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("internal_error"));
        let metrics = context.metrics().render();
        assert!(metrics.contains("portcullis_handler_panics_total{listener=\"proxy\"} 1"), "{metrics}");
        assert!(metrics.contains("portcullis_in_flight_requests{listener=\"proxy\"} 0"), "{metrics}");
        // The worker that ran it is still there to serve the next request.
        let again = http::Request::builder().uri("/boom").header("host", "x").body(Body::empty()).unwrap();
        assert_eq!(serve(ListenerKind::Proxy, &context, router, again).await.status(), 500);
    }
}
