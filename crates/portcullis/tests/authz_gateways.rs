//! Portcullis as the authorizer of a real nginx and a real Caddy, each run from the
//! configuration shipped in `examples/` in front of the stub model server: what passes, what is
//! refused and how the client sees it, what the model server sees, what is audited, and how
//! usage reported afterwards is billed. Skipped loudly without the servers (failed with CI=true).

#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{BINARY, Reply, http, models_config, send, wait_for_records};
use futures_util::StreamExt;
use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream, WebGateway, WebServer, free_port};
use serde_json::{Value, json};

const CHAT: &str = "/v1/chat/completions";

/// The stub model server, Portcullis with its authorizer on, and the web server in front.
struct Setup {
    stub: StubUpstream,
    portcullis: Gateway,
    web: WebGateway,
}

/// `m` served by the stub (and `other`, which no key here may use); tier `free` generous,
/// tier `slow` two requests a minute.
async fn setup(server: WebServer) -> Option<Setup> {
    setup_with(server, "").await
}

/// [`setup`] with more `[authz]` lines.
async fn setup_with(server: WebServer, authz: &str) -> Option<Setup> {
    let stub = StubUpstream::start().await;
    let config = format!(
        "{}\n[authz]\nlisten = \"127.0.0.1:0\"\n{authz}\n\n[tiers.free]\nrequests_per_minute = 100\n\n\
         [tiers.slow]\nrequests_per_minute = 2\n",
        models_config(&stub, &["m"])
    );
    let portcullis = GatewayBuilder::new(BINARY).config(&config).start().await;
    let web = WebGateway::start_or_skip(server, portcullis.authz_addr(), stub.addr()).await?;
    Some(Setup { stub, portcullis, web })
}

impl Setup {
    /// `POST /v1/chat/completions` through the web server, with `credential` as a header.
    async fn chat(&self, credential: Option<(&str, &str)>) -> Reply {
        let mut request = http().post(format!("{}{CHAT}", self.web.url())).json(&chat_body());
        if let Some((name, value)) = credential {
            request = request.header(name, value);
        }
        send(request).await
    }

    async fn chat_as(&self, key: &str) -> Reply {
        self.chat(Some(("authorization", &format!("Bearer {key}")))).await
    }

    /// The one decision recorded under `request_id`.
    async fn decision(&self, request_id: &str) -> Value {
        let records = wait_for_records(&self.portcullis, &format!("request_id={request_id}"), 1).await;
        let decisions: Vec<&Value> = records.iter().filter(|record| record["reason"] != "usage_reported").collect();
        assert_eq!(decisions.len(), 1, "one decision for {request_id}: {records:#?}");
        decisions[0].clone()
    }

    fn context(&self) -> String {
        format!(
            "{} log:\n{}\nportcullis log:\n{}",
            self.web.server().name(),
            self.web.log_text(),
            self.portcullis.log_tail(30)
        )
    }
}

fn chat_body() -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 20})
}

/// Asserts an OpenAI-shaped refusal with this status and code, and its decision audited.
async fn assert_refused(setup: &Setup, reply: &Reply, status: u16, code: &str) -> Value {
    assert_eq!((reply.status, reply.code()), (status, code), "{}\n{}", reply.text, setup.context());
    assert!(reply.body["error"]["message"].is_string() && reply.body["error"]["type"].is_string(), "{}", reply.text);
    assert_eq!(reply.header("content-type"), Some("application/json"), "{:?}", reply.headers);
    let id = reply.header("x-request-id").unwrap_or_else(|| panic!("no x-request-id: {:?}", reply.headers));
    let record = setup.decision(id).await;
    assert_eq!((record["decision"].as_str(), record["status"].as_u64()), (Some("deny"), Some(u64::from(status))));
    assert_eq!(record["reason"], code, "{record:#}");
    record
}

