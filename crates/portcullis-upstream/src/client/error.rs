//! How an exchange with a model server fails, worded for logs (URLs and the credential never
//! appear: the caller adds the endpoint's public base). An I/O cause is the source, left out of
//! the message: print the chain (`portcullis_types::chain`).

use std::io;
use std::time::Duration;

use super::chunked::ChunkedError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not a valid request target")]
    InvalidTarget(String),
    #[error("connect failed")]
    Connect(#[source] io::Error),
    #[error("connect timed out after {}ms", .0.as_millis())]
    ConnectTimeout(Duration),
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),
    #[error("sending the request failed")]
    Write(#[source] io::Error),
    #[error("reading the response failed")]
    Read(#[source] io::Error),
    #[error("connection closed before a response")]
    ClosedBeforeResponse,
    #[error("connection closed before the end of the response body")]
    ClosedMidBody,
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    #[error(transparent)]
    Chunked(#[from] ChunkedError),
}
