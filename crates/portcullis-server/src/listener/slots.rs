//! Open connections per listener and per client address. A connection holds a [`Slot`] for as
//! long as it is open; one over either cap is shed at once. Touched once per connection, never
//! per request.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The listener holds its `max_connections`.
    Listener,
    /// This client address holds its `max_connections_per_client`.
    Client,
}

impl Full {
    pub fn reason(self) -> &'static str {
        match self {
            Full::Listener => "listener_full",
            Full::Client => "client_full",
        }
    }
}

#[derive(Debug, Default)]
pub struct Slots {
    open: AtomicUsize,
    /// The same count, for `/metrics`.
    gauge: Gauge,
    per_client: DashMap<IpAddr, usize>,
    /// Woken when the last connection closes, for a draining shutdown.
    closed_all: Notify,
}

/// One open connection's place; gives it back on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    client: Option<IpAddr>,
}

impl Slots {
    pub fn new(gauge: Gauge) -> Slots {
        Slots { gauge, ..Slots::default() }
    }

    /// Takes a place for a connection from `client` (counted per address only when `per_client`
    /// is `Some`), unless a cap is reached.
    pub fn take(self: &Arc<Self>, max: usize, client: IpAddr, per_client: Option<usize>) -> Result<Slot, Full> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= max {
            self.release_one();
            return Err(Full::Listener);
        }
        let counted = match per_client {
            Some(cap) => {
                let mut entry = self.per_client.entry(client).or_insert(0);
                if *entry >= cap {
                    drop(entry);
                    self.release_one();
                    return Err(Full::Client);
                }
                *entry += 1;
                Some(client)
            }
            None => None,
        };
        self.gauge.inc();
        Ok(Slot { slots: Arc::clone(self), client: counted })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let closed = self.closed_all.notified();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }

    fn release_one(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.closed_all.notify_waiters();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(client) = self.client {
            // Forget an address with no connection left, so the map holds only live clients.
            self.slots.per_client.remove_if_mut(&client, |_, count| {
                *count -= 1;
                *count == 0
            });
        }
        self.slots.gauge.dec();
        self.slots.release_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_cap_and_the_per_client_cap_both_hold_and_free_on_close() {
        let slots = Arc::new(Slots::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = slots.take(3, a, Some(2)).unwrap();
        let _second = slots.take(3, a, Some(2)).unwrap();
        assert_eq!(slots.take(3, a, Some(2)).unwrap_err(), Full::Client);
        let _third = slots.take(3, b, Some(2)).unwrap();
        assert_eq!(slots.take(3, b, Some(2)).unwrap_err(), Full::Listener);
        assert_eq!(slots.open(), 3, "refusals give their place back");
        drop(first);
        assert_eq!(slots.open(), 2);
        let _again = slots.take(3, a, Some(2)).unwrap();
        let _exempt = slots.take(10, a, None).unwrap();
        assert_eq!(slots.open(), 4);
    }

    #[test]
    fn an_address_without_connections_is_forgotten() {
        let slots = Arc::new(Slots::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        drop(slots.take(3, a, Some(2)).unwrap());
        assert!(slots.per_client.is_empty());
        assert_eq!(slots.open(), 0);
    }
}
