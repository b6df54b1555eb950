//! The usage recorder: request handlers hand it one [`UsageRecord`] per settled request; a
//! background task sums them per (hour, key, model) and writes the sums to the store in batches.
//!
//! Guarantees:
//! - [`UsageRecorder::record`] never blocks and never waits: it is a `try_send` into a bounded
//!   channel ([`CHANNEL_CAPACITY`]). If that channel is full, the record goes to an unbounded
//!   overflow channel instead (the only case that allocates), so load spikes cost memory, not
//!   records. The task drains both continuously, also while a write is in flight, so the bounded
//!   channel fills only if the task itself is starved of CPU.
//! - Memory held by the task is bounded by the number of distinct (hour, key, model) rows since
//!   the last successful write, not by the number of requests.
//! - A batch is written every `flush_every`, or sooner once [`MAX_PENDING_ROWS`] rows wait.
//!   A batch is one store transaction: all of it counts or none. A failed write is logged and its
//!   sums go back into the pending ones, to be retried with the next tick: nothing is dropped or
//!   counted twice. (Only a commit whose outcome the database itself cannot report, such as an
//!   I/O error inside COMMIT, could be counted twice by the retry.)
//! - [`RecorderTask::shutdown`] takes everything already recorded, waits for a write in flight,
//!   and writes the rest, retrying a few times; what still cannot be written is logged at error
//!   level with its totals and reported in the result.
//! - A crash (or kill -9) loses what was recorded since the last successful write: at most one
//!   `flush_every` of usage, plus the time a failing store has been failing.
//! - A record arriving after shutdown began is logged as lost; the server stops the recorder only
//!   after in-flight requests have drained, so none should.

use portcullis_types::chain;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use portcullis_store::{StoreError, StoreResult, UsageRecord, UsageStore, usage_hour};
use time::OffsetDateTime;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Records the bounded channel holds before the overflow channel takes over.
pub const CHANNEL_CAPACITY: usize = 65_536;

/// Distinct (hour, key, model) rows that trigger a write before the next tick.
pub const MAX_PENDING_ROWS: usize = 16_384;

/// Records taken from the channel per wake-up.
const RECEIVE_BATCH: usize = 1_024;

/// After taking records the task leaves the channel alone this long, so that under load it
/// wakes a few hundred times a second to take many records, not once per request (each wake-up
/// is a context switch on the request path's cores). Usage is written once a `flush_every`
/// anyway, so the pause delays nothing that is waited for.
const RECEIVE_PAUSE: Duration = Duration::from_millis(5);

/// Attempts at the final write on shutdown, and the pause after each failed one.
const FINAL_ATTEMPTS: u32 = 3;
const FINAL_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The hot-path handle: clone it freely (two channel senders).
#[derive(Debug, Clone)]
pub struct UsageRecorder {
    queue: mpsc::Sender<UsageRecord>,
    overflow: mpsc::UnboundedSender<UsageRecord>,
}

/// The background task; stop it with [`RecorderTask::shutdown`]. Dropping it instead also stops
/// the task, which then writes what it holds unobserved.
#[derive(Debug)]
pub struct RecorderTask {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<StoreResult<()>>,
}

impl UsageRecorder {
    /// Spawns the aggregating task on the current tokio runtime.
    pub fn start(store: Arc<dyn UsageStore>, flush_every: Duration) -> (UsageRecorder, RecorderTask) {
        UsageRecorder::start_with_capacity(store, flush_every, CHANNEL_CAPACITY)
    }

