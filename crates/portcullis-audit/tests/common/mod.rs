//! An in-memory `AuditStore` for tests and benchmarks: appends can be made to fail or to wait, and
//! rows can be tampered with directly.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use portcullis_audit::{
    AuditCheckpoint, AuditCursor, AuditDecision, AuditEvent, AuditFilter, AuditKind, AuditRecord, AuditStore, Chain,
    PrincipalKind,
};
use portcullis_store::{StoreError, StoreResult};
use time::OffsetDateTime;
use tokio::sync::RwLock;

#[derive(Debug, Default)]
pub struct MemStore {
    rows: Mutex<Rows>,
    failing: AtomicBool,
    reads_failing: AtomicBool,
    /// Held for writing by a test, it makes `append_audit` wait.
    pub gate: RwLock<()>,
    /// Successful `append_audit` calls.
    pub appends: AtomicU64,
}

#[derive(Debug, Default)]
struct Rows {
    records: BTreeMap<(String, u64), AuditRecord>,
    checkpoints: BTreeMap<String, AuditCheckpoint>,
    /// Rows ever inserted (a skipped duplicate is not an insert).
    inserts: u64,
}

impl MemStore {
    fn rows(&self) -> MutexGuard<'_, Rows> {
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// While set, `append_audit` fails as if the database were down.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// While set, `last_audit` fails (the writer cannot learn where its chain ends).
    pub fn set_reads_failing(&self, failing: bool) {
        self.reads_failing.store(failing, Ordering::SeqCst);
    }

    pub fn records(&self, node: &str) -> Vec<AuditRecord> {
        self.rows().records.values().filter(|r| r.node == node).cloned().collect()
    }

    pub fn inserts(&self) -> u64 {
        self.rows().inserts
    }

    pub fn edit(&self, node: &str, seq: u64, edit: impl FnOnce(&mut AuditRecord)) {
        if let Some(record) = self.rows().records.get_mut(&(node.to_string(), seq)) {
            edit(record);
        }
    }

    pub fn remove(&self, node: &str, seq: u64) -> Option<AuditRecord> {
        self.rows().records.remove(&(node.to_string(), seq))
    }

    /// Stores `record` as given, replacing any row with its (node, seq).
    pub fn put(&self, record: AuditRecord) {
        self.rows().records.insert((record.node.clone(), record.seq), record);
    }
}

#[async_trait]
impl AuditStore for MemStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> StoreResult<()> {
        let _open = self.gate.read().await;
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("test store is down"));
        }
        let mut guard = self.rows();
        let rows = &mut *guard;
        for record in records {
            if let Entry::Vacant(slot) = rows.records.entry((record.node.clone(), record.seq)) {
                slot.insert(record.clone());
                rows.inserts += 1;
            }
        }
        self.appends.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn last_audit(&self, node: &str) -> StoreResult<Option<(u64, String)>> {
        if self.reads_failing.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("test store is down"));
        }
        let rows = self.rows();
        let last = rows.records.values().filter(|r| r.node == node).max_by_key(|r| r.seq);
        Ok(last.map(|r| (r.seq, r.hash.clone())))
    }

    async fn query_audit(
        &self,
        filter: &AuditFilter,
        cursor: Option<&AuditCursor>,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        let rows = self.rows();
        let mut found: Vec<AuditRecord> = rows
            .records
            .values()
            .filter(|r| filter.node.as_ref().is_none_or(|node| *node == r.node))
            .filter(|r| filter.since.is_none_or(|since| r.ts >= since))
            .filter(|r| filter.until.is_none_or(|until| r.ts < until))
            .filter(|r| cursor.is_none_or(|c| (r.ts, &r.node, r.seq) > (c.ts, &c.node, c.seq)))
            .cloned()
            .collect();
        found.sort_by(|a, b| (a.ts, &a.node, a.seq).cmp(&(b.ts, &b.node, b.seq)));
        found.truncate(limit);
        Ok(found)
    }

    async fn audit_chain(&self, node: &str, after_seq: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        let rows = self.rows();
        Ok(rows.records.values().filter(|r| r.node == node && r.seq > after_seq).take(limit).cloned().collect())
    }

    async fn audit_nodes(&self) -> StoreResult<Vec<String>> {
        let rows = self.rows();
        let mut nodes: Vec<String> = rows.records.keys().map(|(node, _)| node.clone()).collect();
        nodes.extend(rows.checkpoints.keys().cloned());
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
    }

    async fn audit_checkpoint(&self, node: &str) -> StoreResult<Option<AuditCheckpoint>> {
        Ok(self.rows().checkpoints.get(node).cloned())
    }

    async fn delete_audit_before(&self, before: OffsetDateTime) -> StoreResult<u64> {
        let mut rows = self.rows();
        let doomed: Vec<(String, u64)> =
            rows.records.iter().filter(|(_, r)| r.ts < before).map(|(key, _)| key.clone()).collect();
        for key in &doomed {
            if let Some(record) = rows.records.remove(key) {
                let newer = rows.checkpoints.get(&record.node).is_none_or(|c| c.seq < record.seq);
                if newer {
                    let checkpoint = AuditCheckpoint { node: record.node.clone(), seq: record.seq, hash: record.hash };
                    rows.checkpoints.insert(record.node, checkpoint);
                }
            }
        }
        Ok(doomed.len() as u64)
    }
}

pub fn ts(ms: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(1_800_000_000_000 + ms)
}

/// A request event, different for each `i`, `i` ms after a fixed time.
pub fn event(i: u64) -> AuditEvent {
    AuditEvent {
        request_id: Some(format!("req-{i}")),
        principal_kind: Some(PrincipalKind::Key),
        key_id: Some("key_01".into()),
        team: Some("research".into()),
        client_ip: Some("10.0.0.7".into()),
        method: Some("POST".into()),
        path: Some("/v1/chat/completions".into()),
        model: Some("smollm2".into()),
        latency_ms: 30 + i % 50,
        prompt_tokens: Some(100),
        completion_tokens: Some(i),
        user_agent: Some("openai-python/1.0".into()),
        ..AuditEvent::new(ts(i as i64), AuditKind::Request, AuditDecision::Allow, 200)
    }
}

/// `node`'s records 1..=n, sealed.
pub fn chain(node: &str, n: u64) -> Vec<AuditRecord> {
    let mut chain = Chain::resume(node, None);
    (1..=n).map(|i| chain.seal(event(i))).collect()
}
