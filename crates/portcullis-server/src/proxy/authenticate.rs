//! Authentication of proxy requests: credential → principal, default deny.

use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use portcullis_auth::{SecretKind, SecretToken};

use super::ProxyState;
use crate::bearer::bearer_token;
use crate::error::ApiError;
use crate::principal::Principal;

/// Finds the caller's principal. Anything short of a live, well-formed, known key is refused;
/// only the holder of a real key learns that it expired or was revoked.
pub async fn authenticate(state: &ProxyState, headers: &HeaderMap, now: i64) -> Result<Arc<Principal>, ApiError> {
    let credential = credential(headers).ok_or(ApiError::InvalidApiKey)?;
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
}
