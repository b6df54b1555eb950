//! What only SQLite's audit tables can show: rows edited with plain SQL read back as edited, the
//! column encodings, and a row that does not decode.

use std::path::Path;

use portcullis_audit::{AuditDecision, AuditFilter, AuditKind, AuditRecord, AuditStore};
use portcullis_store::{Migrator, StoreError};
use portcullis_store_sqlite::SqliteStore;
use time::OffsetDateTime;
use time::macros::datetime;

const TS: OffsetDateTime = datetime!(2025-06-10 12:30:00.123 UTC);

fn record(seq: u64) -> AuditRecord {
    AuditRecord {
        seq,
        ts: TS + time::Duration::milliseconds(seq as i64),
        node: "node-1".into(),
        kind: AuditKind::Request,
        request_id: Some(format!("req-{seq}")),
        principal_kind: None,
        key_id: Some("key_1".into()),
        subject: None,
        issuer: None,
        credential_id: None,
        team: Some("acme".into()),
        admin_token_id: None,
        client_ip: Some("127.0.0.1".into()),
        gateway: None,
        method: Some("POST".into()),
        path: Some("/v1/chat/completions".into()),
        model: Some("smollm".into()),
        upstream: Some("http://127.0.0.1:9000".into()),
        status: 429,
        decision: AuditDecision::Deny,
        reason: Some("rate_limit_exceeded".into()),
        target: None,
        stream: false,
        latency_ms: 3,
        ttfb_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        usage_estimated: false,
        cost_pico: Some(u64::MAX),
        user_agent: Some("curl/8".into()),
        content: None,
        prev_hash: format!("hash-{}", seq - 1),
        hash: format!("hash-{seq}"),
    }
}

async fn store_with_records(path: &Path) -> Result<SqliteStore, StoreError> {
    let store = SqliteStore::open(path)?;
    store.migrate().await?;
    store.append_audit(&[record(1), record(2), record(3)]).await?;
    Ok(store)
}

#[tokio::test]
async fn a_row_edited_with_plain_sql_reads_back_as_edited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let store = store_with_records(&path).await.unwrap();

    let raw = rusqlite::Connection::open(&path).unwrap();
    let changed = raw.execute("UPDATE audit_log SET status = 200 WHERE node = ?1 AND seq = ?2", ("node-1", 2)).unwrap();
    assert_eq!(changed, 1);

    // Verification must see the edit: the store hands back the row as it is, hash untouched.
    let chain = store.audit_chain("node-1", 0, 10).await.unwrap();
    assert_eq!(chain[1], AuditRecord { status: 200, ..record(2) });
    assert_eq!(chain[0], record(1));
    assert_eq!(chain[2], record(3));

    raw.execute("DELETE FROM audit_log WHERE node = 'node-1' AND seq = 1", []).unwrap();
    let seqs: Vec<u64> = store.audit_chain("node-1", 0, 10).await.unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [2, 3], "a deleted row is simply missing; the gap is for verification to find");
}

#[tokio::test]
async fn columns_hold_plain_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let _store = store_with_records(&path).await.unwrap();

    let raw = rusqlite::Connection::open(&path).unwrap();
    let (ts, kind, decision, status, stream, cost): (i64, String, String, i64, i64, i64) = raw
        .query_row("SELECT ts, kind, decision, status, stream, cost_pico FROM audit_log WHERE seq = 1", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
        })
        .unwrap();
    assert_eq!(ts, (TS.unix_timestamp_nanos() / 1_000_000) as i64 + 1, "unix milliseconds");
    assert_eq!((kind.as_str(), decision.as_str(), status, stream), ("request", "deny", 429, 0));
    assert_eq!(cost, -1, "u64::MAX kept bit for bit");
}

#[tokio::test]
async fn records_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    drop(store_with_records(&path).await.unwrap());

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.migrate().await.unwrap(), 0);
    assert_eq!(store.audit_chain("node-1", 0, 10).await.unwrap(), [record(1), record(2), record(3)]);
    assert_eq!(store.last_audit("node-1").await.unwrap(), Some((3, "hash-3".to_string())));
}

