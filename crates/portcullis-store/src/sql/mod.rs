//! SQL that the SQLite and PostgreSQL backends both build: the usage report's statement and the
//! migration runner's bookkeeping. Each backend says how it differs — the placeholder style and
//! its own aggregates and integer type, a [`Dialect`] — and runs the statements with its driver.
//! Only text is built here: no driver types, and no values in the text (they are parameters).

mod migrations;
mod usage_report;

pub use migrations::{Migration, Migrations};
pub use usage_report::{ReportColumns, UsageReport};

/// How a backend numbers the parameters of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholders {
    /// `?` for each, bound in order (SQLite).
    Question,
    /// `$1`, `$2`, … (PostgreSQL).
    Dollar,
}

impl Placeholders {
    /// The placeholder of parameter `n`, counted from 1.
    pub fn nth(self, n: usize) -> String {
        match self {
            Placeholders::Question => "?".to_string(),
            Placeholders::Dollar => format!("${n}"),
        }
    }
}

/// What a backend's SQL does its own way.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    pub placeholders: Placeholders,
    /// The column type of a 64-bit integer (`INTEGER`, `BIGINT`).
    pub integer: &'static str,
    /// The sum of a usage count column that never fails and stops at
    /// [`USAGE_MAX`](crate::USAGE_MAX), given the column's name.
    pub usage_sum: fn(&str) -> String,
    /// Columns the backend reads after a report row's sums (PostgreSQL counts damaged rows),
    /// or `""`.
    pub report_extra: &'static str,
}

/// A statement parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    Integer(i64),
    Text(String),
}

/// A statement and its parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<SqlValue>,
}
