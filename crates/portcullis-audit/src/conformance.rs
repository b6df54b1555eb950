//! The audit log's part of the conformance story: what every backend's [`AuditStore`] must do,
//! run from each backend's own tests (built only with the `conformance` feature, which backends
//! enable for their tests alone).
//!
//! - The audit log gives back every record exactly as written: every field, any `u64` (even above
//!   `i64::MAX`), `Some("")` apart from `None`, `ts` to the millisecond. Appending skips a
//!   `(node, seq)` already stored and one at or below its node's checkpoint (retention removed
//!   it: a late replay must not bring it back). Queries go by (`ts`, node, seq); `since` is
//!   inclusive, `until` and the cursor exclusive. Nodes are listed by name.
//! - Retention deletes, per node, only the start of the chain: the records before the first one
//!   not older than `before` (so a record after a clock step back waits for the newer one before
//!   it). The checkpoint moves to the last deleted record; `last_audit` falls back to it once no
//!   record of the node is left, so the chain continues where it was. The checks use days long
//!   past, so retention in a fresh database only reaches the story's own records.
//! - Appending and retention are not admin changes: they append nothing to the store's
//!   [`ChangeLog`].
//! - The store's `audit_log` table has one column per field of the field table, named alike
//!   (checked by each backend against its schema with [`AuditRecord::FIELDS`]).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failed unwrap or assert is a failed conformance check"
)]

use portcullis_store::ChangeLog;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use crate::{
    AuditCheckpoint, AuditCursor, AuditDecision, AuditFilter, AuditKind, AuditRecord, AuditStore, PrincipalKind,
};

const RED: &str = "story-team-red";
const BLUE: &str = "story-team-blue";
const MODEL_1: &str = "story-model-1";
const MODEL_2: &str = "story-model-2";
/// A key that is not on file: the audit log names what it was told.
const GONE_KEY: &str = "story-key-gone";
/// The day of the records at the limit of a count, before every other day of the story.
const HUGE_DAY: OffsetDateTime = datetime!(1999-09-09 00:00 UTC);
const NODE_HUGE: &str = "story-node-huge";
/// Gateways that asked the authorizer.
const GATEWAY_NGINX: &str = "story-gateway-nginx";
const GATEWAY_ENVOY: &str = "story-gateway-envoy";

/// Runs the audit chapter on a fresh, migrated database; panics (with the failed check) on the
/// first deviation. `changes` is the same backend's change log.
pub async fn run_story(audit: &dyn AuditStore, changes: &dyn ChangeLog) {
    appends_once_and_read_back_exactly(audit).await;
    queries_filter_order_and_page(audit).await;
    retention_moves_checkpoints_and_keeps_chains_whole(audit).await;
    figures_at_the_limit_read_back_exactly(audit).await;
    appends_and_retention_are_no_admin_changes(audit, changes).await;
}

async fn appends_and_retention_are_no_admin_changes(audit: &dyn AuditStore, changes: &dyn ChangeLog) {
    let before = changes.latest_change().await.unwrap();
    audit.append_audit(&[audited("story-node-logged", 1, 1)]).await.unwrap();
    audit.delete_audit_before(AUDIT_DAY + Duration::seconds(1)).await.unwrap();
    assert_eq!(changes.latest_change().await.unwrap(), before, "audit appends and retention log no change");
}

/// The day of the story's audit records: far in the past, so time filters and retention see only
/// them.
const AUDIT_DAY: OffsetDateTime = datetime!(2002-03-04 00:00 UTC);
const NODE_A: &str = "story-node-a";
const NODE_B: &str = "story-node-b";
const NODE_C: &str = "story-node-c";

