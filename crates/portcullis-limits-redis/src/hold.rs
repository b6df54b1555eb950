//! A reservation held in Redis, and the renewal of its lease while it runs.

use std::sync::{Arc, Weak};
use std::time::Duration;

use portcullis_limits::{Demand, ExternalHold, LimitScope, Millis, Usage};

use crate::backend::Backend;
use crate::breaker::wall_ms;

/// One scope's part of a Redis reservation: the scope (its name in keys) and the lease member the script
/// recorded there, which settling and renewing name.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) scope: String,
    pub(crate) member: Vec<u8>,
}

/// What a Redis admission holds: its id and its leases in the scopes (in Redis) it took something from.
#[derive(Debug)]
pub(crate) struct RedisHold {
    pub(crate) backend: Arc<Backend>,
    pub(crate) id: Arc<str>,
    /// In `LimitScope` order, as `MemoryLimiter` reports them.
    pub(crate) scopes: Vec<LimitScope>,
    /// In the order of the admission's keys.
    pub(crate) leases: Arc<[Lease]>,
}

impl RedisHold {
    /// Gives back (settles, or charges the whole reservation when `actual` is `None`). A Redis that cannot be
    /// reached now is not waited for: the lease then expires and charges the whole reservation, which never
    /// lets an admission through beyond a limit — but what an overrun used beyond its reservation is then
    /// not charged.
    async fn release(self, actual: Option<Usage>, now: Millis) {
        let backend = &self.backend;
        if backend.breaker.is_open() {
            tracing::debug!(reservation = %self.id, "Redis limiter degraded; the lease will release this reservation");
            return;
        }
        let result = backend.settle(&self.leases, actual, now).await;
        backend.report(&result);
        match result {
            Ok(0) => tracing::debug!(reservation = %self.id, "reservation had expired before it settled"),
            Ok(_) => {}
            Err(error) => tracing::warn!(
                reservation = %self.id,
                %error,
                "settlement did not reach Redis; the lease will expire and charge the whole reservation"
            ),
        }
    }
}

#[async_trait::async_trait]
impl ExternalHold for RedisHold {
    fn scopes(&self) -> &[LimitScope] {
        &self.scopes
    }

    async fn settle(self: Box<Self>, _demand: Demand, actual: Usage, now: Millis) {
        self.backend.live.remove(&self.id);
        self.release(Some(actual), now).await;
    }

    fn abandon(self: Box<Self>, _demand: Demand) {
        self.backend.live.remove(&self.id);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let tasks = self.backend.tasks.clone();
                // `now` only sets how long keys live; the reservation's windows are recorded in Redis.
                tasks.spawn_on(self.release(None, wall_ms()), &runtime);
            }
            Err(_) => tracing::warn!(
                reservation = %self.id,
                "reservation dropped outside a Tokio runtime; its lease will expire and charge it in full"
            ),
        }
    }
}

/// Renews the leases of this process's running reservations every `period` until the limiter is gone.
pub(crate) async fn renew_leases(backend: Weak<Backend>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate; nothing has a lease yet
    loop {
        ticks.tick().await;
        let Some(backend) = backend.upgrade() else { return };
        if backend.live.is_empty() {
            continue;
        }
        // While the breaker is open a renewal would only wait out its timeout; once Redis answers again
        // the next tick renews whatever is still held (leases last three periods).
        if backend.breaker.is_open() {
            continue;
        }
        let result = backend.renew().await;
        backend.report(&result);
        match result {
            Ok(renewed) => tracing::trace!(renewed, "renewed reservation leases"),
            Err(error) => tracing::debug!(%error, "lease renewal failed"),
        }
    }
}
