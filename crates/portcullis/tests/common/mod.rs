//! Helpers shared by the black-box tests in `crates/portcullis/tests/`: a stub-backed gateway,
//! an HTTP client, answers read as status + JSON, and the CLI run with a chosen admin token.
//!
//! Each test binary uses only some of these.
#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(clippy::expect_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

pub mod quota_race;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use portcullis_testkit::{Gateway, GatewayBuilder, StubUpstream};
use serde_json::{Value, json};

pub const BINARY: &str = env!("CARGO_BIN_EXE_portcullis");

/// One `[[models]]` table per name, all served by `stub`.
pub fn models_config(stub: &StubUpstream, models: &[&str]) -> String {
    models
        .iter()
        .map(|name| format!("[[models]]\nname = \"{name}\"\nendpoints = [\"{}\"]\n", stub.url()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A fresh stub and a gateway serving `models` from it.
pub async fn start(models: &[&str]) -> (StubUpstream, Gateway) {
    let stub = StubUpstream::start().await;
    let gateway = GatewayBuilder::new(BINARY).config(&models_config(&stub, models)).start().await;
    (stub, gateway)
}

/// A client that never goes through a proxy from the environment.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("build an HTTP client")
}

/// One answer of the gateway: status, headers and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<no error code>")
    }

    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("<no error message>")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Asserts an OpenAI-shaped error with this status and `error.code`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.code()), (status, code), "unexpected answer: {}", self.text);
        assert!(self.body["error"]["message"].is_string(), "error without a message: {}", self.text);
        assert!(self.body["error"]["type"].is_string(), "error without a type: {}", self.text);
    }

    #[track_caller]
    pub fn assert_ok(&self) {
        assert_eq!(self.status, 200, "expected success, got: {}", self.text);
    }
}

pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.expect("the gateway answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("read the body");
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

pub fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
}

/// `POST /v1/chat/completions` for `model` with `Authorization: Bearer <key>` (none when `None`).
pub async fn chat(gateway: &Gateway, key: Option<&str>, model: &str) -> Reply {
    let mut request = http().post(format!("{}/v1/chat/completions", gateway.proxy_url())).json(&chat_body(model));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    send(request).await
}

/// `GET <proxy><path>` with `Authorization: Bearer <key>`.
pub async fn get(gateway: &Gateway, key: &str, path: &str) -> Reply {
    send(http().get(format!("{}{path}", gateway.proxy_url())).bearer_auth(key)).await
}

/// The ids `GET /v1/models` lists for `key`.
pub async fn model_ids(gateway: &Gateway, key: &str) -> Vec<String> {
    let reply = get(gateway, key, "/v1/models").await;
    reply.assert_ok();
    reply.body["data"]
        .as_array()
        .expect("a model list has data")
        .iter()
        .map(|model| model["id"].as_str().expect("a model has an id").to_string())
        .collect()
}

/// The CLI of the real binary against `gateway`'s admin API, authenticated with `token`
/// (unlike [`Gateway::cli`], which always uses the bootstrap token).
pub fn cli_as(gateway: &Gateway, token: &str, args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .current_dir(gateway.dir())
        .env("PORTCULLIS_ADMIN_URL", gateway.admin_url())
        .env("PORTCULLIS_ADMIN_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("run the portcullis CLI")
}

/// [`cli_as`] with `--json`; panics unless it succeeds and prints JSON.
#[track_caller]
pub fn cli_json_as(gateway: &Gateway, token: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = cli_as(gateway, token, &all);
    assert!(output.status.success(), "`portcullis {}` failed: {}", all.join(" "), describe(&output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("no JSON ({error}): {}", describe(&output)))
}

/// Exit status, stdout and stderr of a command, for failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `value[field]` as a string; panics naming the field when it is not one.
#[track_caller]
pub fn str_field<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_else(|| panic!("no string `{field}` in {value}"))
}

/// How long a record may take to show up in the store.
pub const AUDIT_WAIT: Duration = Duration::from_secs(3);
/// The admin API's largest page.
const PAGE: usize = 1000;

/// `GET <admin><path_and_query>` with the bootstrap token; panics unless 200.
pub async fn admin_json(gateway: &Gateway, path_and_query: &str) -> Value {
    let reply =
        send(http().get(format!("{}{path_and_query}", gateway.admin_url())).bearer_auth(gateway.admin_token())).await;
    assert_eq!(reply.status, 200, "GET {path_and_query} failed: {}", reply.text);
    reply.body
}

/// Every record matching `query` (`"kind=admin&decision=allow"`, or empty), following the cursor.
pub async fn audit_records(gateway: &Gateway, query: &str) -> Vec<Value> {
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("/admin/v1/audit?limit={PAGE}");
        if !query.is_empty() {
            url.push('&');
            url.push_str(query);
        }
        if let Some(cursor) = &cursor {
            url.push_str("&cursor=");
            url.push_str(cursor);
        }
        let page = admin_json(gateway, &url).await;
        let data = page["data"].as_array().unwrap_or_else(|| panic!("no data in {page}"));
        records.extend(data.iter().cloned());
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if data.len() < PAGE || cursor.is_none() {
            return records;
        }
    }
}

/// Polls [`audit_records`] until it has at least `count` records (at most [`AUDIT_WAIT`]).
pub async fn wait_for_records(gateway: &Gateway, query: &str, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + AUDIT_WAIT;
    loop {
        let records = audit_records(gateway, query).await;
        if records.len() >= count || Instant::now() >= deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The one record of `reply`, found by its request id.
pub async fn record_of(gateway: &Gateway, reply: &Reply) -> Value {
    the_record(gateway, reply.header("x-request-id").expect("a request id")).await
}

/// A record's billed tokens: (prompt, completion).
pub fn billed(record: &Value) -> (u64, u64) {
    let tokens = |field: &str| record[field].as_u64().unwrap_or_else(|| panic!("no {field} in {record}"));
    (tokens("prompt_tokens"), tokens("completion_tokens"))
}

/// The one record with this request id; panics when there are none or several.
pub async fn the_record(gateway: &Gateway, request_id: &str) -> Value {
    let records = wait_for_records(gateway, &format!("request_id={request_id}"), 1).await;
    assert_eq!(records.len(), 1, "request {request_id} should have exactly one record: {records:#?}");
    records.into_iter().next().expect("one record")
}

/// `/v1/usage` for `key` once it shows `requests` requests today (usage is written within a second).
pub async fn spent_today(gateway: &Gateway, key: &str, requests: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = get(gateway, key, "/v1/usage").await;
        reply.assert_ok();
        let today = reply.body["spend"]["today"].clone();
        if today["requests"].as_u64() >= Some(requests) {
            return today;
        }
        assert!(Instant::now() < deadline, "usage never showed {requests} requests: {}", reply.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `[[models]]` table of `gemma`: the real small model (Gemma 3 270M behind llama.cpp's
/// server at `upstream`), given the time a CPU takes to its first byte. Lines that follow it
/// (`server = ...`) still belong to it.
pub fn real_slm_model(upstream: &str) -> String {
    format!(
        "[[models]]\nname = \"gemma\"\nupstream_model = \"gemma-3-270m\"\nendpoints = [\"{upstream}\"]\n\
         health_check = {{ path = \"/health\" }}\ntimeouts = {{ first_byte = \"120s\" }}\n"
    )
}
