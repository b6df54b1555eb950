//! Where log lines go: from the request path into a bounded queue, and from there to stderr in
//! batches, written by a thread of their own every [`DRAIN_INTERVAL`].
//!
//! A request never waits on a write (or on a pipe to a slow collector). Unlike a writer thread
//! that blocks on its queue (tracing-appender's), this one is not woken by each line: it sleeps
//! for the interval and then drains whatever accumulated, so it wakes at most a hundred times a
//! second however busy the gateway is, instead of once per request (a futex wake, and on a busy
//! machine a context switch plus the spin-wait of the queue's receiver). A line waits at most
//! the interval. Nothing is dropped: when the queue is full, the logger waits for room.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the queue.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Lines the queue holds before loggers wait.
const QUEUE_LINES: usize = 128 * 1024;

/// The write buffer: a drained batch leaves in writes of up to this size.
const BUFFER_BYTES: usize = 64 * 1024;

/// Hands lines to the writer thread; plugged into the subscriber with `with_writer`.
#[derive(Debug)]
pub struct LogWriter {
    queue: SyncSender<Vec<u8>>,
}

/// Stops the writer thread when dropped, after it has written every queued line.
#[derive(Debug)]
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    stop: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread, writing to `out`.
pub fn start(out: impl Write + Send + 'static) -> io::Result<(LogWriter, LogGuard)> {
    let (queue, lines) = mpsc::sync_channel(QUEUE_LINES);
    let (stop, stopped) = mpsc::sync_channel(1);
    let out = io::BufWriter::with_capacity(BUFFER_BYTES, out);
    let thread = std::thread::Builder::new().name("log-writer".into()).spawn(move || drain(&lines, &stopped, out))?;
    Ok((LogWriter { queue }, LogGuard { stop: Some(stop), thread: Some(thread) }))
}

fn drain(lines: &Receiver<Vec<u8>>, stopped: &Receiver<()>, mut out: impl Write) {
    loop {
        let last_round = !matches!(stopped.recv_timeout(DRAIN_INTERVAL), Err(RecvTimeoutError::Timeout));
        // Write errors are ignored: with stderr gone there is nowhere to report them.
        for line in lines.try_iter() {
            let _ = out.write_all(&line);
        }
        let _ = out.flush();
        if last_round {
            return;
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Write for &LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.queue.try_send(buf.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(line)) => {
                self.queue.send(line).map_err(|_| io::ErrorKind::BrokenPipe)?;
            }
            Err(TrySendError::Disconnected(_)) => return Err(io::ErrorKind::BrokenPipe.into()),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::*;

    /// An `out` whose bytes the test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_come_out_in_order_within_the_interval() {
        let out = Shared::default();
        let (writer, _guard) = start(out.clone()).unwrap();
        (&writer).write_all(b"one\n").unwrap();
        (&writer).write_all(b"two\n").unwrap();
        let started = Instant::now();
        while out.0.lock().unwrap().len() < 8 {
            assert!(started.elapsed() < Duration::from_secs(5), "lines never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*out.0.lock().unwrap(), b"one\ntwo\n");
    }

    #[test]
    fn dropping_the_guard_writes_everything_queued_and_more_than_the_queue_holds_waits() {
        let out = Shared::default();
        let (writer, guard) = start(out.clone()).unwrap();
        let lines = QUEUE_LINES + 10;
        for n in 0..lines {
            (&writer).write_all(format!("{n}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let written = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(written.lines().count(), lines, "none dropped");
        assert_eq!(written.lines().last(), Some((lines - 1).to_string().as_str()));
        assert!((&writer).write_all(b"late\n").is_err(), "after the guard, writes fail");
    }
}
