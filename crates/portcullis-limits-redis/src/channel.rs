//! [`FleetChannel`]: a pub/sub channel on the limiter's Redis, for what one replica must tell the others
//! besides counting (the server's authorizer relays the usage reports it cannot settle itself).
//!
//! Redis pub/sub delivers a message once, to whoever is subscribed when it is published: a replica that
//! is reconnecting misses what is published meanwhile. What travels here must therefore tolerate loss.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::backend::{Backend, BackendError};

/// Wait before the first resubscription after a failure; doubled after each further one.
const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Longest wait between resubscriptions.
const LONGEST_RETRY: Duration = Duration::from_secs(10);
/// Messages received but not yet taken by the subscriber.
const BACKLOG: usize = 1024;

/// A channel every replica that uses the same Redis and key prefix hears. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FleetChannel {
    backend: Arc<Backend>,
    /// `{<key_prefix>}:<name>`.
    name: Arc<str>,
}

/// Why a message could not be published.
#[derive(Debug, thiserror::Error)]
#[error("publishing to Redis: {0}")]
pub struct ChannelError(BackendError);

impl FleetChannel {
    pub(crate) fn new(backend: Arc<Backend>, name: &str) -> FleetChannel {
        let name = backend.keys.channel(name).into();
        FleetChannel { backend, name }
    }

    /// The channel's Redis name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Publishes `message` to every replica subscribed now (this one included, if it is); returns how
    /// many received it. One Redis call on the limiter's connection, within its timeout.
    pub async fn publish(&self, message: &[u8]) -> Result<u64, ChannelError> {
        self.backend.publish(&self.name, message).await.map_err(ChannelError)
    }

    /// Subscribes, and stays subscribed until the receiver is dropped: a lost connection is
    /// re-established with a growing wait (up to 10 s), logged once per outage. Must run inside a Tokio
    /// runtime.
    pub fn subscribe(&self) -> mpsc::Receiver<Vec<u8>> {
        let (sender, receiver) = mpsc::channel(BACKLOG);
        tokio::spawn(listen(self.clone(), sender));
        receiver
    }
}

/// Forwards the channel's messages to `sender` until it closes, resubscribing after every failure.
async fn listen(channel: FleetChannel, sender: mpsc::Sender<Vec<u8>>) {
    let mut outage = Outage { failing: false, retry: FIRST_RETRY };
    loop {
        let error = tokio::select! {
            ended = forward(&channel, &sender, &mut outage) => match ended {
                Some(error) => error,
                None => return,
            },
            () = sender.closed() => return,
        };
        let wait = outage.failed(&channel.name, &error);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = sender.closed() => return,
        }
    }
}

/// One subscription: forwards until the connection ends (its error) or the receiver goes (`None`).
async fn forward(channel: &FleetChannel, sender: &mpsc::Sender<Vec<u8>>, outage: &mut Outage) -> Option<BackendError> {
    let mut subscription = match channel.backend.subscribe(&channel.name).await {
        Ok(subscription) => subscription,
        Err(error) => return Some(error),
    };
    outage.ended(&channel.name);
    let mut messages = subscription.on_message();
    while let Some(message) = messages.next().await {
        sender.send(message.get_payload_bytes().to_vec()).await.ok()?;
    }
    Some(BackendError::Closed)
}

/// Whether the subscription is failing, and how long to wait before the next attempt.
struct Outage {
    failing: bool,
    retry: Duration,
}

impl Outage {
    /// Logs the first failure of an outage; returns the wait before the next attempt.
    fn failed(&mut self, channel: &str, error: &BackendError) -> Duration {
        if self.failing {
            tracing::debug!(channel, %error, "Redis channel still unavailable");
        } else {
            tracing::warn!(channel, %error, "Redis channel lost; resubscribing until Redis answers");
            self.failing = true;
        }
        let wait = self.retry;
        self.retry = (self.retry * 2).min(LONGEST_RETRY);
        wait
    }

    fn ended(&mut self, channel: &str) {
        if std::mem::take(&mut self.failing) {
            tracing::warn!(channel, "Redis channel subscribed again");
        }
        self.retry = FIRST_RETRY;
    }
}
