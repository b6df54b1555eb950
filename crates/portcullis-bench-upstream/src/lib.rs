//! A fake OpenAI-compatible model server for the benchmark harness (`bench/`).
//!
//! Every answer is rendered once at start-up and served as shared [`Bytes`], so a request costs
//! an HTTP parse, a tiny JSON parse of the request (to find `stream` and
//! `stream_options.include_usage`) and a write: the upstream is never what a benchmark measures.
//!
//! Routes: `POST /v1/chat/completions` and `/v1/completions` (plain JSON with `usage`, or with
//! `stream: true` an SSE stream of `chunks` content events `gap` apart, a usage event when
//! `stream_options.include_usage` is true, then `data: [DONE]`), `POST /v1/embeddings`,
//! `GET /v1/models`, `GET /v1/models/{id}` and `GET /health`; with an [`Issuer`], also its OIDC
//! discovery document and JWKS, so that the gateway can be benchmarked with JWT authentication.

mod issuer;

pub use issuer::Issuer;

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

/// Fixed timestamp in every answer: the bytes never change, so they are rendered once.
const CREATED: u64 = 1_700_000_000;
/// Prompt tokens reported in every `usage`.
pub const PROMPT_TOKENS: u64 = 8;
/// Largest request body read; bigger ones get 413 (a benchmark sends small bodies).
const MAX_BODY: usize = 1 << 20;

/// What the server answers with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Content events in a streamed answer (and words in a plain one).
    pub chunks: usize,
    /// Pause before each content event after the first.
    pub gap: Duration,
    /// The `model` named in answers and listed by `/v1/models`.
    pub model: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { chunks: 16, gap: Duration::ZERO, model: "bench".to_string() }
    }
}

/// A complete SSE answer: the events in order; the first `content` are content events (the gap
/// applies between them), the rest (usage, `[DONE]`) follow at once.
#[derive(Debug)]
struct Stream {
    events: Arc<[Bytes]>,
    content: usize,
}

#[derive(Debug)]
struct Kind {
    plain: Bytes,
    stream: Stream,
    stream_with_usage: Stream,
}

#[derive(Debug)]
struct IssuerDocuments {
    discovery: Bytes,
    jwks: Bytes,
}

/// Every answer, rendered once.
#[derive(Debug)]
pub struct Responses {
    chat: Kind,
    completion: Kind,
    embeddings: Bytes,
    models: Bytes,
    model: Bytes,
    health: Bytes,
    not_found: Bytes,
    bad_request: Bytes,
    too_large: Bytes,
    gap: Duration,
    /// The discovery document and the key set of a token issuer, when one is served.
    issuer: Option<IssuerDocuments>,
}

impl Responses {
    /// Serves `issuer`'s discovery document and key set as well.
    pub fn with_issuer(self, issuer: &Issuer) -> Responses {
        Responses { issuer: Some(IssuerDocuments { discovery: issuer.discovery(), jwks: issuer.jwks() }), ..self }
    }

    fn issuer_document(&self, path: &str) -> Option<&Bytes> {
        let documents = self.issuer.as_ref()?;
        match path {
            issuer::DISCOVERY_PATH => Some(&documents.discovery),
            issuer::JWKS_PATH => Some(&documents.jwks),
            _ => None,
        }
    }

    pub fn render(settings: &Settings) -> Responses {
        let model = settings.model.as_str();
        let chunks = settings.chunks;
        let usage = json!({
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": chunks,
            "total_tokens": PROMPT_TOKENS + chunks as u64,
        });
        let word = |index: usize| if index == 0 { "Hello".to_string() } else { format!(" w{index}") };
        let text: String = (0..chunks).map(word).collect();
        let finish = |index: usize| if index + 1 == chunks { json!("stop") } else { serde_json::Value::Null };

        let chat_plain = json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "finish_reason": "stop",
            }],
            "usage": usage,
        });
        let chat_events: Vec<serde_json::Value> = (0..chunks)
            .map(|index| {
                let delta = if index == 0 {
                    json!({ "role": "assistant", "content": word(index) })
                } else {
                    json!({ "content": word(index) })
                };
                json!({
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "created": CREATED,
                    "model": model,
                    "choices": [{ "index": 0, "delta": delta, "finish_reason": finish(index) }],
                })
            })
            .collect();
        let chat_usage = json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [],
            "usage": usage,
        });

        let completion_plain = json!({
            "id": "cmpl-bench",
            "object": "text_completion",
            "created": CREATED,
            "model": model,
            "choices": [{ "index": 0, "text": text, "logprobs": null, "finish_reason": "stop" }],
            "usage": usage,
        });
        let completion_events: Vec<serde_json::Value> = (0..chunks)
            .map(|index| {
                json!({
                    "id": "cmpl-bench",
                    "object": "text_completion",
                    "created": CREATED,
                    "model": model,
                    "choices": [{ "index": 0, "text": word(index), "logprobs": null, "finish_reason": finish(index) }],
                })
            })
            .collect();
        let completion_usage = json!({
            "id": "cmpl-bench",
            "object": "text_completion",
            "created": CREATED,
            "model": model,
            "choices": [],
            "usage": usage,
        });

        let embedding: Vec<f32> = (0..16).map(|index| index as f32 / 16.0).collect();
        let embeddings = json!({
            "object": "list",
            "data": [{ "object": "embedding", "index": 0, "embedding": embedding }],
            "model": model,
            "usage": { "prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS },
        });
        let model_object =
            json!({ "id": model, "object": "model", "created": CREATED, "owned_by": "portcullis-bench" });
        let models = json!({ "object": "list", "data": [model_object] });

        Responses {
            chat: kind(&chat_plain, &chat_events, &chat_usage),
            completion: kind(&completion_plain, &completion_events, &completion_usage),
            embeddings: Bytes::from(embeddings.to_string()),
            models: Bytes::from(models.to_string()),
            model: Bytes::from(model_object.to_string()),
            health: Bytes::from_static(br#"{"status":"ok"}"#),
            not_found: error_body("not found", "not_found"),
            bad_request: error_body("the body is not a JSON object", "invalid_request"),
            too_large: error_body("the body is too large", "request_too_large"),
            gap: settings.gap,
            issuer: None,
        }
    }
}

