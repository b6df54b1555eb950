//! Envoy as the gateway, through the real binary: `ext_authz` `Check` over gRPC (and its HTTP
//! variant) decides as the proxy would, and the `ext_proc` stream settles each allowed request's
//! reservation from the usage its response reports — or the reservation expires, charged in
//! full. Envoy itself is not run: the tests speak its v3 protocol with the generated clients of
//! `envoy-types`, over HTTP/2 without TLS, as Envoy's cluster would.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{BINARY, http, models_config, send, the_record, wait_for_records};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttributeRequest};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest};
use futures_util::StreamExt;
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

/// Every key is in the `metered` tier unless a test says otherwise: its limits give the
/// `x-ratelimit-*` headers something to say.
const TIERS: &str = "[limits]\ndefault_tier = \"metered\"\n\n[tiers.metered]\nrequests_per_minute = 100\ntokens_per_minute = 100000\n\n[tiers.slow]\nrequests_per_minute = 1\n";

async fn start(authz: &str) -> (StubUpstream, Gateway) {
    start_with(authz, &[]).await
}

async fn start_with(authz: &str, server_settings: &[&str]) -> (StubUpstream, Gateway) {
    let stub = StubUpstream::start().await;
    let config =
        format!("{TIERS}\n{}\n[authz]\nlisten = \"127.0.0.1:0\"\n{authz}\n", models_config(&stub, &["a", "b"]));
    let builder =
        server_settings.iter().fold(GatewayBuilder::new(BINARY), |builder, line| builder.server_setting(line));
    let gateway = builder.config(&config).start().await;
    (stub, gateway)
}

async fn channel(gateway: &Gateway) -> Channel {
    let endpoint = format!("http://{}", gateway.authz_addr());
    Channel::from_shared(endpoint).unwrap().connect().await.expect("connect to the authorizer over h2c")
}

/// A chat request for `model` as Envoy describes it, with `key` as its bearer credential and
/// its body forwarded (`with_request_body`).
fn chat_check(key: Option<&str>, model: &str, max_tokens: u64) -> CheckRequest {
    let body = json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]});
    let mut headers = HashMap::from([
        (":authority".to_string(), "llm.example".to_string()),
        ("content-type".to_string(), "application/json".to_string()),
    ]);
    if let Some(key) = key {
        headers.insert("authorization".into(), format!("Bearer {key}"));
    }
    check_request(HttpRequest {
        method: "POST".into(),
        path: "/v1/chat/completions?trace=1".into(),
        headers,
        body: body.to_string(),
        ..HttpRequest::default()
    })
}

fn check_request(http: HttpRequest) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttributeRequest { http: Some(http), ..AttributeRequest::default() }),
            context_extensions: HashMap::from([("gateway".to_string(), "envoy-edge".to_string())]),
            ..AttributeContext::default()
        }),
    }
}

async fn check(gateway: &Gateway, request: CheckRequest) -> CheckResponse {
    let mut client = AuthorizationClient::new(channel(gateway).await);
    client.check(request).await.expect("Check answers").into_inner()
}

fn allowed(response: CheckResponse) -> OkHttpResponse {
    assert_eq!(response.status.as_ref().map(|status| status.code), Some(Code::Ok as i32), "{response:?}");
    match response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("not allowed: {other:?}"),
    }
}

fn denied(response: CheckResponse, grpc: Code) -> (DeniedHttpResponse, Value) {
    assert_eq!(response.status.as_ref().map(|status| status.code), Some(grpc as i32), "{response:?}");
    match response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => {
            let body = serde_json::from_str(&denied.body).expect("the denial's body is JSON");
            (denied, body)
        }
        other => panic!("not denied: {other:?}"),
    }
}

fn header<'a>(
    options: &'a [envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
    name: &str,
) -> Option<&'a str> {
    options.iter().filter_map(|option| option.header.as_ref()).find(|h| h.key == name).map(|h| h.value.as_str())
}

