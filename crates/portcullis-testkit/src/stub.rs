//! [`StubUpstream`]: a scripted, OpenAI-compatible model server for black-box tests.
//!
//! It answers like llama.cpp's `llama-server` or OpenAI would, but deterministically: a reply
//! is made of [`reply_pieces`] (the first piece echoes the `model` it received, one piece per
//! completion token), usage counts whitespace-separated words of the prompt, and embeddings are
//! derived from a hash of each input; llama.cpp's `POST /tokenize` gives one token per word
//! too. Every request is recorded, and faults (status codes,
//! hangs, slow or gated streams) can be switched on and off while it runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Content chunks in a streamed reply (and completion tokens in any reply) unless changed.
pub const DEFAULT_STREAM_CHUNKS: usize = 3;
/// Length of every embedding vector the stub returns.
pub const EMBEDDING_DIMENSIONS: usize = 8;
/// The model ids `GET /v1/models` lists unless changed with [`StubUpstream::set_models`].
pub const DEFAULT_MODELS: &[&str] = &["stub-model"];

/// Largest request body the stub reads.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The pieces of text a reply to `model` is made of when it has `count` completion tokens.
///
/// The first piece echoes the model (`"echo:<model>"`), every later piece is `" <index>"`, so
/// `reply_pieces("m", 3).concat() == "echo:m 1 2"`. A streamed reply sends one piece per chunk.
pub fn reply_pieces(model: &str, count: usize) -> Vec<String> {
    (0..count).map(|index| if index == 0 { format!("echo:{model}") } else { format!(" {index}") }).collect()
}

/// The whole text of a reply to `model` with `count` completion tokens: `reply_pieces(..).concat()`.
pub fn reply_text(model: &str, count: usize) -> String {
    reply_pieces(model, count).concat()
}

/// One request as the stub received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The path alone, without the query.
    pub path: String,
    pub query: Option<String>,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, `None` when it is empty or not JSON.
    pub body: Option<Value>,
    pub raw_body: Bytes,
    pub received_at: Instant,
}

impl RecordedRequest {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// `body[field]`, or `Value::Null` when there is no such field or no JSON body.
    pub fn json_field(&self, field: &str) -> &Value {
        self.body.as_ref().and_then(|body| body.get(field)).unwrap_or(&Value::Null)
    }
}

/// Handle on a gated stream made by [`StubUpstream::gated_stream`].
///
/// The next streamed request sends its first SSE event, then waits until [`GatedStream::release`]
/// is called before sending the rest. Dropping the handle does *not* release the stream.
#[derive(Debug, Clone)]
pub struct GatedStream {
    gate: Arc<Gate>,
}

impl GatedStream {
    /// Lets the gated stream send the rest of its events. Calling it before the stream reaches
    /// the gate is fine: the stream then passes straight through.
    pub fn release(&self) {
        self.gate.released.notify_one();
    }

    /// Whether a stream has taken this gate and handed its first event to the HTTP stack.
    pub fn first_chunk_sent(&self) -> bool {
        self.gate.first_sent.load(Ordering::SeqCst)
    }

