//! What the server hands the writer: a record before the chain numbers and hashes it.

use time::{OffsetDateTime, UtcOffset};

use crate::{AuditDecision, AuditKind, AuditRecord, PrincipalKind};

/// An [`AuditRecord`] without the fields the writer's [`crate::Chain`] assigns (`seq`, `node`,
/// `prev_hash`, `hash`). The server builds one per request, authorizer decision, admin action or security event; see
/// [`AuditRecord`] for what each field means. Never put a secret in one: content must go through
/// [`crate::Redactor`] first.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditEvent {
    /// Stored at millisecond precision in UTC (the canonical encoding hashes milliseconds).
    #[serde(with = "time::serde::rfc3339")]
    pub ts: OffsetDateTime,
    pub kind: AuditKind,
    pub request_id: Option<String>,
    pub principal_kind: Option<PrincipalKind>,
    pub key_id: Option<String>,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub credential_id: Option<String>,
    pub team: Option<String>,
    pub admin_token_id: Option<String>,
    pub client_ip: Option<String>,
    pub gateway: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub model: Option<String>,
    pub upstream: Option<String>,
    pub status: u16,
    pub decision: AuditDecision,
    pub reason: Option<String>,
    pub target: Option<String>,
    pub stream: bool,
    pub latency_ms: u64,
    pub ttfb_ms: Option<u64>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub usage_estimated: bool,
    pub cost_pico: Option<u64>,
    pub user_agent: Option<String>,
    pub content: Option<String>,
}

impl AuditEvent {
    /// An event with only its required fields set; fill in the rest with struct update syntax.
    pub fn new(ts: OffsetDateTime, kind: AuditKind, decision: AuditDecision, status: u16) -> AuditEvent {
        AuditEvent {
            ts,
            kind,
            request_id: None,
            principal_kind: None,
            key_id: None,
            subject: None,
            issuer: None,
            credential_id: None,
            team: None,
            admin_token_id: None,
            client_ip: None,
            gateway: None,
            method: None,
            path: None,
            model: None,
            upstream: None,
            status,
            decision,
            reason: None,
            target: None,
            stream: false,
            latency_ms: 0,
            ttfb_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            usage_estimated: false,
            cost_pico: None,
            user_agent: None,
            content: None,
        }
    }

    /// The record this event becomes at `seq` in `node`'s chain, with an empty `hash` (the chain
    /// computes it). `ts` is cut to whole milliseconds in UTC, the precision the canonical encoding
    /// hashes and stores keep, so a record read back equals the record that was hashed.
    pub(crate) fn into_record(self, node: String, seq: u64, prev_hash: String) -> AuditRecord {
        // Exhaustive on purpose: a field added to the event must be placed in the record here.
        let AuditEvent {
            ts,
            kind,
            request_id,
            principal_kind,
            key_id,
            subject,
            issuer,
            credential_id,
            team,
            admin_token_id,
            client_ip,
            gateway,
            method,
            path,
            model,
            upstream,
            status,
            decision,
            reason,
            target,
            stream,
            latency_ms,
            ttfb_ms,
            prompt_tokens,
            completion_tokens,
            usage_estimated,
            cost_pico,
            user_agent,
            content,
        } = self;
        AuditRecord {
            seq,
            ts: to_utc_millis(ts),
            node,
            kind,
            request_id,
            principal_kind,
            key_id,
            subject,
            issuer,
            credential_id,
            team,
            admin_token_id,
            client_ip,
            gateway,
            method,
            path,
            model,
            upstream,
            status,
            decision,
            reason,
            target,
            stream,
            latency_ms,
            ttfb_ms,
            prompt_tokens,
            completion_tokens,
            usage_estimated,
            cost_pico,
            user_agent,
            content,
            prev_hash,
            hash: String::new(),
        }
    }
}

fn to_utc_millis(ts: OffsetDateTime) -> OffsetDateTime {
    let ts = ts.to_offset(UtcOffset::UTC);
    let millis = ts.nanosecond() / 1_000_000 * 1_000_000;
    ts.replace_nanosecond(millis).unwrap_or(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_a_record_without_what_the_chain_assigns() {
        let event = AuditEvent::new(OffsetDateTime::UNIX_EPOCH, AuditKind::Request, AuditDecision::Allow, 200);
        let serialized = serde_json::to_value(&event).unwrap();
        let mut names: Vec<&str> = serialized.as_object().unwrap().keys().map(String::as_str).collect();
        names.extend(["seq", "node", "prev_hash", "hash"]);
        names.sort_unstable();
        let mut fields = AuditRecord::FIELDS.map(|field| field.name);
        fields.sort_unstable();
        assert_eq!(names, fields);
    }
}
