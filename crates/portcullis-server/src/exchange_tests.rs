use std::time::Duration;

use portcullis_audit::{AuditFilter, AuditKind, AuditRecord, canonical_version};

use super::*;
use crate::state::AppState;

fn forwarded_request() -> RequestMeta {
    RequestMeta {
        method: Method::POST,
        path: "/v1/chat/completions".into(),
        request_id: None,
        client_ip: Some(IpAddr::from([10, 0, 0, 7])),
        user_agent: None,
        client_certificate: None,
    }
}

/// The store's records, once the writer has stored `count` of them.
async fn stored(state: &AppState, count: usize) -> Vec<AuditRecord> {
    for _ in 0..500 {
        let records = state.audit_store.query_audit(&AuditFilter::default(), None, 100).await.unwrap();
        if records.len() >= count {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the writer did not store {count} records in 5 s");
}

#[tokio::test]
async fn an_authorizer_decision_is_recorded_as_one_naming_its_gateway() {
    let (state, _stores, _recorder) = AppState::in_memory_for_tests(None).await;
    let recording = state.site_context().recording.clone();

    let decision = Exchange::decision(recording.clone(), forwarded_request(), Instant::now());
    decision.note(|info| {
        info.gateway = Some("nginx".into());
        info.model = Some("smollm".into());
    });
    decision.answered(200, None, false).await;
    // A proxied request names no gateway, and stays a request.
    let proxied = Exchange::new(ListenerKind::Proxy, recording, forwarded_request(), Instant::now());
    proxied.answered(200, None, false).await;

    let records = stored(&state, 2).await;
    let kinds: Vec<_> = records.iter().map(|record| (record.kind, record.gateway.as_deref())).collect();
    assert_eq!(kinds, [(AuditKind::Authz, Some("nginx")), (AuditKind::Request, None)]);
    assert_eq!((records[0].decision, records[0].model.as_deref()), (AuditDecision::Allow, Some("smollm")));
    assert_eq!(records[0].client_ip.as_deref(), Some("10.0.0.7"), "the client as the gateway saw it");
    assert_eq!(records.iter().map(canonical_version).collect::<Vec<_>>(), [3, 1], "the gateway is hashed");
}