    /// Waits until the first event has been sent; `false` if that did not happen within `timeout`.
    pub async fn wait_first_chunk(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.first_chunk_sent() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

#[derive(Debug, Default)]
struct Gate {
    released: Notify,
    first_sent: AtomicBool,
}

#[derive(Debug, Clone)]
struct Behaviour {
    stream_chunks: usize,
    chunk_gap: Duration,
    response_delay: Duration,
    fail_status: Option<u16>,
    /// Fails with a non-OpenAI body and headers carrying secrets, like a badly configured server.
    leaky_failure: Option<u16>,
    /// Fails only requests whose raw body contains the marker.
    poisoned: Option<(String, u16)>,
    hang: bool,
    omit_usage: bool,
    /// Reported in place of the true figures: (prompt, completion).
    reported_usage: Option<(u64, u64)>,
    ignore_max_tokens: bool,
    /// Keeps a stream's connection open after its last event, as if more were to come.
    hold_after_done: bool,
    /// Streams one content event, then an event of this many bytes that never ends.
    unterminated_event: Option<usize>,
    /// Streams one content event, then an event whose data is an HTML page.
    invalid_event: bool,
    /// Streams one content event, then fails the body (the connection is cut mid-stream).
    reset_mid_stream: bool,
    models: Vec<String>,
    gate: Option<Arc<Gate>>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            stream_chunks: DEFAULT_STREAM_CHUNKS,
            chunk_gap: Duration::ZERO,
            response_delay: Duration::ZERO,
            fail_status: None,
            leaky_failure: None,
            poisoned: None,
            hang: false,
            omit_usage: false,
            reported_usage: None,
            ignore_max_tokens: false,
            hold_after_done: false,
            unterminated_event: None,
            invalid_event: false,
            reset_mid_stream: false,
            models: DEFAULT_MODELS.iter().map(|model| (*model).to_string()).collect(),
            gate: None,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<RecordedRequest>>,
    chunks_sent: AtomicUsize,
    /// Streamed replies dropped before their last frame: their client (the gateway) hung up.
    streams_abandoned: AtomicUsize,
    next_id: AtomicU64,
    /// Responses API answers kept for `GET /v1/responses/{id}`, and their input items.
    responses: Mutex<HashMap<String, Value>>,
    response_inputs: Mutex<HashMap<String, Value>>,
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fake OpenAI-compatible model server on `127.0.0.1:<random port>`.
///
/// Serves `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`, `POST /v1/chat/completions`,
/// `POST /v1/completions`, `POST /v1/embeddings` (paths may carry a prefix before `/v1`), the
/// Responses API (`POST /v1/responses`, and `GET`/`DELETE` of the responses it stored: see
/// `stub::responses`), and Anthropic's Messages API, rerank and tokenize (see `stub::messages`).
/// The server stops when the value is dropped.
#[derive(Debug)]
pub struct StubUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for StubUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl StubUpstream {
    /// Binds `127.0.0.1:0` and starts serving. Must be called inside a Tokio runtime.
    ///
    /// # Panics
    /// When the port cannot be bound (a failed test, with the reason).
    #[allow(clippy::panic, reason = "test support: a failure here is a failed test")]
    pub async fn start() -> StubUpstream {
        match Self::try_start().await {
            Ok(stub) => stub,
            Err(error) => panic!("cannot start the stub upstream: {error}"),
        }
    }

    /// Like [`StubUpstream::start`], returning the bind error instead of panicking.
    pub async fn try_start() -> std::io::Result<StubUpstream> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(handle).with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            // Errors here mean the listener died; requests then fail, which the test sees.
            let _ = axum::serve(listener, app).await;
        });
        Ok(StubUpstream { addr, shared, server })
    }

