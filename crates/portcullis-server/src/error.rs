//! `ApiError`: every way a request can fail, its HTTP status and its OpenAI-shaped body.
//!
//! The message is what the client may learn; internal causes are logged, never sent.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use portcullis_types::chain;
use portcullis_types::openai::{ErrorBody, ErrorDetail};

#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// Malformed JSON, a missing field, a bad parameter.
    BadRequest {
        message: String,
        param: Option<&'static str>,
    },
    /// A fault in a body member the client named (its depth, its encoding, its type).
    InvalidField {
        message: String,
        param: String,
    },
    RequestTooLarge {
        limit: usize,
    },
    /// The request head is over `server.max_header_bytes` or `server.max_headers`.
    HeaderTooLarge,
    /// A request head or body that is not well-formed HTTP (a bad header line, ambiguous
    /// framing, a broken chunked body).
    MalformedRequest {
        message: String,
    },
    /// The client sent its body too slowly (`server.body_read_timeout`, `server.min_body_rate`).
    RequestTimeout,
    /// No credential, a malformed one, or one we do not know: all look the same to the caller.
    InvalidApiKey,
    /// A bearer token (not a `pcl_` key) that no configured issuer vouches for; the message
    /// says why (expired, wrong audience, unknown key…), never what the token holds.
    InvalidToken {
        message: String,
    },
    /// The token's issuer could not be consulted (its keys never fetched, its introspection
    /// endpoint down) and nothing cached decides: fail closed, but the client may retry.
    AuthUnavailable {
        retry_after_secs: u64,
    },
    /// Admin API: no admin token, or one that is unknown, malformed or revoked.
    InvalidAdminToken,
    ExpiredApiKey,
    RevokedApiKey,
    ModelNotAllowed {
        model: String,
    },
    IpNotAllowed,
    ScopeMissing {
        scope: &'static str,
    },
    ModelNotFound {
        model: String,
    },
    RouteNotFound,
    /// A server endpoint the model's config does not open (`extra_apis`).
    NotServed {
        model: String,
        path: &'static str,
    },
    MethodNotAllowed,
    UpstreamUnavailable,
    /// Every endpoint is ejected or unhealthy; the first may be back in this many seconds.
    UpstreamResting {
        retry_after_secs: u64,
    },
    UpstreamTimeout,
    /// The model server's successful answer was not one (see `proxy::answer`): `what` says why.
    UpstreamInvalid {
        what: &'static str,
    },
    /// The model server answered with an error whose body is not relayed (see `proxy::refusal`).
    UpstreamStatus {
        status: u16,
    },
    Overloaded {
        retry_after_secs: u64,
    },
    /// Too many failed authentications from this client address.
    ClientBlocked {
        retry_after_secs: u64,
    },
    /// A rate or concurrency limit: retry shortly.
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// A quota or budget of the current window is spent, or held by running requests; without a
    /// retry time when only an operator can help (a limit of 0).
    InsufficientQuota {
        message: String,
        retry_after_secs: Option<u64>,
    },
    /// The request's worst case exceeds a limit's whole capacity: it could never be admitted.
    RequestExceedsLimit {
        message: String,
        param: &'static str,
    },
    /// The store or another internal part failed; the cause is logged, not sent.
    Internal,
    /// The store is unreachable and what the request needs is not cached (a key never seen here).
    StoreUnavailable {
        retry_after_secs: u64,
    },
    /// The shared limiter is unreachable and `limits.on_backend_error = "deny"`.
    LimiterUnavailable {
        retry_after_secs: u64,
    },
    /// Admin API: the credential is valid but its role does not allow this.
    Forbidden {
        message: String,
    },
    /// Admin API: the named thing does not exist (or is outside the caller's team).
    NotFound {
        what: &'static str,
    },
    Conflict {
        message: String,
    },
}

