//! The change log: `changes`, one row per admin mutation, and `changes_pruned`, the highest seq
//! pruning ever deleted (so a follower behind it learns that it missed something).

use async_trait::async_trait;
use portcullis_store::{Change, ChangeLog, ChangePage, StoreResult};
use rusqlite::types::Type;
use rusqlite::{Connection, Row, Transaction, params};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::SqliteStore;
use crate::codec::UnixTime;
use crate::error::db_err;

#[async_trait]
impl ChangeLog for SqliteStore {
    async fn changes_since(&self, after: u64, limit: usize) -> StoreResult<ChangePage> {
        // Seqs are positive SQLite integers: a cursor above i64::MAX has nothing after it.
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |conn| {
            // One read transaction: the page and the pruning mark are seen at the same moment.
            let tx = conn.transaction().map_err(db_err)?;
            let truncated = after < pruned_through(&tx)?;
            let changes = {
                let mut stmt = tx
                    .prepare_cached("SELECT seq, kind, id FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2")
                    .map_err(db_err)?;
                let rows = stmt.query_map(params![after, limit], change_from_row).map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?
            };
            Ok(ChangePage { changes, truncated })
        })
        .await
    }

    async fn latest_change(&self) -> StoreResult<u64> {
        self.call(|conn| latest(conn)).await
    }

    async fn prune_changes(&self, before: OffsetDateTime) -> StoreResult<u64> {
        self.write(move |tx| {
            // Remember the newest seq deleted before deleting it: `truncated` rests on it.
            let newest_deleted: Option<i64> = tx
                .query_row("SELECT MAX(seq) FROM changes WHERE recorded_at < ?1", [UnixTime(before)], |row| row.get(0))
                .map_err(db_err)?;
            let Some(newest_deleted) = newest_deleted else {
                return Ok(0);
            };
            tx.execute(
                "INSERT INTO changes_pruned (id, seq) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                [newest_deleted],
            )
            .map_err(db_err)?;
            let deleted = tx.execute("DELETE FROM changes WHERE seq <= ?1", [newest_deleted]).map_err(db_err)?;
            Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
        })
        .await
    }

    fn change_notifications(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changed.subscribe())
    }
}

/// Appends `change` within `tx`; returns its seq.
pub(crate) fn append(tx: &Transaction<'_>, change: &Change) -> StoreResult<u64> {
    let (kind, id) = encode(change);
    let seq: i64 = tx
        .prepare_cached("INSERT INTO changes (kind, id, recorded_at) VALUES (?1, ?2, ?3) RETURNING seq")
        .and_then(|mut stmt| stmt.query_row(params![kind, id, UnixTime(OffsetDateTime::now_utc())], |row| row.get(0)))
        .map_err(db_err)?;
    Ok(u64::try_from(seq).unwrap_or(0))
}

/// The newest seq ever appended, pruned or not (AUTOINCREMENT never reuses a seq).
fn latest(conn: &Connection) -> StoreResult<u64> {
    let newest: i64 =
        conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |row| row.get(0)).map_err(db_err)?;
    Ok(u64::try_from(newest.max(pruned_through(conn)?)).unwrap_or(0))
}

/// The highest seq pruning deleted, 0 before any.
fn pruned_through(conn: &Connection) -> StoreResult<i64> {
    conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes_pruned", [], |row| row.get(0)).map_err(db_err)
}

fn encode(change: &Change) -> (&'static str, &str) {
    match change {
        Change::Key(id) => ("key", id),
        Change::Team(name) => ("team", name),
        Change::AdminToken(id) => ("admin_token", id),
    }
}

fn change_from_row(row: &Row<'_>) -> rusqlite::Result<(u64, Change)> {
    let seq: i64 = row.get(0)?;
    let kind: String = row.get(1)?;
    let id: String = row.get(2)?;
    let change = match kind.as_str() {
        "key" => Change::Key(id),
        "team" => Change::Team(id),
        "admin_token" => Change::AdminToken(id),
        _ => {
            let err = format!("unknown change kind {kind:?}").into();
            return Err(rusqlite::Error::FromSqlConversionFailure(1, Type::Text, err));
        }
    };
    let seq = u64::try_from(seq).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, seq))?;
    Ok((seq, change))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        let conn = Connection::open_in_memory().unwrap();
        for change in [Change::Key("k".into()), Change::Team("t".into()), Change::AdminToken("a".into())] {
            let (kind, id) = encode(&change);
            let read = conn.query_row("SELECT 7, ?1, ?2", params![kind, id], change_from_row).unwrap();
            assert_eq!(read, (7, change));
        }
    }
}
