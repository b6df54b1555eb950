//! The change log: `changes`, one row per admin mutation, and `changes_pruned`, the highest seq
//! pruning ever deleted (so a follower behind it learns that it missed something).

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Transaction};
use portcullis_store::{Change, ChangeLog, ChangePage, StoreResult};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::PostgresStore;
use crate::codec::{get, secs};
use crate::error::corrupt;
use crate::sql::{execute, query, query_one};

/// `pg_advisory_xact_lock` key that makes change seqs follow commit order ("pcl-chng").
pub(crate) const CHANGES_LOCK: i64 = 0x7063_6c2d_6368_6e67;
/// The channel mutations notify with their seq.
pub(crate) const CHANNEL: &str = "portcullis_changes";

pub(crate) const LATEST: &str = "SELECT GREATEST((SELECT COALESCE(MAX(seq), 0) FROM changes),
                                      (SELECT COALESCE(MAX(seq), 0) FROM changes_pruned))";

#[async_trait]
impl ChangeLog for PostgresStore {
    async fn changes_since(&self, after: u64, limit: usize) -> StoreResult<ChangePage> {
        // Seqs are positive BIGINTs: a cursor above i64::MAX has nothing after it.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        // The page first, then the pruning mark: a prune in between can only make the answer
        // say `truncated` needlessly, never hide a gap.
        let rows =
            query(&client, "SELECT seq, kind, id FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2", &[&after, &limit])
                .await?;
        let changes = rows.iter().map(change_from_row).collect::<StoreResult<Vec<_>>>()?;
        let row = query_one(&client, "SELECT COALESCE(MAX(seq), 0) FROM changes_pruned", &[]).await?;
        let pruned: i64 = get(&row, 0)?;
        Ok(ChangePage { changes, truncated: after < pruned })
    }

    async fn latest_change(&self) -> StoreResult<u64> {
        let client = self.client().await?;
        latest(&client).await
    }

    async fn prune_changes(&self, before: OffsetDateTime) -> StoreResult<u64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(crate::error::db_err)?;
        // Everything up to the newest change recorded before the cut goes, so what remains is
        // one unbroken run after the mark (replica clocks may disagree about `recorded_at`).
        let row = query_one(&tx, "SELECT MAX(seq) FROM changes WHERE recorded_at < $1", &[&secs(before)]).await?;
        let Some(newest_deleted) = get::<Option<i64>>(&row, 0)? else {
            return Ok(0);
        };
        execute(
            &tx,
            "INSERT INTO changes_pruned (id, seq) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET seq = GREATEST(changes_pruned.seq, excluded.seq)",
            &[&newest_deleted],
        )
        .await?;
        let deleted = execute(&tx, "DELETE FROM changes WHERE seq <= $1", &[&newest_deleted]).await?;
        tx.commit().await.map_err(crate::error::db_err)?;
        Ok(deleted)
    }

    fn change_notifications(&self) -> Option<watch::Receiver<u64>> {
        self.start_listener();
        Some(self.inner.changed.subscribe())
    }
}

/// Appends `change` within `tx`, after every change committed before it; returns its seq. The
/// notification goes out when `tx` commits.
pub(crate) async fn append(tx: &Transaction<'_>, change: &Change) -> StoreResult<u64> {
    // Held to commit: no transaction can take a seq until this one's is visible.
    execute(tx, "SELECT pg_advisory_xact_lock($1)", &[&CHANGES_LOCK]).await?;
    let (kind, id) = encode(change);
    let now = secs(OffsetDateTime::now_utc());
    let row = query_one(
        tx,
        "INSERT INTO changes (kind, id, recorded_at) VALUES ($1, $2, $3) RETURNING seq",
        &[&kind, &id, &now],
    )
    .await?;
    let seq: i64 = get(&row, 0)?;
    execute(tx, "SELECT pg_notify($1, $2)", &[&CHANNEL, &seq.to_string()]).await?;
    u64::try_from(seq).map_err(corrupt)
}

/// The newest seq ever appended, pruned or not (identity values are never reused).
pub(crate) async fn latest(client: &impl GenericClient) -> StoreResult<u64> {
    let row = query_one(client, LATEST, &[]).await?;
    let newest: i64 = get(&row, 0)?;
    u64::try_from(newest).map_err(corrupt)
}

/// Records that `seq` is committed: wakes receivers unless they already know of it.
pub(crate) fn saw(changed: &watch::Sender<u64>, seq: u64) {
    changed.send_if_modified(|known| {
        let newer = seq > *known;
        if newer {
            *known = seq;
        }
        newer
    });
}

fn encode(change: &Change) -> (&'static str, &str) {
    match change {
        Change::Key(id) => ("key", id),
        Change::Team(name) => ("team", name),
        Change::AdminToken(id) => ("admin_token", id),
    }
}

fn change_from_row(row: &tokio_postgres::Row) -> StoreResult<(u64, Change)> {
    let seq: i64 = get(row, 0)?;
    let kind: &str = get(row, 1)?;
    let id: String = get(row, 2)?;
    let change = match kind {
        "key" => Change::Key(id),
        "team" => Change::Team(id),
        "admin_token" => Change::AdminToken(id),
        _ => return Err(corrupt(format!("unknown change kind {kind:?}"))),
    };
    Ok((u64::try_from(seq).map_err(corrupt)?, change))
}
