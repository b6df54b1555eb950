//! TLS on both listeners and client certificates as callers (issue 15, items 4 and 5), against
//! the real binary: a CA, server and client certificates and a revocation list are made in the
//! test with rcgen, and a TLS client of the test's own (tokio-rustls, HTTP/1.1 by hand) shows
//! exactly which handshakes succeed and which certificate the server presents.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "test code: a failure is a failed test")]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use common::BINARY;

const BATCH_URI: &str = "spiffe://acme.internal/batch";

/// A certificate authority of the test's own.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Authority { issuer: Issuer::new(params, key), pem }
    }

    /// A certificate for `localhost` (and 127.0.0.1) that a server presents.
    fn server(&self, name: &str) -> Identity {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate with `uri` as its SAN, serial `serial`.
    fn client(&self, uri: &str, serial: u64) -> Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        params.distinguished_name.push(DnType::CommonName, "workload");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from(serial));
        self.sign(params)
    }

    fn expired_client(&self, uri: &str) -> Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names.push(SanType::URI(uri.try_into().unwrap()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.sign(params)
    }

    /// A revocation list naming `serials`.
    fn crl(&self, serials: &[u64]) -> String {
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }

    fn sign(&self, params: CertificateParams) -> Identity {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Identity { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// A certificate and its key, as PEM.
#[derive(Clone)]
struct Identity {
    cert_pem: String,
    key_pem: String,
}

impl Identity {
    fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }
}

/// The files a gateway's `[server.tls]` / `[admin.tls]` name.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files { dir: tempfile::tempdir().unwrap() }
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A TLS client trusting `ca`, presenting `identity` if given.
fn client(ca: &Authority, identity: Option<&Identity>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()).unwrap();
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                vec![identity.der()],
                PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection, or why the handshake failed.
async fn connect(connector: &TlsConnector, address: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

/// An answer read off a kept-alive HTTP/1.1 connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
}

/// One HTTP/1.1 request on `stream`, its answer read by `content-length` (the connection stays
/// open). An error when the server closed or refused the connection instead.
async fn request(
    stream: &mut TlsStream<TcpStream>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> std::io::Result<Answer> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n", body.len());
    if !body.is_empty() {
        head.push_str("content-type: application/json\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await?;
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("a status line");
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("an answer with a content-length: {head}"));
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Ok(Answer { status, body: serde_json::from_slice(&body).unwrap_or(Value::Null) })
}

/// A chat completion over a fresh connection with `connector`.
async fn chat(connector: &TlsConnector, address: SocketAddr, key: Option<&str>) -> std::io::Result<Answer> {
    let mut stream = connect(connector, address).await?;
    let bearer = key.map(|key| format!("Bearer {key}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|value| ("authorization", value.as_str())).collect();
    request(&mut stream, "POST", "/v1/chat/completions", &headers, Some(&common::chat_body("m"))).await
}

fn mapping(team: &str) -> String {
    format!(
        "[[auth.certificates]]\nname = \"batch\"\nmatch = {{ san_uri = \"{BATCH_URI}\" }}\nteam = \"{team}\"\nscopes = [\"chat\", \"models\"]\n"
    )
}

async fn gateway(stub: &StubUpstream, fragments: &[String]) -> Gateway {
    let mut builder = GatewayBuilder::new(BINARY).config(&common::models_config(stub, &["m"]));
    for fragment in fragments {
        builder = builder.config(fragment);
    }
    builder.start().await
}

fn server_tls(table: &str, files: &Files, extra: &str) -> String {
    format!(
        "[{table}]\ncert = {:?}\nkey = {:?}\n{extra}",
        files.path(&format!("{table}.crt")),
        files.path(&format!("{table}.key"))
    )
}

/// The proxy listener's files — a server certificate from `ca`, and `ca` as its client CA — and
/// its `[server.tls]` table (optional client certificates), to which a test may add lines.
fn proxy_trusting(ca: &Authority) -> (Files, String) {
    let files = Files::new();
    let server = ca.server("proxy");
    files.write("server.tls.crt", &server.cert_pem);
    files.write("server.tls.key", &server.key_pem);
    files.write("clients-ca.pem", &ca.pem);
    let tls = server_tls("server.tls", &files, &format!("client_ca = {:?}\n", files.path("clients-ca.pem")));
    (files, tls)
}

/// A trusted certificate on an optional listener is a caller of its own, mapped to its team, in
/// the audit log and the usage report; a key still works with or without a certificate, and wins
/// over one; an unmapped certificate is no caller; untrusted, expired and revoked certificates
/// never finish a handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_certificate_is_a_caller_and_bad_ones_are_refused_at_the_handshake() {
    let (ca, stranger) = (Authority::new("clients CA"), Authority::new("someone else"));
    let (files, tls) = proxy_trusting(&ca);
    files.write("clients.crl.pem", &ca.crl(&[666]));
    let tls = format!("{tls}crls = [{:?}]\n", files.path("clients.crl.pem"));
    let stub = StubUpstream::start().await;
    let gateway = gateway(&stub, &[tls, mapping("acme")]).await;
    gateway.cli_json(&["teams", "create", "acme"]);
    let (_, key) = gateway.create_key(&["--name", "plain"]);
    let address = gateway.proxy_addr();

    let batch = client(&ca, Some(&ca.client(BATCH_URI, 1)));
    let answer = chat(&batch, address, None).await.expect("a trusted certificate gets in");
    assert_eq!(answer.status, 200, "{answer:?}");
    let mut stream = connect(&batch, address).await.unwrap();
    let usage = request(&mut stream, "GET", "/v1/usage", &[], None).await.unwrap();
    assert_eq!(usage.status, 200, "{usage:?}");
    assert_eq!(usage.body["principal"]["id"], "cert:spiffe://acme.internal/batch", "{usage:?}");
    assert_eq!(usage.body["principal"]["kind"], "certificate", "{usage:?}");
    assert_eq!(usage.body["principal"]["team"], "acme", "{usage:?}");

    let records = common::wait_for_records(&gateway, "subject=spiffe://acme.internal/batch", 1).await;
    let record = records.first().expect("the certificate's request is audited");
    assert_eq!(record["principal_kind"], "certificate", "{record:#}");
    assert_eq!(record["key_id"], Value::Null, "{record:#}");
    assert_eq!(record["issuer"], "CN=clients CA", "{record:#}");
    let fingerprint = record["credential_id"].as_str().unwrap_or_default();
    assert!(fingerprint.starts_with("sha256:") && fingerprint.len() == 71, "{record:#}");
    assert_eq!(record["team"], "acme", "{record:#}");

    // Without a certificate, and with one but a key too: the key's caller.
    let anonymous = client(&ca, None);
    assert_eq!(chat(&anonymous, address, Some(&key)).await.unwrap().status, 200);
    assert_eq!(chat(&anonymous, address, None).await.unwrap().status, 401);
    let with_key = chat(&batch, address, Some(&key)).await.unwrap();
    assert_eq!(with_key.status, 200, "{with_key:?}");
    let with_bad_key = chat(&batch, address, Some("pcl_not_a_key")).await.unwrap();
    assert_eq!(
        (with_bad_key.status, with_bad_key.body["error"]["code"].as_str()),
        (401, Some("invalid_api_key")),
        "an explicit credential decides alone"
    );
    // Trusted, but no rule maps it.
    let unmapped = client(&ca, Some(&ca.client("spiffe://acme.internal/other", 2)));
    let refused = chat(&unmapped, address, None).await.unwrap();
    assert_eq!((refused.status, refused.body["error"]["code"].as_str()), (401, Some("invalid_api_key")));

    for (what, identity) in [
        ("untrusted", stranger.client(BATCH_URI, 3)),
        ("expired", ca.expired_client(BATCH_URI)),
        ("revoked", ca.client(BATCH_URI, 666)),
    ] {
        let connector = client(&ca, Some(&identity));
        let result = chat(&connector, address, None).await;
        assert!(result.is_err(), "a {what} certificate must not get an answer: {result:?}");
    }
    let metrics =
        common::http().get(format!("{}/metrics", gateway.admin_url())).send().await.unwrap().text().await.unwrap();
    let refused = metrics
        .lines()
        .find(|line| line.starts_with("portcullis_connections_total") && line.contains("tls_certificate_refused"))
        .unwrap_or_else(|| panic!("refused certificates are counted: {metrics}"));
    assert!(refused.contains("listener=\"proxy\"") && refused.ends_with(" 3"), "{refused}");
    // The usage recorder writes once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let usage = common::admin_json(&gateway, "/admin/v1/usage?group_by=key&since=1d").await;
        if usage.to_string().contains("cert:spiffe://acme.internal/batch") {
            break;
        }
        assert!(Instant::now() < deadline, "the certificate's usage is reported: {usage}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `auth explain --certificate` judges a certificate as the proxy listener's handshake and the
/// mapping would: a trusted, mapped one is its caller; an untrusted one is refused for its chain;
/// a trusted one that no rule maps names no caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_explain_judges_a_certificate_as_the_proxy_listener_would() {
    let (ca, stranger) = (Authority::new("clients CA"), Authority::new("someone else"));
    let (files, tls) = proxy_trusting(&ca);
    let stub = StubUpstream::start().await;
    let gateway = gateway(&stub, &[tls, mapping("acme")]).await;
    let explain = |name: &str, identity: &Identity| {
        let path = files.write(name, &identity.cert_pem);
        gateway.cli_json(&["auth", "explain", "--certificate", path.to_str().unwrap()])
    };

    let trusted = explain("batch.pem", &ca.client(BATCH_URI, 1));
    assert_eq!(trusted["accepted"], true, "{trusted:#}");
    assert_eq!(trusted["kind"], "certificate", "{trusted:#}");
    assert_eq!(trusted["issuer"], "CN=clients CA", "{trusted:#}");
    assert_eq!(trusted["principal"]["id"], "cert:spiffe://acme.internal/batch", "{trusted:#}");
    assert_eq!(trusted["principal"]["team"], "acme", "{trusted:#}");
    assert_eq!(trusted["principal"]["scopes"], serde_json::json!(["chat", "models"]), "{trusted:#}");
    let subject_line = &trusted["claims"][0];
    assert_eq!((subject_line["claim"].as_str(), subject_line["value"].as_str()), (Some("san_uri"), Some(BATCH_URI)));

    let untrusted = explain("stranger.pem", &stranger.client(BATCH_URI, 2));
    assert_eq!(untrusted["accepted"], false, "{untrusted:#}");
    assert_eq!(untrusted["refused"]["code"], "certificate_refused", "{untrusted:#}");
    assert_eq!(
        untrusted["principal"]["id"], "cert:spiffe://acme.internal/batch",
        "the rule it would meet: {untrusted:#}"
    );

    let expired = explain("expired.pem", &ca.expired_client(BATCH_URI));
    assert_eq!(expired["refused"]["code"], "certificate_refused", "{expired:#}");

    let unmapped = explain("other.pem", &ca.client("spiffe://acme.internal/other", 3));
    assert_eq!(
        (unmapped["accepted"].as_bool(), unmapped["refused"]["code"].as_str()),
        (Some(false), Some("invalid_api_key"))
    );
    assert_eq!(unmapped["principal"], Value::Null, "{unmapped:#}");

    let garbage =
        gateway.cli_json(&["auth", "explain", "--certificate", files.write("junk.pem", "junk").to_str().unwrap()]);
    assert_eq!(garbage["refused"]["code"], "invalid_certificate", "{garbage:#}");
}

/// On a `required` listener a client without a certificate gets no answer at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_listener_refuses_a_client_without_a_certificate() {
    let ca = Authority::new("clients CA");
    let (_files, tls) = proxy_trusting(&ca);
    let stub = StubUpstream::start().await;
    let gateway = gateway(&stub, &[format!("{tls}client_auth = \"required\"\n"), mapping("acme")]).await;
    gateway.cli_json(&["teams", "create", "acme"]);
    let (_, key) = gateway.create_key(&["--name", "plain"]);
    let address = gateway.proxy_addr();

    let anonymous = chat(&client(&ca, None), address, Some(&key)).await;
    assert!(anonymous.is_err(), "no certificate, no answer, key or not: {anonymous:?}");
    assert_eq!(proxy_connection_events(&gateway, "tls_certificate_refused").await, 1);
    let batch = chat(&client(&ca, Some(&ca.client(BATCH_URI, 1))), address, None).await.unwrap();
    assert_eq!(batch.status, 200, "{batch:?}");
}

/// The authorizer listener over TLS with required client certificates: a gateway holding one
/// from the configured CA gets its checks answered; anyone else never finishes the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorizer_answers_only_gateways_with_a_certificate() {
    let ca = Authority::new("gateways CA");
    let files = Files::new();
    let server = ca.server("authz");
    files.write("authz.tls.crt", &server.cert_pem);
    files.write("authz.tls.key", &server.key_pem);
    files.write("gateways-ca.pem", &ca.pem);
    let extra = format!("client_ca = {:?}\nclient_auth = \"required\"\n", files.path("gateways-ca.pem"));
    let stub = StubUpstream::start().await;
    let authz = "[authz]\nlisten = \"127.0.0.1:0\"\n".to_string();
    let gateway = gateway(&stub, &[authz, server_tls("authz.tls", &files, &extra)]).await;
    let (_, key) = gateway.create_key(&["--name", "client"]);
    let bearer = format!("Bearer {key}");
    let check = [
        ("authorization", bearer.as_str()),
        ("x-forwarded-uri", "/v1/chat/completions"),
        ("x-forwarded-method", "POST"),
        ("x-portcullis-model", "m"),
        ("x-original-content-length", "80"),
    ];

    let anonymous = connect(&client(&ca, None), gateway.authz_addr()).await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(mut stream) => request(&mut stream, "GET", "/authz", &check, None).await.is_err(),
    };
    assert!(refused, "a peer without a certificate gets no answer");
    let certified = client(&ca, Some(&ca.client("spiffe://acme.internal/nginx", 7)));
    let mut stream = connect(&certified, gateway.authz_addr()).await.expect("a gateway's handshake");
    let answer = request(&mut stream, "GET", "/authz", &check, None).await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
}

/// Both listeners speak TLS; new certificate and key files are picked up on SIGHUP by new
/// handshakes, while a kept-alive connection opened before goes on; unusable files are refused
/// as a whole and the running material kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_swapped_on_sighup_without_dropping_a_connection() {
    let ca = Authority::new("server CA");
    let files = Files::new();
    let (first, second) = (ca.server("first"), ca.server("second"));
    for table in ["server.tls", "admin.tls"] {
        files.write(&format!("{table}.crt"), &first.cert_pem);
        files.write(&format!("{table}.key"), &first.key_pem);
    }
    let stub = StubUpstream::start().await;
    let tls = [server_tls("server.tls", &files, ""), server_tls("admin.tls", &files, "")];
    let gateway = gateway(&stub, &tls).await;
    let connector = client(&ca, None);
    let token = format!("Bearer {}", gateway.admin_token());

    let mut admin = connect(&connector, gateway.admin_addr()).await.expect("the admin listener speaks TLS");
    let config = request(&mut admin, "GET", "/admin/v1/config", &[("authorization", &token)], None).await.unwrap();
    assert_eq!(config.status, 200, "{config:?}");
    assert!(speaks_http2(&ca, gateway.proxy_addr()).await, "ALPN offers h2, and HTTP/2 is served over TLS");
    let mut kept = connect(&connector, gateway.proxy_addr()).await.unwrap();
    assert_eq!(request(&mut kept, "GET", "/healthz", &[], None).await.unwrap().status, 200);
    assert_eq!(presented(&kept), first.der());

    files.write("server.tls.crt", &second.cert_pem);
    files.write("server.tls.key", &second.key_pem);
    gateway.signal("HUP");
    let swapped = wait_for_certificate(&connector, gateway.proxy_addr(), &second.der()).await;
    assert!(swapped, "new handshakes present the new certificate");
    assert_eq!(
        request(&mut kept, "GET", "/healthz", &[], None).await.unwrap().status,
        200,
        "the open connection goes on"
    );
    assert_eq!(presented(&kept), first.der());
    let admin_again = request(&mut admin, "GET", "/admin/v1/config", &[("authorization", &token)], None).await.unwrap();
    assert_eq!(admin_again.status, 200);

    // A key that does not fit its certificate: the reload is refused, the running material kept.
    files.write("server.tls.key", &first.key_pem);
    gateway.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let mut admin = connect(&connector, gateway.admin_addr()).await.unwrap();
        let view = request(&mut admin, "GET", "/admin/v1/config", &[("authorization", &token)], None).await.unwrap();
        if view.body["last_reload"]["outcome"] == "error" || Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = refused.body["last_reload"]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("server.tls.key"), "{refused:?}");
    let fresh = connect(&connector, gateway.proxy_addr()).await.unwrap();
    assert_eq!(presented(&fresh), second.der(), "the running certificate stays");
}