#[tokio::test]
async fn an_unknown_kind_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let store = store_with_records(&path).await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("UPDATE audit_log SET kind = 'bogus' WHERE seq = 3", []).unwrap();

    let result = store.query_audit(&AuditFilter::default(), None, 10).await;
    assert!(matches!(result, Err(StoreError::Corrupt(_))), "got {result:?}");
    let result = store.audit_chain("node-1", 0, 2).await;
    assert!(matches!(result, Ok(ref rows) if rows.len() == 2), "rows before it still read: {result:?}");
}

#[tokio::test]
async fn a_last_hash_that_is_not_utf8_does_not_stop_the_chain_from_continuing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let store = store_with_records(&path).await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    // The writer reads the last hash at start-up: a hand edit of it must not stop a start.
    raw.execute("UPDATE audit_log SET hash = CAST(x'68FF' AS TEXT) WHERE seq = 3", []).unwrap();
    assert_eq!(store.last_audit("node-1").await.unwrap(), Some((3, "h\u{FFFD}".to_string())));

    // Nor one in the checkpoint, once retention removed every record.
    raw.execute_batch(
        "DELETE FROM audit_log; INSERT INTO audit_checkpoints VALUES ('node-1', 3, CAST(x'68FF' AS TEXT))",
    )
    .unwrap();
    assert_eq!(store.last_audit("node-1").await.unwrap(), Some((3, "h\u{FFFD}".to_string())));
}

#[tokio::test]
async fn a_batch_is_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let store = store_with_records(&path).await.unwrap();
    // A trigger stands in for a failure halfway through a batch (a full disk, say).
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER fail_seq_5 BEFORE INSERT ON audit_log WHEN NEW.seq = 5
         BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    .unwrap();

    let result = store.append_audit(&[record(4), record(5)]).await;
    assert!(result.is_err());
    assert_eq!(store.last_audit("node-1").await.unwrap(), Some((3, "hash-3".to_string())), "record 4 not kept");
}

/// The whole path: records sealed by the audit chain, stored, then edited or deleted with plain
/// SQL, are found by verification at the right seq; retention keeps what remains verifiable.
#[tokio::test]
async fn verification_finds_rows_edited_or_deleted_with_plain_sql() {
    use portcullis_audit::{ChainBreak, Tampering, VerifyStatus, verify_all, verify_node};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let store = SqliteStore::open(&path).unwrap();
    store.migrate().await.unwrap();
    for node in ["edited", "deleted", "retained"] {
        let mut chain = portcullis_audit::Chain::resume(node, None);
        let records: Vec<AuditRecord> = (0..5)
            .map(|i| {
                let event = portcullis_audit::AuditEvent {
                    key_id: Some("key_1".into()),
                    cost_pico: Some(u64::MAX - i),
                    content: Some("héllo, \"world\"\n".into()),
                    ..portcullis_audit::AuditEvent::new(
                        TS + time::Duration::seconds(i as i64),
                        AuditKind::Request,
                        AuditDecision::Deny,
                        429,
                    )
                };
                chain.seal(event)
            })
            .collect();
        store.append_audit(&records).await.unwrap();
    }
    let reports = verify_all(&store).await.unwrap();
    assert_eq!(reports.len(), 3);
    assert!(reports.iter().all(|report| report.is_ok() && report.records_checked == 5), "{reports:?}");

    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("UPDATE audit_log SET status = 200 WHERE node = ?1 AND seq = ?2", ("edited", 3)).unwrap();
    raw.execute("DELETE FROM audit_log WHERE node = 'deleted' AND seq = 2", []).unwrap();
    let edited = verify_node(&store, "edited").await.unwrap();
    assert_eq!(edited.status, VerifyStatus::Break(ChainBreak { seq: 3, problem: Tampering::Edited }));
    assert_eq!(edited.records_checked, 2);
    let deleted = verify_node(&store, "deleted").await.unwrap();
    assert_eq!(deleted.status, VerifyStatus::Break(ChainBreak { seq: 2, problem: Tampering::Deleted }));

    // Retention: the records before the fourth go, the rest verifies from the checkpoint.
    assert_eq!(store.delete_audit_before(TS + time::Duration::seconds(3)).await.unwrap(), 3 + 2 + 3);
    let retained = verify_node(&store, "retained").await.unwrap();
    assert!(retained.is_ok(), "{retained:?}");
    assert_eq!((retained.from_checkpoint, retained.records_checked, retained.last_seq), (Some(3), 2, 5));
}
