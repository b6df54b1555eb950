//! The audit log through the real binary: one record per request whatever its ending, admin
//! actions naming their token, `sync` durability across `kill -9`, tampering named by
//! `audit verify`, no secret in the log or its sinks, queries, exports and paging, the
//! authorizer's decisions marked by the gateway that asked, and retention that leaves a
//! verifiable chain.
//!
//! Records are read back through `GET /admin/v1/audit`; in `async` durability a record may take
//! a few milliseconds to be stored, so reads poll for up to [`AUDIT_WAIT`].

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{
    BINARY, Reply, admin_json, audit_records, chat_body, cli_as, describe, http, send, str_field, the_record,
    wait_for_records,
};
use futures_util::StreamExt;
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream, free_port};
use serde_json::{Value, json};

/// The node name the tamper and retention tests give their gateways.
const NODE: &str = "gw-audit";

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

fn model_table(name: &str, endpoint: &str, extra: &str) -> String {
    format!("[[models]]\nname = \"{name}\"\nendpoints = [\"{endpoint}\"]\n{extra}\n")
}

/// A price, so that allowed requests have a cost.
const PRICED: &str = "price = { input_per_million = 1.0, output_per_million = 2.0 }";

/// `POST /v1/chat/completions` with `body`, `x-request-id: id` and the key (none when `None`).
fn chat_request(gateway: &Gateway, key: Option<&str>, id: &str, body: &Value) -> reqwest::RequestBuilder {
    let mut request =
        http().post(format!("{}/v1/chat/completions", gateway.proxy_url())).header("x-request-id", id).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request
}

async fn chat_with_id(gateway: &Gateway, key: Option<&str>, id: &str, model: &str) -> Reply {
    let reply = send(chat_request(gateway, key, id, &chat_body(model))).await;
    assert_eq!(reply.header("x-request-id"), Some(id), "the gateway did not keep the request id: {reply:?}");
    reply
}

fn stream_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello there"}], "stream": true})
}

/// Reads a body to its end (at most 15 s).
async fn read_to_end(mut response: reqwest::Response) -> String {
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            Ok(Ok(None)) => return text,
            Ok(Err(error)) => panic!("the body failed after {text:?}: {error}"),
            Err(_) => panic!("the body did not end within 15 s; so far: {text:?}"),
        }
    }
}

/// `record[field]` as an optional string.
fn text<'a>(record: &'a Value, field: &str) -> Option<&'a str> {
    record[field].as_str()
}

/// The fields of a record that say how a request went, for one readable assertion.
fn outcome(record: &Value) -> (u64, &str, Option<&str>) {
    (record["status"].as_u64().unwrap_or(0), text(record, "decision").unwrap_or("<none>"), text(record, "reason"))
}

#[track_caller]
fn assert_outcome(record: &Value, status: u64, decision: &str, reason: Option<&str>) {
    assert_eq!(outcome(record), (status, decision, reason), "unexpected record: {record:#}");
}

/// An allowed request's record: its key, tokens and cost are set.
#[track_caller]
fn assert_billed(record: &Value, key_id: &str) {
    assert_eq!(text(record, "key_id"), Some(key_id), "{record:#}");
    assert!(record["prompt_tokens"].as_u64().is_some_and(|tokens| tokens > 0), "no prompt tokens: {record:#}");
    assert!(record["completion_tokens"].as_u64().is_some_and(|tokens| tokens > 0), "no completion tokens: {record:#}");
    assert!(record["cost_pico"].as_u64().is_some_and(|cost| cost > 0), "no cost: {record:#}");
    assert!(record["upstream"].is_string(), "no upstream: {record:#}");
}

