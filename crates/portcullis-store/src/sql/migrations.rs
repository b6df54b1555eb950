//! The migration runner's bookkeeping: which migrations a backend has, the `schema_migrations`
//! table that records the applied ones, and the refusal of a schema newer than this build.
//!
//! Each backend runs the loop with its own driver, in one transaction per migration (SQLite's
//! calls are blocking and run on a thread of their own; PostgreSQL's are async and take an
//! advisory lock first), and asks this runner for every statement and check:
//!
//! 1. [`Migrations::create_table`], then [`Migrations::NEWEST`] → [`Migrations::refuse_newer`];
//! 2. per migration, in a transaction: [`Migrations::is_applied`] (`version` as the parameter);
//!    unless it is, the migration's `sql` ([`Migrations::failed`] on error) and
//!    [`Migrations::record`] (`version`, then the time in unix seconds).

use super::Dialect;
use crate::StoreError;

/// One numbered change of a backend's schema.
#[derive(Debug)]
pub struct Migration {
    pub version: i64,
    pub sql: &'static str,
}

/// A backend's migrations, append only (an applied migration is never edited; a change is a new
/// migration), numbered 1, 2, 3, … in order.
#[derive(Debug)]
pub struct Migrations {
    pub list: &'static [Migration],
    dialect: Dialect,
}

impl Migrations {
    /// The newest version recorded, or NULL for none.
    pub const NEWEST: &'static str = "SELECT MAX(version) FROM schema_migrations";

    pub const fn new(list: &'static [Migration], dialect: Dialect) -> Migrations {
        Migrations { list, dialect }
    }

    pub fn create_table(&self) -> String {
        let integer = self.dialect.integer;
        format!(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version {integer} PRIMARY KEY, applied_at {integer} NOT NULL)"
        )
    }

    /// One row, one boolean column: whether the version given is recorded.
    pub fn is_applied(&self) -> String {
        format!("SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = {})", self.dialect.placeholders.nth(1))
    }

    pub fn record(&self) -> String {
        let placeholders = self.dialect.placeholders;
        format!(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ({}, {})",
            placeholders.nth(1),
            placeholders.nth(2)
        )
    }

    /// The newest version this build knows.
    pub fn known(&self) -> i64 {
        self.list.iter().map(|migration| migration.version).max().unwrap_or(0)
    }

    /// A database migrated by a newer build may have a schema this build misreads.
    pub fn refuse_newer(&self, newest: Option<i64>) -> Result<(), StoreError> {
        let known = self.known();
        match newest {
            Some(newest) if newest > known => Err(StoreError::unavailable(format!(
                "database schema version {newest} is newer than this build knows ({known})"
            ))),
            _ => Ok(()),
        }
    }

    /// A migration's own SQL failed; the driver's error is the source.
    pub fn failed(migration: &Migration, error: impl Into<crate::Cause>) -> StoreError {
        StoreError::unavailable_because(format!("migration {} failed", migration.version), error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::Placeholders;

    const LIST: &[Migration] = &[Migration { version: 1, sql: "" }, Migration { version: 2, sql: "" }];

    fn migrations(placeholders: Placeholders, integer: &'static str) -> Migrations {
        Migrations::new(
            LIST,
            Dialect { placeholders, integer, usage_sum: |column| column.to_string(), report_extra: "" },
        )
    }

    #[test]
    fn bookkeeping_is_written_in_the_backends_style() {
        let postgres = migrations(Placeholders::Dollar, "BIGINT");
        assert_eq!(postgres.record(), "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)");
        assert!(postgres.create_table().contains("(version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)"));
        let sqlite = migrations(Placeholders::Question, "INTEGER");
        assert_eq!(sqlite.is_applied(), "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?)");
    }

    #[test]
    fn only_a_schema_newer_than_the_build_is_refused() {
        let migrations = migrations(Placeholders::Dollar, "BIGINT");
        assert!(migrations.refuse_newer(None).is_ok());
        assert!(migrations.refuse_newer(Some(2)).is_ok());
        let error = migrations.refuse_newer(Some(3)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "store unavailable: database schema version 3 is newer than this build knows (2)"
        );
    }
}
