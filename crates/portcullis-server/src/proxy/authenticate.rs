//! Authentication of proxy requests: credential → principal, default deny.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use ipnet::IpNet;
use portcullis_auth::{SecretKind, SecretToken};

use crate::bearer::bearer_token;
use crate::error::ApiError;
use crate::principal::Principal;
use crate::state::AppState;

/// Finds the caller's principal. Anything short of a live, well-formed, known key is refused;
/// only the holder of a real key learns that it expired or was revoked.
pub async fn authenticate(state: &AppState, headers: &HeaderMap, now: i64) -> Result<Arc<Principal>, ApiError> {
    let credential = credential(headers).ok_or(ApiError::InvalidApiKey)?;
    let secret = SecretToken::parse(SecretKind::ApiKey, credential).map_err(|_| ApiError::InvalidApiKey)?;
    let hash = state.hasher().hash(&secret);
    let principal = state
        .keys()
        .lookup(&hash)
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

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` hop that is not itself a trusted proxy.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer.ip()) {
        return peer.ip();
    }
    let hops = headers.get_all("x-forwarded-for").iter().filter_map(|value| value.to_str().ok());
    let addresses: Vec<IpAddr> =
        hops.flat_map(|hops| hops.split(',')).filter_map(|hop| hop.trim().parse().ok()).collect();
    addresses.into_iter().rev().find(|ip| !trusted(ip)).unwrap_or(peer.ip())
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
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let forwarded = headers(&[("x-forwarded-for", "1.2.3.4, 10.0.0.7")]);
        assert_eq!(client_ip(proxy, &forwarded, &trusted), "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(client_ip(proxy, &forwarded, &[]), proxy.ip());
        let stranger: SocketAddr = "8.8.8.8:1".parse().unwrap();
        assert_eq!(client_ip(stranger, &forwarded, &trusted), stranger.ip());
    }
}
