//! API keys and their secrets. A key has one or more secret hashes in `api_key_secrets`: the
//! current one (no end) and, after rotations, older ones that keep working until their end.

use std::collections::BTreeMap;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use futures_util::future::try_join_all;
use portcullis_store::{
    Change, KeyFilter, KeyPatch, KeyRecord, KeyStore, NewKey, Rotation, SecretMatch, StoreError, StoreResult,
};
use time::OffsetDateTime;
use tokio_postgres::Row;

use crate::PostgresStore;
use crate::codec::{from_json, from_opt_secs, from_secs, get, secs, to_json};
use crate::error::db_err;
use crate::sql::{execute, insert, query, query_opt};

#[async_trait]
impl KeyStore for PostgresStore {
    async fn create_key(&self, key: NewKey) -> StoreResult<KeyRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        insert(
            &tx,
            "INSERT INTO api_keys (id, name, display_prefix, team, tier, models, scopes, allowed_cidrs, limits,
                                   metadata, expires_at, capture_content, created_by, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &key.id,
                &key.name,
                &key.display_prefix,
                &key.team,
                &key.tier,
                &to_json(&key.models)?,
                &to_json(&key.scopes)?,
                &to_json(&key.allowed_cidrs)?,
                &to_json(&key.limits)?,
                &to_json(&key.metadata)?,
                &key.expires_at.map(secs),
                &key.capture_content,
                &key.created_by,
                &secs(key.created_at),
            ],
            format!("key {}", key.id),
        )
        .await?;
        insert_secret(&tx, &key.id, &key.secret_hash, key.created_at).await?;
        let record = select_key(&tx, &key.id).await?;
        self.commit_change(tx, &Change::Key(key.id)).await?;
        Ok(record)
    }

    async fn get_key(&self, id: &str) -> StoreResult<KeyRecord> {
        let client = self.client().await?;
        select_key(&client, id).await
    }

    async fn find_key_by_secret(&self, hash: &[u8; 32]) -> StoreResult<Option<SecretMatch>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {COLUMNS}, s.valid_until FROM api_key_secrets s JOIN api_keys k ON k.id = s.key_id
             WHERE s.hash = $1"
        );
        let Some(row) = query_opt(&client, &sql, &[&hash.as_slice()]).await? else {
            return Ok(None);
        };
        let key = key_from_row(&row)?;
        let secret_valid_until = from_opt_secs(get(&row, COLUMN_COUNT)?)?;
        Ok(Some(SecretMatch { key, secret_valid_until }))
    }

    async fn list_keys(&self, filter: &KeyFilter) -> StoreResult<Vec<KeyRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM api_keys k
             WHERE ($1::TEXT IS NULL OR k.team = $1) AND ($2 OR k.revoked_at IS NULL)
             ORDER BY k.created_at, k.id"
        );
        let rows = query(&client, &sql, &[&filter.team, &filter.include_revoked]).await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn update_key(&self, id: &str, patch: KeyPatch) -> StoreResult<KeyRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        // FOR UPDATE: a concurrent patch waits, then patches what this one stored.
        let current = select_key_for_update(&tx, id).await?;
        let key = patch.apply_to(current);
        execute(
            &tx,
            "UPDATE api_keys SET name = $2, tier = $3, models = $4, scopes = $5, allowed_cidrs = $6, limits = $7,
                                 metadata = $8, expires_at = $9, capture_content = $10
             WHERE id = $1",
            &[
                &key.id,
                &key.name,
                &key.tier,
                &to_json(&key.models)?,
                &to_json(&key.scopes)?,
                &to_json(&key.allowed_cidrs)?,
                &to_json(&key.limits)?,
                &to_json(&key.metadata)?,
                &key.expires_at.map(secs),
                &key.capture_content,
            ],
        )
        .await?;
        // Read back so the answer shows what was stored (whole-second times).
        let record = select_key(&tx, id).await?;
        self.commit_change(tx, &Change::Key(id.to_owned())).await?;
        Ok(record)
    }

    async fn revoke_key(&self, id: &str, at: OffsetDateTime) -> StoreResult<KeyRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        // COALESCE keeps the first revocation time.
        let changed =
            execute(&tx, "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1", &[&id, &secs(at)])
                .await?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        let record = select_key(&tx, id).await?;
        self.commit_change(tx, &Change::Key(id.to_owned())).await?;
        Ok(record)
    }

    async fn rotate_key(&self, id: &str, rotation: Rotation) -> StoreResult<KeyRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let changed =
            execute(&tx, "UPDATE api_keys SET display_prefix = $2 WHERE id = $1", &[&id, &rotation.new_display_prefix])
                .await?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        // Every older secret ends by `old_valid_until`; one already ending sooner keeps its end,
        // so a second rotation with a long grace cannot revive a secret the first one cut short.
        execute(
            &tx,
            "UPDATE api_key_secrets SET valid_until = LEAST(COALESCE(valid_until, $2), $2) WHERE key_id = $1",
            &[&id, &secs(rotation.old_valid_until)],
        )
        .await?;
        // A rotation carries no time of its own; the secret's created_at is for operators only.
        insert_secret(&tx, id, &rotation.new_secret, OffsetDateTime::now_utc()).await?;
        let record = select_key(&tx, id).await?;
        self.commit_change(tx, &Change::Key(id.to_owned())).await?;
        Ok(record)
    }

    async fn touch_keys(&self, uses: &[(String, OffsetDateTime)]) -> StoreResult<()> {
        // Batches may arrive out of order: keep the latest time per key. Sorted by id, so two
        // replicas touching the same keys lock them in the same order and never deadlock.
        let mut latest: BTreeMap<&str, i64> = BTreeMap::new();
        for (id, at) in uses {
            let at = secs(*at);
            latest.entry(id).and_modify(|known| *known = (*known).max(at)).or_insert(at);
        }
        if latest.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let statement = tx
            .prepare_cached("UPDATE api_keys SET last_used_at = GREATEST(COALESCE(last_used_at, $2), $2) WHERE id = $1")
            .await
            .map_err(db_err)?;
        // Sent back to back (pipelined), run in order. Unknown ids match no row.
        let (tx_ref, statement) = (&tx, &statement);
        let updates = latest.iter().map(|(id, at)| async move { tx_ref.execute(statement, &[id, at]).await });
        try_join_all(updates).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }
}

