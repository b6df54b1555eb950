#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests: a failed unwrap is a failed test")]

//! A store whose server is away: it starts anyway, answers `Unavailable` quickly instead of
//! hanging, and recovers by itself when the server is back.

use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use portcullis_audit::{AuditFilter, AuditStore};
use portcullis_store::{
    ChangeLog, KeyFilter, KeyStore, Migrator, NewTeam, StoreError, StoreResult, TeamStore, UsageStore,
};
use portcullis_store_postgres::{PostgresOptions, PostgresStore};
use portcullis_testkit::{PostgresDatabase, TcpRelay, free_port};
use portcullis_types::admin::LimitOverrides;
use time::OffsetDateTime;

/// Calls must give up well within this, whatever the reason the server is unreachable.
const FAIL_FAST: Duration = Duration::from_secs(4);

fn options() -> PostgresOptions {
    PostgresOptions { pool_size: 4, connect_timeout: Duration::from_secs(2) }
}

fn assert_unavailable<T: std::fmt::Debug>(what: &str, result: StoreResult<T>, took: Duration) {
    assert!(matches!(result, Err(StoreError::Unavailable { .. })), "{what}: {result:?}");
    assert!(took < FAIL_FAST, "{what} took {took:?}");
}

#[tokio::test]
async fn a_store_at_a_closed_port_answers_unavailable_quickly() {
    let url = format!("postgres://portcullis@127.0.0.1:{}/nothing", free_port());
    let store = PostgresStore::connect(&url, options()).expect("connecting is lazy: no server needed");
    // Notifications work without a server too (the listener keeps retrying in the background).
    let _notified = store.change_notifications().expect("postgres notifies");

    macro_rules! check {
        ($call:expr) => {{
            let started = Instant::now();
            let result = tokio::time::timeout(Duration::from_secs(30), $call).await.expect("the call returned");
            assert_unavailable(stringify!($call), result, started.elapsed());
        }};
    }
    check!(store.migrate());
    check!(store.ping());
    check!(store.get_key("k"));
    check!(store.list_keys(&KeyFilter::default()));
    check!(store.find_key_by_secret(&[7; 32]));
    check!(store.list_teams());
    check!(store.record_usage(&[usage()]));
    check!(store.query_audit(&AuditFilter::default(), None, 10));
    check!(store.changes_since(0, 10));
    check!(store.latest_change());
}

#[test]
fn a_bad_url_is_an_error() {
    for url in ["postgres://host:notaport/db", "not a url at all ==="] {
        let result = PostgresStore::connect(url, PostgresOptions::default());
        assert!(matches!(result, Err(StoreError::Unavailable { .. })), "{url}: {result:?}");
    }
    let result = PostgresStore::connect(
        "postgres://127.0.0.1/db",
        PostgresOptions { pool_size: 0, ..PostgresOptions::default() },
    );
    assert!(result.is_err(), "an empty pool is refused");
}

#[test]
fn options_default_to_sixteen_connections_and_five_seconds() {
    assert_eq!(PostgresOptions::default(), PostgresOptions { pool_size: 16, connect_timeout: Duration::from_secs(5) });
}

#[tokio::test]
async fn the_store_recovers_by_itself_when_the_server_comes_back() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let mut url = url::Url::parse(database.url()).unwrap();
    let server = (url.host_str().unwrap(), url.port().unwrap_or(5432)).to_socket_addrs().unwrap().next().unwrap();
    let relay = TcpRelay::start(server).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(relay.addr().port())).unwrap();
    let store = PostgresStore::connect(url.as_str(), options()).unwrap();
    store.migrate().await.unwrap();
    store.create_team(team("before")).await.unwrap();
    let mut notified = store.change_notifications().unwrap();
    tokio::time::timeout(Duration::from_secs(5), notified.changed()).await.expect("listening").unwrap();

    relay.cut();
    // The pooled connections were closed under the store: the first call may still learn that
    // the hard way, but every call answers quickly, and soon all say Unavailable.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let started = Instant::now();
        let result = store.get_team("before").await;
        assert!(started.elapsed() < FAIL_FAST, "took {:?}", started.elapsed());
        if matches!(result, Err(StoreError::Unavailable { .. })) {
            break;
        }
        assert!(Instant::now() < deadline, "still answering while cut off: {result:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    assert_unavailable("create_team while cut", store.create_team(team("during")).await, started.elapsed());

    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the store did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.get_team("before").await.unwrap().name, "before");
    store.create_team(team("after")).await.unwrap();
    // The listener came back as well, and says so.
    let latest = store.latest_change().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), notified.wait_for(|seen| *seen >= latest))
        .await
        .expect("notified after recovering")
        .unwrap();
}

fn team(name: &str) -> NewTeam {
    NewTeam {
        name: name.into(),
        tier: None,
        limits: LimitOverrides::default(),
        metadata: serde_json::json!({}),
        capture_content: false,
        created_at: OffsetDateTime::now_utc(),
    }
}

fn usage() -> portcullis_store::UsageRecord {
    portcullis_store::UsageRecord {
        at: OffsetDateTime::now_utc(),
        key_id: "k".into(),
        team: None,
        model: "m".into(),
        requests: 1,
        prompt_tokens: 1,
        completion_tokens: 1,
        cost_pico: 1,
        estimated_requests: 0,
    }
}
