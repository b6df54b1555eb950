//! Entry points for the criterion benchmarks in `benches/` (feature `bench`; not a public API).
#![doc(hidden)]

use bytes::Bytes;
use portcullis_config::{Config, ConfigError};

use crate::proxy::{TEMPLATE_SLACK, body, counted_bound};
use crate::runtime::Runtime;

/// The prompt bound a request reserves, computed as admission does, for the models of a
/// configuration.
#[derive(Debug)]
pub struct PromptBound {
    runtime: Runtime,
}

impl PromptBound {
    /// Builds the model routes of `config` (inside a tokio runtime, like the server).
    pub fn new(config: &str) -> Result<PromptBound, ConfigError> {
        let (_, live) = Config::parse(config, |_| None)?.split();
        Ok(PromptBound { runtime: Runtime::new(live, None) })
    }

    /// The prompt tokens `body` reserves: its model's counted bound, else its bytes'.
    pub async fn of(&self, body: Bytes) -> u64 {
        let byte_bound = body.len() as u64 + TEMPLATE_SLACK;
        let Ok(request) = body::parse(body::Operation::Chat, body, 64) else { return byte_bound };
        let counted = counted_bound(&self.runtime, self.runtime.live.model(&request.model), &request).await;
        counted.map_or(byte_bound, |counted| counted.min(byte_bound))
    }
}
