//! The streamed relay: frames arrive as the upstream sends them, stalls are cut, and a dropped
//! body frees its slot and cancels the upstream request.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::routing::post;
use bytes::Bytes;
use common::*;
use portcullis_upstream::{RouteTimeouts, UpstreamBodyError, Upstreams};
use tokio::sync::{Notify, mpsc, oneshot};

const PATH: &str = "/v1/chat/completions";

/// A streaming answer fed by a channel that a task spawned by the handler writes into.
fn stream_from(chunks: mpsc::Receiver<Bytes>) -> Body {
    Body::from_stream(futures_util::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), chunks))
    }))
}

/// Model `m` at `addr`, with `timeouts` changed from the defaults.
fn model(addr: std::net::SocketAddr, timeouts: impl FnOnce(&mut RouteTimeouts)) -> Upstreams {
    let mut spec = route("m", &[format!("http://{addr}")]);
    timeouts(&mut spec.timeouts);
    Upstreams::new(&[spec])
}

#[tokio::test]
async fn the_first_chunk_reaches_the_caller_before_the_upstream_sends_the_second() {
    let release_second = Arc::new(Notify::new());
    let release = Arc::clone(&release_second);
    let router = Router::new().route(
        PATH,
        post(move || {
            let release = Arc::clone(&release);
            async move {
                let (sender, receiver) = mpsc::channel(1);
                tokio::spawn(async move {
                    sender.send(Bytes::from_static(b"data: one\n\n")).await.unwrap();
                    release.notified().await;
                    sender.send(Bytes::from_static(b"data: two\n\n")).await.unwrap();
                });
                ([("content-type", "text/event-stream")], stream_from(receiver))
            }
        }),
    );
    let upstreams = model(serve(router).await, |_| {});

    let response = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    assert_eq!(response.headers.get("content-type").unwrap(), "text/event-stream");
    assert!(response.headers.get("transfer-encoding").is_none(), "hop-by-hop header dropped");
    let mut body = Box::pin(response.body);
    // The upstream cannot send chunk two until we have chunk one: buffering would deadlock here.
    assert_eq!(next_frame(&mut body).await.unwrap().unwrap(), "data: one\n\n");
    release_second.notify_one();
    assert_eq!(next_frame(&mut body).await.unwrap().unwrap(), "data: two\n\n");
    assert!(next_frame(&mut body).await.is_none());
    assert_eq!(outstanding(&upstreams, "m"), 0);
}

#[tokio::test]
async fn an_idle_timeout_cuts_a_stalled_stream_and_closes_the_upstream_connection() {
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    let closed_tx = Arc::new(std::sync::Mutex::new(Some(closed_tx)));
    let router = Router::new().route(
        PATH,
        post(move || {
            let closed = Arc::clone(&closed_tx);
            async move {
                let (sender, receiver) = mpsc::channel(1);
                tokio::spawn(async move {
                    sender.send(Bytes::from_static(b"data: one\n\n")).await.unwrap();
                    // Stall, keeping the stream open, until the gateway goes away.
                    sender.closed().await;
                    if let Some(signal) = closed.lock().unwrap().take() {
                        let _ = signal.send(());
                    }
                });
                stream_from(receiver)
            }
        }),
    );
    let upstreams = model(serve(router).await, |timeouts| timeouts.idle = Duration::from_millis(300));

    let response = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    let mut body = Box::pin(response.body);
    assert_eq!(next_frame(&mut body).await.unwrap().unwrap(), "data: one\n\n");
    let stalled = std::time::Instant::now();
    let error = next_frame(&mut body).await.unwrap().unwrap_err();
    assert!(matches!(error, UpstreamBodyError::IdleTimeout { after } if after == Duration::from_millis(300)));
    assert!(stalled.elapsed() >= Duration::from_millis(250), "cut after the idle time, not before");
    assert!(next_frame(&mut body).await.is_none(), "the body ends after the error");
    assert_eq!(outstanding(&upstreams, "m"), 0);
    // Cut without waiting for the server to drop the body: the upstream request is abandoned.
    tokio::time::timeout(Duration::from_secs(5), closed_rx).await.expect("upstream connection closed").unwrap();
    drop(body);
}

#[tokio::test]
async fn the_total_timeout_cuts_a_stream_that_keeps_sending() {
    let router = Router::new().route(
        PATH,
        post(|| async {
            let (sender, receiver) = mpsc::channel(1);
            tokio::spawn(async move {
                while sender.send(Bytes::from_static(b"data: tok\n\n")).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            stream_from(receiver)
        }),
    );
    let upstreams = model(serve(router).await, |timeouts| {
        timeouts.idle = Duration::from_secs(1);
        timeouts.total = Duration::from_millis(500);
    });

    let started = std::time::Instant::now();
    let response = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    let mut body = Box::pin(response.body);
    let error = loop {
        match next_frame(&mut body).await.unwrap() {
            Ok(_) => continue,
            Err(error) => break error,
        }
    };
    assert!(matches!(error, UpstreamBodyError::TotalTimeout { .. }), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_eq!(outstanding(&upstreams, "m"), 0);
}

#[tokio::test]
async fn dropping_the_body_mid_stream_frees_the_slot_and_cancels_the_upstream_request() {
    let (cancelled_tx, cancelled_rx) = oneshot::channel::<()>();
    let cancelled_tx = Arc::new(std::sync::Mutex::new(Some(cancelled_tx)));
    let router = Router::new().route(
        PATH,
        post(move || {
            let cancelled = Arc::clone(&cancelled_tx);
            async move {
                let (sender, receiver) = mpsc::channel(1);
                tokio::spawn(async move {
                    // Keeps generating until the stream is gone, as a model server would.
                    while sender.send(Bytes::from_static(b"data: tok\n\n")).await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if let Some(signal) = cancelled.lock().unwrap().take() {
                        let _ = signal.send(());
                    }
                });
                stream_from(receiver)
            }
        }),
    );
    let upstreams = model(serve(router).await, |_| {});

    let response = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    assert_eq!(outstanding(&upstreams, "m"), 1, "headers arrived but the stream holds its slot");
    let mut body = Box::pin(response.body);
    assert_eq!(next_frame(&mut body).await.unwrap().unwrap(), "data: tok\n\n");
    assert_eq!(outstanding(&upstreams, "m"), 1);

    drop(body);
    assert_eq!(outstanding(&upstreams, "m"), 0);
    tokio::time::timeout(Duration::from_secs(5), cancelled_rx)
        .await
        .expect("the upstream noticed the closed connection")
        .unwrap();
}

#[tokio::test]
async fn dropping_the_forward_future_before_the_head_frees_the_slot() {
    let router = Router::new().route(
        PATH,
        post(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let upstreams = Arc::new(model(serve(router).await, |_| {}));

    let pending = tokio::spawn({
        let upstreams = Arc::clone(&upstreams);
        async move { upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.map(|_| ()) }
    });
    for _ in 0..100 {
        if outstanding(&upstreams, "m") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(outstanding(&upstreams, "m"), 1);
    pending.abort();
    let _ = pending.await;
    assert_eq!(outstanding(&upstreams, "m"), 0);
}
