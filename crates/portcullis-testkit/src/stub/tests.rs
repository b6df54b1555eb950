use std::time::Duration;

use serde_json::{Value, json};

use super::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn post(stub: &StubUpstream, path: &str, body: Value) -> reqwest::Response {
    client().post(format!("{}{path}", stub.url())).json(&body).send().await.unwrap()
}

/// Splits an SSE body into its `data:` payloads, checking the framing on the way.
fn sse_payloads(text: &str) -> Vec<String> {
    assert!(text.ends_with("\n\n"), "an SSE body ends with a blank line: {text:?}");
    text.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|event| {
            assert!(!event.contains('\n'), "one line per event: {event:?}");
            event.strip_prefix("data: ").unwrap_or_else(|| panic!("event without `data: `: {event:?}")).to_string()
        })
        .collect()
}

fn chat_body(stream: bool, include_usage: Option<bool>) -> Value {
    let mut body = json!({
        "model": "tiny-model",
        "messages": [{"role": "user", "content": "say hello to me"}],
        "stream": stream,
    });
    if let Some(include) = include_usage {
        body["stream_options"] = json!({"include_usage": include});
    }
    body
}

#[tokio::test]
async fn plain_chat_echoes_the_model_and_reports_usage() {
    let stub = StubUpstream::start().await;
    let response = post(&stub, "/v1/chat/completions", chat_body(false, None)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "tiny-model");
    assert_eq!(body["choices"][0]["message"]["content"], reply_text("tiny-model", DEFAULT_STREAM_CHUNKS));
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"], json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}));
}

