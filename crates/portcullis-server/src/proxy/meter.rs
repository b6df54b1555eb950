//! The response body on its way to the client, metered: it carries the real token usage (read
//! from the JSON answer before it was relayed, or from the stream's usage chunk), strips the usage chunk the client did not
//! ask for, stops a stream that runs past its reservation, and reports how it ended exactly once
//! — also when the client hangs up and the body is dropped half-way. For a request that captures
//! content it also reports the generated text the client was sent.

use portcullis_types::chain;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use portcullis_audit::Submitted;
use portcullis_types::openai::Usage;

use super::capture::CapturedText;
use super::sse::{Pushed, SseScanner, StreamKind};
use super::stream_error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The upstream finished the response and all of it was relayed.
    Complete,
    /// The upstream connection failed or timed out mid-body.
    UpstreamFailed,
    /// The client went away before the end; the upstream request was dropped with it.
    ClientGone,
    /// The stream ran past the completion tokens reserved for it and was closed.
    CutOff,
    /// An event of the stream grew past the model's `max_event_bytes` without ending.
    EventTooLarge,
    /// An event of the stream was not a JSON object.
    InvalidEvent,
}

/// How a metered response ended and what it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ending: Ending,
    /// The upstream's own `usage`, when it sent one.
    pub reported: Option<Usage>,
    /// Chunks of generated text relayed (streams only).
    pub relayed_content: u64,
    /// Bytes of the body handed on to the client.
    pub relayed_bytes: u64,
    /// The generated text, when the body was metered with `capture`.
    pub completion: Option<CapturedText>,
}

/// How a stream is metered.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// Whose events the stream carries.
    pub kind: StreamKind,
    /// The client did not ask for the usage chunk.
    pub strip_usage_chunk: bool,
    /// Content chunks relayed at most.
    pub cap: Option<u64>,
    pub capture: bool,
    pub max_event_bytes: usize,
}

/// Called once when the body ends; may return an acknowledgement the end of the body waits for
/// (the audit record in `sync` durability).
pub type OnFinish = Box<dyn FnOnce(Outcome) -> Option<Submitted> + Send>;

enum Mode {
    /// What the answer reported and, when captured, its text: both read before it was relayed.
    Json {
        reported: Option<Usage>,
        completion: Option<CapturedText>,
    },
    Stream {
        kind: StreamKind,
        scanner: SseScanner,
        cap: Option<u64>,
    },
}

pin_project! {
    pub struct Metered<B> {
        #[pin]
        inner: B,
        mode: Mode,
        queue: VecDeque<Bytes>,
        on_finish: Option<OnFinish>,
        ack: Option<Pin<Box<Submitted>>>,
        ended: bool,
        relayed: u64,
    }

    impl<B> PinnedDrop for Metered<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.on_finish.is_some() {
                drop(finish(this.on_finish, this.mode, *this.relayed, Ending::ClientGone));
            }
        }
    }
}

impl<B> Metered<B> {
    /// A plain JSON answer, with the `usage` it `reported` and its captured `completion`.
    pub fn json(inner: B, reported: Option<Usage>, completion: Option<CapturedText>, on_finish: OnFinish) -> Self {
        Self::new(inner, Mode::Json { reported, completion }, on_finish)
    }

    /// An SSE stream. `strip_usage_chunk` when the client did not ask for usage; `cap` is the
    /// most content chunks to relay before the stream is cut; `capture` gathers their text;
    /// `max_event_bytes` bounds one event.
    pub fn stream(inner: B, options: StreamOptions, on_finish: OnFinish) -> Self {
        let scanner =
            SseScanner::new(options.kind, options.strip_usage_chunk, options.capture, options.max_event_bytes);
        Self::new(inner, Mode::Stream { kind: options.kind, scanner, cap: options.cap }, on_finish)
    }