/// `portcullis audit verify` (with `--json` when asked) against the running gateway.
fn verify(gateway: &Gateway, json: bool) -> std::process::Output {
    let mut args = vec!["audit", "verify"];
    if json {
        args.push("--json");
    }
    gateway.cli(&args)
}

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// ------------------------------------------------------------------------------------------------
// One record per request
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_path_produces_exactly_one_record() {
    let stub = StubUpstream::start().await;
    let down = format!("http://127.0.0.1:{}", free_port());
    let config = [
        "[limits]\ndefault_tier = \"open\"\n\n[tiers.open]\n\n[tiers.slow]\nrequests_per_minute = 1\n".to_string(),
        "[security]\nauth_failure_limit = 3\n".to_string(),
        model_table("a", &stub.url(), PRICED),
        model_table("b", &stub.url(), ""),
        model_table("down", &down, "retries = 0\nhealth_check = { enabled = false }"),
    ]
    .join("\n");
    let gateway = GatewayBuilder::new(BINARY).server_setting("max_body_bytes = 1024").config(&config).start().await;
    let (key_id, key) = gateway.create_key(&["--tier", "open", "--models", "a,down"]);
    let (slow_id, slow_key) = gateway.create_key(&["--tier", "slow", "--models", "a"]);
    let proxy = gateway.proxy_url();

    // Health probes and metrics: answered, never recorded.
    let admin = gateway.admin_url();
    let probes =
        [(&proxy, "/healthz"), (&proxy, "/readyz"), (&admin, "/healthz"), (&admin, "/readyz"), (&admin, "/metrics")];
    for (n, (base, path)) in probes.into_iter().enumerate() {
        let reply = send(http().get(format!("{base}{path}")).header("x-request-id", format!("rid-probe-{n}"))).await;
        assert_eq!(reply.status, 200, "{base}{path}: {}", reply.text);
    }

    // Allowed, plain.
    chat_with_id(&gateway, Some(&key), "rid-ok", "a").await.assert_ok();

    // Allowed, streamed to the end.
    let response = chat_request(&gateway, Some(&key), "rid-stream", &stream_body("a")).send().await.expect("answers");
    assert_eq!(response.status(), 200);
    let streamed = read_to_end(response).await;
    assert!(streamed.contains("data: [DONE]"), "the stream did not finish: {streamed}");

    // Allowed, the client leaves after the first chunk of a long, slow stream.
    stub.set_stream_chunks(40);
    stub.set_chunk_gap(Duration::from_millis(25));
    let mut response =
        chat_request(&gateway, Some(&key), "rid-gone", &stream_body("a")).send().await.expect("the gateway answers");
    assert_eq!(response.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "no first chunk: {first:?}");
    drop(response);
    stub.reset();

    // Refusals.
    chat_with_id(&gateway, None, "rid-no-key", "a").await.assert_error(401, "invalid_api_key");
    chat_with_id(&gateway, Some("pcl_not_a_real_key_0000000000"), "rid-bad-key", "a")
        .await
        .assert_error(401, "invalid_api_key");
    chat_with_id(&gateway, Some(&key), "rid-not-allowed", "b").await.assert_error(403, "model_not_allowed");
    chat_with_id(&gateway, Some(&key), "rid-not-found", "nope").await.assert_error(404, "model_not_found");
    let malformed = send(
        http()
            .post(format!("{proxy}/v1/chat/completions"))
            .header("x-request-id", "rid-malformed")
            .header("content-type", "application/json")
            .bearer_auth(&key)
            .body("{\"model\": \"a\", \"messages\": [ not json"),
    )
    .await;
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    let huge = json!({"model": "a", "messages": [{"role": "user", "content": "x".repeat(4096)}]});
    send(chat_request(&gateway, Some(&key), "rid-too-large", &huge)).await.assert_error(413, "request_too_large");

    // The model server refuses connections.
    let failed = chat_with_id(&gateway, Some(&key), "rid-upstream-down", "down").await;
    assert_eq!(failed.status, 502, "{}", failed.text);

    // Rate limited: one request a minute.
    chat_with_id(&gateway, Some(&slow_key), "rid-slow-1", "a").await.assert_ok();
    chat_with_id(&gateway, Some(&slow_key), "rid-slow-2", "a").await.assert_error(429, "rate_limit_exceeded");

    // Blocked: bad keys until the address is refused (the failures above count too).
    let mut blocked_id = None;
    let mut failed_ids = Vec::new();
    for attempt in 1..=4 {
        let id = format!("rid-block-{attempt}");
        let reply = chat_with_id(&gateway, Some("pcl_guessing_0000000000000000"), &id, "a").await;
        if reply.status == 429 {
            reply.assert_error(429, "client_blocked");
            assert!(reply.header("retry-after").is_some(), "client_blocked without Retry-After: {reply:?}");
            blocked_id = Some(id);
            break;
        }
        reply.assert_error(401, "invalid_api_key");
        failed_ids.push(id);
    }
    let blocked_id = blocked_id.expect("three failed authentications block the address");
    assert!(failed_ids.len() <= 3, "blocked only after {} more failures", failed_ids.len());

    // Every request has exactly one record, with what happened to it.
    let expected: Vec<(&str, u64, &str, Option<&str>)> = vec![
        ("rid-ok", 200, "allow", None),
        ("rid-stream", 200, "allow", None),
        ("rid-gone", 200, "allow", Some("client_disconnected")),
        ("rid-no-key", 401, "deny", Some("invalid_api_key")),
        ("rid-bad-key", 401, "deny", Some("invalid_api_key")),
        ("rid-not-allowed", 403, "deny", Some("model_not_allowed")),
        ("rid-not-found", 404, "deny", Some("model_not_found")),
        ("rid-malformed", 400, "deny", Some("invalid_request")),
        ("rid-too-large", 413, "deny", Some("request_too_large")),
        ("rid-upstream-down", 502, "error", Some("upstream_unavailable")),
        ("rid-slow-1", 200, "allow", None),
        ("rid-slow-2", 429, "deny", Some("rate_limit_exceeded")),
        (blocked_id.as_str(), 429, "deny", Some("client_blocked")),
    ];
    for (id, _, _, _) in &expected {
        wait_for_records(&gateway, &format!("request_id={id}"), 1).await;
    }
    for id in &failed_ids {
        wait_for_records(&gateway, &format!("request_id={id}"), 1).await;
    }
    // A moment more, for a second record of the same request to show if there is one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = audit_records(&gateway, "").await;
    let mut by_request: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for record in &all {
        if let Some(id) = text(record, "request_id") {
            by_request.entry(id).or_default().push(record);
        }
    }
    let mut problems = Vec::new();
    for (id, status, decision, reason) in &expected {
        match by_request.get(id).map(Vec::as_slice) {
            Some([record]) if outcome(record) == (*status, *decision, *reason) => {}
            Some([record]) => problems.push(format!(
                "{id}: expected ({status}, {decision}, {reason:?}), recorded {:?}: {record}",
                outcome(record)
            )),
            Some(records) => problems.push(format!("{id}: {} records: {records:#?}", records.len())),
            None => problems.push(format!("{id}: no record")),
        }
    }
    for id in &failed_ids {
        match by_request.get(id.as_str()).map(Vec::as_slice) {
            Some([record]) if outcome(record) == (401, "deny", Some("invalid_api_key")) => {}
            other => problems.push(format!("{id}: expected one 401 invalid_api_key record, found {other:?}")),
        }
    }
    assert!(problems.is_empty(), "wrong records:\n{}\n\nall records:\n{all:#?}", problems.join("\n"));

    // Nothing recorded for probes; nothing recorded without a request id but the security event.
    let probes: Vec<&&str> = by_request.keys().filter(|id| id.starts_with("rid-probe")).collect();
    assert!(probes.is_empty(), "health probes were recorded: {probes:?}");
    let requests_without_id: Vec<&Value> =
        all.iter().filter(|record| record["kind"] == "request" && record["request_id"].is_null()).collect();
    assert!(requests_without_id.is_empty(), "request records without their request id: {requests_without_id:#?}");
    let request_records = all.iter().filter(|record| record["kind"] == "request").count();
    assert_eq!(request_records, expected.len() + failed_ids.len(), "one record per request: {all:#?}");

    // The details of the allowed ones.
    let ok = by_request["rid-ok"][0];
    assert_billed(ok, &key_id);
    assert_eq!((text(ok, "model"), ok["stream"].as_bool()), (Some("a"), Some(false)), "{ok:#}");
    assert_eq!((text(ok, "method"), text(ok, "path")), (Some("POST"), Some("/v1/chat/completions")), "{ok:#}");
    assert_eq!(text(ok, "client_ip"), Some("127.0.0.1"), "{ok:#}");
    assert_eq!((ok["prompt_tokens"].as_u64(), ok["completion_tokens"].as_u64()), (Some(2), Some(3)), "{ok:#}");
    let stream = by_request["rid-stream"][0];
    assert_billed(stream, &key_id);
    assert_eq!(stream["stream"], true, "{stream:#}");
    let ttfb = stream["ttfb_ms"].as_u64().unwrap_or_else(|| panic!("a stream record has ttfb_ms: {stream:#}"));
    let latency = stream["latency_ms"].as_u64().expect("latency_ms");
    assert!(ttfb <= latency, "ttfb_ms {ttfb} > latency_ms {latency}: {stream:#}");
    let gone = by_request["rid-gone"][0];
    assert_eq!((text(gone, "key_id"), gone["stream"].as_bool()), (Some(key_id.as_str()), Some(true)), "{gone:#}");
    assert!(gone["completion_tokens"].as_u64().is_some_and(|tokens| tokens < 40), "billed past the drop: {gone:#}");
    assert_billed(by_request["rid-slow-1"][0], &slow_id);
    assert_eq!(text(by_request["rid-slow-2"][0], "key_id"), Some(slow_id.as_str()));
    let upstream_down = by_request["rid-upstream-down"][0];
    assert_eq!(text(upstream_down, "key_id"), Some(key_id.as_str()), "{upstream_down:#}");
    assert_eq!(text(upstream_down, "model"), Some("down"), "{upstream_down:#}");
    for id in ["rid-no-key", "rid-bad-key"] {
        assert!(
            by_request[id][0]["key_id"].is_null(),
            "an unauthenticated request names a key: {:#}",
            by_request[id][0]
        );
    }
    assert_eq!(text(by_request["rid-not-allowed"][0], "key_id"), Some(key_id.as_str()));

    // The block itself is a security record naming the address.
    let security = wait_for_records(&gateway, "kind=security", 1).await;
    assert_eq!(security.len(), 1, "one security event: {security:#?}");
    assert_outcome(&security[0], 429, "deny", Some("client_blocked"));
    assert_eq!(text(&security[0], "client_ip"), Some("127.0.0.1"), "{:#}", security[0]);
}

