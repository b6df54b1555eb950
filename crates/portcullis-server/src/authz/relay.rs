//! Settlements across the fleet: a replica's authorizer leases live on the replica that decided,
//! while a usage report (or Envoy's `ext_proc` stream) may reach any. A settlement that finds no
//! lease here is published on the fleet's Redis channel `{<limits.redis_prefix>}:authz:settlements`;
//! every replica hears it and the one holding the lease settles it, the others ignore it.
//!
//! Redis pub/sub delivers to whoever is subscribed at that moment: a settlement published while
//! the holding replica is reconnecting is lost, and its lease is charged in full at expiry, as if
//! nobody had reported.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use portcullis_limits_redis::FleetChannel;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::lease::{Leases, Relay, Reported, Settled, Sinks};

/// The channel's name under the limiter's prefix.
pub const CHANNEL: &str = "authz:settlements";

/// A settlement on the wire: JSON, so replicas of different versions read each other's.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Message {
    request_id: String,
    how: How,
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    /// The node that relayed it (`audit.node`), for the logs.
    from: String,
}

/// The settlements that can be relayed: those something outside the replica made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum How {
    Reported,
    Observed,
    ObservedWithoutUsage,
    ObservedRefusal,
}

impl Message {
    /// None for a settlement the replica makes itself (an expiry, a shutdown).
    fn new(request_id: &str, how: Settled, from: &str) -> Option<Message> {
        let (how, reported) = match how {
            Settled::Reported(reported) => (How::Reported, reported),
            Settled::Observed(reported) => (How::Observed, reported),
            Settled::ObservedWithoutUsage => (How::ObservedWithoutUsage, Reported::default()),
            Settled::ObservedRefusal => (How::ObservedRefusal, Reported::default()),
            Settled::Expired | Settled::CutAtShutdown => return None,
        };
        Some(Message {
            request_id: request_id.to_string(),
            how,
            prompt_tokens: reported.prompt_tokens,
            completion_tokens: reported.completion_tokens,
            from: from.to_string(),
        })
    }

    fn settled(&self) -> Settled {
        let reported = Reported { prompt_tokens: self.prompt_tokens, completion_tokens: self.completion_tokens };
        match self.how {
            How::Reported => Settled::Reported(reported),
            How::Observed => Settled::Observed(reported),
            How::ObservedWithoutUsage => Settled::ObservedWithoutUsage,
            How::ObservedRefusal => Settled::ObservedRefusal,
        }
    }

    fn encode(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Publishes on the fleet's channel.
struct FleetRelay {
    channel: FleetChannel,
    node: Arc<str>,
}

impl Relay for FleetRelay {
    fn relay(&self, request_id: &str, how: Settled) -> BoxFuture<'static, bool> {
        let message = Message::new(request_id, how, &self.node);
        let channel = self.channel.clone();
        Box::pin(async move {
            let Some(message) = message else { return false };
            match channel.publish(&message.encode()).await {
                Ok(_) => true,
                Err(error) => {
                    tracing::warn!(request_id = message.request_id, %error, "could not relay a lease settlement");
                    false
                }
            }
        })
    }
}

/// This replica's leases, settled across the fleet through `channel`: what it holds no lease
/// for is published there, and what is published there settles the leases it holds. Both run
/// until `stop`.
pub fn start(channel: FleetChannel, node: String, length: Duration, sinks: Sinks, stop: CancellationToken) -> Leases {
    let incoming = channel.subscribe();
    let relay = FleetRelay { channel, node: node.into() };
    let leases = Leases::start(length, sinks, Some(Arc::new(relay)), stop.clone());
    tokio::spawn(receive(leases.clone(), incoming, stop));
    leases
}

/// Settles the relayed settlements whose lease is here.
async fn receive(leases: Leases, mut incoming: mpsc::Receiver<Vec<u8>>, stop: CancellationToken) {
    loop {
        let bytes = tokio::select! {
            bytes = incoming.recv() => match bytes {
                Some(bytes) => bytes,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        match serde_json::from_slice::<Message>(&bytes) {
            Ok(message) => {
                if leases.settle_here(&message.request_id, message.settled()).is_some() {
                    tracing::debug!(request_id = message.request_id, from = message.from, "settled a relayed lease");
                }
            }
            Err(error) => tracing::warn!(%error, "unreadable message on the settlement channel; ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settlement_survives_the_wire() {
        let reported = Reported { prompt_tokens: 12, completion_tokens: 40 };
        let observed = [Settled::Observed(reported), Settled::ObservedWithoutUsage, Settled::ObservedRefusal];
        for how in [Settled::Reported(reported)].into_iter().chain(observed) {
            let message = Message::new("req_1", how, "node-b").unwrap();
            let read: Message = serde_json::from_slice(&message.encode()).unwrap();
            assert_eq!(read, message);
            assert_eq!(read.settled(), how);
        }
        let wire = serde_json::to_value(Message::new("req_1", Settled::Reported(reported), "node-b").unwrap()).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"request_id": "req_1", "how": "reported", "prompt_tokens": 12,
                "completion_tokens": 40, "from": "node-b"})
        );
    }

    #[test]
    fn only_settlements_made_outside_the_replica_travel() {
        for how in [Settled::Expired, Settled::CutAtShutdown] {
            assert_eq!(Message::new("req_1", how, "a"), None);
            assert!(!how.is_observed_outside());
        }
    }

    #[test]
    fn a_foreign_message_is_refused() {
        for bytes in [&b"{}"[..], b"not json", br#"{"request_id":"r","how":"expired","from":"a"}"#] {
            assert!(serde_json::from_slice::<Message>(bytes).is_err(), "{bytes:?}");
        }
    }
}
