//! The accept loop: hyper connections with request-head limits, drained gracefully.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use portcullis_config::ServerConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access_log;
use crate::state::AppState;

/// Limits on what a client may send before the router sees a request.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub header_read_timeout: Duration,
}

impl HeadLimits {
    pub fn from_config(server: &ServerConfig) -> HeadLimits {
        HeadLimits {
            max_header_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
            header_read_timeout: server.header_read_timeout.0,
        }
    }
}

/// What one listener serves: its name in logs, metrics and the audit log, and its routes.
#[derive(Clone)]
pub struct Site {
    pub name: &'static str,
    pub router: Router,
    pub state: AppState,
}

/// Accepts until `stop` is cancelled, then returns the tracker of the connections still open,
/// for the caller to drain.
pub async fn accept_until(
    listener: TcpListener,
    site: Site,
    limits: HeadLimits,
    stop: CancellationToken,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let builder = connection_builder(limits);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let site = site.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let site = site.clone();
            async move {
                let request = request.map(axum::body::Body::new);
                Ok::<_, Infallible>(access_log::serve(site.name, &site.state, site.router, request).await)
            }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = %error, "connection ended with an error");
            }
        });
    }
    graceful
}

fn connection_builder(limits: HeadLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Waits for open connections (streams included) to finish, at most `deadline`.
pub async fn drain(graceful: GracefulShutdown, deadline: Duration) -> bool {
    tokio::time::timeout(deadline, graceful.shutdown()).await.is_ok()
}
