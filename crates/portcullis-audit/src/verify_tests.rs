use crate::{AuditCheckpoint, AuditRecord};

use super::*;
use crate::chain::record_hash;
use crate::testing;

fn rehash(record: &mut AuditRecord) {
    record.hash = record_hash(record);
}

fn status(records: &[AuditRecord]) -> VerifyStatus {
    verify_records("n", None, records).status
}

fn broken(seq: u64, problem: Tampering) -> VerifyStatus {
    VerifyStatus::Break(ChainBreak { seq, problem })
}

#[test]
fn an_intact_chain_verifies() {
    let report = verify_records("n", None, &testing::chain("n", 10));
    assert_eq!(
        report,
        VerifyReport {
            node: "n".into(),
            records_checked: 10,
            last_seq: 10,
            from_checkpoint: None,
            status: VerifyStatus::Ok
        }
    );
}

#[test]
fn an_empty_chain_verifies() {
    let report = verify_records("n", None, &[]);
    assert!(report.is_ok());
    assert_eq!((report.records_checked, report.last_seq), (0, 0));
}

#[test]
fn an_edited_field_breaks_at_that_record() {
    let mut records = testing::chain("n", 10);
    records[4].status = 500;
    let report = verify_records("n", None, &records);
    assert_eq!(report.status, broken(5, Tampering::Edited));
    assert_eq!((report.records_checked, report.last_seq), (4, 4));
}

#[test]
fn an_edited_hash_breaks_at_that_record() {
    let mut records = testing::chain("n", 10);
    records[4].hash = "a".repeat(64);
    assert_eq!(status(&records), broken(5, Tampering::Edited));
}

#[test]
fn a_deleted_record_is_a_gap_at_its_seq() {
    let mut records = testing::chain("n", 10);
    records.remove(4);
    assert_eq!(status(&records), broken(5, Tampering::Deleted));
    let mut records = testing::chain("n", 10);
    records.remove(0);
    assert_eq!(status(&records), broken(1, Tampering::Deleted));
}

#[test]
fn a_deletion_hidden_by_renumbering_breaks_at_the_renumbered_record() {
    let mut records = testing::chain("n", 10);
    records.remove(4);
    for record in &mut records[4..] {
        record.seq -= 1;
        rehash(record);
    }
    assert_eq!(status(&records), broken(5, Tampering::Deleted));
}

/// Gives the record at `a` seq `b` and the one at `b` seq `a` (1-based), as swapping two rows' seqs
/// in a store does: each row keeps its contents and hash.
fn swap_seqs(records: &mut [AuditRecord], a: u64, b: u64) {
    let (i, j) = (a as usize - 1, b as usize - 1);
    records.swap(i, j);
    records[i].seq = a;
    records[j].seq = b;
}

#[test]
fn rows_with_swapped_seqs_are_reordered_at_the_first() {
    for (a, b) in [(3, 7), (6, 7), (9, 10), (1, 10)] {
        let mut records = testing::chain("n", 10);
        swap_seqs(&mut records, a, b);
        assert_eq!(status(&records), broken(a, Tampering::Reordered), "swapping {a} and {b}");
    }
}

#[test]
fn part_of_a_row_moved_into_another_is_an_edit() {
    let mut records = testing::chain("n", 10);
    let (request_3, request_7) = (records[2].request_id.clone(), records[6].request_id.clone());
    records[2].request_id = request_7;
    records[6].request_id = request_3;
    assert_eq!(status(&records), broken(3, Tampering::Edited));
}

/// Moves the records from seq `at` on one seq up, and puts `forged` at `at`.
fn put_in(records: &mut Vec<AuditRecord>, at: u64, forged: AuditRecord) {
    for record in &mut records[at as usize - 1..] {
        record.seq += 1;
    }
    records.insert(at as usize - 1, forged);
}

#[test]
fn a_record_put_in_with_the_rest_moved_up_is_inserted() {
    // A copy of seq 5, changed: it does not verify itself, and seq 5's own record is at seq 6.
    let mut records = testing::chain("n", 10);
    let forged = AuditRecord { reason: Some("forged".into()), ..records[4].clone() };
    put_in(&mut records, 5, forged);
    assert_eq!(status(&records), broken(5, Tampering::Inserted));

    // Hashed and linked to seq 4, the forgery verifies; the record it pushed down breaks at 6.
    let mut records = testing::chain("n", 10);
    let mut forged = AuditRecord { reason: Some("forged".into()), ..records[4].clone() };
    rehash(&mut forged);
    put_in(&mut records, 5, forged);
    assert_eq!(status(&records), broken(6, Tampering::Inserted));

    // At the end of the chain too.
    let mut records = testing::chain("n", 10);
    let forged = AuditRecord { status: 201, ..records[9].clone() };
    put_in(&mut records, 10, forged);
    assert_eq!(status(&records), broken(10, Tampering::Inserted));
}

