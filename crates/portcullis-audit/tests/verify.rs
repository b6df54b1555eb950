//! Verification through a store: paging, checkpoints after retention, every node.
#![allow(clippy::unwrap_used, reason = "test helpers: a failure is a failed test")]

mod common;

use common::{MemStore, chain, ts};
use portcullis_audit::{AuditRecord, AuditStore};
use portcullis_audit::{ChainBreak, Tampering, VerifyStatus, record_hash, verify_all, verify_node};

/// More than two pages of the verifier's 1000-record reads.
const N: u64 = 2500;

async fn stored(n: u64) -> MemStore {
    let store = MemStore::default();
    store.append_audit(&chain("a", n)).await.unwrap();
    store
}

async fn status(store: &MemStore) -> VerifyStatus {
    verify_node(store, "a").await.unwrap().status
}

fn broken(seq: u64, problem: Tampering) -> VerifyStatus {
    VerifyStatus::Break(ChainBreak { seq, problem })
}

#[tokio::test]
async fn a_stored_chain_verifies_across_pages() {
    let store = stored(N).await;
    let report = verify_node(&store, "a").await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.records_checked, report.last_seq, report.from_checkpoint), (N, N, None));
}

#[tokio::test]
async fn an_edited_field_is_found_at_its_seq() {
    let store = stored(N).await;
    store.edit("a", 1234, |r| r.model = Some("gpt-4".into()));
    assert_eq!(status(&store).await, broken(1234, Tampering::Edited));
}

#[tokio::test]
async fn a_deleted_row_at_a_page_boundary_is_found() {
    for seq in [1, 1000, 1001, 2001] {
        let store = stored(N).await;
        store.remove("a", seq);
        assert_eq!(status(&store).await, broken(seq, Tampering::Deleted), "deleting {seq}");
    }
}

#[tokio::test]
async fn rows_with_swapped_seqs_are_reordered_also_across_pages() {
    for (a, b) in [(3, 7), (1000, 1001), (999, 1010), (2499, 2500)] {
        let store = stored(N).await;
        let (first, second) = (store.remove("a", a).unwrap(), store.remove("a", b).unwrap());
        store.put(AuditRecord { seq: a, ..second });
        store.put(AuditRecord { seq: b, ..first });
        assert_eq!(status(&store).await, broken(a, Tampering::Reordered), "swapping {a} and {b}");
    }
}

#[tokio::test]
async fn a_forged_row_with_a_new_seq_is_found_at_its_seq() {
    let store = stored(20).await;
    let mut forged = store.records("a")[9].clone();
    forged.seq = 21;
    forged.status = 200;
    forged.prev_hash = store.records("a")[9].hash.clone(); // claims to follow seq 10
    forged.hash = record_hash(&forged);
    store.put(forged);
    assert_eq!(status(&store).await, broken(21, Tampering::Inserted));
}

#[tokio::test]
async fn a_chain_verifies_from_its_checkpoint_after_retention() {
    let store = stored(N).await;
    let deleted = store.delete_audit_before(ts(1500)).await.unwrap();
    assert_eq!(deleted, 1499);
    let report = verify_node(&store, "a").await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.records_checked, report.last_seq, report.from_checkpoint), (N - 1499, N, Some(1499)));
}

#[tokio::test]
async fn deleting_past_the_checkpoint_is_found() {
    let store = stored(N).await;
    store.delete_audit_before(ts(1500)).await.unwrap();
    store.remove("a", 1500);
    assert_eq!(status(&store).await, broken(1500, Tampering::Deleted));
}

#[tokio::test]
async fn every_node_is_verified_on_its_own() {
    let store = stored(30).await;
    store.append_audit(&chain("b", 30)).await.unwrap();
    store.edit("b", 17, |r| r.latency_ms += 1);
    let reports = verify_all(&store).await.unwrap();
    let summary: Vec<(&str, VerifyStatus)> = reports.iter().map(|r| (r.node.as_str(), r.status)).collect();
    assert_eq!(summary, [("a", VerifyStatus::Ok), ("b", broken(17, Tampering::Edited))]);
}