    fn start_with_capacity(
        store: Arc<dyn UsageStore>,
        flush_every: Duration,
        capacity: usize,
    ) -> (UsageRecorder, RecorderTask) {
        let (queue, queue_rx) = mpsc::channel(capacity.max(1));
        let (overflow, overflow_rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = oneshot::channel();
        let handle = tokio::spawn(run(store, flush_every, queue_rx, overflow_rx, stop_rx));
        (UsageRecorder { queue, overflow }, RecorderTask { stop, handle })
    }

    /// Hands over one settled request's usage. Never blocks; see the module docs.
    pub fn record(&self, record: UsageRecord) {
        let record = match self.queue.try_send(record) {
            Ok(()) => return,
            Err(TrySendError::Full(record)) => record,
            Err(TrySendError::Closed(record)) => return lost(&record),
        };
        if let Err(mpsc::error::SendError(record)) = self.overflow.send(record) {
            lost(&record);
        }
    }
}

impl RecorderTask {
    /// Stops the task after it has written everything recorded so far. `Err` means some usage
    /// could not be written (it has been logged with its totals).
    pub async fn shutdown(self) -> StoreResult<()> {
        // An error means the task already ended (every recorder was dropped): just wait for it.
        let _ = self.stop.send(());
        self.handle.await.map_err(|error| StoreError::unavailable_because("usage recorder task failed", error))?
    }
}

fn lost(record: &UsageRecord) {
    tracing::error!(
        key_id = %record.key_id,
        model = %record.model,
        requests = record.requests,
        tokens = record.prompt_tokens.saturating_add(record.completion_tokens),
        cost_pico = record.cost_pico,
        "usage recorded after the recorder stopped; it is lost"
    );
}

type Write = Pin<Box<dyn Future<Output = (Vec<UsageRecord>, StoreResult<()>)> + Send>>;

fn write(store: &Arc<dyn UsageStore>, batch: Vec<UsageRecord>) -> Write {
    let store = Arc::clone(store);
    Box::pin(async move {
        let result = store.record_usage(&batch).await;
        (batch, result)
    })
}

/// The write in flight, or a future that never finishes when there is none.
async fn finished(writing: &mut Option<Write>) -> (Vec<UsageRecord>, StoreResult<()>) {
    match writing {
        Some(write) => write.await,
        None => std::future::pending().await,
    }
}

async fn run(
    store: Arc<dyn UsageStore>,
    flush_every: Duration,
    mut queue: mpsc::Receiver<UsageRecord>,
    mut overflow: mpsc::UnboundedReceiver<UsageRecord>,
    mut stop: oneshot::Receiver<()>,
) -> StoreResult<()> {
    let mut pending = Pending::default();
    let mut writing: Option<Write> = None;
    let mut received = Vec::with_capacity(RECEIVE_BATCH);
    let period = flush_every.max(Duration::from_millis(1));
    // The first tick is one period away: a batch is never written the moment the task starts.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let mut paused_until = None;
    loop {
        let mut due = false;
        tokio::select! {
            // A dropped `RecorderTask` stops the task too.
            _ = &mut stop => break,
            () = tokio::time::sleep_until(paused_until.unwrap_or_else(tokio::time::Instant::now)),
                if paused_until.is_some() => paused_until = None,
            count = queue.recv_many(&mut received, RECEIVE_BATCH), if paused_until.is_none() => {
                if count == 0 {
                    break; // every recorder is gone
                }
                pending.add_all(received.drain(..));
                paused_until = Some(tokio::time::Instant::now() + RECEIVE_PAUSE);
            }
            Some(record) = overflow.recv() => pending.add(record),
            _ = ticker.tick() => due = true,
            (batch, result) = finished(&mut writing) => {
                writing = None;
                if let Err(error) = result {
                    tracing::warn!(error = %chain(&error), rows = batch.len(), "usage write failed; retrying with the next batch");
                    pending.add_all(batch);
                }
            }
        }
        if writing.is_none() && !pending.is_empty() && (due || pending.len() >= MAX_PENDING_ROWS) {
            writing = Some(write(&store, pending.take()));
        }
    }

    // Take everything already recorded; later records are refused (and logged) by `record`.
    queue.close();
    overflow.close();
    while let Some(record) = queue.recv().await {
        pending.add(record);
    }
    while let Some(record) = overflow.recv().await {
        pending.add(record);
    }
    if let Some(write) = writing.take() {
        let (batch, result) = write.await;
        if result.is_err() {
            pending.add_all(batch);
        }
    }
    final_write(&store, pending).await
}

async fn final_write(store: &Arc<dyn UsageStore>, mut pending: Pending) -> StoreResult<()> {
    let mut attempt = 0;
    while !pending.is_empty() {
        attempt += 1;
        let batch = pending.take();
        match store.record_usage(&batch).await {
            Ok(()) => break,
            Err(error) if attempt < FINAL_ATTEMPTS => {
                tracing::warn!(error = %chain(&error), attempt, rows = batch.len(), "final usage write failed; retrying");
                pending.add_all(batch);
                tokio::time::sleep(FINAL_RETRY_PAUSE * attempt).await;
            }
            Err(error) => {
                let total = |count: fn(&UsageRecord) -> u64| batch.iter().map(count).fold(0, u64::saturating_add);
                let requests = total(|row| row.requests);
                let tokens = total(|row| row.prompt_tokens.saturating_add(row.completion_tokens));
                let cost_pico = total(|row| row.cost_pico);
                let rows = batch.len();
                tracing::error!(error = %chain(&error), rows, requests, tokens, cost_pico, "usage not written at shutdown; it is lost");
                return Err(error);
            }
        }
    }
    Ok(())
}

/// Sums waiting to be written, one per (hour, key, model).
#[derive(Debug, Default)]
struct Pending {
    rows: HashMap<(OffsetDateTime, String, String), Sums>,
}

#[derive(Debug)]
struct Sums {
    /// The first team seen for the row, as the store keeps it.
    team: Option<String>,
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_pico: u64,
    estimated_requests: u64,
}

impl Pending {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn add(&mut self, record: UsageRecord) {
        let UsageRecord {
            at,
            key_id,
            team,
            model,
            requests,
            prompt_tokens,
            completion_tokens,
            cost_pico,
            estimated_requests,
        } = record;
        let sums = self.rows.entry((usage_hour(at), key_id, model)).or_insert_with(|| Sums {
            team,
            requests: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_pico: 0,
            estimated_requests: 0,
        });
        sums.requests = sums.requests.saturating_add(requests);
        sums.prompt_tokens = sums.prompt_tokens.saturating_add(prompt_tokens);
        sums.completion_tokens = sums.completion_tokens.saturating_add(completion_tokens);
        sums.cost_pico = sums.cost_pico.saturating_add(cost_pico);
        sums.estimated_requests = sums.estimated_requests.saturating_add(estimated_requests);
    }

