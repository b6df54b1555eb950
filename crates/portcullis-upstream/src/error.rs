//! What can go wrong on the way to a model server, in terms the server crate maps to HTTP
//! answers (`503`, `504`, `503` + `Retry-After`, `404`). Messages name models and endpoint URLs
//! (which never carry credentials) and never the `api_key`. Causes are typed sources, left out
//! of each message: print the chain (`portcullis_types::chain`) to see them once each.

use std::error::Error as StdError;
use std::time::Duration;

use http::StatusCode;

use crate::client::ClientError;

/// Why [`Upstreams::forward`](crate::Upstreams::forward) produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Every endpoint tried (of the model and of the fallbacks it may use) failed before sending
    /// a response head, or none was in rotation.
    #[error("model {model:?} is unavailable after {attempts} attempt(s)")]
    Unavailable {
        /// The model the client asked for.
        model: String,
        /// Requests actually sent upstream, over every model tried.
        attempts: u32,
        /// The last failure seen, for logs.
        #[source]
        last: LastFailure,
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
    #[error("the gateway cannot open upstream connections")]
    Exhausted(#[source] ClientError),
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
    #[error("upstream response body failed")]
    Upstream(#[source] Box<dyn StdError + Send + Sync>),
}

/// The last thing that went wrong before an [`UpstreamError::Unavailable`].
#[derive(Debug, thiserror::Error)]
pub enum LastFailure {
    /// An attempt on `endpoint` (its public base URL) ended without a response head.
    #[error("{endpoint}")]
    Attempt {
        endpoint: String,
        #[source]
        source: AttemptError,
    },
    /// `endpoint` answered a status worth another endpoint (502, 503, 504).
    #[error("{endpoint} answered {status}")]
    Status { endpoint: String, status: StatusCode },
    /// Nothing was tried: every endpoint was unhealthy or ejected.
    #[error("every endpoint is unhealthy or ejected")]
    OutOfRotation,
    /// Nothing was tried, and no endpoint was passed over either.
    #[error("no endpoint available")]
    NoEndpoint,
}

/// How one attempt on one endpoint ended without a response head.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// Connecting or talking to the endpoint failed (refused, reset, connect timeout, closed
    /// before answering). Nothing reached the client, so another endpoint may be tried.
    #[error(transparent)]
    Failed(ClientError),
    /// Connected, sent, and no response head within the first-byte (or total) timeout.
    #[error("no response head within {}ms", .0.as_millis())]
    TimedOut(Duration),
    /// The model's `api_key` cannot be sent as a header; not the endpoint's fault.
    #[error("the model's api_key is not a valid HTTP header value")]
    InvalidCredential,
    /// The request could not be built for this endpoint (its URL); not the endpoint's fault.
    #[error("cannot build an upstream request")]
    Unbuildable(#[source] ClientError),
    /// The gateway itself is out of a resource it needs to connect (file descriptors, memory,
    /// local ports): not the endpoint's fault, and no other endpoint would fare better.
    #[error(transparent)]
    Exhausted(ClientError),
}

impl AttemptError {
    /// Whether the request never left the gateway (it could not be built).
    pub fn was_unsendable(&self) -> bool {
        matches!(self, AttemptError::InvalidCredential | AttemptError::Unbuildable(_))
    }
}

#[cfg(test)]
mod tests {
    use portcullis_types::chain;

    use super::*;

    #[test]
    fn an_unavailable_model_names_its_last_failure_and_its_cause_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let last = LastFailure::Attempt {
            endpoint: "http://h:1".into(),
            source: AttemptError::Failed(ClientError::Connect(refused)),
        };
        let error = UpstreamError::Unavailable { model: "m".into(), attempts: 1, last };
        assert_eq!(
            chain(&error).to_string(),
            "model \"m\" is unavailable after 1 attempt(s): http://h:1: connect failed: refused"
        );
        let cause = error.source().and_then(StdError::source).and_then(StdError::source);
        let io = cause.and_then(|cause| cause.downcast_ref::<std::io::Error>());
        assert_eq!(io.map(std::io::Error::kind), Some(std::io::ErrorKind::ConnectionRefused), "{error:?}");
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
