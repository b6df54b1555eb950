//! The model routes of a live configuration: what the upstream crate is built from, and how its
//! status reads in the admin API.

use portcullis_config::{ModelConfig, Models};
use portcullis_types::admin::{EndpointView, ModelView};
use portcullis_upstream::{HealthCheck, RouteSpec, RouteStatus, RouteTimeouts, Upstreams};

/// Builds every model's route (and starts their health checks).
pub fn upstreams(models: &Models) -> Upstreams {
    let specs: Vec<RouteSpec> = models.iter().map(spec).collect();
    Upstreams::new(&specs)
}

fn spec(model: &ModelConfig) -> RouteSpec {
    RouteSpec {
        name: model.name.clone(),
        upstream_model: model.upstream_model().to_string(),
        endpoints: model.endpoints.clone(),
        api_key: model.api_key.clone(),
        max_concurrent: model.max_concurrent,
        queue_timeout: model.queue_timeout.0,
        queue_size: model.queue_size,
        timeouts: RouteTimeouts {
            connect: model.timeouts.connect.0,
            first_byte: model.timeouts.first_byte.0,
            idle: model.timeouts.idle.0,
            total: model.timeouts.total.0,
        },
        health_check: HealthCheck {
            enabled: model.health_check.enabled,
            path: model.health_check.path.clone(),
            interval: model.health_check.interval.0,
            timeout: model.health_check.timeout.0,
        },
        ejection_failures: model.ejection.consecutive_failures,
        ejection_duration: model.ejection.duration.0,
        retries: model.retries,
        fallbacks: model.fallbacks.clone(),
    }
}

/// A route's status as `GET /admin/v1/models` shows it.
pub fn view(status: RouteStatus) -> ModelView {
    ModelView {
        name: status.name,
        upstream_model: status.upstream_model,
        endpoints: status
            .endpoints
            .into_iter()
            .map(|endpoint| EndpointView {
                url: endpoint.url,
                healthy: endpoint.healthy,
                outstanding: endpoint.outstanding,
            })
            .collect(),
        fallbacks: status.fallbacks,
    }
}
