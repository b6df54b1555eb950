//! What the authorizer's handlers share: the proxy's parts (its caller, model and limit rules are
//! the authorizer's), the open leases, and the gateways it answers.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderName;
use ipnet::IpNet;

use super::lease::Leases;
use crate::exchange::Recording;
use crate::proxy::ProxyState;

#[derive(Clone)]
pub struct AuthzState {
    pub(super) proxy: ProxyState,
    pub(super) leases: Leases,
    /// Where decisions are recorded (the authorizer listener's own recording).
    pub(super) recording: Arc<Recording>,
    gateways: Arc<[IpNet]>,
    pub(super) model_header: HeaderName,
    /// Largest request body a gateway may forward with a check (`server.max_body_bytes`).
    pub(super) max_body_bytes: usize,
}

impl std::fmt::Debug for AuthzState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthzState").field("gateways", &self.gateways).field("leases", &self.leases).finish()
    }
}

/// The parts, as the server assembles them.
pub struct Parts {
    pub proxy: ProxyState,
    pub leases: Leases,
    pub recording: Arc<Recording>,
    pub gateways: Vec<IpNet>,
    pub model_header: HeaderName,
    pub max_body_bytes: usize,
}

impl AuthzState {
    pub fn new(parts: Parts) -> AuthzState {
        let Parts { proxy, leases, recording, gateways, model_header, max_body_bytes } = parts;
        AuthzState { proxy, leases, recording, gateways: gateways.into(), model_header, max_body_bytes }
    }

    pub(super) fn gateways(&self) -> &[IpNet] {
        &self.gateways
    }

    /// Whether `peer` is one of the configured gateways.
    pub(super) fn is_gateway(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.gateways.iter().any(|net| net.contains(&peer))
    }
}
