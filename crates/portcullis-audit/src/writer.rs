//! The audit writer: one task per node that seals records into the chain and group-commits them.
//!
//! ```text
//! submit ─try_send─► bounded queue ─► take all available (≤ max_batch), in arrival order
//!                                     ─► seal each into the chain (seq, prev_hash, hash)
//!                                     ─► one append_audit transaction ── fails or times out ─► spill file (fsync)
//!                                     ─► acknowledge the batch's sync submitters
//!                                     ─► file / stdout sinks (JSON Lines, flushed per batch)
//! every retry_interval: replay the spill file into the store; empty it once all of it is stored
//! ```
//!
//! Requests never wait on the store: in `async` durability a submission is done once queued. One
//! transaction per batch is what lets a slow disk keep up with many requests (group commit), and
//! sealing in the task keeps the chain strictly sequential without a lock on the request path.
//!
//! While the spill file holds records, new batches are spilled too, so the store receives a node's
//! records in seq order with no gap left open behind a newer record; a replay catches it up within one
//! retry interval of the store coming back.
//!
//! # Loss windows
//! - `Sync`: nothing acknowledged is lost; an acknowledgement means "committed" or "fsynced".
//! - `Async`: on SIGKILL or a crash, what was queued or in the batch being written: at most
//!   `channel_capacity + max_batch` records, in practice the last few milliseconds.
//! - Graceful shutdown ([`WriterTask::shutdown`]): nothing, in either mode.
//! - If the store *and* the spill file fail, records stay in memory (sync submitters get
//!   [`AuditError::NotDurable`]) and are retried; while more than `channel_capacity` are held, the
//!   writer stops taking from the queue, so submitters feel backpressure instead of memory growing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis_types::chain as error_chain;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::sink::Sinks;
use crate::spill::{SpillFile, timed_out};
use crate::submit::{Job, Queues};
use crate::{AuditError, AuditEvent, AuditRecord, AuditStats, AuditStore, Chain, Submitted};

/// When a submission counts as done; see the module docs for what each mode can lose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Done once queued.
    #[default]
    Async,
    /// Done once committed to the store or fsynced to the spill file.
    Sync,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterConfig {
    /// This process's chain. Unique per running writer: two writers with one node fork its chain.
    pub node: String,
    pub durability: Durability,
    /// Where records go while the store fails (JSON Lines); created with its directory if missing.
    pub spill_path: PathBuf,
    /// Queued submissions before [`AuditHandle::submit`] pushes back.
    pub channel_capacity: usize,
    /// Most records in one store transaction.
    pub max_batch: usize,
    /// An extra JSON Lines copy of every record.
    pub file_sink: Option<PathBuf>,
    /// Every record as a JSON line on standard output (for log collectors).
    pub stdout_sink: bool,
    /// How often a non-empty spill file is replayed (and held records retried).
    pub retry_interval: Duration,
    /// A store call taking longer counts as failed (the batch is spilled; if it commits after all, the
    /// replay skips it).
    pub store_timeout: Duration,
    /// `Async` only: after a commit the writer leaves the queue alone this long, so that under load it
    /// commits larger batches and wakes far less often than once per request. It adds this much to
    /// the async loss window; `Sync` submitters are never kept waiting by it.
    pub linger: Duration,
}

impl WriterConfig {
    pub const DEFAULT_CHANNEL_CAPACITY: usize = 65_536;
    pub const DEFAULT_MAX_BATCH: usize = 4096;
    pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_LINGER: Duration = Duration::from_millis(10);

    /// `async` durability, no extra sinks, default sizes.
    pub fn new(node: impl Into<String>, spill_path: impl Into<PathBuf>) -> WriterConfig {
        WriterConfig {
            node: node.into(),
            durability: Durability::Async,
            spill_path: spill_path.into(),
            channel_capacity: WriterConfig::DEFAULT_CHANNEL_CAPACITY,
            max_batch: WriterConfig::DEFAULT_MAX_BATCH,
            file_sink: None,
            stdout_sink: false,
            retry_interval: WriterConfig::DEFAULT_RETRY_INTERVAL,
            store_timeout: WriterConfig::DEFAULT_STORE_TIMEOUT,
            linger: WriterConfig::DEFAULT_LINGER,
        }
    }

    fn validate(&self) -> Result<(), AuditError> {
        if self.node.is_empty() {
            return Err(AuditError::Config("node must not be empty"));
        }
        if self.channel_capacity == 0 {
            return Err(AuditError::Config("channel_capacity must be at least 1"));
        }
        if self.max_batch == 0 {
            return Err(AuditError::Config("max_batch must be at least 1"));
        }
        if self.retry_interval.is_zero() {
            return Err(AuditError::Config("retry_interval must be positive"));
        }
        Ok(())
    }
}

