//! The schema, as numbered migrations applied in order, each in its own transaction, and
//! recorded in `schema_migrations` (the runner's statements and checks are shared with the
//! PostgreSQL backend: [`portcullis_store::sql::Migrations`]).

use async_trait::async_trait;
use portcullis_store::sql::{Migration, Migrations};
use portcullis_store::{Migrator, StoreResult};
use rusqlite::{Connection, TransactionBehavior, params};
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::codec::UnixTime;
use crate::error::db_err;
use crate::usage::DIALECT;

/// Append only: an applied migration is never edited, a change is a new migration.
static MIGRATIONS: Migrations = Migrations::new(
    &[
        Migration { version: 1, sql: INITIAL },
        Migration { version: 2, sql: USAGE },
        Migration { version: 3, sql: AUDIT },
        Migration { version: 4, sql: CAPTURE_CONTENT },
        Migration { version: 5, sql: CHANGES },
        Migration { version: 6, sql: INHERITED_TIER },
        Migration { version: 7, sql: AUDIT_CALLER },
        Migration { version: 8, sql: AUDIT_GATEWAY },
    ],
    DIALECT,
);

/// Secrets live apart from keys, so a rotated key keeps its old secrets until their grace ends.
/// Only SHA-256 hashes are stored, never secrets. Lists, limits and metadata are JSON text;
/// times are INTEGER unix seconds.
const INITIAL: &str = "
CREATE TABLE teams (
    name       TEXT PRIMARY KEY NOT NULL,
    tier       TEXT,
    limits     TEXT NOT NULL,
    metadata   TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY NOT NULL,
    name           TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    team           TEXT REFERENCES teams (name),
    tier           TEXT NOT NULL,
    models         TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    allowed_cidrs  TEXT NOT NULL,
    limits         TEXT NOT NULL,
    metadata       TEXT NOT NULL,
    expires_at     INTEGER,
    created_by     TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    last_used_at   INTEGER
) STRICT;

-- Serves list_keys in its order, with or without the team filter.
CREATE INDEX api_keys_by_created ON api_keys (created_at, id);
CREATE INDEX api_keys_by_team ON api_keys (team, created_at, id);

CREATE TABLE api_key_secrets (
    hash        BLOB PRIMARY KEY NOT NULL CHECK (length(hash) = 32),
    key_id      TEXT NOT NULL REFERENCES api_keys (id),
    created_at  INTEGER NOT NULL,
    valid_until INTEGER
) STRICT, WITHOUT ROWID;

CREATE INDEX api_key_secrets_by_key ON api_key_secrets (key_id);

CREATE TABLE admin_tokens (
    id             TEXT PRIMARY KEY NOT NULL,
    name           TEXT NOT NULL,
    hash           BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
    display_prefix TEXT NOT NULL,
    role           TEXT NOT NULL,
    team           TEXT REFERENCES teams (name),
    created_by     TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER
) STRICT;
";

/// Hourly usage roll-ups, one row per (hour, key, model), added to in place. `hour` is the
/// hour's start in unix seconds. No foreign key to `api_keys`: usage outlives keys. Clustered by
/// the primary key, so time ranges read consecutive rows; the indexes serve the key and team
/// filters (the admin API's and a team admin's usual questions).
const USAGE: &str = "
CREATE TABLE usage_hourly (
    hour               INTEGER NOT NULL,
    key_id             TEXT NOT NULL,
    team               TEXT,
    model              TEXT NOT NULL,
    requests           INTEGER NOT NULL CHECK (requests >= 0),
    prompt_tokens      INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens  INTEGER NOT NULL CHECK (completion_tokens >= 0),
    cost_pico          INTEGER NOT NULL CHECK (cost_pico >= 0),
    estimated_requests INTEGER NOT NULL CHECK (estimated_requests >= 0),
    PRIMARY KEY (hour, key_id, model)
) STRICT, WITHOUT ROWID;

CREATE INDEX usage_hourly_by_team ON usage_hourly (team, hour);
CREATE INDEX usage_hourly_by_key ON usage_hourly (key_id, hour);
";

