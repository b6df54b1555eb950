//! Where records are kept: the [`AuditStore`] each backend implements, and what it is asked.
//!
//! Store errors are the store crate's [`StoreError`](portcullis_store::StoreError): a backend maps its driver's failures once,
//! for every trait it implements, and callers treat an unavailable audit log like any other
//! unavailable store.

use async_trait::async_trait;
use portcullis_store::StoreResult;
use time::OffsetDateTime;

use crate::AuditRecord;
use crate::record::{AuditDecision, AuditKind};

/// The audit log. Records arrive already numbered and hashed by their node's writer; the store
/// keeps them, finds them, and never changes them (retention aside).
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Stores a batch in one transaction. A record whose `(node, seq)` is already stored is
    /// skipped, so replaying a batch (after a crash or from the spill file) stores it once.
    async fn append_audit(&self, records: &[AuditRecord]) -> StoreResult<()>;
    /// The newest record of a node's chain, `(seq, hash)`, to continue the chain after a restart.
    async fn last_audit(&self, node: &str) -> StoreResult<Option<(u64, String)>>;
    /// Records matching `filter`, oldest first (by `ts`, node, seq), after `cursor`, at most `limit`.
    async fn query_audit(
        &self,
        filter: &AuditFilter,
        cursor: Option<&AuditCursor>,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>>;
    /// One node's chain in `seq` order, from `after_seq` (exclusive), at most `limit`: for
    /// verification, which must see rows exactly as stored.
    async fn audit_chain(&self, node: &str, after_seq: u64, limit: usize) -> StoreResult<Vec<AuditRecord>>;
    /// Every node that has records or a checkpoint.
    async fn audit_nodes(&self) -> StoreResult<Vec<String>>;
    async fn audit_checkpoint(&self, node: &str) -> StoreResult<Option<AuditCheckpoint>>;
    /// Deletes records older than `before` and, in the same transaction, moves each affected
    /// node's checkpoint to its last deleted record. Returns how many were deleted.
    async fn delete_audit_before(&self, before: OffsetDateTime) -> StoreResult<u64>;
}

/// What part of the log to read; every field narrows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub node: Option<String>,
    pub key_id: Option<String>,
    /// A token or certificate caller's subject.
    pub subject: Option<String>,
    /// A token or certificate caller's issuer.
    pub issuer: Option<String>,
    /// The gateway that asked the authorizer.
    pub gateway: Option<String>,
    pub team: Option<String>,
    pub model: Option<String>,
    pub status: Option<u16>,
    pub decision: Option<AuditDecision>,
    pub kind: Option<AuditKind>,
    pub request_id: Option<String>,
}

/// Where a page of query results ends: continue after this record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCursor {
    pub ts: OffsetDateTime,
    pub node: String,
    pub seq: u64,
}

/// The last record retention deleted from a node's chain, so what remains still verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheckpoint {
    pub node: String,
    pub seq: u64,
    pub hash: String,
}
