//! Shared helpers for the integration tests: small axum model servers on 127.0.0.1:0, a
//! refused address, model routes, and body reading.
// Not every test file uses every helper; helpers fail like assertions do.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use http_body_util::BodyExt;
use portcullis_upstream::{
    ForwardRequest, HealthCheck, RouteSpec, RouteTimeouts, UpstreamBody, UpstreamBodyError, Upstreams,
};

/// A route of model `name` to `endpoints` with the values a `[[models]]` table gets by default
/// (docs/configuration.md), except active health checks, which are off: a test turns on what it
/// exercises.
pub fn route(name: &str, endpoints: &[String]) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        upstream_model: name.into(),
        endpoints: endpoints.iter().map(|endpoint| endpoint.parse().unwrap()).collect(),
        api_key: None,
        max_concurrent: None,
        queue_timeout: Duration::from_secs(2),
        queue_size: 64,
        timeouts: RouteTimeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(600),
        },
        health_check: HealthCheck {
            enabled: false,
            path: "/v1/models".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        },
        ejection_failures: 3,
        ejection_duration: Duration::from_secs(30),
        retries: 1,
        fallbacks: Vec::new(),
    }
}

/// Serves `router` on a fresh local port until the test's runtime ends.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// An address nothing listens on: bound, then released, so connecting is refused.
pub async fn refused_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

/// What a model server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A model server that records every request and answers each with the same status and body.
#[derive(Clone, Default)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("no request seen")
    }

    /// Starts a server answering `POST {path}` with `status` and `text`, plus an `x-upstream`
    /// header.
    pub async fn start(&self, path: &str, status: StatusCode, text: &'static str) -> SocketAddr {
        let handler = move |State(recorder): State<Recorder>, uri: Uri, headers: HeaderMap, body: Bytes| async move {
            recorder.seen.lock().unwrap().push(Seen { path: uri.path().to_string(), headers, body });
            (status, [("x-upstream", "1")], text).into_response()
        };
        serve(Router::new().route(path, post(handler)).with_state(self.clone())).await
    }
}

/// A chat completion request for `model` with the given client headers.
pub fn request(model: &str, headers: HeaderMap) -> ForwardRequest {
    ForwardRequest {
        method: http::Method::POST,
        model: model.to_string(),
        path: "/v1/chat/completions".to_string(),
        headers,
        body: Bytes::from(format!(r#"{{"model": "{model}",  "messages": [{{"role": "user", "content": "hi"}}]}}"#)),
        priority: 0,
    }
}

pub fn anyone(_: &str) -> bool {
    true
}

/// Reads a whole body.
pub async fn read_all(body: UpstreamBody) -> Result<Bytes, UpstreamBodyError> {
    Ok(body.collect().await?.to_bytes())
}

/// The next data frame, failing the test if none comes within five seconds.
pub async fn next_frame(body: &mut std::pin::Pin<Box<UpstreamBody>>) -> Option<Result<Bytes, UpstreamBodyError>> {
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.expect("no frame within 5s");
    frame.map(|result| result.map(|frame| frame.into_data().expect("a data frame")))
}

/// Total outstanding requests of a model's endpoints.
pub fn outstanding(upstreams: &Upstreams, model: &str) -> u64 {
    upstreams.endpoint_states().iter().filter(|state| state.model == model).map(|state| state.outstanding).sum()
}