    fn add_all(&mut self, records: impl IntoIterator<Item = UsageRecord>) {
        for record in records {
            self.add(record);
        }
    }

    /// Everything pending as one batch, each row stamped with its hour; leaves nothing behind.
    fn take(&mut self) -> Vec<UsageRecord> {
        self.rows
            .drain()
            .map(|((at, key_id, model), sums)| UsageRecord {
                at,
                key_id,
                team: sums.team,
                model,
                requests: sums.requests,
                prompt_tokens: sums.prompt_tokens,
                completion_tokens: sums.completion_tokens,
                cost_pico: sums.cost_pico,
                estimated_requests: sums.estimated_requests,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use portcullis_store::{Migrator, UsageGrouping, UsageQuery, UsageRow, UsageTotal};
    use portcullis_store_sqlite::SqliteStore;
    use time::macros::datetime;

    use super::*;

    const HOUR: OffsetDateTime = datetime!(2025-06-01 10:00 UTC);
    const FOREVER: Duration = Duration::from_secs(3600);

    /// An in-memory SQLite store that can be told to fail its next writes, and counts batches.
    struct TestStore {
        sqlite: SqliteStore,
        failures_left: AtomicUsize,
        batches: Mutex<Vec<usize>>,
    }

    impl TestStore {
        async fn new(failures: usize) -> Arc<TestStore> {
            let sqlite = SqliteStore::open_in_memory().unwrap();
            sqlite.migrate().await.unwrap();
            Arc::new(TestStore { sqlite, failures_left: AtomicUsize::new(failures), batches: Mutex::default() })
        }

        async fn by_key(&self) -> Vec<UsageRow> {
            let query = UsageQuery {
                key_id: None,
                team: None,
                model: None,
                since: HOUR - time::Duration::days(1),
                until: HOUR + time::Duration::days(1),
                group_by: UsageGrouping::Key,
            };
            self.sqlite.usage_report(&query).await.unwrap()
        }

        fn batches(&self) -> Vec<usize> {
            self.batches.lock().unwrap().clone()
        }
    }

    type Boxed<'a, T> = Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

    /// Written out as `#[async_trait]` expands it (this crate does not depend on `async-trait`).
    impl UsageStore for TestStore {
        fn record_usage<'s, 'b, 'f>(&'s self, batch: &'b [UsageRecord]) -> Boxed<'f, ()>
        where
            's: 'f,
            'b: 'f,
            Self: 'f,
        {
            Box::pin(async move {
                let fail =
                    self.failures_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                if fail {
                    return Err(StoreError::unavailable("disk on fire"));
                }
                self.batches.lock().unwrap().push(batch.len());
                self.sqlite.record_usage(batch).await
            })
        }

        fn usage_totals_since<'s, 'f>(&'s self, since: OffsetDateTime) -> Boxed<'f, Vec<UsageTotal>>
        where
            's: 'f,
            Self: 'f,
        {
            self.sqlite.usage_totals_since(since)
        }

        fn usage_report<'s, 'q, 'f>(&'s self, query: &'q UsageQuery) -> Boxed<'f, Vec<UsageRow>>
        where
            's: 'f,
            'q: 'f,
            Self: 'f,
        {
            self.sqlite.usage_report(query)
        }
    }

    fn record(minute: i64, key: &str, model: &str) -> UsageRecord {
        UsageRecord {
            at: HOUR + time::Duration::minutes(minute),
            key_id: key.into(),
            team: Some("acme".into()),
            model: model.into(),
            requests: 1,
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_pico: 1_000_000,
            estimated_requests: u64::from(minute % 2 == 0),
        }
    }

    fn row(key: &str, requests: u64, estimated_requests: u64) -> UsageRow {
        UsageRow {
            key_id: Some(key.into()),
            team: Some("acme".into()),
            requests,
            prompt_tokens: 10 * requests,
            completion_tokens: 5 * requests,
            cost_pico: 1_000_000 * requests,
            estimated_requests,
            ..UsageRow::default()
        }
    }

    /// Waits (up to 5 s) until the store holds `expected`.
    async fn eventually(store: &TestStore, expected: &[UsageRow]) {
        for _ in 0..500 {
            if store.by_key().await == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.by_key().await, expected);
    }

    #[test]
    fn records_of_one_hour_key_and_model_become_one_row() {
        let mut pending = Pending::default();
        pending.add_all((0..60).map(|minute| record(minute, "k1", "m1")));
        pending.add(record(5, "k1", "m2"));
        pending.add(record(61, "k1", "m1")); // the next hour
        pending.add(UsageRecord { team: Some("other".into()), ..record(7, "k2", "m1") });
        pending.add(UsageRecord { team: None, ..record(8, "k2", "m1") });
        assert_eq!(pending.len(), 4);

        let mut batch = pending.take();
        assert!(pending.is_empty(), "take leaves nothing behind");
        batch.sort_by(|a, b| (a.at, &a.key_id, &a.model).cmp(&(b.at, &b.key_id, &b.model)));
        let summed = &batch[0];
        assert_eq!((summed.at, summed.key_id.as_str(), summed.model.as_str()), (HOUR, "k1", "m1"));
        assert_eq!(
            (summed.requests, summed.prompt_tokens, summed.completion_tokens, summed.cost_pico),
            (60, 600, 300, 60_000_000)
        );
        assert_eq!(summed.estimated_requests, 30);
        assert_eq!((batch[1].key_id.as_str(), batch[1].model.as_str(), batch[1].requests), ("k1", "m2", 1));
        assert_eq!((batch[2].key_id.as_str(), batch[2].team.as_deref(), batch[2].requests), ("k2", Some("other"), 2));
        assert_eq!((batch[3].at, batch[3].requests), (HOUR + time::Duration::hours(1), 1));
    }

    #[tokio::test]
    async fn shutdown_writes_everything_pending_in_one_batch() {
        let store = TestStore::new(0).await;
        let (recorder, task) = UsageRecorder::start(store.clone(), FOREVER);
        for minute in 0..1_000 {
            recorder.record(record(minute % 60, "k1", "m1"));
        }
        recorder.record(record(1, "k2", "m1"));
        tokio::task::yield_now().await;
        assert!(store.by_key().await.is_empty(), "nothing written before the first tick is due");

        task.shutdown().await.unwrap();
        assert_eq!(store.by_key().await, [row("k1", 1_000, 500), row("k2", 1, 0)]);
        assert_eq!(store.batches(), [2], "one batch of one row per (hour, key, model)");
        // After shutdown a record is refused (and logged), never a panic.
        recorder.record(record(2, "k3", "m1"));
    }

    #[tokio::test]
    async fn batches_are_written_every_tick() {
        let store = TestStore::new(0).await;
        let (recorder, task) = UsageRecorder::start(store.clone(), Duration::from_millis(20));
        recorder.record(record(1, "k1", "m1"));
        eventually(&store, &[row("k1", 1, 0)]).await;
        recorder.record(record(2, "k1", "m1"));
        eventually(&store, &[row("k1", 2, 1)]).await;
        task.shutdown().await.unwrap();
        assert_eq!(store.by_key().await, [row("k1", 2, 1)], "nothing counted twice");
    }

    #[tokio::test]
    async fn a_failed_write_is_retried_without_loss_or_double_count() {
        let store = TestStore::new(3).await;
        let (recorder, task) = UsageRecorder::start(store.clone(), Duration::from_millis(10));
        for minute in 0..10 {
            recorder.record(record(minute, "k1", "m1"));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        eventually(&store, &[row("k1", 10, 5)]).await;
        assert_eq!(store.failures_left.load(Ordering::SeqCst), 0, "the failures happened");
        task.shutdown().await.unwrap();
        assert_eq!(store.by_key().await, [row("k1", 10, 5)]);
    }

    #[tokio::test]
    async fn shutdown_retries_then_reports_what_it_could_not_write() {
        let store = TestStore::new(1).await;
        let (recorder, task) = UsageRecorder::start(store.clone(), FOREVER);
        recorder.record(record(1, "k1", "m1"));
        task.shutdown().await.unwrap();
        assert_eq!(store.by_key().await, [row("k1", 1, 0)], "the second attempt wrote it");

        let store = TestStore::new(usize::MAX).await;
        let (recorder, task) = UsageRecorder::start(store.clone(), FOREVER);
        recorder.record(record(1, "k1", "m1"));
        let result = tokio::time::timeout(Duration::from_secs(10), task.shutdown()).await.unwrap();
        assert!(matches!(result, Err(StoreError::Unavailable { .. })), "{result:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_channel_spills_into_the_overflow_without_loss() {
        let store = TestStore::new(0).await;
        let (recorder, task) = UsageRecorder::start_with_capacity(store.clone(), FOREVER, 4);
        // On a current-thread runtime the task cannot run during this loop: the channel fills.
        for minute in 0..10_000 {
            recorder.record(record(minute % 60, "k1", "m1"));
        }
        task.shutdown().await.unwrap();
        assert_eq!(store.by_key().await, [row("k1", 10_000, 5_000)]);
    }

    #[tokio::test]
    async fn dropping_every_recorder_ends_the_task_after_a_final_write() {
        let store = TestStore::new(0).await;
        let (recorder, task) = UsageRecorder::start(store.clone(), FOREVER);
        let clone = recorder.clone();
        recorder.record(record(1, "k1", "m1"));
        clone.record(record(2, "k1", "m1"));
        drop((recorder, clone));
        task.shutdown().await.unwrap();
        assert_eq!(store.by_key().await, [row("k1", 2, 1)]);
    }

    #[tokio::test]
    async fn many_rows_are_written_before_the_tick() {
        let store = TestStore::new(0).await;
        let (recorder, task) = UsageRecorder::start(store.clone(), FOREVER);
        for key in 0..MAX_PENDING_ROWS {
            recorder.record(record(1, &format!("k{key:05}"), "m1"));
        }
        for _ in 0..500 {
            if !store.batches().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.batches(), [MAX_PENDING_ROWS], "written without waiting an hour");
        task.shutdown().await.unwrap();
    }
}
