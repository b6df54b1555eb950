//! One request to one endpoint, up to the response head.

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use tokio::time::Instant;

use crate::body::deadline_after;
use crate::client::{ClientError, Outgoing, ResponseBody};
use crate::error::AttemptError;
use crate::pool::Endpoint;
use crate::route::{Credential, Route};

/// Sends `method base+path` with `headers` (already filtered: no hop-by-hop, no client
/// credentials), the model's bearer credential and `body`, and waits for the response head
/// until the first-byte timeout or `deadline` (the exchange's total deadline), whichever is
/// sooner. The first-byte clock includes connecting; the connect timeout is enforced below it
/// by the client.
pub(crate) async fn send(
    route: &Route,
    endpoint: &Endpoint,
    (method, path): (&Method, &str),
    headers: &HeaderMap,
    body: &Bytes,
    deadline: Instant,
) -> Result<Response<ResponseBody>, AttemptError> {
    let authorization = match &route.credential {
        Credential::Bearer(value) => Some(value),
        Credential::None => None,
        Credential::Invalid => return Err(AttemptError::InvalidCredential),
    };
    let request = Outgoing { method: method.clone(), path, headers, authorization, body };
    let started = Instant::now();
    let head_deadline = deadline_after(started, route.timeouts.first_byte).min(deadline);
    match tokio::time::timeout_at(head_deadline, route.client.send(endpoint.origin(), &request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error @ ClientError::InvalidTarget(_))) => Err(AttemptError::Unbuildable(error)),
        Ok(Err(ClientError::Connect(error))) if is_local_exhaustion(&error) => {
            Err(AttemptError::Exhausted(ClientError::Connect(error)))
        }
        Ok(Err(error)) => Err(AttemptError::Failed(error)),
        Err(_) => Err(AttemptError::TimedOut(head_deadline.saturating_duration_since(started))),
    }
}

/// A connect error that is about this process or host, not the endpoint: out of descriptors
/// (`EMFILE`, `ENFILE`), buffers or memory (`ENOBUFS`, `ENOMEM`), or local ports
/// (`EADDRNOTAVAIL`).
fn is_local_exhaustion(error: &std::io::Error) -> bool {
    const EXHAUSTED: [i32; 5] = [24, 23, 105, 12, 99];
    error.raw_os_error().is_some_and(|code| EXHAUSTED.contains(&code))
}
