//! Envoy's `ext_authz` over gRPC (`envoy.service.auth.v3.Authorization/Check`): the request
//! Envoy is about to forward, in [`CheckRequest`] attributes, decided like any other check; the
//! answer tells Envoy which headers to add upstream and which to remove (the client's
//! credential), or the status, headers and OpenAI error body the client gets instead.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::address::Address;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc;
use http::{HeaderValue, Method, StatusCode};
use tonic::{Code, Request, Response, Status};

use super::super::AuthzState;
use super::super::check::{self, CREDENTIAL_HEADERS, Check, Verdict};
use super::super::forward_auth::path_of;
use super::headers;
use crate::error::ApiError;
use crate::error_shape::ErrorShape;
use crate::request_id;
use portcullis_audit::Redactor;

/// The gateway's name in the audit log when the route names none (`context_extensions`).
const DEFAULT_GATEWAY: &str = "envoy";

#[derive(Debug, Clone)]
pub struct ExtAuthz(pub AuthzState);

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        // The listener puts the peer in every request; the gate in front let only gateways in.
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0)
            .ok_or_else(|| Status::internal("no peer address"))?;
        let (verdict, shape) = match read(request.into_inner(), peer, self.0.max_body_bytes, self.0.proxy.redactor()) {
            // Envoy relays a refusal to a client of the original route, in that route's shape.
            Ok(check) => {
                let shape = ErrorShape::of_path(&check.path);
                (check::decide(&self.0, check).await, shape)
            }
            // Envoy sent something no check can be made of: refused, never let through.
            Err(error) => {
                tracing::warn!(%peer, error = ?error, "unreadable ext_authz check refused");
                (Err(check::Denied { error, client_headers: http::HeaderMap::new() }), ErrorShape::OpenAi)
            }
        };
        Ok(Response::new(answer(verdict, shape)))
    }
}

/// The request Envoy asks about. Its client address is Envoy's word, believed because only
/// configured gateways reach this service.
fn read(
    request: CheckRequest,
    peer: SocketAddr,
    max_body_bytes: usize,
    redactor: &Redactor,
) -> Result<Check, ApiError> {
    let malformed = |message: &str| ApiError::MalformedRequest { message: message.into() };
    let attributes = request.attributes.unwrap_or_default();
    let client_ip = client_ip(&attributes).unwrap_or(peer.ip());
    let given = attributes.context_extensions.get("gateway").map(String::as_str);
    let gateway = check::gateway_name(given).unwrap_or_else(|| DEFAULT_GATEWAY.to_string());
    let http = attributes
        .request
        .and_then(|request| request.http)
        .ok_or_else(|| malformed("the check carries no HTTP request"))?;
    let method =
        Method::from_bytes(http.method.as_bytes()).map_err(|_| malformed("the method is not an HTTP method"))?;
    let path = path_of(&http.path)?;
    let headers = headers::from_envoy(&http.headers, http.header_map.as_ref());
    // `raw_body` with `pack_as_bytes`, else the body as text.
    let body = if http.raw_body.is_empty() { Bytes::from(http.body) } else { Bytes::from(http.raw_body) };
    if body.len() > max_body_bytes {
        return Err(ApiError::RequestTooLarge { limit: max_body_bytes });
    }
    let request_id = [http.id.as_bytes(), headers.get(crate::request_id::HEADER).map_or(&[][..], |id| id.as_bytes())]
        .into_iter()
        .find(|id| !id.is_empty())
        .and_then(|id| HeaderValue::from_bytes(id).ok())
        .and_then(|id| request_id::vetted(id, redactor));
    Ok(Check { gateway, method, path, headers, client_ip, body: (!body.is_empty()).then_some(body), request_id })
}

/// The downstream client's address as Envoy saw it.
fn client_ip(attributes: &AttributeContext) -> Option<IpAddr> {
    match attributes.source.as_ref()?.address.as_ref()?.address.as_ref()? {
        Address::SocketAddress(socket) => socket.address.parse::<IpAddr>().ok().map(|ip| ip.to_canonical()),
        _ => None,
    }
}

