//! The Portcullis server: the proxy and admin routers, their layers and shared state, start-up,
//! reload and graceful shutdown. The binary crate only parses arguments and handles signals.

mod access_log;
mod admin;
mod audit;
mod bearer;
mod changes;
mod client_addr;
mod error;
mod exchange;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod health;
mod key_cache;
mod limiter;
mod limits;
mod listener;
mod metrics;
mod misuse;
mod principal;
mod proxy;
mod request_id;
mod security;
mod server;
mod start_error;
mod state;
mod store;
mod store_cache;
mod team_cache;
pub mod usage;

use portcullis_config::{LimitsConfig, StoreConfig};

pub use server::{RunningServer, Server};
pub use start_error::StartError;

/// What `serve` would refuse in these settings before it opens anything: a `store.url` it cannot
/// read, a backend this binary was built without, a SQLite directory missing on this host.
/// `config check` reports the same, in the same words.
pub fn check_backends(store: &StoreConfig, limits: &LimitsConfig) -> Result<(), StartError> {
    store::check(store)?;
    limiter::LimiterBackend::check(limits)
}

/// Applies pending migrations to the configured store; returns how many ran.
pub async fn migrate(config: &StoreConfig) -> Result<usize, StartError> {
    let stores = store::open(config)?;
    stores.migrator.migrate().await.map_err(StartError::store("migrating the store"))
}
