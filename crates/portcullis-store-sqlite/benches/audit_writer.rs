//! The audit writer's sustained throughput into SQLite: records/s through a real database file in
//! WAL mode, as `portcullis serve` writes them (the same writer, store and schema).
//!
//! Run: `cargo bench -p portcullis-store-sqlite --bench audit_writer -- --warm-up-time 1 --measurement-time 5`
//!
//! - `async_1_submitter`: one task submitting `async` records as fast as the queue takes them,
//!   timed until every record is committed. The writer batches by itself (up to 4 096 per
//!   transaction, 10 ms between batches).
//! - `sync_64_submitters`: 64 tasks each waiting for its record to be durable before submitting
//!   the next, so batches come from concurrency alone (group commit), as under `sync` durability.
//!
//! Each sample writes into the same file, so later samples insert into a growing table and its
//! five indexes, as a running gateway does.
#![allow(clippy::unwrap_used, reason = "benchmark setup: a failure aborts the run")]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis_audit::{AuditDecision, AuditEvent, AuditKind, AuditWriter, Durability, WriterConfig, load};
use portcullis_store::Migrator;
use portcullis_store_sqlite::SqliteStore;
use time::OffsetDateTime;

/// A chat request's record; `i` varies the request id, the time and the usage.
fn event(i: u64) -> AuditEvent {
    let at = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(1_800_000_000_000 + i as i64);
    AuditEvent {
        request_id: Some(format!("01JDQ7Z{i:019}")),
        key_id: Some(format!("key_{:02}", i % 16)),
        team: Some("research".into()),
        client_ip: Some("10.0.0.7".into()),
        method: Some("POST".into()),
        path: Some("/v1/chat/completions".into()),
        model: Some("gemma-3-270m".into()),
        latency_ms: 30 + i % 50,
        prompt_tokens: Some(100),
        completion_tokens: Some(i % 500),
        user_agent: Some("openai-python/2.54.0".into()),
        ..AuditEvent::new(at, AuditKind::Request, AuditDecision::Allow, 200)
    }
}

/// Submits `count` records from `submitters` tasks through a fresh writer on `store` and returns
/// the time until all are in the store.
async fn through_writer(
    store: Arc<SqliteStore>,
    spill: &std::path::Path,
    count: u64,
    durability: Durability,
    submitters: u64,
) -> Duration {
    let config = WriterConfig { durability, ..WriterConfig::new("node-1", spill) };
    let (handle, task) = AuditWriter::start(config, store).await.unwrap();
    let elapsed = load::submit_spread(&handle, count, submitters, event).await.unwrap();
    task.shutdown().await.unwrap();
    elapsed
}

fn writer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::TempDir::new().unwrap();
    let spill = dir.path().join("spill.jsonl");
    let mut group = c.benchmark_group("sqlite_writer");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    for (name, durability, submitters) in
        [("async_1_submitter", Durability::Async, 1), ("sync_64_submitters", Durability::Sync, 64)]
    {
        // One database per case; the writer resumes its chain from what is stored.
        let store = Arc::new(SqliteStore::open(&dir.path().join(format!("{name}.db"))).unwrap());
        runtime.block_on(store.migrate()).unwrap();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(through_writer(store.clone(), &spill, iters, durability, submitters))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, writer);
criterion_main!(benches);