// ------------------------------------------------------------------------------------------------
// Admin actions
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_are_recorded_naming_the_admin_token() {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(BINARY).config(&model_table("a", &stub.url(), "")).start().await;
    let issued = gateway.cli_json(&["tokens", "create", "--name", "ops", "--role", "admin"]);
    let token_id = str_field(&issued, "id").to_string();
    let token = str_field(&issued, "token").to_string();

    let run = |args: &[&str]| {
        let output = cli_as(&gateway, &token, args);
        assert!(output.status.success(), "`portcullis {}` failed: {}", args.join(" "), describe(&output));
        stdout_of(&output)
    };
    let created: Value =
        serde_json::from_str(&run(&["keys", "create", "--name", "audited", "--json"])).expect("keys create --json");
    let key_id = str_field(&created, "id").to_string();
    run(&["keys", "update", &key_id, "--name", "renamed"]);
    run(&["keys", "rotate", &key_id, "--grace", "0s"]);
    run(&["keys", "revoke", &key_id]);
    run(&["teams", "create", "acme"]);

    // A refused admin call: a token that does not exist.
    let refused = send(
        http()
            .post(format!("{}/admin/v1/keys", gateway.admin_url()))
            .header("x-request-id", "rid-admin-refused")
            .bearer_auth("pct_not_a_token_000000000000000000")
            .json(&json!({"name": "nope"})),
    )
    .await;
    refused.assert_error(401, "invalid_token");

    let records = wait_for_records(&gateway, "kind=admin", 7).await;
    let by_token: Vec<&Value> =
        records.iter().filter(|record| text(record, "admin_token_id") == Some(token_id.as_str())).collect();
    let actions: Vec<(Option<&str>, Option<&str>)> =
        by_token.iter().map(|record| (text(record, "reason"), text(record, "target"))).collect();
    assert_eq!(
        actions,
        vec![
            (Some("key.create"), Some(key_id.as_str())),
            (Some("key.update"), Some(key_id.as_str())),
            (Some("key.rotate"), Some(key_id.as_str())),
            (Some("key.revoke"), Some(key_id.as_str())),
            (Some("team.create"), Some("acme")),
        ],
        "the admin token's actions, in order: {records:#?}"
    );
    for record in &by_token {
        assert_outcome(record, 200, "allow", text(record, "reason"));
        assert_eq!(record["kind"], "admin", "{record:#}");
        assert!(record["key_id"].is_null(), "an admin action is not a key's request: {record:#}");
        // A change is recorded with the request it came with, like a refusal.
        assert_eq!(text(record, "client_ip"), Some("127.0.0.1"), "{record:#}");
        assert!(text(record, "request_id").is_some_and(|id| id.starts_with("req_")), "{record:#}");
        assert!(text(record, "path").is_some_and(|path| path.starts_with("/admin/v1/")), "{record:#}");
        assert!(matches!(text(record, "method"), Some("POST" | "PATCH" | "DELETE")), "{record:#}");
        assert!(text(record, "user_agent").is_some_and(|agent| agent.starts_with("portcullis")), "{record:#}");
    }
    assert_eq!(by_token.last().map(|record| text(record, "team")), Some(Some("acme")));

    // The token's own creation, by the bootstrap token.
    let token_created: Vec<&Value> =
        records.iter().filter(|record| text(record, "reason") == Some("token.create")).collect();
    assert_eq!(token_created.len(), 1, "{records:#?}");
    assert_eq!(text(token_created[0], "target"), Some(token_id.as_str()), "{:#}", token_created[0]);
    assert_eq!(text(token_created[0], "admin_token_id"), Some("bootstrap"), "{:#}", token_created[0]);

    // The refusal: one admin/deny record, with its request id and no token named.
    let denied: Vec<&Value> = records.iter().filter(|record| record["decision"] == "deny").collect();
    assert_eq!(denied.len(), 1, "one refused admin call: {records:#?}");
    assert_outcome(denied[0], 401, "deny", Some("invalid_token"));
    assert_eq!(text(denied[0], "request_id"), Some("rid-admin-refused"), "{:#}", denied[0]);
    assert_eq!((text(denied[0], "method"), text(denied[0], "path")), (Some("POST"), Some("/admin/v1/keys")));
    assert_eq!(records.len(), 7, "token.create, five actions and one refusal: {records:#?}");
}

// ------------------------------------------------------------------------------------------------
// sync durability
// ------------------------------------------------------------------------------------------------

/// Sends a chat (streamed or plain) with request id `id`; returns the id when the whole answer
/// arrived: a 200 with a complete JSON body, or a stream up to `data: [DONE]`.
async fn complete_request(
    client: reqwest::Client,
    url: String,
    key: String,
    id: String,
    stream: bool,
) -> Option<String> {
    let body = if stream { stream_body("a") } else { chat_body("a") };
    let response = client.post(&url).bearer_auth(&key).header("x-request-id", &id).json(&body).send().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    let text = response.text().await.ok()?;
    let complete = if stream {
        text.contains("data: [DONE]")
    } else {
        serde_json::from_str::<Value>(&text).is_ok_and(|body| body["choices"][0]["message"]["content"].is_string())
    };
    complete.then_some(id)
}

