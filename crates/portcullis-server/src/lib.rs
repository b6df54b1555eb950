//! The Portcullis server: the proxy and admin routers, their layers and shared state, start-up,
//! reload and graceful shutdown. The binary crate only parses arguments and handles signals.

mod admin;
mod audit;
mod authz;
mod bearer;
#[cfg(feature = "bench")]
pub mod bench;
mod caller_limits;
mod certificate_cache;
mod certificate_identity;
mod changes;
mod client_addr;
mod client_certificate;
mod clock;
mod error;
mod error_shape;
mod exchange;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod health;
mod key_cache;
mod lifecycle;
mod limit_view;
mod limiter;
mod listener;
mod listener_kind;
mod metrics;
mod misuse;
mod principal;
mod proxy;
mod reload;
mod request_id;
mod routes;
mod runtime;
mod security;
mod server;
mod start_error;
mod state;
mod store;
mod store_cache;
mod team_cache;
mod tokenizer;
pub mod usage;

pub use listener::TlsError;
pub use server::{RunningServer, Server};
pub use start_error::StartError;

/// What `serve` would refuse in these settings before it opens anything: a `store.url` it cannot
/// read, a backend this binary was built without, a SQLite directory missing on this host.
/// `config check` reports the same, in the same words.
pub fn check_backends(startup: &portcullis_config::Startup) -> Result<(), StartError> {
    store::check(&startup.store)?;
    limiter::LimiterHandle::check(&startup.limits)
}

/// Whether the TLS files of both listeners load as `serve` would load them (`config check`).
pub fn check_tls(startup: &portcullis_config::Startup) -> Result<(), StartError> {
    server::TlsListeners::load(startup).map(drop)
}

/// Applies pending migrations to the configured store; returns how many ran.
pub async fn migrate(config: &portcullis_config::StoreStartup) -> Result<usize, StartError> {
    let backend = store::open(config)?;
    backend.stores.migrator.migrate().await.map_err(StartError::store("migrating the store"))
}
