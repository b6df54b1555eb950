//! Forward-auth over HTTP, as nginx `auth_request`, Caddy `forward_auth` and Traefik
//! `forwardAuth` ask it: the gateway sends the client's request head (and, if it is set up to,
//! its body) to `/authz`, naming the original method, URI and client in forwarded headers; a
//! 2xx answer lets the request pass with identity headers for the model server, any other
//! answer is the refusal the client gets.
//!
//! nginx turns any answer but 2xx, 401 and 403 into a 500 of its own, so `/authz/nginx` answers
//! every refusal but a 401 with 403; the real status and the error body travel in
//! `x-portcullis-status` and `x-portcullis-error`, from which the shipped nginx configuration
//! rebuilds the proxy's answer (see `examples/nginx`).

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use portcullis_config::ForwardedHeader;

use super::AuthzState;
use super::check::{self, Check, Denied};
use crate::client_addr;
use crate::error::ApiError;
use crate::error_shape::ErrorShape;
use crate::exchange::Exchange;
use crate::proxy::body::Reading;
use crate::request_id::RequestId;

/// The status the proxy would have answered, on a refusal.
pub const STATUS_HEADER: HeaderName = HeaderName::from_static("x-portcullis-status");
/// The proxy's error body, as one line of JSON, on a refusal.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-portcullis-error");

/// How refusals are answered: as they are, or squeezed into what nginx passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statuses {
    AsIs,
    Nginx,
}

/// Where each kind of gateway names the request's original method and URI. Only its own pair
/// is read: Caddy and Traefik pass the client's headers on to the authorizer, so a client could
/// otherwise name, in the other pair, a request other than the one the gateway forwards.
struct OriginalHeaders {
    method: &'static str,
    uri: &'static str,
}

/// Caddy's and Traefik's, which they set themselves.
const FORWARDED: OriginalHeaders = OriginalHeaders { method: "x-forwarded-method", uri: "x-forwarded-uri" };
/// nginx's, set by the shipped configuration (nginx has no forward-auth headers of its own).
const NGINX: OriginalHeaders = OriginalHeaders { method: "x-original-method", uri: "x-original-uri" };

pub async fn as_is(state: State<AuthzState>, exchange: Exchange, request: Request) -> Response {
    let original = |request: &Request| original_from(request, &FORWARDED);
    forward_auth(state, exchange, request, original, Statuses::AsIs).await
}

pub async fn nginx(state: State<AuthzState>, exchange: Exchange, request: Request) -> Response {
    let original = |request: &Request| original_from(request, &NGINX);
    forward_auth(state, exchange, request, original, Statuses::Nginx).await
}

/// Decides about the request `original` names and answers as `statuses` says.
pub async fn forward_auth(
    State(state): State<AuthzState>,
    exchange: Exchange,
    request: Request,
    original: Original,
    statuses: Statuses,
) -> Response {
    let check = match read_check(&state, request, original).await {
        Ok(check) => check,
        // Refused before any decision (not a gateway, no original URI): recorded as this call's.
        Err(error) => {
            return refusal(Denied { error, client_headers: HeaderMap::new() }, statuses, ErrorShape::OpenAi);
        }
    };
    // The gateway relays the refusal to a client of the original route, in that route's shape.
    let shape = ErrorShape::of_path(&check.path);
    // From here the decision has its own record, under the original request's method and path.
    exchange.note(|info| info.recorded_elsewhere = true);
    match check::decide(&state, check).await {
        Ok(allowed) => {
            let mut headers = allowed.upstream_headers;
            headers.extend(allowed.client_headers);
            (StatusCode::OK, headers).into_response()
        }
        Err(denied) => refusal(denied, statuses, shape),
    }
}

/// The original method and path (without its query) of a forwarded request.
pub type Original = fn(&Request) -> Result<(Method, String), ApiError>;

/// From the gateway's pair of forwarded headers (the request's own method when it sends none).
fn original_from(request: &Request, names: &OriginalHeaders) -> Result<(Method, String), ApiError> {
    let header = |name: &str| request.headers().get(name).and_then(|value| value.to_str().ok());
    let method = match header(names.method) {
        Some(method) => Method::from_bytes(method.trim().as_bytes())
            .map_err(|_| ApiError::MalformedRequest { message: "the forwarded method is not an HTTP method".into() })?,
        None => request.method().clone(),
    };
    let uri = header(names.uri).ok_or_else(|| ApiError::MalformedRequest {
        message: format!("the gateway did not forward the original URI ({})", names.uri),
    })?;
    Ok((method, path_of(uri)?))
}

/// The path of a forwarded URI (origin form, or absolute), without its query.
pub fn path_of(uri: &str) -> Result<String, ApiError> {
    let uri: http::Uri = uri
        .trim()
        .parse()
        .map_err(|_| ApiError::MalformedRequest { message: "the forwarded URI is not a valid URI".into() })?;
    Ok(uri.path().to_string())
}

