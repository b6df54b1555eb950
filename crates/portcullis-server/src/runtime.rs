//! What changes on reload: the live settings and the model routes, token verifiers and prompt
//! counts built from them, swapped together so that a request sees all-old or all-new.

use std::sync::Arc;

use arc_swap::ArcSwap;
use portcullis_config::Live;
use portcullis_oidc::Verifier;
use portcullis_upstream::Upstreams;

use crate::tokenizer::PromptCounter;

#[derive(Debug)]
pub struct Runtime {
    pub live: Arc<Live>,
    pub upstreams: Arc<Upstreams>,
    /// The `[[auth.oidc]]` issuers, their key sets and verified-token cache.
    pub tokens: Verifier,
    /// Prompt token counts of the models with a `tokenizer`, cached until the next reload.
    pub prompts: PromptCounter,
}

impl Runtime {
    /// Builds the model routes for `live` (and starts their health checks) and its token
    /// verifiers, keeping the key sets of the issuers `previous` shares with it.
    pub fn new(live: Live, previous: Option<&Runtime>) -> Runtime {
        let upstreams = Arc::new(crate::routes::upstreams(&live.models));
        let tokens = Verifier::new(&live.auth, previous.map(|previous| &previous.tokens));
        Runtime { live: Arc::new(live), upstreams, tokens, prompts: PromptCounter::default() }
    }
}

/// The running [`Runtime`]; every component that reads it holds a clone of this handle.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;
