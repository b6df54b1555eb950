//! The response body handed to the server: the upstream's body, frame by frame as it arrives,
//! with the model's idle and total timeouts enforced and the endpoint's request slot held until
//! the body ends or is dropped.
//!
//! Frames are passed through as they are polled (no buffering, no copying of `Bytes`), so a
//! streamed completion reaches the client token by token. Dropping the body (the client hung up)
//! drops the client's response body mid-body, which closes the upstream connection and so cancels the
//! generation, and drops the slot guard, which frees the endpoint's slot.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::client::ResponseBody;
use crate::error::UpstreamBodyError;
use crate::pool::EndpointGuard;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How far away a disabled timer is armed: never, for any practical purpose.
const NEVER: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 10);

/// `now + after`, or a far-away instant when the timeout is off (`None`).
pub(crate) fn deadline_after(now: Instant, after: Option<Duration>) -> Instant {
    let wait = after.unwrap_or(NEVER);
    now.checked_add(wait).or_else(|| now.checked_add(NEVER)).unwrap_or(now)
}

/// While frames keep coming without a pause, the clock is read (for the total deadline) only
/// every this many frames: a stream that is always ready still meets its deadline, and a burst
/// of chunks costs no clock read per chunk.
const FRAMES_PER_CLOCK_READ: u32 = 32;

pin_project! {
    /// A model server's response body. Implements
    /// `http_body::Body<Data = Bytes, Error = UpstreamBodyError>`, is `Send + 'static`, and can be
    /// wrapped in `axum::body::Body::new`. After an error it ends.
    ///
    /// The timeouts cost nothing while the body is ready: one timer, armed only when the inner
    /// body has nothing to give, at the earlier of the idle and total deadlines. The idle
    /// deadline is taken from that moment (the last frame came just before it).
    ///
    /// The type parameter only exists so the timeout logic can be tested without a network;
    /// everything public uses the default, the client's [`ResponseBody`].
    pub struct UpstreamBody<B = ResponseBody> {
        // `None` once the body has ended, failed or timed out: dropping the inner body there
        // closes the upstream connection instead of waiting for the server to drop us.
        inner: Option<B>,
        guard: Option<EndpointGuard>,
        idle_timeout: Option<Duration>,
        // Recomputed when the body pauses after frames; far away when idle_timeout is off.
        idle_deadline: Instant,
        total_deadline: Instant,
        total_limit: Duration,
        // Frames since the body last paused (when the idle deadline is recomputed).
        frames: u32,
        // What `timer` is armed for; `None` before the first pause.
        armed_for: Option<Instant>,
        #[pin]
        timer: Sleep,
    }
}

impl<B> UpstreamBody<B> {
    /// `total_deadline` is when the whole exchange (which began before the response head) must
    /// be over; `total_limit` is only for the error message. `None` timeouts are off.
    pub(crate) fn new(
        inner: B,
        guard: Option<EndpointGuard>,
        idle_timeout: Option<Duration>,
        total_deadline: Instant,
        total_limit: Duration,
    ) -> UpstreamBody<B> {
        let now = Instant::now();
        UpstreamBody {
            inner: Some(inner),
            guard,
            idle_timeout,
            idle_deadline: deadline_after(now, idle_timeout),
            total_deadline,
            total_limit,
            frames: 0,
            armed_for: None,
            // Not registered with the timer wheel until first polled.
            timer: tokio::time::sleep_until(total_deadline),
        }
    }
}