/// `count` requests, `concurrency` at a time; the ids whose answers arrived complete.
async fn wave(gateway: &Gateway, key: &str, prefix: &str, count: usize, concurrency: usize) -> Vec<String> {
    let client = http();
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());
    futures_util::stream::iter(0..count)
        .map(|n| complete_request(client.clone(), url.clone(), key.to_string(), format!("{prefix}-{n}"), n % 3 == 0))
        .buffer_unordered(concurrency)
        .filter_map(|id| async move { id })
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_durability_survives_kill_dash_nine() {
    let stub = StubUpstream::start().await;
    let config =
        format!("[audit]\ndurability = \"sync\"\nnode = \"{NODE}\"\n\n{}", model_table("a", &stub.url(), PRICED));
    let mut gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&[]);

    let mut completed = wave(&gateway, &key, "rid-first", 200, 8).await;
    assert_eq!(completed.len(), 200, "every request of the first wave completes");

    // A second wave, killed while in flight: whatever completed before the kill must be stored.
    let second = {
        let (client, url, key) = (http(), format!("{}/v1/chat/completions", gateway.proxy_url()), key.clone());
        tokio::spawn(async move {
            futures_util::stream::iter(0..100_000)
                .map(|n| {
                    complete_request(client.clone(), url.clone(), key.clone(), format!("rid-second-{n}"), n % 3 == 0)
                })
                .buffer_unordered(8)
                .take_while(|id| std::future::ready(id.is_some()))
                .filter_map(|id| async move { id })
                .collect::<Vec<String>>()
                .await
        })
    };
    let under_way = stub.wait_for_requests(stub.request_count() + 60, Duration::from_secs(10)).await;
    assert!(under_way, "the second wave did not get going");
    gateway.signal("KILL");
    let second_completed = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second wave ends once the gateway is gone")
        .expect("the second wave's task");
    assert!(!second_completed.is_empty(), "the gateway was killed before the second wave got anywhere");
    completed.extend(second_completed);

    gateway.restart().await;
    let stored = audit_records(&gateway, "kind=request").await;
    let stored_ids: BTreeSet<&str> = stored.iter().filter_map(|record| text(record, "request_id")).collect();
    let missing: Vec<&String> = completed.iter().filter(|id| !stored_ids.contains(id.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} of {} completed requests have no record after kill -9: {missing:?}",
        missing.len(),
        completed.len()
    );
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for id in stored.iter().filter_map(|record| text(record, "request_id")) {
        *per_id.entry(id).or_default() += 1;
    }
    let doubled: Vec<(&&str, &usize)> = per_id.iter().filter(|(_, count)| **count > 1).collect();
    assert!(doubled.is_empty(), "requests recorded more than once: {doubled:?}");

    let output = verify(&gateway, false);
    assert!(output.status.success(), "audit verify after kill -9: {}", describe(&output));
    assert!(stdout_of(&output).contains(&format!("OK {NODE}: ")), "{}", describe(&output));

    // The tightest case: killed the moment an answer has arrived, plain or streamed.
    let mut lost = Vec::new();
    for n in 0..6 {
        let (id, stream) = (format!("rid-last-{n}"), n % 2 == 1);
        let url = format!("{}/v1/chat/completions", gateway.proxy_url());
        let done = complete_request(http(), url, key.clone(), id.clone(), stream).await;
        gateway.signal("KILL");
        assert_eq!(done.as_deref(), Some(id.as_str()), "the request completed before the kill");
        gateway.restart().await;
        if audit_records(&gateway, &format!("request_id={id}")).await.is_empty() {
            lost.push(format!("{id} ({})", if stream { "streamed" } else { "plain" }));
        }
    }
    assert!(lost.is_empty(), "answered, then kill -9: no record in sync durability for {lost:?}");
    let output = verify(&gateway, false);
    assert!(output.status.success(), "audit verify after kill -9: {}", describe(&output));
}

// ------------------------------------------------------------------------------------------------
// Tampering
// ------------------------------------------------------------------------------------------------

/// A gateway whose log holds one admin record (`key.create`, seq 1) and `count` request records
/// (seq 2..=count + 1), verified, then stopped with SIGTERM so that nothing is being written.
async fn stopped_gateway_with_records(stub: &StubUpstream, count: usize) -> Gateway {
    let config = format!("[audit]\nnode = \"{NODE}\"\n\n{}", model_table("a", &stub.url(), ""));
    let mut gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&[]);
    for n in 1..=count {
        // Allowed and refused requests alternate, so neighbouring records differ.
        let model = if n % 2 == 0 { "a" } else { "missing" };
        chat_with_id(&gateway, Some(&key), &format!("rid-tamper-{n}"), model).await;
    }
    let records = wait_for_records(&gateway, "", count + 1).await;
    // `keys create` is one admin record, then the requests.
    assert_eq!(records.len(), count + 1, "{records:#?}");
    let output = verify(&gateway, false);
    assert!(output.status.success(), "the untouched log verifies: {}", describe(&output));
    let status = gateway.terminate(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|status| status.success()), "SIGTERM shutdown: {status:?}");
    gateway
}

fn open_db(gateway: &Gateway) -> rusqlite::Connection {
    rusqlite::Connection::open(gateway.db_path()).expect("open the gateway's SQLite store")
}

fn row_count(db: &rusqlite::Connection) -> i64 {
    db.query_row("SELECT COUNT(*) FROM audit_log", [], |row| row.get(0)).expect("count audit rows")
}

/// Restarts the tampered gateway and runs `audit verify`, as text and as JSON.
async fn verify_after_restart(gateway: &mut Gateway) -> (std::process::Output, std::process::Output) {
    gateway.restart().await;
    (verify(gateway, false), verify(gateway, true))
}

