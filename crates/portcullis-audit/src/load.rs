//! Driving a writer with many records at once, for benchmarks and load tests: the submitting side
//! of a busy gateway without the gateway.

use std::time::{Duration, Instant};

use crate::{AuditError, AuditEvent, AuditHandle};

/// Submits `count` events, `event(0)` to `event(count - 1)`, spread over `submitters` concurrent
/// tasks (each awaiting its own submission, so with `sync` durability each waits for its record
/// to be durable before the next), and returns the time until the writer has written them all.
/// Must run inside a tokio runtime.
pub async fn submit_spread(
    handle: &AuditHandle,
    count: u64,
    submitters: u64,
    event: fn(u64) -> AuditEvent,
) -> Result<Duration, AuditError> {
    let started = Instant::now();
    let written_before = handle.stats().snapshot().written;
    let mut tasks = Vec::new();
    let submitters = submitters.max(1);
    for first in 0..submitters {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = first;
            while i < count {
                handle.submit(event(i)).await?;
                i += submitters;
            }
            Ok::<(), AuditError>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|error| AuditError::Task(error.to_string()))??;
    }
    while handle.stats().snapshot().written < written_before + count {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(started.elapsed())
}