    fn new(inner: B, mode: Mode, on_finish: OnFinish) -> Self {
        Metered { inner, mode, queue: VecDeque::new(), on_finish: Some(on_finish), ack: None, ended: false, relayed: 0 }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            // Once the response is complete, nothing more goes out until its record is durable
            // (sync audit): not the last bytes held in the queue, not the end of the body.
            if let Some(ack) = this.ack.as_mut() {
                if let Err(error) = std::task::ready!(ack.as_mut().poll(cx)) {
                    tracing::error!(error = %chain(&error), "audit record not stored");
                }
                *this.ack = None;
            }
            if let Some(bytes) = this.queue.pop_front() {
                *this.relayed += bytes.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            if *this.ended {
                return Poll::Ready(None);
            }
            // After `[DONE]` nothing more is owed: a model server that keeps its connection open
            // (or sends more) must not hold the client, its slot or its settlement.
            let done = matches!(this.mode, Mode::Stream { scanner, .. } if scanner.tally.done);
            let polled = this.inner.as_mut().poll_frame(cx);
            if done && !matches!(polled, Poll::Ready(None)) {
                *this.ended = true;
                *this.ack = finish(this.on_finish, this.mode, *this.relayed, Ending::Complete).map(Box::pin);
                continue;
            }
            let frame = match std::task::ready!(polled) {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    *this.ended = true;
                    if let Mode::Stream { kind, .. } = this.mode {
                        // A stream the client is reading ends with an error it can read, and
                        // cleanly: a cut connection would have its SDK retry, generating twice.
                        let message = format!("The model server failed in the middle of the stream: {error}.");
                        this.queue.push_back(stream_error::event(*kind, "upstream_failed_mid_stream", message));
                        *this.ack = finish(
                            this.on_finish,
                            this.mode,
                            *this.relayed + queued(this.queue),
                            Ending::UpstreamFailed,
                        )
                        .map(Box::pin);
                        continue;
                    }
                    drop(finish(this.on_finish, this.mode, *this.relayed, Ending::UpstreamFailed));
                    return Poll::Ready(Some(Err(error)));
                }
                None => {
                    *this.ended = true;
                    *this.ack = finish(this.on_finish, this.mode, *this.relayed + queued(this.queue), Ending::Complete)
                        .map(Box::pin);
                    continue;
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            match this.mode {
                Mode::Json { .. } => {
                    // A body of known length ends with its last byte: the server stops polling
                    // there, so that is where the response is complete.
                    if this.inner.is_end_stream() {
                        *this.ended = true;
                        this.queue.push_back(data);
                        *this.ack =
                            finish(this.on_finish, this.mode, *this.relayed + queued(this.queue), Ending::Complete)
                                .map(Box::pin);
                        continue;
                    }
                    *this.relayed += data.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Mode::Stream { kind, scanner, cap } => {
                    let ending = match scanner.push(data, this.queue, *cap) {
                        Pushed::Open => continue,
                        Pushed::Capped => Ending::CutOff,
                        Pushed::TooLarge => {
                            let message =
                                "The model server sent an event larger than the gateway accepts; the stream was ended.";
                            this.queue.push_back(stream_error::event(
                                *kind,
                                "upstream_event_too_large",
                                message.into(),
                            ));
                            Ending::EventTooLarge
                        }
                        Pushed::Invalid => {
                            let message =
                                "The model server sent an event that is not a JSON object; the stream was ended.";
                            this.queue.push_back(stream_error::event(*kind, "upstream_invalid_event", message.into()));
                            Ending::InvalidEvent
                        }
                    };
                    *this.ended = true;
                    *this.ack =
                        finish(this.on_finish, this.mode, *this.relayed + queued(this.queue), ending).map(Box::pin);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.queue.is_empty() && self.ack.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.mode {
            // A JSON body passes unchanged: its length stands.
            Mode::Json { .. } => self.inner.size_hint(),
            Mode::Stream { .. } => SizeHint::default(),
        }
    }
}

fn finish(on_finish: &mut Option<OnFinish>, mode: &mut Mode, relayed_bytes: u64, ending: Ending) -> Option<Submitted> {
    let on_finish = on_finish.take()?;
    let outcome = match mode {
        Mode::Json { reported, completion } => {
            Outcome { ending, reported: *reported, relayed_content: 0, relayed_bytes, completion: completion.take() }
        }
        Mode::Stream { scanner, .. } => Outcome {
            ending,
            reported: scanner.tally.usage,
            relayed_content: scanner.tally.content_events,
            relayed_bytes,
            completion: scanner.text.take(),
        },
    };
    on_finish(outcome)
}

/// Bytes waiting to go out: at the end of a body they are relayed too.
fn queued(queue: &VecDeque<Bytes>) -> u64 {
    queue.iter().map(|bytes| bytes.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;

    fn body(chunks: &[&str]) -> impl Body<Data = Bytes, Error = std::io::Error> + use<> {
        let frames: Frames = chunks.iter().map(|c| Ok(Frame::data(Bytes::copy_from_slice(c.as_bytes())))).collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    fn options(strip_usage_chunk: bool, cap: Option<u64>, capture: bool) -> StreamOptions {
        StreamOptions { kind: StreamKind::OpenAi, strip_usage_chunk, cap, capture, max_event_bytes: 1 << 20 }
    }

    fn recorder() -> (Arc<Mutex<Vec<Outcome>>>, OnFinish) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (
            seen,
            Box::new(move |outcome| {
                sink.lock().unwrap().push(outcome);
                None
            }),
        )
    }

    fn usage(completion_tokens: u64) -> Option<Usage> {
        Some(Usage { prompt_tokens: 1, completion_tokens, total_tokens: 1 + completion_tokens })
    }

    #[tokio::test]
    async fn a_json_body_passes_unchanged_and_reports_what_was_read_from_it() {
        let (seen, on_finish) = recorder();
        let text = r#"{"choices":[{"message":{"content":"hi there"}}]}"#;
        let mut completion = CapturedText::default();
        completion.push("hi there");
        let metered = Metered::json(body(&[&text[..20], &text[20..]]), usage(4), Some(completion.clone()), on_finish);
        let relayed = metered.collect().await.unwrap().to_bytes();
        assert_eq!(relayed, text.as_bytes());
        let outcome = seen.lock().unwrap()[0].clone();
        assert_eq!(outcome.ending, Ending::Complete);
        assert_eq!(outcome.reported, usage(4));
        assert_eq!(outcome.completion, Some(completion));
        assert_eq!(outcome.relayed_bytes, text.len() as u64);
    }

    #[tokio::test]
    async fn a_body_of_known_length_is_complete_at_its_last_byte_even_if_never_polled_to_the_end() {
        let (seen, on_finish) = recorder();
        let text = r#"{"choices":[]}"#;
        let mut metered =
            Box::pin(Metered::json(http_body_util::Full::new(Bytes::from(text)), usage(2), None, on_finish));
        let frame = metered.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), text.as_bytes());
        assert!(metered.is_end_stream());
        drop(metered);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].ending, Ending::Complete);
        assert_eq!(seen[0].reported.unwrap().completion_tokens, 2);
    }

    #[tokio::test]
    async fn a_dropped_stream_reports_once_that_the_client_left() {
        let (seen, on_finish) = recorder();
        let hello = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        let mut metered = Box::pin(Metered::stream(body(&[hello, hello, hello]), options(true, None, true), on_finish));
        metered.frame().await.unwrap().unwrap();
        drop(metered);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].ending, Ending::ClientGone);
        assert_eq!(seen[0].relayed_content, 1);
        let mut relayed = CapturedText::default();
        relayed.push("hi");
        assert_eq!(seen[0].completion, Some(relayed), "the text the client was sent before it left");
    }