#[track_caller]
fn assert_break_named(text_output: &std::process::Output, json_output: &std::process::Output, seq: u64, problem: &str) {
    assert!(!text_output.status.success(), "audit verify passed a tampered log: {}", describe(text_output));
    let line = format!("BROKEN {NODE}: first problem at seq {seq}: {problem}");
    assert!(stdout_of(text_output).contains(&line), "expected `{line}`: {}", describe(text_output));

    assert!(!json_output.status.success(), "audit verify --json passed a tampered log: {}", describe(json_output));
    let report: Value = serde_json::from_slice(&json_output.stdout)
        .unwrap_or_else(|error| panic!("audit verify --json printed no JSON ({error}): {}", describe(json_output)));
    assert_eq!(report["ok"], false, "{report:#}");
    let node = report["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|node| node["node"] == NODE))
        .unwrap_or_else(|| panic!("no node {NODE} in {report:#}"));
    assert_eq!(node["status"], json!({"break": {"seq": seq, "problem": problem}}), "{report:#}");
    assert_eq!(node["last_seq"], seq - 1, "the records before the break verified: {report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_an_edited_record_is_named_by_verify() {
    let stub = StubUpstream::start().await;
    let mut gateway = stopped_gateway_with_records(&stub, 10).await;
    {
        let db = open_db(&gateway);
        let old: i64 = db.query_row("SELECT status FROM audit_log WHERE seq = 5", [], |row| row.get(0)).expect("seq 5");
        let new = if old == 200 { 201 } else { 200 };
        let changed = db.execute("UPDATE audit_log SET status = ?1 WHERE seq = 5", [new]).expect("edit seq 5");
        assert_eq!(changed, 1);
    }
    let (text_output, json_output) = verify_after_restart(&mut gateway).await;
    assert_break_named(&text_output, &json_output, 5, "edited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_a_deleted_record_is_named_by_verify() {
    let stub = StubUpstream::start().await;
    let mut gateway = stopped_gateway_with_records(&stub, 10).await;
    {
        let db = open_db(&gateway);
        assert_eq!(db.execute("DELETE FROM audit_log WHERE seq = 4", []).expect("delete seq 4"), 1);
        assert_eq!(row_count(&db), 10);
    }
    let (text_output, json_output) = verify_after_restart(&mut gateway).await;
    assert_break_named(&text_output, &json_output, 4, "deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_swapped_records_are_named_by_verify() {
    let stub = StubUpstream::start().await;
    let mut gateway = stopped_gateway_with_records(&stub, 10).await;
    {
        let db = open_db(&gateway);
        // Rows 6 and 7 trade places: each keeps its contents and hash, and takes the other's seq.
        for (from, to) in [(6, -6), (7, 6), (-6, 7)] {
            let changed =
                db.execute("UPDATE audit_log SET seq = ?1 WHERE seq = ?2", [to, from]).expect("renumber a row");
            assert_eq!(changed, 1);
        }
        assert_eq!(row_count(&db), 11);
    }
    let (text_output, json_output) = verify_after_restart(&mut gateway).await;
    assert_break_named(&text_output, &json_output, 6, "reordered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_an_inserted_record_is_named_by_verify() {
    let stub = StubUpstream::start().await;
    let mut gateway = stopped_gateway_with_records(&stub, 10).await;
    {
        let db = open_db(&gateway);
        // The rows from seq 6 on move one up, and a forged copy of the sixth takes seq 6.
        db.execute_batch(
            "UPDATE audit_log SET seq = -seq WHERE seq >= 6;
             UPDATE audit_log SET seq = 1 - seq WHERE seq < 0;
             CREATE TEMP TABLE forged AS SELECT * FROM audit_log WHERE seq = 7;
             UPDATE forged SET seq = 6, reason = 'forged';
             INSERT INTO audit_log SELECT * FROM forged;",
        )
        .expect("insert a forged row");
        assert_eq!(row_count(&db), 12);
    }
    let (text_output, json_output) = verify_after_restart(&mut gateway).await;
    assert_break_named(&text_output, &json_output, 6, "inserted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_log_verifies_after_a_restart() {
    let stub = StubUpstream::start().await;
    let mut gateway = stopped_gateway_with_records(&stub, 10).await;
    assert_eq!(row_count(&open_db(&gateway)), 11);
    let (text_output, json_output) = verify_after_restart(&mut gateway).await;
    assert!(text_output.status.success(), "{}", describe(&text_output));
    assert!(stdout_of(&text_output).contains(&format!("OK {NODE}: 11 records")), "{}", describe(&text_output));
    assert!(json_output.status.success(), "{}", describe(&json_output));
    let report: Value = serde_json::from_slice(&json_output.stdout).expect("audit verify --json prints JSON");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["nodes"][0]["status"], "ok", "{report:#}");
    assert_eq!(report["nodes"][0]["last_seq"], 11, "{report:#}");

    // The chain goes on after the restart and still verifies.
    let (_, key) = gateway.create_key(&[]);
    chat_with_id(&gateway, Some(&key), "rid-after-restart", "a").await.assert_ok();
    let after = the_record(&gateway, "rid-after-restart").await;
    assert_eq!(after["seq"], 13, "{after:#}");
    let output = verify(&gateway, false);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(stdout_of(&output).contains(&format!("OK {NODE}: 13 records")), "{}", describe(&output));
}

// ------------------------------------------------------------------------------------------------
// No secret in the log
// ------------------------------------------------------------------------------------------------

/// Every row of `table`, each column as text.
fn dump_table(db: &rusqlite::Connection, table: &str) -> Vec<String> {
    let mut stmt = db.prepare(&format!("SELECT * FROM {table}")).expect("select every row");
    let columns = stmt.column_count();
    let rows = stmt
        .query_map([], |row| {
            let mut cells = Vec::with_capacity(columns);
            for column in 0..columns {
                let cell = match row.get_ref(column)? {
                    rusqlite::types::ValueRef::Null => "NULL".to_string(),
                    rusqlite::types::ValueRef::Integer(value) => value.to_string(),
                    rusqlite::types::ValueRef::Real(value) => value.to_string(),
                    rusqlite::types::ValueRef::Text(bytes) | rusqlite::types::ValueRef::Blob(bytes) => {
                        String::from_utf8_lossy(bytes).into_owned()
                    }
                };
                cells.push(cell);
            }
            Ok(cells.join("|"))
        })
        .expect("query every row");
    rows.collect::<Result<_, _>>().expect("read every row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_and_sinks_hold_no_secret() {
    const UPSTREAM_KEY: &str = "sk-upstream-CANARY-7f3e9a1c5b2d4e6f";
    const BOOTSTRAP: &str = "pct_bootstrap_CANARYadmin7f3e9a1c5b2d4e6f";
    const BAD_KEY: &str = "pcl_CANARYguessedkey7f3e9a1c5b2d4e6f";
    const BAD_TOKEN: &str = "pct_CANARYguessedtoken7f3e9a1c5b2d4e6f";

    let stub = StubUpstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = dir.path().join("audit.jsonl");
    let config = format!(
        "[audit]\nfile = {}\n\n{}",
        serde_json::to_string(&sink.display().to_string()).expect("a path as a TOML string"),
        model_table("a", &stub.url(), &format!("api_key = \"{UPSTREAM_KEY}\"\n{PRICED}")),
    );
    let mut gateway = GatewayBuilder::new(BINARY).admin_token(BOOTSTRAP).config(&config).start().await;
    let issued = gateway.cli_json(&["tokens", "create", "--name", "ops", "--role", "admin"]);
    let admin_token = str_field(&issued, "token").to_string();
    let created = common::cli_json_as(&gateway, &admin_token, &["keys", "create", "--name", "canary"]);
    let key = str_field(&created, "key").to_string();
    let (revoked_id, revoked_key) = gateway.create_key(&["--name", "to-revoke"]);

    // The upstream sees its own key, not the client's: the canary is live.
    chat_with_id(&gateway, Some(&key), "rid-canary-ok", "a").await.assert_ok();
    let upstream_auth =
        stub.last_request_to("/v1/chat/completions").and_then(|r| r.header("authorization").map(str::to_string));
    assert_eq!(upstream_auth.as_deref(), Some(format!("Bearer {UPSTREAM_KEY}").as_str()));

    let response =
        chat_request(&gateway, Some(&key), "rid-canary-stream", &stream_body("a")).send().await.expect("answers");
    read_to_end(response).await;
    chat_with_id(&gateway, Some(&key), "rid-canary-missing", "missing").await.assert_error(404, "model_not_found");
    chat_with_id(&gateway, Some(BAD_KEY), "rid-canary-bad", "a").await.assert_error(401, "invalid_api_key");
    chat_with_id(&gateway, Some(&revoked_key), "rid-canary-before-revoke", "a").await.assert_ok();
    let revoked = cli_as(&gateway, &admin_token, &["keys", "revoke", &revoked_id]);
    assert!(revoked.status.success(), "{}", describe(&revoked));
    chat_with_id(&gateway, Some(&revoked_key), "rid-canary-revoked", "a").await.assert_error(401, "revoked_api_key");
    stub.fail_with(500);
    let failed = chat_with_id(&gateway, Some(&key), "rid-canary-upstream-500", "a").await;
    assert!(failed.status >= 500, "the model server failed: {}", failed.text);
    stub.reset();
    let refused = send(
        http()
            .get(format!("{}/admin/v1/keys", gateway.admin_url()))
            .header("x-request-id", "rid-canary-admin-refused")
            .bearer_auth(BAD_TOKEN),
    )
    .await;
    refused.assert_error(401, "invalid_token");
    // A key sent where it does not belong: in the query string.
    send(
        http()
            .post(format!("{}/v1/chat/completions?api_key={key}", gateway.proxy_url()))
            .header("x-request-id", "rid-canary-misplaced")
            .json(&chat_body("a")),
    )
    .await
    .assert_error(401, "invalid_api_key");

    // token.create, 2 × key.create, key.revoke, 8 requests, 1 admin refusal.
    let expected_records = 13;
    let stored = wait_for_records(&gateway, "", expected_records).await;
    assert_eq!(stored.len(), expected_records, "{stored:#?}");

    let export_jsonl = gateway.cli(&["audit", "export", "--format", "jsonl"]);
    assert!(export_jsonl.status.success(), "{}", describe(&export_jsonl));
    let export_csv = gateway.cli(&["audit", "export", "--format", "csv"]);
    assert!(export_csv.status.success(), "{}", describe(&export_csv));
    assert_eq!(stdout_of(&export_jsonl).lines().count(), expected_records);
    assert_eq!(stdout_of(&export_csv).lines().count(), expected_records + 1, "a header, then one row a record");

    // Stopped: the store and the sink hold everything that was written.
    let status = gateway.terminate(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|status| status.success()), "SIGTERM shutdown: {status:?}");
    let rows = dump_table(&open_db(&gateway), "audit_log");
    assert_eq!(rows.len(), expected_records, "{rows:#?}");
    let sink_text = std::fs::read_to_string(&sink).expect("the JSON Lines sink exists");

    let secrets = [
        ("the API key", key.as_str()),
        ("the API key's secret part", &key[8..]),
        ("the revoked key", revoked_key.as_str()),
        ("the created admin token", admin_token.as_str()),
        ("the created admin token's secret part", &admin_token[8..]),
        ("the bootstrap admin token", BOOTSTRAP),
        ("the upstream api_key", UPSTREAM_KEY),
        ("a guessed API key", BAD_KEY),
        ("a guessed admin token", BAD_TOKEN),
    ];
    let places = [
        ("the audit_log table", rows.join("\n")),
        ("the JSON Lines sink", sink_text.clone()),
        ("audit export --format jsonl", stdout_of(&export_jsonl)),
        ("audit export --format csv", stdout_of(&export_csv)),
        ("the gateway log", gateway.log_text()),
    ];
    let mut leaks = Vec::new();
    for (place, content) in &places {
        for (what, secret) in &secrets {
            if content.contains(secret) {
                leaks.push(format!("{what} ({secret}) is in {place}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));

    // The sink holds the same records as the store.
    let sink_records: Vec<Value> = sink_text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("bad sink line ({error}): {line}")))
        .collect();
    assert_eq!(sink_records.len(), expected_records, "{sink_text}");
    let seqs_and_ids = |records: &[Value]| -> BTreeSet<(u64, Option<String>)> {
        records
            .iter()
            .map(|record| (record["seq"].as_u64().unwrap_or(0), text(record, "request_id").map(str::to_string)))
            .collect()
    };
    assert_eq!(seqs_and_ids(&sink_records), seqs_and_ids(&stored), "the sink and the store differ");
    let hashes = |records: &[Value]| -> BTreeSet<String> {
        records.iter().filter_map(|record| text(record, "hash").map(str::to_string)).collect()
    };
    assert_eq!(hashes(&sink_records), hashes(&stored), "the sink's hashes differ from the store's");
}

// ------------------------------------------------------------------------------------------------
// Query, export, paging
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_query_filter_and_paginate() {
    let stub = StubUpstream::start().await;
    let config = format!("[security]\nauth_failure_limit = 0\n\n{}", model_table("a", &stub.url(), PRICED));
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (one_id, one) = gateway.create_key(&["--name", "one"]);
    let (two_id, two) = gateway.create_key(&["--name", "two"]);
    for n in 0..3 {
        chat_with_id(&gateway, Some(&one), &format!("rid-one-ok-{n}"), "a").await.assert_ok();
    }
    for n in 0..2 {
        chat_with_id(&gateway, Some(&two), &format!("rid-two-ok-{n}"), "a").await.assert_ok();
        chat_with_id(&gateway, Some(&one), &format!("rid-one-missing-{n}"), "missing").await;
        chat_with_id(&gateway, Some("pcl_nobody_00000000000000000"), &format!("rid-bad-{n}"), "a").await;
    }
    let all = wait_for_records(&gateway, "", 11).await;
    assert_eq!(all.len(), 11, "2 key.create + 9 requests: {all:#?}");

    // By key: that key's requests only, allowed and refused.
    let by_key = audit_records(&gateway, &format!("key={one_id}")).await;
    let ids: BTreeSet<&str> = by_key.iter().filter_map(|record| text(record, "request_id")).collect();
    let expected: BTreeSet<&str> =
        ["rid-one-ok-0", "rid-one-ok-1", "rid-one-ok-2", "rid-one-missing-0", "rid-one-missing-1"].into();
    assert_eq!(ids, expected, "{by_key:#?}");
    let cli = gateway.cli_json(&["audit", "query", "--key", &two_id]);
    let cli_ids: BTreeSet<&str> = cli["data"]
        .as_array()
        .expect("a page has data")
        .iter()
        .filter_map(|record| text(record, "request_id"))
        .collect();
    assert_eq!(cli_ids, ["rid-two-ok-0", "rid-two-ok-1"].into(), "{cli:#}");

    // By decision.
    let denied = audit_records(&gateway, "decision=deny").await;
    let ids: BTreeSet<&str> = denied.iter().filter_map(|record| text(record, "request_id")).collect();
    assert_eq!(ids, ["rid-one-missing-0", "rid-one-missing-1", "rid-bad-0", "rid-bad-1"].into(), "{denied:#?}");
    let cli = gateway.cli_json(&["audit", "query", "--decision", "deny"]);
    assert_eq!(cli["data"].as_array().map(Vec::len), Some(4), "{cli:#}");
    let cli = gateway.cli_json(&["audit", "query", "--kind", "admin"]);
    let reasons: Vec<&str> =
        cli["data"].as_array().expect("data").iter().filter_map(|record| text(record, "reason")).collect();
    assert_eq!(reasons, ["key.create", "key.create"], "{cli:#}");

    // By request id.
    let one_record = the_record(&gateway, "rid-two-ok-1").await;
    assert_eq!(text(&one_record, "key_id"), Some(two_id.as_str()));
    let cli = gateway.cli_json(&["audit", "query", "--request-id", "rid-bad-0"]);
    let data = cli["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "{cli:#}");
    assert_outcome(&data[0], 401, "deny", Some("invalid_api_key"));

    // Pages of 5 through the API follow the cursor to every record, each once, in order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(cursor) => format!("/admin/v1/audit?limit=5&cursor={cursor}"),
            None => "/admin/v1/audit?limit=5".to_string(),
        };
        let page = admin_json(&gateway, &url).await;
        let data = page["data"].as_array().expect("data").clone();
        assert!(data.len() <= 5, "a page of limit 5 has {}: {page:#}", data.len());
        pages += 1;
        assert!(pages < 10, "paging does not end");
        let done = data.len() < 5;
        paged.extend(data);
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if done || cursor.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3, "11 records in pages of 5");
    let seqs = |records: &[Value]| -> Vec<u64> { records.iter().filter_map(|record| record["seq"].as_u64()).collect() };
    assert_eq!(seqs(&paged), seqs(&all), "paging lost, repeated or reordered records");
    let cli = gateway.cli_json(&["audit", "query", "--limit", "5"]);
    assert_eq!(cli["data"].as_array().map(Vec::len), Some(5), "{cli:#}");
    assert!(cli["next_cursor"].is_string(), "a full page has a next cursor: {cli:#}");

    // More records than the CLI's largest page (1000): `--all` follows the cursor across pages.
    let client = http();
    let url = format!("{}/v1/no-such-route", gateway.proxy_url());
    let statuses: Vec<u16> = futures_util::stream::iter(0..1000)
        .map(|n| {
            let request = client.get(&url).header("x-request-id", format!("rid-bulk-{n}"));
            async move { request.send().await.map(|response| response.status().as_u16()).unwrap_or(0) }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|status| *status == 404), "{statuses:?}");
    let total = 1011;
    assert_eq!(wait_for_records(&gateway, "", total).await.len(), total);
    let everything = gateway.cli_json(&["audit", "query", "--all"]);
    let everything = everything.as_array().unwrap_or_else(|| panic!("--all --json prints one array"));
    assert_eq!(everything.len(), total, "audit query --all read {} of {total} records", everything.len());
    let distinct: BTreeSet<u64> = everything.iter().filter_map(|record| record["seq"].as_u64()).collect();
    assert_eq!(distinct.len(), total, "--all repeated records");

    // Exports hold the same records: one JSON line each, or a header and one CSV row each.
    let jsonl = gateway.cli(&["audit", "export", "--format", "jsonl"]);
    assert!(jsonl.status.success(), "{}", describe(&jsonl));
    let lines: Vec<Value> = stdout_of(&jsonl)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("bad JSON line ({error}): {line}")))
        .collect();
    assert_eq!(lines.len(), total);
    assert_eq!(seqs(&lines), seqs(everything), "the export and the query differ");
    let csv = gateway.cli(&["audit", "export", "--format", "csv"]);
    assert!(csv.status.success(), "{}", describe(&csv));
    let csv = stdout_of(&csv);
    assert_eq!(csv.lines().count(), total + 1, "a header and one row a record");
    assert!(csv.lines().next().is_some_and(|header| header.starts_with("seq,ts,node,kind")), "{}", &csv[..200]);
    let output = dir_file(&gateway, "deny.csv");
    let filtered = gateway.cli(&["audit", "export", "--format", "csv", "--decision", "deny", "--output", &output]);
    assert!(filtered.status.success(), "{}", describe(&filtered));
    let filtered = std::fs::read_to_string(&output).expect("the export file");
    assert_eq!(filtered.lines().count(), 1 + 4 + 1000, "a header, 4 refusals and 1000 unknown routes");
}

fn dir_file(gateway: &Gateway, name: &str) -> String {
    gateway.dir().join(name).display().to_string()
}

// ------------------------------------------------------------------------------------------------
// The authorizer's decisions
// ------------------------------------------------------------------------------------------------

/// A forward-auth check, as a gateway naming itself `name` sends it about a client's
/// `GET /v1/models` (with Caddy's and Traefik's forwarded headers, which `/authz` reads).
fn forward_auth(gateway: &Gateway, name: &str, key: &str, id: &str) -> reqwest::RequestBuilder {
    http()
        .get(format!("http://{}/authz", gateway.authz_addr()))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/v1/models")
        .header("x-portcullis-gateway", name)
        .header("x-request-id", id)
        .bearer_auth(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizer_decisions_are_recorded_by_gateway_and_found_by_it() {
    let stub = StubUpstream::start().await;
    let config = format!(
        "[authz]\nlisten = \"127.0.0.1:0\"\n\n[security]\nauth_failure_limit = 0\n\n{}",
        model_table("a", &stub.url(), PRICED)
    );
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (key_id, key) = gateway.create_key(&["--name", "behind-gateways"]);
    assert_eq!(send(forward_auth(&gateway, "caddy", &key, "rid-caddy")).await.status, 200);
    assert_eq!(send(forward_auth(&gateway, "nginx", "pcl_nobody_00000000000000000", "rid-nginx")).await.status, 401);
    chat_with_id(&gateway, Some(&key), "rid-direct", "a").await.assert_ok();
    let all = wait_for_records(&gateway, "", 4).await;
    assert_eq!(all.len(), 4, "key.create, two decisions (not the checks themselves), one request: {all:#?}");

    // Marked as the authorizer's, with the gateway that asked; a proxied request names none.
    let decisions = gateway.cli_json(&["audit", "query", "--kind", "authz"]);
    let decisions = decisions["data"].as_array().expect("data");
    let marks: Vec<(Option<&str>, Option<&str>)> =
        decisions.iter().map(|record| (text(record, "kind"), text(record, "gateway"))).collect();
    assert_eq!(marks, [(Some("authz"), Some("caddy")), (Some("authz"), Some("nginx"))], "{decisions:#?}");
    let direct = the_record(&gateway, "rid-direct").await;
    assert_eq!((text(&direct, "kind"), direct["gateway"].clone()), (Some("request"), Value::Null), "{direct:#}");

    // Found by gateway, through the CLI and the API; recorded like a proxied request.
    let caddy = gateway.cli_json(&["audit", "query", "--gateway", "caddy"]);
    let caddy = caddy["data"].as_array().expect("data");
    assert_eq!(caddy.len(), 1, "{caddy:#?}");
    assert_outcome(&caddy[0], 200, "allow", None);
    assert_eq!(text(&caddy[0], "key_id"), Some(key_id.as_str()));
    assert_eq!((text(&caddy[0], "method"), text(&caddy[0], "path")), (Some("GET"), Some("/v1/models")));
    let nginx = audit_records(&gateway, "gateway=nginx").await;
    assert_eq!(nginx.len(), 1, "{nginx:#?}");
    assert_outcome(&nginx[0], 401, "deny", Some("invalid_api_key"));
    assert_eq!(audit_records(&gateway, "gateway=NGINX").await.len(), 0, "an exact match");

    // The gateway is hashed, and the chain with records of every kind verifies.
    let verified = verify(&gateway, false);
    assert!(verified.status.success(), "{}", describe(&verified));
    let csv = gateway.cli(&["audit", "export", "--format", "csv", "--gateway", "caddy"]);
    assert!(csv.status.success(), "{}", describe(&csv));
    let csv = stdout_of(&csv);
    let header: Vec<&str> = csv.lines().next().unwrap_or_default().split(',').collect();
    let column = header.iter().position(|name| *name == "gateway").expect("a gateway column");
    let row: Vec<&str> = csv.lines().nth(1).unwrap_or_default().split(',').collect();
    assert_eq!((row.get(3).copied(), row.get(column).copied()), (Some("authz"), Some("caddy")), "{csv}");
}

// ------------------------------------------------------------------------------------------------
// Retention
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_what_remains_verifiable() {
    // Retention runs every 30 s and once more at shutdown: a short retention and a SIGTERM
    // make it run when the test wants.
    let stub = StubUpstream::start().await;
    let config = format!("[audit]\nnode = \"{NODE}\"\nretention = \"2s\"\n\n{}", model_table("a", &stub.url(), ""));
    let mut gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&[]);
    for n in 0..4 {
        chat_with_id(&gateway, Some(&key), &format!("rid-old-{n}"), "a").await.assert_ok();
    }
    wait_for_records(&gateway, "", 5).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for n in 0..3 {
        chat_with_id(&gateway, Some(&key), &format!("rid-new-{n}"), "a").await.assert_ok();
    }
    assert_eq!(wait_for_records(&gateway, "", 8).await.len(), 8);
    gateway.restart().await;

    // The five old records are gone; the three new ones verify from the checkpoint.
    let kept = audit_records(&gateway, "").await;
    let seqs: Vec<u64> = kept.iter().filter_map(|record| record["seq"].as_u64()).collect();
    assert_eq!(seqs, [6, 7, 8], "{kept:#?}");
    let output = verify(&gateway, false);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(stdout_of(&output).contains(&format!("OK {NODE}: 3 records (from checkpoint 5)")), "{}", describe(&output));
    let report = gateway.cli_json(&["audit", "verify"]);
    assert_eq!(report["nodes"][0]["from_checkpoint"], 5, "{report:#}");
    assert_eq!(report["nodes"][0]["last_seq"], 8, "{report:#}");

    // Everything past retention: the chain goes on from the checkpoint and still verifies.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gateway.restart().await;
    assert!(audit_records(&gateway, "").await.is_empty(), "every record is past retention");
    chat_with_id(&gateway, Some(&key), "rid-after-all", "a").await.assert_ok();
    let after = the_record(&gateway, "rid-after-all").await;
    assert_eq!(after["seq"], 9, "{after:#}");
    let output = verify(&gateway, false);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(stdout_of(&output).contains(&format!("OK {NODE}: 1 records (from checkpoint 8)")), "{}", describe(&output));
}

/// Record times carry exactly three fractional digits in every form — JSON, JSON Lines, CSV and
/// the CLI's table — so that they line up and sort as text (`.120Z`, never `.12Z` or no fraction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_times_always_have_three_fractional_digits() {
    let (_stub, gateway) = common::start(&["m"]).await;
    let (_, key) = gateway.create_key(&[]);
    for _ in 0..5 {
        common::chat(&gateway, Some(&key), "m").await.assert_ok();
    }
    let is_millis = |ts: &str| {
        let bytes = ts.as_bytes();
        ts.len() == 24 && bytes[19] == b'.' && bytes[20..23].iter().all(u8::is_ascii_digit) && ts.ends_with('Z')
    };
    let records = common::wait_for_records(&gateway, "kind=request", 5).await;
    for record in &records {
        let ts = record["ts"].as_str().expect("ts");
        assert!(is_millis(ts), "JSON: {ts}");
    }
    let csv = send(
        http()
            .get(format!("{}/admin/v1/audit/export?format=csv", gateway.admin_url()))
            .bearer_auth(gateway.admin_token()),
    )
    .await;
    let rows: Vec<&str> = csv.text.lines().skip(1).collect();
    assert!(rows.len() >= 5, "{}", csv.text);
    for row in rows {
        let ts = row.split(',').nth(1).expect("a ts cell");
        assert!(is_millis(ts), "CSV: {ts} in {row}");
    }
    let table = gateway.cli(&["audit", "query", "--limit", "5"]);
    let text = String::from_utf8_lossy(&table.stdout);
    let times: Vec<&str> =
        text.split_whitespace().filter(|word| word.starts_with("20") && word.ends_with('Z')).collect();
    assert!(!times.is_empty(), "{text}");
    assert!(times.iter().all(|ts| is_millis(ts)), "CLI: {times:?}");
}
