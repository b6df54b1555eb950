//! Active health checks: failing endpoints leave rotation, and the checks stop with their
//! `Upstreams`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use common::*;
use portcullis_types::Secret;
use portcullis_upstream::{HealthCheck, RouteSpec, Upstreams};

/// A model server whose health endpoint answers `health` and counts its checks (and the
/// credential they carry); its completions answer "ok".
async fn server(
    health: StatusCode,
    checks: Arc<AtomicUsize>,
    auth_seen: Arc<std::sync::Mutex<Option<String>>>,
) -> std::net::SocketAddr {
    let router = Router::new()
        .route(
            "/health",
            get(move |headers: HeaderMap| {
                let checks = Arc::clone(&checks);
                let auth_seen = Arc::clone(&auth_seen);
                async move {
                    checks.fetch_add(1, Ordering::SeqCst);
                    let auth = headers.get("authorization").and_then(|value| value.to_str().ok()).map(str::to_string);
                    if let Ok(mut seen) = auth_seen.lock() {
                        *seen = auth;
                    }
                    health
                }
            }),
        )
        .route("/v1/chat/completions", post(|| async { "ok" }));
    serve(router).await
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(condition(), "timed out waiting until {what}");
}

#[tokio::test]
async fn an_endpoint_failing_its_health_check_leaves_rotation_and_checks_stop_on_drop() {
    let sick_checks = Arc::new(AtomicUsize::new(0));
    let well_checks = Arc::new(AtomicUsize::new(0));
    let auth_seen = Arc::new(std::sync::Mutex::new(None));
    let sick = server(StatusCode::SERVICE_UNAVAILABLE, Arc::clone(&sick_checks), Arc::default()).await;
    let well = server(StatusCode::OK, Arc::clone(&well_checks), Arc::clone(&auth_seen)).await;
    let upstreams = Upstreams::new(&[RouteSpec {
        api_key: Some(Secret::new("sk-health".into())),
        retries: 0,
        health_check: HealthCheck {
            enabled: true,
            path: "/health".into(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
        },
        ..route("m", &[format!("http://{sick}"), format!("http://{well}")])
    }]);

    eventually("the sick endpoint is out of rotation", || {
        let states = upstreams.endpoint_states();
        !states[0].healthy && states[1].healthy
    })
    .await;
    assert_eq!(auth_seen.lock().unwrap().as_deref(), Some("Bearer sk-health"));
    // With no retries, a request sent to the sick endpoint would fail: none is.
    for _ in 0..6 {
        let response = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
        assert_eq!(response.endpoint, format!("http://{well}"));
    }
    eventually("checks have repeated", || well_checks.load(Ordering::SeqCst) >= 3).await;

    drop(upstreams);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after_drop = (sick_checks.load(Ordering::SeqCst), well_checks.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((sick_checks.load(Ordering::SeqCst), well_checks.load(Ordering::SeqCst)), after_drop);
}

#[tokio::test]
async fn a_recovered_endpoint_returns_to_rotation() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&healthy);
    let router = Router::new().route(
        "/v1/models",
        get(move || {
            let flag = Arc::clone(&flag);
            async move { if flag.load(Ordering::SeqCst) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE } }
        }),
    );
    let addr = serve(router).await;
    let mut spec = route("m", &[format!("http://{addr}")]);
    spec.health_check = HealthCheck { enabled: true, interval: Duration::from_millis(100), ..spec.health_check };
    let upstreams = Upstreams::new(&[spec]);

    eventually("it is out of rotation", || !upstreams.endpoint_states()[0].healthy).await;
    healthy.store(true, Ordering::SeqCst);
    eventually("it is back", || upstreams.endpoint_states()[0].healthy).await;
}
