//! Envoy as the gateway: `ext_authz` over gRPC ([`ext_authz`]) or HTTP ([`http`]) decides with
//! the same [`check`](super::check) as forward-auth, and `ext_proc` in observe mode
//! ([`ext_proc`]) reads each allowed response's usage to settle its lease.
//!
//! The gRPC services are served on the authorizer's listener (HTTP/2 without TLS, as Envoy's
//! clusters speak it), to the configured gateways only: any other peer gets `PERMISSION_DENIED`
//! (an HTTP 403, which gRPC clients read as such), logged and audited as a refusal.

mod ext_authz;
mod ext_proc;
mod headers;
pub mod http;
mod response_usage;

use std::net::SocketAddr;

use ::http::HeaderValue;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use tonic::server::NamedService;

use super::AuthzState;
use crate::error::ApiError;
use ext_authz::ExtAuthz;
use ext_proc::ExtProc;

/// Where the gRPC services are, and nothing else: every path under it is behind the gate (or
/// not found), so the listener may spare these calls its body deadline.
pub const GRPC_PATH_PREFIX: &str = "/envoy.service.";

/// Room for a message's own fields beside the request body it carries.
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// The gRPC services, behind the gate.
pub fn grpc(state: AuthzState) -> Router {
    let max_message = state.max_body_bytes.saturating_add(MESSAGE_OVERHEAD);
    let authorization = AuthorizationServer::new(ExtAuthz(state.clone())).max_decoding_message_size(max_message);
    let processor = ExternalProcessorServer::new(ExtProc(state.clone())).max_decoding_message_size(max_message);
    let path = |service: &str| {
        debug_assert!(format!("/{service}").starts_with(GRPC_PATH_PREFIX));
        format!("/{service}/{{*method}}")
    };
    Router::new()
        .route_service(&path(AuthorizationServer::<ExtAuthz>::NAME), authorization)
        .route_service(&path(ExternalProcessorServer::<ExtProc>::NAME), processor)
        .layer(middleware::from_fn_with_state(state, only_gateways))
}

/// Refuses every peer but the configured gateways, before the call is read.
async fn only_gateways(State(state): State<AuthzState>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|peer| peer.0);
    if peer.is_some_and(|peer| state.is_gateway(peer.ip())) {
        return next.run(request).await;
    }
    const MESSAGE: &str = "only the gateways named in authz.gateways may ask the authorizer";
    tracing::warn!(?peer, path = request.uri().path(), "gRPC call from a peer that is not a gateway refused");
    let mut response = ApiError::Forbidden { message: MESSAGE.into() }.into_response();
    // The status a gRPC client reads first; the HTTP 403 says the same to the others.
    let headers = response.headers_mut();
    headers.insert("grpc-status", HeaderValue::from(tonic::Code::PermissionDenied as i32));
    headers.insert("grpc-message", HeaderValue::from_static(MESSAGE));
    response
}
