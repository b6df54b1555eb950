//! Usage: hourly roll-ups in `usage_hourly`, added to by upsert, summed by reports.
//!
//! No row can make a read fail. `SUM` of BIGINT is NUMERIC, which does not overflow; every sum
//! (and the tokens total, a `+` of two sums) is capped at
//! [`USAGE_MAX`](portcullis_store::USAGE_MAX) before the cast back to BIGINT, and each value is
//! taken as at least 0 before it is summed: a negative count (the CHECK constraints refuse them,
//! so only an edited table holds one) adds nothing, and cannot drag a sum below BIGINT's range
//! either, where the cast would fail. Each read also counts the rows holding such a value and
//! logs a warning when there are any.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use portcullis_store::sql::{Dialect, Placeholders, ReportColumns, SqlValue, UsageReport};
use portcullis_store::{
    StoreError, StoreResult, UsageQuery, UsageRecord, UsageRow, UsageStore, UsageTotal, usage_count_from_column,
    usage_count_to_column, usage_hour,
};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::PostgresStore;
use crate::codec::{from_secs, get, secs};
use crate::error::db_err;
use crate::sql::query;

/// Adds to a count without overflowing BIGINT: the sum is taken as NUMERIC, then capped. A
/// stored count below 0 (a damaged row) restarts from 0 instead of failing the CHECK.
macro_rules! capped_add {
    ($column:literal) => {
        concat!(
            $column,
            " = LEAST(GREATEST(usage_hourly.",
            $column,
            ", 0)::NUMERIC + excluded.",
            $column,
            ", 9223372036854775807)::BIGINT"
        )
    };
}

/// How many of a group's rows hold a negative count: values the sums took as 0.
const DAMAGED: &str = "COUNT(*) FILTER (WHERE LEAST(requests, prompt_tokens, completion_tokens, cost_pico, \
                       estimated_requests) < 0)";

/// Counts saturate at i64::MAX rather than failing (a failing batch would be retried, and fail,
/// forever); a row keeps the first team it was given.
const UPSERT: &str = concat!(
    "INSERT INTO usage_hourly (hour, key_id, team, model, requests, prompt_tokens, completion_tokens, cost_pico,
                               estimated_requests)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (hour, key_id, model) DO UPDATE SET team = COALESCE(usage_hourly.team, excluded.team), ",
    capped_add!("requests"),
    ", ",
    capped_add!("prompt_tokens"),
    ", ",
    capped_add!("completion_tokens"),
    ", ",
    capped_add!("cost_pico"),
    ", ",
    capped_add!("estimated_requests"),
);

/// PostgreSQL's way with the SQL it shares with SQLite: `$n` parameters, capped NUMERIC sums,
/// and the damaged-rows count after a report row's sums.
pub(crate) const DIALECT: Dialect = Dialect {
    placeholders: Placeholders::Dollar,
    integer: "BIGINT",
    usage_sum: |column| format!("LEAST(SUM(GREATEST({column}, 0)), 9223372036854775807)::BIGINT"),
    report_extra: DAMAGED,
};

#[async_trait]
impl UsageStore for PostgresStore {
    async fn record_usage(&self, batch: &[UsageRecord]) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows = roll_up(batch);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let statement = tx.prepare_cached(UPSERT).await.map_err(db_err)?;
        // Sent back to back (pipelined) in row order, so replicas lock shared rows in the same
        // order and never deadlock.
        let (tx_ref, statement) = (&tx, &statement);
        let upserts = rows.iter().map(|((hour, key_id, model), row)| async move {
            let [requests, prompt, completion, cost, estimated] = &row.counts;
            let params: [&(dyn ToSql + Sync); 9] =
                [hour, key_id, &row.team, model, requests, prompt, completion, cost, estimated];
            tx_ref.execute(statement, &params).await
        });
        try_join_all(upserts).await.map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    async fn usage_totals_since(&self, since: OffsetDateTime) -> StoreResult<Vec<UsageTotal>> {
        let since = secs(usage_hour(since));
        let client = self.client().await?;
        // The tokens total adds two NUMERIC sums, which cannot overflow, and is capped after.
        let sql = format!(
            "SELECT key_id, MAX(team),
                    LEAST(SUM(GREATEST(prompt_tokens, 0)) + SUM(GREATEST(completion_tokens, 0)),
                          9223372036854775807)::BIGINT,
                    {cost}, {DAMAGED}
             FROM usage_hourly WHERE hour >= $1
             GROUP BY key_id ORDER BY key_id",
            cost = (DIALECT.usage_sum)("cost_pico"),
        );
        let rows = query(&client, &sql, &[&since]).await?;
        let mut repairs = Repairs::new("usage totals");
        let totals = rows
            .iter()
            .map(|row| {
                repairs.add(row, 4)?;
                Ok(UsageTotal {
                    key_id: get(row, 0)?,
                    team: get(row, 1)?,
                    tokens: repairs.count(row, 2)?,
                    cost_pico: repairs.count(row, 3)?,
                })
            })
            .collect::<StoreResult<_>>()?;
        repairs.finish();
        Ok(totals)
    }

