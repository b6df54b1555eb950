#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests: a failed unwrap is a failed test")]

//! The shared conformance story on PostgreSQL, plus what only a shared PostgreSQL database can
//! show: what the tables hold, replicas migrating together, schema and value checks.
//! Each test gets a fresh database from `portcullis_testkit`; without a server they skip loudly
//! (and fail with `CI=true`).

use std::sync::Arc;

use portcullis_audit::fields::Column;
use portcullis_audit::{AuditDecision, AuditKind, AuditRecord, AuditStore};
use portcullis_store::conformance::planted::{display_prefix, planted_key, planted_token, sha256};
use portcullis_store::{
    Migrator, NewTeam, Rotation, StoreError, Stores, TeamStore, USAGE_MAX, UsageGrouping, UsageQuery, UsageRecord,
    UsageStore, conformance,
};
use portcullis_store_postgres::{PostgresOptions, PostgresStore};
use portcullis_testkit::PostgresDatabase;
use portcullis_types::admin::LimitOverrides;
use time::OffsetDateTime;
use time::macros::datetime;
use tokio_postgres::NoTls;

fn store(database: &PostgresDatabase) -> PostgresStore {
    PostgresStore::connect(database.url(), PostgresOptions::default()).unwrap()
}

/// A plain connection for looking at (or breaking) the tables behind the store's back.
async fn raw(database: &PostgresDatabase) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(database.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn story_passes() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let store = Arc::new(store(&database));
    conformance::run_story(&Stores::from_backend(store.clone())).await;
    portcullis_audit::conformance::run_story(store.as_ref(), store.as_ref()).await;
}

#[tokio::test]
async fn the_audit_table_has_a_column_for_every_field_and_no_other() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    store(&database).migrate().await.unwrap();
    let rows = raw(&database)
        .await
        .query(
            "SELECT column_name::TEXT, data_type::TEXT, domain_name::TEXT, is_nullable = 'YES'
             FROM information_schema.columns WHERE table_name = 'audit_log' ORDER BY column_name",
            &[],
        )
        .await
        .unwrap();
    let columns: Vec<(String, String, bool)> = rows
        .iter()
        .map(|row| {
            let domain: Option<String> = row.get(2);
            (row.get(0), domain.unwrap_or_else(|| row.get(1)), row.get(3))
        })
        .collect();
    let mut expected: Vec<(String, String, bool)> = AuditRecord::FIELDS
        .iter()
        .map(|field| {
            let sql_type = match field.column {
                Column::Count => "uint64",
                Column::Status => "integer",
                Column::Millis => "bigint",
                Column::Text => "text",
                Column::Flag => "boolean",
            };
            (field.name.to_string(), sql_type.to_string(), field.nullable)
        })
        .collect();
    expected.sort();
    assert_eq!(columns, expected);
}