/// The audit log: one column per `AuditRecord` field, so filters use indexes and a row can be
/// read (or, in a tamper test, edited) with plain SQL. `ts` is unix milliseconds; unsigned
/// counts are stored bit for bit in SQLite's signed integers (see `audit.rs`), so every value
/// reads back exactly and verification can recompute each hash. Not `WITHOUT ROWID`: rows that
/// carry content can be large. `audit_by_ts` also holds `node, seq` so the query order needs no
/// sort. `audit_checkpoints` keeps, per node, the last record retention deleted.
const AUDIT: &str = "
CREATE TABLE audit_log (
    node              TEXT NOT NULL,
    seq               INTEGER NOT NULL,
    ts                INTEGER NOT NULL,
    kind              TEXT NOT NULL,
    request_id        TEXT,
    key_id            TEXT,
    subject           TEXT,
    team              TEXT,
    admin_token_id    TEXT,
    client_ip         TEXT,
    method            TEXT,
    path              TEXT,
    model             TEXT,
    upstream          TEXT,
    status            INTEGER NOT NULL,
    decision          TEXT NOT NULL,
    reason            TEXT,
    target            TEXT,
    stream            INTEGER NOT NULL,
    latency_ms        INTEGER NOT NULL,
    ttfb_ms           INTEGER,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    usage_estimated   INTEGER NOT NULL,
    cost_pico         INTEGER,
    user_agent        TEXT,
    content           TEXT,
    prev_hash         TEXT NOT NULL,
    hash              TEXT NOT NULL,
    PRIMARY KEY (node, seq)
) STRICT;

CREATE INDEX audit_by_ts ON audit_log (ts, node, seq);
CREATE INDEX audit_by_key ON audit_log (key_id, ts);
CREATE INDEX audit_by_team ON audit_log (team, ts);
CREATE INDEX audit_by_request ON audit_log (request_id);

CREATE TABLE audit_checkpoints (
    node TEXT PRIMARY KEY NOT NULL,
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
) STRICT;
";

/// The opt-in to content capture, on keys and on teams. Existing rows keep capture off.
const CAPTURE_CONTENT: &str = "
ALTER TABLE api_keys ADD COLUMN capture_content INTEGER NOT NULL DEFAULT 0;
ALTER TABLE teams ADD COLUMN capture_content INTEGER NOT NULL DEFAULT 0;
";

/// The change log followers read to drop stale cache entries. AUTOINCREMENT: a seq is never
/// reused, even after pruning deleted every row. `changes_pruned` holds one row, the highest seq
/// pruning deleted, so a follower whose cursor is below it learns it missed changes.
const CHANGES: &str = "
CREATE TABLE changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    id          TEXT NOT NULL,
    recorded_at INTEGER NOT NULL
) STRICT;

CREATE INDEX changes_by_recorded ON changes (recorded_at);

CREATE TABLE changes_pruned (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
) STRICT;
";

/// A key's tier becomes its own, or none: a key without one follows its team's tier (else
/// `limits.default_tier`) on every request. Keys from before cannot tell a tier copied from their
/// team at creation from one chosen: a key whose tier is its team's is taken to follow it (nothing
/// changes now, and it moves with its team from now on); every other key keeps its tier as its
/// own. SQLite cannot drop a NOT NULL constraint, so the column is replaced under the same name.
const INHERITED_TIER: &str = "
ALTER TABLE api_keys ADD COLUMN own_tier TEXT;
UPDATE api_keys SET own_tier = tier
 WHERE team IS NULL OR tier IS NOT (SELECT teams.tier FROM teams WHERE teams.name = api_keys.team);
ALTER TABLE api_keys DROP COLUMN tier;
ALTER TABLE api_keys RENAME COLUMN own_tier TO tier;
";

/// Token and certificate callers in the audit log: what the caller presented, and who issued the
/// credential and which one it was. Records from before have none (they are hashed in the
/// canonical encoding's version 1, which has no such fields).
const AUDIT_CALLER: &str = "
ALTER TABLE audit_log ADD COLUMN principal_kind TEXT;
ALTER TABLE audit_log ADD COLUMN issuer TEXT;
ALTER TABLE audit_log ADD COLUMN credential_id TEXT;
CREATE INDEX audit_by_subject ON audit_log (subject, ts);
";

/// The gateway that asked the authorizer, on records of its decisions. Records from before have
/// none (they are hashed in the canonical encoding's version 1 or 2, which have no such field);
/// no index: few gateways, and the time range narrows a query first.
const AUDIT_GATEWAY: &str = "
ALTER TABLE audit_log ADD COLUMN gateway TEXT;
";

#[async_trait]
impl Migrator for SqliteStore {
    async fn migrate(&self) -> StoreResult<usize> {
        self.call(apply_pending).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.call(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err)).await
    }
}

