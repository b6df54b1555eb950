//! What each kind of model server understands of the OpenAI API (`models[].server`): which
//! completion-cap fields it obeys, and whether it reports usage in a stream when
//! `stream_options.include_usage` asks for it.
//!
//! | server     | cap fields it reads (first wins) | written when none is sent | stream usage |
//! |------------|----------------------------------|---------------------------|--------------|
//! | `openai`   | `max_tokens`, `max_completion_tokens` | `max_tokens`         | asked for    |
//! | `llamacpp` | `n_predict`, then `max_tokens`   | `n_predict`               | asked for    |
//! | `vllm`     | `max_tokens`, `max_completion_tokens` | `max_tokens`         | asked for    |
//! | `ollama`   | `max_tokens`                     | `max_tokens`              | asked for (0.5.2 and later) |
//! | `tgi`      | `max_tokens`                     | `max_tokens`              | none: counted |
//!
//! `openai` writes `max_tokens` because it stands for any OpenAI-compatible server, and older
//! ones know no other; `models[].max_tokens_field` overrides the field written (and read) for a
//! server that refuses it (OpenAI's reasoning models want `max_completion_tokens`).

use portcullis_config::{ModelConfig, ModelServer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect<'a> {
    /// The cap fields the server obeys, the one written when a body has none of them first.
    cap_fields: CapFields<'a>,
    reports_stream_usage: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CapFields<'a> {
    Known(&'static [&'static str]),
    /// The model's `max_tokens_field`.
    Configured(&'a str),
}

impl<'a> Dialect<'a> {
    pub const fn of(server: ModelServer, max_tokens_field: Option<&'a str>) -> Dialect<'a> {
        let known: &'static [&'static str] = match server {
            ModelServer::Openai => &["max_tokens", "max_completion_tokens"],
            ModelServer::Llamacpp => &["n_predict", "max_tokens"],
            ModelServer::Vllm => &["max_tokens", "max_completion_tokens"],
            ModelServer::Ollama | ModelServer::Tgi => &["max_tokens"],
        };
        let cap_fields = match max_tokens_field {
            Some(configured) => CapFields::Configured(configured),
            None => CapFields::Known(known),
        };
        // TGI streams no usage and ignores `stream_options`.
        Dialect { cap_fields, reports_stream_usage: !matches!(server, ModelServer::Tgi) }
    }

    /// A configured model's dialect; an unknown model's is OpenAI's.
    pub fn of_model(model: Option<&'a ModelConfig>) -> Dialect<'a> {
        match model {
            Some(model) => Dialect::of(model.server, model.max_tokens_field.as_deref()),
            None => Dialect::of(ModelServer::Openai, None),
        }
    }

    /// Whether the server obeys a cap in `field`.
    pub fn obeys(&self, field: &[u8]) -> bool {
        match self.cap_fields {
            CapFields::Known(fields) => fields.iter().any(|known| known.as_bytes() == field),
            CapFields::Configured(configured) => configured.as_bytes() == field,
        }
    }

    /// The cap field written into a body that has none the server obeys.
    pub fn cap_field(&self) -> &'a str {
        match self.cap_fields {
            CapFields::Known(fields) => fields.first().copied().unwrap_or("max_tokens"),
            CapFields::Configured(configured) => configured,
        }
    }

    /// Whether the server sends a usage chunk at the end of a stream when
    /// `stream_options.include_usage` asks for it; without one the completion is counted.
    pub fn reports_stream_usage(&self) -> bool {
        self.reports_stream_usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_is_capped_in_the_field_it_reads_first() {
        let written = |server| Dialect::of(server, None).cap_field();
        assert_eq!(written(ModelServer::Llamacpp), "n_predict");
        assert_eq!(written(ModelServer::Openai), "max_tokens");
        assert_eq!(written(ModelServer::Vllm), "max_tokens");
        assert_eq!(written(ModelServer::Ollama), "max_tokens");
        assert_eq!(written(ModelServer::Tgi), "max_tokens");
    }

    #[test]
    fn a_server_obeys_only_its_own_cap_fields() {
        let llamacpp = Dialect::of(ModelServer::Llamacpp, None);
        assert!(llamacpp.obeys(b"max_tokens") && llamacpp.obeys(b"n_predict"));
        assert!(!llamacpp.obeys(b"max_completion_tokens"));
        let vllm = Dialect::of(ModelServer::Vllm, None);
        assert!(vllm.obeys(b"max_completion_tokens") && !vllm.obeys(b"n_predict"));
        assert!(!Dialect::of(ModelServer::Tgi, None).obeys(b"max_new_tokens"));
    }

    #[test]
    fn the_configured_field_overrides_the_dialect() {
        let openai = Dialect::of(ModelServer::Openai, Some("max_completion_tokens"));
        assert_eq!(openai.cap_field(), "max_completion_tokens");
        assert!(openai.obeys(b"max_completion_tokens") && !openai.obeys(b"max_tokens"));
    }

    #[test]
    fn only_tgi_streams_without_usage() {
        for server in [ModelServer::Openai, ModelServer::Llamacpp, ModelServer::Vllm, ModelServer::Ollama] {
            assert!(Dialect::of(server, None).reports_stream_usage(), "{server:?}");
        }
        assert!(!Dialect::of(ModelServer::Tgi, None).reports_stream_usage());
    }
}
