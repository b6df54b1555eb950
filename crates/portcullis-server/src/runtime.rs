//! What changes on reload: the live settings and the model routes built from them, swapped
//! together so that a request sees all-old or all-new.

use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_config::Live;
use portcullis_upstream::Upstreams;

#[derive(Debug)]
pub struct Runtime {
    pub live: Arc<Live>,
    pub upstreams: Arc<Upstreams>,
}

impl Runtime {
    /// Builds the model routes for `live` (and starts their health checks).
    pub fn new(live: Live) -> Runtime {
        let upstreams = Arc::new(crate::routes::upstreams(&live.models));
        Runtime { live: Arc::new(live), upstreams }
    }
}

/// The running [`Runtime`]; every component that reads it holds a clone of this handle.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;
