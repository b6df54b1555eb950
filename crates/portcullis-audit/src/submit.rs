//! Handing an event to the writer without blocking, and waiting for it to be durable when asked to.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};

use crate::{AuditError, AuditEvent, AuditStats};

/// How the writer tells a `sync` submitter that its record is durable (or cannot be yet).
pub(crate) type Ack = oneshot::Sender<Result<(), AuditError>>;

/// One submission in the queue.
pub(crate) struct Job {
    pub(crate) event: AuditEvent,
    pub(crate) ack: Option<Ack>,
}

/// Where submissions go: the bounded queue, and an unbounded side queue that only takes events whose
/// [`Submitted`] was dropped while waiting for room, so that dropping one never loses its record.
#[derive(Debug, Clone)]
pub(crate) struct Queues {
    pub(crate) main: mpsc::Sender<Job>,
    pub(crate) abandoned: mpsc::UnboundedSender<Job>,
    pub(crate) stats: Arc<AuditStats>,
}

/// The outcome of [`crate::AuditHandle::submit`], a future of `Result<(), AuditError>`.
///
/// - Queued at once (the usual case): in `async` durability it is ready immediately; in `sync` it
///   resolves when the record is committed to the store or fsynced to the spill file.
/// - The queue was full: it resolves once there was room (and, in `sync`, once durable). This is the
///   backpressure: the server should await it, which slows the requests producing records faster than
///   the store takes them instead of growing memory without bound.
/// - Dropping it unresolved never loses the record: a waiting event is moved to a side queue that the
///   writer drains too (it just skips the backpressure).
/// - `Err(AuditError::Closed)`: the writer had stopped; the event was counted as dropped and logged.
/// - `Err(AuditError::NotDurable)` (`sync` only): neither the store nor the spill file took the record.
///   The writer keeps retrying it, but the response should not claim it was recorded.
#[must_use = "await it to apply backpressure (and, in sync durability, to wait for the record to be durable)"]
pub struct Submitted {
    state: State,
}

enum State {
    Ready(Option<Result<(), AuditError>>),
    Acked(oneshot::Receiver<Result<(), AuditError>>),
    Waiting(Pin<Box<dyn Future<Output = Result<(), AuditError>> + Send>>),
}

impl fmt::Debug for Submitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Ready(_) => "ready",
            State::Acked(_) => "waiting for durability",
            State::Waiting(_) => "waiting for room in the queue",
        };
        f.debug_struct("Submitted").field("state", &state).finish()
    }
}

impl Future for Submitted {
    type Output = Result<(), AuditError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Ready(outcome) => Poll::Ready(outcome.take().unwrap_or(Ok(()))),
            State::Acked(ack) => Pin::new(ack).poll(cx).map(|acked| acked.unwrap_or(Err(AuditError::Closed))),
            State::Waiting(waiting) => waiting.as_mut().poll(cx),
        }
    }
}

impl Queues {
    pub(crate) fn submit(&self, event: AuditEvent, sync: bool) -> Submitted {
        self.stats.submitted();
        let (ack, acked) = if sync {
            let (ack, acked) = oneshot::channel();
            (Some(ack), Some(acked))
        } else {
            (None, None)
        };
        self.stats.enqueued();
        match self.main.try_send(Job { event, ack }) {
            Ok(()) => Submitted { state: acked.map_or(State::Ready(Some(Ok(()))), State::Acked) },
            Err(mpsc::error::TrySendError::Full(job)) => {
                self.stats.enqueue_failed();
                self.stats.overflowed();
                Submitted { state: State::Waiting(Box::pin(self.clone().wait_for_room(job, acked))) }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.enqueue_failed();
                self.stats.dropped();
                tracing::error!("audit writer has stopped; an audit record was dropped");
                Submitted { state: State::Ready(Some(Err(AuditError::Closed))) }
            }
        }
    }

    async fn wait_for_room(
        self,
        job: Job,
        acked: Option<oneshot::Receiver<Result<(), AuditError>>>,
    ) -> Result<(), AuditError> {
        let mut pending = Pending { job: Some(job), queues: self.clone() };
        let Ok(permit) = self.main.reserve().await else {
            pending.job = None;
            self.stats.dropped();
            tracing::error!("audit writer has stopped; an audit record was dropped");
            return Err(AuditError::Closed);
        };
        if let Some(job) = pending.job.take() {
            self.stats.enqueued();
            permit.send(job);
        }
        match acked {
            Some(acked) => acked.await.unwrap_or(Err(AuditError::Closed)),
            None => Ok(()),
        }
    }
}

/// An event waiting for room in the queue. If the wait is dropped (the submitter gave up on it), the
/// event goes to the side queue, or, if the writer has stopped meanwhile, is counted and logged as lost.
struct Pending {
    job: Option<Job>,
    queues: Queues,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(job) = self.job.take() else { return };
        self.queues.stats.enqueued();
        if self.queues.abandoned.send(job).is_err() {
            self.queues.stats.enqueue_failed();
            self.queues.stats.dropped();
            tracing::error!("audit writer has stopped; an audit record was dropped");
        }
    }
}