#[tokio::test]
async fn tables_never_hold_a_secret() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let stores = Stores::from_backend(Arc::new(store(&database)));
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

    // Every row of every table, as JSON text (bytea shows as hex).
    let client = raw(&database).await;
    let tables = client
        .query(
            "SELECT table_name::TEXT FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            &[],
        )
        .await
        .unwrap();
    assert!(tables.len() >= 8, "the scan sees every table: {}", tables.len());
    let mut everything = String::new();
    for table in &tables {
        let name: String = table.get(0);
        let sql = format!("SELECT row_to_json(t)::TEXT FROM \"{}\" t", name.replace('"', "\"\""));
        for row in client.query(&sql, &[]).await.unwrap() {
            everything.push_str(row.get::<_, &str>(0));
            everything.push('\n');
        }
    }
    assert!(everything.contains(&hex(&sha256(key_secret))), "the scan sees stored hashes");
    assert!(everything.contains(&display_prefix(token_secret)), "the scan sees stored text");
    for secret in [key_secret, rotated_secret, token_secret] {
        // The display prefix is stored on purpose; everything after it must not be.
        let hidden = &secret[display_prefix(secret).len()..];
        assert!(!everything.contains(hidden), "a table holds {secret:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrating_at_once_apply_each_migration_once() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let replicas: Vec<PostgresStore> = (0..3).map(|_| store(&database)).collect();
    let runs = replicas.iter().map(|replica| {
        let replica = replica.clone();
        tokio::spawn(async move { replica.migrate().await })
    });
    let applied: Vec<usize> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .map(|joined| joined.unwrap().expect("every replica's migrate succeeds"))
        .collect();

    let client = raw(&database).await;
    let versions: Vec<i64> = client
        .query("SELECT version FROM schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!versions.is_empty());
    assert_eq!(applied.iter().sum::<usize>(), versions.len(), "each migration applied by exactly one: {applied:?}");
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
    for replica in &replicas {
        assert_eq!(replica.migrate().await.unwrap(), 0);
    }
}

/// Migration 5 on keys written before it (the schema rolled back to version 4 by hand): a key
/// whose tier is its team's follows the team from now on; every other key keeps its tier.
#[tokio::test]
async fn keys_from_before_inherited_tiers_follow_their_team_only_when_they_have_its_tier() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let store = store(&database);
    store.migrate().await.unwrap();
    let client = raw(&database).await;
    client
        .batch_execute(
            "DELETE FROM schema_migrations WHERE version = 5;
             ALTER TABLE api_keys ALTER COLUMN tier SET NOT NULL;
             INSERT INTO teams (name, tier, limits, metadata, created_at) VALUES ('gold', 'gold', '{}', '{}', 0);
             INSERT INTO teams (name, tier, limits, metadata, created_at) VALUES ('plain', NULL, '{}', '{}', 0);
             INSERT INTO api_keys (id, name, display_prefix, team, tier, models, scopes, allowed_cidrs, limits,
                                   metadata, created_by, created_at)
             VALUES ('key_copied', 'a', 'pcl_a', 'gold', 'gold', '[]', '[]', '[]', '{}', '{}', 'test', 0),
                    ('key_chosen', 'b', 'pcl_b', 'gold', 'free', '[]', '[]', '[]', '{}', '{}', 'test', 0),
                    ('key_plain', 'c', 'pcl_c', 'plain', 'free', '[]', '[]', '[]', '{}', '{}', 'test', 0),
                    ('key_alone', 'd', 'pcl_d', NULL, 'free', '[]', '[]', '[]', '{}', '{}', 'test', 0);",
        )
        .await
        .unwrap();

    assert_eq!(store.migrate().await.unwrap(), 1);
    let tiers: Vec<(String, Option<String>)> = client
        .query("SELECT id, tier FROM api_keys ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let own = |tier: &str| Some(tier.to_string());
    assert_eq!(
        tiers,
        [
            ("key_alone".to_string(), own("free")),
            ("key_chosen".to_string(), own("free")),
            ("key_copied".to_string(), None),
            ("key_plain".to_string(), own("free")),
        ]
    );
}

#[tokio::test]
async fn schema_from_a_newer_build_is_refused() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let store = store(&database);
    store.migrate().await.unwrap();
    raw(&database)
        .await
        .execute("INSERT INTO schema_migrations (version, applied_at) VALUES (9999, 0)", &[])
        .await
        .unwrap();

    let result = store.migrate().await;
    assert!(matches!(result, Err(StoreError::Unavailable { ref what, .. }) if what.contains("9999")), "got {result:?}");
}

#[tokio::test]
async fn usage_saturates_instead_of_failing() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let store = store(&database);
    store.migrate().await.unwrap();
    let at = datetime!(2024-05-06 07:08 UTC);
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
    store.record_usage(std::slice::from_ref(&record)).await.unwrap();
    store.record_usage(&[record.clone(), record.clone()]).await.unwrap();

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
    assert_eq!((rows[0].requests, rows[0].cost_pico), (3, 21));
    assert_eq!(rows[0].prompt_tokens, i64::MAX as u64, "saturated, not failed");
    assert_eq!(rows[0].completion_tokens, i64::MAX as u64);
    let totals = store.usage_totals_since(at).await.unwrap();
    assert_eq!(totals[0].tokens, i64::MAX as u64, "the total of two saturated sums saturates too");

    // A u64 above i64::MAX is stored as i64::MAX.
    let fresh = UsageRecord { at: at + time::Duration::days(1), ..record };
    store.record_usage(&[fresh]).await.unwrap();
    let row = raw(&database)
        .await
        .query_one("SELECT prompt_tokens FROM usage_hourly WHERE hour > $1", &[&at.unix_timestamp()])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), i64::MAX);
}

