//! The writer against an in-memory store: group commit, sync acknowledgements, spilling and replay,
//! restarts, backpressure and shutdown.
#![allow(clippy::unwrap_used, clippy::panic, reason = "test helpers: a failure is a failed test")]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::{MemStore, event};
use portcullis_audit::AuditRecord;
use portcullis_audit::{
    AuditError, AuditHandle, AuditWriter, Durability, Submitted, WriterConfig, WriterTask, verify_node,
};
use tempfile::TempDir;

const NODE: &str = "node-1";

fn config(dir: &TempDir) -> WriterConfig {
    WriterConfig {
        retry_interval: Duration::from_millis(10),
        ..WriterConfig::new(NODE, dir.path().join("spill.jsonl"))
    }
}

fn sync_config(dir: &TempDir) -> WriterConfig {
    WriterConfig { durability: Durability::Sync, ..config(dir) }
}

async fn start(config: WriterConfig, store: &Arc<MemStore>) -> (AuditHandle, WriterTask) {
    AuditWriter::start(config, store.clone()).await.unwrap()
}

/// Polls once, without waiting.
fn poll_once(submitted: &mut Submitted) -> Poll<Result<(), AuditError>> {
    std::future::Future::poll(std::pin::Pin::new(submitted), &mut Context::from_waker(Waker::noop()))
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn spill_lines(path: &Path) -> Vec<AuditRecord> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

async fn assert_verifies(store: &MemStore, records: u64) {
    let report = verify_node(store, NODE).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records_checked, records);
    let seqs: Vec<u64> = store.records(NODE).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=records).collect::<Vec<_>>());
}

#[tokio::test]
async fn many_submissions_are_committed_in_few_batches() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let (handle, task) = start(WriterConfig { max_batch: 256, ..config(&dir) }, &store).await;
    for i in 1..=1000 {
        handle.submit(event(i)).await.unwrap();
    }
    let stats = handle.stats().clone();
    eventually("all written", || stats.snapshot().written == 1000).await;
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.batches, 4, "{snapshot:?}");
    assert_eq!(snapshot.queue_depth, 0);
    task.shutdown().await.unwrap();
    assert_verifies(&store, 1000).await;
}

#[tokio::test]
async fn records_are_chained_in_arrival_order() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let (handle, task) = start(config(&dir), &store).await;
    for i in 1..=50 {
        handle.submit(event(i)).await.unwrap();
    }
    task.shutdown().await.unwrap();
    let ids: Vec<String> = store.records(NODE).into_iter().filter_map(|r| r.request_id).collect();
    assert_eq!(ids, (1..=50).map(|i| format!("req-{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_sync_submission_resolves_only_after_the_store_commits() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let (handle, task) = start(sync_config(&dir), &store).await;
    let gate = store.gate.write().await;
    let mut submitted = handle.submit(event(1));
    assert!(tokio::time::timeout(Duration::from_millis(100), &mut submitted).await.is_err(), "acked before the commit");
    assert!(store.records(NODE).is_empty());
    drop(gate);
    submitted.await.unwrap();
    assert_eq!(store.records(NODE).len(), 1, "acked, so it must be stored");
    task.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_async_submission_resolves_at_once_even_while_the_store_is_busy() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let (handle, task) = start(config(&dir), &store).await;
    let gate = store.gate.write().await;
    let mut submitted = handle.submit(event(1));
    assert!(matches!(poll_once(&mut submitted), Poll::Ready(Ok(()))));
    drop(gate);
    task.shutdown().await.unwrap();
    assert_verifies(&store, 1).await;
}

#[tokio::test]
async fn the_spill_file_is_made_by_the_first_spill_not_at_start() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let spill = dir.path().join("spill.jsonl");
    let (handle, task) = start(sync_config(&dir), &store).await;
    handle.submit(event(1)).await.unwrap();
    assert!(!spill.exists(), "made while the store works");
    store.set_failing(true);
    handle.submit(event(2)).await.unwrap();
    assert_eq!(spill_lines(&spill).len(), 1, "made by the first spill");
    task.shutdown().await.unwrap();
}

/// Not only at the first outage: the start tries to make the file (and removes it again). procfs
/// refuses new files even to root, who may write anywhere else.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_spill_path_that_cannot_be_written_fails_the_start() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let config = WriterConfig { spill_path: "/proc/portcullis-spill-test.jsonl".into(), ..config(&dir) };
    let Err(error) = AuditWriter::start(config, store.clone()).await else { panic!("a start that cannot spill") };
    assert!(error.to_string().contains("audit spill file /proc/portcullis-spill-test.jsonl"), "{error}");
}

#[tokio::test]
async fn a_failing_store_spills_and_the_replay_stores_each_record_once() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    store.set_failing(true);
    let (handle, task) = start(sync_config(&dir), &store).await;
    for i in 1..=50 {
        handle.submit(event(i)).await.unwrap(); // durable in the spill file
    }
    let spill = dir.path().join("spill.jsonl");
    assert!(store.records(NODE).is_empty());
    assert_eq!(spill_lines(&spill).len(), 50);
    assert_eq!(handle.stats().snapshot().spilled, 50);

    store.set_failing(false);
    let stats = handle.stats().clone();
    eventually("replayed", || stats.snapshot().replayed == 50).await;
    assert_eq!(std::fs::metadata(&spill).unwrap().len(), 0, "emptied once stored");
    for i in 51..=60 {
        handle.submit(event(i)).await.unwrap();
    }
    task.shutdown().await.unwrap();
    assert_eq!(store.inserts(), 60, "each record stored exactly once");
    assert_verifies(&store, 60).await;
}