/// Where the server submits events; cheap to clone, one per request if need be.
#[derive(Debug, Clone)]
pub struct AuditHandle {
    queues: Queues,
    durability: Durability,
}

impl AuditHandle {
    /// Queues `event` without blocking; see [`Submitted`] for what awaiting it means. The server should
    /// await it (after the response in `async` durability, before completing it in `sync`).
    pub fn submit(&self, event: AuditEvent) -> Submitted {
        self.queues.submit(event, self.durability == Durability::Sync)
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    pub fn stats(&self) -> &Arc<AuditStats> {
        &self.queues.stats
    }
}

/// The running writer. Keep it and call [`WriterTask::shutdown`] when the server stops. Dropped instead,
/// the task goes on until every [`AuditHandle`] is dropped, then drains and ends by itself.
#[derive(Debug)]
pub struct WriterTask {
    join: JoinHandle<Result<(), AuditError>>,
    stop: CancellationToken,
    stats: Arc<AuditStats>,
}

impl WriterTask {
    /// Stops taking submissions, writes everything queued (store or spill file), replays the spill
    /// file if the store takes it, and returns. Call it after the listeners have stopped: a submission
    /// made after this starts gets [`AuditError::Closed`].
    pub async fn shutdown(self) -> Result<(), AuditError> {
        self.stop.cancel();
        self.join.await.map_err(|error| AuditError::Task(error.to_string()))?
    }

    pub fn stats(&self) -> &Arc<AuditStats> {
        &self.stats
    }
}

/// Starts the writer (namespace for [`AuditWriter::start`]).
#[derive(Debug)]
pub struct AuditWriter;

impl AuditWriter {
    /// Opens the spill file and the sinks, resumes the chain after the newest record in the store or
    /// the spill file, and spawns the task. The store must answer `last_audit` once: starting a chain
    /// without knowing its head could reuse a seq, and the store would then skip the new record.
    pub async fn start(
        config: WriterConfig,
        store: Arc<dyn AuditStore>,
    ) -> Result<(AuditHandle, WriterTask), AuditError> {
        config.validate()?;
        let (spill, spilled) = SpillFile::open(&config.spill_path, &config.node).await?;
        let stored = store.last_audit(&config.node).await?;
        let last = match (stored, spilled.last) {
            (Some(stored), Some(spilled)) => Some(if spilled.0 > stored.0 { spilled } else { stored }),
            (stored, spilled) => stored.or(spilled),
        };
        if spilled.records > 0 {
            tracing::info!(
                records = spilled.records,
                "the audit spill file holds records from an earlier run; replaying"
            );
        }
        let sinks = Sinks::open(config.file_sink.as_deref(), config.stdout_sink).await?;
        let stats = Arc::new(AuditStats::default());
        let (main, main_rx) = mpsc::channel(config.channel_capacity);
        let (abandoned, abandoned_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let writer = Writer {
            chain: Chain::resume(config.node.clone(), last),
            store,
            spill,
            sinks,
            stats: stats.clone(),
            unwritten: Vec::new(),
            max_batch: config.max_batch,
            backlog_limit: config.channel_capacity,
            store_timeout: config.store_timeout,
            store_down: false,
            linger: match config.durability {
                Durability::Async => config.linger,
                Durability::Sync => Duration::ZERO,
            },
        };
        let join = tokio::spawn(writer.run(main_rx, abandoned_rx, stop.clone(), config.retry_interval));
        let handle =
            AuditHandle { queues: Queues { main, abandoned, stats: stats.clone() }, durability: config.durability };
        Ok((handle, WriterTask { join, stop, stats }))
    }
}

struct Writer {
    chain: Chain,
    store: Arc<dyn AuditStore>,
    spill: SpillFile,
    sinks: Sinks,
    stats: Arc<AuditStats>,
    /// Sealed records that neither the store nor the spill file has taken yet, oldest first.
    unwritten: Vec<AuditRecord>,
    max_batch: usize,
    backlog_limit: usize,
    store_timeout: Duration,
    /// For logging the store going down and coming back once each, not per batch.
    store_down: bool,
    /// See [`WriterConfig::linger`]; zero in `Sync` durability.
    linger: Duration,
}

impl Writer {
    async fn run(
        mut self,
        mut main: mpsc::Receiver<Job>,
        mut abandoned: mpsc::UnboundedReceiver<Job>,
        stop: CancellationToken,
        retry_interval: Duration,
    ) -> Result<(), AuditError> {
        let mut jobs = Vec::with_capacity(self.max_batch);
        let mut side_jobs = Vec::new();
        // The first tick is immediate: a spill file left by an earlier run is replayed first.
        let mut ticks = tokio::time::interval(retry_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let room = self.unwritten.len() < self.backlog_limit;
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                _ = ticks.tick() => self.retry().await,
                taken = abandoned.recv_many(&mut side_jobs, self.max_batch), if room => {
                    if taken == 0 {
                        break; // every handle is gone
                    }
                    self.commit(&mut side_jobs).await;
                }
                taken = main.recv_many(&mut jobs, self.max_batch), if room => {
                    if taken == 0 {
                        break;
                    }
                    self.commit(&mut jobs).await;
                    if !self.linger.is_zero() {
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(self.linger) => {}
                        }
                    }
                }
            }
        }
        main.close();
        abandoned.close();
        while main.recv_many(&mut jobs, self.max_batch).await > 0 {
            self.commit(&mut jobs).await;
        }
        while abandoned.recv_many(&mut jobs, self.max_batch).await > 0 {
            self.commit(&mut jobs).await;
        }
        self.retry().await;
        if !self.spill.is_empty() {
            tracing::warn!("audit records remain in the spill file; they are replayed on the next start");
        }
        if self.unwritten.is_empty() {
            Ok(())
        } else {
            tracing::error!(
                records = self.unwritten.len(),
                "audit records lost at shutdown: the store and the spill file both failed"
            );
            Err(AuditError::Unwritten(self.unwritten.len()))
        }
    }

