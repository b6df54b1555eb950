//! Envoy's `ext_authz` over HTTP (`http_service`): Envoy sends the client's request with its
//! own method, at its path appended to the configured `path_prefix` (`/authz/envoy`), with the
//! headers `allowed_headers` lets through (and the body, with `with_request_body`). A 2xx lets
//! it pass; any other answer goes to the client as it is, status, headers and OpenAI body.

use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderName, HeaderValue, Method};

use super::super::AuthzState;
use super::super::forward_auth::{self, Statuses};
use crate::error::ApiError;
use crate::exchange::Exchange;

/// Where Envoy's `http_service.path_prefix` points.
pub const PATH_PREFIX: &str = "/authz/envoy";

/// The names Envoy removes from the request it forwards (its HTTP service cannot be told
/// otherwise): the client's credential.
const HEADERS_TO_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");

pub async fn check(state: State<AuthzState>, exchange: Exchange, request: Request) -> Response {
    let mut response = forward_auth::forward_auth(state, exchange, request, original, Statuses::AsIs).await;
    if response.status().is_success() {
        response.headers_mut().insert(HEADERS_TO_REMOVE, HeaderValue::from_static("authorization, x-api-key"));
    }
    response
}

/// The request's own method, and its path after the prefix (without its query).
fn original(request: &Request) -> Result<(Method, String), ApiError> {
    let path = request.uri().path().strip_prefix(PATH_PREFIX).filter(|path| path.starts_with('/'));
    let path = path.ok_or(ApiError::RouteNotFound)?;
    Ok((request.method().clone(), path.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::check::CREDENTIAL_HEADERS;

    #[test]
    fn the_original_request_is_the_path_after_the_prefix_with_its_own_method() {
        let request = |uri: &str| Request::builder().method("POST").uri(uri).body(axum::body::Body::empty()).unwrap();
        let (method, path) = original(&request("/authz/envoy/v1/chat/completions?x=1")).unwrap();
        assert_eq!((method, path.as_str()), (Method::POST, "/v1/chat/completions"));
        assert_eq!(original(&request("/authz/envoyv1/models")), Err(ApiError::RouteNotFound));
    }

    #[test]
    fn the_credential_headers_are_the_ones_removed() {
        let listed: Vec<&str> = "authorization, x-api-key".split(", ").collect();
        let credential = CREDENTIAL_HEADERS;
        let credential: Vec<&str> = credential.iter().map(HeaderName::as_str).collect();
        assert_eq!(listed, credential);
    }
}
