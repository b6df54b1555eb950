//! The Responses API's ids on their way to and from the client: the model server's own ids
//! never reach it, only ids sealed for the caller (see [`super::response_ids`]). A JSON answer
//! (a created or a stored response) has its `id` and `previous_response_id` sealed; a stream
//! learns them from the first event that carries its `response` object and seals them in that
//! event and every later one. A request's `previous_response_id` is opened before it is sent on.

use bytes::Bytes;
use memchr::memmem;
use serde::Deserialize;

use super::body::{self, ParsedRequest};
use super::rename::Rename;
use super::response_ids::ResponseIds;
use super::rewrite::Rewrite;
use super::shape::Member;
use crate::error::ApiError;

/// Whose ids an answer's are sealed for, and which model served it.
#[derive(Debug, Clone)]
pub struct Sealing {
    pub ids: ResponseIds,
    pub principal: String,
    pub model: String,
}

/// The ids a response object carries.
#[derive(Debug, Deserialize)]
struct Ids {
    id: Option<String>,
    previous_response_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Event {
    response: Option<Ids>,
}

impl Sealing {
    /// A JSON answer with its ids sealed; `None` when it names none.
    pub fn json(&self, body: &[u8]) -> Option<Bytes> {
        let ids: Ids = serde_json::from_slice(body).ok()?;
        apply(&self.renames(&ids), body)
    }

