//! Column encodings: timestamps as INTEGER unix seconds, structured values as JSON text, roles by
//! name. A stored value that does not decode surfaces as a conversion error, which
//! [`crate::error::db_err`] reports as `Corrupt`.

use portcullis_types::admin::Role;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

/// A timestamp stored as whole seconds since the epoch (sub-second precision is dropped).
pub(crate) struct UnixTime(pub OffsetDateTime);

impl ToSql for UnixTime {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.0.unix_timestamp().into())
    }
}

impl FromSql for UnixTime {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let seconds = i64::column_result(value)?;
        OffsetDateTime::from_unix_timestamp(seconds).map(UnixTime).map_err(|err| FromSqlError::Other(Box::new(err)))
    }
}

/// Decodes an optional timestamp column.
pub(crate) fn time_of(at: Option<UnixTime>) -> Option<OffsetDateTime> {
    at.map(|UnixTime(at)| at)
}

/// A list, limits or metadata value stored as JSON text.
pub(crate) struct Json<T>(pub T);

impl<T: Serialize> ToSql for Json<T> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        let text =
            serde_json::to_string(&self.0).map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?;
        Ok(text.into())
    }
}

impl<T: DeserializeOwned> FromSql for Json<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?).map(Json).map_err(|err| FromSqlError::Other(Box::new(err)))
    }
}

/// An admin token's role, stored by its name.
pub(crate) struct StoredRole(pub Role);

impl ToSql for StoredRole {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.0.as_str().into())
    }
}

impl FromSql for StoredRole {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        Role::parse(name).map(StoredRole).ok_or_else(|| FromSqlError::Other(format!("unknown role {name:?}").into()))
    }
}
