//! Usage: hourly roll-ups in `usage_hourly`, added to by upsert, summed by reports.

use std::collections::BTreeMap;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use portcullis_store::{
    StoreResult, UsageGrouping, UsageQuery, UsageRecord, UsageRow, UsageStore, UsageTotal, usage_hour,
};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::PostgresStore;
use crate::codec::{from_secs, get, secs};
use crate::error::{corrupt, db_err};
use crate::sql::query;

/// Adds to a count without overflowing BIGINT: the sum is taken as NUMERIC, then capped.
macro_rules! capped_add {
    ($column:literal) => {
        concat!(
            $column,
            " = LEAST(usage_hourly.",
            $column,
            "::NUMERIC + excluded.",
            $column,
            ", 9223372036854775807)::BIGINT"
        )
    };
}

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

/// A sum as BIGINT, capped like the counts it adds up (SUM of BIGINT is NUMERIC).
const SUMS: &str = "LEAST(SUM(requests), 9223372036854775807)::BIGINT, \
                    LEAST(SUM(prompt_tokens), 9223372036854775807)::BIGINT, \
                    LEAST(SUM(completion_tokens), 9223372036854775807)::BIGINT, \
                    LEAST(SUM(cost_pico), 9223372036854775807)::BIGINT, \
                    LEAST(SUM(estimated_requests), 9223372036854775807)::BIGINT";

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
        let rows = query(
            &client,
            "SELECT key_id, MAX(team),
                    LEAST(SUM(prompt_tokens) + SUM(completion_tokens), 9223372036854775807)::BIGINT,
                    LEAST(SUM(cost_pico), 9223372036854775807)::BIGINT
             FROM usage_hourly WHERE hour >= $1
             GROUP BY key_id ORDER BY key_id",
            &[&since],
        )
        .await?;
        rows.iter()
            .map(|row| {
                Ok(UsageTotal {
                    key_id: get(row, 0)?,
                    team: get(row, 1)?,
                    tokens: count(row, 2)?,
                    cost_pico: count(row, 3)?,
                })
            })
            .collect()
    }

    async fn usage_report(&self, wanted: &UsageQuery) -> StoreResult<Vec<UsageRow>> {
        let (sql, values) = report_sql(wanted);
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|value| value.as_ref() as _).collect();
        let client = self.client().await?;
        let rows = query(&client, &sql, &params).await?;
        rows.iter().map(|row| report_row(row, wanted.group_by)).collect()
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
        .map(|count| i64::try_from(count).unwrap_or(i64::MAX));
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

/// The report's statement and its parameters. Only the filters given become conditions, so each
/// combination gets a plan that can use the key or team index.
fn report_sql(query: &UsageQuery) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut conditions = vec!["hour >= $1".to_string(), "hour < $2".to_string()];
    let mut values: Vec<Box<dyn ToSql + Sync + Send>> =
        vec![Box::new(secs(usage_hour(query.since))), Box::new(query.until.unix_timestamp())];
    for (column, filter) in [("key_id", &query.key_id), ("team", &query.team), ("model", &query.model)] {
        if let Some(value) = filter {
            values.push(Box::new(value.clone()));
            conditions.push(format!("{column} = ${}", values.len()));
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

fn report_row(row: &Row, grouping: UsageGrouping) -> StoreResult<UsageRow> {
    let mut report = UsageRow::default();
    let first_sum = match grouping {
        UsageGrouping::Hour | UsageGrouping::Day => {
            report.bucket = Some(from_secs(get(row, 0)?)?);
            1
        }
        UsageGrouping::Model => {
            report.model = Some(get(row, 0)?);
            1
        }
        UsageGrouping::Key => {
            report.key_id = Some(get(row, 0)?);
            report.team = get(row, 1)?;
            2
        }
        UsageGrouping::Team => {
            report.team = get(row, 0)?;
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
fn count(row: &Row, index: usize) -> StoreResult<u64> {
    let value: i64 = get(row, index)?;
    u64::try_from(value).map_err(|_| corrupt(format!("negative count {value} in column {index}")))
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
