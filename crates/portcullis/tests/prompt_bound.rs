//! A prompt reserved at close to its real size, and each model server spoken to in its dialect,
//! through the real binary: against the stub (cap fields, stream usage, a tokenizer that fails)
//! and against the real small model's own tokenizer, whose bound must never be below what the
//! model server then reports (zero overspend rests on it).
//!
//! A fresh key per request reads what its request reserved from `x-ratelimit-remaining-tokens`:
//! a full bucket of `tokens_per_minute` less the request's worst case (prompt bound + cap).

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use common::{BINARY, Reply, http, send, the_record};
use std::time::{Duration, Instant};

use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream, real_slm_url_or_skip};
use serde_json::{Value, json};

/// The gateway's allowance for template tokens around the whole prompt and each message.
const TEMPLATE_SLACK: u64 = 16;
const TPM: u64 = 10_000_000;
/// Content chunks in a stub's streamed answer.
const STUB_CHUNKS: u64 = 3;

async fn gateway(model: &str) -> Gateway {
    let config = format!("{model}\n[tiers.free]\ntokens_per_minute = {TPM}\n");
    GatewayBuilder::new(BINARY).config(&config).start().await
}

/// Sends `body` to `path` with a fresh key; returns the answer and the prompt tokens its
/// request reserved (the worst case less its `cap`).
async fn reserved(gateway: &Gateway, path: &str, body: &Value, cap: u64) -> (Reply, u64) {
    let (_, key) = gateway.create_key(&["--tier", "free"]);
    let reply = send(http().post(format!("{}{path}", gateway.proxy_url())).bearer_auth(&key).json(body)).await;
    let remaining: u64 = reply
        .header("x-ratelimit-remaining-tokens")
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no remaining-tokens header: {reply:?}"));
    (reply, TPM - remaining - cap)
}

fn byte_bound(body: &Value) -> u64 {
    serde_json::to_vec(body).expect("a JSON body serialises").len() as u64 + TEMPLATE_SLACK
}

#[tokio::test]
async fn each_server_gets_the_cap_in_the_field_it_reads_and_usage_only_if_it_streams_it() {
    let stub = StubUpstream::start().await;
    let model = |name: &str, server: &str| {
        format!("[[models]]\nname = \"{name}\"\nendpoints = [\"{}\"]\nserver = \"{server}\"\n", stub.url())
    };
    let gateway = gateway(&[model("llama", "llamacpp"), model("tgi", "tgi"), model("vllm", "vllm")].join("\n")).await;
    let chat = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});

    reserved(&gateway, "/v1/chat/completions", &chat("llama"), 1024).await.0.assert_ok();
    let mut streamed = chat("tgi");
    streamed["stream"] = json!(true);
    let (_, key) = gateway.create_key(&["--tier", "free"]);
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());
    let stream = send(http().post(url).bearer_auth(&key).header("x-request-id", "rid-tgi").json(&streamed)).await;
    stream.assert_ok();
    assert!(stream.text.contains("[DONE]"), "{}", stream.text);
    let mut capped = chat("vllm");
    capped["max_completion_tokens"] = json!(9);
    let (reply, _) = reserved(&gateway, "/v1/chat/completions", &capped, 9).await;
    reply.assert_ok();

    let sent: Vec<Value> = stub
        .requests_to("/v1/chat/completions")
        .into_iter()
        .map(|request| request.body.expect("a JSON body"))
        .collect();
    assert_eq!((&sent[0]["n_predict"], sent[0].get("max_tokens")), (&json!(1024), None), "llama.cpp: {}", sent[0]);
    assert_eq!(sent[1]["max_tokens"], 1024, "TGI: {}", sent[1]);
    assert_eq!(sent[1].get("stream_options"), None, "TGI streams no usage and is not asked for it: {}", sent[1]);
    assert_eq!(sent[2], capped, "vLLM obeys max_completion_tokens: the body goes as it came");
    // Without a usage chunk the completion is the chunks relayed, and the record says so.
    let record = the_record(&gateway, "rid-tgi").await;
    assert_eq!(record["completion_tokens"], STUB_CHUNKS, "{record}");
    assert!(record["reason"].as_str().is_some_and(|reason| reason.starts_with("usage_counted")), "{record}");
}

#[tokio::test]
async fn a_counted_prompt_reserves_its_tokens_and_a_repeated_one_is_counted_once() {
    let stub = StubUpstream::start().await;
    // The stub's tokenizer and its usage both count words.
    let gateway = gateway(&format!(
        "[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\nserver = \"llamacpp\"\ntokenizer = \"server\"\n\
         template_tokens = 3\n",
        stub.url()
    ))
    .await;
    let body = json!({"model": "m", "max_tokens": 5, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there, how are you today?"},
    ]});
    // "system be brief user hello there, how are you today?": 10 words, 2 messages.
    let expected = 10 + 2 * 8 + TEMPLATE_SLACK + 3;
    let (reply, prompt) = reserved(&gateway, "/v1/chat/completions", &body, 5).await;
    reply.assert_ok();
    assert_eq!(prompt, expected);
    assert!(reply.body["usage"]["prompt_tokens"].as_u64().expect("usage") <= prompt);
    let (_, again) = reserved(&gateway, "/v1/chat/completions", &body, 5).await;
    assert_eq!(again, expected);
    assert_eq!(stub.requests_to("/tokenize").len(), 1, "the repeated prompt's count came from the cache");
    // A tool definition is rendered from structure: the bytes bound it, no count is asked.
    let mut tools = body.clone();
    tools["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    let (_, prompt) = reserved(&gateway, "/v1/chat/completions", &tools, 5).await;
    assert_eq!(prompt, byte_bound(&tools));
    assert_eq!(stub.requests_to("/tokenize").len(), 1);
}

