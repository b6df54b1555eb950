//! One client connection from accept to close: hyper serves it over [`ClientIo`], and a
//! watchdog in the same task closes it when it has no business staying open — no complete
//! request head in time, or idle for too long (see [`Activity::deadline`]) — and starts its
//! graceful close when the server stops.

use portcullis_types::chain;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{HeaderValue, Version, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::activity::{Activity, Deadline, Timeouts};
use super::body::{BodyTimeouts, TimedBody};
use super::gate::{GateLimits, HeadGate};
use super::io::{ClientIo, Refusals};
use super::slots::Slot;
use super::stream::ClientStream;
use super::tls::{HandshakeFailure, Tls};
use super::{Site, access_log};
use crate::client_certificate::ClientCertificate;
use crate::error::ApiError;

/// What every connection of one listener is served with.
pub struct ConnectionSettings {
    pub builder: auto::Builder<TokioExecutor>,
    pub timeouts: Timeouts,
    pub gate: GateLimits,
    pub body: BodyTimeouts,
    /// TLS termination, if the listener has it.
    pub tls: Option<Arc<Tls>>,
}

/// Serves `stream` until it closes; `slot` is its place in the listener's count, given back
/// when the socket is closed.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    site: Site,
    settings: Arc<ConnectionSettings>,
    slot: Slot,
    stop: CancellationToken,
    cut: CancellationToken,
) {
    let accepted_at = Instant::now();
    let activity = Arc::new(Activity::new(accepted_at));
    let lifecycle = site.context.lifecycle().clone();
    let handshake_by = accepted_at + settings.timeouts.head;
    let (stream, certificate) = match open(stream, settings.tls.as_deref(), handshake_by, &cut).await {
        Ok(opened) => opened,
        Err(failure) => {
            failure.report(site.kind, site.context.metrics(), peer);
            return;
        }
    };
    let refusals = Refuser { site: site.clone(), peer };
    // hyper drops the socket before the response body it was sending: this task keeps the slot
    // until both are gone, so that a drain waiting for the slots also waits for the body's
    // settlement and audit record (a cut stream's, at shutdown).
    let slot = Arc::new(slot);
    let io = ClientIo::new(stream, Arc::clone(&slot), HeadGate::new(settings.gate), Arc::clone(&activity), refusals);
    let service = {
        let activity = Arc::clone(&activity);
        let body_timeouts = settings.body;
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            activity.request_started();
            let finished = Finished(Arc::clone(&activity));
            let site = site.clone();
            let certificate = certificate.clone();
            async move {
                let response = handle(site, peer, certificate, body_timeouts, request).await;
                Ok::<_, Infallible>(response.map(|body| TrackedBody { inner: body, _finished: finished }))
            }
        })
    };
    let mut connection = pin!(settings.builder.serve_connection(TokioIo::new(io), service));
    // The stop signal is polled once, to register this task's waker; after that the server's
    // draining flag (set before the signal) is read instead: polling the signal again would take
    // its lock — shared by every connection — at every wake-up.
    let mut stopped = pin!(stop.cancelled());
    let mut stop_registered = false;
    // Likewise the cut that ends what is still open when the drain runs out of time.
    let mut cut_short = pin!(cut.cancelled());
    let mut cut_registered = false;
    let mut timer = pin!(tokio::time::sleep_until(Instant::now().into()));
    let timeouts = settings.timeouts;
    // Graceful close begun (server stopping, or idle); `close_by` bounds an idle one.
    let mut closing = false;
    let mut close_by: Option<Instant> = None;
    // While busy, when to look again (so that it is not pushed forward at every poll).
    let mut busy_look: Option<Instant> = None;
    let ended = poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(result);
            }
            let cut_now = if cut_registered {
                lifecycle.is_cut()
            } else {
                cut_registered = true;
                cut_short.as_mut().poll(cx).is_ready() || lifecycle.is_cut()
            };
            if cut_now {
                return Poll::Ready(Ok(()));
            }
            let stopping = if stop_registered {
                lifecycle.is_stopping()
            } else {
                stop_registered = true;
                stopped.as_mut().poll(cx).is_ready() || lifecycle.is_stopping()
            };
            if !closing && stopping {
                closing = true;
                connection.as_mut().graceful_shutdown();
                continue;
            }
            let deadline = activity.deadline(timeouts);
            let at = match (close_by, deadline) {
                (Some(at), _) => at,
                (None, Deadline::Busy) => *busy_look.get_or_insert_with(|| Instant::now() + timeouts.idle),
                (None, Deadline::Head(at) | Deadline::Idle(at)) => {
                    busy_look = None;
                    at
                }
            };
            // The timer is moved only to an earlier deadline: most requests push the idle
            // deadline later, and a timer that fires early is simply set again below.
            if at < timer.deadline().into_std() {
                timer.as_mut().reset(at.into());
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if at > Instant::now() {
                timer.as_mut().reset(at.into());
                continue;
            }
            match (close_by, deadline) {
                // A graceful close that did not finish in time, or no complete head in time
                // (nothing in flight to finish): close now.
                (Some(_), _) | (None, Deadline::Head(_)) => return Poll::Ready(Ok(())),
                (None, Deadline::Idle(_)) => {
                    close_by = Some(Instant::now() + timeouts.head);
                    if !closing {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
                (None, Deadline::Busy) => busy_look = None,
            }
        }
    })
    .await;
    if let Err(error) = ended {
        tracing::debug!(%peer, error = %chain(&*error), "connection ended with an error");
    }
}

