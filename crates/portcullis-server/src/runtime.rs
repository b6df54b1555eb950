//! What changes on reload: the configuration and the model routes built from it, swapped
//! together so that a request sees all-old or all-new.

use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_config::Config;
use portcullis_upstream::Upstreams;

#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    pub upstreams: Arc<Upstreams>,
}

impl Runtime {
    /// Builds the model routes for `config` (and starts their health checks).
    pub fn new(config: Config) -> Runtime {
        let upstreams = Arc::new(Upstreams::new(&config.models));
        Runtime { config: Arc::new(config), upstreams }
    }
}

/// The running [`Runtime`]; every component that reads it holds a clone of this handle.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;
