//! Checking a stored chain: recompute every hash and link, from the retention checkpoint (or the
//! genesis) onwards, and report the first record where the chain stops holding.
//!
//! [`ChainVerifier`] is the pure core (feed it records in the order they were read); [`verify_node`]
//! and [`verify_all`] drive it over an [`AuditStore`] a page at a time.
//!
//! # How tampering shows
//! Records are read in `seq` order. For each record, in this order of checks:
//! 1. its `seq` is below the next expected one (a second record claims a verified seq): **Inserted**
//!    at that seq;
//! 2. its `seq` skips ahead: **Reordered** at that seq when the missing seq comes later in what was
//!    read (records out of order, e.g. an export file), otherwise **Deleted** at the first missing seq;
//! 3. its hash does not match its contents. Then, since the seq is hashed, the verifier asks whether
//!    it is a whole record of the chain standing at the wrong seq (its contents hash to its hash at
//!    another seq), and whether the record that belongs at this seq was read further on:
//!    - a record from later in the chain, with this seq's own record further on: **Reordered** (rows
//!      whose seqs were swapped);
//!    - a record from later in the chain, this seq's record nowhere: **Deleted** (records removed and
//!      the rest renumbered down);
//!    - a record from earlier in the chain (it was pushed down), or one that is no record of the chain
//!      while this seq's record was pushed further on: **Inserted** (a record put in, the rest
//!      renumbered up);
//!    - otherwise **Edited**;
//! 4. it belongs to another node's chain: **Inserted** at that seq;
//! 5. its `prev_hash` is not the previous record's hash: **Inserted** at that seq when it names an
//!    earlier record of the chain (it is a second successor of that record: a forged record hung into
//!    the chain), otherwise **Deleted** at that seq (its predecessor is not in the chain: records were
//!    removed and the rest renumbered, or the predecessor was rewritten).
//!
//! So, for a chain stored by seq: editing any field of record k (and leaving its hash) is Edited at k;
//! deleting record k is a gap, Deleted at k; swapping whole rows k < m (giving each the other's seq)
//! is Reordered at k; moving part of a row's contents into another is Edited at the first; a forged
//! record put in at seq k with the rest moved one up is Inserted at k (at k + 1 when the forgery is
//! hashed and linked well enough to verify itself); a forged record with a new seq, hashed correctly
//! but linked to an earlier record, is Inserted at its seq (linked to nothing known: Deleted at its
//! seq). Seeing where a record came from looks 64 records ahead at least, also across
//! the store's pages.
//!
//! # What a chain alone cannot show
//! Someone who can rewrite the store can also recompute every hash from the point they changed, or
//! cut records off the end, or append correctly linked records: the result is a valid chain. The
//! checkpoint and the chain's head (`last_audit`) must be anchored elsewhere to catch that (the
//! writer's JSON Lines file sink is one such copy).

use std::collections::{HashMap, VecDeque};
use std::fmt;

use portcullis_store::StoreError;

use crate::{AuditCheckpoint, AuditRecord, AuditStore};

use crate::chain::{GENESIS_HASH, record_hash};

/// Records read per store call.
const PAGE: usize = 1000;

/// Records a page holds back for the next, so that what is checked always has this many read after
/// it: a record swapped with one a little further on is told from a deletion at a page boundary too.
const LOOKAHEAD: usize = 64;

/// How many recent hashes the verifier remembers to tell an inserted record (linked to an earlier
/// record) from a deletion. Bounded so a long chain verifies in constant memory.
const RECENT: usize = 4096;

/// What is wrong at a [`ChainBreak`]; see the module docs for how each tampering shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tampering {
    /// The record's hash does not match its contents.
    Edited,
    /// A record is missing: a gap in `seq`, or a record whose predecessor is not in the chain.
    Deleted,
    /// A record that does not belong: a duplicate `seq`, another node's record, or a second
    /// successor of an earlier record.
    Inserted,
    /// Records read out of `seq` order.
    Reordered,
}

impl Tampering {
    pub fn as_str(self) -> &'static str {
        match self {
            Tampering::Edited => "edited",
            Tampering::Deleted => "deleted",
            Tampering::Inserted => "inserted",
            Tampering::Reordered => "reordered",
        }
    }
}

