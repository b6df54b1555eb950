//! One request's record, from its arrival to its last byte. The access log opens one for every
//! request and puts it in the request's extensions; handlers note in it what they learn (who
//! called, for which model); and exactly one log line, one metrics sample and one audit record
//! come out of it however the request ends:
//! - **answered**: the access log writes them when the handler returns;
//! - **answered with a metered body**: the log line and metrics then, the audit record parked
//!   here until the body's settlement completes it with the real usage (see `proxy::settle`);
//! - **abandoned** (the client left before the answer, so hyper dropped the handler): when the
//!   last handle goes, status 499 with whatever the request had reached, billed as its
//!   settlement decided.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use axum::extract::FromRequestParts;
use http::Method;
use http::request::Parts;
use portcullis_audit::{AuditDecision, AuditEvent, Submitted};
use time::OffsetDateTime;

use crate::audit::Auditor;
use crate::client_certificate::ClientCertificate;
use crate::error::ApiError;
use crate::lifecycle::Lifecycle;
use crate::listener_kind::ListenerKind;
use crate::metrics::Metrics;
use crate::principal::{Credential, record_caller};
use crate::request_id::RequestId;

/// The status recorded for a request whose client left before it was answered (nginx's).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// What a handler learned about the request, for its log line and audit record.
#[derive(Debug, Clone, Default)]
pub struct AccessInfo {
    /// The caller's principal id: the only part of it the access log shows.
    pub principal: Option<String>,
    /// What the caller presented, for the audit record.
    pub credential: Option<Credential>,
    pub team: Option<String>,
    pub model: Option<String>,
    pub upstream: Option<String>,
    pub stream: bool,
    /// The admin token behind an admin request, and what it acted on.
    pub admin_token_id: Option<String>,
    pub target: Option<String>,
    /// Why the request was refused, in more words than its error code.
    pub reason: Option<String>,
    /// The gateway that asked the authorizer about the request.
    pub gateway: Option<String>,
    /// The request's decision has a record of its own (an authorizer check): this one, the
    /// gateway's call to the authorizer, is neither logged nor recorded.
    pub recorded_elsewhere: bool,
}

/// What the request looked like when it arrived.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub method: Method,
    pub path: String,
    pub request_id: Option<RequestId>,
    /// The client's address as resolved through trusted proxies (the peer's when that failed).
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    /// The client certificate the connection's TLS handshake verified.
    pub client_certificate: Option<Arc<ClientCertificate>>,
}

/// What a request was billed, as its audit record states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Billed {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub estimated: bool,
    pub cost_pico: u64,
    /// The model server reported more than its bounds allow; these are the bounds.
    pub bounded: bool,
}

/// Marks a response whose audit record waits for the end of its body (its settlement takes it).
#[derive(Debug, Clone, Copy)]
pub struct AuditAtBodyEnd;

/// Where a listener's request records go, and whether the shutdown cut them: one per listener,
/// shared by the records of all its requests.
#[derive(Debug)]
pub struct Recording {
    pub auditor: Auditor,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Lifecycle,
}

/// A handle on the request's record; cheap to clone.
#[derive(Clone)]
pub struct Exchange(Arc<Inner>);

struct Inner {
    listener: ListenerKind,
    /// Every answer is audited (proxied requests and authorizer decisions), not only refusals.
    audits_every_answer: bool,
    recording: Arc<Recording>,
    started: Instant,
    meta: RequestMeta,
    progress: Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    info: AccessInfo,
    /// The log line is written; the audit record is submitted, or parked below.
    answered: bool,
    parked: Option<AuditEvent>,
    /// Set by a settlement that ended before the answer.
    billed: Option<Billed>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange").field("listener", &self.0.listener).field("meta", &self.0.meta).finish()
    }
}

