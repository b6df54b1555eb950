//! The audit log's integrity and delivery: every record a node writes is sealed into that node's
//! hash chain, stored by a group-committing writer off the request path, and can later be checked
//! for editing, deletion, insertion and reordering.
//!
//! - [`AuditRecord`]: one record, declared through its field table ([`fields`]), which the
//!   canonical encoding, both stores' columns, the CSV export and the admin view all walk; and
//!   [`AuditStore`], where records are kept (each backend implements it).
//! - [`chain`]: the canonical encoding of a record, its hash, and the [`Chain`] that numbers and
//!   links a node's records (`hash = SHA-256(prev_hash ‖ canonical record)`).
//! - [`verify`]: walks a stored chain from its retention checkpoint and reports the first break.
//! - [`redact`]: masks emails, phone numbers, card numbers and credentials in opted-in content
//!   before it becomes part of a record.
//! - [`writer`]: the [`AuditWriter`] task with its bounded queue, group commit, `sync`/`async`
//!   durability, and a spill file that keeps records when the store is slow or down.
//!
//! # Guarantees of the writer
//! - **Sync** ([`Durability::Sync`]): a submission resolves `Ok` only once its record is committed to
//!   the store or appended to the spill file and `fsync`ed. Nothing acknowledged is lost, even on
//!   `SIGKILL` or power loss (as far as the disk honours `fsync`).
//! - **Async** ([`Durability::Async`]): a submission resolves as soon as the record is queued. A process
//!   killed without a graceful shutdown loses what was queued or in the batch being written: at most
//!   `channel_capacity + max_batch` records, in practice the last few milliseconds of traffic.
//! - **Graceful shutdown** ([`WriterTask::shutdown`]) loses nothing in either mode: the queue is drained
//!   and every record ends in the store or the spill file (replayed into the store on the next start).
//! - **No silent drops**: a record that cannot be accepted (the writer has stopped) is reported to its
//!   submitter as [`AuditError::Closed`], counted in [`AuditStats`] and logged.
//! - **Exactly once**: the store skips a `(node, seq)` it already holds, so replaying the spill file, or
//!   a batch whose commit outcome was unknown, stores each record once.

pub mod chain;
#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
mod event;
pub mod fields;
pub mod load;
mod record;
pub mod redact;
mod sink;
mod spill;
mod stats;
mod store;
mod submit;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod testing;

pub use chain::{
    CANONICAL_FIELDS, CANONICAL_FIELDS_V1, CANONICAL_FIELDS_V2, CANONICAL_VERSION, Chain, GENESIS_HASH, canonical,
    canonical_version, record_hash,
};
pub use error::AuditError;
pub use event::AuditEvent;
pub use fields::{unix_millis, unix_millis_ceil};
pub use record::{AuditDecision, AuditKind, AuditRecord, PrincipalKind};
pub use redact::Redactor;
pub use stats::{AuditStats, AuditStatsSnapshot};
pub use store::{AuditCheckpoint, AuditCursor, AuditFilter, AuditStore};
pub use submit::Submitted;
pub use verify::{
    ChainBreak, ChainVerifier, Tampering, VerifyReport, VerifyStatus, verify_all, verify_node, verify_records,
};
pub use writer::{AuditHandle, AuditWriter, Durability, WriterConfig, WriterTask};
