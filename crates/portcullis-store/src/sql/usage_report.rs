//! The usage report: one `SELECT` over `usage_hourly` per [`UsageQuery`], and the reading of its
//! rows, which both backends lay out alike (labels, then the five sums).

use time::OffsetDateTime;

use super::{Dialect, SqlValue, Statement};
use crate::{UsageGrouping, UsageQuery, UsageRow, usage_hour};

/// The counts a report sums, in the order its columns come.
const COUNTS: [&str; 5] = ["requests", "prompt_tokens", "completion_tokens", "cost_pico", "estimated_requests"];

/// The report's statement, and where its sums start in each row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub statement: Statement,
    grouping: UsageGrouping,
}

impl UsageReport {
    /// The statement for `query`. Only the filters given become conditions, so each combination
    /// gets a plan that can use the key or team index.
    pub fn new(query: &UsageQuery, dialect: &Dialect) -> UsageReport {
        let mut params = vec![
            SqlValue::Integer(usage_hour(query.since).unix_timestamp()),
            SqlValue::Integer(query.until.unix_timestamp()),
        ];
        let mut conditions =
            vec![format!("hour >= {}", dialect.placeholders.nth(1)), format!("hour < {}", dialect.placeholders.nth(2))];
        for (column, filter) in [("key_id", &query.key_id), ("team", &query.team), ("model", &query.model)] {
            if let Some(value) = filter {
                params.push(SqlValue::Text(value.clone()));
                conditions.push(format!("{column} = {}", dialect.placeholders.nth(params.len())));
            }
        }
        // (labels selected, GROUP BY, ORDER BY). Days start at midnight UTC; the modulo form
        // floors times before 1970 too.
        let (labels, group, order) = match query.group_by {
            UsageGrouping::Hour => ("hour", "hour", "hour"),
            UsageGrouping::Day => ("hour - ((hour % 86400) + 86400) % 86400 AS day", "day", "day"),
            UsageGrouping::Model => ("model", "model", "model"),
            UsageGrouping::Key => ("key_id, MAX(team)", "key_id", "key_id"),
            UsageGrouping::Team => ("team", "team", "team IS NULL, team"),
        };
        let mut columns: Vec<String> = vec![labels.to_string()];
        columns.extend(COUNTS.iter().map(|count| (dialect.usage_sum)(count)));
        if !dialect.report_extra.is_empty() {
            columns.push(dialect.report_extra.to_string());
        }
        let sql = format!(
            "SELECT {} FROM usage_hourly WHERE {} GROUP BY {group} ORDER BY {order}",
            columns.join(", "),
            conditions.join(" AND ")
        );
        UsageReport { statement: Statement { sql, params }, grouping: query.group_by }
    }

    /// Reads one result row: returns it, and the index of the first column after the sums (where
    /// [`Dialect::report_extra`] starts).
    pub fn read_row<C: ReportColumns>(&self, columns: &mut C) -> Result<(UsageRow, usize), C::Error> {
        read_report_row(columns, self.grouping)
    }
}

/// A result row as the report reads it; each backend reads its driver's values its own way.
pub trait ReportColumns {
    type Error;
    /// A bucket's start, stored as unix seconds.
    fn time(&mut self, index: usize) -> Result<OffsetDateTime, Self::Error>;
    fn text(&mut self, index: usize) -> Result<Option<String>, Self::Error>;
    /// A sum, as a count.
    fn count(&mut self, index: usize) -> Result<u64, Self::Error>;
}

/// See [`UsageReport::read_row`].
fn read_report_row<C: ReportColumns>(columns: &mut C, grouping: UsageGrouping) -> Result<(UsageRow, usize), C::Error> {
    let mut report = UsageRow::default();
    let first_sum = match grouping {
        UsageGrouping::Hour | UsageGrouping::Day => {
            report.bucket = Some(columns.time(0)?);
            1
        }
        UsageGrouping::Model => {
            report.model = Some(columns.text(0)?.unwrap_or_default());
            1
        }
        UsageGrouping::Key => {
            report.key_id = Some(columns.text(0)?.unwrap_or_default());
            report.team = columns.text(1)?;
            2
        }
        UsageGrouping::Team => {
            report.team = columns.text(0)?;
            1
        }
    };
    report.requests = columns.count(first_sum)?;
    report.prompt_tokens = columns.count(first_sum + 1)?;
    report.completion_tokens = columns.count(first_sum + 2)?;
    report.cost_pico = columns.count(first_sum + 3)?;
    report.estimated_requests = columns.count(first_sum + 4)?;
    Ok((report, first_sum + COUNTS.len()))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::sql::Placeholders;

    fn dialect(placeholders: Placeholders) -> Dialect {
        Dialect { placeholders, integer: "BIGINT", usage_sum: |column| format!("s({column})"), report_extra: "" }
    }

    fn query(group_by: UsageGrouping) -> UsageQuery {
        UsageQuery {
            since: datetime!(2025-06-10 12:30 UTC),
            until: datetime!(2025-06-11 00:00 UTC),
            group_by,
            key_id: None,
            team: Some("ops".into()),
            model: Some("m".into()),
        }
    }

    #[test]
    fn filters_given_become_numbered_conditions_in_the_backends_style() {
        let dollar = UsageReport::new(&query(UsageGrouping::Team), &dialect(Placeholders::Dollar)).statement;
        assert_eq!(
            dollar.sql,
            "SELECT team, s(requests), s(prompt_tokens), s(completion_tokens), s(cost_pico), s(estimated_requests) \
             FROM usage_hourly WHERE hour >= $1 AND hour < $2 AND team = $3 AND model = $4 \
             GROUP BY team ORDER BY team IS NULL, team"
        );
        let since_hour = datetime!(2025-06-10 12:00 UTC).unix_timestamp();
        let until = datetime!(2025-06-11 00:00 UTC).unix_timestamp();
        assert_eq!(
            dollar.params,
            [
                SqlValue::Integer(since_hour),
                SqlValue::Integer(until),
                SqlValue::Text("ops".into()),
                SqlValue::Text("m".into())
            ]
        );
        let question = UsageReport::new(&query(UsageGrouping::Team), &dialect(Placeholders::Question)).statement;
        assert!(
            question.sql.contains("WHERE hour >= ? AND hour < ? AND team = ? AND model = ? GROUP BY"),
            "{}",
            question.sql
        );
        assert_eq!(question.params, dollar.params);
    }

    struct Fixed;

    impl ReportColumns for Fixed {
        type Error = ();
        fn time(&mut self, _: usize) -> Result<OffsetDateTime, ()> {
            Ok(OffsetDateTime::UNIX_EPOCH)
        }
        fn text(&mut self, index: usize) -> Result<Option<String>, ()> {
            Ok(Some(format!("label{index}")))
        }
        fn count(&mut self, index: usize) -> Result<u64, ()> {
            Ok(index as u64)
        }
    }

    #[test]
    fn a_row_by_key_reads_its_team_then_the_sums() {
        let (row, after) = read_report_row(&mut Fixed, UsageGrouping::Key).unwrap();
        assert_eq!((row.key_id.as_deref(), row.team.as_deref()), (Some("label0"), Some("label1")));
        assert_eq!(
            [row.requests, row.prompt_tokens, row.completion_tokens, row.cost_pico, row.estimated_requests],
            [2, 3, 4, 5, 6]
        );
        assert_eq!(after, 7, "extra columns start after the sums");
    }
}