async fn insert_secret(
    client: &impl GenericClient,
    key_id: &str,
    hash: &[u8; 32],
    created_at: OffsetDateTime,
) -> StoreResult<()> {
    insert(
        client,
        "INSERT INTO api_key_secrets (hash, key_id, created_at, valid_until) VALUES ($1, $2, $3, NULL)",
        &[&hash.as_slice(), &key_id, &secs(created_at)],
        format!("a secret of key {key_id}"),
    )
    .await?;
    Ok(())
}

/// Every column of a key, in the order [`key_from_row`] reads them (aliased `k`).
const COLUMNS: &str = "k.id, k.name, k.display_prefix, k.team, k.tier, k.models, k.scopes, k.allowed_cidrs, \
                       k.limits, k.metadata, k.expires_at, k.capture_content, k.created_by, k.created_at, \
                       k.revoked_at, k.last_used_at";
const COLUMN_COUNT: usize = 16;

async fn select_key(client: &impl GenericClient, id: &str) -> StoreResult<KeyRecord> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys k WHERE k.id = $1");
    let row = query_opt(client, &sql, &[&id]).await?.ok_or(StoreError::NotFound)?;
    key_from_row(&row)
}

async fn select_key_for_update(client: &impl GenericClient, id: &str) -> StoreResult<KeyRecord> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys k WHERE k.id = $1 FOR UPDATE");
    let row = query_opt(client, &sql, &[&id]).await?.ok_or(StoreError::NotFound)?;
    key_from_row(&row)
}

fn key_from_row(row: &Row) -> StoreResult<KeyRecord> {
    Ok(KeyRecord {
        id: get(row, 0)?,
        name: get(row, 1)?,
        display_prefix: get(row, 2)?,
        team: get(row, 3)?,
        tier: get(row, 4)?,
        models: from_json(get(row, 5)?)?,
        scopes: from_json(get(row, 6)?)?,
        allowed_cidrs: from_json(get(row, 7)?)?,
        limits: from_json(get(row, 8)?)?,
        metadata: from_json(get(row, 9)?)?,
        expires_at: from_opt_secs(get(row, 10)?)?,
        capture_content: get(row, 11)?,
        created_by: get(row, 12)?,
        created_at: from_secs(get(row, 13)?)?,
        revoked_at: from_opt_secs(get(row, 14)?)?,
        last_used_at: from_opt_secs(get(row, 15)?)?,
    })
}