/// A client that opens a TCP connection and never finishes the handshake — silent, or stopping
/// half-way through its hello — is closed at `header_read_timeout`, like one that never sends a
/// request head. A connection over a cap is closed without a handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_handshake_is_dropped_at_the_header_timeout() {
    let ca = Authority::new("server CA");
    let files = Files::new();
    let server = ca.server("proxy");
    files.write("server.tls.crt", &server.cert_pem);
    files.write("server.tls.key", &server.key_pem);
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(BINARY)
        .server_setting("header_read_timeout = \"1s\"")
        .server_setting("max_connections_per_client = 1")
        .config(&common::models_config(&stub, &["m"]))
        .config(&server_tls("server.tls", &files, ""))
        .start()
        .await;
    // The first bytes of a TLS ClientHello record: a handshake that never goes on.
    let partial_hello: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01];
    for sent in [&[][..], partial_hello] {
        let mut tcp = TcpStream::connect(gateway.proxy_addr()).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        let started = Instant::now();
        let mut sink = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut sink)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed, not left open: {closed:?}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(3), "closed after {waited:?}");
    }
    assert_eq!(proxy_connection_events(&gateway, "tls_handshake_timeout").await, 2);
    // The listener still serves a client that completes its handshake …
    let mut stream = connect(&client(&ca, None), gateway.proxy_addr()).await.unwrap();
    assert_eq!(request(&mut stream, "GET", "/healthz", &[], None).await.unwrap().status, 200);
    // … and closes one over the per-client cap without a handshake.
    let over = connect(&client(&ca, None), gateway.proxy_addr()).await;
    assert!(over.is_err(), "over the cap: {:?}", over.map(|_| "a TLS connection"));
    assert_eq!(proxy_connection_events(&gateway, "client_full").await, 1);
}