async fn an_allowed_key_passes_without_its_credential_and_its_usage_is_billed(server: WebServer) {
    let Some(setup) = setup(server).await else { return };
    let (key_id, key) = setup.portcullis.create_key(&["--models", "m"]);

    let reply = setup.chat_as(&key).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text, setup.context());
    assert_eq!(reply.body["object"], "chat.completion", "the model server's answer: {}", reply.text);
    assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("100"), "{:?}", reply.headers);
    assert_eq!(reply.header("x-ratelimit-remaining-requests"), Some("99"), "{:?}", reply.headers);
    let seen = setup.stub.last_request_to(CHAT).expect("the model server got the request");
    assert_eq!(seen.header("authorization"), None, "the credential stays at the gateway");
    assert_eq!(seen.header("x-portcullis-key-id"), Some(key_id.as_str()));
    assert_eq!(seen.header("x-portcullis-principal"), Some(key_id.as_str()));
    assert_eq!(seen.header("x-portcullis-principal-kind"), Some("key"));
    assert_eq!(seen.header("x-portcullis-tier"), Some("free"));
    assert_eq!(seen.header("x-portcullis-model"), Some("m"));
    // nginx drops a header whose value is empty; Caddy sends it empty: no team either way.
    assert!(seen.header("x-portcullis-team").is_none_or(str::is_empty), "a key of no team");
    assert!(seen.header("x-ratelimit-limit-requests").is_none(), "rate-limit figures are the client's");
    assert_eq!(seen.json_field("messages")[0]["content"], "hello there", "the body passes unchanged");
    let lease = seen.header("x-portcullis-request-id").expect("the request id a usage report names").to_string();

    let decision = setup.decision(&lease).await;
    assert_eq!(decision["decision"], "allow", "{decision:#}");
    assert_eq!(decision["status"], 200);
    assert_eq!(decision["key_id"], key_id.as_str());
    assert_eq!((decision["method"].as_str(), decision["path"].as_str()), (Some("POST"), Some(CHAT)));
    assert_eq!(decision["model"], "m");

    // The other credential header is kept from the model server too.
    setup.stub.clear_requests();
    assert_eq!(setup.chat(Some(("x-api-key", &key))).await.status, 200);
    let seen = setup.stub.last_request_to(CHAT).expect("the model server got the request");
    assert_eq!(seen.header("x-api-key"), None, "the credential stays at the gateway");
    assert_eq!(seen.header("x-portcullis-key-id"), Some(key_id.as_str()));

    // Whoever saw the response reports its usage; the key is billed exactly that.
    let report = |request_id: &str| {
        let body = json!({"request_id": request_id, "usage": {"prompt_tokens": 7, "completion_tokens": 11}});
        send(http().post(format!("http://{}/authz/v1/usage", setup.portcullis.authz_addr())).json(&body))
    };
    let settled = report(&lease).await;
    assert_eq!(settled.status, 200, "{}", settled.text);
    assert_eq!(
        (settled.body["prompt_tokens"].as_u64(), settled.body["completion_tokens"].as_u64()),
        (Some(7), Some(11))
    );
    assert_eq!(report(&lease).await.status, 404, "a lease settles once");
    let today = spend_today(&setup.portcullis, &key, 1).await;
    assert_eq!((today["requests"].as_u64(), today["tokens"].as_u64()), (Some(1), Some(18)), "{today}");
    let records = wait_for_records(&setup.portcullis, &format!("request_id={lease}"), 2).await;
    let settlement = records.iter().find(|record| record["reason"] == "usage_reported").expect("settlement record");
    assert_eq!(
        (settlement["key_id"].as_str(), settlement["completion_tokens"].as_u64()),
        (Some(key_id.as_str()), Some(11))
    );
}

