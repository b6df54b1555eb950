//! What Anthropic's Messages API does differently from OpenAI's, beyond its error shape (see
//! `error_shape`) and its stream events (see `sse`): how its `usage` counts the prompt, and the
//! headers that choose its version and betas.

use http::HeaderName;
use portcullis_types::openai::Usage;
use serde::Deserialize;

/// Client headers forwarded on the Messages routes only: the API version and the betas the
/// client's SDK asks for decide what the server answers.
pub const FORWARDED_HEADERS: [HeaderName; 2] =
    [HeaderName::from_static("anthropic-version"), HeaderName::from_static("anthropic-beta")];

/// Anthropic's `usage`, whole (a plain answer) or in part (each stream event carries some).
///
/// Its `input_tokens` leaves out the prompt tokens read from or written to the prompt cache,
/// which are counted apart; the prompt is their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct AnthropicUsage {
    input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// The whole prompt, when this part reports any of it.
    pub fn prompt_tokens(&self) -> Option<u64> {
        let parts = [self.input_tokens, self.cache_read_input_tokens, self.cache_creation_input_tokens];
        parts.into_iter().flatten().reduce(u64::saturating_add)
    }

    pub fn output_tokens(&self) -> Option<u64> {
        self.output_tokens
    }

    /// In OpenAI's terms, which the settlement bills.
    pub fn usage(&self) -> Usage {
        let prompt_tokens = self.prompt_tokens().unwrap_or_default();
        let completion_tokens = self.output_tokens.unwrap_or_default();
        Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens.saturating_add(completion_tokens) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> AnthropicUsage {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_prompt_includes_the_tokens_read_from_and_written_to_the_cache() {
        // llama-server's answer to a prompt of 11 tokens, 6 of them cached.
        let usage = parse(r#"{"cache_read_input_tokens":6,"input_tokens":5,"output_tokens":8}"#);
        assert_eq!(usage.usage(), Usage { prompt_tokens: 11, completion_tokens: 8, total_tokens: 19 });
        let written = parse(r#"{"input_tokens":3,"cache_creation_input_tokens":40,"output_tokens":1}"#);
        assert_eq!(written.prompt_tokens(), Some(43));
    }

    #[test]
    fn the_routes_of_anthropics_api_answer_errors_in_its_shape() {
        use crate::error_shape::ErrorShape;

        use super::super::body::Operation;

        for operation in Operation::ALL {
            let anthropic = ErrorShape::of_path(operation.path()) == ErrorShape::Anthropic;
            assert_eq!(anthropic, operation.is_anthropic(), "{operation:?}");
        }
    }

    #[test]
    fn a_part_without_the_prompt_reports_none_of_it() {
        // A `message_delta`'s usage: the completion only.
        let delta = parse(r#"{"output_tokens":8}"#);
        assert_eq!(delta.prompt_tokens(), None);
        assert_eq!(delta.output_tokens(), Some(8));
    }
}
