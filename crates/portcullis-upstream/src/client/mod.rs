//! The HTTP/1.1 client that talks to model servers.
//!
//! A general-purpose client (hyper's) runs every connection in a task of its own and hands
//! requests, response heads and each body chunk across channels: for a gateway that is two or
//! three task wake-ups per request plus one per streamed chunk, and a task and buffers per open
//! stream. Here the request's own task does the I/O: it takes a keep-alive connection from the
//! endpoint's idle pool (or connects), writes the request in one gathered write, reads the head,
//! and the response body reads straight off the socket as the server relays it (see `body`).
//! The connection returns to the pool the moment its body has been read in full.
//!
//! Only what model servers need is spoken: HTTP/1.1 with keep-alive, `Content-Length`,
//! chunked and close-delimited bodies, interim (1xx) responses skipped, TLS with the Mozilla
//! root store. A request on a kept-alive connection that the server turns out to have closed
//! before answering (it closed the idle connection as we sent) is sent once more on a new
//! connection: nothing of it was answered, so the server did not act on it.
//!
//! Module map: `origin` an endpoint's address; `idle` its parked connections; `connection` a
//! socket and its read buffer; `head` request and response heads; `body` the response body;
//! `chunked` the chunked coding.

mod body;
mod chunked;
mod connection;
mod error;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod head;
mod idle;
mod origin;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Buf;
use http::{HeaderMap, HeaderValue, Method, Response};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

pub use body::ResponseBody;
pub use error::ClientError;
pub(crate) use origin::Origin;

use connection::{Connection, Stream};
use head::{Parsed, RequestHead};

/// A request to send: everything but the endpoint.
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    pub method: Method,
    /// Path and query under the endpoint's prefix, starting with `/`.
    pub path: &'a str,
    /// End-to-end headers (no `host`, `content-length`, hop-by-hop or client credential).
    pub headers: &'a HeaderMap,
    /// The model's credential, sent as `Authorization`.
    pub authorization: Option<&'a HeaderValue>,
    pub body: &'a [u8],
}

/// One model's client: its connect timeout and TLS settings. Connections themselves are kept
/// per endpoint, in its [`Origin`].
#[derive(Debug, Clone)]
pub(crate) struct Client {
    connect_timeout: Option<Duration>,
    /// `None`: the process-wide configuration with Mozilla's roots (tests bring their own CA).
    tls: Option<Arc<ClientConfig>>,
}

/// Why an exchange on one connection failed, and whether a new connection may try again.
enum Failure {
    /// A kept-alive connection failed before any byte of a response: the server had closed it.
    Stale(ClientError),
    Final(ClientError),
}

impl Client {
    pub(crate) fn new(connect_timeout: Option<Duration>) -> Client {
        Client { connect_timeout, tls: None }
    }

    /// Sends `request` to `origin` and returns the response once its head has arrived.
    pub(crate) async fn send(
        &self,
        origin: &Arc<Origin>,
        request: &Outgoing<'_>,
    ) -> Result<Response<ResponseBody>, ClientError> {
        let target = origin.target(request.path);
        if !head::is_valid_target(&target) {
            return Err(ClientError::InvalidTarget(target));
        }
        let mut encoded = Vec::with_capacity(256);
        RequestHead {
            method: &request.method,
            target: &target,
            host: &origin.authority,
            headers: request.headers,
            authorization: request.authorization,
            content_length: request.body.len(),
        }
        .encode(&mut encoded);
        if let Some(connection) = origin.idle.take() {
            match exchange(connection, &encoded, request.body, origin).await {
                Ok(response) => return Ok(response),
                Err(Failure::Stale(error)) => {
                    tracing::debug!(%error, "kept-alive connection closed by the server; sending on a new one");
                }
                Err(Failure::Final(error)) => return Err(error),
            }
        }
        let connection = self.connect(origin).await?;
        exchange(connection, &encoded, request.body, origin)
            .await
            .map_err(|(Failure::Stale(error) | Failure::Final(error))| error)
    }

    async fn connect(&self, origin: &Origin) -> Result<Connection, ClientError> {
        let tls_name = match &origin.tls_name {
            None => None,
            Some(Ok(name)) => Some(name.clone()),
            Some(Err(host)) => {
                let problem = format!("{host:?} is not a valid TLS server name");
                return Err(ClientError::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, problem)));
            }
        };
        let connecting = TcpStream::connect((origin.host.as_str(), origin.port));
        let tcp = match self.connect_timeout {
            Some(limit) => {
                tokio::time::timeout(limit, connecting).await.map_err(|_| ClientError::ConnectTimeout(limit))?
            }
            None => connecting.await,
        }
        .map_err(ClientError::Connect)?;
        tcp.set_nodelay(true).map_err(ClientError::Connect)?;
        let stream = match tls_name {
            None => Stream::Plain(tcp),
            Some(name) => {
                let config = match &self.tls {
                    Some(config) => config.clone(),
                    None => tls_config().map_err(ClientError::Tls)?,
                };
                let tls = TlsConnector::from(config).connect(name, tcp).await.map_err(ClientError::Tls)?;
                Stream::Tls(Box::new(tls))
            }
        };
        Ok(Connection::new(stream))
    }
}

/// Writes the request on `connection` and reads the response head.
async fn exchange(
    mut connection: Connection,
    head: &[u8],
    body: &[u8],
    origin: &Arc<Origin>,
) -> Result<Response<ResponseBody>, Failure> {
    let reused = connection.reused;
    // Only a kept-alive connection that failed before answering anything is worth a retry.
    let stale_or_final = |error, answered: bool| {
        if reused && !answered { Failure::Stale(error) } else { Failure::Final(error) }
    };
    if let Err(error) = connection.write_request(head, body).await {
        return Err(stale_or_final(ClientError::Write(error), false));
    }
    let mut answered = false;
    loop {
        match head::parse_response(&connection.buffer).map_err(Failure::Final)? {
            Parsed::Partial => match connection.fill().await {
                Ok(0) => return Err(stale_or_final(ClientError::ClosedBeforeResponse, answered)),
                Ok(_) => answered = true,
                Err(error) => return Err(stale_or_final(ClientError::Read(error), answered)),
            },
            Parsed::Interim(length) => connection.buffer.advance(length),
            Parsed::Final(response, length) => {
                connection.buffer.advance(length);
                let park_in = response.keep_alive.then(|| origin.clone());
                let mut built = Response::new(ResponseBody::new(connection, response.framing, park_in));
                *built.status_mut() = response.status;
                *built.version_mut() = response.version;
                *built.headers_mut() = response.headers;
                return Ok(built);
            }
        }
    }
}

/// How often connections idle past their timeout are closed when no request comes to notice.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Closes expired idle connections of `origins` every [`SWEEP_INTERVAL`] until `shutdown`'s
/// sender is dropped. Without a tokio runtime nothing is started (connections then expire only
/// when next taken).
pub(crate) fn sweep_idle(origins: Vec<Weak<Origin>>, mut shutdown: watch::Receiver<()>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {}
            }
            for origin in origins.iter().filter_map(Weak::upgrade) {
                origin.idle.close_expired();
            }
        }
    });
}

/// Server certificates are checked against Mozilla's roots (webpki-roots), as browsers do; the
/// configuration is built once per process.
fn tls_config() -> Result<Arc<ClientConfig>, std::io::Error> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    let built = CONFIG.get_or_init(|| {
        let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    });
    built.clone().map_err(std::io::Error::other)
}
