//! Usage: hourly roll-ups in `usage_hourly`, added to by upsert, summed by reports.

use async_trait::async_trait;
use portcullis_store::{
    StoreResult, UsageGrouping, UsageQuery, UsageRecord, UsageRow, UsageStore, UsageTotal, usage_hour,
};
use rusqlite::types::Value;
use rusqlite::{Row, params, params_from_iter};
use time::OffsetDateTime;

use crate::SqliteStore;
use crate::codec::UnixTime;
use crate::error::db_err;

#[async_trait]
impl UsageStore for SqliteStore {
    async fn record_usage(&self, batch: &[UsageRecord]) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows: Vec<StoredUsage> = batch.iter().map(StoredUsage::from_record).collect();
        self.write(move |tx| {
            // Counts add up, saturating at i64::MAX rather than failing (a failing batch would be
            // retried, and fail, forever); a row keeps the first team it was given (a key's team
            // never changes).
            let mut stmt = tx
                .prepare_cached(&format!(
                    "INSERT INTO usage_hourly (hour, key_id, team, model, requests, prompt_tokens, completion_tokens,
                                               cost_pico, estimated_requests)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (hour, key_id, model) DO UPDATE SET
                         team = COALESCE(team, excluded.team),
                         requests = MIN(requests + excluded.requests, {MAX}),
                         prompt_tokens = MIN(prompt_tokens + excluded.prompt_tokens, {MAX}),
                         completion_tokens = MIN(completion_tokens + excluded.completion_tokens, {MAX}),
                         cost_pico = MIN(cost_pico + excluded.cost_pico, {MAX}),
                         estimated_requests = MIN(estimated_requests + excluded.estimated_requests, {MAX})",
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
            let mut stmt = conn
                .prepare_cached(
                    "SELECT key_id, MAX(team), SUM(prompt_tokens) + SUM(completion_tokens), SUM(cost_pico)
                     FROM usage_hourly WHERE hour >= ?1
                     GROUP BY key_id ORDER BY key_id",
                )
                .map_err(db_err)?;
            let totals = stmt
                .query_map([UnixTime(since)], |row| {
                    Ok(UsageTotal {
                        key_id: row.get(0)?,
                        team: row.get(1)?,
                        tokens: count(row, 2)?,
                        cost_pico: count(row, 3)?,
                    })
                })
                .map_err(db_err)?;
            totals.collect::<Result<_, _>>().map_err(db_err)
        })
        .await
    }

    async fn usage_report(&self, query: &UsageQuery) -> StoreResult<Vec<UsageRow>> {
        let (sql, values) = report_sql(query);
        let grouping = query.group_by;
        self.call(move |conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let rows = stmt.query_map(params_from_iter(values), |row| report_row(row, grouping)).map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
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
            counts: counts.map(|count| i64::try_from(count).unwrap_or(i64::MAX)),
        }
    }
}

const SUMS: &str = "SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_pico), SUM(estimated_requests)";

/// The report's statement and its parameters. Only the filters given become conditions, so each
/// combination gets a plan that can use the key or team index.
fn report_sql(query: &UsageQuery) -> (String, Vec<Value>) {
    let mut conditions = vec!["hour >= ?", "hour < ?"];
    let mut values =
        vec![Value::Integer(usage_hour(query.since).unix_timestamp()), Value::Integer(query.until.unix_timestamp())];
    for (column, filter) in [("key_id = ?", &query.key_id), ("team = ?", &query.team), ("model = ?", &query.model)] {
        if let Some(value) = filter {
            conditions.push(column);
            values.push(Value::Text(value.clone()));
        }
    }
    // (labels selected, GROUP BY, ORDER BY). Days start at midnight UTC; the modulo form floors
    // times before 1970 too.
    let (labels, group, order) = match query.group_by {
        UsageGrouping::Hour => ("hour", "hour", "hour"),
        UsageGrouping::Day => ("hour - ((hour % 86400) + 86400) % 86400 AS day", "day", "day"),
        UsageGrouping::Model => ("model", "model", "model"),
        UsageGrouping::Key => ("key_id, MAX(team)", "key_id", "key_id"),
        UsageGrouping::Team => ("team", "team", "team IS NULL, team"),
    };
    let sql = format!(
        "SELECT {labels}, {SUMS} FROM usage_hourly WHERE {} GROUP BY {group} ORDER BY {order}",
        conditions.join(" AND ")
    );
    (sql, values)
}

fn report_row(row: &Row<'_>, grouping: UsageGrouping) -> rusqlite::Result<UsageRow> {
    let mut report = UsageRow::default();
    let first_sum = match grouping {
        UsageGrouping::Hour | UsageGrouping::Day => {
            report.bucket = Some(row.get::<_, UnixTime>(0)?.0);
            1
        }
        UsageGrouping::Model => {
            report.model = Some(row.get(0)?);
            1
        }
        UsageGrouping::Key => {
            report.key_id = Some(row.get(0)?);
            report.team = row.get(1)?;
            2
        }
        UsageGrouping::Team => {
            report.team = row.get(0)?;
            1
        }
    };
    report.requests = count(row, first_sum)?;
    report.prompt_tokens = count(row, first_sum + 1)?;
    report.completion_tokens = count(row, first_sum + 2)?;
    report.cost_pico = count(row, first_sum + 3)?;
    report.estimated_requests = count(row, first_sum + 4)?;
    Ok(report)
}

/// A stored count or sum; a negative one is a broken row, reported as `Corrupt`.
fn count(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, value))
}
