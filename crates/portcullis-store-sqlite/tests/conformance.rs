//! The shared conformance story on SQLite, plus what only a file-backed SQLite store can show.

use std::path::Path;
use std::sync::Arc;

use portcullis_store::conformance::planted::{display_prefix, planted_key, planted_token, sha256};
use portcullis_store::{
    Migrator, Rotation, StoreError, Stores, TeamStore, UsageGrouping, UsageQuery, UsageRecord, UsageStore, conformance,
};
use portcullis_store_sqlite::SqliteStore;
use time::OffsetDateTime;

#[tokio::test]
async fn story_passes_on_a_file_database() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("portcullis.db")).unwrap();
    conformance::run_story(&Stores::from_backend(Arc::new(store))).await;
}

#[tokio::test]
async fn story_passes_in_memory() {
    let store = SqliteStore::open_in_memory().unwrap();
    conformance::run_story(&Stores::from_backend(Arc::new(store))).await;
}

#[tokio::test]
async fn database_files_never_hold_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let stores = Stores::from_backend(Arc::new(SqliteStore::open(&path).unwrap()));
    stores.migrator.migrate().await.unwrap();

    let key_secret = "pcl_PLANTEDkeySecretThatMustNeverReachTheDisk0123";
    let rotated_secret = "pcl_PLANTEDrotatedSecretThatMustNeverReachTheDisk";
    let token_secret = "pcla_PLANTEDadminTokenThatMustNeverReachTheDisk45";
    let now = OffsetDateTime::now_utc();
    stores.keys.create_key(planted_key(key_secret, now)).await.unwrap();
    let rotation = Rotation {
        new_secret: sha256(rotated_secret),
        new_display_prefix: display_prefix(rotated_secret),
        old_valid_until: now,
    };
    stores.keys.rotate_key("planted-key", rotation).await.unwrap();
    stores.tokens.create_token(planted_token(token_secret, now)).await.unwrap();

    // Read while the store is open, so recent writes are still in the write-ahead log.
    let bytes = database_bytes(&path).unwrap();
    assert!(contains(&bytes, &sha256(key_secret)), "the scan sees stored data");
    for secret in [key_secret, rotated_secret, token_secret] {
        // The display prefix is stored on purpose; everything after it must not be.
        let hidden = &secret[display_prefix(secret).len()..];
        assert!(!contains(&bytes, hidden.as_bytes()), "database files contain {secret:?}");
    }
}

#[tokio::test]
async fn reopened_file_keeps_rows_and_needs_no_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let first = Stores::from_backend(Arc::new(SqliteStore::open(&path).unwrap()));
    first.migrator.migrate().await.unwrap();
    let key = first.keys.create_key(planted_key("pcl_reopen", OffsetDateTime::now_utc())).await.unwrap();
    drop(first);

    let reopened = Stores::from_backend(Arc::new(SqliteStore::open(&path).unwrap()));
    assert_eq!(reopened.migrator.migrate().await.unwrap(), 0);
    assert_eq!(reopened.keys.get_key("planted-key").await.unwrap(), key);
}

#[tokio::test]
async fn undecodable_row_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let store = SqliteStore::open(&path).unwrap();
    store.migrate().await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("INSERT INTO teams (name, limits, metadata, created_at) VALUES ('broken', 'not json', '{}', 0)", [])
        .unwrap();

    let result = store.get_team("broken").await;
    assert!(matches!(result, Err(StoreError::Corrupt(_))), "got {result:?}");
}

#[tokio::test]
async fn schema_from_a_newer_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let store = SqliteStore::open(&path).unwrap();
    store.migrate().await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (9999, 0)", []).unwrap();

    let result = store.migrate().await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "got {result:?}");
}

#[tokio::test]
async fn usage_survives_a_reopen_and_saturates_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let at = OffsetDateTime::now_utc();
    let record = UsageRecord {
        at,
        key_id: "key_1".into(),
        team: None,
        model: "m".into(),
        requests: 1,
        prompt_tokens: u64::MAX,
        completion_tokens: i64::MAX as u64 - 1,
        cost_pico: 7,
        estimated_requests: 0,
    };
    {
        let store = SqliteStore::open(&path).unwrap();
        store.migrate().await.unwrap();
        store.record_usage(std::slice::from_ref(&record)).await.unwrap();
        store.record_usage(&[record.clone(), record.clone()]).await.unwrap();
    }

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.migrate().await.unwrap(), 0);
    let query = UsageQuery {
        key_id: None,
        team: None,
        model: None,
        since: at - time::Duration::hours(1),
        until: at + time::Duration::hours(1),
        group_by: UsageGrouping::Key,
    };
    let rows = store.usage_report(&query).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].requests, rows[0].cost_pico), (3, 21), "kept across the reopen");
    assert_eq!(rows[0].prompt_tokens, i64::MAX as u64, "saturated, not failed");
    assert_eq!(rows[0].completion_tokens, i64::MAX as u64);
}

#[tokio::test]
async fn a_negative_stored_count_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let store = SqliteStore::open(&path).unwrap();
    store.migrate().await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    // The CHECK constraints refuse negative counts; a broken file could still hold one.
    raw.execute_batch("PRAGMA ignore_check_constraints = ON").unwrap();
    raw.execute("INSERT INTO usage_hourly VALUES (0, 'key_1', NULL, 'm', -1, 0, 0, 0, 0)", []).unwrap();

    let result = store.usage_totals_since(OffsetDateTime::UNIX_EPOCH).await;
    assert!(matches!(result, Ok(ref totals) if totals.len() == 1), "sums of the other columns are fine: {result:?}");
    let query = UsageQuery {
        key_id: None,
        team: None,
        model: None,
        since: OffsetDateTime::UNIX_EPOCH,
        until: OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1),
        group_by: UsageGrouping::Hour,
    };
    let result = store.usage_report(&query).await;
    assert!(matches!(result, Err(StoreError::Corrupt(_))), "got {result:?}");
}

/// The main file and its write-ahead log, back to back.
fn database_bytes(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    match std::fs::read(&wal) {
        Ok(log) => bytes.extend(log),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    Ok(bytes)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}