    async fn usage_report(&self, wanted: &UsageQuery) -> StoreResult<Vec<UsageRow>> {
        let report = UsageReport::new(wanted, &DIALECT);
        let params: Vec<&(dyn ToSql + Sync)> = report
            .statement
            .params
            .iter()
            .map(|value| match value {
                SqlValue::Integer(value) => value as &(dyn ToSql + Sync),
                SqlValue::Text(value) => value as _,
            })
            .collect();
        let client = self.client().await?;
        let rows = query(&client, &report.statement.sql, &params).await?;
        let mut repairs = Repairs::new("usage report");
        let report = rows
            .iter()
            .map(|row| {
                let (usage, damaged) = report.read_row(&mut Columns { row, repairs: &mut repairs })?;
                repairs.add(row, damaged)?;
                Ok(usage)
            })
            .collect::<StoreResult<_>>()?;
        repairs.finish();
        Ok(report)
    }
}

/// One upsert's worth: the batch's records for one (hour, key, model), added up.
struct RolledUp {
    /// The first team the batch gives the row.
    team: Option<String>,
    /// requests, prompt_tokens, completion_tokens, cost_pico, estimated_requests (saturated).
    counts: [i64; 5],
}

/// Adds up the batch per (hour, key, model) in key order: one statement may not touch a row
/// twice, and the sums equal adding each record in turn (saturation included).
fn roll_up(batch: &[UsageRecord]) -> BTreeMap<(i64, &str, &str), RolledUp> {
    let mut rows: BTreeMap<(i64, &str, &str), RolledUp> = BTreeMap::new();
    for record in batch {
        let key = (secs(usage_hour(record.at)), record.key_id.as_str(), record.model.as_str());
        let counts = [
            record.requests,
            record.prompt_tokens,
            record.completion_tokens,
            record.cost_pico,
            record.estimated_requests,
        ]
        .map(usage_count_to_column);
        let row = rows.entry(key).or_insert(RolledUp { team: None, counts: [0; 5] });
        if row.team.is_none() {
            row.team.clone_from(&record.team);
        }
        for (sum, count) in row.counts.iter_mut().zip(counts) {
            *sum = sum.saturating_add(count);
        }
    }
    rows
}

/// A report row read through tokio-postgres, its sums through [`Repairs`].
struct Columns<'a> {
    row: &'a Row,
    repairs: &'a mut Repairs,
}

impl ReportColumns for Columns<'_> {
    type Error = StoreError;

    fn time(&mut self, index: usize) -> StoreResult<OffsetDateTime> {
        from_secs(get(self.row, index)?)
    }

    fn text(&mut self, index: usize) -> StoreResult<Option<String>> {
        get(self.row, index)
    }

    fn count(&mut self, index: usize) -> StoreResult<u64> {
        self.repairs.count(self.row, index)
    }
}

/// What one read found that was not a count, logged once when it is done.
struct Repairs {
    what: &'static str,
    /// Rows with a negative count (the statement's damaged-rows column, summed over groups).
    rows: u64,
    /// Result values read as the nearest count (none, as the statements are written).
    values: u64,
}

impl Repairs {
    fn new(what: &'static str) -> Repairs {
        Repairs { what, rows: 0, values: 0 }
    }

    /// Adds a group's count of damaged rows, in column `index`.
    fn add(&mut self, row: &Row, index: usize) -> StoreResult<()> {
        let damaged: i64 = get(row, index)?;
        self.rows = self.rows.saturating_add(damaged.unsigned_abs());
        Ok(())
    }

    /// A sum in column `index`; a negative one (which the statements cannot produce) reads as 0.
    fn count(&mut self, row: &Row, index: usize) -> StoreResult<u64> {
        let value: i64 = get(row, index)?;
        Ok(usage_count_from_column(value).unwrap_or_else(|| {
            self.values = self.values.saturating_add(1);
            0
        }))
    }

    fn finish(self) {
        if self.rows > 0 || self.values > 0 {
            tracing::warn!(
                read = self.what,
                rows = self.rows,
                values = self.values,
                "usage rows hold negative counts (the schema refuses them: was the table edited?); read as 0"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn record(key: &str, team: Option<&str>, requests: u64) -> UsageRecord {
        UsageRecord {
            at: datetime!(2025-06-10 12:30 UTC),
            key_id: key.into(),
            team: team.map(Into::into),
            model: "m".into(),
            requests,
            prompt_tokens: u64::MAX,
            completion_tokens: 1,
            cost_pico: i64::MAX as u64 - 1,
            estimated_requests: 0,
        }
    }

    #[test]
    fn a_batch_rolls_up_per_row_in_key_order() {
        let batch =
            [record("b", None, 1), record("a", Some("t1"), 2), record("b", Some("t2"), 3), record("b", Some("t3"), 4)];
        let rows = roll_up(&batch);
        let keys: Vec<&str> = rows.keys().map(|(_, key, _)| *key).collect();
        assert_eq!(keys, ["a", "b"]);
        let b = rows.values().nth(1).unwrap();
        assert_eq!(b.team.as_deref(), Some("t2"), "the first team given");
        assert_eq!(b.counts, [8, i64::MAX, 3, i64::MAX, 0], "sums saturate at i64::MAX");
    }
}
