//! Admission: the request's worst case is reserved against every limit that applies to the
//! caller — key, team and global — all at once or not at all.

use std::sync::Arc;

use portcullis_config::Config;
use portcullis_limits::{Demand, Price, RateHeaders, Refusal};

use super::body::{Operation, ParsedRequest};
use super::capture::Capture;
use super::demand::{self, Plan};
use super::settle::{Settlement, unix_millis};
use crate::audit::DeferredAudit;
use crate::error::ApiError;
use crate::limits;
use crate::principal::Principal;
use crate::state::AppState;

pub struct Admitted {
    pub plan: Plan,
    pub rate_headers: RateHeaders,
    /// Higher is served first when the model server is saturated.
    pub priority: i64,
    pub settlement: Settlement,
}

pub async fn admit(
    state: &AppState,
    config: &Config,
    principal: &Arc<Principal>,
    request: &ParsedRequest,
) -> Result<Admitted, ApiError> {
    let plan = demand::plan(request, config.limits.default_max_tokens);
    let price = price_of(config, &request.model);
    let completion_bound = plan.completion_cap.saturating_mul(request.choices);
    let demand = Demand { tokens: plan.worst_case_tokens, cost: price.cost(plan.prompt_bound, completion_bound) };

    let team = match &principal.team {
        Some(name) => state.teams().get(name).await.map_err(|error| ApiError::from_store(&error, "team lookup"))?,
        None => None,
    };
    let scopes = limits::scopes_for(config, principal, team.as_deref());
    let now = unix_millis(time::OffsetDateTime::now_utc());
    let reservation = state.limiter().admit(&scopes, demand, now).await.map_err(|refusal| match refusal {
        Refusal::Denied(denial) => {
            state.metrics().denied(limits::scope_kind(&denial.scope), denial.limit.config_name());
            limits::denial_error(&denial, oversized_param(request.operation))
        }
        Refusal::Unavailable { retry_after_ms } => {
            ApiError::LimiterUnavailable { retry_after_secs: retry_after_ms.div_ceil(1000).max(1) }
        }
    })?;
    let rate_headers = reservation.headers;
    // Either the key or its team opting in turns capture on; only then is the prompt read.
    let captures = principal.capture_content || team.as_ref().is_some_and(|team| team.capture_content);
    let capture = captures.then(|| Capture::new(state.redactor().clone(), &request.body));
    let priority = config.tiers.get(&principal.tier).map_or(0, |tier| tier.priority);
    let settlement = Settlement {
        limiter: state.limiter().clone(),
        reservation,
        recorder: state.recorder().clone(),
        price,
        key_id: principal.id.clone(),
        team: principal.team.clone(),
        model: request.model.clone(),
        prompt_bound: plan.prompt_bound,
        completion_bound,
        streamed: request.stream,
        audit: DeferredAudit::default(),
        auditor: state.auditor().clone(),
        capture,
    };
    Ok(Admitted { plan, rate_headers, priority, settlement })
}

pub fn price_of(config: &Config, model: &str) -> Price {
    config
        .model(model)
        .map_or(Price::FREE, |model| Price::per_million(model.price.input_per_million, model.price.output_per_million))
}

/// The parameter a client lowers when its request is too big for a limit: the completion cap,
/// or for embeddings the input.
fn oversized_param(operation: Operation) -> &'static str {
    match operation {
        Operation::Chat | Operation::Completions => "max_tokens",
        Operation::Embeddings => "input",
    }
}