impl ApiError {
    /// A failed store read on the request path: 503 when the store is unreachable (the client may
    /// retry), 500 otherwise. The cause is logged here, not sent.
    pub fn from_store(error: &portcullis_store::StoreError, during: &'static str) -> ApiError {
        tracing::error!(error = %chain(error), during, "store read failed");
        match error {
            portcullis_store::StoreError::Unavailable { .. } => ApiError::StoreUnavailable { retry_after_secs: 1 },
            _ => ApiError::Internal,
        }
    }

    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError::BadRequest { message: message.into(), param }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } | ApiError::InvalidField { .. } | ApiError::RequestExceedsLimit { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::RateLimited { .. } | ApiError::InsufficientQuota { .. } | ApiError::ClientBlocked { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::MalformedRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::InvalidApiKey
            | ApiError::InvalidToken { .. }
            | ApiError::InvalidAdminToken
            | ApiError::ExpiredApiKey
            | ApiError::RevokedApiKey => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotAllowed { .. }
            | ApiError::IpNotAllowed
            | ApiError::ScopeMissing { .. }
            | ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::ModelNotFound { .. }
            | ApiError::RouteNotFound
            | ApiError::NotServed { .. }
            | ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::UpstreamUnavailable | ApiError::UpstreamInvalid { .. } => StatusCode::BAD_GATEWAY,
            // Its refusal of our credential is not the client's to hear as its own.
            ApiError::UpstreamStatus { status: 401 | 403 } => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamStatus { status } => StatusCode::from_u16(*status)
                .ok()
                .filter(|status| status.is_client_error() || status.is_server_error())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            ApiError::Overloaded { .. }
            | ApiError::UpstreamResting { .. }
            | ApiError::StoreUnavailable { .. }
            | ApiError::AuthUnavailable { .. }
            | ApiError::LimiterUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `type` and `code` fields.
    pub fn kind_and_code(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::BadRequest { .. } | ApiError::InvalidField { .. } => ("invalid_request_error", "invalid_request"),
            ApiError::RequestExceedsLimit { .. } => ("invalid_request_error", "request_exceeds_limit"),
            ApiError::RateLimited { .. } => ("rate_limit_error", "rate_limit_exceeded"),
            ApiError::ClientBlocked { .. } => ("rate_limit_error", "client_blocked"),
            ApiError::InsufficientQuota { .. } => ("rate_limit_error", "insufficient_quota"),
            ApiError::RequestTooLarge { .. } => ("invalid_request_error", "request_too_large"),
            ApiError::HeaderTooLarge => ("invalid_request_error", "request_header_too_large"),
            ApiError::MalformedRequest { .. } => ("invalid_request_error", "malformed_request"),
            ApiError::RequestTimeout => ("invalid_request_error", "request_timeout"),
            ApiError::InvalidApiKey => ("authentication_error", "invalid_api_key"),
            ApiError::InvalidToken { .. } => ("authentication_error", "invalid_token"),
            ApiError::AuthUnavailable { .. } => ("server_error", "auth_unavailable"),
            ApiError::InvalidAdminToken => ("authentication_error", "invalid_token"),
            ApiError::ExpiredApiKey => ("authentication_error", "expired_api_key"),
            ApiError::RevokedApiKey => ("authentication_error", "revoked_api_key"),
            ApiError::ModelNotAllowed { .. } => ("permission_error", "model_not_allowed"),
            ApiError::IpNotAllowed => ("permission_error", "ip_not_allowed"),
            ApiError::ScopeMissing { .. } => ("permission_error", "scope_missing"),
            ApiError::Forbidden { .. } => ("permission_error", "forbidden"),
            ApiError::ModelNotFound { .. } => ("invalid_request_error", "model_not_found"),
            ApiError::RouteNotFound | ApiError::NotServed { .. } => ("invalid_request_error", "not_found"),
            ApiError::NotFound { .. } => ("invalid_request_error", "not_found"),
            ApiError::MethodNotAllowed => ("invalid_request_error", "method_not_allowed"),
            ApiError::Conflict { .. } => ("invalid_request_error", "conflict"),
            ApiError::UpstreamUnavailable | ApiError::UpstreamResting { .. } => {
                ("upstream_error", "upstream_unavailable")
            }
            ApiError::UpstreamTimeout => ("upstream_error", "upstream_timeout"),
            ApiError::UpstreamInvalid { .. } => ("upstream_error", "upstream_invalid_response"),
            ApiError::UpstreamStatus { .. } => ("upstream_error", "upstream_error"),
            ApiError::Overloaded { .. } => ("upstream_error", "overloaded"),
            ApiError::Internal => ("server_error", "internal_error"),
            ApiError::StoreUnavailable { .. } => ("server_error", "store_unavailable"),
            ApiError::LimiterUnavailable { .. } => ("server_error", "limiter_unavailable"),
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest { message, .. }
            | ApiError::InvalidField { message, .. }
            | ApiError::RequestExceedsLimit { message, .. }
            | ApiError::RateLimited { message, .. }
            | ApiError::InsufficientQuota { message, .. } => message.clone(),
            ApiError::ClientBlocked { retry_after_secs } => {
                format!("Too many failed authentications from this address; retry after {retry_after_secs}s.")
            }
            ApiError::RequestTooLarge { limit } => format!("Request body is larger than the {limit}-byte limit."),
            ApiError::HeaderTooLarge => "The request head has too many or too large header fields.".into(),
            ApiError::MalformedRequest { message } => format!("Malformed request: {message}."),
            ApiError::RequestTimeout => "The request body arrived too slowly.".into(),
            ApiError::InvalidApiKey => {
                "Missing or invalid API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key'.".into()
            }
            ApiError::InvalidAdminToken => {
                "Missing or invalid admin token. Send it as 'Authorization: Bearer <token>'.".into()
            }
            ApiError::ExpiredApiKey => "This API key has expired.".into(),
            ApiError::RevokedApiKey => "This API key has been revoked.".into(),
            ApiError::ModelNotAllowed { model } => format!("This key may not use the model '{model}'."),
            ApiError::IpNotAllowed => "This key may not be used from this client address.".into(),
            ApiError::ScopeMissing { scope } => format!("This key lacks the '{scope}' scope."),
            ApiError::Forbidden { message } => message.clone(),
            ApiError::ModelNotFound { model } => format!("The model '{model}' does not exist."),
            ApiError::RouteNotFound => "Unknown path.".into(),
            ApiError::NotServed { model, path } => format!("The model '{model}' does not serve {path}."),
            ApiError::NotFound { what } => format!("No such {what}."),
            ApiError::MethodNotAllowed => "Method not allowed on this path.".into(),
            ApiError::Conflict { message } => message.clone(),
            ApiError::UpstreamUnavailable => "The model server is unavailable.".into(),
            ApiError::UpstreamResting { retry_after_secs } => {
                format!("Every server of this model is out of rotation; retry after {retry_after_secs}s.")
            }
            ApiError::UpstreamTimeout => "The model server did not answer in time.".into(),
            ApiError::UpstreamInvalid { what } => format!("The model server's answer could not be used: {what}."),
            ApiError::UpstreamStatus { status: 401 | 403 } => {
                "The model server refused the gateway's credentials; the operator has been told.".into()
            }
            ApiError::UpstreamStatus { status } => format!("The model server answered with an error ({status})."),
            ApiError::Overloaded { .. } => "The model server is at capacity; retry shortly.".into(),
            ApiError::Internal => "Internal error.".into(),
            ApiError::StoreUnavailable { .. } => "The key store is unreachable; retry shortly.".into(),
            ApiError::InvalidToken { message } => format!("Invalid access token: {message}."),
            ApiError::AuthUnavailable { .. } => {
                "The token's issuer could not be reached to check it; retry shortly.".into()
            }
            ApiError::LimiterUnavailable { .. } => "The shared rate limiter is unreachable; retry shortly.".into(),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { param, .. } => *param,
            ApiError::InvalidField { param, .. } => Some(param),
            ApiError::RequestExceedsLimit { param, .. } => Some(param),
            ApiError::ModelNotAllowed { .. } | ApiError::ModelNotFound { .. } | ApiError::NotServed { .. } => {
                Some("model")
            }
            _ => None,
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::Overloaded { retry_after_secs }
            | ApiError::UpstreamResting { retry_after_secs }
            | ApiError::StoreUnavailable { retry_after_secs }
            | ApiError::AuthUnavailable { retry_after_secs }
            | ApiError::LimiterUnavailable { retry_after_secs }
            | ApiError::RateLimited { retry_after_secs, .. }
            | ApiError::ClientBlocked { retry_after_secs } => Some(*retry_after_secs),
            ApiError::InsufficientQuota { retry_after_secs, .. } => *retry_after_secs,
            _ => None,
        }
    }

    pub fn body(&self) -> ErrorBody {
        let (kind, code) = self.kind_and_code();
        ErrorBody {
            error: ErrorDetail {
                message: self.message(),
                kind: kind.to_string(),
                code: Some(code.to_string()),
                param: self.param().map(str::to_string),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status_code(), Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after_secs() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(self, ApiError::InvalidToken { .. }) {
            // RFC 6750 §3: a refused bearer token says so in the challenge.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
        }
        // Lets the access log say why without parsing the body.
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of the README's error table: its statuses (`5xx` for a class), its `type` (absent
    /// in a row that names codes only), its codes, and whether it promises `Retry-After`.
    struct Row {
        statuses: Vec<String>,
        kind: Option<String>,
        codes: Vec<String>,
        retry_after: bool,
    }

    impl Row {
        fn admits(&self, status: u16, kind: &str, code: &str, retry_after: bool) -> bool {
            let class = format!("{}xx", status / 100);
            self.statuses.iter().any(|listed| *listed == status.to_string() || *listed == class)
                && self.kind.as_deref().is_none_or(|listed| listed == kind)
                && self.codes.iter().any(|listed| listed == code)
                && self.retry_after == retry_after
        }
    }

    fn readme_error_table() -> Vec<Row> {
        let readme = include_str!("../../../README.md");
        let table = readme.split("| status | type / code | when |").nth(1).expect("the README's error table");
        table
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').collect();
                let statuses = cells[1].split(',').map(|status| status.trim().to_string()).collect();
                let retry_after = cells[2].contains("`Retry-After`");
                let names: Vec<String> = cells[2]
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .filter(|name| name != "Retry-After")
                    .collect();
                let (kind, codes) = match names.split_first() {
                    Some((first, rest)) if first.ends_with("_error") => (Some(first.clone()), rest.to_vec()),
                    _ => (None, names),
                };
                Row { statuses, kind, codes, retry_after }
            })
            .collect()
    }

    /// Every error a client of the proxy can get is in the README's table, with its status,
    /// `type`, `code` and `Retry-After` as the table states them: the table is the contract.
    #[test]
    fn every_proxy_error_is_answered_as_the_readme_table_states() {
        let table = readme_error_table();
        let errors = [
            ApiError::bad_request("x", None),
            ApiError::MalformedRequest { message: "m".into() },
            ApiError::RequestExceedsLimit { message: "m".into(), param: "max_tokens" },
            ApiError::InvalidApiKey,
            ApiError::InvalidToken { message: "the token has expired".into() },
            ApiError::AuthUnavailable { retry_after_secs: 5 },
            ApiError::ExpiredApiKey,
            ApiError::RevokedApiKey,
            ApiError::ModelNotAllowed { model: "m".into() },
            ApiError::IpNotAllowed,
            ApiError::ScopeMissing { scope: "chat" },
            ApiError::ModelNotFound { model: "m".into() },
            ApiError::MethodNotAllowed,
            ApiError::RouteNotFound,
            ApiError::NotServed { model: "m".into(), path: "/v1/rerank" },
            ApiError::RequestTimeout,
            ApiError::RequestTooLarge { limit: 1 },
            ApiError::HeaderTooLarge,
            ApiError::RateLimited { message: "m".into(), retry_after_secs: 1 },
            ApiError::InsufficientQuota { message: "m".into(), retry_after_secs: Some(1) },
            ApiError::InsufficientQuota { message: "m".into(), retry_after_secs: None },
            ApiError::ClientBlocked { retry_after_secs: 1 },
            ApiError::UpstreamUnavailable,
            ApiError::UpstreamResting { retry_after_secs: 1 },
            ApiError::UpstreamInvalid { what: "x" },
            ApiError::UpstreamStatus { status: 401 },
            ApiError::UpstreamStatus { status: 500 },
            ApiError::UpstreamStatus { status: 418 },
            ApiError::StoreUnavailable { retry_after_secs: 1 },
            ApiError::LimiterUnavailable { retry_after_secs: 1 },
            ApiError::Overloaded { retry_after_secs: 1 },
            ApiError::UpstreamTimeout,
        ];
        for error in errors {
            let (status, (kind, code)) = (error.status_code().as_u16(), error.kind_and_code());
            let description = format!("{error:?}");
            let retry_after = error.into_response().headers().contains_key(header::RETRY_AFTER);
            assert!(
                table.iter().any(|row| row.admits(status, kind, code, retry_after)),
                "{description} answers {status} {kind}/{code} (Retry-After: {retry_after}), which the README's \
                 error table does not list"
            );
        }
    }

    #[test]
    fn overloaded_carries_retry_after() {
        let response = ApiError::Overloaded { retry_after_secs: 3 }.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
