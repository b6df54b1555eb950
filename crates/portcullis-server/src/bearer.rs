//! `Authorization: Bearer <token>`, shared by the proxy and the admin API.

use http::HeaderMap;
use http::header::AUTHORIZATION;

/// The token of a `Bearer` authorization header (scheme matched case-insensitively).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}
