//! Admission against every limit that applies to the caller — key, team and global, each all at
//! once or not at all. A request whose body is still on its way is admitted in two steps:
//! 1. [`enter`], before the rest of the body is read: the request rate and a concurrency slot, so
//!    that a key with `max_concurrent = 8` cannot hold more than eight bodies open either;
//! 2. [`admit`], once the body is parsed: the request's worst case in tokens and money.
//!
//! A request whose body came whole with its head (most do) is admitted in one step, [`admit`]
//! alone. A request refused at the second step (or whose body never arrives) gives its slot
//! back at once; it still counts against the request rate, like any request that was made.
//!
//! A quota or budget that has room for the request once running requests settle, but not while
//! their reservations hold it, is waited for (`quota_wait`), up to the model's `queue_timeout`.

use std::time::Duration;

use portcullis_config::{Live, ModelConfig};
use portcullis_limits::{Demand, DenialReason, LimitScope, Limits, Price, RateHeaders, Refusal, Reservation};
use portcullis_store::TeamRecord;

use super::ProxyState;
use super::body::{Operation, ParsedRequest};
use super::capture::Capture;
use super::demand::{self, BodyRules, Plan};
use super::dialect::Dialect;
use super::prompt;
use super::quota_wait::{Patience, waiting_room};
use super::settle::{Settlement, Terms};
use crate::caller_limits::{self, Asked, ScopedLimits};
use crate::clock::unix_millis;
use crate::error::ApiError;
use crate::exchange::Exchange;
use crate::principal::Principal;

/// A request past the first step: its slot, and what the second step needs.
pub struct Entered {
    amounts: ScopedLimits,
    slot: Option<Reservation>,
    headers: RateHeaders,
}

pub struct Admitted {
    pub plan: Plan,
    pub rate_headers: RateHeaders,
    /// Higher is served first when the model server is saturated.
    pub priority: i64,
    pub settlement: Settlement,
}

/// Takes the request and a concurrency slot, for a request whose body is still on its way.
pub async fn enter(
    state: &ProxyState,
    live: &Live,
    principal: &Principal,
    team: Option<&TeamRecord>,
) -> Result<Entered, ApiError> {
    let (rate, amounts) = caller_limits::split(caller_limits::scopes_for(live, principal, team));
    let slot =
        reserve(state, &rate, Demand::default(), &asked(Operation::Chat, 0, 0, 1, Price::FREE), Patience::NONE).await?;
    let headers = slot.as_ref().map(|slot| slot.headers).unwrap_or_default();
    Ok(Entered { amounts, slot, headers })
}

