//! Anthropic's Messages API, count_tokens, rerank and tokenize through the real binary and the
//! stub model server: what is billed (in `/v1/usage` and the audit record), the event stream
//! relayed whole or cut, the error shape of each route, and the endpoints a model must open.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, reason = "tests")]

mod common;

use std::time::{Duration, Instant};

use common::{Reply, billed, http, record_of, send};
use portcullis_testkit::{Fault, Gateway, GatewayBuilder, StubUpstream};
use serde_json::{Value, json};

/// A Messages API model `m`, and `open`, a llama.cpp model with rerank and tokenize opened, and
/// `tgi`, a TGI one with both opened (it has no detokenize).
fn config(stub: &StubUpstream) -> String {
    let url = stub.url();
    format!(
        "[[models]]\nname = \"m\"\nendpoints = [\"{url}\"]\n\n\
         [[models]]\nname = \"open\"\nendpoints = [\"{url}\"]\nserver = \"llamacpp\"\nextra_apis = [\"rerank\", \"tokenize\"]\n\n\
         [[models]]\nname = \"tgi\"\nendpoints = [\"{url}\"]\nserver = \"tgi\"\nextra_apis = [\"rerank\", \"tokenize\"]\n"
    )
}

async fn start(extra: &str) -> (StubUpstream, Gateway) {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(common::BINARY).config(&format!("{}\n{extra}", config(&stub))).start().await;
    (stub, gateway)
}

/// `POST <path>` as the Anthropic SDK sends it: the key in `x-api-key`, the API version in
/// `anthropic-version`.
async fn post(gateway: &Gateway, key: Option<&str>, path: &str, body: &Value) -> Reply {
    let mut request =
        http().post(format!("{}{path}", gateway.proxy_url())).header("anthropic-version", "2023-06-01").json(body);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    send(request).await
}

fn message(text: &str, stream: bool) -> Value {
    json!({"model": "m", "max_tokens": 16, "stream": stream, "messages": [{"role": "user", "content": text}]})
}