async fn appends_once_and_read_back_exactly(audit: &dyn AuditStore) {
    audit.append_audit(&[]).await.unwrap();
    assert_eq!(audit.last_audit(NODE_A).await.unwrap(), None, "no chain yet");
    assert_eq!(audit.audit_checkpoint(NODE_A).await.unwrap(), None);
    assert!(story_nodes(audit).await.is_empty());

    let (a, b) = (node_a_records(), node_b_records());
    let first = [&a[..3], &b[..1]].concat();
    audit.append_audit(&first).await.unwrap();
    // Replayed whole, then partly again with the rest (out of order within the batch).
    audit.append_audit(&first).await.unwrap();
    let mut second = [&a[2..], &b[..]].concat();
    second.reverse();
    audit.append_audit(&second).await.unwrap();
    // A different record under a stored (node, seq) is skipped, not stored over the first.
    let forged = AuditRecord { status: 200, hash: "story-forged".into(), ..a[1].clone() };
    audit.append_audit(&[forged]).await.unwrap();

    assert_eq!(audit.audit_chain(NODE_A, 0, 100).await.unwrap(), a, "every field as written, once, by seq");
    assert_eq!(audit.audit_chain(NODE_B, 0, 100).await.unwrap(), b);
    assert_eq!(audit.audit_chain(NODE_A, 2, 2).await.unwrap(), a[2..4], "after seq 2, two records");
    assert_eq!(audit.audit_chain(NODE_A, 6, 100).await.unwrap(), []);
    assert_eq!(audit.audit_chain("story-node-none", 0, 100).await.unwrap(), []);
    assert_eq!(audit.last_audit(NODE_A).await.unwrap(), Some((6, a[5].hash.clone())));
    assert_eq!(audit.last_audit(NODE_B).await.unwrap(), Some((3, b[2].hash.clone())));
    assert_eq!(audit.last_audit("story-node-none").await.unwrap(), None);
    assert_eq!(story_nodes(audit).await, [NODE_A, NODE_B]);
}