    fn renames(&self, ids: &Ids) -> Vec<Rename> {
        let seal = |key: &'static [u8], id: &Option<String>| {
            let id = id.as_deref()?;
            Rename::member(key, id, &self.ids.seal(&self.principal, &self.model, id))
        };
        [seal(b"\"id\"", &ids.id), seal(b"\"previous_response_id\"", &ids.previous_response_id)]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// `bytes` with every rename applied; `None` when none applied.
fn apply(renames: &[Rename], bytes: &[u8]) -> Option<Bytes> {
    renames
        .iter()
        .fold(None, |renamed: Option<Bytes>, rename| rename.apply(renamed.as_deref().unwrap_or(bytes)).or(renamed))
}

/// The request's `previous_response_id` member, unless it is absent or `null`.
fn previous(request: &ParsedRequest) -> Option<&Member> {
    let member = request.members.iter().find(|member| request.key(member) == "previous_response_id")?;
    (request.raw(member) != b"null").then_some(member)
}

/// Refuses a request that continues a stored response where its id cannot be opened: through
/// the authorizer, the gateway in front relays the model server's own ids, which would let any
/// caller continue anyone's conversation.
pub fn refuse_previous(request: &ParsedRequest) -> Result<(), ApiError> {
    match previous(request) {
        Some(_) => Err(ApiError::InvalidField {
            param: "previous_response_id".into(),
            message: "'previous_response_id' is served only through the Portcullis proxy, which binds stored \
                      responses to their callers."
                .into(),
        }),
        None => Ok(()),
    }
}

/// `request` with its `previous_response_id` opened for `principal`: the model server's id in
/// place of the sealed one. An id the caller did not make is the 404 of an unknown one.
pub fn open_previous(
    ids: &ResponseIds,
    principal: &str,
    request: ParsedRequest,
    max_depth: usize,
) -> Result<ParsedRequest, ApiError> {
    let Some(member) = previous(&request) else { return Ok(request) };
    let raw = request.raw(member);
    let sealed: String = serde_json::from_slice(raw).map_err(|_| ApiError::InvalidField {
        param: "previous_response_id".into(),
        message: "'previous_response_id' must be a string.".into(),
    })?;
    let opened = ids.open(principal, &sealed).ok_or(ApiError::NotFound { what: "response" })?;
    let upstream = serde_json::to_vec(&opened.upstream_id).map_err(|_| ApiError::Internal)?;
    let range = member.value.clone();
    let mut body = Vec::with_capacity(request.body.len() + upstream.len());
    body.extend_from_slice(&request.body[..range.start]);
    body.extend_from_slice(&upstream);
    body.extend_from_slice(&request.body[range.end..]);
    body::parse(request.operation, Bytes::from(body), max_depth)
}

/// A Responses stream's sealing, passed to [`super::rewrite::Rewritten`]: its ids are known once the first event
/// with the response object went by.
pub struct StreamSealing {
    sealing: Sealing,
    renames: Option<Vec<Rename>>,
}

impl Sealing {
    /// The sealing of a stream's events.
    pub fn stream(self) -> StreamSealing {
        StreamSealing { sealing: self, renames: None }
    }
}

impl Rewrite for StreamSealing {
    fn rewrite(&mut self, data: &[u8]) -> Option<Bytes> {
        if self.renames.is_none() {
            self.renames = response_ids_in(data).map(|ids| self.sealing.renames(&ids));
        }
        apply(self.renames.as_deref()?, data)
    }
}

/// The ids of the first event in `frame` that carries a response object with an id.
fn response_ids_in(frame: &[u8]) -> Option<Ids> {
    memmem::find(frame, b"\"response\"")?;
    frame
        .split(|byte| *byte == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .filter_map(|data| serde_json::from_slice::<Event>(data.trim_ascii()).ok())
        .find_map(|event| event.response.filter(|ids| ids.id.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealing() -> Sealing {
        Sealing { ids: ResponseIds::new(Some("pepper")), principal: "key-a".into(), model: "m".into() }
    }

    #[test]
    fn a_json_answer_shows_only_sealed_ids() {
        let sealing = sealing();
        let body = br#"{"id":"resp_2","object":"response","previous_response_id":"resp_1","output":[{"id":"msg_2"}]}"#;
        let sealed: serde_json::Value = serde_json::from_slice(&sealing.json(body).unwrap()).unwrap();
        let opened = |field: &str| sealing.ids.open("key-a", sealed[field].as_str().unwrap()).unwrap().upstream_id;
        assert_eq!((opened("id"), opened("previous_response_id")), ("resp_2".into(), "resp_1".into()));
        assert_eq!(sealed["output"][0]["id"], "msg_2", "items keep their ids");
        assert_eq!(sealing.json(br#"{"object":"list","data":[]}"#), None);
    }

    #[test]
    fn stream_events_are_sealed_from_the_first_that_names_the_response() {
        let created = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_9\",\"previous_response_id\":null}}\n\n";
        let delta = "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"resp_9\"}\n\n";
        let ids = response_ids_in(created.as_bytes()).unwrap();
        assert_eq!(ids.id.as_deref(), Some("resp_9"));
        assert!(response_ids_in(delta.as_bytes()).is_none());
        let renames = sealing().renames(&ids);
        let sealed = apply(&renames, created.as_bytes()).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("\"resp_9\""));
        assert!(apply(&renames, delta.as_bytes()).is_none(), "text that looks like an id stays");
    }

    #[test]
    fn a_previous_response_id_opens_only_for_its_maker() {
        let ids = ResponseIds::new(Some("pepper"));
        let sealed = ids.seal("key-a", "m", "resp_1");
        let request = |id: &str| {
            let text = format!(r#"{{"model":"m","input":"hi","previous_response_id":"{id}"}}"#);
            body::parse(body::Operation::Responses, Bytes::from(text), 64).unwrap()
        };
        let opened = open_previous(&ids, "key-a", request(&sealed), 64).unwrap();
        assert_eq!(&opened.body[..], br#"{"model":"m","input":"hi","previous_response_id":"resp_1"}"#);
        assert!(matches!(open_previous(&ids, "key-b", request(&sealed), 64), Err(ApiError::NotFound { .. })));
        assert!(matches!(open_previous(&ids, "key-a", request("resp_1"), 64), Err(ApiError::NotFound { .. })));
    }
}