impl fmt::Display for Tampering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first place a chain stops holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainBreak {
    pub seq: u64,
    pub problem: Tampering,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} record at seq {}", self.problem, self.seq)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyStatus {
    Ok,
    Break(ChainBreak),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub node: String,
    /// Records that verified (before the break, if any).
    pub records_checked: u64,
    /// The seq of the last record that verified (the checkpoint's seq, or 0, when none did).
    pub last_seq: u64,
    /// Where verification started when retention had deleted the records up to this seq.
    pub from_checkpoint: Option<u64>,
    pub status: VerifyStatus,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.status == VerifyStatus::Ok
    }
}

/// The pure core: the state of a chain verified so far.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    node: String,
    next_seq: u64,
    prev_hash: String,
    from_checkpoint: Option<u64>,
    checked: u64,
    /// Hashes of recently verified records (and the starting point), for [`Tampering::Inserted`].
    recent: HashMap<String, u64>,
    recent_order: VecDeque<String>,
}

impl ChainVerifier {
    /// Starts after `checkpoint` (the last record retention deleted), or at the genesis.
    pub fn new(node: impl Into<String>, checkpoint: Option<&AuditCheckpoint>) -> ChainVerifier {
        let (next_seq, prev_hash) = match checkpoint {
            Some(checkpoint) => (checkpoint.seq.saturating_add(1), checkpoint.hash.clone()),
            None => (1, GENESIS_HASH.to_string()),
        };
        let mut verifier = ChainVerifier {
            node: node.into(),
            next_seq,
            prev_hash: prev_hash.clone(),
            from_checkpoint: checkpoint.map(|checkpoint| checkpoint.seq),
            checked: 0,
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
        };
        verifier.recent.insert(GENESIS_HASH.to_string(), 0);
        verifier.remember(prev_hash, next_seq - 1);
        verifier
    }

    /// Checks `records`, the next ones read; stops at the first break. After `Ok` they are all verified
    /// and more may be fed.
    pub fn feed(&mut self, records: &[AuditRecord]) -> Result<(), ChainBreak> {
        self.feed_first(records, records.len())
    }

    /// Checks the first `count` of `records`; the rest were read after them and only serve to tell
    /// where a misplaced record came from.
    fn feed_first(&mut self, records: &[AuditRecord], count: usize) -> Result<(), ChainBreak> {
        for (at, record) in records.iter().enumerate().take(count) {
            self.check(record, &records[at + 1..])?;
            self.next_seq = record.seq.saturating_add(1);
            self.prev_hash.clone_from(&record.hash);
            self.checked += 1;
            self.remember(record.hash.clone(), record.seq);
        }
        Ok(())
    }

    /// The seq of the last verified record (the starting point when none was).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The hash of the last verified record (the starting point's when none was).
    pub fn last_hash(&self) -> &str {
        &self.prev_hash
    }

    pub fn records_checked(&self) -> u64 {
        self.checked
    }

    pub fn report(&self, outcome: Result<(), ChainBreak>) -> VerifyReport {
        VerifyReport {
            node: self.node.clone(),
            records_checked: self.checked,
            last_seq: self.last_seq(),
            from_checkpoint: self.from_checkpoint,
            status: match outcome {
                Ok(()) => VerifyStatus::Ok,
                Err(brk) => VerifyStatus::Break(brk),
            },
        }
    }

    /// `rest` is what was read after `record`, for telling a reorder from a deletion.
    fn check(&self, record: &AuditRecord, rest: &[AuditRecord]) -> Result<(), ChainBreak> {
        let fail = |seq, problem| Err(ChainBreak { seq, problem });
        if record.seq < self.next_seq {
            return fail(record.seq, Tampering::Inserted);
        }
        if record.seq > self.next_seq {
            if rest.iter().any(|later| later.seq == self.next_seq) {
                return fail(record.seq, Tampering::Reordered);
            }
            return fail(self.next_seq, Tampering::Deleted);
        }
        if record_hash(record) != record.hash {
            return fail(record.seq, self.misplaced(record, rest).unwrap_or(Tampering::Edited));
        }
        if record.node != self.node {
            return fail(record.seq, Tampering::Inserted);
        }
        if record.prev_hash != self.prev_hash {
            let problem =
                if self.recent.contains_key(&record.prev_hash) { Tampering::Inserted } else { Tampering::Deleted };
            return fail(record.seq, problem);
        }
        Ok(())
    }

