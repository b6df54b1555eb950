//! The authorizer's forward-auth endpoint through the real binary, asked the way a gateway asks
//! (`X-Original-URI`, `X-Original-Method`, the client's credential): decisions with the proxy's
//! rules and answers, only for configured gateways, every decision audited with its gateway, and
//! leases settled by a usage report or charged in full when nothing reports.
//! (The real nginx and Caddy in front: `authz_gateways.rs`; Envoy's gRPC: `authz_envoy.rs`.)

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::time::{Duration, Instant};

use common::{AUDIT_WAIT, BINARY, Reply, audit_records, http, models_config, send, wait_for_records};
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::{Value, json};

/// Tokens a chat template may add beyond the request's own bytes, as the gateway reserves them.
const TEMPLATE_SLACK: u64 = 16;
/// `limits.default_max_tokens` in these tests.
const DEFAULT_MAX_TOKENS: u64 = 50;

async fn start(authz: &str, extra: &str) -> (StubUpstream, Gateway) {
    let stub = StubUpstream::start().await;
    let config = format!(
        "[authz]\nlisten = \"127.0.0.1:0\"\n{authz}\n\n[limits]\ndefault_max_tokens = {DEFAULT_MAX_TOKENS}\n\n{extra}\n{}",
        models_config(&stub, &["small", "other"])
    );
    let gateway = GatewayBuilder::new(BINARY).config(&config).start().await;
    (stub, gateway)
}

/// What a gateway sends the authorizer about a client's `POST /v1/chat/completions`.
struct Ask<'a> {
    path: &'a str,
    key: Option<&'a str>,
    model: Option<&'a str>,
    body: Option<Value>,
    content_length: u64,
}

impl<'a> Ask<'a> {
    fn chat(key: &'a str) -> Self {
        Ask { path: "/v1/chat/completions", key: Some(key), model: Some("small"), body: None, content_length: 84 }
    }

    async fn to(self, gateway: &Gateway, endpoint: &str) -> Reply {
        let mut request = http()
            .get(format!("http://{}{endpoint}", gateway.authz_addr()))
            // Each endpoint reads its gateway's pair: nginx's for /authz/nginx, Caddy's and
            // Traefik's for /authz.
            .header("x-original-uri", self.path)
            .header("x-original-method", "POST")
            .header("x-forwarded-uri", self.path)
            .header("x-forwarded-method", "POST")
            .header("x-original-content-length", self.content_length.to_string())
            .header("x-forwarded-for", "192.0.2.7")
            .header("x-portcullis-gateway", "edge-1");
        if let Some(key) = self.key {
            request = request.bearer_auth(key);
        }
        if let Some(model) = self.model {
            request = request.header("x-portcullis-model", model);
        }
        if let Some(body) = self.body {
            request = request.body(serde_json::to_vec(&body).expect("a JSON body"));
        }
        send(request).await
    }
}

