//! One request to one endpoint, up to the response head.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::deadline_after;
use crate::error::describe;
use crate::pool::Endpoint;
use crate::route::{Credential, Route};

/// How an attempt ended without a response head.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// Connecting or talking to the endpoint failed (refused, reset, connect timeout, closed
    /// before answering). Nothing reached the client, so another endpoint may be tried.
    Failed(String),
    /// Connected, sent, and no response head within the first-byte (or total) timeout.
    TimedOut(Duration),
    /// The request could not even be built for this endpoint (URL); not the endpoint's fault.
    Unsendable(String),
}

/// `endpoint base + path`, e.g. `http://10.0.0.5:8000/llama` + `/v1/chat/completions`.
pub(crate) fn upstream_uri(base: &str, path: &str) -> Result<Uri, String> {
    let separator = if path.starts_with('/') { "" } else { "/" };
    let target = format!("{base}{separator}{path}");
    Uri::try_from(target.as_str()).map_err(|error| format!("cannot build upstream URL {target:?}: {error}"))
}

/// Sends `POST base+path` with `headers` (already filtered: no hop-by-hop, no client
/// credentials), the model's bearer credential and `body`, and waits for the response head
/// until the first-byte timeout or `deadline` (the exchange's total deadline), whichever is
/// sooner. The first-byte clock includes connecting; the connect timeout is enforced below it
/// by the client's connector.
pub(crate) async fn send(
    route: &Route,
    endpoint: &Endpoint,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    deadline: Instant,
) -> Result<Response<Incoming>, AttemptError> {
    let uri = upstream_uri(endpoint.base(), path).map_err(AttemptError::Unsendable)?;
    let mut outgoing = headers.clone();
    outgoing.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    match &route.credential {
        Credential::Bearer(value) => {
            outgoing.insert(AUTHORIZATION, value.clone());
        }
        Credential::None => {}
        Credential::Invalid => {
            return Err(AttemptError::Unsendable("the model's api_key is not a valid HTTP header value".into()));
        }
    }
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = outgoing;

    let started = Instant::now();
    let head_deadline = deadline_after(started, route.timeouts.first_byte).min(deadline);
    match tokio::time::timeout_at(head_deadline, route.client.request(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(error)) => Err(AttemptError::Failed(describe(&error))),
        Err(_) => Err(AttemptError::TimedOut(head_deadline.saturating_duration_since(started))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_joins_prefix_and_path_with_one_slash() {
        let uri = upstream_uri("http://10.0.0.5:8000/llama", "/v1/chat/completions").unwrap();
        assert_eq!(uri.to_string(), "http://10.0.0.5:8000/llama/v1/chat/completions");
        let uri = upstream_uri("https://models.example", "v1/embeddings").unwrap();
        assert_eq!(uri.to_string(), "https://models.example/v1/embeddings");
    }

    #[test]
    fn upstream_uri_rejects_what_is_not_a_url() {
        assert!(upstream_uri("http://h", "/a b").is_err());
    }
}
