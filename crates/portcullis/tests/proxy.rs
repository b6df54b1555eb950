//! The client surface through the real binary: inference calls plain and streamed, the model
//! list, error answers, and what reaches (and does not reach) the model server.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

use std::time::Duration;

use futures_util::StreamExt;
use portcullis_testkit::{
    DEFAULT_STREAM_CHUNKS, Gateway, GatewayBuilder, StubUpstream, embedding_of, free_port, reply_text,
};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_portcullis");

fn model_table(name: &str, endpoints: &[String], extra: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|url| format!("\"{url}\"")).collect();
    format!("[[models]]\nname = \"{name}\"\nendpoints = [{}]\n{extra}\n", endpoints.join(", "))
}

async fn gateway_with(config: &str) -> Gateway {
    GatewayBuilder::new(BINARY).config(config).start().await
}

async fn post(gateway: &Gateway, path: &str, key: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", gateway.proxy_url()))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("request reaches the gateway")
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn chat_completion_is_forwarded_with_model_rewritten_and_upstream_key() {
    let stub = StubUpstream::start().await;
    let extra = "upstream_model = \"SmolLM2-135M-Instruct\"\napi_key = \"sk-upstream-1\"";
    let gateway = gateway_with(&model_table("smollm2", &[stub.url()], extra)).await;
    let (_, key) = gateway.create_key(&["--models", "smol*"]);

    let response = post(&gateway, "/v1/chat/completions", &key, chat("smollm2")).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let seen = stub.last_request_to("/v1/chat/completions").expect("the stub was called");
    assert_eq!(seen.json_field("model"), "SmolLM2-135M-Instruct");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-upstream-1"));
    assert!(seen.headers.iter().all(|(_, value)| !value.contains(&key)), "the client's key must not be forwarded");
}

#[tokio::test]
async fn completions_and_embeddings_are_forwarded() {
    let stub = StubUpstream::start().await;
    let gateway = gateway_with(&model_table("m", &[stub.url()], "")).await;
    let (_, key) = gateway.create_key(&[]);

    let response = post(&gateway, "/v1/completions", &key, json!({"model": "m", "prompt": "once upon"})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], reply_text("m", DEFAULT_STREAM_CHUNKS), "the model server's text: {body}");
    assert_eq!(body["usage"]["prompt_tokens"], 2, "{body}");
    let seen = stub.last_request_to("/v1/completions").expect("the stub was called");
    assert_eq!((seen.json_field("model"), seen.json_field("prompt")), (&json!("m"), &json!("once upon")));

    let response = post(&gateway, "/v1/embeddings", &key, json!({"model": "m", "input": ["a", "b"]})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let vectors: Vec<Vec<f32>> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|item| serde_json::from_value(item["embedding"].clone()).expect("a vector"))
        .collect();
    assert_eq!(vectors, [embedding_of("\"a\""), embedding_of("\"b\"")], "each input's own vector, in order");
    let seen = stub.last_request_to("/v1/embeddings").expect("the stub was called");
    assert_eq!(seen.json_field("input"), &json!(["a", "b"]));
}

#[tokio::test]
async fn stream_chunks_reach_the_client_before_the_upstream_sends_the_next() {
    let stub = StubUpstream::start().await;
    let gateway = gateway_with(&model_table("m", &[stub.url()], "")).await;
    let (_, key) = gateway.create_key(&[]);
    let gate = stub.gated_stream();

    let mut body = chat("m");
    body["stream"] = json!(true);
    let response = post(&gateway, "/v1/chat/completions", &key, body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut stream = response.bytes_stream();

    // The upstream has sent its first event and now waits for the gate: the client must
    // already be able to read that event, or the gateway buffered it.
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the first chunk arrives while the upstream is still holding the rest")
        .expect("stream not ended")
        .expect("chunk ok");
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    assert_eq!(stub.chunk_sent_count(), 1, "the upstream has not sent the second chunk yet");

    gate.release();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&rest).trim_end().ends_with("data: [DONE]"));
}

#[tokio::test]
async fn refused_endpoint_fails_over_to_the_next() {
    let stub = StubUpstream::start().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    // Health checks off, so the dead endpoint is still in rotation and must be skipped by retry.
    let gateway = gateway_with(&model_table("m", &[dead, stub.url()], "health_check = { enabled = false }")).await;
    let (_, key) = gateway.create_key(&[]);
    for _ in 0..4 {
        let response = post(&gateway, "/v1/chat/completions", &key, chat("m")).await;
        assert_eq!(response.status(), 200);
    }
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 4);
}

#[tokio::test]
async fn unavailable_and_timed_out_upstreams_get_openai_shaped_5xx() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let stub = StubUpstream::start().await;
    let config = format!(
        "{}{}",
        model_table("down", &[dead], "health_check = { enabled = false }"),
        model_table("slow", &[stub.url()], "timeouts = { first_byte = \"300ms\" }\nhealth_check = { enabled = false }")
    );
    let gateway = gateway_with(&config).await;
    let (_, key) = gateway.create_key(&[]);
    assert_eq!(
        error_code(post(&gateway, "/v1/chat/completions", &key, chat("down")).await).await,
        (502, "upstream_unavailable".into())
    );
    stub.hang();
    assert_eq!(
        error_code(post(&gateway, "/v1/chat/completions", &key, chat("slow")).await).await,
        (504, "upstream_timeout".into())
    );
}

#[tokio::test]
async fn fallback_serves_when_the_primary_pool_fails() {
    let stub = StubUpstream::start().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let config = format!(
        "{}{}",
        model_table("primary", &[dead], "fallbacks = [\"backup\"]\nhealth_check = { enabled = false }"),
        model_table("backup", &[stub.url()], "upstream_model = \"backup-upstream\"")
    );
    let gateway = gateway_with(&config).await;
    let (_, key) = gateway.create_key(&[]);
    let response = post(&gateway, "/v1/chat/completions", &key, chat("primary")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(stub.last_request_to("/v1/chat/completions").unwrap().json_field("model"), "backup-upstream");

    // A key that may not use the fallback does not get it.
    let (_, narrow) = gateway.create_key(&["--models", "primary"]);
    let (status, _) = error_code(post(&gateway, "/v1/chat/completions", &narrow, chat("primary")).await).await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn malformed_requests_are_bad_requests_naming_the_parameter() {
    let stub = StubUpstream::start().await;
    let gateway = gateway_with(&model_table("m", &[stub.url()], "")).await;
    let (_, key) = gateway.create_key(&[]);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());

    let response = client.post(&url).bearer_auth(&key).body("{not json").send().await.unwrap();
    assert_eq!(error_code(response).await, (400, "invalid_request".into()));
    let response = post(&gateway, "/v1/chat/completions", &key, json!({"messages": []})).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "model");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let response = post(&gateway, "/v1/chat/completions", &key, json!({"model": "m"})).await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "messages");
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 0, "nothing malformed reaches the model server");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_openai_shaped_errors() {
    let stub = StubUpstream::start().await;
    let gateway = gateway_with(&model_table("m", &[stub.url()], "")).await;
    let client = reqwest::Client::new();
    let response = client.get(format!("{}/v1/nope", gateway.proxy_url())).send().await.unwrap();
    assert_eq!(error_code(response).await, (404, "not_found".into()));
    let response = client.get(format!("{}/v1/chat/completions", gateway.proxy_url())).send().await.unwrap();
    assert_eq!(error_code(response).await, (405, "method_not_allowed".into()));
}
