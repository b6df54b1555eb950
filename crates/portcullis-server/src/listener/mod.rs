//! The listeners: accept loops with connection caps, and connections that cannot be held open
//! by a client that does not send (see [`connection`]).
//!
//! What a connection meets, in order:
//! 1. **Accept**: over the listener's `max_connections`, or its address's
//!    `max_connections_per_client`, it is answered 503 and closed at once (on a TLS listener,
//!    closed without an answer). Accept errors (out of descriptors) back off instead of
//!    spinning.
//! 2. **Request head**: a complete head within `header_read_timeout` of accept (or of its first
//!    byte, on a kept-alive connection), whatever the protocol — on a TLS listener ([`tls`]) the
//!    handshake included; HTTP/1 heads pass the
//!    [`gate`] (size, count, framing) before hyper parses them.
//! 3. **Body**: it keeps coming ([`body`]), or the request gets 408.
//! 4. **Idle**: with nothing in flight for `idle_timeout` the connection is closed (HTTP/2:
//!    GOAWAY first; unanswered keep-alive pings close it too).
//! 5. **Close**: lingering (see [`io`]), so an early answer is read before the socket goes.

mod access_log;
mod activity;
mod body;
mod connection;
pub(crate) mod gate;
mod io;
mod site;
mod slots;
mod stream;
mod tls;

use portcullis_types::chain;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_config::ServerStartup;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use body::BodyTooSlow;
pub use site::{Site, SiteContext};
use slots::{Full, Slots};
pub use tls::{Tls, TlsError, client_verifier};

/// A listener's caps and how its connections are served.
pub struct Listening {
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections per client address at most; 0 = no cap.
    pub max_per_client: usize,
    settings: Arc<connection::ConnectionSettings>,
}

impl Listening {
    pub fn new(
        server: &ServerStartup,
        max_connections: usize,
        max_per_client: usize,
        tls: Option<Arc<Tls>>,
    ) -> Listening {
        let settings = connection::ConnectionSettings {
            builder: builder(server),
            timeouts: activity::Timeouts { head: server.header_read_timeout.0, idle: server.idle_timeout.0 },
            gate: gate::GateLimits { max_header_bytes: server.max_header_bytes, max_headers: server.max_headers },
            body: body::BodyTimeouts { read_timeout: server.body_read_timeout.0, min_rate: server.min_body_rate },
            tls,
        };
        Listening { max_connections, max_per_client, settings: Arc::new(settings) }
    }
}

/// The open connections of a listener that stopped accepting, for the caller to drain.
#[derive(Debug)]
pub struct Accepted {
    slots: Arc<Slots>,
}

/// Connections being shed at once (each writes a short answer and lingers a moment); beyond
/// this, a shed connection is closed without an answer.
const MAX_SHEDDING: usize = 64;
/// How long a shed connection lingers for the client to read its 503.
const SHED_LINGER: Duration = Duration::from_secs(1);
/// Accept errors (out of file descriptors, say) back off from this …
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// … doubling up to this.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts until `stop` is cancelled.
pub async fn accept_until(
    listener: TcpListener,
    site: Site,
    listening: Listening,
    stop: CancellationToken,
    cut: CancellationToken,
) -> Accepted {
    let slots = Arc::new(Slots::new(site.context.metrics().open_connections(site.kind)));
    let shedding = Arc::new(Semaphore::new(MAX_SHEDDING));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    accepted
                }
                Err(error) => {
                    if backoff == ACCEPT_BACKOFF_MIN {
                        tracing::warn!(listener = site.kind.name(), error = %chain(&error), "accept failed; backing off");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        match slots.take(listening.max_connections, peer.ip(), per_client_cap(&site, &listening, peer)) {
            Ok(slot) => {
                site.context.metrics().connection_event(site.kind, "accepted");
                let settings = listening.settings.clone();
                let serve = connection::serve(stream, peer, site.clone(), settings, slot, stop.clone(), cut.clone());
                tokio::spawn(serve);
            }
            Err(full) => {
                site.context.metrics().connection_event(site.kind, full.reason());
                tracing::debug!(listener = site.kind.name(), %peer, reason = full.reason(), "connection shed");
                // A plain-text 503 means nothing to a TLS client, and a handshake for a shed
                // connection would spend on the flood what the cap is there to save: closed.
                if listening.settings.tls.is_none()
                    && let Ok(permit) = shedding.clone().try_acquire_owned()
                {
                    tokio::spawn(async move {
                        shed(stream, full).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    Accepted { slots }
}

/// The per-address cap for `peer`: none for a trusted proxy, which speaks for many clients.
fn per_client_cap(site: &Site, listening: &Listening, peer: SocketAddr) -> Option<usize> {
    if listening.max_per_client == 0 {
        return None;
    }
    let runtime = site.context.runtime.load();
    let trusted = runtime.live.server.trusted_proxies.iter().any(|net| net.contains(&peer.ip()));
    (!trusted).then_some(listening.max_per_client)
}

/// Answers a connection over a cap with 503 and closes it cleanly.
async fn shed(mut stream: TcpStream, full: Full) {
    let answer = shed_answer(full);
    let _ = tokio::time::timeout(SHED_LINGER, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes, so that the close is not a reset that
        // could destroy the answer before the client reads it.
        let mut sink = tokio::io::sink();
        tokio::io::copy(&mut stream, &mut sink).await
    })
    .await;
}

fn shed_answer(full: Full) -> String {
    let message = match full {
        Full::Listener => "The gateway has too many open connections; retry shortly.",
        Full::Client => "Too many open connections from this client address; retry shortly.",
    };
    let body = format!(
        r#"{{"error":{{"message":"{message}","type":"server_error","code":"too_many_connections","param":null}}}}"#
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn builder(server: &ServerStartup) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The gate refuses heads over our limits first; hyper's own limits only need to admit them.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size((server.max_header_bytes * 2).max(16 * 1024))
        .max_headers(server.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(server.http2_max_concurrent_streams)
        .keep_alive_interval(server.http2_keepalive_interval.0)
        .keep_alive_timeout(server.http2_keepalive_interval.0);
    builder
}

/// Waits for open connections (streams included) to finish, at most `deadline`.
pub async fn drain(accepted: &Accepted, deadline: Duration) -> bool {
    tokio::time::timeout(deadline, accepted.slots.all_closed()).await.is_ok()
}

/// How long cut connections get to close, their requests to settle and submit their records.
pub const CUT_GRACE: Duration = Duration::from_secs(5);
