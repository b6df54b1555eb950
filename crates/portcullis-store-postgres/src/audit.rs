//! The audit log: `audit_log`, one column per record field, and `audit_checkpoints`.
//!
//! A record reads back equal to the one written, field for field, because verification
//! recomputes every hash from the stored rows. Hence the encodings: `ts` as unix milliseconds
//! (records carry millisecond precision; finer digits are dropped), unsigned integers as
//! NUMERIC (`uint64`, exact for every `u64`), kinds and decisions by their serde names. The
//! columns, their order and each value's encoding come from the record's field table
//! ([`AuditRecord::FIELDS`]).
//!
//! Appends take [`AUDIT_LOCK`] shared and retention takes it exclusively: appends never wait for
//! each other, and a checkpoint an append has read cannot move before the append commits.

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::GenericClient;
use futures_util::future::try_join_all;
use portcullis_audit::fields::{self, ReadColumns};
use portcullis_audit::{
    AuditCheckpoint, AuditCursor, AuditFilter, AuditRecord, AuditStore, unix_millis, unix_millis_ceil,
};
use portcullis_store::{StoreError, StoreResult};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::{IsNull, ToSql, Type};

use crate::PostgresStore;
use crate::codec::{Numeric, get};
use crate::error::{corrupt, db_err};
use crate::sql::{execute, query, query_opt};

/// `pg_advisory_xact_lock` key between audit appends and retention ("pcl-audt").
const AUDIT_LOCK: i64 = 0x7063_6c2d_6175_6474;

