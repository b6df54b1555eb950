//! What one listener serves: its routes, and what serving any request needs besides them.

use std::sync::Arc;

use axum::Router;
use portcullis_audit::Redactor;

use crate::exchange::Recording;
use crate::lifecycle::Lifecycle;
use crate::listener_kind::ListenerKind;
use crate::metrics::Metrics;
use crate::runtime::SharedRuntime;

/// Which listener it is, its routes, and its context.
#[derive(Clone)]
pub struct Site {
    pub kind: ListenerKind,
    pub router: Router,
    pub context: Arc<SiteContext>,
    /// Where the site serves gRPC streams that may stay silent for as long as they last (Envoy's
    /// `ext_proc` on the authorizer): their bodies have no deadline. Whatever is under it must
    /// refuse a peer it does not serve before reading its body.
    pub grpc_streams: Option<&'static str>,
}

/// What the accept loop, the connections and the access log read besides the routes.
#[derive(Debug)]
pub struct SiteContext {
    /// Client address resolution and request-head limits.
    pub runtime: SharedRuntime,
    /// `server.max_headers` as the HTTP/1 gate was built with it (a startup setting): HTTP/2
    /// requests are held to the same.
    pub max_headers: usize,
    /// Masks credentials in a logged user agent.
    pub redactor: Arc<Redactor>,
    pub recording: Arc<Recording>,
}

impl SiteContext {
    pub fn metrics(&self) -> &Metrics {
        &self.recording.metrics
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.recording.lifecycle
    }
}
