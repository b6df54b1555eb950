//! Where an endpoint lives, worked out once from its configured URL: what to connect to, what
//! to put in `Host`, which name the TLS certificate must carry, and the path prefix.

use http::HeaderValue;
use rustls::pki_types::ServerName;
use url::{Host, Url};

use super::idle::{IDLE_TIMEOUT, IdleConnections};

#[derive(Debug)]
pub(crate) struct Origin {
    /// Host name or IP address to connect to (IPv6 without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `host[:port]`, the port only when it is not the scheme's default.
    pub(crate) authority: HeaderValue,
    /// `Some` for `https`: the name the server's certificate is checked against, or `Err` with
    /// the host when it can be no such name (the URL parser takes hosts TLS does not). Such an
    /// endpoint is never connected to: falling back to plain HTTP would send its credential in
    /// the clear.
    pub(crate) tls_name: Option<Result<ServerName<'static>, String>>,
    /// The URL's path without its trailing slash (`""` for none), prepended to request paths.
    pub(crate) path_prefix: String,
    pub(crate) idle: IdleConnections,
}

impl Origin {
    /// Configuration accepts only `http` and `https` URLs with a host; anything else here is
    /// connected to as plain HTTP on port 80, and fails there.
    pub(crate) fn new(url: &Url) -> Origin {
        let https = url.scheme() == "https";
        let port = url.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
        let (host, tls_name) = match url.host() {
            Some(Host::Domain(name)) => {
                (name.to_string(), ServerName::try_from(name.to_string()).map_err(|_| name.to_string()))
            }
            Some(Host::Ipv4(ip)) => (ip.to_string(), Ok(ServerName::IpAddress(ip.into()))),
            Some(Host::Ipv6(ip)) => (ip.to_string(), Ok(ServerName::IpAddress(ip.into()))),
            None => (String::new(), Err(String::new())),
        };
        let mut authority = url.host_str().unwrap_or_default().to_string();
        if let Some(port) = url.port() {
            authority.push_str(&format!(":{port}"));
        }
        Origin {
            host,
            port,
            // Built from a parsed URL's host and port: always a valid header value.
            authority: HeaderValue::try_from(authority).unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            tls_name: https.then_some(tls_name),
            path_prefix: url.path().trim_end_matches('/').to_string(),
            idle: IdleConnections::new(IDLE_TIMEOUT),
        }
    }

    /// The request target for `path` (which starts with `/`) under this endpoint's prefix.
    pub(crate) fn target(&self, path: &str) -> String {
        let mut target = String::with_capacity(self.path_prefix.len() + path.len() + 1);
        target.push_str(&self.path_prefix);
        if !path.starts_with('/') {
            target.push('/');
        }
        target.push_str(path);
        target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(url: &str) -> Origin {
        Origin::new(&Url::parse(url).unwrap())
    }

    #[test]
    fn plain_endpoints_need_no_tls_name_and_keep_their_port_in_host() {
        let origin = origin("http://10.0.0.5:8000/llama/");
        assert_eq!((origin.host.as_str(), origin.port), ("10.0.0.5", 8000));
        assert_eq!(origin.authority, "10.0.0.5:8000");
        assert!(origin.tls_name.is_none());
        assert_eq!(origin.target("/v1/chat/completions"), "/llama/v1/chat/completions");
        assert_eq!(origin.target("v1/embeddings"), "/llama/v1/embeddings");
    }

    #[test]
    fn https_endpoints_check_the_host_name_and_default_to_443() {
        let origin = origin("https://models.example");
        assert_eq!((origin.host.as_str(), origin.port), ("models.example", 443));
        assert_eq!(origin.authority, "models.example");
        assert_eq!(origin.tls_name, Some(Ok(ServerName::try_from("models.example").unwrap())));
        assert_eq!(origin.target("/v1/models"), "/v1/models");
    }

    #[test]
    fn ipv6_hosts_connect_without_brackets_and_keep_them_in_host() {
        let origin = origin("https://[::1]:8443/");
        assert_eq!((origin.host.as_str(), origin.port), ("::1", 8443));
        assert_eq!(origin.authority, "[::1]:8443");
        assert!(matches!(origin.tls_name, Some(Ok(ServerName::IpAddress(_)))));
    }

    #[test]
    fn an_https_host_that_is_no_tls_server_name_is_kept_as_an_error() {
        assert_eq!(origin("https://a=b.example/v1").tls_name, Some(Err("a=b.example".to_string())));
        assert_eq!(origin("http://a=b.example/v1").tls_name, None);
    }
}
