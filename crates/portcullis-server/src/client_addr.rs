//! The client's address: the peer's, unless the peer is a trusted proxy — then the hop its
//! forwarded-for header names, walking from the right past every trusted proxy.
//!
//! Only the configured header (`server.forwarded_header`) is read, every line of it as one list.
//! A hop is an IP address, optionally with a port (`1.2.3.4:5`, `[2001:db8::1]:5`); a hop that
//! is anything else (`unknown`, `_hidden`, garbage) where the walk stops makes the request
//! unanswerable: skipping it would let whatever the client wrote to its left become the client,
//! so the request is refused instead.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;
use portcullis_config::ForwardedHeader;

/// The resolved client address, in the request's extensions for the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// A hop that names no address where the client had to be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {header} header names a client that is not an IP address ({hop:?})")]
pub struct UnparsableHop {
    header: &'static str,
    hop: String,
}

/// The client's address for a request from `peer` with `headers`.
pub fn resolve(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted_proxies: &[IpNet],
    header: ForwardedHeader,
) -> Result<IpAddr, UnparsableHop> {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let mut client = peer.ip().to_canonical();
    if !trusted(&client) {
        return Ok(client);
    }
    let name = match header {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    let lines: Vec<&[u8]> = headers.get_all(name).iter().map(http::HeaderValue::as_bytes).collect();
    for element in lines.iter().rev().flat_map(|line| line.rsplit(|&b| b == b',')) {
        let hop = match header {
            ForwardedHeader::XForwardedFor => Some(element),
            ForwardedHeader::Forwarded => forwarded_for(element),
        };
        let unparsable =
            || UnparsableHop { header: name, hop: String::from_utf8_lossy(element.trim_ascii()).into_owned() };
        client = hop.and_then(parse_hop).ok_or_else(unparsable)?;
        if !trusted(&client) {
            return Ok(client);
        }
    }
    // Every hop is a trusted proxy (or there was no header): the last one is the client.
    Ok(client)
}

/// The `for=` parameter of one `Forwarded` element, unquoted.
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    element.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let (name, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
        if !name.eq_ignore_ascii_case(b"for") {
            return None;
        }
        let value = &value[1..];
        Some(value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value))
    })
}

/// An address with an optional port: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:80`.
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hop).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Some(address.ip().to_canonical());
    }
    let bracketed = text.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(name, line.parse().unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const PROXY: &str = "10.0.0.1:5000";

    fn xff(lines: &[&str]) -> Result<IpAddr, UnparsableHop> {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        resolve(PROXY.parse().unwrap(), &headers("x-forwarded-for", lines), &trusted, ForwardedHeader::XForwardedFor)
    }

    #[test]
    fn the_walk_stops_at_the_first_untrusted_hop_from_the_right() {
        assert_eq!(xff(&["6.6.6.6, 1.2.3.4, 10.0.0.7"]), Ok(ip("1.2.3.4")));
        assert_eq!(xff(&["6.6.6.6, 1.2.3.4", "10.0.0.7"]), Ok(ip("1.2.3.4")), "several lines are one list");
        assert_eq!(xff(&[]), Ok(ip("10.0.0.1")), "no header: the peer");
        assert_eq!(xff(&["10.0.0.9"]), Ok(ip("10.0.0.9")), "only trusted hops: the leftmost");
    }

    #[test]
    fn hops_with_ports_are_addresses() {
        assert_eq!(xff(&["6.6.6.6, 1.2.3.4:5678"]), Ok(ip("1.2.3.4")));
        assert_eq!(xff(&["6.6.6.6, [2001:db8::1]:80"]), Ok(ip("2001:db8::1")));
        assert_eq!(xff(&["6.6.6.6, [2001:db8::1]"]), Ok(ip("2001:db8::1")));
        assert_eq!(xff(&["::ffff:1.2.3.4"]), Ok(ip("1.2.3.4")), "mapped addresses are plain IPv4");
    }

    #[test]
    fn an_unparsable_hop_where_the_walk_stops_refuses_the_request() {
        for hop in ["unknown", "_hidden", "1.2.3.4.5", "", "fe80::1%eth0", "[::1]:x"] {
            assert!(xff(&[&format!("6.6.6.6, {hop}")]).is_err(), "{hop:?}");
        }
        // To the left of the client it does not matter.
        assert_eq!(xff(&["garbage, 1.2.3.4"]), Ok(ip("1.2.3.4")));
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let forwarded = headers("x-forwarded-for", &["1.2.3.4"]);
        let stranger: SocketAddr = "8.8.8.8:1".parse().unwrap();
        assert_eq!(resolve(stranger, &forwarded, &trusted, ForwardedHeader::XForwardedFor), Ok(stranger.ip()));
        assert_eq!(
            resolve(PROXY.parse().unwrap(), &forwarded, &[], ForwardedHeader::XForwardedFor),
            Ok(ip("10.0.0.1"))
        );
    }

    #[test]
    fn forwarded_is_read_the_same_way_and_only_when_configured() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: SocketAddr = PROXY.parse().unwrap();
        let map =
            headers("forwarded", &[r#"for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, For=10.0.0.3;by=10.0.0.1"#]);
        assert_eq!(resolve(peer, &map, &trusted, ForwardedHeader::Forwarded), Ok(ip("2001:db8::7")));
        assert_eq!(
            resolve(peer, &map, &trusted, ForwardedHeader::XForwardedFor),
            Ok(ip("10.0.0.1")),
            "the other header is ignored"
        );
        let hidden = headers("forwarded", &["for=6.6.6.6, for=_hidden"]);
        assert!(resolve(peer, &hidden, &trusted, ForwardedHeader::Forwarded).is_err());
        let no_for = headers("forwarded", &["for=6.6.6.6, proto=https"]);
        assert!(resolve(peer, &no_for, &trusted, ForwardedHeader::Forwarded).is_err());
    }
}
