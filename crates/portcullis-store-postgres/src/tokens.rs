//! Admin tokens: credentials for the admin API, stored as hashes like key secrets.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use portcullis_store::{AdminTokenRecord, AdminTokenStore, Change, NewAdminToken, StoreError, StoreResult};
use time::OffsetDateTime;
use tokio_postgres::Row;

use crate::PostgresStore;
use crate::codec::{from_opt_secs, from_secs, get, role_from, secs};
use crate::error::db_err;
use crate::sql::{execute, insert, query, query_opt};

#[async_trait]
impl AdminTokenStore for PostgresStore {
    async fn create_token(&self, token: NewAdminToken) -> StoreResult<AdminTokenRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        insert(
            &tx,
            "INSERT INTO admin_tokens (id, name, hash, display_prefix, role, team, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &token.id,
                &token.name,
                &token.secret_hash.as_slice(),
                &token.display_prefix,
                &token.role.as_str(),
                &token.team,
                &token.created_by,
                &secs(token.created_at),
            ],
            format!("admin token {} (or its secret)", token.id),
        )
        .await?;
        let record = select_token(&tx, &token.id).await?;
        self.commit_change(tx, &Change::AdminToken(token.id)).await?;
        Ok(record)
    }

    async fn find_token_by_secret(&self, hash: &[u8; 32]) -> StoreResult<Option<AdminTokenRecord>> {
        let client = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM admin_tokens WHERE hash = $1");
        let row = query_opt(&client, &sql, &[&hash.as_slice()]).await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn list_tokens(&self) -> StoreResult<Vec<AdminTokenRecord>> {
        let client = self.client().await?;
        let rows = query(&client, &format!("SELECT {COLUMNS} FROM admin_tokens ORDER BY created_at, id"), &[]).await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, id: &str, at: OffsetDateTime) -> StoreResult<AdminTokenRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        // COALESCE keeps the first revocation time.
        let changed = execute(
            &tx,
            "UPDATE admin_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
            &[&id, &secs(at)],
        )
        .await?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        let record = select_token(&tx, id).await?;
        self.commit_change(tx, &Change::AdminToken(id.to_owned())).await?;
        Ok(record)
    }
}

const COLUMNS: &str = "id, name, display_prefix, role, team, created_by, created_at, revoked_at";

async fn select_token(client: &impl GenericClient, id: &str) -> StoreResult<AdminTokenRecord> {
    let sql = format!("SELECT {COLUMNS} FROM admin_tokens WHERE id = $1");
    let row = query_opt(client, &sql, &[&id]).await?.ok_or(StoreError::NotFound)?;
    token_from_row(&row)
}

fn token_from_row(row: &Row) -> StoreResult<AdminTokenRecord> {
    Ok(AdminTokenRecord {
        id: get(row, 0)?,
        name: get(row, 1)?,
        display_prefix: get(row, 2)?,
        role: role_from(get(row, 3)?)?,
        team: get(row, 4)?,
        created_by: get(row, 5)?,
        created_at: from_secs(get(row, 6)?)?,
        revoked_at: from_opt_secs(get(row, 7)?)?,
    })
}
