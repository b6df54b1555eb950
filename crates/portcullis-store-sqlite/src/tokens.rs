//! Admin tokens: credentials for the admin API, stored as hashes like key secrets.

use async_trait::async_trait;
use portcullis_store::{AdminTokenRecord, AdminTokenStore, Change, NewAdminToken, StoreError, StoreResult};
use rusqlite::{Connection, OptionalExtension, Row, params};
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::codec::{StoredRole, UnixTime, time_of};
use crate::error::{db_err, insert_err};

#[async_trait]
impl AdminTokenStore for SqliteStore {
    async fn create_token(&self, token: NewAdminToken) -> StoreResult<AdminTokenRecord> {
        self.mutate(move |tx| {
            tx.execute(
                "INSERT INTO admin_tokens (id, name, hash, display_prefix, role, team, created_by, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    token.id,
                    token.name,
                    token.secret_hash,
                    token.display_prefix,
                    StoredRole(token.role),
                    token.team,
                    token.created_by,
                    UnixTime(token.created_at),
                ],
            )
            .map_err(insert_err(format!("admin token {} (or its secret)", token.id)))?;
            Ok((select_token(tx, &token.id)?, Change::AdminToken(token.id)))
        })
        .await
    }

    async fn find_token_by_secret(&self, hash: &[u8; 32]) -> StoreResult<Option<AdminTokenRecord>> {
        let hash = *hash;
        self.call(move |conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {COLUMNS} FROM admin_tokens WHERE hash = ?1")).map_err(db_err)?;
            stmt.query_row([hash], token_from_row).optional().map_err(db_err)
        })
        .await
    }

    async fn list_tokens(&self) -> StoreResult<Vec<AdminTokenRecord>> {
        self.call(|conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM admin_tokens ORDER BY created_at, id"))
                .map_err(db_err)?;
            let tokens = stmt.query_map([], token_from_row).map_err(db_err)?;
            tokens.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn revoke_token(&self, id: &str, at: OffsetDateTime) -> StoreResult<AdminTokenRecord> {
        let id = id.to_owned();
        self.mutate(move |tx| {
            // COALESCE keeps the first revocation time.
            let changed = tx
                .execute(
                    "UPDATE admin_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
                    params![id, UnixTime(at)],
                )
                .map_err(db_err)?;
            if changed == 0 {
                return Err(StoreError::NotFound);
            }
            Ok((select_token(tx, &id)?, Change::AdminToken(id)))
        })
        .await
    }
}

const COLUMNS: &str = "id, name, display_prefix, role, team, created_by, created_at, revoked_at";

fn select_token(conn: &Connection, id: &str) -> StoreResult<AdminTokenRecord> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM admin_tokens WHERE id = ?1")).map_err(db_err)?;
    stmt.query_row([id], token_from_row).map_err(db_err)
}

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<AdminTokenRecord> {
    Ok(AdminTokenRecord {
        id: row.get("id")?,
        name: row.get("name")?,
        display_prefix: row.get("display_prefix")?,
        role: row.get::<_, StoredRole>("role")?.0,
        team: row.get("team")?,
        created_by: row.get("created_by")?,
        created_at: row.get::<_, UnixTime>("created_at")?.0,
        revoked_at: time_of(row.get("revoked_at")?),
    })
}