/// A key that does not fit its certificate, or a missing file, stops `serve` and fails `config
/// check`, naming the setting and the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_stop_the_start_and_fail_config_check() {
    let ca = Authority::new("server CA");
    let files = Files::new();
    let (one, other) = (ca.server("one"), ca.server("other"));
    files.write("server.tls.crt", &one.cert_pem);
    files.write("server.tls.key", &other.key_pem);
    let stub = StubUpstream::start().await;
    let mismatched = server_tls("server.tls", &files, "");
    let started =
        GatewayBuilder::new(BINARY).config(&common::models_config(&stub, &["m"])).config(&mismatched).try_start().await;
    let error = started.expect_err("a key that does not fit its certificate stops the start").to_string();
    assert!(error.contains("server.tls.key") && error.contains("does not fit"), "{error}");

    let missing = format!("[admin.tls]\ncert = {:?}\nkey = {:?}\n", files.path("absent.crt"), files.path("absent.key"));
    let path = files.write("portcullis.toml", &missing);
    let output = std::process::Command::new(BINARY).args(["config", "check", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("admin.tls.cert"), "{}", common::describe(&output));
    assert!(stderr.contains("absent.crt"), "the file is named: {stderr}");
}

/// `portcullis_connections_total{listener="proxy",event}` from the (plain HTTP) admin listener.
async fn proxy_connection_events(gateway: &Gateway, event: &str) -> u64 {
    let metrics =
        common::http().get(format!("{}/metrics", gateway.admin_url())).send().await.unwrap().text().await.unwrap();
    metrics
        .lines()
        .filter(|line| line.starts_with("portcullis_connections_total") && line.contains("listener=\"proxy\""))
        .find(|line| line.contains(&format!("event=\"{event}\"")))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Whether a client offering `h2` by ALPN gets it, and an HTTP/2 SETTINGS frame in answer to its
/// connection preface.
async fn speaks_http2(ca: &Authority, address: SocketAddr) -> bool {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut stream = connect(&TlsConnector::from(Arc::new(config)), address).await.unwrap();
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return false;
    }
    // The preface, then an empty SETTINGS frame.
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let mut frame_head = [0u8; 9];
    stream.read_exact(&mut frame_head).await.is_ok() && frame_head[3] == 0x04
}

/// The certificate the server presented on `stream`.
fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

/// Whether new handshakes present `expected` within a few seconds (a reload is asynchronous).
async fn wait_for_certificate(connector: &TlsConnector, address: SocketAddr, expected: &CertificateDer<'_>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(stream) = connect(connector, address).await
            && presented(&stream) == *expected
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
