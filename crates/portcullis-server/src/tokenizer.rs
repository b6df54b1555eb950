//! Prompt token counts from a model's tokenizer, cached.
//!
//! A count comes from the model server's own tokenize endpoint (`tokenizer = "server"`), asked
//! as a side request (see `portcullis_upstream::Upstreams::ask`) with a short timeout: a slow or
//! failing tokenizer costs a request [`TOKENIZE_TIMEOUT`] at most and leaves it with the byte
//! bound, never an error. Counts are cached by a keyed hash of the model and the text, so a
//! repeated prompt (a system prompt sent by every call of an agent) costs one lookup; concurrent
//! misses for one text share one call. The cache lives in the runtime, so a reload that may
//! change a model's server starts it afresh.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::time::Duration;

use moka::future::Cache;
use portcullis_config::{ModelConfig, ModelServer};
use portcullis_upstream::Upstreams;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// The longest a request waits for its prompt's count before it falls back to the byte bound.
pub const TOKENIZE_TIMEOUT: Duration = Duration::from_millis(250);

/// Counts kept: a count is 16 bytes with its key, so this is a few hundred KiB at most.
const CACHED_COUNTS: u64 = 16_384;

pub struct PromptCounter {
    counts: Cache<u64, u64>,
    /// Keys the hash with per-process secrets: a client cannot craft a text whose hash collides
    /// with another's (and so borrow its smaller count).
    keys: RandomState,
}

impl std::fmt::Debug for PromptCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptCounter").field("entries", &self.counts.entry_count()).finish()
    }
}

impl Default for PromptCounter {
    fn default() -> Self {
        PromptCounter { counts: Cache::new(CACHED_COUNTS), keys: RandomState::new() }
    }
}

impl PromptCounter {
    /// Tokens of `text` by `model`'s tokenizer, or `None` when it has none or it did not answer
    /// in time.
    pub async fn count(&self, upstreams: &Upstreams, model: &ModelConfig, text: &str) -> Option<u64> {
        model.tokenizer?;
        let key = self.key(&model.name, text);
        let ask = async {
            let ask = Ask::for_server(model.server, upstreams.upstream_model(&model.name)?, text)?;
            let answer = upstreams
                .ask(&model.name, ask.path, &ask.body, TOKENIZE_TIMEOUT, ask.max_answer())
                .await
                .inspect_err(|error| tracing::debug!(model = %model.name, %error, "tokenizer gave no count"))
                .ok()?;
            ask.tokens_in(&answer)
        };
        // `None` is not cached: the next request asks again.
        self.counts.optionally_get_with(key, ask).await
    }

    fn key(&self, model: &str, text: &str) -> u64 {
        let mut hasher = self.keys.build_hasher();
        model.hash(&mut hasher);
        text.hash(&mut hasher);
        hasher.finish()
    }
}

/// One tokenize call in a server's dialect.
struct Ask {
    server: ModelServer,
    path: &'static str,
    body: Vec<u8>,
    text_len: usize,
}

impl Ask {
    fn for_server(server: ModelServer, upstream_model: &str, text: &str) -> Option<Ask> {
        let (path, body) = match server {
            // Special tokens are left out: the template adds its own, counted apart.
            ModelServer::Llamacpp => ("/tokenize", serde_json::json!({"content": text, "add_special": false})),
            ModelServer::Vllm => {
                ("/tokenize", serde_json::json!({"model": upstream_model, "prompt": text, "add_special_tokens": false}))
            }
            ModelServer::Tgi => ("/tokenize", serde_json::json!({"inputs": text})),
            ModelServer::Openai | ModelServer::Ollama => return None,
        };
        Some(Ask { server, path, body: serde_json::to_vec(&body).ok()?, text_len: text.len() })
    }

    /// Room for the answer: a token id and its comma are at most 8 bytes, and no token is
    /// shorter than a byte of text.
    fn max_answer(&self) -> usize {
        self.text_len.saturating_mul(8).saturating_add(4096)
    }

    fn tokens_in(&self, answer: &[u8]) -> Option<u64> {
        // Elements are counted, not kept: a vector of `IgnoredAny` does not allocate.
        #[derive(Deserialize)]
        struct Tokens {
            tokens: Vec<IgnoredAny>,
        }
        #[derive(Deserialize)]
        struct Counted {
            count: u64,
        }
        match self.server {
            ModelServer::Llamacpp => serde_json::from_slice::<Tokens>(answer).ok().map(|t| t.tokens.len() as u64),
            ModelServer::Vllm => serde_json::from_slice::<Counted>(answer).ok().map(|c| c.count),
            ModelServer::Tgi => serde_json::from_slice::<Vec<IgnoredAny>>(answer).ok().map(|t| t.len() as u64),
            ModelServer::Openai | ModelServer::Ollama => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(server: ModelServer, answer: &str) -> Option<u64> {
        Ask::for_server(server, "m", "hello")?.tokens_in(answer.as_bytes())
    }

    #[test]
    fn each_servers_answer_is_counted_in_its_own_shape() {
        assert_eq!(tokens(ModelServer::Llamacpp, r#"{"tokens":[1,2,3]}"#), Some(3));
        assert_eq!(tokens(ModelServer::Llamacpp, r#"{"tokens":[{"id":1,"piece":"he"}]}"#), Some(1));
        assert_eq!(tokens(ModelServer::Vllm, r#"{"count":4,"tokens":[1,2,3,4],"max_model_len":8}"#), Some(4));
        assert_eq!(tokens(ModelServer::Tgi, r#"[{"id":1,"text":"he","start":0,"stop":2}]"#), Some(1));
        assert_eq!(tokens(ModelServer::Llamacpp, r#"{"error":"x"}"#), None);
        assert_eq!(tokens(ModelServer::Ollama, r#"{"tokens":[1]}"#), None, "Ollama has no tokenize endpoint");
    }

    #[test]
    fn the_key_tells_models_and_texts_apart() {
        let counter = PromptCounter::default();
        assert_eq!(counter.key("m", "a"), counter.key("m", "a"));
        assert_ne!(counter.key("m", "a"), counter.key("n", "a"));
        assert_ne!(counter.key("m", "ab"), counter.key("ma", "b"), "hashing str is length-delimited");
    }
}