impl<B> fmt::Debug for UpstreamBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("ended", &self.inner.is_none())
            .field("endpoint", &self.guard.as_ref().map(|guard| guard.endpoint().base()))
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// Ends the body: the inner body is dropped (closing an unfinished upstream connection) and the
/// slot released. `failed` counts the end as a failure of the endpoint for passive ejection.
fn finish<B>(inner: &mut Option<B>, guard: &mut Option<EndpointGuard>, failed: bool) {
    *inner = None;
    if let Some(guard) = guard.take()
        && failed
    {
        guard.endpoint().record_failure();
    }
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // A stream that is always ready never pauses; it still meets its total deadline.
        // Running past `total` is not counted against the endpoint: a long generation is not a
        // sick server.
        if *this.frames > 0
            && this.frames.is_multiple_of(FRAMES_PER_CLOCK_READ)
            && Instant::now() >= *this.total_deadline
        {
            finish(this.inner, this.guard, false);
            return Poll::Ready(Some(Err(UpstreamBodyError::TotalTimeout { limit: *this.total_limit })));
        }
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.frames = this.frames.saturating_add(1);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                finish(this.inner, this.guard, true);
                Poll::Ready(Some(Err(UpstreamBodyError::Upstream(error.into()))))
            }
            Poll::Ready(None) => {
                finish(this.inner, this.guard, false);
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                let now = Instant::now();
                if *this.frames > 0 {
                    *this.frames = 0;
                    *this.idle_deadline = deadline_after(now, *this.idle_timeout);
                }
                if now >= *this.total_deadline {
                    finish(this.inner, this.guard, false);
                    return Poll::Ready(Some(Err(UpstreamBodyError::TotalTimeout { limit: *this.total_limit })));
                }
                if let Some(after) = *this.idle_timeout
                    && now >= *this.idle_deadline
                {
                    // A stalled stream is a failure of the endpoint.
                    finish(this.inner, this.guard, true);
                    return Poll::Ready(Some(Err(UpstreamBodyError::IdleTimeout { after })));
                }
                let wake_at = (*this.idle_deadline).min(*this.total_deadline);
                if *this.armed_for != Some(wake_at) {
                    this.timer.as_mut().reset(wake_at);
                    *this.armed_for = Some(wake_at);
                }
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // Fired: the loop finds which deadline passed (re-arming if, at the clock's
                // granularity, neither quite has).
                *this.armed_for = None;
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;
    use http_body_util::channel::{Channel, Sender};
    use url::Url;

    use super::*;
    use crate::pool::{EjectionPolicy, Endpoint, Pool};

    const IDLE: Duration = Duration::from_secs(5);
    const TOTAL: Duration = Duration::from_secs(60);

    fn pool() -> Pool {
        let policy = EjectionPolicy { consecutive_failures: 1, duration: Duration::from_secs(30) };
        let url = Url::parse("http://127.0.0.1:9").unwrap();
        Pool::new(vec![Arc::new(Endpoint::new(&url, policy, Instant::now()))], None, 0)
    }

    type TestBody = Pin<Box<UpstreamBody<Channel<Bytes, std::io::Error>>>>;

    fn body(pool: &Pool) -> (Sender<Bytes, std::io::Error>, TestBody) {
        let (sender, channel) = Channel::new(4);
        let (_, guard) = pool.select(&[false]).unwrap();
        let deadline = Instant::now() + TOTAL;
        (sender, Box::pin(UpstreamBody::new(channel, Some(guard), Some(IDLE), deadline, TOTAL)))
    }

    async fn next_data(body: &mut TestBody) -> Option<Bytes> {
        body.frame().await.map(|frame| frame.unwrap().into_data().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn frames_pass_through_and_each_one_restarts_the_idle_timer() {
        let pool = pool();
        let (mut sender, mut body) = body(&pool);
        for chunk in ["a", "b", "c"] {
            let quiet = tokio::time::timeout(IDLE - Duration::from_millis(10), body.frame()).await;
            assert!(quiet.is_err(), "neither a frame nor a timeout just before the idle limit");
            sender.send_data(Bytes::from(chunk)).await.unwrap();
            assert_eq!(next_data(&mut body).await.unwrap(), chunk);
        }
        assert_eq!(pool.endpoints()[0].outstanding(), 1, "the slot is held while the body is open");
        drop(sender);
        assert!(body.frame().await.is_none());
        assert_eq!(pool.endpoints()[0].outstanding(), 0, "the end of the body frees the slot");
        assert!(!pool.endpoints()[0].is_ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_yields_an_error_ends_the_body_and_counts_as_a_failure() {
        let pool = pool();
        let (mut sender, mut body) = body(&pool);
        sender.send_data(Bytes::from("first")).await.unwrap();
        assert_eq!(next_data(&mut body).await.unwrap(), "first");
        let started = Instant::now();
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(matches!(error, UpstreamBodyError::IdleTimeout { after } if after == IDLE), "{error}");
        assert_eq!(started.elapsed(), IDLE);
        assert!(body.frame().await.is_none(), "the body ends after the error");
        assert_eq!(pool.endpoints()[0].outstanding(), 0);
        assert!(pool.endpoints()[0].is_ejected(), "a stalled stream is a failure of the endpoint");
        assert!(sender.send_data(Bytes::from("late")).await.is_err(), "the upstream side is dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn total_deadline_cuts_a_stream_that_never_goes_idle() {
        let pool = pool();
        let (mut sender, mut body) = body(&pool);
        let error = loop {
            tokio::time::advance(Duration::from_secs(1)).await;
            if sender.send_data(Bytes::from("tok")).await.is_err() {
                panic!("the body ended without an error");
            }
            match body.frame().await.unwrap() {
                Ok(_) => continue,
                Err(error) => break error,
            }
        };
        assert!(matches!(error, UpstreamBodyError::TotalTimeout { limit } if limit == TOTAL), "{error}");
        assert_eq!(pool.endpoints()[0].outstanding(), 0);
        assert!(!pool.endpoints()[0].is_ejected(), "a long generation is not the endpoint's fault");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_body_mid_stream_frees_the_slot() {
        let pool = pool();
        let (mut sender, mut body) = body(&pool);
        sender.send_data(Bytes::from("first")).await.unwrap();
        assert_eq!(next_data(&mut body).await.unwrap(), "first");
        drop(body);
        assert_eq!(pool.endpoints()[0].outstanding(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_a_silent_stream_waits() {
        let pool = pool();
        let (sender, channel) = Channel::<Bytes, std::io::Error>::new(1);
        let (_, guard) = pool.select(&[false]).unwrap();
        let mut body =
            Box::pin(UpstreamBody::new(channel, Some(guard), None, deadline_after(Instant::now(), None), TOTAL));
        let waited = tokio::time::timeout(Duration::from_secs(3600), body.frame()).await;
        assert!(waited.is_err(), "still waiting after an hour");
        drop(sender);
    }
}
