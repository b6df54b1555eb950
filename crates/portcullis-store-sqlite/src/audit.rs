//! The audit log: `audit_log`, one column per record field, and `audit_checkpoints`.
//!
//! A record reads back equal to the one written, field for field, because verification
//! recomputes every hash from the stored rows. Hence the encodings: `ts` as unix milliseconds
//! (records carry millisecond precision; finer digits are dropped), unsigned integers bit for bit
//! in SQLite's signed INTEGER (a count above `i64::MAX` is stored negative and reads back as
//! itself), kinds and decisions by their serde names. The columns, their order and each value's
//! encoding come from the record's field table ([`AuditRecord::FIELDS`]).

use async_trait::async_trait;
use portcullis_audit::fields::{self, ReadColumns};
use portcullis_audit::{
    AuditCheckpoint, AuditCursor, AuditFilter, AuditRecord, AuditStore, unix_millis, unix_millis_ceil,
};
use portcullis_store::StoreResult;
use rusqlite::types::{ToSqlOutput, Type, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params, params_from_iter};
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::error::db_err;

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let records = records.to_vec();
        self.write_in_background(move |tx| {
            // A record already stored is skipped, and so is one retention already removed (at or
            // below its node's checkpoint): a late replay must not bring deleted history back.
            // Only the (node, seq) clash is ignored; any other failure fails the batch. `OR FAIL`
            // instead of the default `ABORT`: the whole transaction is rolled back on a failure
            // anyway, and with `ABORT` SQLite copies every page an insert touches (the table and
            // five indexes) into a statement journal first, so it could undo just that statement.
            let placeholders: Vec<String> = (1..=AuditRecord::FIELDS.len()).map(|at| format!("?{at}")).collect();
            let mut stmt = tx
                .prepare_cached(&format!(
                    "INSERT OR FAIL INTO audit_log ({}) VALUES ({}) ON CONFLICT (node, seq) DO NOTHING",
                    fields::column_list(),
                    placeholders.join(", "),
                ))
                .map_err(db_err)?;
            // Checkpoints are read once per node and batch (in the same transaction), not per row.
            let mut checkpoints: Vec<(&str, Option<u64>)> = Vec::new();
            for record in &records {
                let checkpoint = match checkpoints.iter().find(|(node, _)| *node == record.node) {
                    Some((_, seq)) => *seq,
                    None => {
                        let seq = select_checkpoint(tx, &record.node)?.map(|checkpoint| checkpoint.seq);
                        checkpoints.push((&record.node, seq));
                        seq
                    }
                };
                if checkpoint.is_some_and(|seq| record.seq <= seq) {
                    continue;
                }
                stmt.execute(params_from_iter(record.values().map(column_value))).map_err(db_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn last_audit(&self, node: &str) -> StoreResult<Option<(u64, String)>> {
        let node = node.to_owned();
        self.call(move |conn| {
            let last = conn
                .prepare_cached("SELECT seq, hash FROM audit_log WHERE node = ?1 ORDER BY seq DESC LIMIT 1")
                .and_then(|mut stmt| {
                    stmt.query_row([&node], |row| Ok((uint(row.get(0)?), chain_hash(row, 1)?))).optional()
                })
                .map_err(db_err)?;
            match last {
                Some(last) => Ok(Some(last)),
                // Retention removed every record: the chain continues from its checkpoint.
                None => Ok(select_checkpoint(conn, &node)?.map(|checkpoint| (checkpoint.seq, checkpoint.hash))),
            }
        })
        .await
    }

    async fn query_audit(
        &self,
        filter: &AuditFilter,
        cursor: Option<&AuditCursor>,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        let (sql, values) = query_sql(filter, cursor, limit);
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = stmt.query_map(params_from_iter(values), read_record).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn audit_chain(&self, node: &str, after_seq: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        let node = node.to_owned();
        self.call(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {} FROM audit_log WHERE node = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                    fields::column_list(),
                ))
                .map_err(db_err)?;
            let rows = stmt.query_map(params![node, int(after_seq), sql_limit(limit)], read_record).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn audit_nodes(&self) -> StoreResult<Vec<String>> {
        self.call(|conn| {
            // Hops from one node to the next along the primary key instead of reading every row.
            let mut stmt = conn
                .prepare_cached(
                    "WITH RECURSIVE logged (node) AS (
                         SELECT MIN(node) FROM audit_log
                         UNION ALL
                         SELECT (SELECT MIN(node) FROM audit_log WHERE node > logged.node)
                         FROM logged WHERE logged.node IS NOT NULL
                     )
                     SELECT node FROM logged WHERE node IS NOT NULL
                     UNION
                     SELECT node FROM audit_checkpoints
                     ORDER BY node",
                )
                .map_err(db_err)?;
            let nodes = stmt.query_map([], |row| row.get(0)).map_err(db_err)?;
            nodes.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn audit_checkpoint(&self, node: &str) -> StoreResult<Option<AuditCheckpoint>> {
        let node = node.to_owned();
        self.call(move |conn| select_checkpoint(conn, &node)).await
    }

    async fn delete_audit_before(&self, before: OffsetDateTime) -> StoreResult<u64> {
        let before = unix_millis_ceil(before);
        self.write(move |tx| {
            let nodes: Vec<String> = {
                let mut stmt =
                    tx.prepare_cached("SELECT DISTINCT node FROM audit_log WHERE ts < ?1").map_err(db_err)?;
                let nodes = stmt.query_map([before], |row| row.get(0)).map_err(db_err)?;
                nodes.collect::<Result<_, _>>().map_err(db_err)?
            };
            let mut deleted = 0;
            for node in nodes {
                deleted += delete_old_prefix(tx, &node, before)?;
            }
            Ok(deleted)
        })
        .await
    }
}

/// Deletes the start of one node's chain up to (not including) its first record at or after
/// `before`, and moves the node's checkpoint to the last record deleted. Only a prefix goes, so
/// what remains is still one unbroken chain from the checkpoint, even where a clock step made
/// `ts` go backwards: an old record after a newer one waits until that one is old too.
fn delete_old_prefix(tx: &Transaction<'_>, node: &str, before: i64) -> StoreResult<u64> {
    let first_kept: Option<i64> = tx
        .prepare_cached("SELECT seq FROM audit_log WHERE node = ?1 AND ts >= ?2 ORDER BY seq LIMIT 1")
        .and_then(|mut stmt| stmt.query_row(params![node, before], |row| row.get(0)).optional())
        .map_err(db_err)?;
    let last_deleted: Option<(i64, String)> = match first_kept {
        Some(first_kept) => tx
            .prepare_cached("SELECT seq, hash FROM audit_log WHERE node = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT 1")
            .and_then(|mut stmt| {
                stmt.query_row(params![node, first_kept], |row| Ok((row.get(0)?, row.get(1)?))).optional()
            }),
        None => tx
            .prepare_cached("SELECT seq, hash FROM audit_log WHERE node = ?1 ORDER BY seq DESC LIMIT 1")
            .and_then(|mut stmt| stmt.query_row([node], |row| Ok((row.get(0)?, row.get(1)?))).optional()),
    }
    .map_err(db_err)?;
    let Some((seq, hash)) = last_deleted else {
        return Ok(0);
    };
    let deleted = tx
        .prepare_cached("DELETE FROM audit_log WHERE node = ?1 AND seq <= ?2")
        .and_then(|mut stmt| stmt.execute(params![node, seq]))
        .map_err(db_err)?;
    // A checkpoint only moves forward.
    tx.prepare_cached(
        "INSERT INTO audit_checkpoints (node, seq, hash) VALUES (?1, ?2, ?3)
         ON CONFLICT (node) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
         WHERE excluded.seq > audit_checkpoints.seq",
    )
    .and_then(|mut stmt| stmt.execute(params![node, seq, hash]))
    .map_err(db_err)?;
    Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
}

fn select_checkpoint(conn: &Connection, node: &str) -> StoreResult<Option<AuditCheckpoint>> {
    conn.prepare_cached("SELECT node, seq, hash FROM audit_checkpoints WHERE node = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([node], |row| {
                Ok(AuditCheckpoint { node: row.get(0)?, seq: uint(row.get(1)?), hash: chain_hash(row, 2)? })
            })
            .optional()
        })
        .map_err(db_err)
}

/// The query's statement and parameters. Only the filters given become conditions, so each
/// combination gets a plan that can use its index; the cursor is a row-value comparison on the
/// order's own columns, which `audit_by_ts` serves as a range.
fn query_sql(filter: &AuditFilter, cursor: Option<&AuditCursor>, limit: usize) -> (String, Vec<Value>) {
    let mut conditions: Vec<&str> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(since) = filter.since {
        conditions.push("ts >= ?");
        values.push(Value::Integer(unix_millis_ceil(since)));
    }
    if let Some(until) = filter.until {
        conditions.push("ts < ?");
        values.push(Value::Integer(unix_millis_ceil(until)));
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
    for (condition, value) in texts {
        if let Some(value) = value {
            conditions.push(condition);
            values.push(Value::Text(value.clone()));
        }
    }
    if let Some(status) = filter.status {
        conditions.push("status = ?");
        values.push(Value::Integer(i64::from(status)));
    }
    if let Some(decision) = filter.decision {
        conditions.push("decision = ?");
        values.push(Value::Text(decision.name().into()));
    }
    if let Some(kind) = filter.kind {
        conditions.push("kind = ?");
        values.push(Value::Text(kind.name().into()));
    }
    if let Some(cursor) = cursor {
        conditions.push("(ts, node, seq) > (?, ?, ?)");
        values.extend([
            Value::Integer(unix_millis(cursor.ts)),
            Value::Text(cursor.node.clone()),
            Value::Integer(int(cursor.seq)),
        ]);
    }
    let conditions = if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) };
    values.push(Value::Integer(sql_limit(limit)));
    let columns = fields::column_list();
    (format!("SELECT {columns} FROM audit_log {conditions} ORDER BY ts, node, seq LIMIT ?"), values)
}

pub(crate) fn read_record(row: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    AuditRecord::read(&mut Columns(row))
}

/// A field's value as its column holds it.
pub(crate) fn column_value(value: fields::Value<'_>) -> ToSqlOutput<'_> {
    use fields::Value as Field;
    match value {
        Field::Count(count) => ToSqlOutput::Owned(count.map_or(Value::Null, |count| Value::Integer(int(count)))),
        Field::Status(status) => ToSqlOutput::Owned(Value::Integer(i64::from(status))),
        Field::Millis(millis) => ToSqlOutput::Owned(Value::Integer(millis)),
        Field::Text(Some(text)) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        Field::Text(None) => ToSqlOutput::Owned(Value::Null),
        Field::Flag(flag) => ToSqlOutput::Owned(Value::Integer(i64::from(flag))),
    }
}

/// A row of `audit_log` read in the field table's column order.
struct Columns<'a, 'row>(&'a Row<'row>);

impl ReadColumns for Columns<'_, '_> {
    type Error = rusqlite::Error;

    fn count(&mut self, index: usize) -> rusqlite::Result<Option<u64>> {
        Ok(self.0.get::<_, Option<i64>>(index)?.map(uint))
    }

    fn status(&mut self, index: usize) -> rusqlite::Result<i64> {
        self.0.get(index)
    }

    fn millis(&mut self, index: usize) -> rusqlite::Result<i64> {
        self.0.get(index)
    }

    fn text(&mut self, index: usize) -> rusqlite::Result<Option<String>> {
        self.0.get(index)
    }

    fn flag(&mut self, index: usize) -> rusqlite::Result<bool> {
        self.0.get(index)
    }

    /// Reported as `Corrupt`, like every value SQLite cannot convert.
    fn invalid(&self, index: usize, why: String) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(index, Type::Text, why.into())
    }
}

/// An unsigned value as stored: the same 64 bits as a signed integer.
fn int(value: u64) -> i64 {
    value as i64
}

/// The inverse of [`int`].
fn uint(value: i64) -> u64 {
    value as u64
}

/// The hash a node's chain continues from (its last record's, or its checkpoint's). The writer
/// reads it at start-up, so one that is not UTF-8 (only an edit of the file can store one) is
/// read lossily, with a warning, instead of stopping the start; verification still reports the
/// edited record, whose hash no longer matches.
fn chain_hash(row: &Row<'_>, index: usize) -> rusqlite::Result<String> {
    if let ValueRef::Text(bytes) = row.get_ref(index)?
        && std::str::from_utf8(bytes).is_err()
    {
        tracing::warn!("an audit chain's last hash is not UTF-8 (was the file edited?); read lossily");
        return Ok(String::from_utf8_lossy(bytes).into_owned());
    }
    row.get(index)
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn unsigned_values_keep_every_bit() {
        for value in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(uint(int(value)), value);
        }
    }

    #[tokio::test]
    async fn the_table_has_a_column_for_every_field_and_no_other() {
        let store = SqliteStore::open_in_memory().unwrap();
        portcullis_store::Migrator::migrate(&store).await.unwrap();
        let columns = store
            .call(|conn| {
                let mut stmt = conn
                    .prepare("SELECT name, type, \"notnull\" FROM pragma_table_info('audit_log')")
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, bool>(2)?))
                    })
                    .map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
            })
            .await
            .unwrap();
        let expected: Vec<(String, String, bool)> = AuditRecord::FIELDS
            .iter()
            .map(|field| {
                let sql_type = match field.column {
                    fields::Column::Text => "TEXT",
                    fields::Column::Count | fields::Column::Status | fields::Column::Millis | fields::Column::Flag => {
                        "INTEGER"
                    }
                };
                (field.name.to_string(), sql_type.to_string(), !field.nullable)
            })
            .collect();
        let sorted = |mut columns: Vec<(String, String, bool)>| {
            columns.sort();
            columns
        };
        assert_eq!(sorted(columns), sorted(expected));
    }

    /// SQLite's plan for a query, one detail line per step.
    async fn plan(filter: AuditFilter, cursor: Option<AuditCursor>) -> String {
        let store = SqliteStore::open_in_memory().unwrap();
        portcullis_store::Migrator::migrate(&store).await.unwrap();
        let (sql, values) = query_sql(&filter, cursor.as_ref(), 100);
        store
            .call(move |conn| {
                let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).map_err(db_err)?;
                let rows = stmt.query_map(params_from_iter(values), |row| row.get::<_, String>(3)).map_err(db_err)?;
                Ok(rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?.join("\n"))
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn filters_and_the_cursor_use_indexes() {
        let at = datetime!(2025-06-10 00:00 UTC);
        let by_time = plan(AuditFilter { since: Some(at), ..AuditFilter::default() }, None).await;
        assert!(by_time.contains("audit_by_ts") && !by_time.contains("TEMP B-TREE"), "{by_time}");
        let cursor = AuditCursor { ts: at, node: "n".into(), seq: 7 };
        let paged = plan(AuditFilter::default(), Some(cursor)).await;
        assert!(paged.contains("USING INDEX audit_by_ts (") && !paged.contains("TEMP B-TREE"), "{paged}");
        let by_key = plan(AuditFilter { key_id: Some("k".into()), since: Some(at), ..AuditFilter::default() }, None);
        assert!(by_key.await.contains("audit_by_key"));
        let by_team = plan(AuditFilter { team: Some("t".into()), ..AuditFilter::default() }, None).await;
        assert!(by_team.contains("audit_by_team"), "{by_team}");
        let by_request = plan(AuditFilter { request_id: Some("r".into()), ..AuditFilter::default() }, None).await;
        assert!(by_request.contains("audit_by_request"), "{by_request}");
    }
}
