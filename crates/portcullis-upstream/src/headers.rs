//! Which headers cross the gateway. Hop-by-hop headers describe one connection and must not be
//! relayed (RFC 9110 §7.6.1); credentials of the client are for the gateway alone and must
//! never reach a model server, which gets the model's own `api_key` instead.

use http::HeaderMap;
use http::header::{self, HeaderName};

/// Hop-by-hop headers always dropped, in both directions. `keep-alive` and `proxy-connection`
/// are not standard but old clients and proxies still send them.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Client headers that carry the client's identity or are recomputed for the upstream request:
/// credentials are replaced by the model's `api_key`, `host` and `content-length` are set for
/// the upstream URL and the (possibly rewritten) body.
static NOT_FORWARDED: [HeaderName; 5] =
    [header::AUTHORIZATION, HeaderName::from_static("x-api-key"), header::COOKIE, header::HOST, header::CONTENT_LENGTH];

/// Removes the hop-by-hop headers, including every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The headers of an upstream request, from the client's: hop-by-hop and credential headers
/// removed. The server filters already; this is the defensive second line.
pub(crate) fn outbound(mut headers: HeaderMap) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    for name in NOT_FORWARDED.iter() {
        headers.remove(name);
    }
    headers
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_dropped() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-trace-hop"),
            ("connection", "X-Other-Hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic Zm9v"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-trace-hop", "1"),
            ("x-other-hop", "2"),
            ("content-type", "text/event-stream"),
            ("content-length", "42"),
            ("x-request-id", "abc"),
        ]);
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "content-type", "x-request-id"]);
    }

    #[test]
    fn client_credentials_host_and_length_are_never_forwarded() {
        let client = map(&[
            ("authorization", "Bearer pcl_client_key"),
            ("x-api-key", "pcl_client_key"),
            ("cookie", "session=1"),
            ("proxy-authorization", "Basic Zm9v"),
            ("host", "gateway.example"),
            ("content-length", "10"),
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
            ("user-agent", "openai-python/1.0"),
            ("x-request-id", "req-1"),
        ]);
        let headers = outbound(client.clone());
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "content-type", "user-agent", "x-request-id"]);
    }

    #[test]
    fn end_to_end_headers_keep_every_value() {
        let client = map(&[("accept", "application/json"), ("accept", "text/event-stream")]);
        let headers = outbound(client.clone());
        assert_eq!(headers.get_all(header::ACCEPT).iter().count(), 2);
    }
}