impl Exchange {
    pub fn new(listener: ListenerKind, recording: Arc<Recording>, meta: RequestMeta, started: Instant) -> Exchange {
        let audits_every_answer = listener == ListenerKind::Proxy;
        let progress = Mutex::new(Progress::default());
        Exchange(Arc::new(Inner { listener, audits_every_answer, recording, started, meta, progress }))
    }

    /// The record of an authorizer's decision about a request a gateway forwards: `meta` is
    /// that request as the gateway saw it.
    pub fn decision(recording: Arc<Recording>, meta: RequestMeta, started: Instant) -> Exchange {
        let progress = Mutex::new(Progress::default());
        let listener = ListenerKind::Authz;
        Exchange(Arc::new(Inner { listener, audits_every_answer: true, recording, started, meta, progress }))
    }

    pub fn meta(&self) -> &RequestMeta {
        &self.0.meta
    }

    /// Notes something the handler learned.
    pub fn note(&self, learn: impl FnOnce(&mut AccessInfo)) {
        learn(&mut self.0.progress().info);
    }

    /// Logs and counts the answer, and submits its audit record — or parks it, when the response
    /// carries [`AuditAtBodyEnd`]. Waits for a `sync` record to be durable.
    pub async fn answered(&self, status: u16, error: Option<&ApiError>, body_pending: bool) {
        // Taken, not cloned: once answered, nothing reads the notes again.
        let mut info = {
            let mut progress = self.0.progress();
            progress.answered = true;
            std::mem::take(&mut progress.info)
        };
        // A gateway's call whose decision has a record of its own: that record's log line and
        // metrics sample stand for both.
        if info.recorded_elsewhere {
            return;
        }
        let elapsed = self.0.started.elapsed();
        self.0.log(status, error.map(|error| error.kind_and_code().1), &info, elapsed);
        if !self.0.is_audited(status) {
            return;
        }
        let (decision, code) = decision(status, error, info.upstream.is_some());
        let reason = info.reason.take().or(code);
        let event = self.0.event(status, decision, reason, info, elapsed);
        if body_pending {
            self.0.progress().parked = Some(event);
        } else {
            self.0.recording.auditor.record(event).await;
        }
    }

    /// The parked record with its latency (and time to first byte) filled in, once.
    pub fn take_parked(&self) -> Option<AuditEvent> {
        let mut event = self.0.progress().parked.take()?;
        event.ttfb_ms = Some(event.latency_ms);
        event.latency_ms = millis(self.0.started.elapsed());
        Some(event)
    }

    /// Whether the server cut the request short at shutdown (its client did not leave).
    pub fn cut_at_shutdown(&self) -> bool {
        self.0.recording.lifecycle.is_cut()
    }

    /// A settlement that ended before the answer says what it billed, for the 499 record.
    pub fn note_billed(&self, billed: Billed) {
        self.0.progress().billed = Some(billed);
    }

    /// Submits without waiting (for callers that cannot wait: a body's end, a drop).
    pub fn submit_detached(&self, event: AuditEvent) -> Submitted {
        self.0.recording.auditor.record_detached(event)
    }

    /// An admin change's record: who (the admin token), what (`key.revoke`…), on what, from
    /// where. Waits for a `sync` record to be durable.
    pub async fn admin_action(&self, admin_token_id: &str, action: &str, target: &str, team: Option<&str>) {
        tracing::info!(action, target, by = admin_token_id, "admin action");
        let mut event = self.0.event(
            200,
            AuditDecision::Allow,
            Some(action.to_string()),
            AccessInfo::default(),
            self.0.started.elapsed(),
        );
        event.admin_token_id = Some(admin_token_id.to_string());
        event.target = Some(target.to_string());
        event.team = team.map(str::to_string);
        self.0.recording.auditor.record(event).await;
    }
}

impl Inner {
    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every proxy request and authorizer decision but health probes; elsewhere only refusals
    /// (successful admin changes are recorded by their handlers, with what they changed; reads
    /// are not recorded).
    fn is_audited(&self, status: u16) -> bool {
        if matches!(self.meta.path.as_str(), "/healthz" | "/readyz" | "/metrics") {
            return false;
        }
        self.audits_every_answer || status >= 400
    }

