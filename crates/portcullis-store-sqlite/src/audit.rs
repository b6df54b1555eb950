//! The audit log: `audit_log`, one column per record field, and `audit_checkpoints`.
//!
//! A record reads back equal to the one written, field for field, because verification
//! recomputes every hash from the stored rows. Hence the encodings: `ts` as unix milliseconds
//! (records carry millisecond precision; finer digits are dropped), unsigned integers bit for bit
//! in SQLite's signed INTEGER (a count above `i64::MAX` is stored negative and reads back as
//! itself), kinds and decisions by their serde names.

use async_trait::async_trait;
use portcullis_store::{
    AuditCheckpoint, AuditCursor, AuditDecision, AuditFilter, AuditKind, AuditRecord, AuditStore, StoreResult,
    unix_millis, unix_millis_ceil,
};
use rusqlite::types::{Type, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params, params_from_iter};
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::error::db_err;

/// Every column, in the order [`read_record`] reads them.
const COLUMNS: &str = "node, seq, ts, kind, request_id, key_id, subject, team, admin_token_id, client_ip, method, \
                       path, model, upstream, status, decision, reason, target, stream, latency_ms, ttfb_ms, \
                       prompt_tokens, completion_tokens, usage_estimated, cost_pico, user_agent, content, prev_hash, \
                       hash";

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
            let mut stmt = tx
                .prepare_cached(&format!(
                    "INSERT OR FAIL INTO audit_log ({COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
                             ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)
                     ON CONFLICT (node, seq) DO NOTHING"
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
                stmt.execute(params![
                    record.node,
                    int(record.seq),
                    unix_millis(record.ts),
                    record.kind.name(),
                    record.request_id,
                    record.key_id,
                    record.subject,
                    record.team,
                    record.admin_token_id,
                    record.client_ip,
                    record.method,
                    record.path,
                    record.model,
                    record.upstream,
                    record.status,
                    record.decision.name(),
                    record.reason,
                    record.target,
                    record.stream,
                    int(record.latency_ms),
                    record.ttfb_ms.map(int),
                    record.prompt_tokens.map(int),
                    record.completion_tokens.map(int),
                    record.usage_estimated,
                    record.cost_pico.map(int),
                    record.user_agent,
                    record.content,
                    record.prev_hash,
                    record.hash,
                ])
                .map_err(db_err)?;
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
                    "SELECT {COLUMNS} FROM audit_log WHERE node = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
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
    (format!("SELECT {COLUMNS} FROM audit_log {conditions} ORDER BY ts, node, seq LIMIT ?"), values)
}

fn read_record(row: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        node: row.get(0)?,
        seq: uint(row.get(1)?),
        ts: from_millis(row.get(2)?, 2)?,
        kind: named(row, 3, AuditKind::from_name)?,
        request_id: row.get(4)?,
        key_id: row.get(5)?,
        subject: row.get(6)?,
        team: row.get(7)?,
        admin_token_id: row.get(8)?,
        client_ip: row.get(9)?,
        method: row.get(10)?,
        path: row.get(11)?,
        model: row.get(12)?,
        upstream: row.get(13)?,
        status: row.get(14)?,
        decision: named(row, 15, AuditDecision::from_name)?,
        reason: row.get(16)?,
        target: row.get(17)?,
        stream: row.get(18)?,
        latency_ms: uint(row.get(19)?),
        ttfb_ms: row.get::<_, Option<i64>>(20)?.map(uint),
        prompt_tokens: row.get::<_, Option<i64>>(21)?.map(uint),
        completion_tokens: row.get::<_, Option<i64>>(22)?.map(uint),
        usage_estimated: row.get(23)?,
        cost_pico: row.get::<_, Option<i64>>(24)?.map(uint),
        user_agent: row.get(25)?,
        content: row.get(26)?,
        prev_hash: row.get(27)?,
        hash: row.get(28)?,
    })
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

fn from_millis(millis: i64, index: usize) -> rusqlite::Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(index, Type::Integer, Box::new(err)))
}

/// A kind or decision column; an unknown name is a conversion error (reported as `Corrupt`).
fn named<T>(row: &Row<'_>, index: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let name: String = row.get(index)?;
    parse(&name).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(index, Type::Text, format!("unknown value {name:?}").into())
    })
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for kind in [AuditKind::Request, AuditKind::Admin, AuditKind::Security] {
            assert_eq!(AuditKind::from_name(kind.name()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
        for decision in [AuditDecision::Allow, AuditDecision::Deny, AuditDecision::Error] {
            assert_eq!(AuditDecision::from_name(decision.name()), Some(decision));
            assert_eq!(serde_json::to_value(decision).unwrap(), decision.name());
        }
        assert_eq!(AuditKind::from_name("Request"), None);
    }

    #[test]
    fn unsigned_values_keep_every_bit() {
        for value in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(uint(int(value)), value);
        }
    }

    #[test]
    fn stored_milliseconds_read_back_as_the_same_time() {
        let exact = datetime!(2025-06-10 12:30:00.123 UTC);
        assert_eq!(from_millis(unix_millis(exact), 0).unwrap(), exact);
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
