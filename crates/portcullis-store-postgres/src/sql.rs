//! Statement helpers: every statement is prepared once per connection (the pool caches it) and
//! run with parameters, never with values spliced into the text.

use deadpool_postgres::GenericClient;
use portcullis_store::StoreResult;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::{db_err, insert_err};

pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub(crate) async fn query(client: &impl GenericClient, sql: &str, params: Params<'_>) -> StoreResult<Vec<Row>> {
    let statement = client.prepare_cached(sql).await.map_err(db_err)?;
    client.query(&statement, params).await.map_err(db_err)
}

pub(crate) async fn query_opt(client: &impl GenericClient, sql: &str, params: Params<'_>) -> StoreResult<Option<Row>> {
    let statement = client.prepare_cached(sql).await.map_err(db_err)?;
    client.query_opt(&statement, params).await.map_err(db_err)
}

pub(crate) async fn query_one(client: &impl GenericClient, sql: &str, params: Params<'_>) -> StoreResult<Row> {
    let statement = client.prepare_cached(sql).await.map_err(db_err)?;
    client.query_one(&statement, params).await.map_err(db_err)
}

/// Runs a statement; returns how many rows it changed.
pub(crate) async fn execute(client: &impl GenericClient, sql: &str, params: Params<'_>) -> StoreResult<u64> {
    let statement = client.prepare_cached(sql).await.map_err(db_err)?;
    client.execute(&statement, params).await.map_err(db_err)
}

/// Runs an insert, reporting a unique clash as a `Conflict` over `what` and a missing referenced
/// row as `NotFound`.
pub(crate) async fn insert(
    client: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
    what: String,
) -> StoreResult<u64> {
    let statement = client.prepare_cached(sql).await.map_err(db_err)?;
    client.execute(&statement, params).await.map_err(insert_err(what))
}
