//! The queue in front of a saturated model: priority then arrival order, shedding when the queue
//! is full or the wait too long, no slot leaked by requests that go away, and queues per model
//! under retries and fallbacks. Real sockets, so real time.
// Helpers fail like assertions do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::post;
use common::*;
use portcullis_upstream::{RouteSpec, UpstreamError, Upstreams};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

const PATH: &str = "/v1/chat/completions";

/// A model server that records each request's `x-tag` as it arrives and then answers only when
/// the test lets one through, so the test decides when a slot frees.
#[derive(Clone)]
struct Gate {
    seen: Arc<Mutex<Vec<String>>>,
    permits: Arc<Semaphore>,
}

impl Gate {
    async fn start() -> (Gate, std::net::SocketAddr) {
        let gate = Gate { seen: Arc::default(), permits: Arc::new(Semaphore::new(0)) };
        let handler = |State(gate): State<Gate>, headers: HeaderMap| async move {
            let tag = headers.get("x-tag").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
            gate.seen.lock().unwrap().push(tag);
            gate.permits.acquire().await.unwrap().forget();
            "ok"
        };
        let addr = serve(Router::new().route(PATH, post(handler)).with_state(gate.clone())).await;
        (gate, addr)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Lets `count` waiting (or future) requests be answered.
    fn open(&self, count: usize) {
        self.permits.add_permits(count);
    }
}

/// Polls `condition` every 5ms for up to five seconds.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(5), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn queued(upstreams: &Upstreams, model: &str) -> usize {
    upstreams.queue_lengths().into_iter().find(|(name, _)| name == model).map_or(0, |(_, len)| len)
}

/// Starts a request tagged `tag` with `priority`; it resolves to the whole body.
fn send(
    upstreams: &Arc<Upstreams>,
    model: &str,
    tag: &str,
    priority: i64,
) -> JoinHandle<Result<String, UpstreamError>> {
    let upstreams = Arc::clone(upstreams);
    let mut headers = HeaderMap::new();
    headers.insert("x-tag", HeaderValue::from_str(tag).unwrap());
    let mut request = request(model, headers);
    request.priority = priority;
    tokio::spawn(async move {
        let response = upstreams.forward(request, &anyone, &Default::default()).await?;
        let body = read_all(response.body).await.unwrap();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    })
}

fn one_slot(addr: std::net::SocketAddr, queue_size: usize, queue_timeout: Duration) -> Arc<Upstreams> {
    let spec =
        RouteSpec { max_concurrent: Some(1), queue_size, queue_timeout, ..route("m", &[format!("http://{addr}")]) };
    Arc::new(Upstreams::new(&[spec]))
}

/// Starts the request that takes the one slot and waits until the upstream has it.
async fn hold(upstreams: &Arc<Upstreams>, gate: &Gate) -> JoinHandle<Result<String, UpstreamError>> {
    let holder = send(upstreams, "m", "holder", 0);
    eventually("the holder to reach the upstream", || gate.seen() == ["holder"]).await;
    holder
}

fn all_idle(upstreams: &Upstreams) -> bool {
    upstreams.endpoint_states().iter().all(|state| state.outstanding == 0)
        && upstreams.queue_lengths().iter().all(|(_, len)| *len == 0)
}

#[tokio::test]
async fn queued_requests_are_served_by_priority_then_arrival() {
    let (gate, addr) = Gate::start().await;
    let upstreams = one_slot(addr, 64, Duration::from_secs(30));
    let mut tasks = vec![hold(&upstreams, &gate).await];
    for (at, (tag, priority)) in [("a", 0), ("b", 0), ("c", 10), ("d", 0), ("e", 10)].into_iter().enumerate() {
        tasks.push(send(&upstreams, "m", tag, priority));
        eventually(&format!("{tag} to be queued"), || queued(&upstreams, "m") == at + 1).await;
    }
    for served in 2..=6 {
        gate.open(1);
        eventually("the next request to reach the upstream", || gate.seen().len() == served).await;
        assert_eq!(outstanding(&upstreams, "m"), 1, "max_concurrent holds while the queue drains");
        assert_eq!(queued(&upstreams, "m"), 6 - served);
    }
    gate.open(1);
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "ok");
    }
    assert_eq!(gate.seen(), ["holder", "c", "e", "a", "b", "d"]);
    assert!(all_idle(&upstreams));
}

#[tokio::test]
async fn a_full_queue_sheds_at_once() {
    let (gate, addr) = Gate::start().await;
    let upstreams = one_slot(addr, 2, Duration::from_secs(30));
    let mut tasks = vec![hold(&upstreams, &gate).await];
    for tag in ["a", "b"] {
        tasks.push(send(&upstreams, "m", tag, 0));
    }
    eventually("two queued requests", || queued(&upstreams, "m") == 2).await;

    let started = Instant::now();
    let error = send(&upstreams, "m", "shed", 100).await.unwrap().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "shed without waiting: {:?}", started.elapsed());
    assert!(matches!(error, UpstreamError::Overloaded { retry_after_secs: 30 }), "{error:?}");

    gate.open(3);
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "ok");
    }
    assert!(!gate.seen().contains(&"shed".to_string()));
    assert!(all_idle(&upstreams));
}

