//! The one task per store that turns `NOTIFY portcullis_changes` into watch wake-ups.

use std::future::poll_fn;
use std::pin::pin;
use std::time::Duration;

use portcullis_types::chain;
use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, Config, NoTls};

use crate::PostgresStore;
use crate::changes::{CHANNEL, saw};

/// The first pause before reconnecting; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl PostgresStore {
    /// Starts the listener unless it runs already. Needs a tokio runtime; without one, receivers
    /// only wake for changes committed through this store, and followers rely on polling.
    pub(crate) fn start_listener(&self) {
        let Ok(mut listener) = self.inner.listener.lock() else {
            return;
        };
        if listener.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("postgres change notifications need a tokio runtime; followers will poll");
            return;
        };
        let config = self.inner.listener_config.clone();
        let changed = self.inner.changed.clone();
        *listener = Some(runtime.spawn(listen(config, changed)));
    }
}

/// Listens until aborted (when the store is dropped), reconnecting whenever the connection ends.
async fn listen(config: Config, changed: watch::Sender<u64>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut listening = false;
        let ended = listen_once(&config, &changed, &mut listening).await;
        if listening {
            // It had worked: start again quickly.
            backoff = MIN_BACKOFF;
            match ended {
                Ok(()) => tracing::warn!("postgres closed the change listener's connection; reconnecting"),
                Err(err) => {
                    tracing::warn!(error = %chain(&err), "postgres change listener lost its connection; reconnecting")
                }
            }
        } else if let Err(err) = ended {
            tracing::debug!(error = %chain(&err), ?backoff, "postgres change listener cannot connect yet");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: connect, `LISTEN`, wake everyone (notifications sent while no
/// connection listened are lost), then forward each notified seq until the connection ends.
/// Sets `listening` once `LISTEN` is in place.
async fn listen_once(
    config: &Config,
    changed: &watch::Sender<u64>,
    listening: &mut bool,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    // The connection does the socket work for the client too, so it is polled all along.
    let drive = pin!(async move {
        while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
            // Notices and other messages are of no interest here.
            let AsyncMessage::Notification(note) = message? else { continue };
            if notes_tx.send(note).is_err() {
                break;
            }
        }
        Ok(())
    });
    let work = pin!(async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        *listening = true;
        // Wake every receiver: whatever was committed meanwhile is in the log.
        let latest = client
            .query_one(crate::changes::LATEST, &[])
            .await
            .ok()
            .and_then(|row| row.try_get::<_, i64>(0).ok())
            .and_then(|seq| u64::try_from(seq).ok())
            .unwrap_or(0);
        changed.send_modify(|known| *known = (*known).max(latest));
        while let Some(note) = notes.recv().await {
            match note.payload().parse::<u64>() {
                Ok(seq) => saw(changed, seq),
                // Not ours to read; still worth a look at the log.
                Err(_) => changed.send_modify(|_| {}),
            }
        }
        Ok(())
    });
    tokio::select! {
        ended = drive => ended,
        ended = work => ended,
    }
}
