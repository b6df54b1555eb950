//! The Portcullis server: the proxy and admin routers, their layers and shared state, start-up,
//! reload and graceful shutdown. The binary crate only parses arguments and handles signals.

mod admin;
mod audit;
mod bearer;
mod caller_limits;
mod changes;
mod client_addr;
mod clock;
mod error;
mod exchange;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod health;
mod key_cache;
mod lifecycle;
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
mod state;
mod store;
mod store_cache;
mod team_cache;
pub mod usage;

use std::net::SocketAddr;

pub use server::{RunningServer, Server};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("store: {0}")]
    Store(String),
    #[error("cannot listen on {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
}

/// Applies pending migrations to the configured store; returns how many ran.
pub async fn migrate(config: &portcullis_config::StoreStartup) -> Result<usize, StartError> {
    let backend = store::open(config)?;
    backend.stores.migrator.migrate().await.map_err(|error| StartError::Store(error.to_string()))
}