/// The verdict as Envoy applies it; a refusal's body in `shape`.
pub fn answer(verdict: Verdict, shape: ErrorShape) -> CheckResponse {
    match verdict {
        Ok(allowed) => CheckResponse {
            status: Some(rpc::Status { code: Code::Ok.into(), ..rpc::Status::default() }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: headers::to_envoy(&allowed.upstream_headers),
                headers_to_remove: CREDENTIAL_HEADERS.iter().map(|name| name.as_str().to_string()).collect(),
                response_headers_to_add: headers::to_envoy(&allowed.client_headers),
                ..OkHttpResponse::default()
            })),
            ..CheckResponse::default()
        },
        Err(denied) => {
            let status = denied.error.status_code();
            let (_, code) = denied.error.kind_and_code();
            let body = String::from_utf8_lossy(&shape.render(status, &denied.error.body())).into_owned();
            let mut response_headers = axum::response::IntoResponse::into_response(denied.error).into_parts().0.headers;
            response_headers.extend(denied.client_headers);
            let grpc_code =
                if status == StatusCode::UNAUTHORIZED { Code::Unauthenticated } else { Code::PermissionDenied };
            CheckResponse {
                status: Some(rpc::Status { code: grpc_code.into(), message: code.to_string(), details: vec![] }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: i32::from(status.as_u16()) }),
                    headers: headers::to_envoy(&response_headers),
                    body,
                })),
                ..CheckResponse::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::core::v3::{Address as EnvoyAddress, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{self, HttpRequest, Peer};

    use super::*;
    use crate::authz::check::Denied;

    fn request(http: HttpRequest, source: Option<&str>) -> CheckRequest {
        let source = source.map(|ip| Peer {
            address: Some(EnvoyAddress {
                address: Some(Address::SocketAddress(SocketAddress { address: ip.into(), ..SocketAddress::default() })),
            }),
            ..Peer::default()
        });
        CheckRequest {
            attributes: Some(AttributeContext {
                source,
                request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
                context_extensions: HashMap::from([("gateway".to_string(), "edge-1".to_string())]),
                ..AttributeContext::default()
            }),
        }
    }

    const PEER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9000);

    fn redactor() -> Redactor {
        Redactor::new(&[]).unwrap()
    }

    #[test]
    fn a_check_is_read_from_the_attributes() {
        let http = HttpRequest {
            method: "POST".into(),
            path: "/v1/chat/completions?debug=1".into(),
            headers: HashMap::from([("x-request-id".into(), "abc-1".into()), (":authority".into(), "gw".into())]),
            body: "{\"model\":\"m\"}".into(),
            ..HttpRequest::default()
        };
        let check = read(request(http, Some("203.0.113.9")), PEER, 1024, &redactor()).unwrap();
        assert_eq!((check.method, check.path.as_str()), (Method::POST, "/v1/chat/completions"));
        assert_eq!(check.client_ip, IpAddr::from([203, 0, 113, 9]));
        assert_eq!(check.gateway, "edge-1");
        assert_eq!(check.request_id.unwrap().as_str(), "abc-1");
        assert_eq!(check.body.unwrap(), "{\"model\":\"m\"}");
        assert_eq!(check.headers.len(), 1, "no pseudo-headers");
    }

    #[test]
    fn a_request_id_shaped_like_a_secret_is_not_kept() {
        let http = HttpRequest {
            method: "GET".into(),
            path: "/v1/models".into(),
            headers: HashMap::from([("x-request-id".into(), "pcl_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789Ab".into())]),
            ..HttpRequest::default()
        };
        assert!(read(request(http, None), PEER, 1024, &redactor()).unwrap().request_id.is_none());
    }

    #[test]
    fn without_a_source_the_peer_is_the_client_and_a_large_body_is_refused() {
        let http = HttpRequest { method: "GET".into(), path: "/v1/models".into(), ..HttpRequest::default() };
        let check = read(request(http.clone(), None), PEER, 1024, &redactor()).unwrap();
        assert_eq!(check.client_ip, PEER.ip());
        assert!(check.body.is_none());
        let large = HttpRequest { raw_body: vec![b'x'; 2048], ..http };
        assert_eq!(
            read(request(large, None), PEER, 1024, &redactor()).unwrap_err(),
            ApiError::RequestTooLarge { limit: 1024 }
        );
        let empty = CheckRequest::default();
        assert!(matches!(read(empty, PEER, 1024, &redactor()), Err(ApiError::MalformedRequest { .. })));
    }

    #[test]
    fn a_refusal_carries_the_http_status_headers_and_body() {
        let limited = ApiError::RateLimited { message: "slow down".into(), retry_after_secs: 3 };
        let response =
            answer(Err(Denied { error: limited, client_headers: http::HeaderMap::new() }), ErrorShape::OpenAi);
        assert_eq!(response.status.unwrap().code, Code::PermissionDenied as i32);
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else { panic!("not denied") };
        assert_eq!(denied.status.unwrap().code, 429);
        let header = |name: &str| {
            denied
                .headers
                .iter()
                .filter_map(|option| option.header.as_ref())
                .find(|h| h.key == name)
                .map(|h| h.value.clone())
        };
        assert_eq!(header("retry-after").as_deref(), Some("3"));
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        let unknown = answer(
            Err(Denied { error: ApiError::InvalidApiKey, client_headers: http::HeaderMap::new() }),
            ErrorShape::OpenAi,
        );
        assert_eq!(unknown.status.unwrap().code, Code::Unauthenticated as i32);
        // A refusal of a Messages call, in Anthropic's shape.
        let denied = Denied { error: ApiError::InvalidApiKey, client_headers: http::HeaderMap::new() };
        let anthropic = answer(Err(denied), ErrorShape::of_path("/v1/messages"));
        let Some(HttpResponse::DeniedResponse(denied)) = anthropic.http_response else { panic!("not denied") };
        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(
            (body["type"].as_str(), body["error"]["type"].as_str()),
            (Some("error"), Some("authentication_error"))
        );
    }
}
