//! Envoy's `ext_proc` (`envoy.service.ext_proc.v3.ExternalProcessor/Process`) in observe mode:
//! one stream per HTTP request, carrying its request headers (with the lease id the `Check`
//! added, `x-portcullis-request-id`), then its response's head and body as they pass. The
//! response's `usage` settles the lease; a response cut short leaves it to expire, charged in
//! full, unless its usage went by already.
//!
//! In observe mode (`observability_mode`, which each message states) Envoy takes no answer and
//! waits for none, and the stream is closed as soon as nothing more is to be learnt from it (no
//! lease, or settled); otherwise every message is answered "continue, unchanged", so the same
//! service also works with the filter in its ordinary mode.

use std::pin::Pin;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::HeaderMap as EnvoyHeaderMap;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeadersResponse, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::super::AuthzState;
use super::super::check::REQUEST_ID_HEADER;
use super::super::lease::{Leases, Settlement};
use super::headers;
use super::response_usage::ResponseUsage;
use crate::proxy::body::Operation;

#[derive(Debug, Clone)]
pub struct ExtProc(pub AuthzState);

type Replies = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProc {
    type ProcessStream = Replies;

    async fn process(&self, request: Request<Streaming<ProcessingRequest>>) -> Result<Response<Replies>, Status> {
        let watch = Watch {
            leases: self.0.leases.clone(),
            lease: None,
            headers_seen: false,
            response: None,
            operation: Operation::Chat,
            settled: false,
        };
        // Driven by the answer's body: each message is read when the last was answered (or, in
        // observe mode, at once).
        let replies = futures_util::stream::unfold((request.into_inner(), watch), |(mut messages, mut watch)| async {
            let reply = next_reply(&mut messages, &mut watch).await?;
            Some((Ok(reply), (messages, watch)))
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

/// The answer to the next message that takes one; `None` when the stream is over: Envoy closed
/// its side, the stream broke off, or — observing — nothing more is to be learnt from it (an
/// observer may close the stream, and Envoy then stops sending this request's body).
async fn next_reply(messages: &mut Streaming<ProcessingRequest>, watch: &mut Watch) -> Option<ProcessingResponse> {
    loop {
        let message = match messages.message().await {
            Ok(message) => message?,
            Err(status) => {
                tracing::debug!(%status, "ext_proc stream broke off");
                return None;
            }
        };
        let observing = message.observability_mode;
        let Some(message) = message.request else { continue };
        let reply = reply_to(&message);
        watch.see(message);
        if !observing {
            return Some(reply);
        }
        if watch.is_done() {
            return None;
        }
    }
}

/// "Continue, unchanged", in the shape that answers `message`.
fn reply_to(message: &Message) -> ProcessingResponse {
    let headers = || HeadersResponse { response: Some(CommonResponse::default()) };
    let body = || BodyResponse { response: Some(CommonResponse::default()) };
    let reply = match message {
        Message::RequestHeaders(_) => Reply::RequestHeaders(headers()),
        Message::ResponseHeaders(_) => Reply::ResponseHeaders(headers()),
        Message::RequestBody(_) => Reply::RequestBody(body()),
        Message::ResponseBody(_) => Reply::ResponseBody(body()),
        Message::RequestTrailers(_) => Reply::RequestTrailers(TrailersResponse::default()),
        Message::ResponseTrailers(_) => Reply::ResponseTrailers(TrailersResponse::default()),
    };
    ProcessingResponse { response: Some(reply), ..ProcessingResponse::default() }
}

/// One request's stream: its lease and what its response has shown.
struct Watch {
    leases: Leases,
    /// The open lease the request carries; `None` until its headers came, or when it has none.
    lease: Option<String>,
    /// The request's headers went by (so a missing lease is missing for good).
    headers_seen: bool,
    response: Option<ResponseUsage>,
    /// What the request calls, from its path: how its response reports usage.
    operation: Operation,
    settled: bool,
}

impl Watch {
    fn see(&mut self, message: Message) {
        match message {
            Message::RequestHeaders(request) => {
                let id = headers::find(request.headers.as_ref(), REQUEST_ID_HEADER.as_str())
                    .and_then(|id| std::str::from_utf8(id).ok());
                // Not every allowed request has a lease (a model listing has none), and an unknown
                // id is none of this stream's business: the response is then not read at all.
                self.lease = id.filter(|id| self.leases.is_open(id)).map(str::to_string);
                self.headers_seen = true;
                let path =
                    headers::find(request.headers.as_ref(), ":path").and_then(|path| std::str::from_utf8(path).ok());
                let path = path.map(|path| path.split('?').next().unwrap_or_default());
                self.operation = path.and_then(Operation::at).unwrap_or(Operation::Chat);
                if self.lease.is_none() {
                    tracing::debug!(request_id = id, "ext_proc stream for a request without an open lease; not read");
                }
            }
            Message::ResponseHeaders(response) if self.lease.is_some() => {
                let head = response.headers.as_ref();
                let content_type = headers::find(head, "content-type");
                self.response = Some(ResponseUsage::new(status_of(head), content_type, self.operation));
                if response.end_of_stream {
                    self.finish(true);
                }
            }
            Message::ResponseBody(body) => {
                if let Some(response) = &mut self.response {
                    response.push(Bytes::from(body.body));
                    if body.end_of_stream {
                        self.finish(true);
                    }
                }
            }
            Message::ResponseTrailers(_) => self.finish(true),
            Message::ResponseHeaders(_) | Message::RequestBody(_) | Message::RequestTrailers(_) => {}
        }
    }

    /// Nothing more to learn: the request has no open lease, or its lease is settled.
    fn is_done(&self) -> bool {
        self.settled || (self.headers_seen && self.lease.is_none())
    }

    /// Settles the lease with what the response showed, once; `complete` when it ended.
    fn finish(&mut self, complete: bool) {
        if self.settled {
            return;
        }
        let (Some(lease), Some(response)) = (&self.lease, &self.response) else { return };
        let Some(how) = response.settlement(complete) else {
            tracing::debug!(request_id = lease, "response cut short before its usage; the lease is left to expire");
            return;
        };
        self.settled = true;
        // Relayed when another replica holds it (a fleet); Envoy is not told either way.
        if let Settlement::Unknown = self.leases.settle(lease, how) {
            tracing::debug!(request_id = lease, "lease already settled or expired");
        }
    }
}

/// The stream ended or broke off (Envoy or its client gone): what was seen may still settle.
impl Drop for Watch {
    fn drop(&mut self) {
        self.finish(false);
    }
}

fn status_of(head: Option<&EnvoyHeaderMap>) -> Option<u16> {
    std::str::from_utf8(headers::find(head, ":status")?).ok()?.parse().ok()
}
