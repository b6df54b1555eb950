//! The attempt loop: endpoints of the requested model first, then its fallbacks, until one
//! gives an answer worth returning.
//!
//! Retrying is only safe while nothing has reached the client, which here means: before a
//! response head has been accepted. So an attempt is retried on another endpoint when it fails
//! before any response head (connection refused or reset, connect timeout, connection closed
//! before answering) or when the head says 502/503/504 (a proxy in front of the model server
//! failed, or the server is loading or saturated). A first-byte timeout is not retried: the
//! server may still be generating, and sending the same request elsewhere would double the
//! load exactly when the pool is slow. Any other response, 4xx and 500 included, is the answer.
//!
//! When every usable endpoint of a model is at `max_concurrent`, an attempt waits in that
//! model's queue (see `pool`) until a slot is handed to it, for at most the model's
//! `queue_timeout` in all (one budget per model per request, shared by its retries). A request
//! shed by the queue (full, timed out) goes on to the fallbacks like one whose pool failed, each
//! fallback with its own queue; if nothing serves it, the answer is `Overloaded` with the
//! largest `Retry-After` of the models that shed it. A request never waits while it holds a
//! slot (a 503 kept aside as the answer of last resort holds one): two requests each holding a
//! slot the other waits for would stall until their timeouts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, Response, StatusCode};
use tokio::time::Instant;

use portcullis_types::chain;

use crate::attempt;
use crate::body::{UpstreamBody, deadline_after};
use crate::client::{ClientError, ResponseBody};
use crate::error::{AttemptError, LastFailure};
use crate::headers;
use crate::pool::{Claim, EndpointGuard, NoEndpoint, Waited};
use crate::rewrite;
use crate::route::Route;
use crate::{ForwardRequest, UpstreamError, UpstreamResponse, Upstreams};

/// Statuses that mean "this endpoint cannot serve now", worth another endpoint.
fn is_retryable(status: StatusCode) -> bool {
    matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
}

/// A response head received from an endpoint, with the slot it holds.
struct Exchange<'a> {
    route: &'a Route,
    guard: EndpointGuard,
    response: Response<ResponseBody>,
    deadline: Instant,
}

impl Exchange<'_> {
    /// Hands the response to the caller. The body timers start here: a 503 kept aside while
    /// other endpoints were tried must not have used up its idle time meanwhile.
    fn into_response(self) -> UpstreamResponse {
        let (mut parts, incoming) = self.response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let endpoint = self.guard.endpoint().base().to_string();
        let timeouts = self.route.timeouts;
        UpstreamResponse {
            status: parts.status,
            headers: parts.headers,
            body: UpstreamBody::new(
                incoming,
                Some(self.guard),
                timeouts.idle,
                self.deadline,
                timeouts.total.unwrap_or_default(),
            ),
            model: self.route.name.clone(),
            endpoint,
        }
    }
}

/// What the attempts so far came to, for the answer when nothing succeeds.
#[derive(Default)]
struct Tally<'a> {
    /// Requests actually sent.
    attempts: u32,
    /// Set when a model shed the request (every usable endpoint at `max_concurrent`, and the
    /// queue full or the wait over): the largest `Retry-After` among those models.
    overloaded: Option<u64>,
    /// Some untried endpoint was passed over because it was unhealthy or ejected: when the
    /// first of them may be back.
    back_in: Option<Duration>,
    /// The last real failure (an attempt that failed, or a request that could not be built).
    last_error: Option<LastFailure>,
    /// Set when the gateway itself ran out of something it needs to connect.
    exhausted: Option<ClientError>,
    /// The latest 502/503/504 response. When nothing is left to try, the caller gets it rather
    /// than a synthesised error: the model server's own body (often "loading model") says more.
    last_retryable: Option<Exchange<'a>>,
}

impl Tally<'_> {
    fn shed(&mut self, route: &Route) {
        self.overloaded = Some(self.overloaded.unwrap_or(0).max(route.retry_after_secs));
    }

    fn skipped(&mut self, none: NoEndpoint, route: &Route) {
        if none.out_of_rotation > 0
            && let Some(back) = route.pool.back_in(route.health.interval)
        {
            self.back_in = Some(self.back_in.map_or(back, |known| known.min(back)));
        }
    }
}

/// Forwards `request` to its model, retrying and falling back as configured.
pub(crate) async fn forward(
    upstreams: &Upstreams,
    mut request: ForwardRequest,
    may_use: &(dyn Fn(&str) -> bool + Sync),
    sent: &AtomicBool,
) -> Result<UpstreamResponse, UpstreamError> {
    let primary = upstreams.route(&request.model).ok_or(UpstreamError::UnknownModel)?;
    let outgoing = headers::outbound(std::mem::take(&mut request.headers));
    let mut tally = Tally::default();

    if let Some(response) = try_model(primary, &request, &outgoing, sent, &mut tally).await? {
        return Ok(response);
    }
    // Fallbacks are tried in order, each with its own pool, retries, name and credential. A
    // fallback's own fallbacks are not followed, so configuration cannot create loops.
    let mut visited: Vec<&str> = vec![primary.name.as_str()];
    for name in &primary.fallbacks {
        if visited.contains(&name.as_str()) || !may_use(name) {
            continue;
        }
        visited.push(name);
        let Some(route) = upstreams.route(name) else {
            continue;
        };
        tracing::info!(model = %primary.name, fallback = %route.name, "primary pool failed; trying fallback model");
        if let Some(response) = try_model(route, &request, &outgoing, sent, &mut tally).await? {
            return Ok(response);
        }
    }
    conclude(tally, &request.model)
}

