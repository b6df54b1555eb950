//! Active health checks: a task per endpoint asks `GET endpoint + path` every interval and marks
//! the endpoint healthy on any 2xx, unhealthy otherwise.
//!
//! Passive ejection only notices a dead server when real requests fail on it; the checks also
//! bring an endpoint back into rotation once it answers again, and catch servers that accept
//! connections but cannot serve (a llama-server still loading its model answers 503).
//!
//! The tasks end when the [`Upstreams`](crate::Upstreams) that started them is dropped (the
//! server builds a fresh one on every configuration reload): each waits on a watch channel
//! whose sender the `Upstreams` owns, and holds only a `Weak` to its endpoint.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use http_body_util::{BodyExt, Limited};
use portcullis_types::chain;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::Shutdown;
use crate::client::{Client, Outgoing};
use crate::pool::Endpoint;
use crate::route::{Credential, Route};

/// A health response body is read (so the connection can be reused) up to this size.
const MAX_HEALTH_BODY: usize = 64 * 1024;

/// Checks more often than this would only load the model servers.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Starts one checking task per endpoint of `route` if its checks are enabled. Without a tokio
/// runtime nothing is started (and the endpoints stay optimistically healthy).
pub(crate) fn start(route: &Route, shutdown: &Shutdown) {
    if !route.health.enabled {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(model = %route.name, "no tokio runtime: active health checks not started");
        return;
    };
    let authorization = match &route.credential {
        Credential::Bearer(value) => Some(value.clone()),
        Credential::None | Credential::Invalid => None,
    };
    for endpoint in route.pool.endpoints() {
        let check = Check {
            model: route.name.clone(),
            endpoint: Arc::downgrade(endpoint),
            client: route.client.clone(),
            path: route.health.path.clone(),
            authorization: authorization.clone(),
            interval: route.health.interval.max(MIN_INTERVAL),
            timeout: route.health.timeout,
        };
        runtime.spawn(check.run(shutdown.subscribe()));
    }
}

struct Check {
    model: String,
    endpoint: Weak<Endpoint>,
    client: Client,
    path: String,
    authorization: Option<HeaderValue>,
    interval: Duration,
    timeout: Duration,
}

impl Check {
    async fn run(self, mut shutdown: watch::Receiver<()>) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            // `changed` fails once the sender (owned by `Upstreams`) is gone.
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {}
            }
            let Some(endpoint) = self.endpoint.upgrade() else {
                return;
            };
            let verdict = tokio::select! {
                _ = shutdown.changed() => return,
                verdict = self.probe(&endpoint) => verdict,
            };
            let healthy = verdict.is_ok();
            let was_healthy = endpoint.set_healthy(healthy);
            match verdict {
                Err(reason) if was_healthy => {
                    tracing::warn!(model = %self.model, endpoint = endpoint.base(), %reason, "health check failed; endpoint out of rotation");
                }
                Ok(()) if !was_healthy => {
                    tracing::info!(model = %self.model, endpoint = endpoint.base(), "health check passed; endpoint back in rotation");
                }
                _ => {}
            }
        }
    }

    /// One `GET`, bounded by the check timeout including reading the (small) body.
    async fn probe(&self, endpoint: &Endpoint) -> Result<(), String> {
        let no_headers = HeaderMap::new();
        let request = Outgoing {
            method: Method::GET,
            path: &self.path,
            headers: &no_headers,
            authorization: self.authorization.as_ref(),
            body: &[],
        };
        let exchange = async {
            let response =
                self.client.send(endpoint.origin(), &request).await.map_err(|error| chain(&error).to_string())?;
            let status = response.status();
            // Drained only so the keep-alive connection can be reused; its content is ignored.
            let _ = Limited::new(response.into_body(), MAX_HEALTH_BODY).collect().await;
            if status.is_success() { Ok(()) } else { Err(format!("status {status}")) }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(verdict) => verdict,
            Err(_) => Err(format!("no answer within {}ms", self.timeout.as_millis())),
        }
    }
}
