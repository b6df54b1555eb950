//! Request bodies with a deadline: a client that stops sending, or sends too slowly, gets 408
//! instead of holding its connection, its buffer and its concurrency slot for as long as it likes.
//!
//! Two rules, both from `[server]`: no silence longer than `body_read_timeout`, and once that
//! long has passed, an average of at least `min_body_rate` bytes a second (the body's deadline
//! is `start + body_read_timeout + received / min_body_rate`). The timer is armed only when the
//! body waits for the client: a body that arrives with its head never allocates one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;

/// The body's deadline settings.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeouts {
    pub read_timeout: Duration,
    /// Bytes per second; 0 = none.
    pub min_rate: u64,
}

/// The client sent its body too slowly; answered with 408 `request_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly")]
pub struct BodyTooSlow;

pin_project! {
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        timeouts: BodyTimeouts,
        started: Option<Instant>,
        last_progress: Option<Instant>,
        received: u64,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, timeouts: BodyTimeouts) -> Self {
        TimedBody { inner, timeouts, started: None, last_progress: None, received: 0, timer: None }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let now = Instant::now();
        let started = *this.started.get_or_insert(now);
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.received = this.received.saturating_add(data.len() as u64);
                }
                *this.last_progress = Some(now);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = deadline(*this.timeouts, started, this.last_progress.unwrap_or(started), *this.received);
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
                if timer.deadline() != deadline.into() {
                    timer.as_mut().reset(deadline.into());
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTooSlow)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The earlier of the silence deadline and the rate deadline.
fn deadline(timeouts: BodyTimeouts, started: Instant, last_progress: Instant, received: u64) -> Instant {
    let silence = last_progress + timeouts.read_timeout;
    if timeouts.min_rate == 0 {
        return silence;
    }
    let earned = Duration::from_secs_f64(received as f64 / timeouts.min_rate as f64);
    silence.min(started + timeouts.read_timeout + earned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: BodyTimeouts = BodyTimeouts { read_timeout: Duration::from_secs(10), min_rate: 1000 };

    #[test]
    fn silence_is_cut_at_the_read_timeout_and_a_trickle_at_the_rate() {
        let start = Instant::now();
        // Nothing yet: ten seconds.
        assert_eq!(deadline(TIMEOUTS, start, start, 0), start + Duration::from_secs(10));
        // 5 000 bytes by second 8: earned five more seconds, but silence still counts from second 8.
        let at = start + Duration::from_secs(8);
        assert_eq!(deadline(TIMEOUTS, start, at, 5_000), start + Duration::from_secs(15));
        // A trickle of one byte a second keeps the silence rule quiet; the rate rule ends it.
        let at = start + Duration::from_secs(30);
        assert_eq!(deadline(TIMEOUTS, start, at, 30), start + Duration::from_millis(10_030));
        let no_rate = BodyTimeouts { min_rate: 0, ..TIMEOUTS };
        assert_eq!(deadline(no_rate, start, at, 30), at + Duration::from_secs(10));
    }
}
