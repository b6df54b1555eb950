//! Records for unit tests.

use time::OffsetDateTime;

use crate::{AuditDecision, AuditEvent, AuditKind, AuditRecord, Chain, PrincipalKind};

/// A request event with most fields set, different for each `i`.
pub(crate) fn event(i: u64) -> AuditEvent {
    let ts = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap() + time::Duration::milliseconds(i as i64 * 7);
    AuditEvent {
        request_id: Some(format!("req-{i}")),
        principal_kind: Some(PrincipalKind::Key),
        key_id: Some("key_01".to_string()),
        team: Some("research".to_string()),
        client_ip: Some("10.0.0.7".to_string()),
        method: Some("POST".to_string()),
        path: Some("/v1/chat/completions".to_string()),
        model: Some("smollm2".to_string()),
        upstream: Some("http://127.0.0.1:9000".to_string()),
        latency_ms: 40 + i,
        ttfb_ms: Some(12),
        prompt_tokens: Some(100 + i),
        completion_tokens: Some(20),
        cost_pico: Some(1_500_000),
        user_agent: Some("openai-python/1.0".to_string()),
        ..AuditEvent::new(ts, AuditKind::Request, AuditDecision::Allow, 200)
    }
}

/// The first `n` records of `node`'s chain, built from [`event`].
pub(crate) fn chain(node: &str, n: u64) -> Vec<AuditRecord> {
    let mut chain = Chain::resume(node, None);
    (1..=n).map(|i| chain.seal(event(i))).collect()
}