    /// `http://127.0.0.1:PORT`, the origin to put in a model's `endpoints`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, oldest first (health checks included).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Requests whose path ends with `suffix`, e.g. `"/v1/chat/completions"`.
    pub fn requests_to(&self, suffix: &str) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).iter().filter(|request| request.path.ends_with(suffix)).cloned().collect()
    }

    /// The latest request whose path ends with `suffix`.
    pub fn last_request_to(&self, suffix: &str) -> Option<RecordedRequest> {
        lock(&self.shared.requests).iter().rev().find(|request| request.path.ends_with(suffix)).cloned()
    }

    /// How many requests arrived (health checks included; see [`StubUpstream::requests_to`]).
    pub fn request_count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// Waits until at least `count` requests have arrived; `false` on timeout.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.request_count() < count {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Forgets the recorded requests and sets [`StubUpstream::chunk_sent_count`] back to 0.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
        self.shared.chunks_sent.store(0, Ordering::SeqCst);
    }

    /// SSE events (`data: ...` blocks, `[DONE]` included) that streamed replies have handed to
    /// the HTTP stack since start or [`StubUpstream::clear_requests`].
    pub fn chunk_sent_count(&self) -> usize {
        self.shared.chunks_sent.load(Ordering::SeqCst)
    }

    /// Streamed replies whose connection was closed before their last frame was sent: the
    /// generations a gateway cancelled.
    pub fn streams_abandoned(&self) -> usize {
        self.shared.streams_abandoned.load(Ordering::SeqCst)
    }

    /// Content chunks per streamed reply, and completion tokens per reply (default 3).
    pub fn set_stream_chunks(&self, chunks: usize) {
        lock(&self.shared.behaviour).stream_chunks = chunks;
    }

    /// Pause between two SSE events of a streamed reply (default none).
    pub fn set_chunk_gap(&self, gap: Duration) {
        lock(&self.shared.behaviour).chunk_gap = gap;
    }

    /// Pause before answering any request, i.e. a slow time to first byte (default none).
    pub fn set_response_delay(&self, delay: Duration) {
        lock(&self.shared.behaviour).response_delay = delay;
    }

    /// Answers every request (health checks included) with `status` and an OpenAI-shaped error body.
    pub fn fail_with(&self, status: u16) {
        lock(&self.shared.behaviour).fail_status = Some(status);
    }

    /// Answers every inference request (not health checks) with `status`, a plain-text body
    /// and headers that leak what a model server should never show: an environment dump with an
    /// API key and a database URL, a session cookie, an authentication challenge, internal hosts.
    pub fn fail_leaking(&self, status: u16) {
        lock(&self.shared.behaviour).leaky_failure = Some(status);
    }

    /// Answers `status` (with an OpenAI-shaped error) to every request whose body contains
    /// `marker`, and normally to the rest: a server choking on one client's input only.
    pub fn fail_when_body_contains(&self, marker: &str, status: u16) {
        lock(&self.shared.behaviour).poisoned = Some((marker.to_string(), status));
    }

    /// Accepts and records every request from now on, but never answers it.
    pub fn hang(&self) {
        lock(&self.shared.behaviour).hang = true;
    }

    /// Leaves `usage` out of replies (and sends no usage chunk even when asked for one).
    pub fn set_omit_usage(&self, omit: bool) {
        lock(&self.shared.behaviour).omit_usage = omit;
    }

    /// Reports these (prompt, completion) figures in `usage` whatever was generated, like a
    /// model server with a broken counter; `None` reports the truth again.
    pub fn set_reported_usage(&self, usage: Option<(u64, u64)>) {
        lock(&self.shared.behaviour).reported_usage = usage;
    }

    /// Generates the full number of chunks whatever cap (`n_predict`, `max_completion_tokens`,
    /// `max_tokens`) the request names, like a model server that does not enforce it (default
    /// off).
    pub fn set_ignore_max_tokens(&self, ignore: bool) {
        lock(&self.shared.behaviour).ignore_max_tokens = ignore;
    }

    /// Sends `data: [DONE]` and then neither ends the stream nor closes the connection.
    pub fn set_hold_after_done(&self, hold: bool) {
        lock(&self.shared.behaviour).hold_after_done = hold;
    }

    /// Streams one content event, then `bytes` bytes of an event that never ends (no blank line),
    /// and holds the connection open.
    pub fn set_unterminated_event(&self, bytes: Option<usize>) {
        lock(&self.shared.behaviour).unterminated_event = bytes;
    }

    /// The ids `GET /v1/models` lists.
    pub fn set_models(&self, models: &[&str]) {
        lock(&self.shared.behaviour).models = models.iter().map(|model| (*model).to_string()).collect();
    }

    /// Back to the default behaviour (no failure, no hang, 3 chunks, no gap, no pending gate).
    /// Recorded requests are kept; requests already hanging stay so.
    pub fn reset(&self) {
        *lock(&self.shared.behaviour) = Behaviour::default();
    }

    /// Gates the next streamed reply after its first SSE event; see [`GatedStream`].
    pub fn gated_stream(&self) -> GatedStream {
        let gate = Arc::new(Gate::default());
        lock(&self.shared.behaviour).gate = Some(Arc::clone(&gate));
        GatedStream { gate }
    }
}