/// The connection's stream — after the TLS handshake, if the listener has TLS — and the client
/// certificate the handshake verified. The handshake must finish by `handshake_by` (the head
/// deadline: a handshake is part of getting a request in); the server's cut ends it too.
async fn open(
    stream: TcpStream,
    tls: Option<&Tls>,
    handshake_by: Instant,
    cut: &CancellationToken,
) -> Result<(ClientStream, Option<Arc<ClientCertificate>>), HandshakeFailure> {
    let Some(tls) = tls else { return Ok((ClientStream::Plain(stream), None)) };
    let (stream, certificate) = tokio::select! {
        finished = tls.handshake(stream, handshake_by) => finished?,
        () = cut.cancelled() => return Err(HandshakeFailure::Cut),
    };
    Ok((ClientStream::Tls(Box::new(stream)), certificate))
}

/// The request as the router gets it: its peer address, the client certificate (if any), a body
/// that must keep coming, and for a chunked HTTP/1 request a `connection: close` on the answer
/// (the head gate cannot follow a chunked body, so no request may come after one on the same
/// connection) — as for every HTTP/1 request while the server drains.
async fn handle(
    site: Site,
    peer: SocketAddr,
    certificate: Option<Arc<ClientCertificate>>,
    body_timeouts: BodyTimeouts,
    mut request: hyper::Request<Incoming>,
) -> axum::response::Response {
    request.extensions_mut().insert(ConnectInfo(peer));
    if let Some(certificate) = certificate {
        request.extensions_mut().insert(certificate);
    }
    // While the server drains, every HTTP/1 answer closes its connection: a keep-alive client
    // gets its answer and reconnects (to a replica still in its balancer's rotation).
    let close_after = request.version() < Version::HTTP_2
        && (request.headers().contains_key(header::TRANSFER_ENCODING) || site.context.lifecycle().is_draining());
    let request = if has_body_deadline(&site, &request) {
        request.map(|body| axum::body::Body::new(TimedBody::new(body, body_timeouts)))
    } else {
        request.map(axum::body::Body::new)
    };
    let mut response = access_log::serve(site.kind, &site.context, site.router, request).await;
    if close_after {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Whether the request's body must keep coming: not for a gRPC stream the site serves without
/// one (see [`Site::grpc_streams`]).
fn has_body_deadline<B>(site: &Site, request: &hyper::Request<B>) -> bool {
    let Some(prefix) = site.grpc_streams else { return true };
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    !(grpc && request.uri().path().starts_with(prefix))
}

/// Counts a request as finished when its response body is dropped: sent, or given up.
struct Finished(Arc<Activity>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.request_finished(Instant::now());
    }
}

pin_project! {
    /// The response body, carrying the request's [`Finished`] guard.
    pub struct TrackedBody {
        #[pin]
        inner: axum::body::Body,
        _finished: Finished,
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Answers heads the gate refused, through the access log (logged, counted, audited).
struct Refuser {
    site: Site,
    peer: SocketAddr,
}

impl Refusals for Refuser {
    fn answer(&self, error: ApiError) -> Bytes {
        access_log::refuse_head(self.site.kind, &self.site.context, self.peer, error)
    }
}
