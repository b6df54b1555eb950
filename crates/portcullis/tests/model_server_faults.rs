//! Model servers that misbehave, through the real binary: what the client sees, what is billed,
//! what is audited, and that the gateway still starts afterwards.

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use common::{BINARY, chat_body, http, send, the_record};
use portcullis_testkit::{Fault, Gateway, GatewayBuilder, LEAKED_SECRETS, StubUpstream};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_usage_figure_is_billed_within_its_bounds_and_the_gateway_still_starts() {
    let stub = StubUpstream::start().await;
    let config = format!(
        "[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\nprice = {{ input_per_million = 1.0, output_per_million = 2.0 }}\n",
        stub.url()
    );
    let mut gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (key_id, key) = gateway.create_key(&[]);
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());
    for (reported, stream) in [(u64::MAX, false), (9_200_000_000_000_000_000, false), (u64::MAX, true)] {
        stub.set_reported_usage(Some((reported, reported)));
        let mut body = chat_body("m");
        body["stream"] = json!(stream);
        body["stream_options"] = json!({"include_usage": true});
        let reply = send(http().post(&url).bearer_auth(&key).json(&body)).await;
        reply.assert_ok();
        let record = the_record(&gateway, reply.header("x-request-id").expect("id")).await;
        let billed = record["prompt_tokens"]
            .as_u64()
            .unwrap_or(u64::MAX)
            .saturating_add(record["completion_tokens"].as_u64().unwrap_or(u64::MAX));
        assert!(billed < 10_000, "billed {billed} tokens for a reported {reported}: {record}");
        assert_eq!(record["usage_estimated"], true, "{record}");
        let reason = record["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("usage_bounded") && reason.contains(&reported.to_string()),
            "the evidence is kept: {record}"
        );
    }
    let spend = common::get(&gateway, &key, "/v1/usage").await;
    let tokens = spend.body["spend"]["today"]["tokens"].as_u64().expect("spend today");
    assert!(tokens < 30_000, "{}", spend.text);

    gateway.restart().await;
    common::chat(&gateway, Some(&key), "m").await.assert_ok();
    let report = send(
        http()
            .get(format!("{}/admin/v1/usage?group_by=key&since=1d", gateway.admin_url()))
            .bearer_auth(gateway.admin_token()),
    )
    .await;
    assert_eq!(report.status, 200, "{}", report.text);
    assert!(report.text.contains(&key_id), "{}", report.text);
}

/// What a client sees of a model server's errors: the truth about whose fault it is, in the
/// API's shape, and nothing of the server's secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_server_errors_reach_the_client_as_openai_errors_without_its_secrets() {
    let (stub, mut gateway) = common::start(&["m"]).await;
    let (_, key) = gateway.create_key(&[]);
    // Its own credential refused: the client's key is fine, so no authentication error.
    for status in [401, 403] {
        stub.fail_leaking(status);
        let reply = common::chat(&gateway, Some(&key), "m").await;
        reply.assert_error(502, "upstream_error");
        assert_eq!(reply.body["error"]["type"], "upstream_error");
        let record = the_record(&gateway, reply.header("x-request-id").expect("id")).await;
        assert_eq!(record["reason"], format!("upstream_status_{status}"), "{record}");
        assert_eq!(record["decision"], "error", "{record}");
    }
    // A failure: its status class stays, its body and headers do not.
    for status in [500, 503, 418] {
        stub.fail_leaking(status);
        let reply = common::chat(&gateway, Some(&key), "m").await;
        reply.assert_error(status, "upstream_error");
        for secret in LEAKED_SECRETS {
            assert!(!reply.text.contains(secret), "{secret} reached the client: {}", reply.text);
            for (name, value) in &reply.headers {
                assert!(!value.to_str().unwrap_or_default().contains(secret), "{secret} in {name}");
            }
        }
        for name in ["set-cookie", "www-authenticate", "x-upstream-host"] {
            assert!(reply.header(name).is_none(), "{name} reached the client");
        }
    }
    // A 4xx in the API's own shape is the model server's word on the request: it passes.
    stub.reset();
    stub.fail_with(400);
    let reply = common::chat(&gateway, Some(&key), "m").await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.body["error"]["code"], "stub_failure", "{}", reply.text);
    healthy_and_restarts(&mut gateway, &stub, &key).await;
}

