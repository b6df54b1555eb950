//! The client against scripted servers on loopback: each test's server writes exactly the bytes
//! a real server (or a misbehaving one) would, and counts the connections it accepts.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

use super::*;

const CA: &[u8] = include_bytes!("testdata/ca.der");
const LEAF: &[u8] = include_bytes!("testdata/leaf.der");
const LEAF_KEY: &[u8] = include_bytes!("testdata/leaf.key.der");

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// Accepts connections forever, running `script(n, stream)` for the n-th (from 0).
async fn server<F, Fut>(script: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let index = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(script(index, stream));
        }
    });
    (address, accepted)
}

/// Reads one request (head and `content-length` body); `None` when the client closed first.
async fn read_request(stream: &mut (impl AsyncRead + Unpin)) -> Option<String> {
    let mut received = Vec::new();
    let mut byte = [0; 1];
    while !received.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        received.push(byte[0]);
    }
    let head = String::from_utf8(received).unwrap();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |value| value.parse::<usize>().unwrap());
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(head + std::str::from_utf8(&body).unwrap())
}

/// Answers every request on the connection with `response`.
async fn answer_each(mut stream: impl AsyncRead + AsyncWrite + Unpin, response: &'static str) {
    while read_request(&mut stream).await.is_some() {
        stream.write_all(response.as_bytes()).await.unwrap();
    }
}

fn origin(address: SocketAddr, scheme: &str) -> Arc<Origin> {
    Arc::new(Origin::new(&Url::parse(&format!("{scheme}://{address}/prefix")).unwrap()))
}

fn client() -> Client {
    Client::new(Some(Duration::from_secs(2)))
}