fn apply_pending(conn: &mut Connection) -> StoreResult<usize> {
    conn.execute_batch(&MIGRATIONS.create_table()).map_err(db_err)?;
    let newest: Option<i64> = conn.query_row(Migrations::NEWEST, [], |row| row.get(0)).map_err(db_err)?;
    MIGRATIONS.refuse_newer(newest)?;

    let mut applied = 0;
    for migration in MIGRATIONS.list {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
        // Checked inside the transaction: another process may have migrated since we looked.
        let done: bool =
            tx.query_row(&MIGRATIONS.is_applied(), [migration.version], |row| row.get(0)).map_err(db_err)?;
        if done {
            continue;
        }
        tx.execute_batch(migration.sql).map_err(|err| Migrations::failed(migration, err))?;
        tx.execute(&MIGRATIONS.record(), params![migration.version, UnixTime(OffsetDateTime::now_utc())])
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        applied += 1;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with the migrations before `version` applied.
    fn migrated_before(version: i64) -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
            .unwrap();
        for migration in MIGRATIONS.list.iter().filter(|migration| migration.version < version) {
            conn.execute_batch(migration.sql).unwrap();
            conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)", [migration.version])
                .unwrap();
        }
        conn
    }

    #[test]
    fn rows_from_before_capture_content_keep_capture_off() {
        let mut conn = migrated_before(4);
        conn.execute_batch(
            "INSERT INTO teams (name, limits, metadata, created_at) VALUES ('old', '{}', '{}', 0);
             INSERT INTO api_keys (id, name, display_prefix, team, tier, models, scopes, allowed_cidrs, limits,
                                   metadata, created_by, created_at)
             VALUES ('key_old', 'old', 'pcl_old', 'old', 'free', '[]', '[]', '[]', '{}', '{}', 'test', 0);",
        )
        .unwrap();

        assert_eq!(apply_pending(&mut conn).unwrap(), MIGRATIONS.list.len() - 3);
        let flags: (bool, bool) = conn
            .query_row(
                "SELECT k.capture_content, t.capture_content FROM api_keys k JOIN teams t ON t.name = k.team",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!(flags, (false, false), "an upgrade turns capture on for nobody");
    }

    #[test]
    fn keys_from_before_inherited_tiers_follow_their_team_only_when_they_have_its_tier() {
        let mut conn = migrated_before(6);
        conn.execute_batch(
            "INSERT INTO teams (name, tier, limits, metadata, created_at) VALUES ('gold', 'gold', '{}', '{}', 0);
             INSERT INTO teams (name, tier, limits, metadata, created_at) VALUES ('plain', NULL, '{}', '{}', 0);
             INSERT INTO api_keys (id, name, display_prefix, team, tier, models, scopes, allowed_cidrs, limits,
                                   metadata, created_by, created_at)
             VALUES ('key_copied', 'a', 'pcl_a', 'gold', 'gold', '[]', '[]', '[]', '{}', '{}', 'test', 0),
                    ('key_chosen', 'b', 'pcl_b', 'gold', 'free', '[]', '[]', '[]', '{}', '{}', 'test', 0),
                    ('key_plain', 'c', 'pcl_c', 'plain', 'free', '[]', '[]', '[]', '{}', '{}', 'test', 0),
                    ('key_alone', 'd', 'pcl_d', NULL, 'free', '[]', '[]', '[]', '{}', '{}', 'test', 0);",
        )
        .unwrap();

        assert_eq!(apply_pending(&mut conn).unwrap(), MIGRATIONS.list.len() - 5);
        let tiers: Vec<(String, Option<String>)> = conn
            .prepare("SELECT id, tier FROM api_keys ORDER BY id")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
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
        // The column takes keys without a tier of their own now.
        conn.execute("UPDATE api_keys SET tier = NULL WHERE id = 'key_alone'", []).unwrap();
    }

    /// Stores `records` as a schema without the columns of the `absent` fields could.
    fn store_without(conn: &Connection, records: &[portcullis_audit::AuditRecord], absent: &[&str]) {
        use portcullis_audit::AuditRecord;
        let kept: Vec<usize> = (0..AuditRecord::FIELDS.len())
            .filter(|&index| !absent.contains(&AuditRecord::FIELDS[index].name))
            .collect();
        let names: Vec<&str> = kept.iter().map(|&index| AuditRecord::FIELDS[index].name).collect();
        let marks = vec!["?"; kept.len()].join(", ");
        let insert = format!("INSERT INTO audit_log ({}) VALUES ({marks})", names.join(", "));
        for record in records {
            let values = record.values();
            let row: Vec<_> = kept.iter().map(|&index| crate::audit::column_value(values[index])).collect();
            conn.execute(&insert, rusqlite::params_from_iter(row)).unwrap();
        }
    }

    fn stored_records(conn: &Connection) -> Vec<portcullis_audit::AuditRecord> {
        let select = format!("SELECT {} FROM audit_log ORDER BY seq", portcullis_audit::fields::column_list());
        let mut statement = conn.prepare(&select).unwrap();
        statement.query_map([], crate::audit::read_record).unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// Records written before the caller columns existed read back with none, hash as the
    /// canonical version 1 they were sealed in, and the chain goes on across the upgrade with
    /// records that use the new columns.
    #[test]
    fn audit_records_from_before_the_caller_columns_still_verify() {
        use portcullis_audit::chain::{VERSION_2_FIELDS, VERSION_3_FIELDS};
        use portcullis_audit::{
            AuditDecision, AuditEvent, AuditKind, AuditRecord, Chain, PrincipalKind, VerifyStatus, verify_records,
        };

        let mut conn = migrated_before(7);
        let mut chain = Chain::resume("gw-old", None);
        let old: Vec<AuditRecord> = (0..3)
            .map(|i| {
                chain.seal(AuditEvent {
                    key_id: Some(format!("key_{i}")),
                    team: Some("acme".into()),
                    ..AuditEvent::new(OffsetDateTime::UNIX_EPOCH, AuditKind::Request, AuditDecision::Allow, 200)
                })
            })
            .collect();
        // Stored as the schema before version 7 could: without the caller columns (nor the later gateway).
        store_without(&conn, &old, &[VERSION_2_FIELDS.as_slice(), VERSION_3_FIELDS.as_slice()].concat());

        apply_pending(&mut conn).unwrap();
        let token_caller = chain.seal(AuditEvent {
            principal_kind: Some(PrincipalKind::Token),
            subject: Some("svc-ingest".into()),
            issuer: Some("https://idp.example".into()),
            credential_id: Some("jti-1".into()),
            ..AuditEvent::new(OffsetDateTime::UNIX_EPOCH, AuditKind::Request, AuditDecision::Allow, 200)
        });
        store_without(&conn, std::slice::from_ref(&token_caller), &[]);

        let stored = stored_records(&conn);
        assert_eq!(stored[..3], old[..], "old rows read back as they were sealed, with no caller columns");
        assert_eq!(stored[3], token_caller);
        assert_eq!(verify_records("gw-old", None, &stored).status, VerifyStatus::Ok);
        let mut edited = stored.clone();
        edited[1].issuer = Some("https://idp.example".into());
        assert_ne!(
            verify_records("gw-old", None, &edited).status,
            VerifyStatus::Ok,
            "a caller column added later is an edit"
        );
    }

    /// Records written before the gateway column existed (canonical versions 1 and 2) read back
    /// without one and verify; the chain goes on with an authorizer's decision that names its
    /// gateway (version 3), and adding or removing a gateway afterwards is an edit.
    #[test]
    fn audit_records_from_before_the_gateway_column_still_verify() {
        use portcullis_audit::chain::VERSION_3_FIELDS;
        use portcullis_audit::{
            AuditDecision, AuditEvent, AuditKind, AuditRecord, Chain, PrincipalKind, VerifyStatus, canonical_version,
            verify_records,
        };

        let mut conn = migrated_before(8);
        let mut chain = Chain::resume("gw-old", None);
        let request = |ts| AuditEvent::new(ts, AuditKind::Request, AuditDecision::Allow, 200);
        let key_caller = chain.seal(AuditEvent { key_id: Some("key_1".into()), ..request(OffsetDateTime::UNIX_EPOCH) });
        let token_caller = chain.seal(AuditEvent {
            principal_kind: Some(PrincipalKind::Token),
            subject: Some("svc-ingest".into()),
            issuer: Some("https://idp.example".into()),
            ..request(OffsetDateTime::UNIX_EPOCH)
        });
        let old = [key_caller, token_caller];
        assert_eq!(old.each_ref().map(canonical_version), [1, 2]);
        store_without(&conn, &old, &VERSION_3_FIELDS);

        assert_eq!(apply_pending(&mut conn).unwrap(), 1);
        let decision = chain.seal(AuditEvent {
            gateway: Some("nginx".into()),
            principal_kind: Some(PrincipalKind::Key),
            key_id: Some("key_1".into()),
            ..AuditEvent::new(OffsetDateTime::UNIX_EPOCH, AuditKind::Authz, AuditDecision::Deny, 429)
        });
        assert_eq!(canonical_version(&decision), 3);
        store_without(&conn, std::slice::from_ref(&decision), &[]);

        let stored: Vec<AuditRecord> = stored_records(&conn);
        assert_eq!(stored[..2], old[..], "old rows read back as they were sealed, with no gateway");
        assert_eq!(stored[2], decision);
        assert_eq!(verify_records("gw-old", None, &stored).status, VerifyStatus::Ok);
        let mut added = stored.clone();
        added[1].gateway = Some("nginx".into());
        assert_ne!(verify_records("gw-old", None, &added).status, VerifyStatus::Ok, "a gateway added later is an edit");
        let mut removed = stored.clone();
        removed[2].gateway = None;
        assert_ne!(verify_records("gw-old", None, &removed).status, VerifyStatus::Ok, "a removed gateway is an edit");
    }
}
