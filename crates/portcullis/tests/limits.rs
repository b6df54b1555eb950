//! Limits through the real binary: request and token rates, concurrency, day quotas, money
//! budgets under a race, settlement of streams that end early (client gone, upstream ignoring
//! `max_tokens`), the model-server queue, restarts, and `GET /v1/usage`.
//!
//! The stub reports `prompt_tokens` = words of the prompt and `completion_tokens` = content
//! chunks; every body here says "hello there" (2 words) unless stated, and the stub sends 3
//! chunks by default, so a finished request uses 5 tokens. A request reserves its worst case:
//! the body's length in bytes + 16 + `max_tokens` (see `worst_case`).

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::{BINARY, Reply, http, send};
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::{Value, json};

/// Tokens a chat template may add beyond the request's own bytes, as the gateway reserves them.
const TEMPLATE_SLACK: u64 = 16;
/// Tokens a finished stub reply uses: 2 prompt words ("hello there") + 3 chunks.
const STUB_TOKENS: u64 = 5;
/// How long to wait for something that happens "after settle" or "within a second".
const SETTLE_WAIT: Duration = Duration::from_secs(3);

fn model_table(stub: &StubUpstream, name: &str, extra: &str) -> String {
    format!("[[models]]\nname = \"{name}\"\nendpoints = [\"{}\"]\n{extra}\n", stub.url())
}

async fn start_gateway(config: &str) -> Gateway {
    GatewayBuilder::new(BINARY).config(config).start().await
}

/// A chat body saying "hello there"; `max_tokens` and `stream` only when given.
fn chat(model: &str, content: &str, max_tokens: Option<u64>, stream: bool) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": content}]});
    if let Some(max_tokens) = max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    if stream {
        body["stream"] = json!(true);
    }
    body
}

/// The exact bytes sent for `body`: the gateway's prompt bound is computed from them.
fn bytes_of(body: &Value) -> Vec<u8> {
    serde_json::to_vec(body).expect("a JSON body serialises")
}

/// What the gateway reserves for `body`: its length + 16 + its `max_tokens` (`n` = 1).
fn worst_case(body: &Value) -> u64 {
    let cap = body["max_tokens"].as_u64().expect("worst_case needs an explicit max_tokens");
    bytes_of(body).len() as u64 + TEMPLATE_SLACK + cap
}

fn post_chat_request(proxy_url: &str, key: &str, body: &Value) -> reqwest::RequestBuilder {
    http()
        .post(format!("{proxy_url}/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(bytes_of(body))
}

/// `POST /v1/chat/completions` with exactly [`bytes_of`] `body`, read to the end.
async fn post_chat(gateway: &Gateway, key: &str, body: &Value) -> Reply {
    send(post_chat_request(&gateway.proxy_url(), key, body)).await
}

/// The same, started on its own task (the request must be in flight while the test goes on).
fn spawn_chat(gateway: &Gateway, key: &str, body: Value) -> tokio::task::JoinHandle<Reply> {
    let (url, key) = (gateway.proxy_url(), key.to_string());
    tokio::spawn(async move { send(post_chat_request(&url, &key, &body)).await })
}

/// Starts a streamed request and returns the response once its head has arrived.
async fn open_stream(gateway: &Gateway, key: &str, body: &Value) -> reqwest::Response {
    post_chat_request(&gateway.proxy_url(), key, body).send().await.expect("the gateway answers")
}

/// Reads a stream to its end (at most 15 s) and returns its `data:` payloads, `[DONE]` included.
async fn read_to_end(mut response: reqwest::Response) -> Vec<String> {
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) => break,
            Ok(Err(error)) => panic!("the stream failed after {text:?}: {error}"),
            Err(_) => panic!("the stream did not end within 15 s; so far: {text:?}"),
        }
    }
    sse_payloads(&text)
}

/// The `data:` payloads of an SSE text.
fn sse_payloads(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data:")))
        .map(|data| data.trim_start().to_string())
        .collect()
}

/// Payloads that are JSON events (not `[DONE]`).
fn json_events(payloads: &[String]) -> Vec<Value> {
    payloads
        .iter()
        .filter(|payload| payload.as_str() != "[DONE]")
        .map(|payload| serde_json::from_str(payload).unwrap_or_else(|error| panic!("bad event {payload:?}: {error}")))
        .collect()
}

/// Events that carry generated text.
fn content_events(events: &[Value]) -> usize {
    events
        .iter()
        .filter(|event| event["choices"][0]["delta"]["content"].as_str().is_some_and(|text| !text.is_empty()))
        .count()
}

/// The `usage` objects found in a stream's events.
fn usage_events(events: &[Value]) -> Vec<Value> {
    events.iter().filter_map(|event| event.get("usage").filter(|usage| !usage.is_null()).cloned()).collect()
}

/// `POST /admin/v1/keys` with `body` (a `name` is added when absent); returns `(id, secret)`.
async fn create_key_via_api(gateway: &Gateway, mut body: Value) -> (String, String) {
    if body.get("name").is_none() {
        body["name"] = json!(format!("limits-test-{}", std::process::id()));
    }
    let reply = send(
        http().post(format!("{}/admin/v1/keys", gateway.admin_url())).bearer_auth(gateway.admin_token()).json(&body),
    )
    .await;
    assert!(matches!(reply.status, 200 | 201), "creating a key with {body} failed: {}", reply.text);
    let id = reply.body["id"].as_str().unwrap_or_else(|| panic!("no id in {}", reply.text)).to_string();
    let key = reply.body["key"].as_str().unwrap_or_else(|| panic!("no key in {}", reply.text)).to_string();
    (id, key)
}

