//! Side requests: a small call to a model server that is not a client's request — its tokenize
//! endpoint, asked by the gateway itself. It goes to the first endpoint in rotation, takes no
//! concurrency slot and waits in no queue (it must never delay, or be delayed by, the traffic it
//! serves), is not retried, and gives up at its timeout: the caller always has a fallback.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use http_body_util::{BodyExt, Limited};

use crate::client::Outgoing;
use crate::route::{Credential, Route};

/// Why a side request gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error("unknown model")]
    UnknownModel,
    #[error("no endpoint in rotation")]
    NoEndpoint,
    #[error("no answer within {}ms", .0.as_millis())]
    Timeout(Duration),
    #[error("the model server answered {0}")]
    Status(http::StatusCode),
    #[error("the model server's answer could not be read: {0}")]
    Failed(String),
}

/// `POST path` with a JSON `body` to an endpoint of `route`; its whole answer (at most
/// `max_answer` bytes) within `timeout`.
pub(crate) async fn ask(
    route: &Route,
    path: &str,
    body: &[u8],
    timeout: Duration,
    max_answer: usize,
) -> Result<Bytes, SideError> {
    let endpoint =
        route.pool.endpoints().iter().find(|endpoint| endpoint.in_rotation()).ok_or(SideError::NoEndpoint)?;
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let authorization = match &route.credential {
        Credential::Bearer(value) => Some(value),
        Credential::None | Credential::Invalid => None,
    };
    let request = Outgoing { method: Method::POST, path, headers: &headers, authorization, body };
    let exchange = async {
        let response = route
            .client
            .send(endpoint.origin(), &request)
            .await
            .map_err(|error| SideError::Failed(error.to_string()))?;
        let status = response.status();
        let answer = Limited::new(response.into_body(), max_answer)
            .collect()
            .await
            .map_err(|error| SideError::Failed(error.to_string()))?
            .to_bytes();
        if status.is_success() { Ok(answer) } else { Err(SideError::Status(status)) }
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| SideError::Timeout(timeout))?
}