/// Reserves the request's worst case in tokens and money — with the request and its
/// concurrency slot too when it did not [`enter`] first (its body was all there at once).
pub async fn admit(
    state: &ProxyState,
    live: &Live,
    principal: &Principal,
    team: Option<&TeamRecord>,
    entered: Option<Entered>,
    request: &ParsedRequest,
    exchange: Exchange,
) -> Result<Admitted, ApiError> {
    let model = live.model(&request.model);
    let dialect = Dialect::of_model(model);
    let rules = BodyRules {
        default_max_tokens: live.limits.default_max_tokens,
        dialect,
        passthrough_fields: model.map_or(&[], |model| model.passthrough_fields.as_slice()),
    };
    // Only a model with a tokenizer pays for a count; plain chat does not even load the runtime.
    let counted = match model {
        // Boxed, like the wait below: a path few requests take must not make every request's
        // future larger (it is moved, whole, at each of its hand-offs).
        Some(config) if config.tokenizer.is_some() => {
            Box::pin(prompt::counted_bound(&state.runtime(), model, request)).await
        }
        _ => None,
    };
    let plan = demand::plan(request, rules, counted);
    let price = model.map_or(Price::FREE, price);
    let completion_bound = plan.completion_cap.saturating_mul(request.choices);
    let demand = Demand { tokens: plan.worst_case_tokens, cost: price.cost(plan.prompt_bound, completion_bound) };
    let asked = asked(request.operation, plan.prompt_bound, plan.completion_cap, request.choices, price);
    let priority = live.tier(principal.tier(team, live)).map_or(0, |tier| tier.priority);
    let patience = Patience { priority, timeout: model.map_or(Duration::ZERO, |model| model.queue_timeout.0) };
    let (amounts, slot, rate_headers) = match entered {
        Some(Entered { amounts, slot, headers }) => {
            let amounts = reserve(state, &amounts, demand, &asked, patience).await?;
            let tokens = amounts.as_ref().and_then(|reservation| reservation.headers.tokens);
            (amounts, slot, RateHeaders { requests: headers.requests, tokens })
        }
        None => {
            let scopes = caller_limits::scopes_for(live, principal, team);
            let all = reserve(state, &scopes, demand, &asked, patience).await?;
            let headers = all.as_ref().map(|reservation| reservation.headers).unwrap_or_default();
            (all, None, headers)
        }
    };
    // Either the key or its team opting in turns capture on; only then is the prompt read.
    let captures = principal.capture_content || team.is_some_and(|team| team.capture_content);
    let capture = captures.then(|| Capture::new(state.redactor().clone(), &request.body));
    let settlement = Settlement::new(Terms {
        amounts,
        slot,
        recorder: state.recorder().clone(),
        price,
        key_id: principal.id.clone(),
        team: principal.team.clone(),
        model: request.model.clone(),
        prompt_bound: plan.byte_bound,
        prompt_reserved: plan.prompt_bound,
        completion_bound,
        streamed: request.stream,
        counts_stream_usage: !dialect.reports_stream_usage(),
        exchange,
        capture,
    });
    Ok(Admitted { plan, rate_headers, priority, settlement })
}

/// One all-or-nothing reservation; none when no limit applies. A quota or budget held only by
/// running requests' reservations is waited for, as `patience` allows (see `quota_wait`).
pub(crate) async fn reserve(
    state: &ProxyState,
    scopes: &[(LimitScope, Limits)],
    demand: Demand,
    asked: &Asked,
    patience: Patience,
) -> Result<Option<Reservation>, ApiError> {
    if scopes.is_empty() {
        return Ok(None);
    }
    let attempt = || state.limiter().admit(scopes, demand, unix_millis(time::OffsetDateTime::now_utc()));
    let result = match attempt().await {
        Err(Refusal::Denied(denial))
            if denial.reason == DenialReason::HeldByReservations && !patience.timeout.is_zero() =>
        {
            let waited = Box::pin(waiting_room().wait(patience, attempt)).await;
            state.metrics().quota_waited(match &waited {
                Ok(_) => "admitted",
                Err(Refusal::Denied(denial)) if denial.reason == DenialReason::HeldByReservations => "timed_out",
                Err(_) => "refused",
            });
            waited
        }
        result => result,
    };
    let reservation = result.map_err(|refusal| match refusal {
        Refusal::Denied(denial) => {
            state.metrics().denied(caller_limits::scope_kind(&denial.scope), denial.limit.config_name());
            caller_limits::denial_error(&denial, asked)
        }
        Refusal::Unavailable { retry_after_ms } => {
            ApiError::LimiterUnavailable { retry_after_secs: retry_after_ms.div_ceil(1000).max(1) }
        }
    })?;
    Ok(Some(reservation))
}

/// A configured model's price per token.
pub fn price(model: &ModelConfig) -> Price {
    Price::per_million(model.price.input_per_million, model.price.output_per_million)
}

/// What a request asked for, in the terms its refusal would use: its API's completion cap
/// parameter (`max_output_tokens` for the Responses API), or none for what generates nothing.
pub(crate) fn asked(operation: Operation, prompt_bound: u64, cap: u64, choices: u64, price: Price) -> Asked {
    let cap_param = match operation {
        Operation::Responses => "max_output_tokens",
        _ => "max_tokens",
    };
    Asked {
        cap: operation.generates().then_some((cap_param, cap)),
        prompt_param: operation.prompt_field(),
        prompt_bound,
        choices,
        price,
    }
}
