//! The crate's one error type.

use portcullis_store::StoreError;

/// Causes are sources, not repeated in the message: print the chain (`portcullis_types::chain`).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store")]
    Store(#[from] StoreError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The writer has stopped (shut down or failed): the record was not accepted.
    #[error("the audit writer has stopped; the record was not accepted")]
    Closed,
    /// Neither the store nor the spill file took the record. The writer keeps it in memory and
    /// retries, but it is not durable yet, so a `sync` request must not report success.
    #[error("audit record is not durable: {0}")]
    NotDurable(String),
    #[error("invalid audit writer config: {0}")]
    Config(&'static str),
    /// The writer task panicked or was cancelled.
    #[error("the audit writer task failed: {0}")]
    Task(String),
    /// At shutdown, records that neither the store nor the spill file took; they are lost.
    #[error("{0} audit records could not be written to the store or the spill file")]
    Unwritten(usize),
}

impl AuditError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> AuditError {
        AuditError::Io { context: context.into(), source }
    }
}