    #[tokio::test]
    async fn a_stream_ends_at_done_even_if_the_server_holds_its_connection_open() {
        let (seen, on_finish) = recorder();
        let hello = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        let frames: Frames =
            [hello, "data: [DONE]\n\n"].iter().map(|c| Ok(Frame::data(Bytes::copy_from_slice(c.as_bytes())))).collect();
        // The server's body never ends after its last event.
        let held = StreamBody::new(futures_util::stream::iter(frames).chain(futures_util::stream::pending()));
        let metered = Metered::stream(held, options(false, None, false), on_finish);
        let relayed = tokio::time::timeout(std::time::Duration::from_secs(2), metered.collect())
            .await
            .expect("the body ends at [DONE]")
            .unwrap()
            .to_bytes();
        assert_eq!(relayed, [hello, "data: [DONE]\n\n"].concat().as_bytes());
        let seen = seen.lock().unwrap();
        assert_eq!((seen.len(), seen[0].ending), (1, Ending::Complete));
    }

    #[tokio::test]
    async fn a_stream_that_fails_mid_way_ends_with_an_error_event_not_a_cut() {
        let (seen, on_finish) = recorder();
        let hello = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        let frames: Frames = vec![
            Ok(Frame::data(Bytes::from_static(hello.as_bytes()))),
            Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer")),
        ];
        let metered = Metered::stream(
            StreamBody::new(futures_util::stream::iter(frames)),
            options(false, None, false),
            on_finish,
        );
        let relayed = String::from_utf8(metered.collect().await.expect("ends cleanly").to_bytes().to_vec()).unwrap();
        assert!(relayed.starts_with(hello), "{relayed}");
        assert!(relayed.contains("upstream_failed_mid_stream") && relayed.contains("reset by peer"), "{relayed}");
        assert!(!relayed.contains("[DONE]") && !relayed.contains("finish_reason"), "{relayed}");
        assert_eq!(seen.lock().unwrap()[0].ending, Ending::UpstreamFailed);
    }

    #[tokio::test]
    async fn an_anthropic_stream_that_is_no_longer_events_ends_with_anthropics_error_event() {
        let (seen, on_finish) = recorder();
        let delta =
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n";
        let options = StreamOptions { kind: StreamKind::Anthropic, ..options(false, None, false) };
        let metered = Metered::stream(body(&[delta, "data: <html>bad gateway</html>\n\n"]), options, on_finish);
        let relayed = String::from_utf8(metered.collect().await.unwrap().to_bytes().to_vec()).unwrap();
        let error = relayed.strip_prefix(delta).and_then(|rest| rest.strip_prefix("event: error\ndata: ")).unwrap();
        let error: serde_json::Value = serde_json::from_str(error.trim_end()).unwrap();
        assert_eq!((error["type"].as_str(), error["error"]["type"].as_str()), (Some("error"), Some("api_error")));
        assert_eq!(seen.lock().unwrap()[0].ending, Ending::InvalidEvent);
    }

    #[tokio::test]
    async fn a_stream_past_its_cap_is_cut_and_reported_once() {
        let (seen, on_finish) = recorder();
        let hello = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        let metered = Metered::stream(
            body(&[hello, hello, hello, "data: [DONE]\n\n"]),
            options(false, Some(2), false),
            on_finish,
        );
        let relayed = metered.collect().await.unwrap().to_bytes();
        assert_eq!(relayed, [hello, hello].concat().as_bytes());
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].ending, Ending::CutOff);
    }
}
