//! The keep-alive connections of one endpoint that are waiting for their next request.
//!
//! Taken and returned last-in first-out: the most recently used connection is the likeliest to
//! be open (servers close idle ones after their own timeout), and the ones at the bottom are
//! left to expire. The mutex is per endpoint and held only to push or pop; liveness checks and
//! closing happen outside it.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::connection::Connection;

/// Idle connections kept per endpoint; more are closed as they come back.
const MAX_IDLE: usize = 1024;

/// Connections idle this long are closed. Model servers often close theirs sooner; those are
/// noticed (the socket reads as closed) when next taken.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct IdleConnections {
    /// Oldest first.
    parked: Mutex<Vec<Parked>>,
    timeout: Duration,
}

#[derive(Debug)]
struct Parked {
    connection: Connection,
    since: Instant,
}

impl IdleConnections {
    /// Connections idle for `timeout` are closed.
    pub(crate) fn new(timeout: Duration) -> IdleConnections {
        IdleConnections { parked: Mutex::new(Vec::new()), timeout }
    }

    /// The most recently parked connection that is still open; dead or expired ones met on the
    /// way are closed.
    pub(crate) fn take(&self) -> Option<Connection> {
        loop {
            let Parked { mut connection, since } = self.lock().pop()?;
            if since.elapsed() < self.timeout && connection.is_open() {
                connection.reused = true;
                return Some(connection);
            }
        }
    }

    /// Parks a connection whose last response was read in full.
    pub(crate) fn put(&self, connection: Connection) {
        let mut parked = self.lock();
        if parked.len() < MAX_IDLE {
            parked.push(Parked { connection, since: Instant::now() });
        }
    }

    /// Closes connections idle past the timeout, so sockets the server has given up on do not
    /// linger while no traffic comes to take them.
    pub(crate) fn close_expired(&self) {
        let expired: Vec<Parked> = {
            let mut parked = self.lock();
            let fresh = parked.partition_point(|idle| idle.since.elapsed() >= self.timeout);
            parked.drain(..fresh).collect()
        };
        drop(expired);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Parked>> {
        // A panic while holding the lock cannot leave the vector half-modified.
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
