#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests: a failed unwrap is a failed test")]

//! The change log across replicas: notifications reach other stores, survive a lost listener
//! connection, and a follower polling during concurrent mutations misses nothing.

use std::collections::HashSet;
use std::time::Duration;

use portcullis_store::{Change, ChangeLog, Migrator, NewTeam, TeamPatch, TeamStore};
use portcullis_store_postgres::{PostgresOptions, PostgresStore};
use portcullis_testkit::PostgresDatabase;
use portcullis_types::admin::LimitOverrides;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::timeout;

fn store(database: &PostgresDatabase) -> PostgresStore {
    PostgresStore::connect(database.url(), PostgresOptions::default()).unwrap()
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

/// Receivers of `store`'s notifications once its listener is in place (it wakes every receiver
/// when it starts listening).
async fn listening(store: &PostgresStore) -> watch::Receiver<u64> {
    let mut notified = store.change_notifications().expect("postgres notifies");
    timeout(Duration::from_secs(5), notified.changed()).await.expect("the listener connects").unwrap();
    notified
}

#[tokio::test]
async fn a_change_through_one_store_wakes_another_within_a_second() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let (writer, follower) = (store(&database), store(&database));
    writer.migrate().await.unwrap();
    let mut notified = listening(&follower).await;
    let cursor = follower.latest_change().await.unwrap();

    writer.create_team(team("notified")).await.unwrap();
    timeout(Duration::from_secs(1), notified.changed()).await.expect("woken within a second").unwrap();
    let seq = *notified.borrow_and_update();

    let page = follower.changes_since(cursor, 10).await.unwrap();
    assert_eq!(page.changes, [(seq, Change::Team("notified".into()))], "the notified seq is the change's");
    assert!(!page.truncated);
}

#[tokio::test]
async fn the_listener_reconnects_and_wakes_receivers_after_losing_its_connection() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let (writer, follower) = (store(&database), store(&database));
    writer.migrate().await.unwrap();
    let mut notified = listening(&follower).await;

    // Notifications sent while the listener is away are lost; the wake-up on reconnect says so.
    let (admin, connection) = tokio_postgres::connect(database.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'portcullis-changes'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed.len(), 1, "one listener connection per store");
    writer.create_team(team("while-away")).await.unwrap();
    timeout(Duration::from_secs(3), notified.changed()).await.expect("woken after reconnecting").unwrap();
    let latest = writer.latest_change().await.unwrap();
    timeout(Duration::from_secs(3), notified.wait_for(|seen| *seen >= latest))
        .await
        .expect("the reconnected listener reports the newest seq")
        .unwrap();

    // And it listens again.
    notified.borrow_and_update();
    writer.update_team("while-away", TeamPatch { tier: Some("gold".into()), ..TeamPatch::default() }).await.unwrap();
    timeout(Duration::from_secs(1), notified.changed()).await.expect("notified again").unwrap();
    assert_eq!(*notified.borrow(), writer.latest_change().await.unwrap());
}

/// Seqs follow commit order: a follower that reads "everything after my cursor" while several
/// replicas commit changes concurrently ends up with every change, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_polling_during_concurrent_mutations_misses_nothing() {
    let Some(database) = PostgresDatabase::create_or_skip().await else { return };
    let follower = store(&database);
    follower.migrate().await.unwrap();
    const WRITERS: usize = 4;
    const EACH: usize = 25;

    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let store = store(&database);
            tokio::spawn(async move {
                for n in 0..EACH {
                    store.create_team(team(&format!("team-{writer}-{n}"))).await.unwrap();
                }
            })
        })
        .collect();

    let mut cursor = 0;
    let mut seen = Vec::new();
    let mut done = false;
    while !done {
        done = writers.iter().all(|writer| writer.is_finished());
        // Read to the end each time (after the writers finished, once more).
        loop {
            let page = follower.changes_since(cursor, 7).await.unwrap();
            assert!(!page.truncated);
            let Some((last, _)) = page.changes.last() else { break };
            cursor = *last;
            seen.extend(page.changes);
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let names: HashSet<Change> = seen.iter().map(|(_, change)| change.clone()).collect();
    assert_eq!(seen.len(), WRITERS * EACH, "each change read once");
    assert_eq!(names.len(), WRITERS * EACH, "every change read");
    assert!(seen.windows(2).all(|pair| pair[0].0 < pair[1].0));
}
