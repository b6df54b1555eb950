//! How PostgreSQL and pool errors become [`StoreError`]s.

use deadpool_postgres::PoolError;
use portcullis_store::StoreError;
use tokio_postgres::error::SqlState;

/// For statements that expect no constraint to fail: the server cannot do what was asked right
/// now (it is down, restarting, out of space…). Values that do not decode are reported where
/// rows are read (see [`corrupt`]).
pub(crate) fn db_err(err: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(describe(&err))
}

/// For inserts: a clash on a primary key or unique column is a `Conflict` over `what`, and a
/// reference to a missing row (a team that does not exist) is `NotFound`.
pub(crate) fn insert_err(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |err| match err.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(what.into()),
        Some(code) if *code == SqlState::FOREIGN_KEY_VIOLATION => StoreError::NotFound,
        _ => db_err(err),
    }
}

/// No connection within the connect timeout, or the server refused one.
pub(crate) fn pool_err(err: PoolError) -> StoreError {
    let why = match &err {
        PoolError::Backend(err) => describe(err),
        other => other.to_string(),
    };
    StoreError::Unavailable(format!("postgres unreachable: {why}"))
}

/// A stored value that does not decode: the row is broken, not the server.
pub(crate) fn corrupt(err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(err.to_string())
}

/// The server's own message when there is one (the driver's `Display` says only "db error").
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => err.to_string(),
    }
}
