//! What the audit routes' tests share: a router with an admin, a team admin and an auditor token,
//! and sealed records.

use std::sync::Arc;

use axum::body::Body;
use portcullis_audit::{AuditDecision, AuditEvent, AuditKind, AuditRecord, AuditStore, Chain, PrincipalKind};
use portcullis_auth::{SecretKind, SecretToken};
use portcullis_store::{NewAdminToken, NewTeam};
use portcullis_types::admin::Role;
use time::OffsetDateTime;
use time::macros::datetime;
use tower::ServiceExt;

use crate::state::AppState;

pub(super) struct Fixture {
    router: axum::Router,
    pub(super) audit: Arc<dyn AuditStore>,
    pub(super) team_admin: String,
    pub(super) auditor: String,
}

pub(super) const BOOTSTRAP: &str = "bootstrap-admin-token-for-audit-tests";

pub(super) async fn fixture() -> Fixture {
    let (state, stores, _task) = AppState::in_memory_for_tests(Some(BOOTSTRAP)).await;
    let state = state.admin();
    let now = OffsetDateTime::now_utc();
    let team = NewTeam {
        name: "acme".into(),
        tier: None,
        limits: Default::default(),
        metadata: serde_json::json!({}),
        capture_content: false,
        created_at: now,
    };
    stores.teams.create_team(team).await.unwrap();
    let token = |id: &str, role: Role, team: Option<&str>| {
        let secret = SecretToken::generate(SecretKind::AdminToken);
        let token = NewAdminToken {
            id: id.into(),
            name: id.into(),
            secret_hash: *state.hasher().hash(&secret).as_bytes(),
            display_prefix: secret.display_prefix(),
            role,
            team: team.map(Into::into),
            created_by: "test".into(),
            created_at: now,
        };
        (token, secret.expose().to_string())
    };
    let (acme, team_admin) = token("tok_acme", Role::TeamAdmin, Some("acme"));
    let (audit, auditor) = token("tok_auditor", Role::Auditor, None);
    stores.tokens.create_token(acme).await.unwrap();
    stores.tokens.create_token(audit).await.unwrap();
    let audit = state.audit_store().clone();
    Fixture { router: crate::admin::router(state), audit, team_admin, auditor }
}

impl Fixture {
    pub(super) async fn get(&self, token: &str, uri: &str) -> (u16, http::HeaderMap, Vec<u8>) {
        let request = http::Request::builder()
            .uri(uri)
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
        (parts.status.as_u16(), parts.headers, body.to_vec())
    }

    pub(super) async fn json(&self, token: &str, uri: &str) -> (u16, serde_json::Value) {
        let (status, _, body) = self.get(token, uri).await;
        (status, serde_json::from_slice(&body).unwrap())
    }
}

/// `count` sealed records of `node`, alternating between teams acme and globex, one second apart.
pub(super) fn chain(node: &str, count: u64) -> Vec<AuditRecord> {
    let mut chain = Chain::resume(node, None);
    (0..count)
        .map(|i| {
            chain.seal(AuditEvent {
                team: Some(if i % 2 == 0 { "acme" } else { "globex" }.into()),
                key_id: Some(format!("key_{i}")),
                ..AuditEvent::new(
                    datetime!(2025-06-10 00:00 UTC) + time::Duration::seconds(i as i64),
                    AuditKind::Request,
                    AuditDecision::Allow,
                    200,
                )
            })
        })
        .collect()
}

/// A request record with text a CSV must quote, numbered `seq`.
pub(super) fn record(seq: u64) -> AuditRecord {
    let mut chain = Chain::resume("gw-1", Some((seq - 1, "p".repeat(64))));
    chain.seal(AuditEvent {
        request_id: Some("req_1".into()),
        principal_kind: Some(PrincipalKind::Key),
        key_id: Some("key_1".into()),
        team: Some("acme".into()),
        client_ip: Some("10.0.0.1".into()),
        path: Some("/v1/chat/completions".into()),
        model: Some("smollm".into()),
        cost_pico: Some(2_500_000_000_000),
        user_agent: Some("=HYPERLINK(\"http://x\"), \"quoted\"".into()),
        content: Some("line one\nline two, with comma".into()),
        ..AuditEvent::new(datetime!(2025-06-10 12:30:00.123 UTC), AuditKind::Request, AuditDecision::Allow, 200)
    })
}
