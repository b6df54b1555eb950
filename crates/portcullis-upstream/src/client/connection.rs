//! One connection to a model server: the socket (plain or TLS) and its read buffer.
//!
//! The buffer starts small, because a stream holds its connection for as long as the model
//! generates and most of that time nothing is in flight; it grows when reads fill it, so a
//! large body still moves in large reads.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::io::poll_read_buf;

/// First read size, and the least room a read is given.
const MIN_READ: usize = 4 * 1024;
/// Reads grow up to this size while they keep filling the buffer.
const MAX_READ: usize = 64 * 1024;

#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

#[derive(Debug)]
pub(crate) struct Connection {
    stream: Stream,
    /// Bytes read and not yet consumed.
    pub(crate) buffer: BytesMut,
    /// How much room the next read gets.
    read_size: usize,
    /// Taken from the idle pool rather than freshly connected: a failure before any response
    /// byte may just mean the server closed it while idle.
    pub(crate) reused: bool,
}

impl Connection {
    pub(crate) fn new(stream: Stream) -> Connection {
        Connection { stream, buffer: BytesMut::new(), read_size: MIN_READ, reused: false }
    }

    /// Reads more into the buffer; `Ok(0)` means the server closed the connection.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buffer.capacity() - self.buffer.len() < MIN_READ {
            self.buffer.reserve(self.read_size);
        }
        let room = self.buffer.capacity() - self.buffer.len();
        let read = std::task::ready!(poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buffer))?;
        if read == room {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(read))
    }

    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Lets go of the (empty) read buffer while the connection is parked: it may still be part
    /// of a large allocation shared with chunks handed out earlier, and a thousand parked
    /// connections should not pin a thousand of those. The next read allocates afresh.
    pub(crate) fn release_buffer(&mut self) {
        self.buffer = BytesMut::new();
    }

    /// Writes `head` then `body` (gathered into as few writes as the socket allows) and flushes.
    pub(crate) async fn write_request(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let (mut head, mut body) = (head, body);
        while !head.is_empty() || !body.is_empty() {
            let parts = [IoSlice::new(head), IoSlice::new(body)];
            let written = self.stream.write_vectored(&parts).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = written.min(head.len());
            head = &head[from_head..];
            body = &body[written - from_head..];
        }
        self.stream.flush().await
    }

    /// Whether an idle connection still looks usable: nothing to read and not closed. Polls
    /// the socket once without waiting; a connection that has anything to say while idle (a
    /// close, an error, stray bytes) is not reused. A TLS session's own messages (session
    /// tickets) are consumed by the TLS layer and do not count.
    pub(crate) fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0; 1];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(Pin::new(&mut self.stream).poll_read(&mut cx, &mut probe), Poll::Pending)
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Tls(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}