#[test]
fn a_deletion_with_the_rest_moved_down_is_a_deletion() {
    let mut records = testing::chain("n", 10);
    records.remove(4);
    for record in &mut records[4..] {
        record.seq -= 1;
    }
    assert_eq!(status(&records), broken(5, Tampering::Deleted));
}

#[test]
fn records_read_out_of_order_are_reordered() {
    let mut records = testing::chain("n", 10);
    records.swap(3, 4);
    assert_eq!(status(&records), broken(5, Tampering::Reordered));
}

#[test]
fn a_second_record_with_a_verified_seq_is_inserted() {
    let mut records = testing::chain("n", 10);
    let mut forged = records[4].clone();
    forged.status = 201;
    rehash(&mut forged);
    records.insert(5, forged);
    assert_eq!(status(&records), broken(5, Tampering::Inserted));
}

#[test]
fn a_forged_record_with_a_new_seq_linked_to_an_earlier_record_is_inserted() {
    let mut records = testing::chain("n", 10);
    let mut forged = records[9].clone();
    forged.seq = 11;
    forged.prev_hash = records[3].hash.clone();
    rehash(&mut forged);
    records.push(forged);
    assert_eq!(status(&records), broken(11, Tampering::Inserted));
}

#[test]
fn a_forged_record_linked_to_nothing_known_is_a_deletion_at_its_seq() {
    let mut records = testing::chain("n", 10);
    let mut forged = records[9].clone();
    forged.seq = 11;
    forged.prev_hash = "b".repeat(64);
    rehash(&mut forged);
    records.push(forged);
    assert_eq!(status(&records), broken(11, Tampering::Deleted));
}

#[test]
fn an_insertion_hidden_by_renumbering_breaks_where_the_chain_forks() {
    let mut records = testing::chain("n", 10);
    let mut forged = records[4].clone();
    forged.prev_hash = records[3].hash.clone();
    forged.reason = Some("forged".into());
    rehash(&mut forged);
    records.insert(4, forged);
    for record in &mut records[5..] {
        record.seq += 1;
        rehash(record);
    }
    // Seq 5 (the forgery) links correctly; seq 6 (the real fifth record) links to seq 4 as well.
    assert_eq!(status(&records), broken(6, Tampering::Inserted));
}

#[test]
fn another_nodes_record_is_inserted() {
    let mut records = testing::chain("n", 3);
    let mut foreign = testing::chain("m", 4).remove(3);
    foreign.prev_hash = records[2].hash.clone();
    rehash(&mut foreign);
    records.push(foreign);
    assert_eq!(status(&records), broken(4, Tampering::Inserted));
}

#[test]
fn a_chain_verifies_from_its_checkpoint_after_the_prefix_is_deleted() {
    let records = testing::chain("n", 10);
    let checkpoint = AuditCheckpoint { node: "n".into(), seq: 4, hash: records[3].hash.clone() };
    let report = verify_records("n", Some(&checkpoint), &records[4..]);
    assert_eq!(
        report,
        VerifyReport {
            node: "n".into(),
            records_checked: 6,
            last_seq: 10,
            from_checkpoint: Some(4),
            status: VerifyStatus::Ok
        }
    );
}

#[test]
fn deleting_past_the_checkpoint_is_a_deletion() {
    let records = testing::chain("n", 10);
    let checkpoint = AuditCheckpoint { node: "n".into(), seq: 4, hash: records[3].hash.clone() };
    assert_eq!(verify_records("n", Some(&checkpoint), &records[5..]).status, broken(5, Tampering::Deleted));
}

#[test]
fn a_checkpoint_with_the_wrong_hash_does_not_verify() {
    let records = testing::chain("n", 10);
    let checkpoint = AuditCheckpoint { node: "n".into(), seq: 4, hash: records[2].hash.clone() };
    assert!(!verify_records("n", Some(&checkpoint), &records[4..]).is_ok());
}

#[test]
fn feeding_in_pages_equals_feeding_at_once() {
    let mut records = testing::chain("n", 25);
    records[17].latency_ms = 1;
    let mut paged = ChainVerifier::new("n", None);
    let outcome = records.chunks(4).try_for_each(|page| paged.feed(page));
    assert_eq!(paged.report(outcome), verify_records("n", None, &records));
}
