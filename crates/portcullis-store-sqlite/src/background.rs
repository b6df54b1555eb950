//! A second connection, on a thread of its own at a lower scheduling priority, for bulk writes
//! nobody waits for: the audit log's batches.
//!
//! An audit batch is a burst of CPU (a few hundred inserts into a table and five indexes, then
//! the commit and now and then a WAL checkpoint). Run at normal priority it competes with the
//! threads that carry requests, and a request whose next step is woken onto the core it holds
//! waits until the burst's time slice ends: each batch delayed a request by 0.5–4 ms (p99 at
//! concurrency 1 went from 0.2 to 0.7–1 ms). So the thread runs under Linux's `SCHED_IDLE`
//! policy: any other thread that wakes preempts it at once. (`nice 19` was not enough: p99 stayed
//! at 0.7–1 ms.)
//!
//! Such a thread only gets the CPU others leave, so on a saturated machine the audit log lags:
//! the writer's bounded queue then pushes back on the requests that produce the records (which
//! frees the CPU it needs), and a batch that takes longer than the writer's store timeout is
//! spilled to disk and replayed later — nothing is lost. While it holds SQLite's write lock, other
//! writers on the main connection (admin changes, usage roll-ups) wait for it (`busy_timeout`).

use std::path::Path;
use std::sync::mpsc;
use std::thread;

use portcullis_store::{StoreError, StoreResult};
use rusqlite::Connection;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Hands jobs to the background thread; the thread ends when the last clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Background {
    jobs: mpsc::Sender<Job>,
}

impl Background {
    /// Starts the thread with `conn`, a connection of its own to the store's database.
    pub(crate) fn start(conn: Connection, path: &Path) -> StoreResult<Background> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (started, start) = mpsc::sync_channel(0);
        thread::Builder::new()
            .name("sqlite-background".into())
            .spawn(move || {
                lower_priority();
                let _ = started.send(());
                let mut conn = conn;
                while let Ok(job) = queue.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|err| StoreError::Unavailable(format!("cannot start a thread for {}: {err}", path.display())))?;
        // Returns once the thread runs at its priority.
        start.recv().map_err(|_| gone())?;
        Ok(Background { jobs })
    }

    /// Runs `op` on the background thread and waits for its result.
    pub(crate) async fn call<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The caller may have stopped waiting (a timeout); the work is done either way.
            let _ = done.send(op(conn));
        });
        self.jobs.send(job).map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable("the sqlite background thread has stopped".into())
}

/// Puts this thread under `SCHED_IDLE`. Where that is refused or unsupported, it runs at normal
/// priority, which costs latency but nothing else.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        if let Err(error) = thread_priority::set_thread_priority_and_policy(
            thread_priority::thread_native_id(),
            ThreadPriority::Min,
            idle,
        ) {
            tracing::warn!(?error, "cannot lower the priority of the sqlite background thread");
        }
    }
}