/// A server that sends `[DONE]` and keeps its connection open: the client's stream ends at once,
/// recorded as complete, and nothing stays held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_at_done_however_long_the_server_holds_on() {
    let stub = StubUpstream::start().await;
    let mut gateway = GatewayBuilder::new(BINARY)
        .config(&common::models_config(&stub, &["m"]))
        .config("[tiers.free]\nmax_concurrent = 1\n")
        .start()
        .await;
    let (_, key) = gateway.create_key(&[]);
    stub.set_hold_after_done(true);
    for _ in 0..2 {
        let mut body = chat_body("m");
        body["stream"] = json!(true);
        let started = std::time::Instant::now();
        let request = http().post(format!("{}/v1/chat/completions", gateway.proxy_url())).bearer_auth(&key).json(&body);
        let reply = tokio::time::timeout(std::time::Duration::from_secs(5), send(request))
            .await
            .expect("the stream ends at [DONE], not at the idle timeout");
        reply.assert_ok();
        assert!(reply.text.trim_end().ends_with("data: [DONE]"), "{}", reply.text);
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        let record = the_record(&gateway, reply.header("x-request-id").expect("id")).await;
        assert_eq!((record["decision"].as_str(), record["reason"].as_str()), (Some("allow"), None), "{record}");
    }
    healthy_and_restarts(&mut gateway, &stub, &key).await;
}

/// An event that never ends: the stream is ended with an error event the client can read, not
/// buffered without bound; the record says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_without_end_ends_the_stream_with_an_error_event() {
    let stub = StubUpstream::start().await;
    let config = format!("[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\nmax_event_bytes = 65536\n", stub.url());
    let mut gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&[]);
    stub.set_unterminated_event(Some(8 * 1024 * 1024));
    let mut body = chat_body("m");
    body["stream"] = json!(true);
    let request = http().post(format!("{}/v1/chat/completions", gateway.proxy_url())).bearer_auth(&key).json(&body);
    let reply = tokio::time::timeout(std::time::Duration::from_secs(10), send(request)).await.expect("the stream ends");
    assert_eq!(reply.status, 200);
    assert!(reply.text.contains("upstream_event_too_large"), "{}", reply.text);
    assert!(!reply.text.contains("[DONE]"), "a failed stream never says it is done");
    assert!(reply.text.len() < 64 * 1024, "the partial event was not relayed: {} bytes", reply.text.len());
    let record = the_record(&gateway, reply.header("x-request-id").expect("id")).await;
    assert_eq!(
        (record["decision"].as_str(), record["reason"].as_str()),
        (Some("error"), Some("upstream_event_too_large"))
    );
    let rss = std::fs::read_to_string(format!("/proc/{}/status", gateway.pid())).unwrap_or_default();
    let kib: u64 = rss
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    assert!(kib < 200 * 1024, "RSS {kib} KiB after an 8 MiB event was refused at 64 KiB");
    healthy_and_restarts(&mut gateway, &stub, &key).await;
}

/// A stream whose model server stops in the middle: the client reads an error event and a clean
/// end — never `[DONE]`, never a `finish_reason` — so that its SDK raises instead of retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_mid_way_ends_with_an_error_event() {
    let stub = StubUpstream::start().await;
    let config =
        format!("[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\ntimeouts = {{ idle = \"300ms\" }}\n", stub.url());
    let mut gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&[]);
    stub.set_stream_chunks(5);
    stub.set_chunk_gap(std::time::Duration::from_secs(2));
    let mut body = chat_body("m");
    body["stream"] = json!(true);
    let response = http()
        .post(format!("{}/v1/chat/completions", gateway.proxy_url()))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"].to_str().expect("id").to_string();
    let text = String::from_utf8(response.bytes().await.expect("the stream ends cleanly").to_vec()).expect("text");
    assert!(text.contains("upstream_failed_mid_stream"), "{text}");
    assert!(!text.contains("[DONE]") && !text.contains("\"finish_reason\":\"stop\""), "{text}");
    let record = the_record(&gateway, &id).await;
    assert_eq!(
        (record["decision"].as_str(), record["reason"].as_str()),
        (Some("error"), Some("upstream_failed_mid_body"))
    );
    healthy_and_restarts(&mut gateway, &stub, &key).await;
}

/// Once every endpoint of a model is ejected, clients hear 503 with the time the first comes back,
/// not a bare 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_endpoints_are_all_ejected_answers_503_with_retry_after() {
    let stub = StubUpstream::start().await;
    let config = format!(
        "[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\nhealth_check = {{ enabled = false }}\nretries = 0\n\
         ejection = {{ consecutive_failures = 3, duration = \"20s\" }}\n",
        stub.url()
    );
    let mut gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&[]);
    stub.fail_with(503);
    for _ in 0..3 {
        let reply = common::chat(&gateway, Some(&key), "m").await;
        reply.assert_error(503, "upstream_error");
        assert_eq!(reply.header("retry-after"), Some("1"), "the model server's own Retry-After");
    }
    let requests_so_far = stub.requests_to("/v1/chat/completions").len();
    let resting = common::chat(&gateway, Some(&key), "m").await;
    resting.assert_error(503, "upstream_unavailable");
    let retry_after: u64 = resting.header("retry-after").and_then(|value| value.parse().ok()).expect("Retry-After");
    assert!((15..=20).contains(&retry_after), "the ejection's remaining time, not {retry_after}");
    assert_eq!(stub.requests_to("/v1/chat/completions").len(), requests_so_far, "an ejected endpoint gets nothing");
    healthy_and_restarts(&mut gateway, &stub, &key).await;
}

