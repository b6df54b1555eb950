//! Routing requests to model servers (DESIGN §8): one pool of endpoints per configured model,
//! least-outstanding balancing, passive ejection and active health checks, retries on other
//! endpoints and fallback models, and a streaming relay of the response with idle and total
//! timeouts.
//!
//! The server crate builds one [`Upstreams`] per configuration (and a fresh one on reload),
//! shares it in an `Arc`, and calls [`Upstreams::forward`] per request.
//!
//! Module map: `pool` endpoint state, selection and the wait queue's hand-off; `queue` the
//! priority heap of waiting requests; `route` a model's client and settings;
//! `forward` the attempt loop over endpoints and fallbacks; `attempt` one request up to its
//! response head; `body` the relayed body with timeouts and the slot guard; `health` active
//! checks; `headers` hop-by-hop and credential filtering; `rewrite` the `model` field; `side`
//! the gateway's own small calls (tokenize); `client` the HTTP/1.1 client and each endpoint's
//! keep-alive connections.

mod attempt;
mod body;
mod client;
mod error;
mod forward;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod headers;
mod health;
mod pool;
mod queue;
mod rewrite;
mod route;
mod side;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::sync::watch;

pub use body::UpstreamBody;
pub use client::ClientError;
pub use error::{AttemptError, LastFailure, UpstreamBodyError, UpstreamError};
pub use route::{HealthCheck, RouteSpec, RouteStatus, RouteTimeouts};
pub use side::SideError;

use route::Route;

/// Every configured model's route. Built once per configuration; cheap to share in an `Arc`.
/// Dropping it stops its health-check tasks.
pub struct Upstreams {
    /// In configured order.
    routes: Vec<Route>,
    by_name: HashMap<String, usize>,
    /// Dropping this ends every health-check task and the idle-connection sweep.
    _background: Shutdown,
}

impl fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstreams").field("routes", &self.routes).finish_non_exhaustive()
    }
}

/// Stops the background tasks of one [`Upstreams`] (health checks, the idle-connection sweep)
/// when dropped: each waits on a receiver whose `changed()` then fails.
#[derive(Debug)]
struct Shutdown {
    _sender: watch::Sender<()>,
    receiver: watch::Receiver<()>,
}

impl Shutdown {
    fn new() -> Shutdown {
        let (sender, receiver) = watch::channel(());
        Shutdown { _sender: sender, receiver }
    }

    fn subscribe(&self) -> watch::Receiver<()> {
        self.receiver.clone()
    }
}

/// A request to forward, as the server hands it over.
#[derive(Debug, Clone)]
pub struct ForwardRequest {
    /// The model name the client sent (a configured model name).
    pub model: String,
    /// `POST` for a model call; `GET` or `DELETE` for what a model server stored (a response).
    pub method: http::Method,
    /// The client's path, e.g. `/v1/chat/completions` (a query string may follow); appended to
    /// the endpoint's origin and path prefix.
    pub path: String,
    /// Client headers to pass on, already filtered by the server. Hop-by-hop headers, `host`,
    /// `content-length` and any credential (`authorization`, `x-api-key`, `cookie`,
    /// `proxy-authorization`) are removed again here regardless.
    pub headers: HeaderMap,
    /// The client's JSON body, sent unchanged unless the `model` field must be translated.
    pub body: Bytes,
    /// Place in a model's queue when its endpoints are all at `max_concurrent`: higher is
    /// served first, equal priorities in arrival order. The server sets the caller's tier
    /// `priority` (0 by default; negative values are fine).
    pub priority: i64,
}

/// A model server's response, head received, body still streaming.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    /// The upstream's headers without hop-by-hop ones (`content-length` is kept: the body is
    /// relayed unchanged).
    pub headers: HeaderMap,
    /// Holds the endpoint's request slot until it ends or is dropped.
    pub body: UpstreamBody,
    /// The configured model that served it: the requested one, or a fallback.
    pub model: String,
    /// Origin and path prefix of the endpoint that served it; never carries credentials.
    pub endpoint: String,
}

/// One endpoint's live state, read at scrape time for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointState {
    pub model: String,
    pub url: String,
    /// In rotation: passing its health checks (or not checked) and not ejected.
    pub healthy: bool,
    pub outstanding: u64,
}