/// The audit records of the model calls the gateway asked about, oldest first, once there are
/// at least `count` (records are written a moment after the answer).
async fn decisions(gateway: &Gateway, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + AUDIT_WAIT;
    loop {
        let mut records: Vec<Value> = audit_records(gateway, "")
            .await
            .into_iter()
            .filter(|record| record["path"] == "/v1/chat/completions")
            .collect();
        if records.len() >= count || Instant::now() >= deadline {
            records.sort_by_key(|record| record["seq"].as_u64());
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn usage_report(gateway: &Gateway, request_id: &str, prompt: u64, completion: u64) -> Reply {
    let report = json!({"request_id": request_id, "usage": {"prompt_tokens": prompt, "completion_tokens": completion}});
    send(http().post(format!("http://{}/authz/v1/usage", gateway.authz_addr())).json(&report)).await
}

/// The key's recorded usage today, once it has `requests` requests (usage is written within a
/// second of settling).
async fn tokens_today(gateway: &Gateway, key: &str, requests: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = send(http().get(format!("{}/v1/usage", gateway.proxy_url())).bearer_auth(key)).await;
        reply.assert_ok();
        let today = &reply.body["spend"]["today"];
        if today["requests"].as_u64() == Some(requests) {
            return today["tokens"].as_u64().expect("tokens");
        }
        assert!(Instant::now() < deadline, "usage never showed {requests} requests: {}", reply.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_allowed_request_gets_identity_and_rate_headers_and_an_audit_record() {
    let (_stub, gateway) = start("", "[tiers.free]\nrequests_per_minute = 5\n").await;
    let (key_id, key) = gateway.create_key(&["--tier", "free", "--team", "research"]);

    let reply = Ask::chat(&key).to(&gateway, "/authz").await;
    reply.assert_ok();
    assert_eq!(reply.header("x-portcullis-principal"), Some(key_id.as_str()));
    assert_eq!(reply.header("x-portcullis-key-id"), Some(key_id.as_str()));
    assert_eq!(reply.header("x-portcullis-principal-kind"), Some("key"));
    assert_eq!(reply.header("x-portcullis-team"), Some("research"));
    assert_eq!(reply.header("x-portcullis-tier"), Some("free"));
    assert_eq!(reply.header("x-portcullis-model"), Some("small"));
    assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("5"));
    assert_eq!(reply.header("x-ratelimit-remaining-requests"), Some("4"));
    let request_id = reply.header("x-portcullis-request-id").expect("the lease id");

    let records = decisions(&gateway, 1).await;
    let record = records.iter().find(|record| record["request_id"] == request_id).expect("the decision's record");
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["status"], 200);
    assert_eq!(record["key_id"], key_id.as_str());
    assert_eq!(record["model"], "small");
    assert_eq!(record["method"], "POST");
    assert_eq!(record["client_ip"], "192.0.2.7", "the client behind the gateway, not the gateway");
    assert_eq!((record["kind"].as_str(), record["gateway"].as_str()), (Some("authz"), Some("edge-1")));
}

#[tokio::test]
async fn refusals_are_the_proxys_with_status_and_body_also_in_headers_for_nginx() {
    let (_stub, gateway) = start("", "[tiers.free]\nrequests_per_minute = 1\n").await;
    let (_, key) = gateway.create_key(&["--tier", "free"]);
    let (_, other_only) = gateway.create_key(&["--models", "other"]);

    Ask { key: None, ..Ask::chat("") }.to(&gateway, "/authz").await.assert_error(401, "invalid_api_key");
    Ask::chat("pcl_not-a-key").to(&gateway, "/authz").await.assert_error(401, "invalid_api_key");
    Ask::chat(&other_only).to(&gateway, "/authz").await.assert_error(403, "model_not_allowed");
    Ask { model: Some("missing"), ..Ask::chat(&key) }.to(&gateway, "/authz").await.assert_error(404, "model_not_found");
    Ask { path: "/v1/files", ..Ask::chat(&key) }.to(&gateway, "/authz").await.assert_error(404, "not_found");

    Ask::chat(&key).to(&gateway, "/authz").await.assert_ok();
    let limited = Ask::chat(&key).to(&gateway, "/authz").await;
    limited.assert_error(429, "rate_limit_exceeded");
    assert!(limited.header("retry-after").is_some_and(|seconds| seconds.parse::<u64>().is_ok_and(|s| s > 0)));

    // nginx passes on only 401 and 403: the real answer rides in headers.
    let squeezed = Ask::chat(&key).to(&gateway, "/authz/nginx").await;
    assert_eq!(squeezed.status, 403, "{}", squeezed.text);
    assert_eq!(squeezed.header("x-portcullis-status"), Some("429"));
    let body: Value = serde_json::from_str(squeezed.header("x-portcullis-error").expect("the error body")).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(squeezed.header("retry-after").is_some());
    let unauthenticated = Ask { key: None, ..Ask::chat("") }.to(&gateway, "/authz/nginx").await;
    assert_eq!(unauthenticated.status, 401);

    let records = decisions(&gateway, 8).await;
    let denied: Vec<&str> = records
        .iter()
        .filter(|record| record["decision"] == "deny")
        .filter_map(|record| record["reason"].as_str())
        .collect();
    assert_eq!(
        denied,
        [
            "invalid_api_key",
            "invalid_api_key",
            "model_not_allowed",
            "model_not_found",
            "rate_limit_exceeded",
            "rate_limit_exceeded",
            "invalid_api_key"
        ],
        "every refusal is audited (the unknown path's record has its own path)"
    );
}

#[tokio::test]
async fn each_endpoint_believes_only_its_own_gateways_headers() {
    let (_stub, gateway) = start("", "").await;
    let (_, key) = gateway.create_key(&["--scopes", "models"]);
    // Caddy passes the client's own headers on: an X-Original-URI a client wrote must not make
    // the authorizer judge a request other than the one Caddy forwards.
    let ask = |endpoint: &str, pairs: &[(&'static str, &'static str)]| {
        let mut request = http().get(format!("http://{}{endpoint}", gateway.authz_addr())).bearer_auth(&key);
        for (name, value) in pairs {
            request = request.header(*name, *value);
        }
        send(request)
    };
    const SPOOFED: [(&str, &str); 4] = [
        ("x-forwarded-uri", "/v1/chat/completions"),
        ("x-forwarded-method", "POST"),
        ("x-original-uri", "/v1/models"),
        ("x-original-method", "GET"),
    ];
    ask("/authz", &SPOOFED).await.assert_error(403, "scope_missing");
    ask("/authz/nginx", &SPOOFED).await.assert_ok();
    ask("/authz", &SPOOFED[2..]).await.assert_error(400, "malformed_request");
}

#[tokio::test]
async fn only_the_configured_gateways_may_ask_or_report() {
    let (_stub, gateway) = start("gateways = [\"10.9.9.9/32\"]", "").await;
    let (_, key) = gateway.create_key(&[]);
    let reply = Ask::chat(&key).to(&gateway, "/authz").await;
    reply.assert_error(403, "forbidden");
    usage_report(&gateway, "req_x", 1, 1).await.assert_error(403, "forbidden");
    // The forwarded headers of a stranger are not believed: the refusal is recorded as its own.
    let records = wait_for_records(&gateway, "decision=deny", 2).await;
    let paths: Vec<&str> = records.iter().filter_map(|record| record["path"].as_str()).collect();
    assert!(paths.contains(&"/authz") && !paths.contains(&"/v1/chat/completions"), "{paths:?}");
}

#[tokio::test]
async fn a_forwarded_body_names_the_model_and_bounds_the_reservation() {
    let (_stub, gateway) = start("", "[tiers.free]\ntokens_per_minute = 1000\n").await;
    let (_, key) = gateway.create_key(&["--tier", "free", "--models", "small"]);
    let body = |model: &str, max_tokens: u64| json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]});
    // The body wins over the header: a client cannot pass with another model's name.
    let reply =
        Ask { model: Some("small"), body: Some(body("other", 10)), ..Ask::chat(&key) }.to(&gateway, "/authz").await;
    reply.assert_error(403, "model_not_allowed");
    // A cap the quota could never hold is refused before anything is forwarded.
    let reply = Ask { body: Some(body("small", 5000)), ..Ask::chat(&key) }.to(&gateway, "/authz").await;
    reply.assert_error(400, "request_exceeds_limit");
    let reply = Ask { body: Some(body("small", 100)), ..Ask::chat(&key) }.to(&gateway, "/authz").await;
    reply.assert_ok();
    let remaining: u64 = reply.header("x-ratelimit-remaining-tokens").expect("token headers").parse().unwrap();
    let reserved = serde_json::to_vec(&body("small", 100)).unwrap().len() as u64 + TEMPLATE_SLACK + 100;
    assert_eq!(remaining, 1000 - reserved, "the body's own bound and cap are reserved");
}

