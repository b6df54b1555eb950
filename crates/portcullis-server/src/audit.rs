//! The server's side of the audit log: every proxied request, admin action and security event
//! becomes exactly one record.
//!
//! Requests are recorded through their `Exchange` (see `exchange`); this is the handle on the
//! writer that they and the security events submit to.

use portcullis_audit::{AuditEvent, AuditHandle, Submitted};
use portcullis_types::chain;

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
        tracing::error!(error = %chain(&error), "audit record not stored");
    }
}

/// `audit.node`, else the host name: one hash chain per running node.
pub fn node_name(audit: &portcullis_config::AuditStartup) -> String {
    audit.node.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "portcullis".to_string())
    })
}