/// Reads what [`appends_once_and_read_back_exactly`] stored. By (ts, node, seq): A1, A2
/// and B1 (same time: node decides), A3, B2, A4 and B3 (same time), A5, A6.
async fn queries_filter_order_and_page(audit: &dyn AuditStore) {
    let (a, b) = (node_a_records(), node_b_records());
    let ordered = [&a[0], &a[1], &b[0], &a[2], &b[1], &a[3], &b[2], &a[4], &a[5]].map(Clone::clone);
    let day =
        AuditFilter { since: Some(AUDIT_DAY), until: Some(AUDIT_DAY + Duration::days(1)), ..AuditFilter::default() };
    let query = |filter: AuditFilter| async move { audit.query_audit(&filter, None, 100).await.unwrap() };
    let refs = |records: Vec<AuditRecord>| -> Vec<(String, u64)> {
        records.into_iter().map(|record| (record.node, record.seq)).collect()
    };
    let expect = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
        pairs.iter().map(|(node, seq)| (node.to_string(), *seq)).collect()
    };

    assert_eq!(query(day.clone()).await, ordered, "oldest first; same time by node, then seq");

    let checks: [(AuditFilter, &[(&str, u64)]); 21] = [
        (AuditFilter { node: Some(NODE_B.into()), ..day.clone() }, &[(NODE_B, 1), (NODE_B, 2), (NODE_B, 3)]),
        (AuditFilter { key_id: Some("story-key-a".into()), ..day.clone() }, &[(NODE_A, 1), (NODE_A, 4), (NODE_A, 6)]),
        (AuditFilter { team: Some(BLUE.into()), ..day.clone() }, &[(NODE_A, 2), (NODE_B, 2)]),
        (
            AuditFilter { model: Some(MODEL_1.into()), ..day.clone() },
            &[(NODE_A, 1), (NODE_B, 1), (NODE_B, 2), (NODE_A, 4)],
        ),
        (AuditFilter { status: Some(200), ..day.clone() }, &[(NODE_A, 1), (NODE_A, 3), (NODE_B, 2), (NODE_A, 6)]),
        (AuditFilter { decision: Some(AuditDecision::Deny), ..day.clone() }, &[(NODE_A, 2), (NODE_B, 1), (NODE_A, 5)]),
        (AuditFilter { decision: Some(AuditDecision::Error), ..day.clone() }, &[(NODE_A, 4)]),
        (AuditFilter { kind: Some(AuditKind::Admin), ..day.clone() }, &[(NODE_A, 3)]),
        (AuditFilter { kind: Some(AuditKind::Security), ..day.clone() }, &[(NODE_A, 5)]),
        (AuditFilter { request_id: Some("story-req-b1".into()), ..day.clone() }, &[(NODE_B, 1)]),
        // `since` is inclusive, `until` exclusive.
        (AuditFilter { since: Some(a[3].ts), ..day.clone() }, &[(NODE_A, 4), (NODE_B, 3), (NODE_A, 5), (NODE_A, 6)]),
        (
            AuditFilter { until: Some(a[3].ts), ..day.clone() },
            &[(NODE_A, 1), (NODE_A, 2), (NODE_B, 1), (NODE_A, 3), (NODE_B, 2)],
        ),
        // Filters combine.
        (
            AuditFilter { key_id: Some("story-key-a".into()), model: Some(MODEL_2.into()), ..day.clone() },
            &[(NODE_A, 6)],
        ),
        (AuditFilter { key_id: Some("story-key-none".into()), ..day.clone() }, &[]),
        (AuditFilter { subject: Some("svc:ingest@example".into()), ..day.clone() }, &[(NODE_A, 4)]),
        (AuditFilter { issuer: Some("https://idp.example".into()), ..day.clone() }, &[(NODE_A, 4)]),
        (AuditFilter { issuer: Some("https://idp.example/".into()), ..day.clone() }, &[]),
        (AuditFilter { kind: Some(AuditKind::Authz), ..day.clone() }, &[(NODE_B, 2)]),
        (AuditFilter { gateway: Some(GATEWAY_NGINX.into()), ..day.clone() }, &[(NODE_B, 2)]),
        (AuditFilter { gateway: Some(GATEWAY_ENVOY.into()), ..day.clone() }, &[(NODE_A, 4)]),
        (AuditFilter { gateway: Some("story-gateway-NGINX".into()), ..day.clone() }, &[]),
    ];
    for (filter, expected) in checks {
        assert_eq!(refs(query(filter.clone()).await), expect(expected), "{filter:?}");
    }
    let empty_window = AuditFilter { until: Some(AUDIT_DAY), ..day.clone() };
    assert_eq!(query(empty_window).await, []);

    // Pages of four, each continuing after the last record of the one before, add up to the whole.
    let mut pages = Vec::new();
    let mut cursor: Option<AuditCursor> = None;
    loop {
        let page = audit.query_audit(&day, cursor.as_ref(), 4).await.unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some(AuditCursor { ts: last.ts, node: last.node.clone(), seq: last.seq });
        pages.push(page);
        assert!(pages.len() <= 3, "nine records fill three pages of four");
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 1]);
    assert_eq!(pages.concat(), ordered);

    // The cursor's tie-break: after A4 comes B3, at the same time.
    let after_a4 = AuditCursor { ts: a[3].ts, node: NODE_A.into(), seq: 4 };
    assert_eq!(refs(audit.query_audit(&day, Some(&after_a4), 2).await.unwrap()), expect(&[(NODE_B, 3), (NODE_A, 5)]));
    // And with a filter, one at a time.
    let denied = AuditFilter { decision: Some(AuditDecision::Deny), ..day.clone() };
    let after_a2 = AuditCursor { ts: a[1].ts, node: NODE_A.into(), seq: 2 };
    assert_eq!(refs(audit.query_audit(&denied, Some(&after_a2), 1).await.unwrap()), expect(&[(NODE_B, 1)]));
    assert_eq!(audit.query_audit(&day, None, 0).await.unwrap(), []);
}