/// The key's spend today, once its requests reach `requests` (usage is written within a second).
async fn spend_today(portcullis: &Gateway, key: &str, requests: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let usage = common::get(portcullis, key, "/v1/usage").await;
        let today = usage.body["spend"]["today"].clone();
        if today["requests"].as_u64() >= Some(requests) || Instant::now() > deadline {
            return today;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn refusals_reach_the_client_as_the_proxy_would_answer_them(server: WebServer) {
    let Some(setup) = setup(server).await else { return };
    let (_, key) = setup.portcullis.create_key(&["--models", "m"]);
    let (revoked_id, revoked) = setup.portcullis.create_key(&[]);
    setup.portcullis.cli_json(&["keys", "revoke", &revoked_id]);
    let (_, elsewhere) = setup.portcullis.create_key(&["--models", "other"]);
    let (lister_id, lister) = setup.portcullis.create_key(&["--scopes", "models"]);

    assert_refused(&setup, &setup.chat(None).await, 401, "invalid_api_key").await;
    assert_refused(&setup, &setup.chat_as("pcl_not_a_key_at_all").await, 401, "invalid_api_key").await;
    assert_refused(&setup, &setup.chat_as(&revoked).await, 401, "revoked_api_key").await;
    let record = assert_refused(&setup, &setup.chat_as(&elsewhere).await, 403, "model_not_allowed").await;
    assert_eq!((record["model"].as_str(), record["path"].as_str()), (Some("m"), Some(CHAT)), "{record:#}");
    // A client cannot make the authorizer judge another request than the one forwarded.
    let spoofed = http()
        .post(format!("{}{CHAT}", setup.web.url()))
        .bearer_auth(&lister)
        .header("x-original-uri", "/v1/models")
        .header("x-original-method", "GET")
        .header("x-forwarded-uri", "/v1/models")
        .header("x-forwarded-method", "GET")
        .json(&chat_body());
    let record = assert_refused(&setup, &send(spoofed).await, 403, "scope_missing").await;
    assert_eq!((record["key_id"].as_str(), record["path"].as_str()), (Some(lister_id.as_str()), Some(CHAT)));
    let unknown = send(http().get(format!("{}/v1/files", setup.web.url())).bearer_auth(&key)).await;
    assert_refused(&setup, &unknown, 404, "not_found").await;
    let wrong_method = send(http().get(format!("{}{CHAT}", setup.web.url())).bearer_auth(&key)).await;
    assert_refused(&setup, &wrong_method, 405, "method_not_allowed").await;
    assert_eq!(forwarded(&setup.stub), Vec::<String>::new(), "nothing refused reached the model server");
}

/// The requests a web server forwarded to the model server (both add `X-Forwarded-For`;
/// Portcullis's own health probes do not).
fn forwarded(stub: &StubUpstream) -> Vec<String> {
    let requests = stub.requests();
    let forwarded = requests.iter().filter(|seen| seen.header("x-forwarded-for").is_some());
    forwarded.map(|seen| format!("{} {}", seen.method, seen.path)).collect()
}

async fn a_rate_limited_key_gets_429_with_retry_after_and_the_error_body(server: WebServer) {
    let Some(setup) = setup(server).await else { return };
    let (key_id, key) = setup.portcullis.create_key(&["--tier", "slow"]);
    for remaining in ["1", "0"] {
        let reply = setup.chat_as(&key).await;
        assert_eq!(reply.status, 200, "{}\n{}", reply.text, setup.context());
        assert_eq!(reply.header("x-ratelimit-remaining-requests"), Some(remaining), "{:?}", reply.headers);
    }
    let refused = setup.chat_as(&key).await;
    let record = assert_refused(&setup, &refused, 429, "rate_limit_exceeded").await;
    assert_eq!(record["key_id"], key_id.as_str());
    let retry_after: u64 = refused.header("retry-after").and_then(|value| value.parse().ok()).unwrap_or(0);
    assert!((1..=60).contains(&retry_after), "Retry-After for 2 a minute: {:?}", refused.headers);
    assert!(refused.message().contains("requests_per_minute"), "{}", refused.message());
    assert_eq!(forwarded(&setup.stub).len(), 2, "the refused request never reached the model server");
}

async fn the_gateway_refuses_everything_while_the_authorizer_is_unreachable(server: WebServer) {
    let stub = StubUpstream::start().await;
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let Some(web) = WebGateway::start_or_skip(server, nobody, stub.addr()).await else { return };
    for path in [CHAT, "/v1/models"] {
        let reply = send(http().post(format!("{}{path}", web.url())).bearer_auth("pcl_any").json(&chat_body())).await;
        assert!(reply.status >= 500, "{path}: {} {}", reply.status, reply.text);
    }
    assert_eq!(forwarded(&stub), Vec::<String>::new(), "nothing reached the model server unasked");
}

async fn a_gateway_the_authorizer_does_not_know_lets_nothing_through(server: WebServer) {
    let Some(setup) = setup_with(server, "gateways = [\"192.0.2.0/24\"]").await else { return };
    let (_, key) = setup.portcullis.create_key(&[]);
    let reply = setup.chat_as(&key).await;
    assert_eq!(reply.status, 403, "{}\n{}", reply.text, setup.context());
    assert!(reply.message().contains("gateway"), "an OpenAI-shaped refusal naming the cause: {}", reply.text);
    assert_eq!(forwarded(&setup.stub), Vec::<String>::new(), "nothing reached the model server");
}

async fn a_stream_reaches_the_client_as_the_model_server_writes_it(server: WebServer) {
    let Some(setup) = setup(server).await else { return };
    let (_, key) = setup.portcullis.create_key(&[]);
    let gate = setup.stub.gated_stream();
    let mut body = chat_body();
    body["stream"] = json!(true);
    let response = http()
        .post(format!("{}{CHAT}", setup.web.url()))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), 200, "{}", setup.context());
    let mut stream = response.bytes_stream();
    // The model server has sent its first event and holds the rest: the client must already
    // have that event, or the gateway buffered it.
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the first event arrives while the model server holds the rest")
        .expect("the stream is open")
        .expect("a chunk");
    assert!(String::from_utf8_lossy(&first).starts_with("data: "), "{first:?}");
    assert_eq!(setup.stub.chunk_sent_count(), 1, "the model server has not sent its second event yet");
    gate.release();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.expect("a chunk"));
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}\n{}", setup.context());
}

/// One test per scenario and web server.
macro_rules! for_each_server {
    ($($scenario:ident),* $(,)?) => {
        mod nginx {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(portcullis_testkit::WebServer::Nginx).await;
                }
            )*
        }
        mod caddy {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(portcullis_testkit::WebServer::Caddy).await;
                }
            )*
        }
    };
}

for_each_server!(
    an_allowed_key_passes_without_its_credential_and_its_usage_is_billed,
    refusals_reach_the_client_as_the_proxy_would_answer_them,
    a_rate_limited_key_gets_429_with_retry_after_and_the_error_body,
    the_gateway_refuses_everything_while_the_authorizer_is_unreachable,
    a_gateway_the_authorizer_does_not_know_lets_nothing_through,
    a_stream_reaches_the_client_as_the_model_server_writes_it,
);