/// A fault one request asks for by carrying `stub-fault:<name>` anywhere in its body (in a
/// message's content, say), whatever the stub's switches say: one test can mix faults, and the
/// gateway in between forwards the marker like any other text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `html`: an HTML page with status 200.
    Html,
    /// `wrong_shape`: status 200 with a JSON object that is no API answer.
    WrongShape,
    /// `unauthorized`: a 401 with leaky headers, as when the gateway's credential for the server
    /// is wrong.
    Unauthorized,
    /// `leaky_failure`: a 500 whose body and headers carry [`LEAKED_SECRETS`].
    LeakyFailure,
    /// `huge_usage`: `usage` figures of 2⁶⁴−1.
    HugeUsage,
    /// `hold_after_done`: a stream that stays open after `[DONE]`.
    HoldAfterDone,
    /// `unterminated_event`: a stream whose second event never ends (2 MiB and holding).
    UnterminatedEvent,
    /// `invalid_event`: a stream whose second event is an HTML page.
    InvalidEvent,
    /// `reset_mid_stream`: a stream cut after its first event.
    ResetMidStream,
    /// `hang`: no answer at all.
    Hang,
}

impl Fault {
    const NAMES: [(&'static str, Fault); 10] = [
        ("html", Fault::Html),
        ("wrong_shape", Fault::WrongShape),
        ("unauthorized", Fault::Unauthorized),
        ("leaky_failure", Fault::LeakyFailure),
        ("huge_usage", Fault::HugeUsage),
        ("hold_after_done", Fault::HoldAfterDone),
        ("unterminated_event", Fault::UnterminatedEvent),
        ("invalid_event", Fault::InvalidEvent),
        ("reset_mid_stream", Fault::ResetMidStream),
        ("hang", Fault::Hang),
    ];

    /// The marker that selects this fault: put it in a request's text.
    pub fn marker(self) -> String {
        let name = Self::NAMES.iter().find(|(_, fault)| *fault == self).map_or("", |(name, _)| name);
        format!("stub-fault:{name}")
    }

    fn requested(body: &[u8]) -> Option<Fault> {
        const PREFIX: &[u8] = b"stub-fault:";
        let at = body.windows(PREFIX.len()).position(|window| window == PREFIX)? + PREFIX.len();
        let name: Vec<u8> =
            body[at..].iter().copied().take_while(|byte| byte.is_ascii_lowercase() || *byte == b'_').collect();
        Self::NAMES.iter().find(|(known, _)| known.as_bytes() == name.as_slice()).map(|(_, fault)| *fault)
    }
}

/// Headers a real model server adds that say who and what it is: they must stay behind the gateway.
pub const STUB_SERVER_HEADERS: [(&str, &str); 2] = [("server", "stub-model-server/1.0"), ("x-internal-node", "gpu-7")];

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let mut response = answer(shared, request).await;
    for (name, value) in STUB_SERVER_HEADERS {
        response.headers_mut().insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn answer(shared: Arc<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(raw_body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request_error", None, "cannot read the request body");
    };
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect(),
        body: serde_json::from_slice(&raw_body).ok(),
        raw_body,
        received_at: Instant::now(),
    };
    lock(&shared.requests).push(recorded.clone());

    let mut behaviour = lock(&shared.behaviour).clone();
    match Fault::requested(&recorded.raw_body) {
        Some(Fault::Html) => return html_page(),
        Some(Fault::WrongShape) => return axum::Json(json!({"result": "ok", "tokens": 3})).into_response(),
        Some(Fault::Unauthorized) => behaviour.leaky_failure = Some(401),
        Some(Fault::LeakyFailure) => behaviour.leaky_failure = Some(500),
        Some(Fault::HugeUsage) => behaviour.reported_usage = Some((u64::MAX, u64::MAX)),
        Some(Fault::HoldAfterDone) => behaviour.hold_after_done = true,
        Some(Fault::UnterminatedEvent) => behaviour.unterminated_event = Some(2 * 1024 * 1024),
        Some(Fault::InvalidEvent) => behaviour.invalid_event = true,
        Some(Fault::ResetMidStream) => behaviour.reset_mid_stream = true,
        Some(Fault::Hang) => behaviour.hang = true,
        None => {}
    }
    if behaviour.hang {
        std::future::pending::<()>().await;
    }
    if !behaviour.response_delay.is_zero() {
        tokio::time::sleep(behaviour.response_delay).await;
    }
    if let Some(status) = behaviour.fail_status {
        return scripted_failure(status);
    }
    if let Some(status) = behaviour.leaky_failure.filter(|_| parts.method == Method::POST) {
        return leaky_failure(status);
    }
    if let Some((marker, status)) = &behaviour.poisoned
        && contains(&recorded.raw_body, marker.as_bytes())
    {
        return scripted_failure(*status);
    }
    route(&shared, &behaviour, &parts.method, &recorded)
}

fn route(shared: &Arc<Shared>, behaviour: &Behaviour, method: &Method, request: &RecordedRequest) -> Response {
    if let Some(answer) = responses::route(shared, behaviour, method, request) {
        return answer;
    }
    let path = request.path.as_str();
    if *method == Method::GET {
        if path.ends_with("/health") {
            return axum::Json(json!({"status": "ok"})).into_response();
        }
        let models = &behaviour.models;
        if path.ends_with("/v1/models") {
            let data: Vec<Value> = models.iter().map(|id| model_entry(id)).collect();
            return axum::Json(json!({"object": "list", "data": data})).into_response();
        }
        if let Some((_, id)) = path.split_once("/v1/models/") {
            if models.iter().any(|model| model == id) {
                return axum::Json(model_entry(id)).into_response();
            }
            return error_response(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                &format!("The model `{id}` does not exist"),
            );
        }
    } else if *method == Method::POST {
        if let Some(response) = messages::answer(shared, behaviour, request) {
            return response;
        }
        let endpoint = if path.ends_with("/v1/chat/completions") {
            Some(Endpoint::Chat)
        } else if path.ends_with("/v1/completions") {
            Some(Endpoint::Completions)
        } else if path.ends_with("/v1/embeddings") {
            Some(Endpoint::Embeddings)
        } else {
            None
        };
        if let Some(endpoint) = endpoint {
            let Some(body) = request.body.as_ref().filter(|body| body.is_object()) else {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    None,
                    "the request body must be a JSON object",
                );
            };
            return match endpoint {
                Endpoint::Chat | Endpoint::Completions => generate(shared, behaviour, endpoint, body),
                Endpoint::Embeddings => embeddings(behaviour, body),
            };
        }
    }
    error_response(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        None,
        &format!("stub upstream: no route for {method} {path}"),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

fn model_entry(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "portcullis-testkit"})
}

