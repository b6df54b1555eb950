//! API keys and their secrets. A key has one or more secret hashes in `api_key_secrets`: the
//! current one (no end) and, after rotations, older ones that keep working until their end.

use async_trait::async_trait;
use portcullis_store::{
    Change, KeyFilter, KeyPatch, KeyRecord, KeyStore, NewKey, Rotation, SecretMatch, StoreError, StoreResult,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::codec::{Json, UnixTime, time_of};
use crate::error::{db_err, insert_err};

#[async_trait]
impl KeyStore for SqliteStore {
    async fn create_key(&self, key: NewKey) -> StoreResult<KeyRecord> {
        self.mutate(move |tx| {
            tx.execute(
                "INSERT INTO api_keys (id, name, display_prefix, team, tier, models, scopes, allowed_cidrs, limits,
                                       metadata, expires_at, capture_content, created_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    key.id,
                    key.name,
                    key.display_prefix,
                    key.team,
                    key.tier,
                    Json(&key.models),
                    Json(&key.scopes),
                    Json(&key.allowed_cidrs),
                    Json(&key.limits),
                    Json(&key.metadata),
                    key.expires_at.map(UnixTime),
                    key.capture_content,
                    key.created_by,
                    UnixTime(key.created_at),
                ],
            )
            .map_err(insert_err(format!("key {}", key.id)))?;
            insert_secret(tx, &key.id, &key.secret_hash, key.created_at)?;
            Ok((select_key(tx, &key.id)?, Change::Key(key.id)))
        })
        .await
    }

    async fn get_key(&self, id: &str) -> StoreResult<KeyRecord> {
        let id = id.to_owned();
        self.call(move |conn| select_key(conn, &id)).await
    }

    async fn find_key_by_secret(&self, hash: &[u8; 32]) -> StoreResult<Option<SecretMatch>> {
        let hash = *hash;
        self.call(move |conn| {
            let secret = conn
                .prepare_cached("SELECT key_id, valid_until FROM api_key_secrets WHERE hash = ?1")
                .and_then(|mut stmt| {
                    stmt.query_row([hash], |row| Ok((row.get::<_, String>(0)?, row.get::<_, Option<UnixTime>>(1)?)))
                        .optional()
                })
                .map_err(db_err)?;
            let Some((key_id, valid_until)) = secret else {
                return Ok(None);
            };
            // The foreign key guarantees the key row; its absence would be a broken database.
            let key = select_key(conn, &key_id).map_err(|err| match err {
                StoreError::NotFound => StoreError::Corrupt(format!("secret of missing key {key_id}")),
                other => other,
            })?;
            Ok(Some(SecretMatch { key, secret_valid_until: time_of(valid_until) }))
        })
        .await
    }

    async fn list_keys(&self, filter: &KeyFilter) -> StoreResult<Vec<KeyRecord>> {
        let filter = filter.clone();
        self.call(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM api_keys
                     WHERE (?1 IS NULL OR team = ?1) AND (?2 OR revoked_at IS NULL)
                     ORDER BY created_at, id"
                ))
                .map_err(db_err)?;
            let keys = stmt.query_map(params![filter.team, filter.include_revoked], key_from_row).map_err(db_err)?;
            keys.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn update_key(&self, id: &str, patch: KeyPatch) -> StoreResult<KeyRecord> {
        let id = id.to_owned();
        self.mutate(move |tx| {
            let key = patch.apply_to(select_key(tx, &id)?);
            tx.execute(
                "UPDATE api_keys SET name = ?2, tier = ?3, models = ?4, scopes = ?5, allowed_cidrs = ?6, limits = ?7,
                                     metadata = ?8, expires_at = ?9, capture_content = ?10
                 WHERE id = ?1",
                params![
                    key.id,
                    key.name,
                    key.tier,
                    Json(&key.models),
                    Json(&key.scopes),
                    Json(&key.allowed_cidrs),
                    Json(&key.limits),
                    Json(&key.metadata),
                    key.expires_at.map(UnixTime),
                    key.capture_content,
                ],
            )
            .map_err(db_err)?;
            // Read back so the answer shows what was stored (whole-second times).
            Ok((select_key(tx, &id)?, Change::Key(id)))
        })
        .await
    }

    async fn revoke_key(&self, id: &str, at: OffsetDateTime) -> StoreResult<KeyRecord> {
        let id = id.to_owned();
        self.mutate(move |tx| {
            // COALESCE keeps the first revocation time.
            let changed = tx
                .execute(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                    params![id, UnixTime(at)],
                )
                .map_err(db_err)?;
            if changed == 0 {
                return Err(StoreError::NotFound);
            }
            Ok((select_key(tx, &id)?, Change::Key(id)))
        })
        .await
    }

    async fn rotate_key(&self, id: &str, rotation: Rotation) -> StoreResult<KeyRecord> {
        let id = id.to_owned();
        self.mutate(move |tx| {
            let changed = tx
                .execute(
                    "UPDATE api_keys SET display_prefix = ?2 WHERE id = ?1",
                    params![id, rotation.new_display_prefix],
                )
                .map_err(db_err)?;
            if changed == 0 {
                return Err(StoreError::NotFound);
            }
            // Every older secret ends by `old_valid_until`; one already ending sooner keeps its end,
            // so a second rotation with a long grace cannot revive a secret the first one cut short.
            tx.execute(
                "UPDATE api_key_secrets SET valid_until = MIN(COALESCE(valid_until, ?2), ?2) WHERE key_id = ?1",
                params![id, UnixTime(rotation.old_valid_until)],
            )
            .map_err(db_err)?;
            // A rotation carries no time of its own; the secret's created_at is for operators only.
            insert_secret(tx, &id, &rotation.new_secret, OffsetDateTime::now_utc())?;
            Ok((select_key(tx, &id)?, Change::Key(id)))
        })
        .await
    }

    async fn touch_keys(&self, uses: &[(String, OffsetDateTime)]) -> StoreResult<()> {
        if uses.is_empty() {
            return Ok(());
        }
        let uses = uses.to_vec();
        self.write(move |tx| {
            // Batches may arrive out of order: keep the latest time. Unknown ids match no row.
            let mut stmt = tx
                .prepare_cached("UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, ?2), ?2) WHERE id = ?1")
                .map_err(db_err)?;
            for (id, at) in &uses {
                stmt.execute(params![id, UnixTime(*at)]).map_err(db_err)?;
            }
            Ok(())
        })
        .await
    }
}

