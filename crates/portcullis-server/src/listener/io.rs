//! A client connection's socket as hyper sees it: reads pass the request-head gate (see
//! [`super::gate`]), and a refused head gets our answer instead of reaching hyper.
//!
//! Closing lingers, as nginx does: once hyper is done, our answer to a refused head (if any) is
//! written, the write side shut, and what the client still sends read and dropped for a moment
//! — so that an early answer (a 413 while the client is still uploading) reaches the client
//! instead of being wiped out by the reset that closing on unread data would send. A connection
//! closed by its watchdog for want of a request (nothing to answer) is dropped at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::activity::Activity;
use super::gate::{HeadGate, Verdict};
use super::slots::Slot;
use super::stream::ClientStream;
use crate::error::ApiError;

/// How long a closing connection keeps reading (and dropping) what the client still sends.
pub const LINGER: Duration = Duration::from_secs(2);
/// The most it reads while lingering.
const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// Renders (and records) the answer to a head the gate refused.
pub trait Refusals: Send + Unpin + 'static {
    fn answer(&self, error: ApiError) -> Bytes;
}

pub struct ClientIo<R> {
    /// Taken only by `drop`, which hands it to the lingering close.
    stream: Option<ClientStream>,
    /// The connection's place in its listener's count, held until the socket is closed (and,
    /// by `connection::serve`, until what the connection served is dropped).
    slot: Option<Arc<Slot>>,
    gate: HeadGate,
    activity: Arc<Activity>,
    refusals: R,
    /// Our answer to a refused head; hyper reads nothing more once it is set.
    answer: Option<Bytes>,
    /// hyper closed the connection itself: linger, unless the client is done sending.
    closing: bool,
    /// The client closed its side.
    read_eof: bool,
}

impl<R: Refusals> ClientIo<R> {
    pub fn new(stream: ClientStream, slot: Arc<Slot>, gate: HeadGate, activity: Arc<Activity>, refusals: R) -> Self {
        ClientIo {
            stream: Some(stream),
            slot: Some(slot),
            gate,
            activity,
            refusals,
            answer: None,
            closing: false,
            read_eof: false,
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut ClientStream>> {
        self.stream.as_mut().map(Pin::new).ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<R: Refusals> AsyncRead for ClientIo<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.answer.is_some() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(this.stream()?.poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if read.is_empty() {
            this.read_eof = true;
            return Poll::Ready(Ok(()));
        }
        if let Verdict::Refuse { keep, error } = this.gate.observe(read, this.activity.as_ref()) {
            // hyper gets what completes earlier requests, then the end of the stream.
            buf.set_filled(before + keep);
            this.answer = Some(this.refusals.answer(error));
        }
        Poll::Ready(Ok(()))
    }
}

impl<R: Refusals> AsyncWrite for ClientIo<R> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().stream()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(ClientStream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_flush(cx)
    }

    /// The close itself happens when hyper lets go of the connection (see `drop`).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.closing = true;
        this.stream()?.poll_flush(cx)
    }
}

impl<R> Drop for ClientIo<R> {
    fn drop(&mut self) {
        let (Some(stream), slot) = (self.stream.take(), self.slot.take()) else { return };
        let answer = self.answer.take();
        if answer.is_none() && (!self.closing || self.read_eof) {
            return;
        }
        // Without a runtime (it is shutting down) the socket simply closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(LINGER, linger(stream, answer)).await;
                drop(slot);
            });
        }
    }
}

/// Writes `answer`, shuts the write side and reads until the client closes its own.
async fn linger(mut stream: ClientStream, answer: Option<Bytes>) -> io::Result<u64> {
    if let Some(answer) = answer {
        stream.write_all(&answer).await?;
    }
    stream.shutdown().await?;
    tokio::io::copy(&mut (&mut stream).take(LINGER_BYTES), &mut tokio::io::sink()).await
}