fn model_of(body: &Value) -> String {
    body.get("model").and_then(Value::as_str).unwrap_or("stub-model").to_string()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

/// Whitespace-separated words in every string found under `value` (message contents, prompts).
fn word_count(value: &Value) -> usize {
    match value {
        Value::String(text) => text.split_whitespace().count(),
        Value::Array(items) => items.iter().map(word_count).sum(),
        Value::Object(fields) => fields
            .iter()
            .filter(|(key, _)| matches!(key.as_str(), "content" | "text"))
            .map(|(_, value)| word_count(value))
            .sum(),
        _ => 0,
    }
}

fn usage_json(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Chat and text completions, plain or streamed.
fn generate(shared: &Arc<Shared>, behaviour: &Behaviour, endpoint: Endpoint, body: &Value) -> Response {
    let model = model_of(body);
    let streamed = body.get("stream").and_then(Value::as_bool) == Some(true);
    let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
    let gate = if streamed { lock(&shared.behaviour).gate.take() } else { None };
    let b = behaviour;
    let (chunks, gap, omit_usage, ignore_max_tokens, reported_usage) =
        (b.stream_chunks, b.chunk_gap, b.omit_usage, b.ignore_max_tokens, b.reported_usage);
    // llama.cpp's order: `n_predict` wins over the OpenAI fields.
    let cap = body
        .get("n_predict")
        .or_else(|| body.get("max_completion_tokens"))
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .filter(|_| !ignore_max_tokens);
    let count = cap.map_or(chunks, |cap| chunks.min(usize::try_from(cap).unwrap_or(usize::MAX)));
    let finish_reason = if count < chunks { "length" } else { "stop" };
    let prompt = match endpoint {
        Endpoint::Chat => body.get("messages"),
        _ => body.get("prompt"),
    };
    let prompt_tokens = prompt.map_or(0, word_count).max(1);
    let usage = match reported_usage {
        Some((prompt, completion)) => {
            json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt.saturating_add(completion)})
        }
        None => usage_json(prompt_tokens, count),
    };
    let pieces = reply_pieces(&model, count);
    let number = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let created = unix_now();

    let (id, object, chunk_object) = match endpoint {
        Endpoint::Chat => (format!("chatcmpl-stub-{number}"), "chat.completion", "chat.completion.chunk"),
        _ => (format!("cmpl-stub-{number}"), "text_completion", "text_completion"),
    };
    let frame = |choices: Value| json!({"id": id, "object": chunk_object, "created": created, "model": model, "choices": choices});

    if !streamed {
        let choice = match endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": pieces.concat()},
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
            _ => json!({"index": 0, "text": pieces.concat(), "logprobs": null, "finish_reason": finish_reason}),
        };
        let mut reply = json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]});
        if !omit_usage {
            reply["usage"] = usage;
        }
        return axum::Json(reply).into_response();
    }

    let mut events: Vec<Value> = pieces
        .iter()
        .enumerate()
        .map(|(index, piece)| match endpoint {
            Endpoint::Chat => {
                let delta =
                    if index == 0 { json!({"role": "assistant", "content": piece}) } else { json!({"content": piece}) };
                frame(json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]))
            }
            _ => frame(json!([{"index": 0, "text": piece, "logprobs": null, "finish_reason": null}])),
        })
        .collect();
    events.push(match endpoint {
        Endpoint::Chat => frame(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish_reason}])),
        _ => frame(json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": finish_reason}])),
    });
    if include_usage && !omit_usage {
        let mut last = frame(json!([]));
        last["usage"] = usage;
        events.push(last);
    }
    let mut frames: Vec<Bytes> = events.iter().map(|event| Bytes::from(format!("data: {event}\n\n"))).collect();
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let mut ending = if behaviour.hold_after_done { StreamEnd::Hold } else { StreamEnd::Close };
    if let Some(bytes) = behaviour.unterminated_event {
        frames.truncate(1);
        let mut endless = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
        endless.resize(bytes, b'x');
        frames.extend(endless.chunks(64 * 1024).map(Bytes::copy_from_slice));
        ending = StreamEnd::Hold;
    } else if behaviour.invalid_event {
        frames.truncate(1);
        frames.push(Bytes::from_static(b"data: <html><body>upstream proxy error</body></html>\n\n"));
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    } else if behaviour.reset_mid_stream {
        frames.truncate(1);
        ending = StreamEnd::Fail;
    }
    sse_response(Arc::clone(shared), frames, gap, gate, ending)
}