fn insert_secret(conn: &Connection, key_id: &str, hash: &[u8; 32], created_at: OffsetDateTime) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO api_key_secrets (hash, key_id, created_at, valid_until) VALUES (?1, ?2, ?3, NULL)",
        params![hash, key_id, UnixTime(created_at)],
    )
    .map_err(insert_err(format!("a secret of key {key_id}")))?;
    Ok(())
}

const COLUMNS: &str = "id, name, display_prefix, team, tier, models, scopes, allowed_cidrs, limits, metadata, \
                       expires_at, capture_content, created_by, created_at, revoked_at, last_used_at";

fn select_key(conn: &Connection, id: &str) -> StoreResult<KeyRecord> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM api_keys WHERE id = ?1")).map_err(db_err)?;
    stmt.query_row([id], key_from_row).map_err(db_err)
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    Ok(KeyRecord {
        id: row.get("id")?,
        name: row.get("name")?,
        display_prefix: row.get("display_prefix")?,
        team: row.get("team")?,
        tier: row.get("tier")?,
        models: row.get::<_, Json<_>>("models")?.0,
        scopes: row.get::<_, Json<_>>("scopes")?.0,
        allowed_cidrs: row.get::<_, Json<_>>("allowed_cidrs")?.0,
        limits: row.get::<_, Json<_>>("limits")?.0,
        metadata: row.get::<_, Json<_>>("metadata")?.0,
        expires_at: time_of(row.get("expires_at")?),
        capture_content: row.get("capture_content")?,
        created_by: row.get("created_by")?,
        created_at: row.get::<_, UnixTime>("created_at")?.0,
        revoked_at: time_of(row.get("revoked_at")?),
        last_used_at: time_of(row.get("last_used_at")?),
    })
}
