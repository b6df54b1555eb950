//! How PostgreSQL and pool errors become [`StoreError`]s.

use deadpool_postgres::PoolError;
use portcullis_store::StoreError;
use tokio_postgres::error::SqlState;

/// For statements that expect no constraint to fail: the server cannot do what was asked right
/// now (it is down, restarting, out of space…). Values that do not decode are reported where
/// rows are read (see [`corrupt`]). The driver's error is the source; the SQLSTATE code, which
/// its message leaves out, is named here.
pub(crate) fn db_err(err: tokio_postgres::Error) -> StoreError {
    let what = match err.code() {
        Some(code) => format!("PostgreSQL error {}", code.code()),
        None => "PostgreSQL failed".to_string(),
    };
    StoreError::unavailable_because(what, err)
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
    match err {
        // The pool's wrapper says only "error occurred while creating a new object".
        PoolError::Backend(err) => StoreError::unavailable_because("postgres unreachable", err),
        other => StoreError::unavailable_because("postgres unreachable", other),
    }
}

/// A stored value that does not decode: the row is broken, not the server.
pub(crate) fn corrupt(err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(err.to_string())
}
