//! JSON body and query extractors whose rejections are OpenAI-shaped errors like every other,
//! with `param` naming the field or query parameter at fault when it is one the API knows.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use bytes::Bytes;
use http::header;
use http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    /// A body without a `Content-Type` is taken for JSON (`curl -d`, scripts); one that names
    /// another type is refused.
    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !request.headers().contains_key(header::CONTENT_TYPE) {
            let bytes =
                Bytes::from_request(request, state).await.map_err(|rejection| rejected(rejection.body_text()))?;
            return json_body(&bytes).map(ApiJson);
        }
        Json::<T>::from_request(request, state)
            .await
            .map(|Json(value)| ApiJson(value))
            .map_err(|rejection| rejected(rejection.body_text()))
    }
}

/// A JSON body already read (one that may be empty), rejected as [`ApiJson`] would.
pub fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    Json::<T>::from_bytes(bytes).map(|Json(value)| value).map_err(|rejection| rejected(rejection.body_text()))
}

#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|rejection| rejected(rejection.body_text()))
    }
}

/// A 400 with axum's description of what failed, naming the parameter when it is a known one.
fn rejected(text: String) -> ApiError {
    let param = param_in(&text);
    ApiError::bad_request(text, param)
}

/// The query of a route that takes no parameters: any parameter is a 400 naming it, so that a
/// filter the route does not have (`GET /teams?team=x`) is never silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Every body field and query parameter of the admin API, so a rejection can name one as its
/// `param` (which is a `&'static str`).
const KNOWN_PARAMS: [&str; 29] = [
    "allowed_cidrs",
    "capture_content",
    "clear_expiry",
    "cursor",
    "decision",
    "expires_at",
    "expires_in",
    "format",
    "grace",
    "group_by",
    "include_revoked",
    "inherit_tier",
    "key",
    "kind",
    "limit",
    "limits",
    "metadata",
    "model",
    "models",
    "name",
    "node",
    "request_id",
    "role",
    "scopes",
    "since",
    "status",
    "team",
    "tier",
    "until",
];

/// The parameter a rejection is about. axum words them as `<what failed>: <path>: <problem>`,
/// where the path (`limits.requests_per_minute`) starts with the top-level field; an unknown,
/// missing or duplicate field is named in backquotes in the problem instead.
fn param_in(text: &str) -> Option<&'static str> {
    let known = |name: &str| KNOWN_PARAMS.iter().copied().find(|param| *param == name);
    let detail = text.split_once(": ").map_or(text, |(_, detail)| detail);
    let path = detail.split_once(": ").map_or("", |(path, _)| path);
    let top = path.split(['.', '[']).next().unwrap_or_default();
    known(top).or_else(|| {
        let named = detail.split_once("field `")?.1.split_once('`')?.0;
        known(named)
    })
}

#[cfg(test)]
mod tests {
    use portcullis_types::admin::{CreateKeyRequest, UpdateKeyRequest};

    use super::*;

    fn json_rejection<T: DeserializeOwned>(body: &str) -> String {
        match Json::<T>::from_bytes(body.as_bytes()) {
            Ok(_) => panic!("{body} should be rejected"),
            Err(rejection) => rejection.body_text(),
        }
    }

    #[test]
    fn body_rejections_name_the_top_level_field() {
        let cases = [
            (r#"{"name":"k","limits":{"requests_per_minute":1e20}}"#, Some("limits")),
            (r#"{"name":"k","limits":{"tokens_per_day":-1}}"#, Some("limits")),
            (r#"{"name":"k","limits":{"rpm":1}}"#, Some("limits")),
            (r#"{"name":"k","expires_at":"tomorrow"}"#, Some("expires_at")),
            (r#"{"name":"k","models":[1]}"#, Some("models")),
            (r#"{"name":7}"#, Some("name")),
            (r#"{}"#, Some("name")),
            (r#"{"name":"k","tier":"a","tier":"b"}"#, Some("tier")),
            (r#"{"name":"k","bogus":1}"#, None),
        ];
        for (body, param) in cases {
            let text = json_rejection::<CreateKeyRequest>(body);
            assert_eq!(param_in(&text), param, "{body}: {text}");
        }
        let text = json_rejection::<UpdateKeyRequest>(r#"{"capture_content":"yes"}"#);
        assert_eq!(param_in(&text), Some("capture_content"), "{text}");
    }

    #[test]
    fn query_rejections_name_the_parameter() {
        let rejection = |uri: &str| match Query::<NoParams>::try_from_uri(&uri.parse().unwrap()) {
            Ok(_) => panic!("{uri} should be rejected"),
            Err(rejection) => rejection.body_text(),
        };
        assert_eq!(param_in(&rejection("/teams?team=globex")), Some("team"));
        assert_eq!(param_in(&rejection("/teams?whatever=1")), None);
        assert!(Query::<NoParams>::try_from_uri(&"/teams".parse().unwrap()).is_ok());
        assert!(Query::<NoParams>::try_from_uri(&"/teams?".parse().unwrap()).is_ok());
    }

    #[test]
    fn the_known_parameters_are_sorted_and_unique() {
        assert!(KNOWN_PARAMS.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