    fn log(&self, status: u16, error: Option<&'static str>, info: &AccessInfo, elapsed: std::time::Duration) {
        self.recording.metrics.record(self.listener, info.model.as_deref().unwrap_or(""), status, elapsed);
        tracing::info!(
            target: "portcullis::access",
            listener = self.listener.name(),
            method = %self.meta.method,
            path = self.meta.path,
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            request_id = self.meta.request_id.as_ref().map(RequestId::as_str),
            principal = info.principal,
            team = info.team,
            model = info.model,
            upstream = info.upstream,
            error,
        );
    }

    fn event(
        &self,
        status: u16,
        decision: AuditDecision,
        reason: Option<String>,
        info: AccessInfo,
        elapsed: std::time::Duration,
    ) -> AuditEvent {
        let mut event = AuditEvent::new(OffsetDateTime::now_utc(), self.listener.audit_kind(), decision, status);
        event.request_id = self.meta.request_id.as_ref().map(|id| id.as_str().to_string());
        record_caller(&mut event, info.principal, info.credential);
        event.team = info.team;
        event.admin_token_id = info.admin_token_id;
        event.target = info.target;
        event.client_ip = self.meta.client_ip.map(|ip| ip.to_string());
        event.gateway = info.gateway;
        event.method = Some(self.meta.method.to_string());
        event.path = Some(self.meta.path.clone());
        event.model = info.model;
        event.upstream = info.upstream;
        event.reason = reason;
        event.stream = info.stream;
        event.latency_ms = millis(elapsed);
        event.user_agent = self.meta.user_agent.clone();
        event
    }
}

impl Drop for Inner {
    /// The client left before the answer — or the server cut the request at shutdown: the
    /// request still gets its log line and record.
    fn drop(&mut self) {
        let progress = std::mem::take(self.progress.get_mut().unwrap_or_else(PoisonError::into_inner));
        if progress.answered {
            return;
        }
        let (status, reason) = if self.recording.lifecycle.is_cut() {
            (503, "cut_at_shutdown")
        } else {
            (CLIENT_CLOSED_REQUEST, "client_disconnected")
        };
        let elapsed = self.started.elapsed();
        self.log(status, Some(reason), &progress.info, elapsed);
        if !self.is_audited(status) {
            return;
        }
        let mut event = self.event(status, AuditDecision::Error, Some(reason.to_string()), progress.info, elapsed);
        if let Some(billed) = progress.billed {
            billed.fill(&mut event);
        }
        drop(self.recording.auditor.record_detached(event));
    }
}

impl Billed {
    /// Writes the usage into `event`.
    pub fn fill(self, event: &mut AuditEvent) {
        event.prompt_tokens = Some(self.prompt_tokens);
        event.completion_tokens = Some(self.completion_tokens);
        event.usage_estimated = self.estimated;
        event.cost_pico = Some(self.cost_pico);
    }
}

/// Allowed; refused by the gateway (with its error code); or allowed but failed upstream.
fn decision(status: u16, error: Option<&ApiError>, reached_upstream: bool) -> (AuditDecision, Option<String>) {
    match error {
        Some(error) => {
            let (kind, code) = error.kind_and_code();
            let decision = if kind == "upstream_error" { AuditDecision::Error } else { AuditDecision::Deny };
            (decision, Some(code.to_string()))
        }
        None if status >= 400 && reached_upstream => (AuditDecision::Error, Some("upstream_status".into())),
        None if status >= 400 => (AuditDecision::Deny, None),
        None => (AuditDecision::Allow, None),
    }
}

fn millis(elapsed: std::time::Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// Handlers take their request's record as an extractor.
impl<S: Send + Sync> FromRequestParts<S> for Exchange {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Exchange, ApiError> {
        parts.extensions.get::<Exchange>().cloned().ok_or(ApiError::Internal)
    }
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