async fn post(client: &Client, origin: &Arc<Origin>) -> Result<(StatusCode, Bytes), ClientError> {
    let headers = HeaderMap::new();
    let request = Outgoing {
        method: Method::POST,
        path: "/v1/chat/completions",
        headers: &headers,
        authorization: None,
        body: b"{}",
    };
    let response = client.send(origin, &request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

#[tokio::test]
async fn the_request_is_written_under_the_endpoint_prefix_and_the_connection_kept() {
    let (sent, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (address, accepted) = server(move |_, mut stream| {
        let sent = sent.clone();
        async move {
            while let Some(request) = read_request(&mut stream).await {
                sent.send(request).unwrap();
                stream.write_all(OK.as_bytes()).await.unwrap();
            }
        }
    })
    .await;
    let origin = origin(address, "http");
    let client = client();
    for _ in 0..3 {
        assert_eq!(post(&client, &origin).await.unwrap(), (StatusCode::OK, Bytes::from("ok")));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection carried all three");
    let request = seen.recv().await.unwrap();
    assert_eq!(
        request,
        format!("POST /prefix/v1/chat/completions HTTP/1.1\r\nhost: {address}\r\ncontent-length: 2\r\n\r\n{{}}")
    );
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_not_reused() {
    let (address, accepted) = server(|_, mut stream| async move {
        read_request(&mut stream).await;
        stream.write_all(OK.as_bytes()).await.unwrap();
        // Closes right after answering, as a server with a short keep-alive timeout would.
    })
    .await;
    let origin = origin(address, "http");
    let client = client();
    post(&client, &origin).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(post(&client, &origin).await.unwrap().0, StatusCode::OK);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_the_server_dropped_with_its_kept_alive_connection_is_sent_again() {
    let (sent, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let (address, accepted) = server(move |index, mut stream| {
        let sent = sent.clone();
        async move {
            if index == 0 {
                read_request(&mut stream).await;
                stream.write_all(OK.as_bytes()).await.unwrap();
                // The next request arrives just as this connection times out: read, not answered.
                read_request(&mut stream).await;
                sent.send("dropped").unwrap();
            } else {
                answer_each(stream, OK).await;
            }
        }
    })
    .await;
    let origin = origin(address, "http");
    let client = client();
    post(&client, &origin).await.unwrap();
    assert_eq!(post(&client, &origin).await.unwrap(), (StatusCode::OK, Bytes::from("ok")));
    assert_eq!(seen.recv().await, Some("dropped"));
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "sent again on a new connection");
}

#[tokio::test]
async fn a_new_connection_closed_without_an_answer_is_an_error_and_not_retried() {
    let (address, accepted) = server(|_, mut stream| async move {
        read_request(&mut stream).await;
    })
    .await;
    let error = post(&client(), &origin(address, "http")).await.unwrap_err();
    assert!(matches!(error, ClientError::ClosedBeforeResponse), "{error}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn chunked_bodies_with_trailers_after_an_interim_response_keep_the_connection() {
    const CHUNKED: &str = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                           3\r\nhel\r\n2;ext=1\r\nlo\r\n0\r\nx-checksum: 1\r\n\r\n";
    let (address, accepted) = server(|_, stream| answer_each(stream, CHUNKED)).await;
    let origin = origin(address, "http");
    let client = client();
    for _ in 0..2 {
        assert_eq!(post(&client, &origin).await.unwrap(), (StatusCode::OK, Bytes::from("hello")));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_close_delimited_body_ends_at_the_close_and_its_connection_is_not_reused() {
    let (address, accepted) = server(|_, mut stream| async move {
        read_request(&mut stream).await;
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end").await.unwrap();
    })
    .await;
    let origin = origin(address, "http");
    let client = client();
    for _ in 0..2 {
        assert_eq!(post(&client, &origin).await.unwrap().1, "until the end");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    let (address, _) = server(|_, mut stream| async move {
        read_request(&mut stream).await;
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf").await.unwrap();
    })
    .await;
    let error = post(&client(), &origin(address, "http")).await.unwrap_err();
    assert!(matches!(error, ClientError::ClosedMidBody), "{error}");
}

#[tokio::test]
async fn dropping_a_body_half_way_closes_its_connection() {
    let (closed, mut saw_close) = tokio::sync::mpsc::unbounded_channel();
    let (address, accepted) = server(move |_, mut stream| {
        let closed = closed.clone();
        async move {
            read_request(&mut stream).await;
            stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n").await.unwrap();
            let mut rest = Vec::new();
            // Returns once the client has closed its end.
            let _ = stream.read_to_end(&mut rest).await;
            closed.send(()).unwrap();
        }
    })
    .await;
    let origin = origin(address, "http");
    let client = client();
    let headers = HeaderMap::new();
    let request =
        Outgoing { method: Method::POST, path: "/v1/completions", headers: &headers, authorization: None, body: b"" };
    let mut body = client.send(&origin, &request).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    drop(body);
    tokio::time::timeout(Duration::from_secs(2), saw_close.recv()).await.unwrap();
    assert!(origin.idle.take().is_none(), "nothing was parked");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bytes_beyond_the_declared_body_retire_the_connection() {
    let (address, accepted) =
        server(|_, stream| answer_each(stream, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA")).await;
    let origin = origin(address, "http");
    let client = client();
    for _ in 0..2 {
        assert_eq!(post(&client, &origin).await.unwrap().1, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// Answers one request with `response`, written in pieces of `piece` bytes (each flushed and
/// given time to be read on its own), then keeps the connection open until the client leaves.
async fn answer_in_pieces(mut stream: TcpStream, response: Vec<u8>, piece: usize) {
    read_request(&mut stream).await;
    for part in response.chunks(piece) {
        if stream.write_all(part).await.is_err() {
            return;
        }
        stream.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    let _ = stream.read_to_end(&mut Vec::new()).await;
}

/// The 64 KiB limit on a response head holds however its bytes arrive: in one write, in many
/// small ones, and exactly at the boundary (a head of the limit passes, one byte more does not).
#[tokio::test]
async fn the_response_head_limit_holds_however_the_bytes_arrive() {
    use super::head::MAX_HEAD_BYTES;
    use super::head::tests::head_of_length;
    for piece in [usize::MAX, 4096, 100] {
        for (length, accepted) in [(MAX_HEAD_BYTES, true), (MAX_HEAD_BYTES + 1, false), (3 * MAX_HEAD_BYTES, false)] {
            let response = format!("{}ok", head_of_length(length)).into_bytes();
            let (address, _) = server(move |_, stream| answer_in_pieces(stream, response.clone(), piece)).await;
            let result = post(&client(), &origin(address, "http")).await;
            match result {
                Ok((status, body)) => {
                    assert!(accepted, "a head of {length} bytes in pieces of {piece} was accepted");
                    assert_eq!((status, body), (StatusCode::OK, Bytes::from("ok")));
                }
                Err(error) => {
                    assert!(!accepted, "a head of {length} bytes in pieces of {piece} was refused: {error}");
                    assert!(error.to_string().contains("larger than"), "{error}");
                }
            }
        }
    }
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(LEAF_KEY.to_vec()));
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(LEAF.to_vec())], key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn tls_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let acceptor = tls_acceptor();
    server(move |_, stream| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(stream) = acceptor.accept(stream).await {
                answer_each(stream, OK).await;
            }
        }
    })
    .await
}

#[tokio::test]
async fn https_endpoints_are_spoken_to_over_tls_with_a_verified_certificate() {
    let (address, accepted) = tls_server().await;
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(CA.to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = Client { connect_timeout: None, tls: Some(Arc::new(config)) };
    let origin = origin(address, "https");
    for _ in 0..2 {
        assert_eq!(post(&client, &origin).await.unwrap(), (StatusCode::OK, Bytes::from("ok")));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the TLS connection is kept alive too");
}

#[tokio::test]
async fn a_certificate_outside_the_trusted_roots_is_refused() {
    let (address, _) = tls_server().await;
    let error = post(&client(), &origin(address, "https")).await.unwrap_err();
    assert!(matches!(error, ClientError::Tls(_)), "{error}");
    let said = portcullis_types::chain(&error).to_string();
    assert!(said.starts_with("TLS handshake failed: ") && said.contains("certificate"), "{said}");
}

/// The URL parser takes host names that are no valid TLS server name (`}`, `=`, `;` …); such an
/// `https` endpoint was spoken to in plain HTTP, its credential in the clear. It must fail as a
/// TLS error instead, before anything is sent.
#[tokio::test]
async fn an_https_host_that_is_no_tls_server_name_is_never_spoken_to_in_plain_http() {
    for url in ["https://models}.example:8443/v1", "https://a=b.example/", "https://x;y/"] {
        let origin = Arc::new(Origin::new(&Url::parse(url).unwrap()));
        let error = post(&client(), &origin).await.unwrap_err();
        assert!(matches!(error, ClientError::Tls(_)), "{url}: {error}");
    }
}
