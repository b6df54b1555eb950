//! Sealing cost per record (canonical encoding + SHA-256) against a naive baseline, and the writer's
//! throughput into an in-memory store.
//!
//! Run: `cargo bench -p portcullis-audit -- --warm-up-time 1 --measurement-time 3`
//!
//! - `hash/canonical+sha256`: [`record_hash`], what the chain does per record.
//! - `hash/naive_serde_json`: the first thing one would write: `serde_json::to_vec` of the whole record
//!   (field names, RFC 3339 time) and SHA-256 over the hex `prev_hash` text and that JSON.
//! - `writer/async`: one task submitting `async` records, timed until all are committed.
//! - `writer/sync_64_submitters`: 64 tasks each awaiting its `sync` acknowledgement per record, so the
//!   batch size comes from concurrency alone (group commit).
#![allow(clippy::unwrap_used, reason = "benchmark setup: a failure aborts the run")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use portcullis_audit::AuditRecord;
use portcullis_audit::{AuditWriter, Durability, WriterConfig, canonical, load, record_hash};
use sha2::{Digest, Sha256};

fn naive_hash(record: &AuditRecord) -> String {
    let json = serde_json::to_vec(record).unwrap();
    let mut hasher = Sha256::new();
    hasher.update(record.prev_hash.as_bytes());
    hasher.update(&json);
    hex::encode(hasher.finalize())
}

fn hashing(c: &mut Criterion) {
    let mut record = common::chain("node-1", 2).remove(1);
    record.reason = Some("insufficient_quota".into());
    let mut group = c.benchmark_group("hash");
    group.throughput(Throughput::Elements(1));
    group.bench_function("canonical+sha256", |b| b.iter(|| record_hash(black_box(&record))));
    group.bench_function("canonical_only", |b| b.iter(|| canonical(black_box(&record))));
    group.bench_function("naive_serde_json", |b| b.iter(|| naive_hash(black_box(&record))));
    group.finish();
}

/// Runs `iters` records through a fresh writer and store; times submission until all are written.
async fn through_writer(iters: u64, durability: Durability, submitters: u64) -> Duration {
    let dir = tempfile::TempDir::new().unwrap();
    let store = Arc::new(common::MemStore::default());
    let config = WriterConfig { durability, ..WriterConfig::new("node-1", dir.path().join("spill.jsonl")) };
    let (handle, task) = AuditWriter::start(config, store.clone()).await.unwrap();
    let elapsed = load::submit_spread(&handle, iters, submitters, common::event).await.unwrap();
    task.shutdown().await.unwrap();
    elapsed
}

fn writer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("writer");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.bench_function("async", |b| {
        b.iter_custom(|iters| runtime.block_on(through_writer(iters, Durability::Async, 1)));
    });
    group.bench_function("sync_64_submitters", |b| {
        b.iter_custom(|iters| runtime.block_on(through_writer(iters, Durability::Sync, 64)));
    });
    group.finish();
}

criterion_group!(benches, hashing, writer);
criterion_main!(benches);
