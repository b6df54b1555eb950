//! A second connection, on a thread of its own, for bulk writes nobody waits for: the audit
//! log's batches.
//!
//! A batch (up to thousands of inserts into a table and five indexes, the commit, now and then a
//! WAL checkpoint) used to hold the store's one connection for its whole length, so a key lookup
//! after a cache miss, or an admin read, queued behind it. On a connection of its own it only
//! shares SQLite's write lock (WAL readers never wait for a writer), and it no longer occupies a
//! thread of tokio's blocking pool. Both connections write to one WAL database; each waits for
//! the other's write lock (`busy_timeout`).
//!
//! The thread runs at normal priority. Under `SCHED_IDLE` a batch never delayed a request
//! (p99 at concurrency 1 on two shared cores: 0.26–0.45 ms instead of 0.6–1.2 ms), but on a
//! saturated machine it got almost no CPU: the audit queue filled, backpressure stalled requests
//! (p99 at 32 connections 5 → 15–19 ms) and memory grew by the queued records. A gateway's audit
//! log must keep up under load; see docs/benchmarks.md.

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
        thread::Builder::new()
            .name("sqlite-background".into())
            .spawn(move || {
                let mut conn = conn;
                while let Ok(job) = queue.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|err| {
                StoreError::unavailable_because(format!("cannot start a thread for {}", path.display()), err)
            })?;
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
    StoreError::unavailable("the sqlite background thread has stopped")
}
