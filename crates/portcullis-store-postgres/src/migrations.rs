//! The schema, as numbered migrations applied in order, each in its own transaction, and
//! recorded in `schema_migrations`. Replicas may migrate at the same moment: every migration
//! transaction first takes [`MIGRATION_LOCK`], so one applies each migration and the others
//! then find it done. The runner's statements and checks are shared with the SQLite backend
//! ([`portcullis_store::sql::Migrations`]).

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use portcullis_store::sql::{Migration, Migrations};
use portcullis_store::{Migrator, StoreResult};
use time::OffsetDateTime;

use crate::PostgresStore;
use crate::codec::secs;
use crate::error::db_err;
use crate::usage::DIALECT;

/// `pg_advisory_xact_lock` key serialising migrations across replicas ("pcl-migr").
pub(crate) const MIGRATION_LOCK: i64 = 0x7063_6c2d_6d69_6772;

/// Append only: an applied migration is never edited, a change is a new migration.
static MIGRATIONS: Migrations = Migrations::new(
    &[
        Migration { version: 1, sql: INITIAL },
        Migration { version: 2, sql: USAGE },
        Migration { version: 3, sql: AUDIT },
        Migration { version: 4, sql: CHANGES },
        Migration { version: 5, sql: INHERITED_TIER },
        Migration { version: 6, sql: AUDIT_CALLER },
        Migration { version: 7, sql: AUDIT_GATEWAY },
    ],
    DIALECT,
);

/// Keys, their secrets, teams and admin tokens. Secrets live apart from keys, so a rotated key
/// keeps its old secrets until their grace ends; only SHA-256 hashes are stored. Lists, limits
/// and metadata are JSON text; times are BIGINT unix seconds. Text sorts bytewise (`C`), as in
/// SQLite, so lists come back in the same order on both backends.
const INITIAL: &str = r#"
CREATE TABLE teams (
    name            TEXT COLLATE "C" PRIMARY KEY,
    tier            TEXT COLLATE "C",
    limits          TEXT NOT NULL,
    metadata        TEXT NOT NULL,
    capture_content BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id              TEXT COLLATE "C" PRIMARY KEY,
    name            TEXT COLLATE "C" NOT NULL,
    display_prefix  TEXT COLLATE "C" NOT NULL,
    team            TEXT COLLATE "C" REFERENCES teams (name),
    tier            TEXT COLLATE "C" NOT NULL,
    models          TEXT NOT NULL,
    scopes          TEXT NOT NULL,
    allowed_cidrs   TEXT NOT NULL,
    limits          TEXT NOT NULL,
    metadata        TEXT NOT NULL,
    expires_at      BIGINT,
    capture_content BOOLEAN NOT NULL DEFAULT FALSE,
    created_by      TEXT COLLATE "C" NOT NULL,
    created_at      BIGINT NOT NULL,
    revoked_at      BIGINT,
    last_used_at    BIGINT
);

-- Serves list_keys in its order, with or without the team filter.
CREATE INDEX api_keys_by_created ON api_keys (created_at, id);
CREATE INDEX api_keys_by_team ON api_keys (team, created_at, id);

CREATE TABLE api_key_secrets (
    hash        BYTEA PRIMARY KEY CHECK (octet_length(hash) = 32),
    key_id      TEXT COLLATE "C" NOT NULL REFERENCES api_keys (id),
    created_at  BIGINT NOT NULL,
    valid_until BIGINT
);

CREATE INDEX api_key_secrets_by_key ON api_key_secrets (key_id);

CREATE TABLE admin_tokens (
    id             TEXT COLLATE "C" PRIMARY KEY,
    name           TEXT COLLATE "C" NOT NULL,
    hash           BYTEA NOT NULL UNIQUE CHECK (octet_length(hash) = 32),
    display_prefix TEXT COLLATE "C" NOT NULL,
    role           TEXT COLLATE "C" NOT NULL,
    team           TEXT COLLATE "C" REFERENCES teams (name),
    created_by     TEXT COLLATE "C" NOT NULL,
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT
);

