//! A response body read straight off its connection by whoever polls it — the task relaying it
//! to the client — with no task or channel in between. Data is handed out as slices of the read
//! buffer. When the body has been read in full, the connection goes back to its endpoint's idle
//! pool at once (not when the body is dropped); dropped half-way, the connection is closed,
//! which is how the model server learns that the client left.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::chunked::{ChunkedDecoder, Decoded};
use super::connection::Connection;
use super::error::ClientError;
use super::head::Framing;
use super::origin::Origin;

#[derive(Debug)]
enum Remaining {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

#[derive(Debug)]
pub struct ResponseBody {
    /// `None` once the body is over.
    connection: Option<Connection>,
    remaining: Remaining,
    /// Where the connection is parked after the body; `None` when it cannot be reused.
    park_in: Option<Arc<Origin>>,
}

/// What the buffer held, decided before acting on it (the decoder borrows the connection).
enum Step {
    Data(Bytes),
    /// This is the last of the body.
    LastData(Bytes),
    End,
    NeedMore,
}

impl ResponseBody {
    pub(crate) fn new(connection: Connection, framing: Framing, park_in: Option<Arc<Origin>>) -> ResponseBody {
        let remaining = match framing {
            Framing::Empty | Framing::Length(0) => Remaining::Done,
            Framing::Length(length) => Remaining::Length(length),
            Framing::Chunked => Remaining::Chunked(ChunkedDecoder::new()),
            Framing::UntilClose => Remaining::UntilClose,
        };
        let mut body = ResponseBody { connection: Some(connection), remaining, park_in };
        if matches!(body.remaining, Remaining::Done) {
            body.complete();
        }
        body
    }

    /// The body was read in full: park the connection if it may carry another request. Bytes
    /// beyond the body mean the server and we disagree about framing; such a connection is
    /// closed instead.
    fn complete(&mut self) {
        self.remaining = Remaining::Done;
        if let (Some(mut connection), Some(origin)) = (self.connection.take(), self.park_in.take())
            && connection.buffer.is_empty()
        {
            connection.release_buffer();
            origin.idle.put(connection);
        }
    }

    /// Ends the body after an error; the connection is closed.
    fn fail(&mut self, error: ClientError) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        self.remaining = Remaining::Done;
        self.connection = None;
        Poll::Ready(Some(Err(error)))
    }

    /// Takes what the buffer holds of the body, without reading.
    fn step(&mut self) -> Result<Step, ClientError> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(Step::End);
        };
        let buffer = &mut connection.buffer;
        match &mut self.remaining {
            Remaining::Done => Ok(Step::End),
            Remaining::Length(_) | Remaining::UntilClose if buffer.is_empty() => Ok(Step::NeedMore),
            Remaining::Length(left) => {
                let available = u64::try_from(buffer.len()).unwrap_or(u64::MAX);
                let take = (*left).min(available);
                *left -= take;
                let data = buffer.split_to(usize::try_from(take).unwrap_or(buffer.len())).freeze();
                Ok(if *left == 0 { Step::LastData(data) } else { Step::Data(data) })
            }
            Remaining::UntilClose => Ok(Step::Data(buffer.split().freeze())),
            Remaining::Chunked(decoder) => match decoder.decode(buffer)? {
                Decoded::Data(data) => Ok(Step::Data(data)),
                Decoded::End => Ok(Step::End),
                Decoded::NeedMore => Ok(Step::NeedMore),
            },
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ClientError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        let this = self.get_mut();
        loop {
            match this.step() {
                Err(error) => return this.fail(error),
                Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Step::LastData(data)) => {
                    this.complete();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    this.complete();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
            }
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            match std::task::ready!(connection.poll_fill(cx)) {
                Ok(0) if matches!(this.remaining, Remaining::UntilClose) => {
                    this.remaining = Remaining::Done;
                    this.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(ClientError::ClosedMidBody),
                Ok(_) => {}
                Err(error) => return this.fail(ClientError::Read(error)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.remaining, Remaining::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Remaining::Length(left) => SizeHint::with_exact(left),
            Remaining::Done => SizeHint::with_exact(0),
            Remaining::Chunked(_) | Remaining::UntilClose => SizeHint::default(),
        }
    }
}