    /// For a record whose hash does not match its contents at its seq: how it got there, when it is
    /// not simply edited (see the module docs, check 3).
    fn misplaced(&self, record: &AuditRecord, rest: &[AuditRecord]) -> Option<Tampering> {
        let own_record_later = rest.iter().any(|later| hashes_at(later, record.seq));
        match self.home_seq(record, rest) {
            Some(home) if home > record.seq => {
                Some(if own_record_later { Tampering::Reordered } else { Tampering::Deleted })
            }
            Some(_) => Some(Tampering::Inserted),
            None if own_record_later => Some(Tampering::Inserted),
            None => None,
        }
    }

    /// The seq, other than its own, at which `record`'s contents hash to its stored hash: where a
    /// whole record was moved from. The candidates follow its links (to a verified record, or to and
    /// from records read after it: a swap over any distance) and its neighbouring seqs (a shift by
    /// one, where the records it links with were renumbered too).
    fn home_seq(&self, record: &AuditRecord, rest: &[AuditRecord]) -> Option<u64> {
        let after_verified = self.recent.get(&record.prev_hash).map(|seq| seq.saturating_add(1));
        let after_later =
            rest.iter().find(|later| later.hash == record.prev_hash).map(|later| later.seq.saturating_add(1));
        let before_later =
            rest.iter().find(|later| later.prev_hash == record.hash).and_then(|later| later.seq.checked_sub(1));
        [after_verified, after_later, before_later, record.seq.checked_sub(1), record.seq.checked_add(1)]
            .into_iter()
            .flatten()
            .filter(|&seq| seq != record.seq && seq > 0)
            .find(|&seq| hashes_at(record, seq))
    }

    fn remember(&mut self, hash: String, seq: u64) {
        if self.recent_order.len() == RECENT
            && let Some(oldest) = self.recent_order.pop_front()
            && oldest != GENESIS_HASH
        {
            self.recent.remove(&oldest);
        }
        self.recent.insert(hash.clone(), seq);
        self.recent_order.push_back(hash);
    }
}

/// Whether `record`'s contents, numbered `seq`, hash to its stored hash.
fn hashes_at(record: &AuditRecord, seq: u64) -> bool {
    record_hash(&AuditRecord { seq, ..record.clone() }) == record.hash
}

/// Verifies `records` (one node's, in the order read) starting after `checkpoint` or at the genesis.
pub fn verify_records(node: &str, checkpoint: Option<&AuditCheckpoint>, records: &[AuditRecord]) -> VerifyReport {
    let mut verifier = ChainVerifier::new(node, checkpoint);
    let outcome = verifier.feed(records);
    verifier.report(outcome)
}

/// Verifies `node`'s stored chain from its checkpoint. A store error is an `Err`; tampering is an
/// `Ok` report with [`VerifyStatus::Break`].
pub async fn verify_node(store: &dyn AuditStore, node: &str) -> Result<VerifyReport, StoreError> {
    let checkpoint = store.audit_checkpoint(node).await?;
    let mut verifier = ChainVerifier::new(node, checkpoint.as_ref());
    // Read but not yet checked: the last LOOKAHEAD records of a page wait for the next page.
    let mut pending: Vec<AuditRecord> = Vec::new();
    let mut last_read: Option<(u64, String)> = None;
    loop {
        // After the first page, each read starts at the last record read again, so that a second
        // record with that seq (possible only in a store without a unique (node, seq)) cannot hide
        // at a page boundary.
        let after = match &last_read {
            Some((seq, _)) => seq.saturating_sub(1),
            None => verifier.last_seq(),
        };
        let limit = PAGE + usize::from(last_read.is_some());
        let page = store.audit_chain(node, after, limit).await?;
        let done = page.len() < limit;
        let mut page = page.into_iter().peekable();
        if let Some((seq, hash)) = &last_read {
            page.next_if(|first| first.seq == *seq && first.hash == *hash);
        }
        pending.extend(page);
        if let Some(last) = pending.last() {
            last_read = Some((last.seq, last.hash.clone()));
        }
        let ready = if done { pending.len() } else { pending.len().saturating_sub(LOOKAHEAD) };
        if let Err(brk) = verifier.feed_first(&pending, ready) {
            return Ok(verifier.report(Err(brk)));
        }
        pending.drain(..ready);
        if done {
            break;
        }
    }
    Ok(verifier.report(Ok(())))
}

/// Verifies every node's chain ([`AuditStore::audit_nodes`]), in the store's node order.
pub async fn verify_all(store: &dyn AuditStore) -> Result<Vec<VerifyReport>, StoreError> {
    let mut reports = Vec::new();
    for node in store.audit_nodes().await? {
        reports.push(verify_node(store, &node).await?);
    }
    Ok(reports)
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