/// A chat request whose text asks the stub for `fault` (none: a normal request).
fn faulty_body(fault: Option<Fault>, stream: bool) -> serde_json::Value {
    let text = fault.map_or_else(|| "hello there".to_string(), |fault| format!("hello {}", fault.marker()));
    json!({"model": "m", "messages": [{"role": "user", "content": text}], "stream": stream})
}

/// A 200 that is not an answer — an HTML page, a JSON object of another shape, an event that is
/// no event — is not relayed as one: the client gets a 502 (or, once a stream has begun, an
/// error event), nothing is billed for what never reached it, the record says why, and the
/// faults of some requests leave the others, mixed in among them, untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_that_is_not_is_refused_billed_nothing_and_audited() {
    let stub = StubUpstream::start().await;
    let config = format!(
        "[[models]]\nname = \"m\"\nendpoints = [\"{}\"]\nprice = {{ input_per_million = 1.0, output_per_million = 2.0 }}\n",
        stub.url()
    );
    let mut gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    let (_, key) = gateway.create_key(&[]);
    let url = format!("{}/v1/chat/completions", gateway.proxy_url());
    let cases = [
        (Some(Fault::Html), false, "upstream_not_json"),
        (Some(Fault::WrongShape), false, "upstream_wrong_shape"),
        (Some(Fault::Html), true, "upstream_not_json"),
        (None, false, ""),
        (None, true, ""),
    ];
    let replies = futures_util::future::join_all(
        cases
            .iter()
            .map(|(fault, stream, _)| send(http().post(&url).bearer_auth(&key).json(&faulty_body(*fault, *stream)))),
    )
    .await;
    for ((fault, stream, reason), reply) in cases.iter().zip(&replies) {
        if fault.is_none() {
            reply.assert_ok();
            assert!(reply.text.contains("echo:m"), "a normal request is answered: {}", reply.text);
            continue;
        }
        reply.assert_error(502, "upstream_invalid_response");
        assert_eq!(reply.body["error"]["type"], "upstream_error", "{fault:?} stream={stream}");
        assert!(!reply.text.contains("<html") && !reply.text.contains("\"result\""), "{}", reply.text);
        let record = the_record(&gateway, reply.header("x-request-id").expect("id")).await;
        assert_eq!((record["status"].as_u64(), record["decision"].as_str()), (Some(502), Some("error")), "{record}");
        assert_eq!(record["reason"], *reason, "{record}");
        assert_eq!(record["completion_tokens"].as_u64().unwrap_or(0), 0, "{record}");
    }
    // A stream whose second event is an HTML page: the first was relayed (and is billed), the
    // page is not, and the stream ends with an error event the SDK raises.
    let reply = send(http().post(&url).bearer_auth(&key).json(&faulty_body(Some(Fault::InvalidEvent), true))).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.text.contains("echo:m"), "the first event was relayed: {}", reply.text);
    assert!(reply.text.contains("upstream_invalid_event") && !reply.text.contains("<html"), "{}", reply.text);
    assert!(!reply.text.contains("[DONE]"), "{}", reply.text);
    let record = the_record(&gateway, reply.header("x-request-id").expect("id")).await;
    assert_eq!(
        (record["decision"].as_str(), record["reason"].as_str()),
        (Some("error"), Some("upstream_invalid_event")),
        "{record}"
    );
    assert_eq!(record["completion_tokens"], 1, "one content event reached the client: {record}");

    // Billed: the two normal requests and the stream that relayed one event; nothing for the
    // refused answers, which reached no client. (A restart writes the usage rows out.)
    gateway.restart().await;
    let usage = common::get(&gateway, &key, "/v1/usage").await;
    assert_eq!(usage.body["spend"]["today"]["requests"], 3, "{}", usage.text);
    common::chat(&gateway, Some(&key), "m").await.assert_ok();
}

/// After a fault the gateway still serves, and starts again on what it stored.
async fn healthy_and_restarts(gateway: &mut Gateway, stub: &StubUpstream, key: &str) {
    stub.reset();
    gateway.restart().await;
    common::chat(gateway, Some(key), "m").await.assert_ok();
}
