//! The fake upstream answers like an OpenAI-compatible server, over a real socket.
#![allow(clippy::unwrap_used, reason = "test helpers: a failure is a failed test")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_bench_upstream::{Responses, Settings, bind, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(settings: Settings) -> std::net::SocketAddr {
    let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, Arc::new(Responses::render(&settings))));
    addr
}

/// Sends one request with `Connection: close` and returns (status line, headers, body as sent).
async fn call(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap();
    (status.to_string(), headers.to_lowercase(), body.to_string())
}

/// The `data:` payloads of a chunked SSE body (chunk-size lines are not `data:` lines).
fn data_lines(body: &str) -> Vec<String> {
    body.lines().filter_map(|line| line.strip_prefix("data: ")).map(str::to_string).collect()
}

#[tokio::test]
async fn plain_chat_and_completion_carry_usage() {
    let addr = start(Settings { chunks: 4, ..Settings::default() }).await;
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let (status, headers, body) = call(addr, "POST", path, r#"{"model":"x","messages":[]}"#).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(headers.contains("content-type: application/json"), "{headers}");
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["usage"]["completion_tokens"], 4);
        assert_eq!(value["usage"]["prompt_tokens"], 8);
    }
}

#[tokio::test]
async fn streams_send_n_chunks_then_usage_when_asked_then_done() {
    let addr = start(Settings { chunks: 5, ..Settings::default() }).await;
    let asked = r#"{"model":"x","stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, headers, body) = call(addr, "POST", "/v1/chat/completions", asked).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("content-type: text/event-stream"), "{headers}");
    let events = data_lines(&body);
    assert_eq!(events.len(), 5 + 2, "{body}");
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: serde_json::Value = serde_json::from_str(&events[5]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    let first: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");

    let (_, _, body) = call(addr, "POST", "/v1/completions", r#"{"model":"x","stream":true}"#).await;
    let events = data_lines(&body);
    assert_eq!(events.len(), 5 + 1, "{body}");
    assert!(events.iter().all(|event| !event.contains("\"usage\"")), "{body}");
}

#[tokio::test]
async fn the_gap_spaces_content_chunks() {
    let addr = start(Settings { chunks: 3, gap: Duration::from_millis(60), ..Settings::default() }).await;
    let started = Instant::now();
    let (_, _, body) = call(addr, "POST", "/v1/chat/completions", r#"{"stream":true}"#).await;
    assert!(started.elapsed() >= Duration::from_millis(120), "{:?}", started.elapsed());
    assert_eq!(data_lines(&body).len(), 4);
}

#[tokio::test]
async fn embeddings_models_health_and_unknown_paths() {
    let addr = start(Settings::default()).await;
    let (status, _, body) = call(addr, "POST", "/v1/embeddings", r#"{"model":"x","input":"hi"}"#).await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["data"][0]["object"], "embedding");

    let (status, _, body) = call(addr, "GET", "/v1/models", "").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["data"][0]["id"], "bench");

    let (status, _, _) = call(addr, "GET", "/health", "").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (status, _, _) = call(addr, "GET", "/nope", "").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _, _) = call(addr, "POST", "/v1/chat/completions", "not json").await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
}
