//! Usage: hourly roll-ups in `usage_hourly`, added to by upsert, summed by reports.
//!
//! Counts are stored saturated at [`USAGE_MAX`](portcullis_store::USAGE_MAX) and summed with
//! `usage_sum` (see [`crate::figures`]), so no row can make a read fail.

use async_trait::async_trait;
use portcullis_store::sql::{Dialect, Placeholders, ReportColumns, SqlValue, UsageReport};
use portcullis_store::{
    StoreResult, UsageQuery, UsageRecord, UsageRow, UsageStore, UsageTotal, usage_add, usage_count_to_column,
    usage_hour,
};
use rusqlite::types::Value;
use rusqlite::{Row, params, params_from_iter};
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::codec::UnixTime;
use crate::error::db_err;
use crate::figures::{Repairs, count, label};

/// SQLite's way with the SQL it shares with PostgreSQL: `?` parameters, and `usage_sum`.
pub(crate) const DIALECT: Dialect = Dialect {
    placeholders: Placeholders::Question,
    integer: "INTEGER",
    usage_sum: |column| format!("usage_sum({column})"),
    report_extra: "",
};

#[async_trait]
impl UsageStore for SqliteStore {
    async fn record_usage(&self, batch: &[UsageRecord]) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows: Vec<StoredUsage> = batch.iter().map(StoredUsage::from_record).collect();
        self.write(move |tx| {
            // Counts add up, saturating at i64::MAX rather than failing (a failing batch would be
            // retried, and fail, forever): an INTEGER `+` that overflows gives a REAL, which
            // `MIN` replaces with the limit. A stored count below 0 (a damaged row) restarts
            // from 0 instead of failing the CHECK. A row keeps the first team it was given (a
            // key's team never changes).
            let mut stmt = tx
                .prepare_cached(&format!(
                    "INSERT INTO usage_hourly (hour, key_id, team, model, requests, prompt_tokens, completion_tokens,
                                               cost_pico, estimated_requests)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (hour, key_id, model) DO UPDATE SET
                         team = COALESCE(team, excluded.team),
                         requests = MIN(MAX(requests, 0) + excluded.requests, {MAX}),
                         prompt_tokens = MIN(MAX(prompt_tokens, 0) + excluded.prompt_tokens, {MAX}),
                         completion_tokens = MIN(MAX(completion_tokens, 0) + excluded.completion_tokens, {MAX}),
                         cost_pico = MIN(MAX(cost_pico, 0) + excluded.cost_pico, {MAX}),
                         estimated_requests = MIN(MAX(estimated_requests, 0) + excluded.estimated_requests, {MAX})",
                    MAX = i64::MAX
                ))
                .map_err(db_err)?;
            for row in &rows {
                stmt.execute(params![
                    UnixTime(row.hour),
                    row.key_id,
                    row.team,
                    row.model,
                    row.counts[0],
                    row.counts[1],
                    row.counts[2],
                    row.counts[3],
                    row.counts[4],
                ])
                .map_err(db_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn usage_totals_since(&self, since: OffsetDateTime) -> StoreResult<Vec<UsageTotal>> {
        let since = usage_hour(since);
        self.call(move |conn| {
            let repairs = Repairs::start("usage totals");
            // Prompt and completion tokens are summed apart and added here: an SQL `+` of two
            // large sums would overflow into a REAL.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key_id, MAX(team), usage_sum(prompt_tokens), usage_sum(completion_tokens),
                            usage_sum(cost_pico)
                     FROM usage_hourly WHERE hour >= ?1
                     GROUP BY key_id ORDER BY key_id",
                )
                .map_err(db_err)?;
            let totals = stmt
                .query_map([UnixTime(since)], |row| {
                    Ok(UsageTotal {
                        key_id: label(row, 0)?.unwrap_or_default(),
                        team: label(row, 1)?,
                        tokens: usage_add(count(row, 2)?, count(row, 3)?),
                        cost_pico: count(row, 4)?,
                    })
                })
                .map_err(db_err)?;
            let totals = totals.collect::<Result<_, _>>().map_err(db_err)?;
            repairs.finish();
            Ok(totals)
        })
        .await
    }

    async fn usage_report(&self, query: &UsageQuery) -> StoreResult<Vec<UsageRow>> {
        let report = UsageReport::new(query, &DIALECT);
        self.call(move |conn| {
            let repairs = Repairs::start("usage report");
            let statement = &report.statement;
            let mut stmt = conn.prepare_cached(&statement.sql).map_err(db_err)?;
            let values = statement.params.iter().map(|value| match value {
                SqlValue::Integer(value) => Value::Integer(*value),
                SqlValue::Text(value) => Value::Text(value.clone()),
            });
            let rows = stmt
                .query_map(params_from_iter(values), |row| Ok(report.read_row(&mut Columns(row))?.0))
                .map_err(db_err)?;
            let rows = rows.collect::<Result<_, _>>().map_err(db_err)?;
            repairs.finish();
            Ok(rows)
        })
        .await
    }
}

/// A record as written: its hour, and its counts in SQLite's signed integers (saturated).
struct StoredUsage {
    hour: OffsetDateTime,
    key_id: String,
    team: Option<String>,
    model: String,
    /// requests, prompt_tokens, completion_tokens, cost_pico, estimated_requests.
    counts: [i64; 5],
}

impl StoredUsage {
    fn from_record(record: &UsageRecord) -> StoredUsage {
        let counts = [
            record.requests,
            record.prompt_tokens,
            record.completion_tokens,
            record.cost_pico,
            record.estimated_requests,
        ];
        StoredUsage {
            hour: usage_hour(record.at),
            key_id: record.key_id.clone(),
            team: record.team.clone(),
            model: record.model.clone(),
            counts: counts.map(usage_count_to_column),
        }
    }
}

/// A report row read through rusqlite; figures that are not counts are read as the nearest one.
struct Columns<'a, 'row>(&'a Row<'row>);

impl ReportColumns for Columns<'_, '_> {
    type Error = rusqlite::Error;

    fn time(&mut self, index: usize) -> rusqlite::Result<OffsetDateTime> {
        Ok(self.0.get::<_, UnixTime>(index)?.0)
    }

    fn text(&mut self, index: usize) -> rusqlite::Result<Option<String>> {
        label(self.0, index)
    }

    fn count(&mut self, index: usize) -> rusqlite::Result<u64> {
        count(self.0, index)
    }
}
