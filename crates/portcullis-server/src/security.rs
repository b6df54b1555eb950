//! Security events: things worth an alert that are not a single request's answer. Each is
//! logged, counted and recorded.

use std::net::IpAddr;

use portcullis_audit::{AuditDecision, AuditEvent, AuditKind};
use time::OffsetDateTime;

use crate::audit::Auditor;
use crate::metrics::Metrics;
use crate::principal::{Credential, record_caller};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityEvent {
    /// A client address crossed `security.auth_failure_limit` and is now refused for
    /// `security.block_duration`.
    ClientBlocked { client: IpAddr },
    /// A caller's requests this minute crossed `security.anomaly_factor` × its own baseline.
    Anomaly { principal: String, credential: Credential, team: Option<String>, requests_this_minute: u64 },
}

impl SecurityEvent {
    pub fn name(&self) -> &'static str {
        match self {
            SecurityEvent::ClientBlocked { .. } => "client_blocked",
            SecurityEvent::Anomaly { .. } => "anomaly",
        }
    }

    /// Logs, counts and records the event (without holding up the request that raised it).
    pub fn raise(self, metrics: &Metrics, auditor: &Auditor) {
        tracing::warn!(event = self.name(), details = ?self, "security event");
        metrics.security_event(self.name());
        let mut record = AuditEvent::new(OffsetDateTime::now_utc(), AuditKind::Security, AuditDecision::Deny, 429);
        record.reason = Some(self.name().to_string());
        match self {
            SecurityEvent::ClientBlocked { client } => record.client_ip = Some(client.to_string()),
            SecurityEvent::Anomaly { principal, credential, team, requests_this_minute } => {
                record.decision = AuditDecision::Allow;
                record.status = 200;
                record_caller(&mut record, Some(principal), Some(credential));
                record.team = team;
                record.target = Some(format!("{requests_this_minute} requests this minute"));
            }
        }
        // Detached: the record is queued (and never lost); the request goes on.
        drop(auditor.record_detached(record));
    }
}
