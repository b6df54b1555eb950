//! Retries on other endpoints, fallback models, and the errors when nothing can serve.

mod common;

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use portcullis_types::Secret;
use portcullis_upstream::{AttemptError, ClientError, LastFailure, RouteSpec, UpstreamError, Upstreams};

const PATH: &str = "/v1/chat/completions";

#[tokio::test]
async fn fails_over_from_a_refused_endpoint_to_a_working_one() {
    let refused = refused_addr().await;
    let working = Recorder::default();
    let addr = working.start(PATH, StatusCode::OK, "ok").await;
    let upstreams = Upstreams::new(&[route("m", &[format!("http://{refused}"), format!("http://{addr}")])]);

    for _ in 0..4 {
        let response = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.endpoint, format!("http://{addr}"));
        assert_eq!(read_all(response.body).await.unwrap(), "ok");
    }
    assert_eq!(working.hits(), 4);
    assert_eq!(outstanding(&upstreams, "m"), 0);
}

#[tokio::test]
async fn a_503_is_retried_on_the_other_endpoint() {
    let loading = Recorder::default();
    let loading_addr = loading.start(PATH, StatusCode::SERVICE_UNAVAILABLE, "loading model").await;
    let ready = Recorder::default();
    let ready_addr = ready.start(PATH, StatusCode::OK, "answer").await;
    let upstreams = Upstreams::new(&[route("m", &[format!("http://{loading_addr}"), format!("http://{ready_addr}")])]);

    // A fresh pool starts its scan at the first endpoint, so the 503 comes first.
    let response = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(read_all(response.body).await.unwrap(), "answer");
    assert_eq!((loading.hits(), ready.hits()), (1, 1));
    assert_eq!(outstanding(&upstreams, "m"), 0, "the set-aside 503 released its slot too");
}

#[tokio::test]
async fn the_last_503_is_passed_through_when_nothing_is_left_to_try() {
    let first = Recorder::default();
    let first_addr = first.start(PATH, StatusCode::SERVICE_UNAVAILABLE, "loading").await;
    let second = Recorder::default();
    let second_addr = second.start(PATH, StatusCode::BAD_GATEWAY, "bad gateway").await;
    let endpoints = [format!("http://{first_addr}"), format!("http://{second_addr}")];
    let upstreams = Upstreams::new(&[RouteSpec { retries: 5, ..route("m", &endpoints) }]);

    let response = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    assert_eq!(response.status, StatusCode::BAD_GATEWAY, "the most recent retryable response");
    assert_eq!(response.headers.get("x-upstream").unwrap(), "1");
    assert_eq!(read_all(response.body).await.unwrap(), "bad gateway");
    assert_eq!((first.hits(), second.hits()), (1, 1), "each endpoint tried once, retries notwithstanding");
    assert_eq!(outstanding(&upstreams, "m"), 0);
}

#[tokio::test]
async fn client_errors_are_returned_as_is_without_retrying() {
    let rejecting = Recorder::default();
    let rejecting_addr = rejecting.start(PATH, StatusCode::BAD_REQUEST, "bad request").await;
    let other = Recorder::default();
    let other_addr = other.start(PATH, StatusCode::OK, "ok").await;
    let upstreams =
        Upstreams::new(&[route("m", &[format!("http://{rejecting_addr}"), format!("http://{other_addr}")])]);

    let response = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert_eq!(read_all(response.body).await.unwrap(), "bad request");
    assert_eq!(other.hits(), 0);
}

fn with_fallback(primary: std::net::SocketAddr, backup: std::net::SocketAddr) -> Upstreams {
    Upstreams::new(&[
        RouteSpec { fallbacks: vec!["backup".into()], ..route("primary", &[format!("http://{primary}")]) },
        RouteSpec {
            upstream_model: "Backup-7B-Instruct".into(),
            api_key: Some(Secret::new("backup-upstream-key".into())),
            ..route("backup", &[format!("http://{backup}")])
        },
    ])
}

#[tokio::test]
async fn a_fallback_model_serves_when_the_primary_pool_fails() {
    let refused = refused_addr().await;
    let backup = Recorder::default();
    let backup_addr = backup.start(PATH, StatusCode::OK, "from backup").await;
    let upstreams = with_fallback(refused, backup_addr);

    let response = upstreams.forward(request("primary", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.model, "backup");
    assert_eq!(read_all(response.body).await.unwrap(), "from backup");

    let seen = backup.last();
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["model"], "Backup-7B-Instruct", "the fallback's upstream name is sent");
    assert_eq!(body["messages"][0]["content"], "hi");
    assert_eq!(seen.headers.get("authorization").unwrap(), "Bearer backup-upstream-key");
}

