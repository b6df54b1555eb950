//! What can go wrong on the way to a model server, in terms the server crate maps to HTTP
//! answers (`503`, `504`, `503` + `Retry-After`, `404`). Messages name models and endpoint URLs
//! (which never carry credentials) and never the `api_key`.

use std::error::Error as StdError;
use std::time::Duration;

/// Why [`Upstreams::forward`](crate::Upstreams::forward) produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Every endpoint tried (of the model and of the fallbacks it may use) failed before sending
    /// a response head, or none was in rotation.
    #[error("model {model:?} is unavailable after {attempts} attempt(s): {reason}")]
    Unavailable {
        /// The model the client asked for.
        model: String,
        /// Requests actually sent upstream, over every model tried.
        attempts: u32,
        /// The last failure seen, for logs.
        reason: String,
    },
    /// An endpoint accepted the request but sent no response head within the model's
    /// `first_byte` (or `total`) timeout. Not retried: the server may still be working on it.
    #[error("model {model:?}: {endpoint} sent no response within {}ms", waited.as_millis())]
    Timeout {
        /// The model whose endpoint timed out (a fallback's name when a fallback was in use).
        model: String,
        endpoint: String,
        waited: Duration,
    },
    /// Every endpoint that could take the request was at its `max_concurrent`; nothing failed.
    #[error("every upstream endpoint is at its concurrency limit; retry after {retry_after_secs}s")]
    Overloaded { retry_after_secs: u64 },
    /// No endpoint of the model (or of the fallbacks it may use) is in rotation — every one is
    /// ejected or failing its health checks — and none failed for this request: the first may be
    /// back in `retry_after_secs`.
    #[error("model {model:?} has no endpoint in rotation; the first may be back in {retry_after_secs}s")]
    Resting { model: String, retry_after_secs: u64 },
    /// The gateway ran out of a local resource (file descriptors, memory, ports) it needs to
    /// reach the model server; the endpoints are not to blame and stay in rotation.
    #[error("the gateway cannot open upstream connections: {reason}")]
    Exhausted { reason: String },
    /// The request names no configured model.
    #[error("unknown model")]
    UnknownModel,
}

/// Why a response body ended early. The body yields one of these once and then ends.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    /// The upstream sent nothing for the model's `idle` timeout in the middle of a body.
    #[error("upstream sent nothing for {}ms in the middle of the response", after.as_millis())]
    IdleTimeout { after: Duration },
    /// The whole exchange ran past the model's `total` timeout.
    #[error("upstream response exceeded the total time limit of {}ms", limit.as_millis())]
    TotalTimeout { limit: Duration },
    /// The connection failed mid-body (reset, truncated chunk, ...).
    #[error("upstream response body failed: {0}")]
    Upstream(#[source] Box<dyn StdError + Send + Sync>),
}

/// An error with its sources, `outer: inner: innermost`, because a top-level message ("connect
/// failed", "TLS handshake failed") says little without its cause ("Connection refused",
/// "invalid peer certificate").
pub(crate) fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn describe_includes_every_cause() {
        let error = Outer(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(describe(&error), "outer: refused");
    }

    #[test]
    fn messages_say_what_happened() {
        let timeout =
            UpstreamError::Timeout { model: "m".into(), endpoint: "http://h:1".into(), waited: Duration::from_secs(2) };
        assert_eq!(timeout.to_string(), "model \"m\": http://h:1 sent no response within 2000ms");
        assert_eq!(
            UpstreamError::Overloaded { retry_after_secs: 1 }.to_string(),
            "every upstream endpoint is at its concurrency limit; retry after 1s"
        );
    }
}