/// What a gateway's forward-auth request asks about: refused unless it comes from a configured
/// gateway, whose forwarded headers alone are believed.
pub async fn read_check(state: &AuthzState, request: Request, original: Original) -> Result<Check, ApiError> {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0).ok_or(ApiError::Internal)?;
    if !state.is_gateway(peer.ip()) {
        return Err(ApiError::Forbidden {
            message: "only the gateways named in authz.gateways may ask the authorizer".into(),
        });
    }
    let (method, path) = original(&request)?;
    let client_ip = client_addr::resolve(peer, request.headers(), state.gateways(), ForwardedHeader::XForwardedFor)
        .map_err(|unparsable| ApiError::MalformedRequest { message: unparsable.to_string() })?;
    // Vetted by the listener (`request_id::assign`), as every request's id is.
    let request_id = request.extensions().get::<RequestId>().cloned();
    let gateway = gateway_name(request.headers(), peer);
    let (parts, body) = request.into_parts();
    let body = read_body(body, &parts.headers, state.max_body_bytes).await?;
    Ok(Check { gateway, method, path, headers: parts.headers, client_ip, body, request_id })
}

/// The gateway's name as it gives it (`X-Portcullis-Gateway`), else its address.
fn gateway_name(headers: &HeaderMap, peer: SocketAddr) -> String {
    let given = headers.get("x-portcullis-gateway").and_then(|value| value.to_str().ok());
    check::gateway_name(given).unwrap_or_else(|| peer.ip().to_string())
}

/// The forwarded body, if any, read as the proxy reads one (413 over `limit`, 408 too slow).
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Option<Bytes>, ApiError> {
    let mut reading = Reading::start(body, headers, limit)?;
    let bytes = match reading.ready()? {
        Some(bytes) => bytes,
        None => reading.rest().await?,
    };
    Ok((!bytes.is_empty()).then_some(bytes))
}

/// The proxy's refusal, with its status and body also in headers for gateways that pass only
/// headers on.
fn refusal(denied: Denied, statuses: Statuses, shape: ErrorShape) -> Response {
    let Denied { error, client_headers } = denied;
    let status = error.status_code();
    let error_body = error.body();
    let mut response = error.into_response();
    shape.rewrite(&mut response, &error_body);
    response.headers_mut().extend(client_headers);
    response.headers_mut().insert(STATUS_HEADER, HeaderValue::from(status.as_u16()));
    if let Ok(body) = HeaderValue::from_str(&String::from_utf8_lossy(&shape.render(status, &error_body))) {
        response.headers_mut().insert(ERROR_HEADER, body);
    }
    if statuses == Statuses::Nginx && status != StatusCode::UNAUTHORIZED {
        *response.status_mut() = StatusCode::FORBIDDEN;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forwarded_uri_gives_its_path_without_the_query() {
        assert_eq!(path_of("/v1/chat/completions?x=1").unwrap(), "/v1/chat/completions");
        assert_eq!(path_of("https://gw.example/v1/models").unwrap(), "/v1/models");
        assert!(path_of("not a uri").is_err());
    }

    #[test]
    fn nginx_gets_403_for_all_but_401_with_the_real_answer_in_headers() {
        let denied = |error| Denied { error, client_headers: HeaderMap::new() };
        let limited = refusal(
            denied(ApiError::RateLimited { message: "slow down".into(), retry_after_secs: 7 }),
            Statuses::Nginx,
            ErrorShape::OpenAi,
        );
        assert_eq!(limited.status(), StatusCode::FORBIDDEN);
        assert_eq!(limited.headers()[&STATUS_HEADER], "429");
        assert_eq!(limited.headers()[http::header::RETRY_AFTER], "7");
        let body: serde_json::Value = serde_json::from_slice(limited.headers()[&ERROR_HEADER].as_bytes()).unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        let unknown = refusal(denied(ApiError::InvalidApiKey), Statuses::Nginx, ErrorShape::OpenAi);
        assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
        let as_is =
            refusal(denied(ApiError::ModelNotAllowed { model: "m".into() }), Statuses::AsIs, ErrorShape::OpenAi);
        assert_eq!(as_is.status(), StatusCode::FORBIDDEN);
        assert_eq!(as_is.headers()[&STATUS_HEADER], "403");
    }

    #[tokio::test]
    async fn a_refusal_of_a_messages_call_is_in_anthropics_shape() {
        let denied = Denied { error: ApiError::ScopeMissing { scope: "messages" }, client_headers: HeaderMap::new() };
        let refused = refusal(denied, Statuses::AsIs, ErrorShape::of_path("/v1/messages"));
        let header: serde_json::Value = serde_json::from_slice(refused.headers()[&ERROR_HEADER].as_bytes()).unwrap();
        assert_eq!(header["error"]["type"], "permission_error");
        let body = axum::body::to_bytes(refused.into_body(), 4096).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((body["type"].as_str(), body["error"]["type"].as_str()), (Some("error"), Some("permission_error")));
    }
}