/// Continues from [`queries_filter_order_and_page`]'s records.
async fn retention_moves_checkpoints_and_keeps_chains_whole(audit: &dyn AuditStore) {
    let (a, b) = (node_a_records(), node_b_records());
    let checkpoint = |node: &str, record: &AuditRecord| AuditCheckpoint {
        node: node.into(),
        seq: record.seq,
        hash: record.hash.clone(),
    };

    assert_eq!(audit.delete_audit_before(AUDIT_DAY).await.unwrap(), 0, "nothing that old");
    assert_eq!(audit.audit_checkpoint(NODE_A).await.unwrap(), None);

    // A4's time: A1-A3 and B1-B2 are older.
    assert_eq!(audit.delete_audit_before(a[3].ts).await.unwrap(), 5);
    assert_eq!(audit.audit_checkpoint(NODE_A).await.unwrap(), Some(checkpoint(NODE_A, &a[2])));
    assert_eq!(audit.audit_checkpoint(NODE_B).await.unwrap(), Some(checkpoint(NODE_B, &b[1])));
    assert_eq!(audit.audit_chain(NODE_A, 0, 100).await.unwrap(), a[3..]);
    assert_eq!(audit.audit_chain(NODE_B, 0, 100).await.unwrap(), b[2..]);
    assert_eq!(audit.last_audit(NODE_A).await.unwrap(), Some((6, a[5].hash.clone())), "the chain's end stays");

    // Again: nothing more to delete, the checkpoints stay; a replay does not bring records back.
    assert_eq!(audit.delete_audit_before(a[3].ts).await.unwrap(), 0);
    assert_eq!(audit.audit_checkpoint(NODE_A).await.unwrap(), Some(checkpoint(NODE_A, &a[2])));
    audit.append_audit(&[&a[..], &b[..]].concat()).await.unwrap();
    assert_eq!(audit.audit_chain(NODE_A, 0, 100).await.unwrap(), a[3..], "deleted records stay deleted");
    assert_eq!(audit.audit_chain(NODE_B, 0, 100).await.unwrap(), b[2..]);

    // Every record of node B goes: its chain continues from the checkpoint.
    assert_eq!(audit.delete_audit_before(a[4].ts).await.unwrap(), 2, "A4 and B3");
    assert_eq!(audit.audit_checkpoint(NODE_B).await.unwrap(), Some(checkpoint(NODE_B, &b[2])));
    assert_eq!(audit.audit_chain(NODE_B, 0, 100).await.unwrap(), []);
    assert_eq!(audit.last_audit(NODE_B).await.unwrap(), Some((3, b[2].hash.clone())), "from the checkpoint");
    assert_eq!(story_nodes(audit).await, [NODE_A, NODE_B], "a node with only a checkpoint is still listed");
    let b4 = AuditRecord { reason: Some("restarted".into()), ..link(audited(NODE_B, 4, 7_000), &b[2]) };
    audit.append_audit(std::slice::from_ref(&b4)).await.unwrap();
    assert_eq!(audit.last_audit(NODE_B).await.unwrap(), Some((4, b4.hash.clone())));

    // Node C's clock stepped: C2 is stamped later than C3. Only the chain's start goes, so C3
    // waits for C2 even though it is older than the cut.
    let c1 = audited(NODE_C, 1, 1_000);
    let c2 = link(audited(NODE_C, 2, 9_000), &c1);
    let c3 = link(audited(NODE_C, 3, 2_000), &c2);
    audit.append_audit(&[c1.clone(), c2.clone(), c3.clone()]).await.unwrap();
    assert_eq!(audit.delete_audit_before(AUDIT_DAY + Duration::seconds(5)).await.unwrap(), 1);
    assert_eq!(audit.audit_checkpoint(NODE_C).await.unwrap(), Some(checkpoint(NODE_C, &c1)));
    assert_eq!(audit.audit_chain(NODE_C, 0, 100).await.unwrap(), [c2, c3.clone()]);
    assert_eq!(audit.audit_chain(NODE_A, 0, 100).await.unwrap(), a[4..], "A5 is not older than the cut");
    assert_eq!(audit.delete_audit_before(AUDIT_DAY + Duration::seconds(10)).await.unwrap(), 5, "A5, A6, B4, C2, C3");
    assert_eq!(audit.audit_checkpoint(NODE_C).await.unwrap(), Some(checkpoint(NODE_C, &c3)));
    assert_eq!(story_nodes(audit).await, [NODE_A, NODE_B, NODE_C]);
}