CREATE INDEX admin_tokens_by_created ON admin_tokens (created_at, id);
"#;

/// Hourly usage roll-ups, one row per (hour, key, model), added to in place; `hour` is the
/// hour's start in unix seconds. No foreign key to `api_keys`: usage outlives keys. The primary
/// key serves time ranges; the other indexes the key and team filters.
const USAGE: &str = r#"
CREATE TABLE usage_hourly (
    hour               BIGINT NOT NULL,
    key_id             TEXT COLLATE "C" NOT NULL,
    team               TEXT COLLATE "C",
    model              TEXT COLLATE "C" NOT NULL,
    requests           BIGINT NOT NULL CHECK (requests >= 0),
    prompt_tokens      BIGINT NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens  BIGINT NOT NULL CHECK (completion_tokens >= 0),
    cost_pico          BIGINT NOT NULL CHECK (cost_pico >= 0),
    estimated_requests BIGINT NOT NULL CHECK (estimated_requests >= 0),
    PRIMARY KEY (hour, key_id, model)
);

CREATE INDEX usage_hourly_by_team ON usage_hourly (team, hour);
CREATE INDEX usage_hourly_by_key ON usage_hourly (key_id, hour);
"#;

/// The audit log: one column per `AuditRecord` field, so filters use indexes and a row can be
/// read (or, in a tamper test, edited) with plain SQL. `ts` is unix milliseconds; unsigned values
/// are `uint64` (NUMERIC(20,0) within u64's range), so every value reads back exactly and
/// verification can recompute each hash. `audit_by_ts` also holds `node, seq` so the query order
/// needs no sort. `audit_checkpoints` keeps, per node, the last record retention deleted.
const AUDIT: &str = r#"
CREATE DOMAIN uint64 AS NUMERIC(20, 0) CHECK (VALUE BETWEEN 0 AND 18446744073709551615);

CREATE TABLE audit_log (
    node              TEXT COLLATE "C" NOT NULL,
    seq               uint64 NOT NULL,
    ts                BIGINT NOT NULL,
    kind              TEXT COLLATE "C" NOT NULL,
    request_id        TEXT COLLATE "C",
    key_id            TEXT COLLATE "C",
    subject           TEXT COLLATE "C",
    team              TEXT COLLATE "C",
    admin_token_id    TEXT COLLATE "C",
    client_ip         TEXT COLLATE "C",
    method            TEXT COLLATE "C",
    path              TEXT COLLATE "C",
    model             TEXT COLLATE "C",
    upstream          TEXT COLLATE "C",
    status            INTEGER NOT NULL,
    decision          TEXT COLLATE "C" NOT NULL,
    reason            TEXT COLLATE "C",
    target            TEXT COLLATE "C",
    stream            BOOLEAN NOT NULL,
    latency_ms        uint64 NOT NULL,
    ttfb_ms           uint64,
    prompt_tokens     uint64,
    completion_tokens uint64,
    usage_estimated   BOOLEAN NOT NULL,
    cost_pico         uint64,
    user_agent        TEXT,
    content           TEXT,
    prev_hash         TEXT NOT NULL,
    hash              TEXT NOT NULL,
    PRIMARY KEY (node, seq)
);

CREATE INDEX audit_by_ts ON audit_log (ts, node, seq);
CREATE INDEX audit_by_key ON audit_log (key_id, ts);
CREATE INDEX audit_by_team ON audit_log (team, ts);
CREATE INDEX audit_by_request ON audit_log (request_id);

CREATE TABLE audit_checkpoints (
    node TEXT COLLATE "C" PRIMARY KEY,
    seq  uint64 NOT NULL,
    hash TEXT NOT NULL
);
"#;

