//! The decision: may this request, which a gateway is about to forward, pass? Decided with the
//! proxy's own rules — the caller (key, token or certificate; blocked addresses; client
//! networks; scope), the model (configured, allowed to the key and its tier), and the limits
//! (request rate, concurrency, and the request's worst case in tokens and money, reserved under
//! a [lease](super::lease) until its usage is known). Every decision is audited, with the
//! gateway that asked.
//!
//! Transports (forward-auth over HTTP, Envoy's gRPC `Check`) turn what the gateway sent into a
//! [`Check`] and the [`Verdict`] into their own answer.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis_config::Live;
use portcullis_limits::{Demand, Price, RateHeaders};
use portcullis_store::TeamRecord;
use portcullis_types::openai::COMPLETION_CAP_FIELDS;

use super::AuthzState;
use super::lease::Lease;
use super::route::Route;
use crate::caller_limits;
use crate::error::ApiError;
use crate::exchange::{Exchange, RequestMeta};
use crate::principal::{Credential, Principal};
use crate::proxy::body::{self, Operation, ParsedRequest};
use crate::proxy::{self, TEMPLATE_SLACK};
use crate::request_id::{self, RequestId};
use crate::runtime::Runtime;

/// Headers the gateway passes to the model server with an allowed request.
pub const PRINCIPAL_HEADER: HeaderName = HeaderName::from_static("x-portcullis-principal");
pub const PRINCIPAL_KIND_HEADER: HeaderName = HeaderName::from_static("x-portcullis-principal-kind");
pub const KEY_ID_HEADER: HeaderName = HeaderName::from_static("x-portcullis-key-id");
pub const TEAM_HEADER: HeaderName = HeaderName::from_static("x-portcullis-team");
pub const TIER_HEADER: HeaderName = HeaderName::from_static("x-portcullis-tier");
pub const MODEL_HEADER: HeaderName = HeaderName::from_static("x-portcullis-model");
/// The id the decision was recorded (and its lease opened) under: what a usage report names.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-portcullis-request-id");

/// The headers a client's credential may come in: the model server must never see them.
pub const CREDENTIAL_HEADERS: [HeaderName; 2] = [http::header::AUTHORIZATION, HeaderName::from_static("x-api-key")];

/// A request as the gateway saw it.
#[derive(Debug)]
pub struct Check {
    /// Which gateway asked (its name in the audit log).
    pub gateway: String,
    pub method: http::Method,
    /// The request's path, without its query.
    pub path: String,
    /// The request's own headers: its credential, `content-length`, and the model header the
    /// gateway may set.
    pub headers: HeaderMap,
    /// The client's address, as the gateway saw it.
    pub client_ip: IpAddr,
    /// The request's body, when the gateway forwards it.
    pub body: Option<Bytes>,
    /// The request's id, when the gateway gave an acceptable one (see `request_id::vetted`).
    pub request_id: Option<RequestId>,
}

/// The name a gateway gives itself, when it is one a record can hold: trimmed, 1 to 64 bytes.
pub fn gateway_name(given: Option<&str>) -> Option<String> {
    given.map(str::trim).filter(|name| (1..=64).contains(&name.len())).map(str::to_string)
}

/// Allowed: headers for the model server's request, and for the client's response.
#[derive(Debug)]
pub struct Allowed {
    pub upstream_headers: HeaderMap,
    pub client_headers: HeaderMap,
}

/// Refused, with what the proxy would answer, and the headers the client may see besides.
#[derive(Debug)]
pub struct Denied {
    pub error: ApiError,
    pub client_headers: HeaderMap,
}

pub type Verdict = Result<Allowed, Denied>;

/// Decides, records the decision, and for an allowed model call opens its lease.
pub async fn decide(state: &AuthzState, check: Check) -> Verdict {
    let Check { gateway, method, path, headers, client_ip, body, request_id } = check;
    let request_id = unique_request_id(state, request_id);
    let meta = RequestMeta {
        method: method.clone(),
        path: path.clone(),
        request_id: Some(RequestId(request_id.clone())),
        client_ip: Some(client_ip),
        user_agent: headers.get(http::header::USER_AGENT).and_then(|agent| agent.to_str().ok()).map(str::to_string),
        client_certificate: None,
    };
    let exchange = Exchange::decision(state.recording.clone(), meta, Instant::now());
    exchange.note(|info| info.gateway = Some(gateway.clone()));
    let asked = Asked { state, exchange: &exchange, headers: &headers, gateway, client_ip, method, path };
    let mut rate_headers = RateHeaders::default();
    match asked.judge(body, &request_id, &mut rate_headers).await {
        Ok(mut upstream_headers) => {
            upstream_headers.insert(REQUEST_ID_HEADER, request_id.clone());
            exchange.answered(200, None, false).await;
            Ok(Allowed { upstream_headers, client_headers: client_headers(&rate_headers, &request_id) })
        }
        Err(error) => {
            exchange.answered(error.status_code().as_u16(), Some(&error), false).await;
            Err(Denied { error, client_headers: client_headers(&rate_headers, &request_id) })
        }
    }
}