/// A key with these limit overrides (and no tier limits: none are configured where it is used).
async fn key_with_limits(gateway: &Gateway, limits: Value) -> (String, String) {
    create_key_via_api(gateway, json!({ "limits": limits })).await
}

/// `GET /v1/usage` as `key`.
async fn usage_of(gateway: &Gateway, key: &str) -> Value {
    let reply = send(http().get(format!("{}/v1/usage", gateway.proxy_url())).bearer_auth(key)).await;
    reply.assert_ok();
    reply.body
}

/// One limit of one scope in a `/v1/usage` answer; panics naming what is missing.
fn limit_in<'a>(usage: &'a Value, scope_kind: &str, limit: &str) -> &'a Value {
    usage["limits"]
        .as_array()
        .unwrap_or_else(|| panic!("no limits list in {usage}"))
        .iter()
        .filter(|scope| scope["scope"]["kind"] == scope_kind)
        .flat_map(|scope| scope["limits"].as_array().into_iter().flatten())
        .find(|entry| entry["limit"] == limit)
        .unwrap_or_else(|| panic!("no {limit} in the {scope_kind} scope of {usage}"))
}

/// Polls `/v1/usage` until `spend.today.requests` reaches `requests` (at most [`SETTLE_WAIT`]).
async fn wait_for_spend(gateway: &Gateway, key: &str, requests: u64) -> Value {
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        let usage = usage_of(gateway, key).await;
        if usage["spend"]["today"]["requests"].as_u64() == Some(requests) || Instant::now() >= deadline {
            return usage;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /admin/v1/usage?key=ID&group_by=model`, polled until it shows `requests` requests of
/// that key in all (at most [`SETTLE_WAIT`]); returns the lines.
async fn wait_for_admin_usage(gateway: &Gateway, key_id: &str, requests: u64) -> Vec<Value> {
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        let reply = send(
            http()
                .get(format!("{}/admin/v1/usage?key={key_id}&group_by=model", gateway.admin_url()))
                .bearer_auth(gateway.admin_token()),
        )
        .await;
        reply.assert_ok();
        let lines = reply.body["data"].as_array().unwrap_or_else(|| panic!("no data in {}", reply.text)).clone();
        let seen: u64 = lines.iter().filter_map(|line| line["requests"].as_u64()).sum();
        if seen >= requests || Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn header_u64(reply: &Reply, name: &str) -> u64 {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("no {name} header on {} {}", reply.status, reply.text))
        .parse()
        .unwrap_or_else(|error| panic!("{name} is not a number: {error}"))
}

fn response_header_u64(response: &reqwest::Response, name: &str) -> u64 {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header on {}", response.status()))
        .parse()
        .unwrap_or_else(|error| panic!("{name} is not a number: {error}"))
}

/// Whole seconds from now to the next 00:00 UTC.
fn seconds_to_utc_midnight() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    let midnight = now.date().next_day().expect("tomorrow exists").midnight().assume_utc();
    (midnight - now).whole_seconds()
}

/// The text the stub received as the (only) user message of a recorded chat request.
fn content_of(request: &portcullis_testkit::RecordedRequest) -> String {
    request.json_field("messages")[0]["content"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_allows_the_burst_then_refuses_with_retry_after() {
    let stub = StubUpstream::start().await;
    let config = format!("{}\n[tiers.free]\nrequests_per_minute = 3\n", model_table(&stub, "m", ""));
    let gateway = start_gateway(&config).await;
    let (_, key) = gateway.create_key(&["--tier", "free"]);
    let body = chat("m", "hello there", None, false);

    for expected_remaining in [2, 1, 0] {
        let reply = post_chat(&gateway, &key, &body).await;
        reply.assert_ok();
        assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("3"), "{:?}", reply.headers);
        assert_eq!(header_u64(&reply, "x-ratelimit-remaining-requests"), expected_remaining, "{:?}", reply.headers);
        assert!(reply.header("x-ratelimit-reset-requests").is_some(), "{:?}", reply.headers);
    }

    let refused = post_chat(&gateway, &key, &body).await;
    refused.assert_error(429, "rate_limit_exceeded");
    let retry_after = header_u64(&refused, "retry-after");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after} for a 3/min rate");
    assert!(refused.message().contains("requests_per_minute"), "{}", refused.message());
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 3, "the refused request must not reach the model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_per_minute_counts_the_worst_case_and_refunds_the_rest() {
    const TPM: u64 = 1000;
    let stub = StubUpstream::start().await;
    // Each request reserves a little over 900 tokens and uses 5: one fits, two do not, and the
    // bucket refills only ~17 tokens a second, far too slowly to cover the difference.
    let streamed = chat("m", "hello there", Some(800), true);
    let plain = chat("m", "hello there", Some(800), false);
    let (first_worst, second_worst) = (worst_case(&streamed), worst_case(&plain));
    assert!(first_worst <= TPM && second_worst <= TPM && first_worst + second_worst > TPM + 500);
    let config = format!("{}\n[tiers.free]\ntokens_per_minute = {TPM}\n", model_table(&stub, "m", ""));
    let gateway = start_gateway(&config).await;
    let (_, key) = gateway.create_key(&["--tier", "free"]);

    let gate = stub.gated_stream();
    let running = open_stream(&gateway, &key, &streamed).await;
    assert_eq!(running.status(), 200);
    assert_eq!(response_header_u64(&running, "x-ratelimit-limit-tokens"), TPM);
    let remaining = response_header_u64(&running, "x-ratelimit-remaining-tokens");
    assert!(
        (TPM - first_worst..TPM - first_worst + 10).contains(&remaining),
        "after reserving {first_worst} of {TPM}, remaining-tokens is {remaining}"
    );
    assert!(running.headers().contains_key("x-ratelimit-reset-tokens"));
    assert!(gate.wait_first_chunk(Duration::from_secs(5)).await);

    // While the first holds its worst case, the second's worst case does not fit.
    let refused = post_chat(&gateway, &key, &plain).await;
    refused.assert_error(429, "rate_limit_exceeded");
    assert!(refused.message().contains("tokens_per_minute"), "{}", refused.message());
    assert!(header_u64(&refused, "retry-after") >= 1);

    // Once it settles with its real usage (5 tokens), the rest is refunded and the second fits.
    gate.release();
    read_to_end(running).await;
    let admitted = post_chat(&gateway, &key, &plain).await;
    admitted.assert_ok();
    let remaining = header_u64(&admitted, "x-ratelimit-remaining-tokens");
    let floor = TPM - STUB_TOKENS - second_worst;
    assert!(
        (floor..floor + 60).contains(&remaining),
        "after a settled 5-token request and a {second_worst}-token reservation, remaining-tokens is {remaining}"
    );
    assert_eq!(admitted.header("x-ratelimit-limit-tokens"), Some("1000"));
    assert!(admitted.header("x-ratelimit-reset-tokens").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_could_never_fit_is_a_400_naming_the_parameter() {
    let stub = StubUpstream::start().await;
    let config = format!("{}\n[tiers.free]\ntokens_per_minute = 1000\n", model_table(&stub, "m", ""));
    let gateway = start_gateway(&config).await;
    let (_, key) = gateway.create_key(&["--tier", "free"]);

    let reply = post_chat(&gateway, &key, &chat("m", "hello there", Some(5000), false)).await;
    reply.assert_error(400, "request_exceeds_limit");
    assert_eq!(reply.body["error"]["param"], "max_tokens", "{}", reply.text);
    assert_eq!(reply.body["error"]["type"], "invalid_request_error");
    assert!(reply.message().contains("tokens_per_minute"), "{}", reply.message());
    assert_eq!(reply.header("retry-after"), None, "waiting cannot help: no Retry-After");
    assert!(stub.requests_to("/v1/chat/completions").is_empty());

    // The refusal took nothing: a request that fits is served at once.
    post_chat(&gateway, &key, &chat("m", "hello there", Some(100), false)).await.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_refuses_the_second_stream_while_the_first_runs() {
    let stub = StubUpstream::start().await;
    let config = format!("{}\n[tiers.free]\nmax_concurrent = 1\n", model_table(&stub, "m", ""));
    let gateway = start_gateway(&config).await;
    let (_, key) = gateway.create_key(&["--tier", "free"]);
    let body = chat("m", "hello there", None, true);

    let gate = stub.gated_stream();
    let first = open_stream(&gateway, &key, &body).await;
    assert_eq!(first.status(), 200);
    assert!(gate.wait_first_chunk(Duration::from_secs(5)).await);

    let refused = post_chat(&gateway, &key, &body).await;
    refused.assert_error(429, "rate_limit_exceeded");
    assert!(refused.message().contains("max_concurrent"), "{}", refused.message());
    assert!(header_u64(&refused, "retry-after") >= 1);
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 1);

    gate.release();
    let payloads = read_to_end(first).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    // The body has ended, so the slot is free again.
    let second = open_stream(&gateway, &key, &body).await;
    assert_eq!(second.status(), 200);
    read_to_end(second).await;
    let usage = usage_of(&gateway, &key).await;
    assert_eq!(limit_in(&usage, "key", "max_concurrent")["used"], 0, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_token_quota_is_spent_then_insufficient_quota_until_midnight() {
    let stub = StubUpstream::start().await;
    let body = chat("m", "hello there", Some(50), false);
    let worst = worst_case(&body);
    // One worst case fits; after 5 tokens are used, another does not.
    let quota = worst + 2;
    let config = format!("{}\n[tiers.free]\ntokens_per_day = {quota}\n", model_table(&stub, "m", ""));
    let gateway = start_gateway(&config).await;
    let (_, key) = gateway.create_key(&["--tier", "free"]);

    post_chat(&gateway, &key, &body).await.assert_ok();
    let usage = usage_of(&gateway, &key).await;
    let day = limit_in(&usage, "key", "tokens_per_day");
    assert_eq!((day["max"].as_u64(), day["used"].as_u64()), (Some(quota), Some(STUB_TOKENS)), "{usage}");

    let refused = post_chat(&gateway, &key, &body).await;
    refused.assert_error(429, "insufficient_quota");
    assert!(refused.message().contains("tokens_per_day"), "{}", refused.message());
    let retry_after = header_u64(&refused, "retry-after");
    let expected = seconds_to_utc_midnight();
    assert!((1..=86_400).contains(&retry_after), "Retry-After {retry_after}");
    assert!(
        (i64::try_from(retry_after).expect("small") - expected).abs() <= 5,
        "Retry-After {retry_after}s, but the next UTC midnight is {expected}s away"
    );
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_race_never_overspends() {
    const N: u64 = 5;
    let stub = StubUpstream::start().await;
    // Long enough streams that every request is decided while the admitted ones still run.
    stub.set_chunk_gap(Duration::from_millis(500));
    // 1 currency unit per token, prompt or completion: a cost in units is a count of tokens. A
    // short queue_timeout: a request the budget holds for running ones gives up before they end,
    // so every request is decided while they run (waiting for them is tests/quota_wait.rs).
    let extra = "price = { input_per_million = 1000000.0, output_per_million = 1000000.0 }\nqueue_timeout = \"10ms\"";
    let gateway = start_gateway(&model_table(&stub, "m", extra)).await;
    let mut body = chat("m", "hello there", Some(20), true);
    body["stream_options"] = json!({"include_usage": true});
    let worst_cost = worst_case(&body);
    let budget = N * worst_cost;
    let (key_id, key) = key_with_limits(&gateway, json!({"budget_per_day": budget as f64})).await;

    let started = Instant::now();
    let tasks: Vec<_> = (0..10 * N)
        .map(|_| {
            let (url, key, body) = (gateway.proxy_url(), key.clone(), body.clone());
            tokio::spawn(async move {
                let response = post_chat_request(&url, &key, &body).send().await.expect("the gateway answers");
                let head_at = started.elapsed();
                let status = response.status().as_u16();
                if status == 200 {
                    let payloads = read_to_end(response).await;
                    (status, head_at, Some(started.elapsed()), payloads)
                } else {
                    let text = response.text().await.expect("an error body");
                    (status, head_at, None, vec![text])
                }
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("the request task ran"));
    }

    let latest_decision = results.iter().map(|(_, head_at, _, _)| *head_at).max().expect("results");
    let first_end = results.iter().filter_map(|(_, _, end, _)| *end).min().expect("some stream was served");
    assert!(
        latest_decision < first_end,
        "setup too slow: a request was decided at {latest_decision:?}, after a stream ended at {first_end:?}"
    );
    let served: Vec<&Vec<String>> =
        results.iter().filter(|(status, ..)| *status == 200).map(|(_, _, _, payloads)| payloads).collect();
    for (status, _, _, payloads) in results.iter().filter(|(status, ..)| *status != 200) {
        let error: Value = serde_json::from_str(&payloads[0]).unwrap_or(Value::Null);
        assert_eq!((*status, error["error"]["code"].as_str()), (429, Some("insufficient_quota")), "{payloads:?}");
        assert!(payloads[0].contains("budget_per_day"), "{payloads:?}");
    }
    assert_eq!(served.len() as u64, N, "exactly {N} of {} worst cases fit the budget", 10 * N);
    assert_eq!(stub.requests_to("/v1/chat/completions").len() as u64, N);

    // What the served streams reported, at 1 unit a token, is what was billed.
    let mut reported_tokens = 0;
    for payloads in &served {
        let usages = usage_events(&json_events(payloads));
        assert_eq!(usages.len(), 1, "one usage chunk, as asked: {payloads:?}");
        reported_tokens += usages[0]["prompt_tokens"].as_u64().expect("prompt_tokens")
            + usages[0]["completion_tokens"].as_u64().expect("completion_tokens");
    }
    let usage = wait_for_spend(&gateway, &key, N).await;
    let today = &usage["spend"]["today"];
    assert_eq!(today["requests"], N, "{usage}");
    assert_eq!(today["tokens"], reported_tokens, "{usage}");
    let spent = today["cost"].as_f64().expect("a cost");
    assert!((spent - reported_tokens as f64).abs() < 1e-9, "spent {spent}, streams reported {reported_tokens} tokens");
    assert!(spent <= budget as f64, "spent {spent} of a {budget} budget");
    let limit = limit_in(&usage, "key", "budget_per_day");
    assert_eq!(limit["reserved"].as_f64(), Some(0.0), "{usage}");
    assert!((limit["used"].as_f64().expect("used") - spent).abs() < 1e-9, "{usage}");
    let lines = wait_for_admin_usage(&gateway, &key_id, N).await;
    let admin_cost: f64 = lines.iter().filter_map(|line| line["cost"].as_f64()).sum();
    assert!((admin_cost - spent).abs() < 1e-9, "admin usage {lines:?} vs spend {spent}");
}

/// What docs/limits.md states: a client that leaves mid-stream is billed the content chunks
/// written to its connection before it left — here exactly the one the model server had sent —
/// and the generation is cancelled with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_is_billed_for_what_was_relayed() {
    let stub = StubUpstream::start().await;
    stub.set_stream_chunks(50);
    let gateway = start_gateway(&model_table(&stub, "m", "")).await;
    let (key_id, key) = key_with_limits(&gateway, json!({"max_concurrent": 1})).await;

    // The model server sends one content chunk and then waits: the client reads it and leaves.
    let gate = stub.gated_stream();
    let client = http();
    let mut response = client
        .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
        .bearer_auth(&key)
        .json(&chat("m", "hello there", Some(100), true))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    while content_events(&json_events(&sse_payloads(&text))) < 1 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("a chunk within 5 s")
            .expect("the stream is fine")
            .expect("the stream has not ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);
    drop(client);

    let lines = wait_for_admin_usage(&gateway, &key_id, 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["requests"], 1, "{line}");
    assert_eq!(line["completion_tokens"], 1, "billed what was written to the client, one chunk: {line}");
    assert_eq!(line["estimated_requests"], 1, "the upstream never sent usage: {line}");
    // The generation was cancelled: the model server's stream was dropped before its end, and
    // releasing it now sends nothing more.
    let deadline = std::time::Instant::now() + SETTLE_WAIT;
    while stub.streams_abandoned() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stub.streams_abandoned(), 1, "the upstream request was not cancelled");
    gate.release();
    assert_eq!(stub.chunk_sent_count(), 1);

    // The slot and the reservation are released: the next request of this max_concurrent=1 key is served.
    stub.set_stream_chunks(3);
    post_chat(&gateway, &key, &chat("m", "hello there", None, false)).await.assert_ok();
    let usage = usage_of(&gateway, &key).await;
    assert_eq!(limit_in(&usage, "key", "max_concurrent")["used"], 0, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_ignores_max_tokens_is_cut_off() {
    let stub = StubUpstream::start().await;
    stub.set_stream_chunks(40);
    stub.set_ignore_max_tokens(true);
    let gateway = start_gateway(&model_table(&stub, "m", "")).await;
    let (key_id, key) = key_with_limits(&gateway, json!({"tokens_per_day": 1_000_000})).await;
    let body = chat("m", "hello there", Some(5), true);
    let worst = worst_case(&body);

    let response = open_stream(&gateway, &key, &body).await;
    assert_eq!(response.status(), 200);
    let payloads = read_to_end(response).await;
    let relayed = content_events(&json_events(&payloads));
    assert!(relayed <= 5, "max_tokens 5, but {relayed} content chunks were relayed: {payloads:?}");
    assert!(relayed > 0, "{payloads:?}");
    assert_eq!(stub.last_request_to("/v1/chat/completions").expect("sent").json_field("max_tokens"), 5);

    let lines = wait_for_admin_usage(&gateway, &key_id, 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    let completion = line["completion_tokens"].as_u64().expect("completion_tokens");
    let total = line["total_tokens"].as_u64().expect("total_tokens");
    assert!(total <= worst, "billed {total} tokens, more than the {worst} reserved: {line}");
    let usage = usage_of(&gateway, &key).await;
    let day = limit_in(&usage, "key", "tokens_per_day");
    assert_eq!(day["reserved"], 0, "{usage}");
    assert!(day["used"].as_u64().expect("used") <= worst, "{usage}");
    // The client asked for at most 5 completion tokens and got 5: it is not billed a sixth.
    assert!(completion <= 5, "billed {completion} completion tokens with max_tokens 5 ({relayed} relayed): {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_chunk_is_removed_unless_the_client_asked_for_it() {
    let stub = StubUpstream::start().await;
    let config = format!("{}\n[limits]\ndefault_max_tokens = 77\n", model_table(&stub, "m", ""));
    let gateway = start_gateway(&config).await;
    let (_, key) = gateway.create_key(&[]);

    // Not asked: the stub is asked for usage, the client gets none.
    assert_usage_chunk_hidden(&stub, &gateway, &key, "no stream_options", chat("m", "hello there", None, true)).await;

    // Asked: the usage chunk reaches the client, last before [DONE].
    let mut asked = chat("m", "hello there", Some(9), true);
    asked["stream_options"] = json!({"include_usage": true});
    let payloads = read_to_end(open_stream(&gateway, &key, &asked).await).await;
    let events = json_events(&payloads);
    let usages = usage_events(&events);
    assert_eq!(usages.len(), 1, "{payloads:?}");
    assert_eq!(usages[0]["completion_tokens"], 3);
    assert_eq!(events.last().and_then(|event| event.get("usage")), Some(&usages[0]));
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let seen = stub.last_request_to("/v1/chat/completions").expect("forwarded");
    assert_eq!(seen.json_field("max_tokens"), 9, "the client's own cap is kept");
    assert_eq!(seen.raw_body, bytes_of(&asked), "nothing to add: the body passes unchanged");

    // A plain request without a cap gets the default written in as well.
    post_chat(&gateway, &key, &chat("m", "hello there", None, false)).await.assert_ok();
    let seen = stub.last_request_to("/v1/chat/completions").expect("forwarded");
    assert_eq!(seen.json_field("max_tokens"), 77);
    assert_eq!(seen.json_field("stream_options"), &Value::Null, "no stream, no stream_options");

    // Explicitly not asked, and no cap: both must still be set upstream.
    let mut asked_false = chat("m", "hello there", None, true);
    asked_false["stream_options"] = json!({"include_usage": false});
    assert_usage_chunk_hidden(&stub, &gateway, &key, "include_usage false", asked_false).await;
}

/// Streams `body` (no cap, usage not asked for): the client sees no usage chunk, the stub got
/// `include_usage: true` and `max_tokens` = the configured default (77).
async fn assert_usage_chunk_hidden(stub: &StubUpstream, gateway: &Gateway, key: &str, case: &str, body: Value) {
    let payloads = read_to_end(open_stream(gateway, key, &body).await).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"), "{case}: {payloads:?}");
    let events = json_events(&payloads);
    assert_eq!(content_events(&events), 3, "{case}: {payloads:?}");
    assert!(usage_events(&events).is_empty(), "{case}: the client did not ask for usage: {payloads:?}");
    assert!(events.iter().all(|event| !event["choices"].as_array().is_some_and(Vec::is_empty)), "{payloads:?}");
    let seen = stub.last_request_to("/v1/chat/completions").expect("forwarded");
    assert_eq!(seen.json_field("stream_options")["include_usage"], true, "{case}: {:?}", seen.body);
    assert_eq!(seen.json_field("max_tokens"), 77, "{case}: the default cap is written upstream: {:?}", seen.body);
    assert_eq!(seen.json_field("messages"), &body["messages"], "{case}");
}

/// Waits until `model`'s queue in the gateway holds `length` requests (`/metrics`), at most
/// [`SETTLE_WAIT`] — an explicit barrier, where a sleep would only hope the request had arrived.
async fn wait_for_queue_length(gateway: &Gateway, model: &str, length: u64) {
    let line = format!("portcullis_upstream_queue_length{{model=\"{model}\"}} {length}");
    let deadline = Instant::now() + SETTLE_WAIT;
    loop {
        let metrics =
            send(http().get(format!("{}/metrics", gateway.admin_url())).bearer_auth(gateway.admin_token())).await;
        if metrics.text.lines().any(|metric| metric == line) {
            return;
        }
        assert!(Instant::now() < deadline, "{model}'s queue never held {length}:\n{}", metrics.text);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_serves_pro_before_free_when_the_model_server_is_saturated() {
    let stub = StubUpstream::start().await;
    let config = format!(
        "{}\n{}\n[tiers.free]\npriority = 0\n\n[tiers.pro]\npriority = 10\n",
        model_table(&stub, "m", "max_concurrent = 1\nqueue_timeout = \"10s\""),
        model_table(&stub, "tiny", "max_concurrent = 1\nqueue_size = 1\nqueue_timeout = \"10s\""),
    );
    let gateway = start_gateway(&config).await;
    let (_, free) = gateway.create_key(&["--tier", "free"]);
    let (_, pro) = gateway.create_key(&["--tier", "pro"]);
    let chat_requests = || stub.requests_to("/v1/chat/completions");

    let gate = stub.gated_stream();
    let holder = open_stream(&gateway, &free, &chat("m", "holder", None, true)).await;
    assert_eq!(holder.status(), 200);
    assert!(gate.wait_first_chunk(Duration::from_secs(5)).await);

    let mut waiting = Vec::new();
    for (queued, (key, content)) in [(&free, "free-1"), (&free, "free-2"), (&pro, "pro-1")].into_iter().enumerate() {
        waiting.push(spawn_chat(&gateway, key, chat("m", content, None, false)));
        wait_for_queue_length(&gateway, "m", queued as u64 + 1).await;
        assert_eq!(chat_requests().len(), 1, "{content} must wait for the slot");
    }
    gate.release();
    read_to_end(holder).await;
    for task in waiting {
        task.await.expect("the request task ran").assert_ok();
    }
    let order: Vec<String> = chat_requests().iter().map(content_of).collect();
    assert_eq!(order, ["holder", "pro-1", "free-1", "free-2"], "higher priority first, then arrival order");

    // A full queue sheds at once.
    let gate = stub.gated_stream();
    let holder = open_stream(&gateway, &free, &chat("tiny", "holder", None, true)).await;
    assert_eq!(holder.status(), 200);
    assert!(gate.wait_first_chunk(Duration::from_secs(5)).await);
    let queued = spawn_chat(&gateway, &pro, chat("tiny", "queued", None, false));
    wait_for_queue_length(&gateway, "tiny", 1).await;
    let asked = Instant::now();
    let shed = post_chat(&gateway, &pro, &chat("tiny", "shed", None, false)).await;
    shed.assert_error(503, "overloaded");
    assert!(asked.elapsed() < Duration::from_secs(5), "shed at once, not after the queue timeout");
    assert_eq!(shed.header("retry-after"), Some("10"), "the queue timeout, in seconds");
    gate.release();
    read_to_end(holder).await;
    queued.await.expect("the request task ran").assert_ok();
    let contents: Vec<String> = chat_requests().iter().map(content_of).collect();
    assert!(!contents.iter().any(|content| content == "shed"), "{contents:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_survive_a_restart() {
    let stub = StubUpstream::start().await;
    let mut gateway = start_gateway(&model_table(&stub, "m", "")).await;
    let body = chat("m", "hello there", Some(40), false);
    let worst = worst_case(&body);
    // A fresh limiter would admit one worst case; one that remembers 5 used tokens would not.
    let quota = worst + 2;
    let (_, key) = key_with_limits(&gateway, json!({"tokens_per_day": quota})).await;

    post_chat(&gateway, &key, &body).await.assert_ok();
    let before = wait_for_spend(&gateway, &key, 1).await;
    assert_eq!(before["spend"]["today"]["requests"], 1, "{before}");
    let used_before = limit_in(&before, "key", "tokens_per_day")["used"].clone();
    assert_eq!(used_before, STUB_TOKENS, "{before}");

    gateway.restart().await;

    let after = usage_of(&gateway, &key).await;
    let day = limit_in(&after, "key", "tokens_per_day");
    assert_eq!(day["used"], used_before, "the day's use survives a restart: {after}");
    assert_eq!(day["remaining"], quota - STUB_TOKENS, "{after}");
    assert_eq!(after["spend"]["today"]["tokens"], STUB_TOKENS, "{after}");
    let refused = post_chat(&gateway, &key, &body).await;
    refused.assert_error(429, "insufficient_quota");
    assert!(refused.message().contains("tokens_per_day"), "{}", refused.message());
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_follow_the_authenticated_key_not_client_fields() {
    let stub = StubUpstream::start().await;
    let gateway = start_gateway(&model_table(&stub, "m", "")).await;
    gateway.cli_json(&["teams", "create", "acme"]);
    let patched = send(
        http()
            .patch(format!("{}/admin/v1/teams/acme", gateway.admin_url()))
            .bearer_auth(gateway.admin_token())
            .json(&json!({"limits": {"requests_per_minute": 2}})),
    )
    .await;
    patched.assert_ok();
    assert_eq!(patched.body["limits"]["requests_per_minute"], 2, "{}", patched.text);
    let (first_id, first) = gateway.create_key(&["--team", "acme", "--name", "acme-1"]);
    let (_, second) = gateway.create_key(&["--team", "acme", "--name", "acme-2"]);
    let (other_id, other) = gateway.create_key(&["--team", "other", "--name", "other-1"]);

    // Everything a client controls points away from acme; only the bearer key counts.
    let request_as = |key: &str, body: &Value, pretend_team: &str, pretend_key: &str| {
        post_chat_request(&gateway.proxy_url(), key, body)
            .header("x-portcullis-team", pretend_team)
            .header("x-team", pretend_team)
            .header("openai-organization", pretend_team)
            .header("x-api-key", pretend_key)
    };
    let mut acme_body = chat("m", "hello there", None, false);
    acme_body["user"] = json!(other_id);
    let mut other_body = chat("m", "hello there", None, false);
    other_body["user"] = json!(first_id);

    send(request_as(&first, &acme_body, "other", &other)).await.assert_ok();
    send(request_as(&second, &acme_body, "other", &other)).await.assert_ok();
    for key in [&first, &second] {
        let refused = send(request_as(key, &acme_body, "other", &other)).await;
        refused.assert_error(429, "rate_limit_exceeded");
        assert!(refused.message().contains("team 'acme'"), "{}", refused.message());
        assert!(refused.message().contains("requests_per_minute"), "{}", refused.message());
    }
    for _ in 0..4 {
        send(request_as(&other, &other_body, "acme", &first)).await.assert_ok();
    }
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), 6);
}

/// A key created without a tier is on its team's: `teams update --tier` moves it at once — its
/// limits and the models its tier allows — while a key given a tier of its own stays where it is
/// until `keys update --inherit-tier`. `keys show` and `keys list` say which tier each follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_a_tier_of_its_own_follows_its_teams_tier() {
    let stub = StubUpstream::start().await;
    let config = format!(
        "{}{}\n[tiers.free]\nrequests_per_minute = 2\nmodels = [\"m\"]\n\n\
         [tiers.pro]\nrequests_per_minute = 100\nmodels = [\"m\", \"m2\"]\n",
        model_table(&stub, "m", ""),
        model_table(&stub, "m2", ""),
    );
    let gateway = start_gateway(&config).await;
    gateway.cli_json(&["teams", "create", "acme", "--tier", "free"]);
    let (follower_id, follower) = gateway.create_key(&["--team", "acme"]);
    let (pinned_id, pinned) = gateway.create_key(&["--team", "acme", "--tier", "free"]);
    let tier_of = |id: &str| {
        let shown = gateway.cli_json(&["keys", "show", id]);
        (shown["tier"].as_str().map(str::to_string), shown["tier_source"].as_str().map(str::to_string))
    };
    let on = |tier: &str, source: &str| (Some(tier.to_string()), Some(source.to_string()));
    assert_eq!(tier_of(&follower_id), on("free", "team"));
    assert_eq!(tier_of(&pinned_id), on("free", "key"));
    for key in [&follower, &pinned] {
        assert_eq!(limit_in(&usage_of(&gateway, key).await, "key", "requests_per_minute")["max"], 2);
        assert_eq!(common::model_ids(&gateway, key).await, ["m"]);
    }

    gateway.cli_json(&["teams", "update", "acme", "--tier", "pro"]);
    let moved = usage_of(&gateway, &follower).await;
    assert_eq!(moved["key"]["tier"], "pro", "{moved}");
    assert_eq!(limit_in(&moved, "key", "requests_per_minute")["max"], 100, "{moved}");
    assert_eq!(common::model_ids(&gateway, &follower).await, ["m", "m2"]);
    post_chat(&gateway, &follower, &chat("m2", "hello there", None, false)).await.assert_ok();
    assert_eq!(tier_of(&follower_id), on("pro", "team"));
    let listed = gateway.cli(&["keys", "list", "--team", "acme"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("pro (team's)"), "{}", common::describe(&listed));

    let kept = usage_of(&gateway, &pinned).await;
    assert_eq!(
        (kept["key"]["tier"].as_str(), limit_in(&kept, "key", "requests_per_minute")["max"].as_u64()),
        (Some("free"), Some(2))
    );
    post_chat(&gateway, &pinned, &chat("m2", "hello there", None, false)).await.assert_error(403, "model_not_allowed");
    assert_eq!(tier_of(&pinned_id), on("free", "key"));

    gateway.cli_json(&["keys", "update", &pinned_id, "--inherit-tier"]);
    assert_eq!(tier_of(&pinned_id), on("pro", "team"));
    assert_eq!(limit_in(&usage_of(&gateway, &pinned).await, "key", "requests_per_minute")["max"], 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_endpoint_reports_limits_and_spend() {
    let stub = StubUpstream::start().await;
    let config = format!(
        "{}\n[limits.global]\ntokens_per_month = 10000000\n\n[tiers.free]\nrequests_per_minute = 10\ntokens_per_day = 100000\n",
        model_table(&stub, "m", "price = { input_per_million = 2.0, output_per_million = 4.0 }"),
    );
    let gateway = start_gateway(&config).await;
    let (key_id, key) = create_key_via_api(&gateway, json!({"tier": "free", "limits": {"budget_per_day": 1.0}})).await;
    let body = chat("m", "hello there", Some(30), true);
    let worst = worst_case(&body);
    let prompt_bound = worst - 30;

    let fresh = usage_of(&gateway, &key).await;
    assert_eq!(fresh["object"], "usage");
    assert_eq!((fresh["key"]["id"].as_str(), fresh["key"]["tier"].as_str()), (Some(key_id.as_str()), Some("free")));
    assert_eq!(fresh["spend"]["today"]["requests"], 0, "{fresh}");
    let key_scope = fresh["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .find(|scope| scope["scope"]["kind"] == "key")
        .unwrap_or_else(|| panic!("no key scope in {fresh}"));
    assert_eq!(key_scope["scope"]["id"], key_id.as_str());
    let names: Vec<&str> =
        key_scope["limits"].as_array().expect("list").iter().filter_map(|entry| entry["limit"].as_str()).collect();
    assert_eq!(names, ["requests_per_minute", "tokens_per_day", "budget_per_day"], "{fresh}");
    let day = limit_in(&fresh, "key", "tokens_per_day");
    assert_eq!(
        (day["max"].as_u64(), day["used"].as_u64(), day["remaining"].as_u64()),
        (Some(100_000), Some(0), Some(100_000))
    );
    let resets_in = i64::try_from(day["resets_in_ms"].as_u64().expect("resets_in_ms")).expect("small") / 1000;
    assert!((resets_in - seconds_to_utc_midnight()).abs() <= 5, "{day}");

    // While a stream runs, its worst case is reserved.
    let gate = stub.gated_stream();
    let running = open_stream(&gateway, &key, &body).await;
    assert_eq!(running.status(), 200);
    assert!(gate.wait_first_chunk(Duration::from_secs(5)).await);
    let during = usage_of(&gateway, &key).await;
    let day = limit_in(&during, "key", "tokens_per_day");
    assert_eq!((day["reserved"].as_u64(), day["used"].as_u64()), (Some(worst), Some(0)), "{during}");
    assert_eq!(day["remaining"], 100_000 - worst, "{during}");
    let budget = limit_in(&during, "key", "budget_per_day");
    let worst_cost = (prompt_bound as f64 * 2.0 + 30.0 * 4.0) / 1e6;
    assert!((budget["reserved"].as_f64().expect("reserved") - worst_cost).abs() < 1e-12, "{during}");
    assert_eq!(budget["max"].as_f64(), Some(1.0));
    assert_eq!(limit_in(&during, "key", "requests_per_minute")["used"], 1, "{during}");
    assert_eq!(limit_in(&during, "global", "tokens_per_month")["reserved"], worst, "{during}");

    gate.release();
    read_to_end(running).await;
    let cost = (2.0 * 2.0 + 3.0 * 4.0) / 1e6;
    let after = wait_for_spend(&gateway, &key, 1).await;
    let day = limit_in(&after, "key", "tokens_per_day");
    assert_eq!((day["reserved"].as_u64(), day["used"].as_u64()), (Some(0), Some(STUB_TOKENS)), "{after}");
    let budget = limit_in(&after, "key", "budget_per_day");
    assert!((budget["used"].as_f64().expect("used") - cost).abs() < 1e-12, "{after}");
    assert!((budget["remaining"].as_f64().expect("remaining") - (1.0 - cost)).abs() < 1e-12, "{after}");
    assert_eq!(limit_in(&after, "global", "tokens_per_month")["used"], STUB_TOKENS, "{after}");
    for window in ["today", "month"] {
        let spend = &after["spend"][window];
        assert_eq!((spend["requests"].as_u64(), spend["tokens"].as_u64()), (Some(1), Some(STUB_TOKENS)), "{after}");
        assert!((spend["cost"].as_f64().expect("cost") - cost).abs() < 1e-12, "{after}");
    }

    // Without a key there is nothing to report.
    let anonymous = send(http().get(format!("{}/v1/usage", gateway.proxy_url()))).await;
    anonymous.assert_error(401, "invalid_api_key");
}
