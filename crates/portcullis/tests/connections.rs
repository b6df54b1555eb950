//! Connections a hostile or broken client holds or abuses, through the real binary: sockets that
//! send nothing (or half a head, or an HTTP/2 preface and silence), connections past the caps,
//! heads hyper would refuse on its own, ambiguous framing, bodies that never finish or are too
//! big. Each must end in a bounded time, with an OpenAI-shaped answer where there is a request
//! to answer, and without taking the admin listener down with it.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{BINARY, chat_body, http, send, the_record};
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn start_gateway(server_settings: &[&str]) -> (StubUpstream, Gateway) {
    let stub = StubUpstream::start().await;
    let mut builder = GatewayBuilder::new(BINARY).config(&common::models_config(&stub, &["m"]));
    for line in server_settings {
        builder = builder.server_setting(line);
    }
    (stub, builder.start().await)
}

/// Reads until the server closes the connection; `None` if it is still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let deadline = Instant::now() + within;
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(received),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
            Err(_) => return None,
        }
    }
}

/// An answer read off the wire.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
    text: String,
}

impl RawReply {
    fn parse(bytes: &[u8]) -> RawReply {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no complete answer: {text:?}"));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text:?}"));
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        RawReply { status, headers, body: serde_json::from_str(body).unwrap_or(Value::Null), text }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    #[track_caller]
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.body["error"]["code"], code, "{}", self.text);
        assert!(self.body["error"]["message"].is_string(), "{}", self.text);
        assert!(self.header("x-request-id").is_some_and(|id| id.starts_with("req_")), "no request id: {}", self.text);
    }
}

/// Sends `bytes` on a new connection and reads the answer up to the server's close.
async fn raw(address: SocketAddr, bytes: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    let answer =
        read_until_closed(&mut stream, Duration::from_secs(5)).await.expect("the gateway closes after answering");
    RawReply::parse(&answer)
}

#[tokio::test]
async fn connections_that_never_complete_a_head_are_closed_at_the_head_timeout() {
    let (_stub, gateway) = start_gateway(&["header_read_timeout = \"1s\"", "idle_timeout = \"30s\""]).await;
    let openings: [&[u8]; 5] =
        [b"", b"PRI * HTTP/2.0\r\n", HTTP2_PREFACE, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n", b"G"];
    let started = Instant::now();
    let waits = openings.iter().map(|opening| async {
        let mut stream = TcpStream::connect(gateway.proxy_addr()).await.expect("connect");
        stream.write_all(opening).await.expect("send");
        let closed = read_until_closed(&mut stream, Duration::from_secs(4)).await;
        (String::from_utf8_lossy(opening).into_owned(), closed.is_some(), started.elapsed())
    });
    for (opening, closed, after) in futures_util::future::join_all(waits).await {
        assert!(closed, "a connection that sent {opening:?} was still open after {after:?}");
        assert!(after >= Duration::from_millis(900), "{opening:?}: closed before its timeout ({after:?})");
    }
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_when_idle_and_a_trickled_head_at_the_head_timeout() {
    let (_stub, gateway) = start_gateway(&["header_read_timeout = \"1s\"", "idle_timeout = \"2s\""]).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut idle = TcpStream::connect(gateway.proxy_addr()).await.expect("connect");
    idle.write_all(request).await.expect("send");
    let mut buffer = [0u8; 1024];
    let read = idle.read(&mut buffer).await.expect("an answer");
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buffer[..read]));
    let answered = Instant::now();
    assert!(read_until_closed(&mut idle, Duration::from_secs(4)).await.is_some(), "idle for 4 s and still open");
    assert!(answered.elapsed() >= Duration::from_millis(1800), "closed before the idle timeout");

    // A kept-alive connection that starts a head and stops gets the head timeout, not the idle one.
    let mut trickle = TcpStream::connect(gateway.proxy_addr()).await.expect("connect");
    trickle.write_all(request).await.expect("send");
    let _ = trickle.read(&mut buffer).await.expect("an answer");
    trickle.write_all(b"GET /healthz HTTP/1.1\r\n").await.expect("send half a head");
    let begun = Instant::now();
    assert!(read_until_closed(&mut trickle, Duration::from_secs(4)).await.is_some(), "half a head held it open");
    assert!(begun.elapsed() < Duration::from_millis(1900), "closed at the idle timeout, not the head timeout");
}