#[tokio::test]
async fn a_forwarded_body_is_held_to_the_proxys_rules() {
    let (_stub, gateway) = start("", "").await;
    let (_, key) = gateway.create_key(&[]);
    let ask = |body: Vec<u8>| {
        http()
            .post(format!("http://{}/authz", gateway.authz_addr()))
            .header("x-forwarded-uri", "/v1/chat/completions")
            .header("x-forwarded-method", "POST")
            .bearer_auth(&key)
            .body(body)
    };
    // Over server.max_body_bytes (4 MiB), not JSON, a model named twice: refused, as on the proxy.
    send(ask(vec![b' '; 5 * 1024 * 1024])).await.assert_error(413, "request_too_large");
    send(ask(b"{not json".to_vec())).await.assert_error(400, "invalid_request");
    let twice = br#"{"model":"small","model":"other","messages":[]}"#.to_vec();
    let reply = send(ask(twice)).await;
    assert_eq!(reply.status, 400, "a duplicated member never picks a model: {}", reply.text);
}

#[tokio::test]
async fn a_usage_report_settles_the_lease_once_and_lands_in_usage() {
    let (_stub, gateway) = start("", "").await;
    let (_, key) = gateway.create_key(&[]);
    let reply = Ask::chat(&key).to(&gateway, "/authz").await;
    reply.assert_ok();
    let request_id = reply.header("x-portcullis-request-id").expect("the lease id").to_string();

    let settled = usage_report(&gateway, &request_id, 7, 9).await;
    settled.assert_ok();
    assert_eq!(
        (settled.body["prompt_tokens"].as_u64(), settled.body["completion_tokens"].as_u64()),
        (Some(7), Some(9))
    );
    assert_eq!(settled.body["estimated"], false);
    usage_report(&gateway, &request_id, 7, 9).await.assert_error(404, "not_found");
    usage_report(&gateway, "req_never_allowed", 1, 1).await.assert_error(404, "not_found");
    assert_eq!(tokens_today(&gateway, &key, 1).await, 16);
    let metrics = send(http().get(format!("{}/metrics", gateway.admin_url())).bearer_auth(gateway.admin_token())).await;
    assert!(
        metrics.text.contains("portcullis_authz_lease_settlements_total{how=\"usage_reported\"} 1"),
        "{}",
        metrics.text
    );
    assert!(metrics.text.contains("portcullis_authz_open_leases 0"), "{}", metrics.text);

    let settlement = decisions(&gateway, 2)
        .await
        .into_iter()
        .find(|record| record["request_id"] == request_id.as_str() && record["reason"] == "usage_reported")
        .expect("the settlement's record");
    assert_eq!((settlement["prompt_tokens"].as_u64(), settlement["completion_tokens"].as_u64()), (Some(7), Some(9)));
    assert_eq!((settlement["kind"].as_str(), settlement["gateway"].as_str()), (Some("authz"), Some("edge-1")));
}