    /// Seals `jobs` in order, writes them (with any held records) and acknowledges their submitters.
    async fn commit(&mut self, jobs: &mut Vec<Job>) {
        self.stats.dequeued(jobs.len());
        let mut acks = Vec::new();
        for job in jobs.drain(..) {
            self.unwritten.push(self.chain.seal(job.event));
            acks.extend(job.ack);
        }
        let written = self.write().await;
        for ack in acks {
            // A submitter that stopped waiting has dropped its receiver; nothing to tell it.
            let _ = ack.send(written.as_ref().map(|_| ()).map_err(|reason| AuditError::NotDurable(reason.clone())));
        }
        if let Ok(records) = written {
            self.sinks.write(&records, &self.stats).await;
        }
    }

    /// Makes the held records durable: one store transaction, or the spill file when the store fails,
    /// times out, or the spill file still holds older records. Returns the records written.
    async fn write(&mut self) -> Result<Vec<AuditRecord>, String> {
        let count = self.unwritten.len();
        if count == 0 {
            return Ok(Vec::new());
        }
        if self.spill.is_empty() {
            let committed = tokio::time::timeout(self.store_timeout, self.store.append_audit(&self.unwritten)).await;
            match committed {
                Ok(Ok(())) => {
                    self.stats.stored(count);
                    return Ok(self.take_unwritten());
                }
                Ok(Err(error)) => self.store_failed(&AuditError::Store(error)),
                Err(_) => self.store_failed(&timed_out(self.store_timeout)),
            }
        }
        match self.spill.append(&self.unwritten).await {
            Ok(()) => {
                self.stats.spilled(count);
                Ok(self.take_unwritten())
            }
            Err(error) => {
                let error = error_chain(&error).to_string();
                tracing::error!(%error, records = count, "audit records could be neither stored nor spilled; holding them and retrying");
                self.stats.set_unwritten(count);
                Err(error)
            }
        }
    }

    /// Retries held records, then replays the spill file.
    async fn retry(&mut self) {
        if !self.unwritten.is_empty()
            && let Ok(records) = self.write().await
        {
            self.sinks.write(&records, &self.stats).await;
        }
        if self.spill.is_empty() {
            return;
        }
        match self.spill.replay(&*self.store, self.max_batch, self.store_timeout).await {
            Ok(count) => {
                self.stats.replayed(count);
                self.store_down = false;
                tracing::info!(records = count, "replayed the audit spill file into the store");
            }
            Err(error @ AuditError::Store(_)) => self.store_failed(&error),
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "could not replay the audit spill file; retrying")
            }
        }
    }

    fn store_failed(&mut self, error: &AuditError) {
        self.stats.store_failed();
        if self.store_down {
            tracing::debug!(error = %error_chain(error), "the audit store is still failing");
        } else {
            tracing::warn!(error = %error_chain(error), "the audit store failed; spilling audit records to disk until it is back");
            self.store_down = true;
        }
    }

    fn take_unwritten(&mut self) -> Vec<AuditRecord> {
        self.stats.set_unwritten(0);
        std::mem::take(&mut self.unwritten)
    }
}
