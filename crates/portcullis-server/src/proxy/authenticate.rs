//! Authentication of proxy requests: credential → principal, default deny. A `pcl_` credential
//! is a key and only a key; any other bearer credential is an access token when `[[auth.oidc]]`
//! issuers are configured (a JWT verified by its issuer's keys, else introspected).

use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use portcullis_auth::{ExternalIdentity, SecretKind, SecretToken};

use super::ProxyState;
use crate::bearer::bearer_token;
use crate::client_certificate::ClientCertificate;
use crate::error::ApiError;
use crate::principal::Principal;

/// How long a client is asked to wait when a token's issuer could not be consulted.
const AUTH_RETRY_AFTER_SECS: u64 = 5;

/// Finds the caller's principal. Anything short of a live, well-formed, known key or a token a
/// configured issuer vouches for is refused; only the holder of a real key learns that it
/// expired or was revoked.
///
/// A request without a key (no `Authorization`, no `x-api-key`) over a connection whose client
/// certificate a `[[auth.certificates]]` rule maps is that rule's caller. A key, when present,
/// decides alone: whoever holds it chose to call as its owner.
pub async fn authenticate(
    state: &ProxyState,
    headers: &HeaderMap,
    certificate: Option<&ClientCertificate>,
    now: i64,
) -> Result<Arc<Principal>, ApiError> {
    if let Some(certificate) = certificate
        && credential_absent(headers)
    {
        return certificate_caller(state, certificate, now);
    }
    let credential = credential(headers).ok_or(ApiError::InvalidApiKey)?;
    if credential.starts_with(SecretKind::ApiKey.prefix()) {
        return key(state, credential, now).await;
    }
    token(state, credential, now).await
}

async fn key(state: &ProxyState, credential: &str, now: i64) -> Result<Arc<Principal>, ApiError> {
    let secret = SecretToken::parse(SecretKind::ApiKey, credential).map_err(|_| ApiError::InvalidApiKey)?;
    let hash = state.hasher().hash(&secret);
    let max_age = state.runtime().live.store.cache_max_age.0;
    let principal = state
        .keys()
        .lookup(&hash, max_age)
        .await
        .map_err(|error| ApiError::from_store(&error, "key lookup"))?
        .ok_or(ApiError::InvalidApiKey)?;
    if principal.revoked {
        return Err(ApiError::RevokedApiKey);
    }
    if principal.is_expired(now) {
        return Err(ApiError::ExpiredApiKey);
    }
    principal.mark_used(now);
    Ok(principal)
}

/// An access token: verified (or found in the verifier's cache of verified tokens) and turned
/// into a principal. Without issuers it is just not a key.
async fn token(state: &ProxyState, credential: &str, now: i64) -> Result<Arc<Principal>, ApiError> {
    let tokens = state.runtime().tokens.clone();
    if tokens.is_empty() {
        return Err(ApiError::InvalidApiKey);
    }
    let identity = tokens.verify(credential).await.map_err(|refusal| {
        if refusal.is_unavailable() {
            ApiError::AuthUnavailable { retry_after_secs: AUTH_RETRY_AFTER_SECS }
        } else {
            ApiError::InvalidToken { message: refusal.to_string() }
        }
    })?;
    let principal = Principal::from_identity(ExternalIdentity::clone(&identity));
    if principal.is_expired(now) {
        return Err(ApiError::InvalidToken { message: portcullis_oidc::Refusal::Expired.to_string() });
    }
    Ok(Arc::new(principal))
}

/// The caller a verified client certificate maps to; an unmapped one is no caller.
fn certificate_caller(
    state: &ProxyState,
    certificate: &ClientCertificate,
    now: i64,
) -> Result<Arc<Principal>, ApiError> {
    let live = Arc::clone(&state.runtime().live);
    let principal = state.certificates().principal(certificate, &live).ok_or(ApiError::InvalidApiKey)?;
    // The handshake refused it if it had expired; a connection may outlive it, though.
    if principal.is_expired(now) {
        return Err(ApiError::InvalidApiKey);
    }
    principal.mark_used(now);
    Ok(principal)
}

/// No credential header at all (an empty or malformed one is still a credential, and refused).
fn credential_absent(headers: &HeaderMap) -> bool {
    !headers.contains_key(AUTHORIZATION) && !headers.contains_key("x-api-key")
}

/// `Authorization: Bearer <key>` first, then `x-api-key: <key>`.
fn credential(headers: &HeaderMap) -> Option<&str> {
    if headers.contains_key(AUTHORIZATION) {
        return bearer_token(headers);
    }
    headers.get("x-api-key")?.to_str().ok().map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn bearer_and_x_api_key_are_both_accepted() {
        assert_eq!(credential(&headers(&[("authorization", "Bearer pcl_x")])), Some("pcl_x"));
        assert_eq!(credential(&headers(&[("authorization", "bearer  pcl_x ")])), Some("pcl_x"));
        assert_eq!(credential(&headers(&[("x-api-key", "pcl_y")])), Some("pcl_y"));
        assert_eq!(credential(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(credential(&headers(&[])), None);
    }

    #[test]
    fn any_credential_header_keeps_the_certificate_out() {
        assert!(credential_absent(&headers(&[("user-agent", "x")])));
        assert!(!credential_absent(&headers(&[("authorization", "Basic abc")])));
        assert!(!credential_absent(&headers(&[("x-api-key", "")])));
    }
}