#[async_trait]
impl AuditStore for PostgresStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        execute(&tx, "SELECT pg_advisory_xact_lock_shared($1)", &[&AUDIT_LOCK]).await?;

        // A record at or below its node's checkpoint was removed by retention: a late replay
        // must not bring deleted history back.
        let mut nodes: Vec<&str> = records.iter().map(|record| record.node.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let rows = query(&tx, "SELECT node, seq FROM audit_checkpoints WHERE node = ANY($1)", &[&nodes]).await?;
        let mut checkpoints: HashMap<String, u64> = HashMap::with_capacity(rows.len());
        for row in &rows {
            checkpoints.insert(get(row, 0)?, get::<Numeric>(row, 1)?.0);
        }
        // In (node, seq) order, so concurrent replays of one chain take its rows in the same
        // order; the sort is stable, so of two records under one (node, seq) the first wins.
        let mut fresh: Vec<&AuditRecord> = records
            .iter()
            .filter(|record| checkpoints.get(&record.node).is_none_or(|checkpointed| record.seq > *checkpointed))
            .collect();
        fresh.sort_by(|a, b| (&a.node, a.seq).cmp(&(&b.node, b.seq)));

        // A record already stored is skipped: only the (node, seq) clash is ignored, any other
        // failure fails the batch.
        let placeholders: Vec<String> = (1..=AuditRecord::FIELDS.len()).map(|at| format!("${at}")).collect();
        let statement = tx
            .prepare_cached(&format!(
                "INSERT INTO audit_log ({}) VALUES ({}) ON CONFLICT (node, seq) DO NOTHING",
                fields::column_list(),
                placeholders.join(", "),
            ))
            .await
            .map_err(db_err)?;
        let (tx_ref, statement) = (&tx, &statement);
        let inserts = fresh.into_iter().map(|record| async move {
            let params = record.values().map(Param);
            let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|param| param as _).collect();
            tx_ref.execute(statement, &params).await
        });
        try_join_all(inserts).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn last_audit(&self, node: &str) -> StoreResult<Option<(u64, String)>> {
        let client = self.client().await?;
        let last =
            query_opt(&client, "SELECT seq, hash FROM audit_log WHERE node = $1 ORDER BY seq DESC LIMIT 1", &[&node])
                .await?;
        match last {
            Some(row) => Ok(Some((get::<Numeric>(&row, 0)?.0, get(&row, 1)?))),
            // Retention removed every record: the chain continues from its checkpoint.
            None => Ok(select_checkpoint(&client, node).await?.map(|checkpoint| (checkpoint.seq, checkpoint.hash))),
        }
    }

    async fn query_audit(
        &self,
        filter: &AuditFilter,
        cursor: Option<&AuditCursor>,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        let (sql, values) = query_sql(filter, cursor, limit);
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|value| value.as_ref() as _).collect();
        let client = self.client().await?;
        let rows = query(&client, &sql, &params).await?;
        rows.iter().map(read_record).collect()
    }

    async fn audit_chain(&self, node: &str, after_seq: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        let client = self.client().await?;
        let rows = query(
            &client,
            &format!(
                "SELECT {} FROM audit_log WHERE node = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                fields::column_list()
            ),
            &[&node, &Numeric(after_seq), &sql_limit(limit)],
        )
        .await?;
        rows.iter().map(read_record).collect()
    }

    async fn audit_nodes(&self) -> StoreResult<Vec<String>> {
        let client = self.client().await?;
        // Hops from one node to the next along the primary key instead of reading every row.
        let rows = query(
            &client,
            "WITH RECURSIVE logged (node) AS (
                 (SELECT node FROM audit_log ORDER BY node LIMIT 1)
                 UNION ALL
                 SELECT (SELECT a.node FROM audit_log a WHERE a.node > logged.node ORDER BY a.node LIMIT 1)
                 FROM logged WHERE logged.node IS NOT NULL
             )
             SELECT node FROM logged WHERE node IS NOT NULL
             UNION
             SELECT node FROM audit_checkpoints
             ORDER BY node",
            &[],
        )
        .await?;
        rows.iter().map(|row| get(row, 0)).collect()
    }

    async fn audit_checkpoint(&self, node: &str) -> StoreResult<Option<AuditCheckpoint>> {
        let client = self.client().await?;
        select_checkpoint(&client, node).await
    }

    async fn delete_audit_before(&self, before: OffsetDateTime) -> StoreResult<u64> {
        let before = unix_millis_ceil(before);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        execute(&tx, "SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK]).await?;
        let rows = query(&tx, "SELECT DISTINCT node FROM audit_log WHERE ts < $1 ORDER BY node", &[&before]).await?;
        let mut deleted = 0;
        for row in &rows {
            let node: String = get(row, 0)?;
            deleted += delete_old_prefix(&tx, &node, before).await?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(deleted)
    }
}

/// Deletes the start of one node's chain up to (not including) its first record at or after
/// `before`, and moves the node's checkpoint to the last record deleted. Only a prefix goes, so
/// what remains is still one unbroken chain from the checkpoint, even where a clock step made
/// `ts` go backwards: an old record after a newer one waits until that one is old too.
async fn delete_old_prefix(client: &impl GenericClient, node: &str, before: i64) -> StoreResult<u64> {
    let first_kept = query_opt(
        client,
        "SELECT seq FROM audit_log WHERE node = $1 AND ts >= $2 ORDER BY seq LIMIT 1",
        &[&node, &before],
    )
    .await?
    .map(|row| get::<Numeric>(&row, 0))
    .transpose()?;
    let last_deleted = match first_kept {
        Some(first_kept) => {
            query_opt(
                client,
                "SELECT seq, hash FROM audit_log WHERE node = $1 AND seq < $2 ORDER BY seq DESC LIMIT 1",
                &[&node, &first_kept],
            )
            .await?
        }
        None => {
            query_opt(client, "SELECT seq, hash FROM audit_log WHERE node = $1 ORDER BY seq DESC LIMIT 1", &[&node])
                .await?
        }
    };
    let Some(last_deleted) = last_deleted else {
        return Ok(0);
    };
    let seq: Numeric = get(&last_deleted, 0)?;
    let hash: String = get(&last_deleted, 1)?;
    let deleted = execute(client, "DELETE FROM audit_log WHERE node = $1 AND seq <= $2", &[&node, &seq]).await?;
    // A checkpoint only moves forward.
    execute(
        client,
        "INSERT INTO audit_checkpoints (node, seq, hash) VALUES ($1, $2, $3)
         ON CONFLICT (node) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
         WHERE excluded.seq > audit_checkpoints.seq",
        &[&node, &seq, &hash],
    )
    .await?;
    Ok(deleted)
}

async fn select_checkpoint(client: &impl GenericClient, node: &str) -> StoreResult<Option<AuditCheckpoint>> {
    let row = query_opt(client, "SELECT node, seq, hash FROM audit_checkpoints WHERE node = $1", &[&node]).await?;
    row.map(|row| Ok(AuditCheckpoint { node: get(&row, 0)?, seq: get::<Numeric>(&row, 1)?.0, hash: get(&row, 2)? }))
        .transpose()
}

/// A field's value as its column takes it: counts as NUMERIC, the status as INTEGER, times as
/// BIGINT milliseconds. Each value is checked against its column's type, as a plain parameter is.
#[derive(Debug)]
struct Param<'a>(fields::Value<'a>);