/// The lease id an allowed check sends upstream.
fn lease_id(ok: &OkHttpResponse) -> String {
    header(&ok.headers, "x-portcullis-request-id").expect("an allowed model call names its lease").to_string()
}

fn headers(pairs: &[(&str, &str)]) -> Option<HeaderMap> {
    Some(HeaderMap {
        headers: pairs
            .iter()
            .map(|(key, value)| HeaderValue {
                key: key.to_string(),
                raw_value: value.as_bytes().to_vec(),
                ..HeaderValue::default()
            })
            .collect(),
    })
}

/// What Envoy's `ext_proc` filter sends for one request whose response is `content_type` with
/// `chunks` as its body; `complete` marks the last chunk as the end of the stream.
fn exchange(
    lease: &str,
    content_type: &str,
    chunks: &[&str],
    complete: bool,
    observing: bool,
) -> Vec<ProcessingRequest> {
    let message = |request| ProcessingRequest {
        request: Some(request),
        observability_mode: observing,
        ..ProcessingRequest::default()
    };
    let mut messages = vec![
        message(Message::RequestHeaders(HttpHeaders {
            headers: headers(&[(":path", "/v1/chat/completions"), ("x-portcullis-request-id", lease)]),
            ..HttpHeaders::default()
        })),
        message(Message::ResponseHeaders(HttpHeaders {
            headers: headers(&[(":status", "200"), ("content-type", content_type)]),
            ..HttpHeaders::default()
        })),
    ];
    for (at, chunk) in chunks.iter().enumerate() {
        let end_of_stream = complete && at + 1 == chunks.len();
        messages.push(message(Message::ResponseBody(HttpBody {
            body: chunk.as_bytes().to_vec(),
            end_of_stream,
            ..HttpBody::default()
        })));
    }
    messages
}

/// Runs one `ext_proc` stream to its end; the replies the authorizer sent.
async fn process(gateway: &Gateway, messages: Vec<ProcessingRequest>) -> Vec<Reply> {
    process_paced(gateway, messages, Duration::ZERO).await
}

/// [`process`], with the response body held back for `pause`, as while a model thinks.
async fn process_paced(gateway: &Gateway, messages: Vec<ProcessingRequest>, pause: Duration) -> Vec<Reply> {
    let mut client = ExternalProcessorClient::new(channel(gateway).await);
    let paced = futures_util::stream::iter(messages).then(move |message| async move {
        if matches!(message.request, Some(Message::ResponseBody(_))) {
            tokio::time::sleep(pause).await;
        }
        message
    });
    let mut replies = client.process(paced).await.expect("Process opens").into_inner();
    let mut seen = Vec::new();
    while let Some(reply) = replies.message().await.expect("the stream ends cleanly") {
        seen.push(reply.response.expect("a reply says what it answers"));
    }
    seen
}