/// The gateway's id for the request unless a lease has it already, else a fresh one: one client
/// reusing an id must not reach another's lease.
fn unique_request_id(state: &AuthzState, given: Option<RequestId>) -> HeaderValue {
    given
        .map(|id| id.0)
        .filter(|id| !state.leases.is_open(id.to_str().unwrap_or_default()))
        .unwrap_or_else(request_id::fresh)
}

fn client_headers(rate: &RateHeaders, request_id: &HeaderValue) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(7);
    caller_limits::insert_headers(&mut headers, rate);
    headers.insert(request_id::HEADER, request_id.clone());
    headers
}

/// One check in progress.
struct Asked<'a> {
    state: &'a AuthzState,
    exchange: &'a Exchange,
    headers: &'a HeaderMap,
    gateway: String,
    client_ip: IpAddr,
    method: http::Method,
    path: String,
}

impl Asked<'_> {
    /// The identity headers of an allowed request, or the refusal the proxy would give.
    async fn judge(
        self,
        body: Option<Bytes>,
        request_id: &HeaderValue,
        rate_headers: &mut RateHeaders,
    ) -> Result<HeaderMap, ApiError> {
        let route = Route::of(&self.method, &self.path)?;
        let proxy = &self.state.proxy;
        let principal = proxy::caller(proxy, self.exchange, self.headers, route.scope()).await?;
        let runtime = proxy.runtime();
        let live = &runtime.live;
        let team = proxy::team_of(proxy, live, &principal).await?;
        let team = team.as_deref();
        let tier = principal.tier(team, live);
        let model = match route {
            Route::ModelList => None,
            Route::Model(id) => {
                // Hidden and missing models look the same, as on the proxy.
                if live.model(&id).is_none() || !proxy::may_use_model(live, &principal, tier, &id) {
                    return Err(ApiError::ModelNotFound { model: id });
                }
                Some(id)
            }
            Route::Inference(operation) => {
                let call = Call::read(operation, body, self.headers, &runtime, &self.state.model_header).await?;
                self.exchange.note(|info| {
                    info.model = Some(call.model.clone());
                    info.stream = call.stream;
                });
                if !proxy::may_use_model(live, &principal, tier, &call.model) {
                    return Err(ApiError::ModelNotAllowed { model: call.model });
                }
                let model = call.model.clone();
                *rate_headers = self.reserve(live, &principal, team, call, request_id).await?;
                Some(model)
            }
        };
        Ok(identity_headers(&principal, team.map(|team| team.name.as_str()), tier, model.as_deref()))
    }

    /// Reserves the call's worst case (with its request and concurrency slot) under a lease.
    async fn reserve(
        &self,
        live: &Live,
        principal: &Principal,
        team: Option<&TeamRecord>,
        call: Call,
        request_id: &HeaderValue,
    ) -> Result<RateHeaders, ApiError> {
        let price = live.model(&call.model).map_or(Price::FREE, proxy::price);
        let demand = Demand {
            tokens: call.prompt_reserved.saturating_add(call.completion_bound),
            cost: price.cost(call.prompt_reserved, call.completion_bound),
        };
        let scopes = caller_limits::scopes_for(live, principal, team);
        let cap = call.completion_bound / call.choices.max(1);
        let asked = proxy::asked(call.operation, call.prompt_bound, cap, call.choices, price);
        let priority = live.tier(principal.tier(team, live)).map_or(0, |tier| tier.priority);
        let timeout = live.model(&call.model).map_or(Duration::ZERO, |model| model.queue_timeout.0);
        let patience = proxy::Patience { priority, timeout };
        let reservation = proxy::reserve(&self.state.proxy, &scopes, demand, &asked, patience).await?;
        let headers = reservation.as_ref().map(|reservation| reservation.headers).unwrap_or_default();
        let lease = Lease {
            reservation,
            principal: principal.id.clone(),
            credential: principal.credential.clone(),
            team: principal.team.clone(),
            model: call.model,
            price,
            prompt_bound: call.prompt_bound,
            prompt_reserved: call.prompt_reserved,
            completion_bound: call.completion_bound,
            capped: call.capped,
            gateway: self.gateway.clone(),
            client_ip: self.client_ip,
            method: self.method.to_string(),
            path: self.path.clone(),
        };
        // The id was checked free a moment ago; were it taken since (two checks of one id at
        // once), this request is refused and its reservation given back unused.
        if self.state.leases.open(request_id.to_str().unwrap_or_default(), lease).is_err() {
            return Err(ApiError::Conflict { message: "this request id is already in use; retry".into() });
        }
        Ok(headers)
    }
}

/// A model call's model and worst case, from its body when the gateway forwards it, else from
/// the model header the gateway sets (the model the route it chose serves).
struct Call {
    operation: Operation,
    model: String,
    stream: bool,
    /// The byte bound: a report of the prompt is believed up to it.
    prompt_bound: u64,
    /// What the prompt reserves: a tokenizer's bound when one counted, else the byte bound.
    prompt_reserved: u64,
    /// Completion tokens at most, for all choices.
    completion_bound: u64,
    choices: u64,
    /// Whether the model server is bound to `completion_bound` (the client named a cap).
    capped: bool,
}