#[tokio::test]
async fn stream_is_framed_as_sse_and_ends_with_done_without_usage_unless_asked() {
    let stub = StubUpstream::start().await;
    for include_usage in [None, Some(false)] {
        let response = post(&stub, "/v1/chat/completions", chat_body(true, include_usage)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let payloads = sse_payloads(&response.text().await.unwrap());
        assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
        let events: Vec<Value> =
            payloads[..payloads.len() - 1].iter().map(|p| serde_json::from_str(p).unwrap()).collect();
        // Three content chunks and the finish chunk; no usage anywhere.
        assert_eq!(events.len(), DEFAULT_STREAM_CHUNKS + 1);
        assert!(events.iter().all(|event| event.get("usage").is_none()));
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = events.iter().filter_map(|event| event["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(text, reply_text("tiny-model", DEFAULT_STREAM_CHUNKS));
        assert_eq!(events.last().unwrap()["choices"][0]["finish_reason"], "stop");
    }
}

#[tokio::test]
async fn stream_sends_a_usage_chunk_last_when_include_usage_is_set() {
    let stub = StubUpstream::start().await;
    stub.set_stream_chunks(5);
    let response = post(&stub, "/v1/chat/completions", chat_body(true, Some(true))).await;
    let payloads = sse_payloads(&response.text().await.unwrap());
    assert_eq!(payloads.len(), 5 + 1 + 1 + 1, "content, finish, usage, [DONE]");
    assert_eq!(payloads[7], "[DONE]");
    let usage_chunk: Value = serde_json::from_str(&payloads[6]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], json!({"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}));
    assert_eq!(stub.chunk_sent_count(), 8);
}

#[tokio::test]
async fn max_tokens_cuts_the_reply_with_finish_reason_length() {
    let stub = StubUpstream::start().await;
    let mut body = chat_body(false, None);
    body["max_tokens"] = json!(2);
    let reply: Value = post(&stub, "/v1/chat/completions", body).await.json().await.unwrap();
    assert_eq!(reply["choices"][0]["finish_reason"], "length");
    assert_eq!(reply["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn ignore_max_tokens_generates_the_whole_reply_until_switched_off() {
    let stub = StubUpstream::start().await;
    stub.set_stream_chunks(6);
    stub.set_ignore_max_tokens(true);
    let mut body = chat_body(true, Some(true));
    body["max_tokens"] = json!(2);
    let payloads = sse_payloads(&post(&stub, "/v1/chat/completions", body.clone()).await.text().await.unwrap());
    assert_eq!(payloads.len(), 6 + 1 + 1 + 1, "content, finish, usage, [DONE]: {payloads:?}");
    let usage: Value = serde_json::from_str(&payloads[7]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    let plain: Value =
        post(&stub, "/v1/chat/completions", json!({"model": "m", "messages": [], "max_completion_tokens": 1}))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(plain["usage"]["completion_tokens"], 6);
    assert_eq!(plain["choices"][0]["finish_reason"], "stop");

    stub.set_ignore_max_tokens(false);
    let plain: Value = post(&stub, "/v1/chat/completions", json!({"model": "m", "messages": [], "max_tokens": 2}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(plain["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn text_completions_work_plain_and_streamed() {
    let stub = StubUpstream::start().await;
    let body = json!({"model": "m", "prompt": "once upon a time"});
    let reply: Value = post(&stub, "/v1/completions", body.clone()).await.json().await.unwrap();
    assert_eq!(reply["object"], "text_completion");
    assert_eq!(reply["choices"][0]["text"], reply_text("m", 3));
    assert_eq!(reply["usage"]["prompt_tokens"], 4);

    let mut streamed = body;
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let payloads = sse_payloads(&post(&stub, "/v1/completions", streamed).await.text().await.unwrap());
    let events: Vec<Value> = payloads[..payloads.len() - 1].iter().map(|p| serde_json::from_str(p).unwrap()).collect();
    let text: String = events.iter().filter_map(|event| event["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, reply_text("m", 3));
    assert_eq!(events.last().unwrap()["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn embeddings_come_as_floats_or_base64_with_usage() {
    let stub = StubUpstream::start().await;
    let reply: Value =
        post(&stub, "/v1/embeddings", json!({"model": "e", "input": ["one two", "three"]})).await.json().await.unwrap();
    assert_eq!(reply["data"].as_array().unwrap().len(), 2);
    let first: Vec<f32> = serde_json::from_value(reply["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(first, embedding_of("\"one two\""));
    assert_eq!(reply["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));

    let reply: Value = post(&stub, "/v1/embeddings", json!({"model": "e", "input": "hi", "encoding_format": "base64"}))
        .await
        .json()
        .await
        .unwrap();
    let encoded = reply["data"][0]["embedding"].as_str().unwrap();
    assert_eq!(encoded, base64_f32(&embedding_of("\"hi\"")));
    assert_eq!(encoded.len(), (EMBEDDING_DIMENSIONS * 4).div_ceil(3) * 4);
}

#[test]
fn base64_matches_known_answers() {
    assert_eq!(base64_f32(&[1.0]), "AACAPw==");
    assert_eq!(base64_f32(&[0.0, 0.0, 0.0]), "AAAAAAAAAAAAAAAA");
}

#[tokio::test]
async fn models_and_health_answer_get() {
    let stub = StubUpstream::start().await;
    stub.set_models(&["a", "b"]);
    let list: Value = client().get(format!("{}/v1/models", stub.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["data"][1]["id"], "b");
    let health = client().get(format!("{}/health", stub.url())).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let missing = client().get(format!("{}/v1/models/zzz", stub.url())).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn requests_are_recorded_with_headers_and_json_body() {
    let stub = StubUpstream::start().await;
    client()
        .post(format!("{}/prefix/v1/chat/completions?x=1", stub.url()))
        .header("Authorization", "Bearer up-key")
        .json(&chat_body(false, None))
        .send()
        .await
        .unwrap();
    assert_eq!(stub.request_count(), 1);
    let request = stub.last_request_to("/v1/chat/completions").unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/prefix/v1/chat/completions");
    assert_eq!(request.query.as_deref(), Some("x=1"));
    assert_eq!(request.header("authorization"), Some("Bearer up-key"));
    assert_eq!(request.json_field("model"), "tiny-model");
    stub.clear_requests();
    assert!(stub.requests().is_empty());
}

#[tokio::test]
async fn fail_with_answers_every_request_with_an_openai_error_until_reset() {
    let stub = StubUpstream::start().await;
    stub.fail_with(503);
    let response = post(&stub, "/v1/chat/completions", chat_body(false, None)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("503"));
    assert_eq!(client().get(format!("{}/health", stub.url())).send().await.unwrap().status(), 503);
    stub.reset();
    assert_eq!(post(&stub, "/v1/chat/completions", chat_body(false, None)).await.status(), 200);
}

#[tokio::test]
async fn hang_accepts_but_never_answers() {
    let stub = StubUpstream::start().await;
    stub.hang();
    let attempt = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", stub.url()))
        .json(&chat_body(false, None))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(attempt.unwrap_err().is_timeout());
    assert_eq!(stub.request_count(), 1, "the hung request was still recorded");
}

#[tokio::test]
async fn gated_stream_holds_the_rest_until_released() {
    let stub = StubUpstream::start().await;
    let gate = stub.gated_stream();
    let mut response = post(&stub, "/v1/chat/completions", chat_body(true, Some(true))).await;
    let mut received = String::new();
    while !received.contains("\n\n") {
        received.push_str(std::str::from_utf8(&response.chunk().await.unwrap().unwrap()).unwrap());
    }
    assert!(gate.wait_first_chunk(Duration::from_secs(5)).await);
    assert!(received.contains("echo:tiny-model"));
    // Nothing more comes while the gate is shut.
    let more = tokio::time::timeout(Duration::from_millis(200), response.chunk()).await;
    assert!(more.is_err(), "a chunk passed the closed gate");
    assert_eq!(stub.chunk_sent_count(), 1);

    gate.release();
    while let Some(chunk) = response.chunk().await.unwrap() {
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(received.ends_with("data: [DONE]\n\n"));
    assert_eq!(stub.chunk_sent_count(), DEFAULT_STREAM_CHUNKS + 3);

    // The gate was for one stream only.
    let next = post(&stub, "/v1/chat/completions", chat_body(true, None)).await;
    assert!(next.text().await.unwrap().ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn chunk_gap_spaces_the_events() {
    let stub = StubUpstream::start().await;
    stub.set_stream_chunks(2);
    stub.set_chunk_gap(Duration::from_millis(60));
    let started = Instant::now();
    let text = post(&stub, "/v1/chat/completions", chat_body(true, None)).await.text().await.unwrap();
    // Two content chunks, the finish chunk and [DONE]: three gaps.
    assert!(started.elapsed() >= Duration::from_millis(180), "took {:?}", started.elapsed());
    assert_eq!(sse_payloads(&text).len(), 4);
}

#[tokio::test]
async fn malformed_bodies_and_unknown_paths_get_openai_errors() {
    let stub = StubUpstream::start().await;
    let response = client().post(format!("{}/v1/chat/completions", stub.url())).body("not json").send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    let response = client().get(format!("{}/v2/other", stub.url())).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

/// The SDK check script's success scenarios pass against the stub: the stub speaks the wire
/// format the official SDK expects, and the script's checks hold on a known-good server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_scenarios_pass_against_the_stub() {
    let Some(sdk) = crate::SdkCheck::or_skip(crate::SdkScript::OpenAi) else {
        return;
    };
    let stub = StubUpstream::start().await;
    let base_url = format!("{}/v1", stub.url());
    for scenario in ["chat", "stream", "stream-no-usage", "embeddings", "models"] {
        let (sdk, base_url) = (sdk.clone(), base_url.clone());
        let observed = tokio::task::spawn_blocking(move || {
            let env = [
                ("PORTCULLIS_BASE_URL", base_url.as_str()),
                ("PORTCULLIS_KEY", "any-key-the-stub-ignores"),
                ("PORTCULLIS_MODEL", "stub-model"),
                ("PORTCULLIS_EXPECT_MODELS", "stub-model"),
                ("PORTCULLIS_HIDDEN_MODEL", "not-listed"),
                // The stub is an upstream, not a gateway: it sets no x-request-id.
                ("PORTCULLIS_EXPECT_REQUEST_ID", "0"),
            ];
            sdk.run(scenario, &env)
        })
        .await
        .unwrap();
        assert_eq!(observed["scenario"], scenario);
    }
    let chat = stub.last_request_to("/v1/chat/completions").unwrap();
    assert_eq!(chat.header("authorization"), Some("Bearer any-key-the-stub-ignores"));
}
