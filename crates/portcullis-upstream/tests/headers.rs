//! What crosses the gateway: the model's credential instead of the client's, untouched bodies,
//! endpoint path prefixes, and end-to-end headers both ways.

mod common;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use common::*;
use portcullis_types::Secret;
use portcullis_upstream::{ForwardRequest, RouteSpec, Upstreams};

#[tokio::test]
async fn the_api_key_is_sent_as_bearer_and_client_credentials_are_never_forwarded() {
    let server = Recorder::default();
    let addr = server.start("/llama/v1/chat/completions", StatusCode::OK, "ok").await;
    let upstreams = Upstreams::new(&[RouteSpec {
        api_key: Some(Secret::new("sk-upstream-secret".into())),
        ..route("m", &[format!("http://{addr}/llama/")])
    }]);
    let mut client = HeaderMap::new();
    for (name, value) in [
        ("authorization", "Bearer pcl_client_key"),
        ("x-api-key", "pcl_client_key"),
        ("cookie", "session=abc"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("content-type", "application/json"),
        ("x-request-id", "req-42"),
        ("connection", "x-hop"),
        ("x-hop", "1"),
    ] {
        client.insert(name, HeaderValue::from_static(value));
    }
    let request = request("m", client);
    let original = request.body.clone();

    let response = upstreams.forward(request, &anyone, &Default::default()).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.headers.get("x-upstream").unwrap(), "1", "end-to-end response headers pass");
    assert_eq!(response.endpoint, format!("http://{addr}/llama"));
    assert!(!format!("{response:?}").contains("sk-upstream-secret"));
    drop(response);

    let seen = server.last();
    assert_eq!(seen.path, "/llama/v1/chat/completions", "the endpoint's path prefix is kept");
    assert_eq!(seen.headers.get("authorization").unwrap(), "Bearer sk-upstream-secret");
    assert_eq!(seen.headers.get_all("authorization").iter().count(), 1);
    for dropped in ["x-api-key", "cookie", "proxy-authorization", "x-hop"] {
        assert!(seen.headers.get(dropped).is_none(), "{dropped} was forwarded");
    }
    assert_eq!(seen.headers.get("x-request-id").unwrap(), "req-42");
    assert_eq!(seen.headers.get("content-type").unwrap(), "application/json");
    assert_eq!(seen.headers.get("host").unwrap().to_str().unwrap(), addr.to_string());
    assert_eq!(seen.headers.get("content-length").unwrap().to_str().unwrap(), original.len().to_string());
    assert_eq!(seen.body, original, "same model name: the client's bytes, whitespace and all");
}

#[tokio::test]
async fn without_an_api_key_no_authorization_is_sent() {
    let server = Recorder::default();
    let addr = server.start("/v1/embeddings", StatusCode::OK, "ok").await;
    let upstreams = Upstreams::new(&[RouteSpec {
        upstream_model: "nomic-embed".into(),
        ..route("m", &[format!("http://{addr}")])
    }]);
    let mut client = HeaderMap::new();
    client.insert("authorization", HeaderValue::from_static("Bearer pcl_client_key"));
    let request = ForwardRequest {
        method: http::Method::POST,
        model: "m".into(),
        path: "/v1/embeddings".into(),
        headers: client,
        body: Bytes::from_static(br#"{"model":"m","input":"hello"}"#),
        priority: 0,
    };

    let response = upstreams.forward(request, &anyone, &Default::default()).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let seen = server.last();
    assert!(seen.headers.get("authorization").is_none());
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["model"], "nomic-embed");
    assert_eq!(body["input"], "hello");
}

#[tokio::test]
async fn views_and_states_describe_every_endpoint_in_configured_order() {
    let upstreams = Upstreams::new(&[
        RouteSpec {
            upstream_model: "B-upstream".into(),
            fallbacks: vec!["a".into()],
            api_key: Some(Secret::new("sk-never-shown".into())),
            ..route("b", &["http://10.0.0.1:8000/".into(), "https://models.example/prefix".into()])
        },
        route("a", &["http://10.0.0.2:8000".into()]),
    ]);
    assert_eq!(upstreams.model_names().collect::<Vec<_>>(), ["b", "a"]);
    assert!(upstreams.contains("a") && upstreams.contains("b"));
    let views = upstreams.statuses();
    assert_eq!(views[0].upstream_model, "B-upstream");
    assert_eq!(views[0].fallbacks, ["a"]);
    let urls: Vec<&str> = views[0].endpoints.iter().map(|endpoint| endpoint.url.as_str()).collect();
    assert_eq!(urls, ["http://10.0.0.1:8000", "https://models.example/prefix"]);
    assert!(views[0].endpoints.iter().all(|endpoint| endpoint.healthy && endpoint.outstanding == 0));
    let states = upstreams.endpoint_states();
    assert_eq!(states.len(), 3);
    assert_eq!((states[2].model.as_str(), states[2].url.as_str()), ("a", "http://10.0.0.2:8000"));
    assert!(!format!("{upstreams:?}").contains("sk-never-shown"));
}

/// The server puts `forward` in axum handlers (a `Send` future) and wraps the body in
/// `axum::body::Body::new`; both must keep compiling.
#[test]
fn the_forward_future_is_send_and_the_body_fits_axum() {
    fn assert_send<T: Send>(_: &T) {}
    fn into_axum(body: portcullis_upstream::UpstreamBody) -> axum::body::Body {
        axum::body::Body::new(body)
    }
    // Also: building outside a runtime works (health checks are skipped, not a panic).
    let mut spec = route("m", &["https://models.example".into()]);
    spec.health_check.enabled = true;
    let upstreams = Upstreams::new(&[spec]);
    let sent = std::sync::atomic::AtomicBool::default();
    let future = upstreams.forward(request("m", HeaderMap::new()), &anyone, &sent);
    assert_send(&future);
    let _ = into_axum;
}