#[tokio::test]
async fn audit_numbers_are_plain_numerics() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let store = store(&database);
    store.migrate().await.unwrap();
    let record = AuditRecord {
        seq: u64::MAX,
        ts: datetime!(2025-06-10 12:30:00.123 UTC),
        node: "node-1".into(),
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
        status: 429,
        decision: AuditDecision::Deny,
        reason: None,
        target: None,
        stream: false,
        latency_ms: i64::MAX as u64 + 1,
        ttfb_ms: None,
        prompt_tokens: Some(0),
        completion_tokens: None,
        usage_estimated: false,
        cost_pico: Some(u64::MAX),
        user_agent: None,
        content: None,
        prev_hash: "0".repeat(64),
        hash: "h".into(),
    };
    let small = AuditRecord { seq: 7, ..record.clone() };
    store.append_audit(&[record.clone(), small.clone()]).await.unwrap();

    let row = raw(&database)
        .await
        .query_one(
            "SELECT seq::TEXT, ts, latency_ms::TEXT, cost_pico::TEXT, prompt_tokens::TEXT FROM audit_log
             ORDER BY audit_log.seq DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let columns: (&str, i64, &str, &str, &str) = (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!(
        columns,
        ("18446744073709551615", 1_749_558_600_123, "9223372036854775808", "18446744073709551615", "0")
    );
    // Sorted as numbers: u64::MAX comes after 7, and is the chain's end.
    assert_eq!(store.audit_chain("node-1", 0, 10).await.unwrap(), [small, record.clone()]);
    assert_eq!(store.last_audit("node-1").await.unwrap(), Some((u64::MAX, "h".to_string())));
    assert_eq!(store.audit_chain("node-1", 7, 10).await.unwrap(), [record]);
}

#[tokio::test]
async fn names_sort_bytewise_whatever_the_database_collation() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let store = store(&database);
    store.migrate().await.unwrap();
    for name in ["b", "é", "B", "a", "Z", "_"] {
        store.create_team(team(name)).await.unwrap();
    }
    let names: Vec<String> = store.list_teams().await.unwrap().into_iter().map(|team| team.name).collect();
    assert_eq!(names, ["B", "Z", "_", "a", "b", "é"], "as SQLite sorts them");
}

#[tokio::test]
async fn undecodable_row_is_reported_as_corrupt() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let store = store(&database);
    store.migrate().await.unwrap();
    let client = raw(&database).await;
    client
        .execute("INSERT INTO teams (name, limits, metadata, created_at) VALUES ('broken', 'not json', '{}', 0)", &[])
        .await
        .unwrap();
    let result = store.get_team("broken").await;
    assert!(matches!(result, Err(StoreError::Corrupt(_))), "got {result:?}");
}

#[tokio::test]
async fn damaged_and_huge_rows_never_fail_a_read() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let store = store(&database);
    store.migrate().await.unwrap();
    let client = raw(&database).await;
    // Written behind the store's back: many rows at i64::MAX, and, past the CHECK constraints
    // (dropped here), negative counts, down to i64::MIN, whose sum would not even fit a BIGINT.
    client
        .execute(
            "INSERT INTO usage_hourly
             SELECT hour * 3600, 'key_huge', 'team_1', 'm', $1, $1, $1, $1, $1 FROM generate_series(0, 39) hour",
            &[&i64::MAX],
        )
        .await
        .unwrap();
    for column in ["requests", "prompt_tokens", "completion_tokens", "cost_pico", "estimated_requests"] {
        client
            .execute(&format!("ALTER TABLE usage_hourly DROP CONSTRAINT usage_hourly_{column}_check"), &[])
            .await
            .unwrap();
    }
    client
        .execute(
            "INSERT INTO usage_hourly VALUES (0, 'key_odd', NULL, 'm', -1, $1, 5, -7, 0),
                                             (3600, 'key_odd', NULL, 'm', 2, $1, 4, 5, 1),
                                             (7200, 'key_odd', NULL, 'm', 0, 3, 0, 0, 0)",
            &[&i64::MIN],
        )
        .await
        .unwrap();

    let totals = store.usage_totals_since(OffsetDateTime::UNIX_EPOCH).await.unwrap();
    let totals: Vec<(&str, Option<&str>, u64, u64)> =
        totals.iter().map(|total| (&*total.key_id, total.team.as_deref(), total.tokens, total.cost_pico)).collect();
    assert_eq!(
        totals,
        [("key_huge", Some("team_1"), USAGE_MAX, USAGE_MAX), ("key_odd", None, 12, 5)],
        "saturated; a negative count adds nothing"
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
        [2, 3, 9, 5],
        "key_odd, negatives as 0"
    );

    // Usage recorded into a damaged row adds to 0.
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
    let row = client
        .query_one(
            "SELECT requests, prompt_tokens, completion_tokens, cost_pico FROM usage_hourly
             WHERE hour = 0 AND key_id = 'key_odd'",
            &[],
        )
        .await
        .unwrap();
    let stored: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(stored, (1, 1, 6, 1));
}

fn team(name: &str) -> NewTeam {
    NewTeam {
        name: name.into(),
        tier: None,
        limits: LimitOverrides::default(),
        metadata: serde_json::json!({}),
        capture_content: false,
        created_at: OffsetDateTime::now_utc(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