/// Node A's chain: requests allowed, denied and failed, an admin action, a security event, and
/// one record with every optional field set to values a careless encoding would change.
fn node_a_records() -> Vec<AuditRecord> {
    let a1 = AuditRecord {
        request_id: Some("story-req-a1".into()),
        key_id: Some("story-key-a".into()),
        team: Some(RED.into()),
        model: Some(MODEL_1.into()),
        latency_ms: 12,
        prompt_tokens: Some(10),
        completion_tokens: Some(5),
        cost_pico: Some(1_500),
        ..audited(NODE_A, 1, 1_001)
    };
    let a2 = AuditRecord {
        key_id: Some("story-key-b".into()),
        team: Some(BLUE.into()),
        model: Some(MODEL_2.into()),
        status: 429,
        decision: AuditDecision::Deny,
        reason: Some("rate_limit_exceeded".into()),
        ..link(audited(NODE_A, 2, 2_002), &a1)
    };
    let a3 = AuditRecord {
        kind: AuditKind::Admin,
        admin_token_id: Some("story-token-admin".into()),
        method: Some("POST".into()),
        path: Some("/admin/v1/keys/story-key-c/revoke".into()),
        reason: Some("key.revoke".into()),
        target: Some("story-key-c".into()),
        ..link(audited(NODE_A, 3, 3_003), &a2)
    };
    let a4 = AuditRecord {
        kind: AuditKind::Request,
        request_id: Some("story-req-a4".into()),
        principal_kind: Some(PrincipalKind::Token),
        key_id: Some("story-key-a".into()),
        subject: Some("svc:ingest@example".into()),
        issuer: Some("https://idp.example".into()),
        credential_id: Some("sha256:0123456789abcdef".into()),
        team: Some(RED.into()),
        admin_token_id: Some(String::new()),
        client_ip: Some("2001:db8::7".into()),
        gateway: Some(GATEWAY_ENVOY.into()),
        method: Some("POST".into()),
        path: Some("/v1/chat/completions?x=1&y=ü".into()),
        model: Some(MODEL_1.into()),
        upstream: Some("http://127.0.0.1:9000".into()),
        status: 502,
        decision: AuditDecision::Error,
        reason: Some("upstream_unavailable".into()),
        target: Some(String::new()),
        stream: true,
        latency_ms: u64::MAX,
        ttfb_ms: Some(0),
        prompt_tokens: Some(i64::MAX as u64 + 1),
        completion_tokens: Some(0),
        usage_estimated: true,
        cost_pico: Some(u64::MAX),
        user_agent: Some(String::new()),
        content: Some("{\"prompt\":\"héllo \\u0000 [EMAIL]\",\n\"completion\":\"🙂 'quoted' \\\"x\\\"\"}".into()),
        ..link(audited(NODE_A, 4, 4_000), &a3)
    };
    let a5 = AuditRecord {
        kind: AuditKind::Security,
        client_ip: Some("203.0.113.9".into()),
        status: 403,
        decision: AuditDecision::Deny,
        reason: Some("client_blocked".into()),
        ..link(audited(NODE_A, 5, 5_005), &a4)
    };
    let a6 = AuditRecord {
        key_id: Some("story-key-a".into()),
        team: Some(RED.into()),
        model: Some(MODEL_2.into()),
        stream: true,
        ttfb_ms: Some(3),
        ..link(audited(NODE_A, 6, 6_006), &a5)
    };
    vec![a1, a2, a3, a4, a5, a6]
}