/// The record of the answer's request.
/// The key's spend today, once `requests` requests are recorded: (requests, tokens).
async fn spend_today(gateway: &Gateway, key: &str, requests: u64) -> (u64, u64) {
    let deadline = Instant::now() + common::AUDIT_WAIT;
    loop {
        let usage = common::get(gateway, key, "/v1/usage").await;
        let today = &usage.body["spend"]["today"];
        let spent = (today["requests"].as_u64().unwrap_or(0), today["tokens"].as_u64().unwrap_or(0));
        if spent.0 >= requests || Instant::now() >= deadline {
            return spent;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The paths the model server was sent requests at (its health checks aside).
fn posted_paths(stub: &StubUpstream) -> Vec<String> {
    stub.requests().into_iter().filter(|request| request.method == "POST").map(|request| request.path).collect()
}

/// The `event:` names of an SSE body, in order.
fn event_names(text: &str) -> Vec<&str> {
    text.lines().filter_map(|line| line.strip_prefix("event: ")).collect()
}

/// The Anthropic error of an answer: its status and `error.type`, after checking the envelope.
#[track_caller]
fn anthropic_error(reply: &Reply) -> (u16, &str) {
    assert_eq!(reply.body["type"], "error", "not an Anthropic error: {}", reply.text);
    assert!(reply.body["error"]["message"].is_string(), "no message: {}", reply.text);
    assert!(reply.header("x-request-id").is_some(), "an error keeps its request id");
    (reply.status, reply.body["error"]["type"].as_str().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_billed_its_whole_prompt_cached_tokens_included() {
    let (stub, gateway) = start("").await;
    let (_, key) = gateway.create_key(&[]);
    let reply = post(&gateway, Some(&key), "/v1/messages", &message("one two three four", false)).await;
    reply.assert_ok();
    assert_eq!(reply.body["content"][0]["text"], "echo:m 1 2", "{}", reply.text);
    // The stub reports 2 of the 4 prompt tokens as read from its cache.
    assert_eq!(reply.body["usage"]["cache_read_input_tokens"], 2, "{}", reply.text);

    let forwarded = stub.last_request_to("/v1/messages").expect("forwarded");
    assert_eq!(forwarded.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(forwarded.header("x-api-key"), None, "the client's key stays at the gateway");
    let record = record_of(&gateway, &reply).await;
    assert_eq!(billed(&record), (4, 3), "{record}");
    assert_eq!(record["usage_estimated"], false, "{record}");
    assert_eq!(spend_today(&gateway, &key, 1).await, (1, 7));
    // The Anthropic headers are forwarded on its routes only.
    let chat = send(
        http()
            .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
            .bearer_auth(&key)
            .header("anthropic-version", "2023-06-01")
            .json(&common::chat_body("m")),
    )
    .await;
    chat.assert_ok();
    assert_eq!(stub.last_request_to("/v1/chat/completions").unwrap().header("anthropic-version"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_message_relays_every_event_and_is_billed_its_usage() {
    let (_stub, gateway) = start("").await;
    let (_, key) = gateway.create_key(&[]);
    let reply = post(&gateway, Some(&key), "/v1/messages", &message("one two three", true)).await;
    reply.assert_ok();
    assert_eq!(
        event_names(&reply.text),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{}",
        reply.text
    );
    let record = record_of(&gateway, &reply).await;
    assert_eq!(billed(&record), (3, 3), "{record}");
    assert_eq!((record["stream"].as_bool(), record["usage_estimated"].as_bool()), (Some(true), Some(false)));
    assert_eq!(spend_today(&gateway, &key, 1).await, (1, 6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stream_cut_mid_way_ends_with_an_anthropic_error_and_is_billed_what_was_relayed() {
    let (_stub, gateway) = start("").await;
    let (_, key) = gateway.create_key(&[]);
    let text = format!("please {}", Fault::ResetMidStream.marker());
    let reply = post(&gateway, Some(&key), "/v1/messages", &message(&text, true)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let events = event_names(&reply.text);
    assert_eq!(
        events,
        ["message_start", "content_block_start", "ping", "content_block_delta", "error"],
        "{}",
        reply.text
    );
    let error_data =
        reply.text.lines().filter_map(|line| line.strip_prefix("data: ")).next_back().expect("the error's data");
    let error: Value = serde_json::from_str(error_data).unwrap();
    assert_eq!((error["type"].as_str(), error["error"]["type"].as_str()), (Some("error"), Some("api_error")));

    let record = record_of(&gateway, &reply).await;
    // One piece relayed; the prompt estimated, the stream having ended before its usage.
    assert_eq!(billed(&record).1, 1, "{record}");
    assert_eq!(record["usage_estimated"], true, "{record}");
    assert_eq!(record["reason"], "upstream_failed_mid_body", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_is_forwarded_and_audited_and_bills_the_request_only() {
    // A quota no prompt fits: counting must still be possible.
    let (stub, gateway) = start("[tiers.free]\ntokens_per_day = 1\n").await;
    let (_, key) = gateway.create_key(&["--tier", "free"]);
    let body = json!({"model": "m", "system": "be brief", "messages": [{"role": "user", "content": "one two three"}]});
    let reply = post(&gateway, Some(&key), "/v1/messages/count_tokens", &body).await;
    reply.assert_ok();
    assert_eq!(reply.body, json!({"input_tokens": 5}));
    assert_eq!(stub.requests_to("/v1/messages/count_tokens").len(), 1);
    let record = record_of(&gateway, &reply).await;
    assert_eq!(
        (record["decision"].as_str(), record["path"].as_str()),
        (Some("allow"), Some("/v1/messages/count_tokens"))
    );
    assert_eq!(billed(&record), (0, 0), "{record}");
    assert_eq!(spend_today(&gateway, &key, 1).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_on_the_messages_routes_is_anthropic_shaped() {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(common::BINARY)
        .config(&format!("{}\n[tiers.free]\n\n[tiers.slow]\nrequests_per_minute = 1\n", config(&stub)))
        .server_setting("max_body_bytes = 4096")
        .start()
        .await;
    let (_, key) = gateway.create_key(&[]);
    let (_, chat_only) = gateway.create_key(&["--scopes", "chat"]);
    let (_, slow) = gateway.create_key(&["--tier", "slow"]);
    let fine = message("hello", false);

    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        assert_eq!(anthropic_error(&post(&gateway, None, path, &fine).await), (401, "authentication_error"), "{path}");
        let bad_key = post(&gateway, Some("pcl_not_a_key"), path, &fine).await;
        assert_eq!(anthropic_error(&bad_key), (401, "authentication_error"));
        let no_scope = post(&gateway, Some(&chat_only), path, &fine).await;
        assert_eq!(anthropic_error(&no_scope), (403, "permission_error"));
        let unknown =
            post(&gateway, Some(&key), path, &json!({"model": "nope", "max_tokens": 1, "messages": []})).await;
        assert_eq!(anthropic_error(&unknown), (404, "not_found_error"));
        let huge = message(&"word ".repeat(1000), false);
        assert_eq!(anthropic_error(&post(&gateway, Some(&key), path, &huge).await), (413, "request_too_large"));
    }
    let no_cap = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let refused = post(&gateway, Some(&key), "/v1/messages", &no_cap).await;
    assert_eq!(anthropic_error(&refused), (400, "invalid_request_error"));

    post(&gateway, Some(&slow), "/v1/messages", &fine).await.assert_ok();
    let limited = post(&gateway, Some(&slow), "/v1/messages", &fine).await;
    assert_eq!(anthropic_error(&limited), (429, "rate_limit_error"));
    assert!(limited.header("retry-after").is_some(), "a rate limit says when to retry");

    // The model server's own refusal, relayed in the route's shape, and its failure.
    stub.fail_when_body_contains("overloaded-please", 429);
    let relayed = post(&gateway, Some(&key), "/v1/messages", &message("overloaded-please", false)).await;
    assert_eq!(anthropic_error(&relayed), (429, "rate_limit_error"));
    assert!(relayed.body["error"]["message"].as_str().unwrap().contains("scripted failure"), "{}", relayed.text);
    stub.fail_when_body_contains("broken-please", 500);
    let failed = post(&gateway, Some(&key), "/v1/messages", &message("broken-please", false)).await;
    assert_eq!(anthropic_error(&failed), (500, "api_error"));
    let record = record_of(&gateway, &failed).await;
    assert_eq!(record["decision"], "error", "{record}");

    // Elsewhere errors keep the OpenAI shape.
    common::chat(&gateway, None, "m").await.assert_error(401, "invalid_api_key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_and_tokenize_are_served_only_where_a_model_opens_them_behind_their_scopes() {
    let (stub, gateway) = start("").await;
    let (_, key) = gateway.create_key(&[]);
    let (_, chat_only) = gateway.create_key(&["--scopes", "chat"]);
    let rerank =
        |model: &str| json!({"model": model, "query": "red fox", "documents": ["a red car", "the fox", "blue"]});
    let tokenize = |model: &str| json!({"model": model, "content": "three small words"});
    let detokenize = |model: &str| json!({"model": model, "tokens": [5, 5, 5]});
    let post_openai = |key: &str, path: &str, body: Value| {
        let request = http().post(format!("{}{path}", gateway.proxy_url())).bearer_auth(key).json(&body);
        send(request)
    };

    // Closed on `m`, whatever the scopes; without the scope, closed everywhere.
    for (path, body) in
        [("/v1/rerank", rerank("m")), ("/v1/tokenize", tokenize("m")), ("/v1/detokenize", detokenize("m"))]
    {
        post_openai(&key, path, body).await.assert_error(404, "not_found");
    }
    for (path, body) in [("/v1/rerank", rerank("open")), ("/v1/tokenize", tokenize("open"))] {
        post_openai(&chat_only, path, body).await.assert_error(403, "scope_missing");
    }
    assert!(posted_paths(&stub).is_empty(), "nothing refused reached the model server");

    // Served at llama.cpp's paths; rerank billed by its reported input, tokenize nothing.
    let ranked = post_openai(&key, "/v1/rerank", rerank("open")).await;
    ranked.assert_ok();
    assert_eq!(ranked.body["results"][1]["relevance_score"], 1, "{}", ranked.text);
    assert_eq!(billed(&record_of(&gateway, &ranked).await), (8, 0));
    let tokens = post_openai(&key, "/v1/tokenize", tokenize("open")).await;
    tokens.assert_ok();
    assert_eq!(tokens.body["tokens"], json!([5, 5, 5]));
    assert_eq!(billed(&record_of(&gateway, &tokens).await), (0, 0));
    post_openai(&key, "/v1/detokenize", detokenize("open")).await.assert_ok();
    assert_eq!(posted_paths(&stub), ["/v1/rerank", "/tokenize", "/detokenize"]);

    // TGI's own paths; it has no detokenize.
    stub.clear_requests();
    post_openai(&key, "/v1/rerank", rerank("tgi")).await.assert_ok();
    post_openai(&key, "/v1/tokenize", tokenize("tgi")).await.assert_ok();
    post_openai(&key, "/v1/detokenize", detokenize("tgi")).await.assert_error(404, "not_found");
    assert_eq!(posted_paths(&stub), ["/rerank", "/tokenize"]);
}