/// Tries endpoints of one model: the first attempt plus up to `retries` more, each on an
/// endpoint not yet tried. `Ok(None)` means this model is done without an answer.
async fn try_model<'a>(
    route: &'a Route,
    request: &ForwardRequest,
    outgoing: &HeaderMap,
    sent: &AtomicBool,
    tally: &mut Tally<'a>,
) -> Result<Option<UpstreamResponse>, UpstreamError> {
    let body = rewrite::body_for(&request.body, &request.model, &route.upstream_model);
    let mut tried = vec![false; route.pool.len()];
    let mut queue_deadline = None;
    for _ in 0..=route.retries {
        let may_wait = tally.last_retryable.is_none();
        let (index, guard) = match route.pool.claim(&tried, request.priority, may_wait) {
            Claim::Ready(grant) => grant,
            Claim::Queued(mut ticket) => {
                let deadline =
                    *queue_deadline.get_or_insert_with(|| deadline_after(Instant::now(), Some(route.queue_timeout)));
                match ticket.wait(deadline).await {
                    Ok(grant) => grant,
                    Err(Waited::TimedOut) => {
                        tracing::debug!(model = %route.name, priority = request.priority, "queue wait timed out; request shed");
                        tally.shed(route);
                        break;
                    }
                    Err(Waited::Unusable(none)) => {
                        tally.skipped(none, route);
                        break;
                    }
                }
            }
            Claim::Shed(none) => {
                tracing::debug!(model = %route.name, priority = request.priority, "every endpoint full and no room to wait; request shed");
                tally.skipped(none, route);
                tally.shed(route);
                break;
            }
            Claim::Unusable(none) => {
                tally.skipped(none, route);
                break;
            }
        };
        tried[index] = true;
        let endpoint = guard.endpoint();
        let deadline = deadline_after(Instant::now(), route.timeouts.total);
        sent.store(true, Ordering::Release);
        let sent = attempt::send(route, endpoint, (&request.method, &request.path), outgoing, &body, deadline).await;
        if !sent.as_ref().is_err_and(AttemptError::was_unsendable) {
            tally.attempts = tally.attempts.saturating_add(1);
        }
        match sent {
            Ok(response) if is_retryable(response.status()) => {
                endpoint.record_failure();
                let status = response.status();
                tracing::warn!(model = %route.name, endpoint = endpoint.base(), %status, "upstream answered with a retryable status");
                tally.last_error = Some(LastFailure::Status { endpoint: endpoint.base().to_string(), status });
                tally.last_retryable = Some(Exchange { route, guard, response, deadline });
            }
            Ok(response) => {
                // A final answer — a 4xx, or a 500 about this request — says the endpoint works:
                // one client's bad input must not take an endpoint out of rotation for everyone.
                endpoint.record_success();
                return Ok(Some(Exchange { route, guard, response, deadline }.into_response()));
            }
            Err(error @ AttemptError::Failed(_)) => {
                endpoint.record_failure();
                tracing::warn!(model = %route.name, endpoint = endpoint.base(), error = %chain(&error), "upstream attempt failed");
                tally.last_error = Some(LastFailure::Attempt { endpoint: endpoint.base().to_string(), source: error });
            }
            Err(AttemptError::TimedOut(waited)) => {
                endpoint.record_failure();
                tracing::warn!(model = %route.name, endpoint = endpoint.base(), waited_ms = waited.as_millis(), "no response head in time");
                return Err(UpstreamError::Timeout {
                    model: route.name.clone(),
                    endpoint: endpoint.base().to_string(),
                    waited,
                });
            }
            Err(AttemptError::Exhausted(error)) => {
                tracing::error!(model = %route.name, endpoint = endpoint.base(), error = %chain(&error), "the gateway is out of resources to connect upstream");
                tally.exhausted = Some(error);
                break;
            }
            Err(error @ (AttemptError::InvalidCredential | AttemptError::Unbuildable(_))) => {
                tracing::error!(model = %route.name, endpoint = endpoint.base(), error = %chain(&error), "request cannot be sent to this model");
                tally.last_error = Some(LastFailure::Attempt { endpoint: endpoint.base().to_string(), source: error });
                break;
            }
        }
    }
    Ok(None)
}

/// The answer when no model produced a final response.
fn conclude(tally: Tally<'_>, model: &str) -> Result<UpstreamResponse, UpstreamError> {
    if let Some(exchange) = tally.last_retryable {
        return Ok(exchange.into_response());
    }
    if let Some(error) = tally.exhausted {
        return Err(UpstreamError::Exhausted(error));
    }
    // Nothing failed, and capacity was what stopped us (possibly alongside endpoints out of
    // rotation): the client may simply try again shortly.
    if tally.last_error.is_none()
        && let Some(retry_after_secs) = tally.overloaded
    {
        return Err(UpstreamError::Overloaded { retry_after_secs });
    }
    // Nothing failed either, but nothing was in rotation: say when something will be.
    if tally.last_error.is_none()
        && let Some(back_in) = tally.back_in
    {
        let retry_after_secs = u64::try_from(back_in.as_millis().div_ceil(1000)).unwrap_or(u64::MAX).max(1);
        return Err(UpstreamError::Resting { model: model.to_string(), retry_after_secs });
    }
    let last = match tally.last_error {
        Some(last) => last,
        None if tally.back_in.is_some() => LastFailure::OutOfRotation,
        None => LastFailure::NoEndpoint,
    };
    Err(UpstreamError::Unavailable { model: model.to_string(), attempts: tally.attempts, last })
}
