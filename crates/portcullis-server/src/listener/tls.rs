//! TLS termination: a listener's certificate, key and client-certificate verifier, read from
//! their PEM files at start and again on every reload, and the handshake itself. New handshakes
//! take whatever is installed when they begin; a connection keeps the material it was opened
//! with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use portcullis_config::{ClientAuth, TlsConfig};
use portcullis_types::chain;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::client_certificate::ClientCertificate;
use crate::listener_kind::ListenerKind;
use crate::metrics::Metrics;

/// A listener's TLS material, swappable while it serves.
pub struct Tls {
    /// `server.tls` or `admin.tls`, to name the setting in errors.
    setting: &'static str,
    files: TlsConfig,
    current: ArcSwap<ServerConfig>,
}

/// The files, never the material (it holds the private key).
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("setting", &self.setting).field("files", &self.files).finish_non_exhaustive()
    }
}

/// A TLS file that could not be used; the cause is the source.
#[derive(Debug, thiserror::Error)]
#[error("{setting} ({}): {what}", path.display())]
pub struct TlsError {
    setting: String,
    path: PathBuf,
    what: &'static str,
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// New material, read and checked, not yet in use: see [`Tls::prepare`].
pub struct Prepared(Arc<ServerConfig>);

impl Tls {
    /// Reads the files `files` names; `setting` is where they are configured.
    pub fn load(setting: &'static str, files: &TlsConfig) -> Result<Tls, TlsError> {
        let config = server_config(setting, files)?;
        Ok(Tls { setting, files: files.clone(), current: ArcSwap::from_pointee(config) })
    }

    /// Reads the files again, from the paths the listener started with.
    pub fn prepare(&self) -> Result<Prepared, TlsError> {
        server_config(self.setting, &self.files).map(|config| Prepared(Arc::new(config)))
    }

    /// New handshakes use `prepared` from now on.
    pub fn install(&self, prepared: Prepared) {
        self.current.store(prepared.0);
    }

    /// Runs the server side of the handshake on `stream` with the material installed now, until
    /// `by` at the latest; returns the TLS stream and the client certificate it verified.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        by: Instant,
    ) -> Result<(TlsStream<TcpStream>, Option<Arc<ClientCertificate>>), HandshakeFailure> {
        let acceptor = TlsAcceptor::from(self.current.load_full());
        let stream = match tokio::time::timeout_at(by.into(), acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(HandshakeFailure::from_error(error)),
            Err(_) => return Err(HandshakeFailure::Timeout),
        };
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| Arc::new(ClientCertificate::new(leaf.clone().into_owned())));
        Ok((stream, certificate))
    }
}

/// Why a connection never got past its TLS handshake.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// Not finished by the head deadline (`server.header_read_timeout`).
    Timeout,
    /// The client's certificate was refused: untrusted, expired, revoked, unfit for client
    /// authentication, or missing on a listener that requires one.
    Certificate(rustls::Error),
    /// Anything else: not TLS, no protocol or cipher in common, the client gave up.
    Other(std::io::Error),
    /// The server cut its connections while the handshake ran.
    Cut,
}

impl HandshakeFailure {
    fn from_error(error: std::io::Error) -> HandshakeFailure {
        match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(
                refused @ (rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertRevocationList(_)),
            ) => HandshakeFailure::Certificate(refused.clone()),
            _ => HandshakeFailure::Other(error),
        }
    }

    /// Counted by kind. Like every connection-level event it is not audited one by one (a flood
    /// of handshakes would flood the audit log); a refused certificate is logged, though, for
    /// the operator to see which client was turned away and why.
    pub fn report(&self, listener: ListenerKind, metrics: &Metrics, peer: SocketAddr) {
        let event = match self {
            HandshakeFailure::Timeout => "tls_handshake_timeout",
            HandshakeFailure::Certificate(error) => {
                tracing::info!(listener = listener.name(), client = %peer.ip(), reason = %error, "client certificate refused");
                "tls_certificate_refused"
            }
            HandshakeFailure::Other(error) => {
                tracing::debug!(listener = listener.name(), %peer, error = %chain(error), "TLS handshake failed");
                "tls_handshake_failed"
            }
            HandshakeFailure::Cut => return,
        };
        metrics.connection_event(listener, event);
    }
}

fn server_config(setting: &str, files: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let in_file = |field: &str, path: &Path, what: &'static str| FileError {
        setting: format!("{setting}.{field}"),
        path: path.to_path_buf(),
        what,
    };
    let chain =
        read_all::<CertificateDer<'static>>(&files.cert).map_err(in_file("cert", &files.cert, "unreadable").wrap())?;
    if chain.is_empty() {
        return Err(in_file("cert", &files.cert, "no certificate").wrap()("no PEM CERTIFICATE block"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(in_file("key", &files.key, "no usable key").wrap())?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(in_file("cert", &files.cert, "unsupported").wrap())?;
    let builder = match client_verifier(setting, files)? {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(in_file("key", &files.key, "does not fit the certificate").wrap())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The verifier of client certificates that `files` configure (none without a `client_ca`): the
/// handshake's, and `auth explain`'s for a certificate it is shown.
pub fn client_verifier(setting: &str, files: &TlsConfig) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    let Some(ca) = &files.client_ca else { return Ok(None) };
    let in_file = |field: &str, path: &Path, what: &'static str| FileError {
        setting: format!("{setting}.{field}"),
        path: path.to_path_buf(),
        what,
    };
    let mut roots = RootCertStore::empty();
    let cas = read_all::<CertificateDer<'static>>(ca).map_err(in_file("client_ca", ca, "unreadable").wrap())?;
    for certificate in cas {
        roots.add(certificate).map_err(in_file("client_ca", ca, "not a CA certificate").wrap())?;
    }
    let mut crls = Vec::new();
    for path in &files.crls {
        let list = read_all::<CertificateRevocationListDer<'static>>(path);
        crls.extend(list.map_err(in_file("crls", path, "unreadable").wrap())?);
    }
    // Revocation is checked for the client's own certificate; one whose issuer has no list in
    // `crls` (once any is given) is refused rather than let through unchecked.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls)
        .only_check_end_entity_revocation();
    if files.client_auth == ClientAuth::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    Ok(Some(verifier.build().map_err(in_file("client_ca", ca, "unusable").wrap())?))
}

/// Which file, and what is wrong with it; [`FileError::wrap`] adds the cause.
struct FileError {
    setting: String,
    path: PathBuf,
    what: &'static str,
}

impl FileError {
    fn wrap<E: Into<Box<dyn std::error::Error + Send + Sync>>>(self) -> impl FnOnce(E) -> TlsError {
        move |source| TlsError { setting: self.setting, path: self.path, what: self.what, source: source.into() }
    }
}

/// Every PEM block of type `T` in the file at `path`.
fn read_all<T: PemObject>(path: &Path) -> Result<Vec<T>, rustls::pki_types::pem::Error> {
    T::pem_file_iter(path)?.collect()
}