#[tokio::test]
async fn a_fallback_the_caller_may_not_use_is_skipped() {
    let refused = refused_addr().await;
    let backup = Recorder::default();
    let backup_addr = backup.start(PATH, StatusCode::OK, "from backup").await;
    let upstreams = with_fallback(refused, backup_addr);

    let only_primary = |name: &str| name == "primary";
    let error =
        upstreams.forward(request("primary", HeaderMap::new()), &only_primary, &Default::default()).await.unwrap_err();
    match &error {
        UpstreamError::Unavailable { model, attempts, last } => {
            assert_eq!(model, "primary");
            assert_eq!(*attempts, 1);
            assert!(
                matches!(last, LastFailure::Attempt { endpoint, source: AttemptError::Failed(ClientError::Connect(_)) }
                    if endpoint.contains(&refused.to_string())),
                "{last:?}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(!portcullis_types::chain(&error).to_string().contains("backup-upstream-key"));
    assert_eq!(backup.hits(), 0);
}

#[tokio::test]
async fn a_first_byte_timeout_is_not_retried() {
    let slow = Router::new().route(
        PATH,
        post(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let slow_addr = serve(slow).await;
    let fast = Recorder::default();
    let fast_addr = fast.start(PATH, StatusCode::OK, "ok").await;
    let mut spec = route("m", &[format!("http://{slow_addr}"), format!("http://{fast_addr}")]);
    spec.timeouts.first_byte = Duration::from_millis(200);
    let upstreams = Upstreams::new(&[spec]);

    let started = std::time::Instant::now();
    let error = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap_err();
    assert!(
        matches!(&error, UpstreamError::Timeout { endpoint, waited, .. }
            if *endpoint == format!("http://{slow_addr}") && *waited == Duration::from_millis(200)),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(fast.hits(), 0);
    assert_eq!(outstanding(&upstreams, "m"), 0);
}

#[tokio::test]
async fn every_endpoint_at_max_concurrent_is_overloaded_not_unavailable() {
    let addr = serve(stalling_stream()).await;
    let upstreams = Upstreams::new(&[RouteSpec {
        max_concurrent: Some(1),
        queue_size: 0,
        queue_timeout: Duration::from_secs(3),
        ..route("m", &[format!("http://{addr}")])
    }]);

    let holding = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    let started = std::time::Instant::now();
    let error = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "without a queue the request is shed at once");
    assert!(matches!(error, UpstreamError::Overloaded { retry_after_secs: 3 }), "{error:?}");
    drop(holding);
    let again = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    assert_eq!(again.status, StatusCode::OK);
}

#[tokio::test]
async fn an_unknown_model_is_reported_as_such() {
    let upstreams = Upstreams::new(&[]);
    let error = upstreams.forward(request("nope", HeaderMap::new()), &anyone, &Default::default()).await.unwrap_err();
    assert!(matches!(error, UpstreamError::UnknownModel));
    assert!(!upstreams.contains("nope"));
}

#[tokio::test]
async fn repeated_failures_eject_an_endpoint_so_later_requests_skip_it() {
    let broken = Recorder::default();
    let broken_addr = broken.start(PATH, StatusCode::SERVICE_UNAVAILABLE, "down").await;
    let working = Recorder::default();
    let working_addr = working.start(PATH, StatusCode::OK, "ok").await;
    let upstreams = Upstreams::new(&[RouteSpec {
        ejection_failures: 2,
        ejection_duration: Duration::from_secs(60),
        ..route("m", &[format!("http://{broken_addr}"), format!("http://{working_addr}")])
    }]);

    for _ in 0..10 {
        let response = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
    }
    assert_eq!(broken.hits(), 2, "out of rotation after its second failure");
    let states = upstreams.endpoint_states();
    assert!(!states[0].healthy && states[1].healthy, "{states:?}");
}

/// A server whose streamed answer sends one chunk and then never another.
fn stalling_stream() -> Router {
    Router::new().route(
        PATH,
        post(|| async {
            let stream = futures_util::stream::unfold(false, |sent| async move {
                if sent {
                    std::future::pending::<()>().await;
                }
                Some((Ok::<_, std::convert::Infallible>("data: 1\n\n"), true))
            });
            axum::body::Body::from_stream(stream)
        }),
    )
}