#[tokio::test]
async fn the_authorizer_reserves_a_forwarded_prompt_at_its_count_too() {
    let stub = StubUpstream::start().await;
    let gateway = gateway(&format!(
        "[authz]\nlisten = \"127.0.0.1:0\"\n\n[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\n\
         server = \"llamacpp\"\ntokenizer = \"server\"\n",
        stub.url()
    ))
    .await;
    let (_, key) = gateway.create_key(&["--tier", "free"]);
    let body = json!({"model": "m", "max_tokens": 7, "messages": [{"role": "user", "content": "hello there"}]});
    let reply = send(
        http()
            .post(format!("http://{}/authz", gateway.authz_addr()))
            .header("x-forwarded-uri", "/v1/chat/completions")
            .header("x-forwarded-method", "POST")
            .bearer_auth(&key)
            .body(serde_json::to_vec(&body).expect("a JSON body")),
    )
    .await;
    reply.assert_ok();
    let remaining: u64 = reply.header("x-ratelimit-remaining-tokens").and_then(|v| v.parse().ok()).expect("headers");
    // "user hello there": 3 words, 1 message.
    assert_eq!(TPM - remaining, 3 + 8 + TEMPLATE_SLACK + 7);
}

#[tokio::test]
async fn a_tokenizer_that_does_not_answer_leaves_the_byte_bound_and_the_request_served() {
    let stub = StubUpstream::start().await;
    // The stub answers in llama.cpp's shape, which a vLLM dialect cannot read: every count fails.
    let gateway = gateway(&format!(
        "[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\nserver = \"vllm\"\ntokenizer = \"server\"\n",
        stub.url()
    ))
    .await;
    let body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hello there"}]});
    let (reply, prompt) = reserved(&gateway, "/v1/chat/completions", &body, 5).await;
    reply.assert_ok();
    assert_eq!(prompt, byte_bound(&body));
    let (_, again) = reserved(&gateway, "/v1/chat/completions", &body, 5).await;
    assert_eq!(again, byte_bound(&body));
    assert_eq!(stub.requests_to("/tokenize").len(), 2, "a failed count is not cached: each request asks");
}

#[tokio::test]
async fn a_slow_tokenizer_costs_a_request_its_timeout_at_most_and_leaves_the_byte_bound() {
    let stub = StubUpstream::start().await;
    let gateway = gateway(&format!(
        "[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\nserver = \"llamacpp\"\ntokenizer = \"server\"\n",
        stub.url()
    ))
    .await;
    // Every answer, the tokenizer's included, comes after 1 s; the gateway waits 250 ms for a count.
    stub.set_response_delay(Duration::from_secs(1));
    let body = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hello there"}]});
    let (_, key) = gateway.create_key(&["--tier", "free"]);
    let request = http().post(format!("{}/v1/chat/completions", gateway.proxy_url())).bearer_auth(&key).json(&body);
    let started = Instant::now();
    let reply = send(request).await;
    let took = started.elapsed();
    reply.assert_ok();
    let remaining: u64 = reply.header("x-ratelimit-remaining-tokens").and_then(|v| v.parse().ok()).expect("headers");
    assert_eq!(TPM - remaining - 5, byte_bound(&body));
    // 250 ms for the count, then the 1 s answer: short of the 2 s that waiting for the count takes.
    assert!(took < Duration::from_millis(1800), "took {took:?}");
}

/// Gemma 3 270M behind llama.cpp: its own tokenizer bounds each prompt, tighter than the bytes
/// and never below what the server reports.
#[tokio::test]
async fn a_real_models_reported_prompt_never_exceeds_its_counted_bound() {
    let Some(upstream) = real_slm_url_or_skip() else {
        return;
    };
    let gateway =
        gateway(&format!("{}server = \"llamacpp\"\ntokenizer = \"server\"\n", common::real_slm_model(&upstream))).await;
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(40);
    let chats = [
        json!([{"role": "user", "content": "Hi"}]),
        json!([{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}]),
        json!([
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": [{"type": "text", "text": "Another"}, {"type": "text", "text": "one, please."}]},
        ]),
        json!([{"role": "user", "content": "Übersetze: «Grüße aus Köln» — 東京の天気は？ 🌧️🌈 Ça va? مرحبا"}]),
        json!([{"role": "user", "content": "   spaced\n\n\tout   text   "}, {"role": "assistant", "content": ""}, {"role": "user", "content": "ok"}]),
        json!([{"role": "user", "content": long}]),
        json!([{"role": "user", "content": "<start_of_turn>model\nliteral markers<end_of_turn>"}]),
    ];
    for messages in chats {
        let body = json!({"model": "gemma", "max_tokens": 2, "messages": messages});
        let (reply, bound) = reserved(&gateway, "/v1/chat/completions", &body, 2).await;
        reply.assert_ok();
        let reported = reply.body["usage"]["prompt_tokens"].as_u64().expect("llama.cpp reports usage");
        assert!(reported <= bound, "reported {reported} prompt tokens above the bound {bound}: {body}");
        assert!(bound < byte_bound(&body), "the count {bound} is tighter than the bytes: {body}");
    }
    let body = json!({"model": "gemma", "max_tokens": 2, "prompt": "Once upon a time, in Zürich,"});
    let (reply, bound) = reserved(&gateway, "/v1/completions", &body, 2).await;
    reply.assert_ok();
    let reported = reply.body["usage"]["prompt_tokens"].as_u64().expect("usage");
    assert!(reported <= bound, "completions: reported {reported} above the bound {bound}");
}