/// The settlement record of `lease` (its `reason` says how it ended).
async fn settlement(gateway: &Gateway, lease: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let records = wait_for_records(gateway, &format!("request_id={lease}"), 2).await;
        // The decision's record carries no usage; the settlement's does.
        if let Some(settled) = records.iter().find(|record| record["prompt_tokens"].is_u64()) {
            return settled.clone();
        }
        assert!(Instant::now() < deadline, "no settlement record for {lease}: {records:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tokens recorded for `key_id` today, once the recorder has written them (`expected`).
async fn recorded_tokens(gateway: &Gateway, key_id: &str, expected: (u64, u64)) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let report = common::admin_json(gateway, &format!("/admin/v1/usage?key={key_id}&since=1d")).await;
        let rows = report["data"].as_array().cloned().unwrap_or_default();
        let sum = |field: &str| rows.iter().filter_map(|row| row[field].as_u64()).sum::<u64>();
        let seen = (sum("prompt_tokens"), sum("completion_tokens"));
        if seen == expected || Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const USAGE: &str = r#"{"prompt_tokens":11,"completion_tokens":5,"total_tokens":16}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_check_sends_identity_upstream_removes_the_credential_and_tells_the_client_its_limits() {
    let (_stub, gateway) = start("").await;
    let (key_id, key) = gateway.create_key(&["--models", "a"]);
    let ok = allowed(check(&gateway, chat_check(Some(&key), "a", 20)).await);
    assert_eq!(header(&ok.headers, "x-portcullis-key-id"), Some(key_id.as_str()));
    assert_eq!(header(&ok.headers, "x-portcullis-principal-kind"), Some("key"));
    assert_eq!(header(&ok.headers, "x-portcullis-model"), Some("a"));
    assert_eq!(header(&ok.headers, "x-portcullis-tier"), Some("metered"));
    assert!(ok.headers.iter().all(|option| option.append_action == 2), "identity overwrites what the client sent");
    assert_eq!(ok.headers_to_remove, ["authorization", "x-api-key"]);
    assert_eq!(header(&ok.response_headers_to_add, "x-ratelimit-limit-requests"), Some("100"));
    assert!(header(&ok.response_headers_to_add, "x-ratelimit-remaining-tokens").is_some(), "{ok:?}");
    assert!(
        !ok.headers.iter().chain(&ok.response_headers_to_add).any(|o| o.header.as_ref().unwrap().value.contains(&key))
    );

    // The decision is audited under the lease id, with the original request's path.
    let record = the_record(&gateway, &lease_id(&ok)).await;
    assert_eq!((record["decision"].as_str(), record["path"].as_str()), (Some("allow"), Some("/v1/chat/completions")));
    assert_eq!(record["model"], "a", "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_check_gives_envoy_the_status_headers_and_body_the_proxy_would_answer() {
    let (_stub, gateway) = start("").await;
    let (_, key) = gateway.create_key(&["--models", "a"]);
    let (_, slow) = gateway.create_key(&["--tier", "slow"]);

    let (no_key, body) = denied(check(&gateway, chat_check(None, "a", 20)).await, Code::Unauthenticated);
    assert_eq!(no_key.status.unwrap().code, 401);
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    assert_eq!(header(&no_key.headers, "content-type"), Some("application/json"));

    let (other_model, body) = denied(check(&gateway, chat_check(Some(&key), "b", 20)).await, Code::PermissionDenied);
    assert_eq!((other_model.status.unwrap().code, body["error"]["code"].as_str()), (403, Some("model_not_allowed")));

    allowed(check(&gateway, chat_check(Some(&slow), "a", 20)).await);
    let (limited, body) = denied(check(&gateway, chat_check(Some(&slow), "a", 20)).await, Code::PermissionDenied);
    assert_eq!((limited.status.unwrap().code, body["error"]["code"].as_str()), (429, Some("rate_limit_exceeded")));
    let retry_after: u64 = header(&limited.headers, "retry-after").expect("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // The id the refusal was recorded under, for the client to quote.
    assert!(header(&limited.headers, "x-request-id").is_some(), "{limited:?}");

    let refusals = wait_for_records(&gateway, "decision=deny", 3).await;
    let codes: Vec<&str> = refusals.iter().filter_map(|record| record["reason"].as_str()).collect();
    for code in ["model_not_allowed", "rate_limit_exceeded"] {
        assert!(codes.contains(&code), "{code} not audited: {refusals:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_proc_settles_the_lease_from_a_json_answers_usage_however_long_the_model_thinks() {
    // The stream is silent for longer than a request body may be: it is not one.
    let (_stub, gateway) = start_with("", &["body_read_timeout = \"300ms\""]).await;
    let (key_id, key) = gateway.create_key(&[]);
    let lease = lease_id(&allowed(check(&gateway, chat_check(Some(&key), "a", 20)).await));
    let answer = format!(r#"{{"id":"c1","choices":[{{"message":{{"content":"hello"}}}}],"usage":{USAGE}}}"#);
    let (head, tail) = answer.split_at(30);
    // Observe mode: Envoy waits for nothing, and is sent nothing.
    let messages = exchange(&lease, "application/json", &[head, tail], true, true);
    let replies = process_paced(&gateway, messages, Duration::from_millis(700)).await;
    assert!(replies.is_empty(), "{replies:?}");

    let record = settlement(&gateway, &lease).await;
    assert_eq!(record["reason"], "usage_observed", "{record}");
    assert_eq!((record["prompt_tokens"].as_u64(), record["completion_tokens"].as_u64()), (Some(11), Some(5)));
    assert_eq!(recorded_tokens(&gateway, &key_id, (11, 5)).await, (11, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_proc_settles_the_lease_from_a_streamed_answers_usage_chunk() {
    let (_stub, gateway) = start("").await;
    let (key_id, key) = gateway.create_key(&[]);
    let lease = lease_id(&allowed(check(&gateway, chat_check(Some(&key), "a", 20)).await));
    let stream = format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"hel\"}}}}]}}\n\ndata: {{\"choices\":[{{\"delta\":{{\"content\":\"lo\"}}}}]}}\n\ndata: {{\"choices\":[],\"usage\":{USAGE}}}\n\ndata: [DONE]\n\n"
    );
    // Chunks cut mid-event, as a network delivers them.
    let chunks: Vec<&str> =
        [0, 17, 60, 110, 150].windows(2).map(|w| &stream[w[0]..w[1]]).chain([&stream[150..]]).collect();
    // Not observing: every message gets its "continue" in kind.
    let messages = exchange(&lease, "text/event-stream", &chunks, true, false);
    let count = messages.len();
    let replies = process(&gateway, messages).await;
    assert_eq!(replies.len(), count, "{replies:?}");
    assert!(matches!(replies[0], Reply::RequestHeaders(_)) && matches!(replies[1], Reply::ResponseHeaders(_)));
    assert!(replies[2..].iter().all(|reply| matches!(reply, Reply::ResponseBody(_))), "{replies:?}");

    let record = settlement(&gateway, &lease).await;
    assert_eq!(record["reason"], "usage_observed", "{record}");
    assert_eq!(recorded_tokens(&gateway, &key_id, (11, 5)).await, (11, 5));
    // /v1/usage of the key says the same.
    let spend = common::get(&gateway, &key, "/v1/usage").await;
    assert_eq!(spend.body["spend"]["today"]["tokens"], 16, "{}", spend.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_nothing_settles_expires_charged_its_whole_reservation() {
    let (_stub, gateway) = start("lease = \"1s\"\n").await;
    let (key_id, key) = gateway.create_key(&[]);
    let request = chat_check(Some(&key), "a", 20);
    let body_len = request.attributes.as_ref().unwrap().request.as_ref().unwrap().http.as_ref().unwrap().body.len();
    let lease = lease_id(&allowed(check(&gateway, request).await));
    // The response breaks off before its usage went by: nothing to settle with.
    process(&gateway, exchange(&lease, "text/event-stream", &["data: {\"choices\":[{\"delta\":"], false, true)).await;

    let record = settlement(&gateway, &lease).await;
    assert_eq!(record["reason"], "lease_expired_charged_in_full", "{record}");
    assert_eq!(record["usage_estimated"], true, "{record}");
    let prompt_bound = body_len as u64 + 16;
    assert_eq!(
        (record["prompt_tokens"].as_u64(), record["completion_tokens"].as_u64()),
        (Some(prompt_bound), Some(20))
    );
    assert_eq!(recorded_tokens(&gateway, &key_id, (prompt_bound, 20)).await, (prompt_bound, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_variant_allows_and_denies_at_the_path_envoy_appends() {
    let (_stub, gateway) = start("").await;
    let (key_id, key) = gateway.create_key(&["--models", "a"]);
    let url = format!("http://{}/authz/envoy/v1/chat/completions?stream=1", gateway.authz_addr());
    let body = json!({"model": "a", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});

    let ok = send(http().post(&url).bearer_auth(&key).header("x-portcullis-gateway", "envoy-http").json(&body)).await;
    ok.assert_ok();
    assert_eq!(ok.header("x-portcullis-key-id"), Some(key_id.as_str()));
    assert_eq!(ok.header("x-envoy-auth-headers-to-remove"), Some("authorization, x-api-key"));
    assert!(ok.header("x-portcullis-request-id").is_some());

    let no_key = send(http().post(&url).json(&body)).await;
    assert_eq!(no_key.status, 401, "{}", no_key.text);
    assert_eq!(no_key.body["error"]["type"], "authentication_error", "{}", no_key.text);
    assert!(no_key.header("x-envoy-auth-headers-to-remove").is_none());
    let other = send(http().post(&url).bearer_auth(&key).json(&json!({"model": "b", "messages": []}))).await;
    other.assert_error(403, "model_not_allowed");
    // A GET of the same path is refused as the proxy would refuse it.
    send(http().get(&url).bearer_auth(&key)).await.assert_error(405, "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_not_a_gateway_is_refused_and_audited() {
    let (_stub, gateway) = start("gateways = [\"10.9.9.9/32\"]\n").await;
    let (_, key) = gateway.create_key(&[]);
    let mut client = AuthorizationClient::new(channel(&gateway).await);
    let refused = client.check(chat_check(Some(&key), "a", 20)).await.expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let mut processor = ExternalProcessorClient::new(channel(&gateway).await);
    let refused =
        processor.process(futures_util::stream::iter(exchange("x", "application/json", &[], true, true))).await;
    assert_eq!(refused.expect_err("refused").code(), Code::PermissionDenied);

    let records = wait_for_records(&gateway, "decision=deny", 2).await;
    let paths: Vec<&str> = records.iter().filter_map(|record| record["path"].as_str()).collect();
    assert!(paths.contains(&"/envoy.service.auth.v3.Authorization/Check"), "{records:#?}");
    assert!(paths.contains(&"/envoy.service.ext_proc.v3.ExternalProcessor/Process"), "{records:#?}");
    assert!(records.iter().all(|record| record["reason"] == "forbidden"), "{records:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_stream_with_nothing_to_settle_is_closed_at_once() {
    let (_stub, gateway) = start("").await;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let outgoing = futures_util::stream::unfold(receiver, |mut receiver| async {
        receiver.recv().await.map(|message| (message, receiver))
    });
    let mut client = ExternalProcessorClient::new(channel(&gateway).await);
    let mut replies = client.process(outgoing).await.expect("Process opens").into_inner();
    // A request that carries no lease (a model listing, or a client's own id): Envoy's side stays
    // open, the authorizer's closes.
    let first = exchange("req_never_leased", "application/json", &[], false, true).remove(0);
    sender.send(first).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(2), replies.message()).await;
    assert!(matches!(ended, Ok(Ok(None))), "the stream should end cleanly at once: {ended:?}");
    drop(sender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_model_server_refused_is_charged_nothing() {
    let (_stub, gateway) = start("").await;
    let (key_id, key) = gateway.create_key(&[]);
    let lease = lease_id(&allowed(check(&gateway, chat_check(Some(&key), "a", 20)).await));
    let error = r#"{"error":{"message":"overloaded","type":"server_error"}}"#;
    let mut messages = exchange(&lease, "application/json", &[error], true, true);
    messages[1].request = Some(Message::ResponseHeaders(HttpHeaders {
        headers: headers(&[(":status", "503"), ("content-type", "application/json")]),
        ..HttpHeaders::default()
    }));
    process(&gateway, messages).await;

    let record = settlement(&gateway, &lease).await;
    assert_eq!(record["reason"], "upstream_refused_nothing_charged", "{record}");
    assert_eq!((record["prompt_tokens"].as_u64(), record["completion_tokens"].as_u64()), (Some(0), Some(0)));
    // Its usage row counts the request, with no tokens.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let report = common::admin_json(&gateway, &format!("/admin/v1/usage?key={key_id}&since=1d")).await;
        let rows = report["data"].as_array().cloned().unwrap_or_default();
        let sum = |field: &str| rows.iter().filter_map(|row| row[field].as_u64()).sum::<u64>();
        if sum("requests") == 1 {
            assert_eq!(sum("total_tokens"), 0, "{report}");
            break;
        }
        assert!(Instant::now() < deadline, "no usage row: {report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