impl Call {
    async fn read(
        operation: Operation,
        body: Option<Bytes>,
        headers: &HeaderMap,
        runtime: &Runtime,
        model_header: &HeaderName,
    ) -> Result<Call, ApiError> {
        let live = &runtime.live;
        let call = match body.filter(|body| !body.is_empty()) {
            Some(body) => {
                let request = body::parse(operation, body, live.server.max_json_depth)?;
                proxy::sealed::refuse_previous(&request)?;
                Call::from_body(request, runtime).await
            }
            None => Call::from_headers(operation, headers, live, model_header)?,
        };
        if live.model(&call.model).is_none() {
            return Err(ApiError::ModelNotFound { model: call.model });
        }
        if !crate::proxy::serves(live, &call.model, operation) {
            return Err(ApiError::NotServed { model: call.model, path: operation.path() });
        }
        Ok(call)
    }

    /// The body says it all. The gateway forwards it unchanged, so the model server obeys the
    /// largest cap the client named (the proxy would have written the smallest into every cap
    /// field; here nothing can), and without one, it may generate until its context ends: the
    /// reservation then holds `limits.default_max_tokens`, not a bound.
    /// A model with a `tokenizer` reserves its prompt's counted bound, as on the proxy.
    async fn from_body(request: ParsedRequest, runtime: &Runtime) -> Call {
        let live = &runtime.live;
        let generates = request.operation.generates();
        let largest_cap = largest_cap(&request);
        let cap = if generates { largest_cap.unwrap_or(live.limits.default_max_tokens) } else { 0 };
        let prompt_bound = request.body.len() as u64 + TEMPLATE_SLACK;
        let counted = proxy::counted_bound(runtime, live.model(&request.model), &request).await;
        Call {
            operation: request.operation,
            stream: request.stream,
            prompt_bound,
            prompt_reserved: counted.map_or(prompt_bound, |counted| counted.min(prompt_bound)),
            completion_bound: cap.saturating_mul(request.choices),
            choices: request.choices,
            capped: !generates || largest_cap.is_some(),
            model: request.model,
        }
    }

    /// Without the body: the model from the gateway's header (or the only configured model),
    /// the prompt bounded by the body's declared length, the completion estimated at
    /// `limits.default_max_tokens` (no cap is known, so none binds the server).
    fn from_headers(
        operation: Operation,
        headers: &HeaderMap,
        live: &Live,
        model_header: &HeaderName,
    ) -> Result<Call, ApiError> {
        let named = headers.get(model_header).and_then(|value| value.to_str().ok()).map(str::trim);
        let only = || {
            let mut models = live.models.iter();
            models.next().filter(|_| models.next().is_none()).map(|model| model.name.as_str())
        };
        let model = named.filter(|name| !name.is_empty()).or_else(only).ok_or_else(|| ApiError::MalformedRequest {
            message: format!(
                "the gateway did not say which model this request is for: forward the body, or set the {model_header} header"
            ),
        })?;
        let declared = ["x-original-content-length", "content-length"]
            .iter()
            .find_map(|name| headers.get(*name)?.to_str().ok()?.trim().parse::<u64>().ok());
        let prompt_bound = declared.unwrap_or(live.server.max_body_bytes as u64).saturating_add(TEMPLATE_SLACK);
        let completion_bound = if operation.generates() { live.limits.default_max_tokens } else { 0 };
        Ok(Call {
            operation,
            model: model.to_string(),
            stream: false,
            prompt_bound,
            prompt_reserved: prompt_bound,
            completion_bound,
            choices: 1,
            capped: !operation.generates(),
        })
    }
}

/// The largest completion cap the client named in any cap field.
fn largest_cap(request: &ParsedRequest) -> Option<u64> {
    request
        .members
        .iter()
        .filter(|member| COMPLETION_CAP_FIELDS.iter().any(|field| field.as_bytes() == member.raw_key(&request.body)))
        .filter_map(|member| std::str::from_utf8(request.raw(member)).ok()?.trim().parse::<u64>().ok())
        .max()
}

/// Who the caller is, for the model server. Every name is always there, empty when it does not
/// apply (no team, not a key), so that a gateway which sets them all overwrites any a client sent
/// itself.
fn identity_headers(principal: &Principal, team: Option<&str>, tier: &str, model: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(8);
    let mut put = |name: HeaderName, value: Option<&str>| {
        let value = value.and_then(|value| HeaderValue::from_str(value).ok());
        headers.insert(name, value.unwrap_or(HeaderValue::from_static("")));
    };
    put(PRINCIPAL_HEADER, Some(&principal.id));
    put(PRINCIPAL_KIND_HEADER, Some(principal.credential.principal_kind().name()));
    put(KEY_ID_HEADER, (principal.credential == Credential::Key).then_some(principal.id.as_str()));
    put(TEAM_HEADER, team);
    put(TIER_HEADER, Some(tier));
    put(MODEL_HEADER, model);
    headers
}