fn kind(plain: &serde_json::Value, events: &[serde_json::Value], usage: &serde_json::Value) -> Kind {
    let event = |value: &serde_json::Value| Bytes::from(format!("data: {value}\n\n"));
    let done = Bytes::from_static(b"data: [DONE]\n\n");
    let content: Vec<Bytes> = events.iter().map(event).collect();
    let mut with_usage = content.clone();
    with_usage.push(event(usage));
    with_usage.push(done.clone());
    let mut without = content;
    without.push(done);
    Kind {
        plain: Bytes::from(plain.to_string()),
        stream: Stream { events: without.into(), content: events.len() },
        stream_with_usage: Stream { events: with_usage.into(), content: events.len() },
    }
}

fn error_body(message: &str, code: &str) -> Bytes {
    Bytes::from(
        json!({ "error": { "message": message, "type": "invalid_request_error", "code": code, "param": null } })
            .to_string(),
    )
}

/// The body of every answer: a whole pre-rendered buffer, or an SSE stream of pre-rendered events.
#[derive(Debug)]
pub enum BenchBody {
    Full(Option<Bytes>),
    Events(EventBody),
}

/// Yields pre-rendered events one frame each, sleeping `gap` before each content event after the first.
#[derive(Debug)]
pub struct EventBody {
    events: Arc<[Bytes]>,
    content: usize,
    next: usize,
    gap: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for BenchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            BenchBody::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            BenchBody::Events(events) => events.poll_event(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BenchBody::Full(bytes) => bytes.is_none(),
            BenchBody::Events(events) => events.next >= events.events.len(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BenchBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            BenchBody::Full(None) => SizeHint::with_exact(0),
            BenchBody::Events(_) => SizeHint::default(),
        }
    }
}

impl EventBody {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(event) = self.events.get(self.next) else {
            return Poll::Ready(None);
        };
        if self.next > 0 && self.next < self.content && !self.gap.is_zero() {
            let gap = self.gap;
            let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let event = event.clone();
        self.next += 1;
        Poll::Ready(Some(Ok(Frame::data(event))))
    }
}

#[derive(Debug, Deserialize)]
struct Flags {
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Answers one request.
pub async fn handle(request: Request<Incoming>, responses: Arc<Responses>) -> Result<Response<BenchBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let answer = match (&parts.method, path) {
        (&Method::POST, "/v1/chat/completions") => generate(body, &responses.chat, &responses).await,
        (&Method::POST, "/v1/completions") => generate(body, &responses.completion, &responses).await,
        (&Method::POST, "/v1/embeddings") => match read_body(body).await {
            Ok(_) => json_response(StatusCode::OK, &responses.embeddings),
            Err(status) => error_response(status, &responses),
        },
        (&Method::GET, "/v1/models") => json_response(StatusCode::OK, &responses.models),
        (&Method::GET, path) if path.starts_with("/v1/models/") => json_response(StatusCode::OK, &responses.model),
        (&Method::GET, "/health" | "/healthz") => json_response(StatusCode::OK, &responses.health),
        (&Method::GET, path) => match responses.issuer_document(path) {
            Some(document) => json_response(StatusCode::OK, document),
            None => json_response(StatusCode::NOT_FOUND, &responses.not_found),
        },
        _ => json_response(StatusCode::NOT_FOUND, &responses.not_found),
    };
    Ok(answer)
}

async fn generate(body: Incoming, kind: &Kind, responses: &Responses) -> Response<BenchBody> {
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(status) => return error_response(status, responses),
    };
    let Ok(flags) = serde_json::from_slice::<Flags>(&bytes) else {
        return error_response(StatusCode::BAD_REQUEST, responses);
    };
    if !flags.stream.unwrap_or(false) {
        return json_response(StatusCode::OK, &kind.plain);
    }
    let include_usage = flags.stream_options.and_then(|options| options.include_usage).unwrap_or(false);
    let stream = if include_usage { &kind.stream_with_usage } else { &kind.stream };
    let body = BenchBody::Events(EventBody {
        events: Arc::clone(&stream.events),
        content: stream.content,
        next: 0,
        gap: responses.gap,
        sleep: None,
    });
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn read_body(body: Incoming) -> Result<Bytes, StatusCode> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(StatusCode::PAYLOAD_TOO_LARGE),
        Err(_) => Err(StatusCode::BAD_REQUEST),
    }
}

fn json_response(status: StatusCode, body: &Bytes) -> Response<BenchBody> {
    let mut response = Response::new(BenchBody::Full(Some(body.clone())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(status: StatusCode, responses: &Responses) -> Response<BenchBody> {
    let body = if status == StatusCode::PAYLOAD_TOO_LARGE { &responses.too_large } else { &responses.bad_request };
    json_response(status, body)
}

/// Binds `addr` with a deep accept backlog (thousands of connections may arrive at once).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serves HTTP/1.1 (keep-alive) on `listener` until the process ends.
pub async fn serve(listener: TcpListener, responses: Arc<Responses>) {
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: say so and try again shortly.
                let _ = writeln!(std::io::stderr(), "portcullis-bench-upstream: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let responses = Arc::clone(&responses);
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, Arc::clone(&responses)));
            // A client that goes away mid-answer is normal under load; nothing to report.
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