/// The change log followers read to drop stale cache entries. Identity values are never reused,
/// even after pruning deleted every row; `changes_pruned` holds one row, the highest seq pruning
/// deleted, so a follower whose cursor is below it learns it missed changes.
const CHANGES: &str = r#"
CREATE TABLE changes (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        TEXT COLLATE "C" NOT NULL,
    id          TEXT COLLATE "C" NOT NULL,
    recorded_at BIGINT NOT NULL
);

CREATE INDEX changes_by_recorded ON changes (recorded_at);

CREATE TABLE changes_pruned (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL
);
"#;

/// A key's tier becomes its own, or none: a key without one follows its team's tier (else
/// `limits.default_tier`) on every request. Keys from before cannot tell a tier copied from their
/// team at creation from one chosen: a key whose tier is its team's is taken to follow it (nothing
/// changes now, and it moves with its team from now on); every other key keeps its tier as its
/// own.
const INHERITED_TIER: &str = r#"
ALTER TABLE api_keys ALTER COLUMN tier DROP NOT NULL;
UPDATE api_keys k SET tier = NULL FROM teams t WHERE t.name = k.team AND t.tier = k.tier;
"#;

/// Token and certificate callers in the audit log: what the caller presented, and who issued the
/// credential and which one it was. Records from before have none (they are hashed in the
/// canonical encoding's version 1, which has no such fields).
const AUDIT_CALLER: &str = r#"
ALTER TABLE audit_log ADD COLUMN principal_kind TEXT COLLATE "C";
ALTER TABLE audit_log ADD COLUMN issuer TEXT COLLATE "C";
ALTER TABLE audit_log ADD COLUMN credential_id TEXT COLLATE "C";
CREATE INDEX audit_by_subject ON audit_log (subject, ts);
"#;

/// The gateway that asked the authorizer, on records of its decisions. Records from before have
/// none (they are hashed in the canonical encoding's version 1 or 2, which have no such field);
/// no index: few gateways, and the time range narrows a query first.
const AUDIT_GATEWAY: &str = r#"
ALTER TABLE audit_log ADD COLUMN gateway TEXT COLLATE "C";
"#;

#[async_trait]
impl Migrator for PostgresStore {
    async fn migrate(&self) -> StoreResult<usize> {
        let mut client = self.client().await?;
        {
            let tx = client.transaction().await.map_err(db_err)?;
            lock(&tx).await?;
            tx.batch_execute(&MIGRATIONS.create_table()).await.map_err(db_err)?;
            let newest: Option<i64> =
                crate::codec::get(&tx.query_one(Migrations::NEWEST, &[]).await.map_err(db_err)?, 0)?;
            MIGRATIONS.refuse_newer(newest)?;
            tx.commit().await.map_err(db_err)?;
        }

        let mut applied = 0;
        for migration in MIGRATIONS.list {
            let tx = client.transaction().await.map_err(db_err)?;
            // Checked under the lock: another replica may have migrated since we looked.
            lock(&tx).await?;
            let done: bool = crate::codec::get(
                &tx.query_one(&MIGRATIONS.is_applied(), &[&migration.version]).await.map_err(db_err)?,
                0,
            )?;
            if done {
                tx.commit().await.map_err(db_err)?;
                continue;
            }
            tx.batch_execute(migration.sql).await.map_err(|err| Migrations::failed(migration, err))?;
            tx.execute(&MIGRATIONS.record(), &[&migration.version, &secs(OffsetDateTime::now_utc())])
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            applied += 1;
        }
        Ok(applied)
    }

    async fn ping(&self) -> StoreResult<()> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(db_err)?;
        Ok(())
    }
}

async fn lock(client: &impl GenericClient) -> StoreResult<()> {
    client.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_by_one() {
        let versions: Vec<i64> = MIGRATIONS.list.iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=MIGRATIONS.list.len() as i64).collect::<Vec<_>>());
    }
}