#[tokio::test]
async fn a_slow_store_is_treated_as_down_and_caught_up_later() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let config = WriterConfig { store_timeout: Duration::from_millis(50), ..sync_config(&dir) };
    let (handle, task) = start(config, &store).await;
    let gate = store.gate.write().await;
    tokio::time::timeout(Duration::from_secs(2), handle.submit(event(1))).await.unwrap().unwrap();
    assert_eq!(handle.stats().snapshot().spilled, 1);
    drop(gate);
    let stats = handle.stats().clone();
    eventually("replayed", || stats.snapshot().replayed == 1).await;
    task.shutdown().await.unwrap();
    assert_verifies(&store, 1).await;
}

#[tokio::test]
async fn a_restarted_writer_continues_the_chain() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    for run in 0..2 {
        let (handle, task) = start(config(&dir), &store).await;
        for i in 1..=5 {
            handle.submit(event(run * 5 + i)).await.unwrap();
        }
        task.shutdown().await.unwrap();
    }
    let records = store.records(NODE);
    assert_eq!(records[5].prev_hash, records[4].hash);
    assert_verifies(&store, 10).await;
}

#[tokio::test]
async fn a_restart_continues_after_records_only_in_the_spill_file() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    store.set_failing(true);
    let (handle, task) = start(sync_config(&dir), &store).await;
    for i in 1..=5 {
        handle.submit(event(i)).await.unwrap();
    }
    task.shutdown().await.unwrap(); // the store is still down: the spill file keeps them

    let (handle, task) = start(sync_config(&dir), &store).await;
    for i in 6..=10 {
        handle.submit(event(i)).await.unwrap();
    }
    store.set_failing(false);
    let stats = handle.stats().clone();
    eventually("replayed", || stats.snapshot().replayed == 10).await;
    task.shutdown().await.unwrap();
    assert_eq!(store.inserts(), 10);
    assert_verifies(&store, 10).await;
}

#[tokio::test]
async fn a_spill_file_left_by_a_crash_is_replayed_on_start_without_its_torn_line() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let spill = dir.path().join("spill.jsonl");
    let mut text = String::new();
    for record in common::chain(NODE, 3) {
        text.push_str(&serde_json::to_string(&record).unwrap());
        text.push('\n');
    }
    let torn = serde_json::to_string(&common::chain(NODE, 4)[3]).unwrap();
    text.push_str(&torn[..torn.len() / 2]);
    std::fs::write(&spill, text).unwrap();

    let (handle, task) = start(config(&dir), &store).await;
    handle.submit(event(100)).await.unwrap();
    task.shutdown().await.unwrap();
    assert_eq!(store.records(NODE)[3].request_id.as_deref(), Some("req-100"), "seq 4 is the new record");
    assert_verifies(&store, 4).await;
    assert_eq!(std::fs::metadata(&spill).unwrap().len(), 0);
}

#[tokio::test]
async fn start_fails_when_the_store_cannot_say_where_the_chain_ends() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    store.set_reads_failing(true);
    let started = AuditWriter::start(config(&dir), store.clone()).await;
    assert!(matches!(started, Err(AuditError::Store(_))), "{started:?}");
}

#[tokio::test]
async fn shutdown_writes_everything_still_queued() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let (handle, task) = start(config(&dir), &store).await;
    for i in 1..=10_000 {
        drop(handle.submit(event(i))); // async: queued at once; dropping loses nothing
    }
    task.shutdown().await.unwrap();
    assert_verifies(&store, 10_000).await;
}

#[tokio::test]
async fn a_full_queue_pushes_back_and_loses_nothing_even_when_the_wait_is_dropped() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let (handle, task) = start(WriterConfig { channel_capacity: 8, max_batch: 8, ..config(&dir) }, &store).await;
    let gate = store.gate.write().await;
    let mut waiting = Vec::new();
    for i in 1..=100 {
        let mut submitted = handle.submit(event(i));
        if poll_once(&mut submitted).is_pending() {
            waiting.push(submitted);
        }
    }
    assert_eq!(waiting.len(), 92, "8 fit in the queue");
    let kept: Vec<Submitted> = waiting.into_iter().enumerate().filter(|(at, _)| at % 2 == 0).map(|(_, s)| s).collect();
    drop(gate);
    for submitted in kept {
        submitted.await.unwrap();
    }
    task.shutdown().await.unwrap();
    let snapshot = handle.stats().snapshot();
    assert_eq!((snapshot.overflowed, snapshot.dropped, snapshot.written), (92, 0, 100), "{snapshot:?}");
    assert_verifies(&store, 100).await;
}

#[tokio::test]
async fn a_submission_after_shutdown_is_refused_and_counted() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let (handle, task) = start(sync_config(&dir), &store).await;
    task.shutdown().await.unwrap();
    assert!(matches!(handle.submit(event(1)).await, Err(AuditError::Closed)));
    assert_eq!(handle.stats().snapshot().dropped, 1);
}

#[tokio::test]
async fn the_file_sink_gets_every_record_as_a_json_line() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let sink = dir.path().join("audit.jsonl");
    let (handle, task) = start(WriterConfig { file_sink: Some(sink.clone()), ..config(&dir) }, &store).await;
    for i in 1..=20 {
        handle.submit(event(i)).await.unwrap();
    }
    task.shutdown().await.unwrap();
    assert_eq!(spill_lines(&sink), store.records(NODE));
}

#[tokio::test]
async fn an_invalid_config_is_refused() {
    let (dir, store) = (TempDir::new().unwrap(), Arc::new(MemStore::default()));
    let started = AuditWriter::start(WriterConfig { max_batch: 0, ..config(&dir) }, store.clone()).await;
    assert!(matches!(started, Err(AuditError::Config(_))));
}
