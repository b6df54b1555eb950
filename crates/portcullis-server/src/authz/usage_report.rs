//! `POST /authz/v1/usage`: what a request the authorizer allowed used, reported by whoever saw
//! its response (a log shipper reading the gateway's access log, or the model server's side),
//! so that its lease settles with the real figures instead of its whole reservation.
//!
//! ```json
//! {"request_id": "req_01J…", "usage": {"prompt_tokens": 12, "completion_tokens": 40}}
//! ```
//! `request_id` is the `x-portcullis-request-id` the allowed request carried upstream. Only the
//! configured gateways may report. A lease settles once: a second report, or one after the lease
//! expired, is a 404 and changes nothing.
//!
//! In a fleet (`limits.backend = "redis"`) the report may reach any replica: one that holds no
//! open lease for it relays it to the others and answers 202 `{"request_id": …, "relayed": true}`
//! — it cannot know whether a replica held one, so there is no 404 there — or 503 when Redis
//! could not take it, so that the reporter retries.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::StatusCode;
use portcullis_types::openai::Usage;
use serde::{Deserialize, Serialize};

use super::AuthzState;
use super::lease::{Reported, Settled, Settlement};
use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    request_id: String,
    usage: Usage,
}

/// What the request was billed.
#[derive(Debug, Serialize)]
struct Billing {
    request_id: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// In currency units.
    cost: f64,
    /// Whether the figures are the reservation's or bounds rather than the report's own.
    estimated: bool,
}

/// A report sent on to the replica holding the lease.
#[derive(Debug, Serialize)]
struct Relayed {
    request_id: String,
    relayed: bool,
}

pub async fn report(
    State(state): State<AuthzState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if !state.is_gateway(peer.ip()) {
        return Err(ApiError::Forbidden {
            message: "only the gateways named in authz.gateways may report usage".into(),
        });
    }
    let report: Report = serde_json::from_slice(&body)
        .map_err(|error| ApiError::BadRequest { message: format!("invalid usage report: {error}"), param: None })?;
    let reported =
        Reported { prompt_tokens: report.usage.prompt_tokens, completion_tokens: report.usage.completion_tokens };
    // A settlement has an audit record of its own; a refused report is recorded as refused.
    let billed = match state.leases.settle(&report.request_id, Settled::Reported(reported)) {
        Settlement::Billed(billed) => billed,
        Settlement::Relayed(relaying) => {
            if !relaying.sent().await {
                return Err(ApiError::LimiterUnavailable { retry_after_secs: 1 });
            }
            let relayed = Relayed { request_id: report.request_id, relayed: true };
            return Ok((StatusCode::ACCEPTED, Json(relayed)).into_response());
        }
        Settlement::Unknown => {
            return Err(ApiError::NotFound {
                what: "open lease for this request id (never allowed, settled, or expired)",
            });
        }
    };
    let billing = Billing {
        request_id: report.request_id,
        prompt_tokens: billed.prompt_tokens,
        completion_tokens: billed.completion_tokens,
        cost: portcullis_limits::Money(billed.cost_pico).to_units(),
        estimated: billed.estimated,
    };
    Ok(Json(billing).into_response())
}
