//! How SQLite errors become [`StoreError`]s.

use portcullis_store::StoreError;
use rusqlite::ffi;

/// For reads and writes that expect no constraint to fail: a missing row is `NotFound`, a value
/// that does not decode is `Corrupt`, anything else means the database is not usable right now.
pub(crate) fn db_err(err: rusqlite::Error) -> StoreError {
    match err {
        rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..) => StoreError::Corrupt(err.to_string()),
        other => StoreError::unavailable_because("SQLite failed", other),
    }
}

/// For inserts: a clash on a primary key or unique column is a `Conflict` over `what`, and a
/// reference to a missing row (a team that does not exist) is `NotFound`.
pub(crate) fn insert_err(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |err| match err.sqlite_error().map(|e| e.extended_code) {
        Some(ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE) => StoreError::Conflict(what.into()),
        Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => StoreError::NotFound,
        _ => db_err(err),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn a_driver_failure_is_the_source_not_part_of_the_message() {
        let busy = rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_BUSY), Some("database is locked".into()));

        let error = db_err(busy);

        assert_eq!(error.to_string(), "store unavailable: SQLite failed");
        let driver = error.source().and_then(|source| source.downcast_ref::<rusqlite::Error>());
        assert_eq!(driver.and_then(rusqlite::Error::sqlite_error_code), Some(rusqlite::ErrorCode::DatabaseBusy));
    }
}