#[tokio::test]
async fn a_check_held_by_an_open_lease_waits_for_its_usage_report() {
    // Without a body a check reserves 84 + 16 prompt tokens and 50 of completion: one fits 200,
    // two do not, and a second fits once the first is settled at what it used.
    let (_stub, gateway) = start("", "[tiers.free]\ntokens_per_day = 200\n").await;
    let (_, key) = gateway.create_key(&["--tier", "free"]);
    let first = Ask::chat(&key).to(&gateway, "/authz").await;
    first.assert_ok();
    let request_id = first.header("x-portcullis-request-id").expect("the lease id").to_string();

    let started = Instant::now();
    let report = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        usage_report(&gateway, &request_id, 7, 9).await
    };
    let second = async {
        let reply = Ask::chat(&key).to(&gateway, "/authz").await;
        (reply, started.elapsed())
    };
    let ((second, answered_after), report) = tokio::join!(second, report);
    report.assert_ok();
    second.assert_ok();
    assert!(answered_after >= Duration::from_millis(300), "answered after {answered_after:?}, before the report");
}

#[tokio::test]
async fn an_unreported_lease_is_charged_in_full_and_frees_its_slot_when_it_expires() {
    let (_stub, gateway) = start("lease = \"1s\"", "[tiers.free]\nmax_concurrent = 1\n").await;
    let (_, key) = gateway.create_key(&["--tier", "free"]);
    let reply = Ask::chat(&key).to(&gateway, "/authz").await;
    reply.assert_ok();
    let request_id = reply.header("x-portcullis-request-id").expect("the lease id").to_string();
    // The slot is held by the lease: the request may still be running behind the gateway.
    Ask::chat(&key).to(&gateway, "/authz").await.assert_error(429, "rate_limit_exceeded");

    let full = 84 + TEMPLATE_SLACK + DEFAULT_MAX_TOKENS;
    assert_eq!(tokens_today(&gateway, &key, 1).await, full, "charged the whole reservation");
    Ask::chat(&key).to(&gateway, "/authz").await.assert_ok();
    let expired = decisions(&gateway, 4)
        .await
        .into_iter()
        .find(|record| {
            record["request_id"] == request_id.as_str() && record["reason"] == "lease_expired_charged_in_full"
        })
        .expect("the expiry's record");
    assert_eq!(expired["usage_estimated"], true);
    usage_report(&gateway, &request_id, 1, 1).await.assert_error(404, "not_found");
}
