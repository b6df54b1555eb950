//! The shared conformance story on SQLite, plus what only a file-backed SQLite store can show.

use std::path::Path;
use std::sync::Arc;

use portcullis_store::conformance::planted::{display_prefix, planted_key, planted_token, sha256};
use portcullis_store::{
    Migrator, Rotation, StoreError, Stores, TeamStore, USAGE_MAX, UsageGrouping, UsageQuery, UsageRecord, UsageStore,
    conformance,
};
use portcullis_store_sqlite::SqliteStore;
use time::OffsetDateTime;

/// The store's story, then the audit log's on the same database.
async fn both_stories(store: SqliteStore) {
    let store = Arc::new(store);
    conformance::run_story(&Stores::from_backend(store.clone())).await;
    portcullis_audit::conformance::run_story(store.as_ref(), store.as_ref()).await;
}

#[tokio::test]
async fn story_passes_on_a_file_database() {
    let dir = tempfile::tempdir().unwrap();
    both_stories(SqliteStore::open(&dir.path().join("portcullis.db")).unwrap()).await;
}

#[tokio::test]
async fn story_passes_in_memory() {
    both_stories(SqliteStore::open_in_memory().unwrap()).await;
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
    assert!(matches!(result, Err(StoreError::Unavailable { .. })), "got {result:?}");
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

    // A u64 above i64::MAX is stored as i64::MAX: an INTEGER, never a REAL or a wrapped negative.
    let fresh = UsageRecord { at: at + time::Duration::days(1), prompt_tokens: u64::MAX, ..record };
    store.record_usage(&[fresh]).await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    let stored: (String, i64) = raw
        .query_row(
            "SELECT typeof(prompt_tokens), prompt_tokens FROM usage_hourly WHERE hour > ?1",
            [at.unix_timestamp()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(stored, ("integer".to_string(), i64::MAX));
}

#[tokio::test]
async fn damaged_and_huge_rows_never_fail_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.db");
    let store = SqliteStore::open(&path).unwrap();
    store.migrate().await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    // Written behind the store's back, as an older build or a hand edit could have: many rows
    // at i64::MAX (SQLite's SUM fails on two), and, past the CHECK constraints, negative counts
    // and a key id that is not UTF-8.
    let max = i64::MAX;
    for hour in 0..40 {
        raw.execute(
            "INSERT INTO usage_hourly VALUES (?1 * 3600, 'key_huge', 'team_1', 'm', ?2, ?2, ?2, ?2, ?2)",
            rusqlite::params![hour, max],
        )
        .unwrap();
    }
    raw.execute_batch(&format!(
        "PRAGMA ignore_check_constraints = ON;
         INSERT INTO usage_hourly VALUES (0, 'key_odd', NULL, 'm', -1, {min}, 5, -7, 0);
         INSERT INTO usage_hourly VALUES (3600, 'key_odd', NULL, 'm', 2, 3, 4, 5, 1);
         INSERT INTO usage_hourly VALUES (0, CAST(x'6BFF' AS TEXT), NULL, 'm', 1, 1, 1, 1, 0);",
        min = i64::MIN
    ))
    .unwrap();

    let totals = store.usage_totals_since(OffsetDateTime::UNIX_EPOCH).await.unwrap();
    let totals: Vec<(&str, Option<&str>, u64, u64)> =
        totals.iter().map(|total| (&*total.key_id, total.team.as_deref(), total.tokens, total.cost_pico)).collect();
    assert_eq!(
        totals,
        [("key_huge", Some("team_1"), USAGE_MAX, USAGE_MAX), ("key_odd", None, 12, 5), ("k\u{FFFD}", None, 2, 1)],
        "saturated; a negative count adds nothing; a broken key id is read lossily"
    );
    let query = |group_by| UsageQuery {
        key_id: None,
        team: None,
        model: None,
        since: OffsetDateTime::UNIX_EPOCH,
        until: OffsetDateTime::UNIX_EPOCH + time::Duration::days(2),
        group_by,
    };
    for grouping in UsageGrouping::ALL {
        let rows = store.usage_report(&query(grouping)).await.unwrap();
        assert!(!rows.is_empty(), "{grouping:?}");
    }
    let by_team = store.usage_report(&query(UsageGrouping::Team)).await.unwrap();
    assert_eq!(by_team[0].team.as_deref(), Some("team_1"));
    assert_eq!(by_team[0].requests, USAGE_MAX, "40 rows at i64::MAX sum to i64::MAX");
    assert_eq!(
        [by_team[1].requests, by_team[1].prompt_tokens, by_team[1].completion_tokens, by_team[1].cost_pico],
        [3, 4, 10, 6],
        "the no-team line: key_odd's two rows and the broken key's, negatives as 0"
    );

    // Usage recorded into a damaged row adds to 0 instead of failing the CHECK.
    let record = UsageRecord {
        at: OffsetDateTime::UNIX_EPOCH,
        key_id: "key_odd".into(),
        team: None,
        model: "m".into(),
        requests: 1,
        prompt_tokens: 1,
        completion_tokens: 1,
        cost_pico: 1,
        estimated_requests: 1,
    };
    store.record_usage(&[record]).await.unwrap();
    let stored: (i64, i64, i64, i64) = raw
        .query_row(
            "SELECT requests, prompt_tokens, completion_tokens, cost_pico FROM usage_hourly
             WHERE hour = 0 AND key_id = 'key_odd'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .unwrap();
    assert_eq!(stored, (1, 1, 6, 1));
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
