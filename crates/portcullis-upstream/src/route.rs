//! One configured model as the forwarding code sees it: its pool of endpoints, its HTTP client,
//! the credential it sends upstream and the limits (timeouts, retries) it runs under.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use portcullis_types::Secret;
use tokio::time::Instant;
use url::Url;

use crate::EndpointState;
use crate::client::Client;
use crate::pool::{EjectionPolicy, Endpoint, Pool};

/// What a model's route is built from: the server makes one of each configured model.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// What clients send in `model`.
    pub name: String,
    /// What the model server calls it.
    pub upstream_model: String,
    /// Origins (optionally with a path prefix) of the servers in the pool.
    pub endpoints: Vec<Url>,
    /// Bearer token sent upstream in place of the client's credential.
    pub api_key: Option<Secret<String>>,
    /// Requests in flight per endpoint; `None` = no cap (and no queue).
    pub max_concurrent: Option<u64>,
    /// Longest a request waits in the model's queue; zero sheds at once.
    pub queue_timeout: Duration,
    /// Requests that may wait for a slot when every endpoint is at `max_concurrent`.
    pub queue_size: usize,
    pub timeouts: RouteTimeouts,
    pub health_check: HealthCheck,
    /// Consecutive failures that take an endpoint out (0 = never), and for how long.
    pub ejection_failures: u32,
    pub ejection_duration: Duration,
    /// Further attempts on other endpoints while nothing has reached the client.
    pub retries: u32,
    /// Models tried, in order, when this one's whole pool fails.
    pub fallbacks: Vec<String>,
}

/// A route's timeouts; zero turns one off.
#[derive(Debug, Clone, Copy)]
pub struct RouteTimeouts {
    pub connect: Duration,
    /// Until the response head arrives.
    pub first_byte: Duration,
    /// Longest silence between two chunks of a response body.
    pub idle: Duration,
    /// The whole exchange, stream included.
    pub total: Duration,
}

/// Active health checks: `GET endpoint + path` every `interval`; any 2xx is healthy.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub enabled: bool,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

/// A model's route and its endpoints' live state, for the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStatus {
    pub name: String,
    pub upstream_model: String,
    pub endpoints: Vec<EndpointState>,
    pub fallbacks: Vec<String>,
}

/// A model's timeouts; `None` means the configured value was `0s`, which turns the limit off.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub first_byte: Option<Duration>,
    pub idle: Option<Duration>,
    pub total: Option<Duration>,
}

/// The `Authorization` value sent upstream, built once so a bad key is reported once.
#[derive(Clone)]
pub(crate) enum Credential {
    None,
    Bearer(HeaderValue),
    /// The configured key cannot be a header value (control characters, say); requests to
    /// this model fail rather than go out unauthenticated.
    Invalid,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Credential::None => "None",
            Credential::Bearer(_) => "Bearer([redacted])",
            Credential::Invalid => "Invalid",
        })
    }
}

/// Everything needed to forward to one model.
pub(crate) struct Route {
    pub name: String,
    pub upstream_model: String,
    pub fallbacks: Vec<String>,
    /// Extra attempts on other endpoints of this model after the first one fails.
    pub retries: u32,
    pub timeouts: Timeouts,
    /// Longest a request waits in this model's queue (over all its attempts on this model).
    pub queue_timeout: Duration,
    /// `Retry-After` for a request shed by this model: the queue timeout rounded up, at least 1.
    pub retry_after_secs: u64,
    pub credential: Credential,
    pub health: HealthCheck,
    pub client: Client,
    pub pool: Pool,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("upstream_model", &self.upstream_model)
            .field("fallbacks", &self.fallbacks)
            .field("retries", &self.retries)
            .field("timeouts", &self.timeouts)
            .field("queue_timeout", &self.queue_timeout)
            .field("credential", &self.credential)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

fn enabled(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

/// Whole seconds, rounded up, at least 1: when a request shed after waiting this long might
/// find room.
fn retry_after_secs(queue_timeout: Duration) -> u64 {
    let secs = queue_timeout.as_secs().saturating_add(u64::from(queue_timeout.subsec_nanos() > 0));
    secs.max(1)
}

impl Route {
    pub(crate) fn new(config: &RouteSpec, epoch: Instant) -> Route {
        let ejection =
            EjectionPolicy { consecutive_failures: config.ejection_failures, duration: config.ejection_duration };
        let queue_timeout = config.queue_timeout;
        let endpoints = config.endpoints.iter().map(|url| Arc::new(Endpoint::new(url, ejection, epoch))).collect();
        let credential = match &config.api_key {
            None => Credential::None,
            Some(key) => match HeaderValue::try_from(format!("Bearer {}", key.expose())) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    Credential::Bearer(value)
                }
                Err(_) => {
                    tracing::error!(model = %config.name, "api_key is not a valid HTTP header value; requests fail");
                    Credential::Invalid
                }
            },
        };
        Route {
            name: config.name.clone(),
            upstream_model: config.upstream_model.clone(),
            fallbacks: config.fallbacks.clone(),
            retries: config.retries,
            timeouts: Timeouts {
                first_byte: enabled(config.timeouts.first_byte),
                idle: enabled(config.timeouts.idle),
                total: enabled(config.timeouts.total),
            },
            queue_timeout,
            retry_after_secs: retry_after_secs(queue_timeout),
            credential,
            health: config.health_check.clone(),
            client: Client::new(enabled(config.timeouts.connect)),
            // A zero queue timeout means no wait.
            pool: Pool::new(
                endpoints,
                config.max_concurrent,
                if queue_timeout.is_zero() { 0 } else { config.queue_size },
            ),
        }
    }

    pub(crate) fn status(&self) -> RouteStatus {
        RouteStatus {
            name: self.name.clone(),
            upstream_model: self.upstream_model.clone(),
            endpoints: self.endpoint_states().collect(),
            fallbacks: self.fallbacks.clone(),
        }
    }

    pub(crate) fn endpoint_states(&self) -> impl Iterator<Item = EndpointState> + '_ {
        self.pool.endpoints().iter().map(|endpoint| EndpointState {
            model: self.name.clone(),
            url: endpoint.base().to_string(),
            healthy: endpoint.in_rotation(),
            outstanding: endpoint.outstanding(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_the_queue_timeout_rounded_up_and_at_least_one_second() {
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        assert_eq!(retry_after_secs(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }
}