impl ToSql for Param<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.to_sql_checked(ty, out)
    }

    /// Each value says itself which types it takes, in [`Param::to_sql_checked`].
    fn accepts(_: &Type) -> bool {
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use fields::Value as Field;
        match self.0 {
            Field::Count(count) => count.map(Numeric).to_sql_checked(ty, out),
            Field::Status(status) => i32::from(status).to_sql_checked(ty, out),
            Field::Millis(millis) => millis.to_sql_checked(ty, out),
            Field::Text(text) => text.to_sql_checked(ty, out),
            Field::Flag(flag) => flag.to_sql_checked(ty, out),
        }
    }
}

/// The query's statement and parameters. Only the filters given become conditions, so each
/// combination gets a plan that can use its index; the cursor is a row-value comparison on the
/// order's own columns, which `audit_by_ts` serves as a range.
fn query_sql(
    filter: &AuditFilter,
    cursor: Option<&AuditCursor>,
    limit: usize,
) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut conditions: Vec<String> = Vec::new();
    let mut values: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut condition = |template: &str, value: Box<dyn ToSql + Sync + Send>| {
        values.push(value);
        conditions.push(template.replace('?', &format!("${}", values.len())));
    };
    if let Some(since) = filter.since {
        condition("ts >= ?", Box::new(unix_millis_ceil(since)));
    }
    if let Some(until) = filter.until {
        condition("ts < ?", Box::new(unix_millis_ceil(until)));
    }
    let texts = [
        ("node = ?", &filter.node),
        ("key_id = ?", &filter.key_id),
        ("subject = ?", &filter.subject),
        ("issuer = ?", &filter.issuer),
        ("gateway = ?", &filter.gateway),
        ("team = ?", &filter.team),
        ("model = ?", &filter.model),
        ("request_id = ?", &filter.request_id),
    ];
    for (template, value) in texts {
        if let Some(value) = value {
            condition(template, Box::new(value.clone()));
        }
    }
    if let Some(status) = filter.status {
        condition("status = ?", Box::new(i32::from(status)));
    }
    if let Some(decision) = filter.decision {
        condition("decision = ?", Box::new(decision.name()));
    }
    if let Some(kind) = filter.kind {
        condition("kind = ?", Box::new(kind.name()));
    }
    if let Some(cursor) = cursor {
        values.push(Box::new(unix_millis(cursor.ts)));
        values.push(Box::new(cursor.node.clone()));
        values.push(Box::new(Numeric(cursor.seq)));
        let n = values.len();
        conditions.push(format!("(ts, node, seq) > (${}, ${}, ${n})", n - 2, n - 1));
    }
    let conditions = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    values.push(Box::new(sql_limit(limit)));
    let sql = format!(
        "SELECT {} FROM audit_log {conditions} ORDER BY ts, node, seq LIMIT ${}",
        fields::column_list(),
        values.len()
    );
    (sql, values)
}

fn read_record(row: &Row) -> StoreResult<AuditRecord> {
    AuditRecord::read(&mut Columns(row))
}

/// A row of `audit_log` read in the field table's column order; what does not decode is `Corrupt`.
struct Columns<'a>(&'a Row);

impl ReadColumns for Columns<'_> {
    type Error = StoreError;

    fn count(&mut self, index: usize) -> StoreResult<Option<u64>> {
        Ok(get::<Option<Numeric>>(self.0, index)?.map(|Numeric(count)| count))
    }

    fn status(&mut self, index: usize) -> StoreResult<i64> {
        Ok(i64::from(get::<i32>(self.0, index)?))
    }

    fn millis(&mut self, index: usize) -> StoreResult<i64> {
        get(self.0, index)
    }

    fn text(&mut self, index: usize) -> StoreResult<Option<String>> {
        get(self.0, index)
    }

    fn flag(&mut self, index: usize) -> StoreResult<bool> {
        get(self.0, index)
    }

    fn invalid(&self, index: usize, why: String) -> StoreError {
        corrupt(format!("audit_log.{}: {why}", AuditRecord::FIELDS[index].name))
    }
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn parameters_are_numbered_in_order() {
        let filter = AuditFilter {
            since: Some(datetime!(2025-06-10 0:00 UTC)),
            key_id: Some("k".into()),
            status: Some(429),
            ..AuditFilter::default()
        };
        let cursor = AuditCursor { ts: datetime!(2025-06-10 1:00 UTC), node: "n".into(), seq: 7 };
        let (sql, values) = query_sql(&filter, Some(&cursor), 10);
        assert!(
            sql.contains("WHERE ts >= $1 AND key_id = $2 AND status = $3 AND (ts, node, seq) > ($4, $5, $6)"),
            "{sql}"
        );
        assert!(sql.ends_with("LIMIT $7"), "{sql}");
        assert_eq!(values.len(), 7);
    }
}