/// What a streamed reply does after its last frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// Ends the body.
    Close,
    /// Neither ends it nor closes the connection.
    Hold,
    /// Fails the body: the connection is cut without the chunked terminator.
    Fail,
}

/// What the body stream of one streamed reply carries from one event to the next.
struct StreamState {
    frames: std::vec::IntoIter<Bytes>,
    sent: usize,
    gap: Duration,
    gate: Option<Arc<Gate>>,
    shared: Arc<Shared>,
    /// The scripted failure was sent.
    failed: bool,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        if self.frames.len() > 0 {
            self.shared.streams_abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn sse_response(
    shared: Arc<Shared>,
    frames: Vec<Bytes>,
    gap: Duration,
    gate: Option<Arc<Gate>>,
    ending: StreamEnd,
) -> Response {
    let state = StreamState { frames: frames.into_iter(), sent: 0, gap, gate, shared, failed: false };
    let stream = futures_util::stream::unfold(state, move |mut state| async move {
        let Some(frame) = state.frames.next() else {
            match ending {
                StreamEnd::Close => return None,
                StreamEnd::Hold => return std::future::pending().await,
                StreamEnd::Fail if !state.failed => {
                    state.failed = true;
                    // hyper would drop frames still in its write buffer with the connection:
                    // what was sent must have left first.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Some((Err(std::io::Error::other("stub upstream: scripted reset")), state));
                }
                StreamEnd::Fail => return None,
            }
        };
        if state.sent > 0 {
            if let (1, Some(gate)) = (state.sent, state.gate.as_ref()) {
                gate.released.notified().await;
            }
            if !state.gap.is_zero() {
                tokio::time::sleep(state.gap).await;
            }
        }
        state.sent += 1;
        state.shared.chunks_sent.fetch_add(1, Ordering::SeqCst);
        if let (1, Some(gate)) = (state.sent, state.gate.as_ref()) {
            gate.first_sent.store(true, Ordering::SeqCst);
        }
        Some((Ok::<Bytes, std::io::Error>(frame), state))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn embeddings(behaviour: &Behaviour, body: &Value) -> Response {
    let model = model_of(body);
    let inputs: Vec<Value> = match body.get("input") {
        Some(Value::String(text)) => vec![Value::String(text.clone())],
        // An array of strings or of token arrays; a flat array of token ids is one input.
        Some(Value::Array(items)) if items.iter().all(Value::is_number) && !items.is_empty() => {
            vec![Value::Array(items.clone())]
        }
        Some(Value::Array(items)) if !items.is_empty() => items.clone(),
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                "`input` must be a string or a non-empty array",
            );
        }
    };
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let omit_usage = behaviour.omit_usage;
    let mut prompt_tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            prompt_tokens += match input {
                Value::Array(tokens) if tokens.iter().all(Value::is_number) => tokens.len(),
                other => word_count(other).max(1),
            };
            let vector = embedding_of(&input.to_string());
            let embedding = if base64 { Value::String(base64_f32(&vector)) } else { json!(vector) };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let mut reply = json!({"object": "list", "data": data, "model": model});
    if !omit_usage {
        reply["usage"] = json!({"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens});
    }
    axum::Json(reply).into_response()
}

/// A deterministic unit-length vector derived from the text (FNV-1a per dimension).
pub fn embedding_of(text: &str) -> Vec<f32> {
    let raw: Vec<f32> = (0..EMBEDDING_DIMENSIONS)
        .map(|dimension| {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ dimension as u64;
            for byte in text.bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
            // The top 24 bits map exactly onto an f32 in [-1, 1).
            ((hash >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect();
    let norm = raw.iter().map(|value| value * value).sum::<f32>().sqrt();
    if norm == 0.0 { raw } else { raw.iter().map(|value| value / norm).collect() }
}

/// Little-endian `f32`s in standard base64, as OpenAI sends `encoding_format: "base64"`.
fn base64_f32(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector.iter().flat_map(|value| value.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], group.get(1).copied().unwrap_or(0), group.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (position, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if position <= group.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn scripted_failure(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        400 | 404 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        _ => "server_error",
    };
    let message = format!("stub upstream: scripted failure with status {}", status.as_u16());
    let mut response = error_response(status, kind, Some("stub_failure"), &message);
    if matches!(status.as_u16(), 429 | 503) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Secrets a leaky failure shows; a gateway must keep every one of them from its clients.
pub const LEAKED_SECRETS: [&str; 4] =
    ["sk-leaked0123456789abcdefghij", "postgres://admin:hunter2@db.internal", "session=s3cr3t", "gpu-node-7.internal"];

fn leaky_failure(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = format!(
        "<html><body><h1>Internal Server Error</h1><pre>OPENAI_API_KEY={}\nDATABASE_URL={}\nhost={}</pre></body></html>",
        LEAKED_SECRETS[0], LEAKED_SECRETS[1], LEAKED_SECRETS[3]
    );
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    headers.insert(header::SET_COOKIE, HeaderValue::from_static("session=s3cr3t; Path=/"));
    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"gpu-node-7.internal\""));
    headers.insert("x-upstream-host", HeaderValue::from_static("gpu-node-7.internal"));
    response
}

/// A proxy's error page sent with `200 OK`, as a misconfigured load balancer in front of a model
/// server does.
fn html_page() -> Response {
    let mut response = "<html><body><h1>Welcome</h1><p>Service temporarily rerouted.</p></body></html>".into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

fn error_response(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "code": code, "param": null}});
    (status, axum::Json(body)).into_response()
}

mod messages;
mod responses;
#[cfg(test)]
mod tests;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|window| window == needle)
}
