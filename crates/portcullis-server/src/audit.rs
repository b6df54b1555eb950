//! The server's side of the audit log: every proxied request, admin action and security event
//! becomes exactly one record.
//!
//! Requests are recorded by the access-log layer, which sees every answer. An answer whose body
//! is still to be metered (an admitted request being relayed) carries a [`DeferredAudit`]: the
//! layer leaves its record there, and the request's settlement completes it with the real usage
//! and submits it when the body ends — or is dropped because the client went away.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use portcullis_audit::{AuditEvent, AuditHandle, Submitted};
use portcullis_store::{AuditDecision, AuditKind};
use time::OffsetDateTime;

use crate::admin::auth::AdminCaller;
use crate::state::AppState;

/// Submits records; in `sync` durability the caller waits until its record is durable (the
/// handle knows the durability).
#[derive(Clone)]
pub struct Auditor {
    handle: AuditHandle,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auditor")
    }
}

impl Auditor {
    pub fn new(handle: AuditHandle) -> Auditor {
        Auditor { handle }
    }

    /// Records `event`; returns once it is durable in `sync` mode, at once in `async` mode.
    pub async fn record(&self, event: AuditEvent) {
        settle_ack(self.handle.submit(event)).await;
    }

    /// The writer's counters (spilled, replayed, …) for readiness and metrics.
    pub fn stats(&self) -> &std::sync::Arc<portcullis_audit::AuditStats> {
        self.handle.stats()
    }

    /// Submits without waiting (for paths that cannot wait: a client that is already gone).
    pub fn record_detached(&self, event: AuditEvent) -> Submitted {
        self.handle.submit(event)
    }
}

/// Waits for a submission's acknowledgement; a failure is logged (the writer has already
/// counted it), never turned into a second answer to the client.
pub async fn settle_ack(submitted: Submitted) {
    if let Err(error) = submitted.await {
        tracing::error!(%error, "audit record not stored");
    }
}

/// A request record waiting for its body to end. Set once by the access-log layer, taken once
/// by the settlement.
#[derive(Clone, Default)]
pub struct DeferredAudit(Arc<Mutex<Option<Pending>>>);

struct Pending {
    event: AuditEvent,
    started: Instant,
}

impl std::fmt::Debug for DeferredAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeferredAudit")
    }
}

impl DeferredAudit {
    pub fn park(&self, event: AuditEvent, started: Instant) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Pending { event, started });
    }

    /// The parked record with its latency filled in, if the layer parked one.
    pub fn take(&self) -> Option<AuditEvent> {
        let pending = self.0.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        let mut event = pending.event;
        event.ttfb_ms = Some(event.latency_ms);
        event.latency_ms = u64::try_from(pending.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Some(event)
    }
}

impl AppState {
    /// Records an admin change: who (the admin token), what (`key.revoke`…), on what.
    pub async fn admin_action(&self, caller: &AdminCaller, action: &str, target: &str, team: Option<&str>) {
        tracing::info!(action, target, by = %caller.token_id, "admin action");
        let mut event = AuditEvent::new(OffsetDateTime::now_utc(), AuditKind::Admin, AuditDecision::Allow, 200);
        event.admin_token_id = Some(caller.token_id.clone());
        event.reason = Some(action.to_string());
        event.target = Some(target.to_string());
        event.team = team.map(str::to_string);
        self.auditor().record(event).await;
    }
}
