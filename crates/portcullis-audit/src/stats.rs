//! Counters for metrics: plain atomics, cheap enough to bump on every submission.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one writer, shared by its handles and task. Read them with [`AuditStats::snapshot`].
#[derive(Debug, Default)]
pub struct AuditStats {
    submitted: AtomicU64,
    queued: AtomicU64,
    written: AtomicU64,
    batches: AtomicU64,
    spilled: AtomicU64,
    replayed: AtomicU64,
    overflowed: AtomicU64,
    dropped: AtomicU64,
    unwritten: AtomicU64,
    store_failures: AtomicU64,
    sink_errors: AtomicU64,
}

/// One reading of [`AuditStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStatsSnapshot {
    /// Events handed to [`crate::AuditHandle::submit`].
    pub submitted: u64,
    /// Events in the queue, not yet taken by the writer.
    pub queue_depth: u64,
    /// Records made durable: committed to the store or appended to the spill file.
    pub written: u64,
    /// Group commits of new records to the store.
    pub batches: u64,
    /// Records appended to the spill file because the store failed or was still catching up.
    pub spilled: u64,
    /// Spilled records later committed to the store.
    pub replayed: u64,
    /// Submissions that found the queue full and had to wait (backpressure).
    pub overflowed: u64,
    /// Events that could not be accepted because the writer had stopped (each also logged).
    pub dropped: u64,
    /// Sealed records that neither the store nor the spill file has taken yet (retried).
    pub unwritten: u64,
    /// Failed or timed-out store calls (commits and replays).
    pub store_failures: u64,
    /// Failed writes to the file or stdout sink.
    pub sink_errors: u64,
}

impl AuditStats {
    pub fn snapshot(&self) -> AuditStatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        AuditStatsSnapshot {
            submitted: read(&self.submitted),
            queue_depth: read(&self.queued),
            written: read(&self.written),
            batches: read(&self.batches),
            spilled: read(&self.spilled),
            replayed: read(&self.replayed),
            overflowed: read(&self.overflowed),
            dropped: read(&self.dropped),
            unwritten: read(&self.unwritten),
            store_failures: read(&self.store_failures),
            sink_errors: read(&self.sink_errors),
        }
    }

    pub(crate) fn submitted(&self) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
    }

    /// Called just before an event enters the queue; [`AuditStats::enqueue_failed`] undoes it.
    pub(crate) fn enqueued(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn enqueue_failed(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn dequeued(&self, count: usize) {
        self.queued.fetch_sub(count as u64, Ordering::Relaxed);
    }

    pub(crate) fn stored(&self, count: usize) {
        self.written.fetch_add(count as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn spilled(&self, count: usize) {
        self.written.fetch_add(count as u64, Ordering::Relaxed);
        self.spilled.fetch_add(count as u64, Ordering::Relaxed);
    }

    pub(crate) fn replayed(&self, count: u64) {
        self.replayed.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn overflowed(&self) {
        self.overflowed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_unwritten(&self, count: usize) {
        self.unwritten.store(count as u64, Ordering::Relaxed);
    }

    pub(crate) fn store_failed(&self) {
        self.store_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sink_failed(&self) {
        self.sink_errors.fetch_add(1, Ordering::Relaxed);
    }
}