#[tokio::test]
async fn a_queue_timeout_sheds_with_retry_after_rounded_up() {
    let (gate, addr) = Gate::start().await;
    let upstreams = one_slot(addr, 64, Duration::from_millis(1500));
    let holder = hold(&upstreams, &gate).await;

    let started = Instant::now();
    let waiting = send(&upstreams, "m", "late", 0);
    eventually("the request to be queued", || queued(&upstreams, "m") == 1).await;
    let error = waiting.await.unwrap().unwrap_err();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(3), "waited {waited:?}");
    assert!(matches!(error, UpstreamError::Overloaded { retry_after_secs: 2 }), "{error:?}");
    assert_eq!(queued(&upstreams, "m"), 0, "a timed-out request leaves the queue");

    gate.open(1);
    assert_eq!(holder.await.unwrap().unwrap(), "ok");
    assert_eq!(gate.seen(), ["holder"]);
    assert!(all_idle(&upstreams));
}

#[tokio::test]
async fn a_dropped_waiter_leaks_no_slot() {
    let (gate, addr) = Gate::start().await;
    let upstreams = one_slot(addr, 64, Duration::from_secs(30));
    let holder = hold(&upstreams, &gate).await;

    // A client that goes away while queued leaves the queue; the next one still gets the slot.
    let gone = send(&upstreams, "m", "gone", 10);
    eventually("the first waiter to be queued", || queued(&upstreams, "m") == 1).await;
    let next = send(&upstreams, "m", "next", 0);
    eventually("the second waiter to be queued", || queued(&upstreams, "m") == 2).await;
    gone.abort();
    eventually("the dropped waiter to leave the queue", || queued(&upstreams, "m") == 1).await;
    gate.open(1);
    assert_eq!(holder.await.unwrap().unwrap(), "ok");
    eventually("the remaining waiter to be served", || gate.seen() == ["holder", "next"]).await;

    // A client that goes away just as the slot is handed to it: either way nothing leaks.
    let racer = send(&upstreams, "m", "racer", 0);
    eventually("the racer to be queued", || queued(&upstreams, "m") == 1).await;
    gate.open(1);
    racer.abort();
    assert_eq!(next.await.unwrap().unwrap(), "ok");
    let _ = racer.await;
    eventually("every slot to be free", || all_idle(&upstreams)).await;

    // A handler the racer left blocked may take one permit; the next request must not wait.
    gate.open(2);
    let started = Instant::now();
    assert_eq!(send(&upstreams, "m", "after", 0).await.unwrap().unwrap(), "ok");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(all_idle(&upstreams));
}

#[tokio::test]
async fn a_request_shed_by_its_model_falls_back_to_another_queue() {
    let (gate, gated) = Gate::start().await;
    let backup = Recorder::default();
    let backup_addr = backup.start(PATH, StatusCode::OK, "backup").await;
    let upstreams = Arc::new(Upstreams::new(&[
        RouteSpec {
            max_concurrent: Some(1),
            queue_timeout: Duration::from_millis(300),
            fallbacks: vec!["f".into()],
            ..route("m", &[format!("http://{gated}")])
        },
        RouteSpec {
            max_concurrent: Some(1),
            queue_timeout: Duration::from_millis(1200),
            ..route("f", &[format!("http://{backup_addr}")])
        },
    ]));
    assert_eq!(upstreams.queue_lengths(), [("m".to_string(), 0), ("f".to_string(), 0)]);
    let holder = hold(&upstreams, &gate).await;

    // m is full: the request waits out m's queue, then the fallback serves it.
    let started = Instant::now();
    let response = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300), "waited in m's queue first");
    assert_eq!(response.model, "f");
    assert_eq!(read_all(response.body).await.unwrap(), "backup");

    // f's queue is its own: with f's slot held (an unread body holds it), a request for f
    // queues on f, not on m.
    let f_holder = upstreams.forward(request("f", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    let for_f = send(&upstreams, "f", "for-f", 0);
    eventually("a request queued on f", || queued(&upstreams, "f") == 1).await;
    assert_eq!(queued(&upstreams, "m"), 0);
    drop(f_holder);
    assert_eq!(for_f.await.unwrap().unwrap(), "backup");

    // Both full: m's wait, then f's wait, then Overloaded with the longer Retry-After (f's
    // 1.2s rounds up to 2; m's 0.3s to 1).
    let f_holder = upstreams.forward(request("f", HeaderMap::new()), &anyone, &Default::default()).await.unwrap();
    let started = Instant::now();
    let error = upstreams.forward(request("m", HeaderMap::new()), &anyone, &Default::default()).await.unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(error, UpstreamError::Overloaded { retry_after_secs: 2 }), "{error:?}");
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4), "waited {waited:?}");
    drop(f_holder);

    gate.open(1);
    assert_eq!(holder.await.unwrap().unwrap(), "ok");
    assert_eq!(backup.hits(), 4, "the first fallback, two holders of f and the request queued on f");
    assert!(all_idle(&upstreams));
}

#[tokio::test]
async fn a_retry_waits_in_the_queue_for_an_untried_endpoint() {
    let refused = refused_addr().await;
    let (gate, gated) = Gate::start().await;
    let upstreams = Arc::new(Upstreams::new(&[RouteSpec {
        max_concurrent: Some(1),
        queue_timeout: Duration::from_secs(30),
        ejection_failures: 0,
        ..route("m", &[format!("http://{refused}"), format!("http://{gated}")])
    }]));
    // Wherever the holder starts, it ends on the gated endpoint.
    let holder = hold(&upstreams, &gate).await;

    // The next request gets the refused endpoint's free slot, fails there, and its retry
    // queues for the gated endpoint instead of giving up.
    let retrying = send(&upstreams, "m", "retry", 0);
    eventually("the retry to be queued", || queued(&upstreams, "m") == 1).await;
    gate.open(2);
    assert_eq!(holder.await.unwrap().unwrap(), "ok");
    assert_eq!(retrying.await.unwrap().unwrap(), "ok");
    assert_eq!(gate.seen(), ["holder", "retry"]);
    assert!(all_idle(&upstreams));
}