impl Upstreams {
    /// Builds a pool and an HTTP client per model and, inside a tokio runtime, starts the
    /// active health checks of the models that enable them (outside one, checks are skipped
    /// with a warning and endpoints stay healthy). If two models share a name, the first wins.
    pub fn new(models: &[RouteSpec]) -> Upstreams {
        let epoch = tokio::time::Instant::now();
        let shutdown = Shutdown::new();
        let mut routes = Vec::with_capacity(models.len());
        let mut by_name = HashMap::with_capacity(models.len());
        for config in models {
            if by_name.contains_key(&config.name) {
                tracing::warn!(model = %config.name, "model defined twice; the first definition is used");
                continue;
            }
            let route = Route::new(config, epoch);
            health::start(&route, &shutdown);
            by_name.insert(config.name.clone(), routes.len());
            routes.push(route);
        }
        let origins = routes
            .iter()
            .flat_map(|route| route.pool.endpoints().iter().map(|endpoint| Arc::downgrade(endpoint.origin())))
            .collect();
        client::sweep_idle(origins, shutdown.subscribe());
        Upstreams { routes, by_name, _background: shutdown }
    }

    pub fn contains(&self, model: &str) -> bool {
        self.by_name.contains_key(model)
    }

    /// Configured model names, in configuration order.
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|route| route.name.as_str())
    }

    /// Every model with its endpoints' live state, in configuration order.
    pub fn statuses(&self) -> Vec<RouteStatus> {
        self.routes.iter().map(Route::status).collect()
    }

    /// Every endpoint's live state, for metrics at scrape time.
    pub fn endpoint_states(&self) -> Vec<EndpointState> {
        self.routes.iter().flat_map(Route::endpoint_states).collect()
    }

    /// How many requests wait for an endpoint slot, per model in configuration order, for the
    /// `portcullis_upstream_queue_length` gauge. Read without locking.
    pub fn queue_lengths(&self) -> Vec<(String, usize)> {
        self.routes.iter().map(|route| (route.name.clone(), route.pool.queue_len())).collect()
    }

    /// Sends `request` to an endpoint of its model, retrying on other endpoints and then on the
    /// model's fallbacks for which `may_use` is true (the caller's permission check: a key
    /// allowed only the primary model must not be served by a fallback it may not use).
    ///
    /// Returns the first response that is not 502/503/504 (4xx and 500 included, as-is). When
    /// nothing is left to try and the last response received was 502/503/504, that response is
    /// returned rather than an error. Errors: [`UpstreamError::UnknownModel`];
    /// [`UpstreamError::Timeout`] when an endpoint sent no head in time (not retried);
    /// [`UpstreamError::Overloaded`] when nothing failed but the request was shed for capacity;
    /// [`UpstreamError::Unavailable`] otherwise.
    ///
    /// When every usable endpoint of a model is at its `max_concurrent`, the request waits in
    /// that model's queue, by [`ForwardRequest::priority`] and then arrival, for up to the
    /// model's `queue_timeout`; it is shed at once when the queue holds `queue_size` requests
    /// already (or `queue_size` is 0), and when the wait runs out. A shed request goes on to the
    /// fallbacks, which have queues of their own; `Overloaded` carries the shedding model's
    /// `queue_timeout` rounded up to whole seconds (at least 1) as `retry_after_secs`.
    ///
    /// `sent` is set once the request is handed to an endpoint (from then on the model server
    /// may be generating), for a caller that must bill a request it gives up on.
    ///
    /// Dropping the returned future, or the response body, cancels the upstream request and
    /// frees the endpoint's slot (or hands it to the next queued request); dropping the future
    /// while it waits takes the request out of the queue.
    pub async fn forward(
        &self,
        request: ForwardRequest,
        may_use: &(dyn Fn(&str) -> bool + Sync),
        sent: &AtomicBool,
    ) -> Result<UpstreamResponse, UpstreamError> {
        forward::forward(self, request, may_use, sent).await
    }

    /// A side request to one of `model`'s endpoints (see [`side`]): `POST path` with a JSON body,
    /// the whole answer within `timeout`, at most `max_answer` bytes.
    pub async fn ask(
        &self,
        model: &str,
        path: &str,
        body: &[u8],
        timeout: std::time::Duration,
        max_answer: usize,
    ) -> Result<Bytes, SideError> {
        let route = self.route(model).ok_or(SideError::UnknownModel)?;
        side::ask(route, path, body, timeout, max_answer).await
    }

    /// What `model`'s server calls it.
    pub fn upstream_model(&self, model: &str) -> Option<&str> {
        self.route(model).map(|route| route.upstream_model.as_str())
    }

    fn route(&self, model: &str) -> Option<&Route> {
        self.by_name.get(model).and_then(|&index| self.routes.get(index))
    }
}