/// Node B's chain: B1 at A2's time, B2 an authorizer's decision, B3 at A4's.
fn node_b_records() -> Vec<AuditRecord> {
    let b1 = AuditRecord {
        request_id: Some("story-req-b1".into()),
        key_id: Some(GONE_KEY.into()),
        model: Some(MODEL_1.into()),
        status: 401,
        decision: AuditDecision::Deny,
        reason: Some("invalid_api_key".into()),
        ..audited(NODE_B, 1, 2_002)
    };
    let b2 = AuditRecord {
        kind: AuditKind::Authz,
        gateway: Some(GATEWAY_NGINX.into()),
        key_id: Some("story-key-b".into()),
        team: Some(BLUE.into()),
        model: Some(MODEL_1.into()),
        ..link(audited(NODE_B, 2, 3_500), &b1)
    };
    let b3 = AuditRecord { model: Some(MODEL_2.into()), status: 404, ..link(audited(NODE_B, 3, 4_000), &b2) };
    vec![b1, b2, b3]
}

/// An allowed request record with no optional field set, `millis` after [`AUDIT_DAY`]. Hashes
/// are stand-ins: the store never computes them.
fn audited(node: &str, seq: u64, millis: i64) -> AuditRecord {
    AuditRecord {
        seq,
        ts: AUDIT_DAY + Duration::milliseconds(millis),
        node: node.into(),
        kind: AuditKind::Request,
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
        status: 200,
        decision: AuditDecision::Allow,
        reason: None,
        target: None,
        stream: false,
        latency_ms: 1,
        ttfb_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        usage_estimated: false,
        cost_pico: None,
        user_agent: None,
        content: None,
        prev_hash: "0".repeat(64),
        hash: format!("story-hash-{node}-{seq}"),
    }
}

/// `record` chained after `previous`.
fn link(record: AuditRecord, previous: &AuditRecord) -> AuditRecord {
    AuditRecord { prev_hash: previous.hash.clone(), ..record }
}

async fn story_nodes(audit: &dyn AuditStore) -> Vec<String> {
    let nodes = audit.audit_nodes().await.unwrap();
    nodes.into_iter().filter(|node| node.starts_with("story-")).collect()
}

/// Audit records carry a request's figures as reported, every `u64` up to 2⁶⁴ − 1, and read back
/// exactly: the chain's hashes cover them.
async fn figures_at_the_limit_read_back_exactly(audit: &dyn AuditStore) {
    let at = |record: AuditRecord, millis: i64| AuditRecord { ts: HUGE_DAY + Duration::milliseconds(millis), ..record };
    let first = AuditRecord {
        key_id: Some("story-huge-a".into()),
        model: Some(MODEL_1.into()),
        latency_ms: u64::MAX,
        ttfb_ms: Some(u64::MAX),
        prompt_tokens: Some(u64::MAX),
        completion_tokens: Some(u64::MAX),
        cost_pico: Some(u64::MAX),
        ..at(audited(NODE_HUGE, 1, 0), 1)
    };
    let second = AuditRecord {
        latency_ms: i64::MAX as u64 + 1,
        ttfb_ms: Some(i64::MAX as u64),
        prompt_tokens: Some(9_200_000_000_000_000_000),
        completion_tokens: Some(i64::MAX as u64 + 1),
        cost_pico: Some(i64::MAX as u64),
        ..link(at(audited(NODE_HUGE, 2, 0), 2), &first)
    };
    let records = [first, second];
    audit.append_audit(&records).await.unwrap();
    assert_eq!(audit.audit_chain(NODE_HUGE, 0, 10).await.unwrap(), records);
    let filter = AuditFilter { node: Some(NODE_HUGE.into()), ..AuditFilter::default() };
    assert_eq!(audit.query_audit(&filter, None, 10).await.unwrap(), records);
}