#[tokio::test]
async fn a_flood_of_idle_sockets_is_shed_with_503_and_the_admin_listener_stays_reachable() {
    let (_stub, gateway) = start_gateway(&["max_connections = 8", "max_connections_per_client = 0"]).await;
    let mut flood = Vec::new();
    for _ in 0..8 {
        flood.push(TcpStream::connect(gateway.proxy_addr()).await.expect("connect"));
    }
    // Accepted connections are counted as the accept loop takes them: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shed = raw(gateway.proxy_addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(shed.status, 503, "{}", shed.text);
    assert_eq!(shed.body["error"]["code"], "too_many_connections", "{}", shed.text);
    assert_eq!(shed.header("retry-after"), Some("1"));

    let admin = send(http().get(format!("{}/healthz", gateway.admin_url()))).await;
    assert_eq!(admin.status, 200, "the admin listener must answer during a proxy flood: {}", admin.text);

    drop(flood);
    let mut recovered = false;
    for _ in 0..50 {
        if send(http().get(format!("{}/healthz", gateway.proxy_url()))).await.status == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "the proxy listener did not recover after the flood ended");
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_unless_it_is_a_trusted_proxy() {
    let (_stub, gateway) = start_gateway(&["max_connections_per_client = 2"]).await;
    let _held = [
        TcpStream::connect(gateway.proxy_addr()).await.expect("connect"),
        TcpStream::connect(gateway.proxy_addr()).await.expect("connect"),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shed = raw(gateway.proxy_addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(shed.status, 503, "{}", shed.text);
    assert!(shed.body["error"]["message"].as_str().is_some_and(|m| m.contains("client address")), "{}", shed.text);

    let (_stub, trusted) =
        start_gateway(&["max_connections_per_client = 2", "trusted_proxies = [\"127.0.0.0/8\"]"]).await;
    let _held = [
        TcpStream::connect(trusted.proxy_addr()).await.expect("connect"),
        TcpStream::connect(trusted.proxy_addr()).await.expect("connect"),
    ];
    let reply = raw(trusted.proxy_addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(reply.status, 200, "a trusted proxy speaks for many clients: {}", reply.text);
}

#[tokio::test]
async fn heads_hyper_would_refuse_bare_get_an_openai_error_with_a_request_id_and_a_record() {
    let (_stub, gateway) = start_gateway(&["max_header_bytes = 8192", "max_headers = 16"]).await;
    let many_headers: String = (0..20).map(|i| format!("X-Filler-{i}: v\r\n")).collect();
    let cases: Vec<(String, Vec<u8>, u16, &str)> = vec![
        ("too many headers".into(), format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(), 431, "request_header_too_large"),
        ("a head too large".into(), format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(9000)).into_bytes(), 431, "request_header_too_large"),
        ("an invalid header byte".into(), b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n".to_vec(), 400, "malformed_request"),
        ("a header line without a colon".into(), b"GET /v1/models HTTP/1.1\r\nHost: x\r\nnonsense\r\n\r\n".to_vec(), 400, "malformed_request"),
        ("Content-Length with Transfer-Encoding".into(), b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400, "malformed_request"),
        ("two Content-Lengths".into(), b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}".to_vec(), 400, "malformed_request"),
    ];
    for (what, bytes, status, code) in cases {
        let reply = raw(gateway.proxy_addr(), &bytes).await;
        assert_eq!(
            (reply.status, reply.body["error"]["code"].as_str()),
            (status, Some(code)),
            "{what}: {}",
            reply.text
        );
        reply.assert_error(status, code);
        let id = reply.header("x-request-id").expect("a request id");
        let record = the_record(&gateway, id).await;
        assert_eq!(record["status"], status, "{what}: {record}");
        assert_eq!(record["decision"], "deny", "{what}: {record}");
        assert_eq!(record["reason"], code, "{what}: {record}");
        assert_eq!(record["client_ip"], "127.0.0.1", "{what}: {record}");
    }
}

#[tokio::test]
async fn duplicate_credentials_or_hosts_and_a_missing_host_are_refused() {
    let (_stub, gateway) = start_gateway(&[]).await;
    let (_, key) = gateway.create_key(&[]);
    let body = serde_json::to_string(&chat_body("m")).expect("json");
    let post = |extra: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let cases = [
        (
            "two Authorization headers",
            post(&format!("Host: x\r\nAuthorization: Bearer {key}\r\nAuthorization: Bearer pcl_other\r\n")),
        ),
        ("two x-api-key headers", post(&format!("Host: x\r\nx-api-key: {key}\r\nx-api-key: {key}\r\n"))),
        ("two Host headers", post(&format!("Host: x\r\nHost: y\r\nAuthorization: Bearer {key}\r\n"))),
        ("no Host in HTTP/1.1", post(&format!("Authorization: Bearer {key}\r\n"))),
    ];
    for (what, request) in cases {
        let reply = raw(gateway.proxy_addr(), request.as_bytes()).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.text);
        reply.assert_error(400, "malformed_request");
        let record = the_record(&gateway, reply.header("x-request-id").expect("id")).await;
        assert_eq!(record["reason"], "malformed_request", "{what}: {record}");
    }
    let fine = raw(gateway.proxy_addr(), post(&format!("Host: x\r\nAuthorization: Bearer {key}\r\n")).as_bytes()).await;
    assert_eq!(fine.status, 200, "{}", fine.text);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_its_413_rather_than_a_reset() {
    let (_stub, gateway) = start_gateway(&["max_body_bytes = 65536"]).await;
    let (_, key) = gateway.create_key(&[]);
    // A simple client: it sends the whole request, then reads the answer.
    let declared = 4_000_000;
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    .into_bytes();
    request.resize(request.len() + declared, b' ');
    let mut stream = TcpStream::connect(gateway.proxy_addr()).await.expect("connect");
    for chunk in request.chunks(64 * 1024) {
        stream.write_all(chunk).await.expect("the gateway reads the rest of the body instead of resetting");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await.expect("closed after answering");
    RawReply::parse(&answer).assert_error(413, "request_too_large");
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_400_not_a_413() {
    let (_stub, gateway) = start_gateway(&[]).await;
    let (_, key) = gateway.create_key(&[]);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
    );
    let reply = raw(gateway.proxy_addr(), request.as_bytes()).await;
    reply.assert_error(400, "malformed_request");
}

#[tokio::test]
async fn a_body_that_stops_or_trickles_gets_408_in_bounded_time() {
    let (_stub, gateway) = start_gateway(&["body_read_timeout = \"1s\"", "min_body_rate = 1000"]).await;
    let (_, key) = gateway.create_key(&[]);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    );
    // Stops after a few bytes.
    let started = Instant::now();
    let reply = raw(gateway.proxy_addr(), format!("{head}{{\"model\":").as_bytes()).await;
    reply.assert_error(408, "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());

    // Trickles a byte every 200 ms: never silent for a second, far below 1 000 bytes a second.
    let mut stream = TcpStream::connect(gateway.proxy_addr()).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send the head");
    let started = Instant::now();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(6) {
        if stream.write_all(b" ").await.is_err() {
            break;
        }
        let mut buffer = [0u8; 2048];
        if let Ok(Ok(read)) = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
            answer.extend_from_slice(&buffer[..read]);
            if read == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    }
    let reply = RawReply::parse(&answer);
    reply.assert_error(408, "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(4), "a trickle held the request for {:?}", started.elapsed());
}

#[tokio::test]
async fn concurrency_is_taken_before_the_body_so_slow_bodies_cannot_exceed_it() {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(BINARY)
        .server_setting("body_read_timeout = \"2s\"")
        .config(&common::models_config(&stub, &["m"]))
        .config("[tiers.free]\nmax_concurrent = 2\n")
        .start()
        .await;
    let (_, key) = gateway.create_key(&[]);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
    );
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(gateway.proxy_addr()).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("send");
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let third = common::chat(&gateway, Some(&key), "m").await;
    third.assert_error(429, "rate_limit_exceeded");
    assert!(third.message().contains("max_concurrent"), "{}", third.text);
    assert!(started.elapsed() < Duration::from_secs(1), "refused at once, not after the slow bodies");

    // The slow bodies time out and give their slots back.
    for mut stream in slow {
        let answer = read_until_closed(&mut stream, Duration::from_secs(5)).await.expect("closed after its 408");
        RawReply::parse(&answer).assert_error(408, "request_timeout");
    }
    common::chat(&gateway, Some(&key), "m").await.assert_ok();
}

#[tokio::test]
async fn http2_clients_are_served_through_the_same_checks() {
    let (_stub, gateway) = start_gateway(&[]).await;
    let (_, key) = gateway.create_key(&[]);
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().expect("an HTTP/2 client");
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());
    for stream in [false, true] {
        let mut body = chat_body("m");
        body["stream"] = serde_json::json!(stream);
        let response = h2.post(&url).bearer_auth(&key).json(&body).send().await.expect("answered");
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        assert!(!response.bytes().await.expect("body").is_empty());
    }
    let twice = h2
        .post(&url)
        .header("authorization", format!("Bearer {key}"))
        .header("x-api-key", key.as_str())
        .header("x-api-key", "pcl_other")
        .json(&chat_body("m"))
        .send()
        .await
        .expect("answered");
    assert_eq!(twice.status(), 400, "two x-api-key headers are refused on HTTP/2 too");
}
