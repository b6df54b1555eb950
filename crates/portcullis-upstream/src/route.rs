//! One configured model as the forwarding code sees it: its pool of endpoints, its HTTP client,
//! the credential it sends upstream and the limits (timeouts, retries) it runs under.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use portcullis_config::{HealthCheckConfig, ModelConfig};
use portcullis_types::admin::{EndpointView, ModelView};
use tokio::time::Instant;

use crate::client::Client;
use crate::pool::{EjectionPolicy, Endpoint, Pool};

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
    pub health: HealthCheckConfig,
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
    pub(crate) fn new(config: &ModelConfig, epoch: Instant) -> Route {
        let ejection = EjectionPolicy {
            consecutive_failures: config.ejection.consecutive_failures,
            duration: config.ejection.duration.0,
        };
        let queue_timeout = config.queue_timeout.0;
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
            upstream_model: config.upstream_model().to_string(),
            fallbacks: config.fallbacks.clone(),
            retries: config.retries,
            timeouts: Timeouts {
                first_byte: enabled(config.timeouts.first_byte.0),
                idle: enabled(config.timeouts.idle.0),
                total: enabled(config.timeouts.total.0),
            },
            queue_timeout,
            retry_after_secs: retry_after_secs(queue_timeout),
            credential,
            health: config.health_check.clone(),
            client: Client::new(enabled(config.timeouts.connect.0)),
            // Configuration refuses a zero queue timeout; should one get here, it means no wait.
            pool: Pool::new(
                endpoints,
                config.max_concurrent,
                if queue_timeout.is_zero() { 0 } else { config.queue_size },
            ),
        }
    }

    pub(crate) fn view(&self) -> ModelView {
        ModelView {
            name: self.name.clone(),
            upstream_model: self.upstream_model.clone(),
            endpoints: self
                .pool
                .endpoints()
                .iter()
                .map(|endpoint| EndpointView {
                    url: endpoint.base().to_string(),
                    healthy: endpoint.in_rotation(),
                    outstanding: endpoint.outstanding(),
                })
                .collect(),
            fallbacks: self.fallbacks.clone(),
        }
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
