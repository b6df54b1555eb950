//! `[authz]`: the authorizer listener, for a gateway that forwards the traffic itself (nginx
//! `auth_request`, Caddy `forward_auth`, Traefik `forwardAuth`, Envoy `ext_authz` and
//! `ext_proc`) and asks Portcullis only whether a request may pass.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::duration::ConfigDuration;

/// Shortest and longest `authz.lease`.
pub const MIN_LEASE: Duration = Duration::from_secs(1);
pub const MAX_LEASE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzConfig {
    /// Where the authorizer listens (HTTP/1, and HTTP/2 for gRPC); absent = no authorizer.
    pub listen: Option<SocketAddr>,
    /// The gateways allowed to ask, and to report usage. Only their requests are answered, and
    /// only their forwarded headers (`X-Forwarded-For`, `X-Original-URI`, …) are believed.
    pub gateways: Vec<IpNet>,
    /// How long an allowed request's reservation and concurrency slot wait for its usage (a
    /// report, or Envoy's `ext_proc` stream); then the reservation is charged in full and the
    /// slot given back.
    pub lease: ConfigDuration,
    /// The request header in which a gateway that does not forward the body names the model.
    pub model_header: String,
    /// Open connections on the authorizer listener.
    pub max_connections: usize,
    /// TLS termination; absent = plain HTTP (and h2c for gRPC). With `client_ca` and
    /// `client_auth = "required"`, only gateways holding a certificate from that CA get through
    /// the handshake, wherever they connect from.
    pub tls: Option<crate::TlsConfig>,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        Self {
            listen: None,
            gateways: vec![
                IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST)),
                IpNet::from(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
            ],
            lease: ConfigDuration(Duration::from_secs(300)),
            model_header: "x-portcullis-model".into(),
            max_connections: 4096,
            tls: None,
        }
    }
}
