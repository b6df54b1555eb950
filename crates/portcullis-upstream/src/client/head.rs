//! HTTP/1.1 message heads: the request head written to a model server, and the response head
//! read back together with how its body is delimited (RFC 9112 §6.3) and whether the connection
//! may carry another request afterwards.

use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version};

use super::error::ClientError;

/// A response head (each interim one, and the final one) larger than this is refused, however
/// its bytes arrive: model servers send a handful of fields.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most header fields read from one response head.
const MAX_HEADERS: usize = 100;

/// Room for the headers the gateway adds to a response (its request id and six `x-ratelimit-*`),
/// so adding them does not grow the map again.
const HEADROOM: usize = 8;

/// A request about to be written.
#[derive(Debug)]
pub(crate) struct RequestHead<'a> {
    pub method: &'a Method,
    /// Path and query, starting with `/`, already checked by [`is_valid_target`].
    pub target: &'a str,
    /// The `Host` field: the endpoint's authority.
    pub host: &'a HeaderValue,
    /// End-to-end fields; must not contain `host`, `content-length` or `transfer-encoding`.
    pub headers: &'a HeaderMap,
    /// Sent after `headers` (the model's credential).
    pub authorization: Option<&'a HeaderValue>,
    pub content_length: usize,
}

/// A request target may hold only visible ASCII (a space or CR/LF would split the request line).
pub(crate) fn is_valid_target(target: &str) -> bool {
    target.starts_with('/') && target.bytes().all(|byte| byte.is_ascii_graphic())
}

impl RequestHead<'_> {
    /// Appends the head, blank line included, to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\r\n");
        // `HeaderValue` cannot hold CR or LF, so no value can end the line early.
        for (name, value) in self.headers {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(value) = self.authorization {
            field(out, b"authorization", value.as_bytes());
        }
        if self.content_length > 0 || self.method == Method::POST {
            let mut digits = [0; 20];
            field(out, b"content-length", format_usize(self.content_length, &mut digits));
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The decimal digits of `value`, written into the end of `buffer` (no allocation).
fn format_usize(mut value: usize, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        // `value % 10` is a single digit.
        buffer[start] = b'0' + u8::try_from(value % 10).unwrap_or(0);
        value /= 10;
        if value == 0 {
            return &buffer[start..];
        }
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all (204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once this body has been read in full.
    pub keep_alive: bool,
}

#[derive(Debug)]
pub(crate) enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// An interim response (100 Continue, 103 Early Hints) of this many bytes: skip it, a
    /// final response follows.
    Interim(usize),
    /// A final response head of this many bytes.
    Final(ResponseHead, usize),
}

/// Parses the response head at the start of `buffer`.
pub(crate) fn parse_response(buffer: &[u8]) -> Result<Parsed, ClientError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut fields);
    // The limit is on the head, not on the buffer: a read may bring a whole oversized head at
    // once (refused though complete), or a head within the limit followed by its body.
    let too_large = || ClientError::InvalidResponse(format!("response head larger than {MAX_HEAD_BYTES} bytes"));
    let length = match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) if length > MAX_HEAD_BYTES => return Err(too_large()),
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() >= MAX_HEAD_BYTES => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(error) => return Err(ClientError::InvalidResponse(format!("malformed response head: {error}"))),
    };
    let code = response.code.unwrap_or_default();
    let status =
        StatusCode::from_u16(code).map_err(|_| ClientError::InvalidResponse(format!("invalid status code {code}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ClientError::InvalidResponse("unexpected 101 Switching Protocols".into()));
    }
    if status.is_informational() {
        return Ok(Parsed::Interim(length));
    }
    let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut headers = HeaderMap::with_capacity(response.headers.len() + HEADROOM);
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| ClientError::InvalidResponse(format!("invalid header name {:?}", field.name)))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| ClientError::InvalidResponse(format!("invalid value in header {name}")))?;
        headers.append(name, value);
    }
    let framing = framing(status, &headers)?;
    let keep_alive = match framing {
        Framing::UntilClose => false,
        // A body with both fields may have been framed differently by something in between.
        Framing::Chunked if headers.contains_key(CONTENT_LENGTH) => false,
        _ => keeps_alive(version, &headers),
    };
    Ok(Parsed::Final(ResponseHead { status, version, headers, framing, keep_alive }, length))
}

/// RFC 9112 §6.3, for the response to a request that is not `HEAD` or `CONNECT`.
fn framing(status: StatusCode, headers: &HeaderMap) -> Result<Framing, ClientError> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // Chunked must be the final coding; anything else is delimited by the close.
        let last = headers.get_all(TRANSFER_ENCODING).iter().next_back().and_then(|value| tokens(value).last());
        let chunked = last.is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"));
        return Ok(if chunked { Framing::Chunked } else { Framing::UntilClose });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| invalid_length())?;
        // A list of identical values (`5, 5`) is allowed; different values are not.
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(invalid_length());
            }
            let parsed: u64 = item.parse().map_err(|_| invalid_length())?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(invalid_length());
            }
            length = Some(parsed);
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

fn invalid_length() -> ClientError {
    ClientError::InvalidResponse("invalid content-length".into())
}

/// HTTP/1.1 connections persist unless `Connection: close`; HTTP/1.0 ones only when asked.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let connection_says = |wanted: &str| {
        headers.get_all(CONNECTION).iter().flat_map(tokens).any(|token| token.eq_ignore_ascii_case(wanted))
    };
    if version == Version::HTTP_10 { connection_says("keep-alive") } else { !connection_says("close") }
}

/// The comma-separated tokens of a field value.
fn tokens(value: &HeaderValue) -> impl Iterator<Item = &str> {
    value.to_str().unwrap_or_default().split(',').map(str::trim).filter(|token| !token.is_empty())
}

#[cfg(test)]
pub(super) mod tests {
    use http::header::{AUTHORIZATION, CONTENT_TYPE};

    use super::*;

    fn head(text: &str) -> ResponseHead {
        match parse_response(text.as_bytes()) {
            Ok(Parsed::Final(head, length)) => {
                assert_eq!(length, text.len());
                head
            }
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    fn error(text: &str) -> String {
        match parse_response(text.as_bytes()) {
            Err(error) => error.to_string(),
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn the_request_head_carries_host_fields_credential_and_length() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.append("x-tag", HeaderValue::from_static("a"));
        headers.append("x-tag", HeaderValue::from_static("b"));
        let host = HeaderValue::from_static("10.0.0.5:8000");
        let credential = HeaderValue::from_static("Bearer up");
        let mut out = Vec::new();
        RequestHead {
            method: &Method::POST,
            target: "/llama/v1/chat/completions",
            host: &host,
            headers: &headers,
            authorization: Some(&credential),
            content_length: 1234,
        }
        .encode(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /llama/v1/chat/completions HTTP/1.1\r\nhost: 10.0.0.5:8000\r\n\
             content-type: application/json\r\nx-tag: a\r\nx-tag: b\r\n\
             authorization: Bearer up\r\ncontent-length: 1234\r\n\r\n"
        );
    }

    #[test]
    fn a_get_without_a_body_sends_no_length_and_a_post_always_does() {
        let host = HeaderValue::from_static("h");
        let headers = HeaderMap::new();
        let encode = |method: &Method| {
            let mut out = Vec::new();
            RequestHead {
                method,
                target: "/health",
                host: &host,
                headers: &headers,
                authorization: None,
                content_length: 0,
            }
            .encode(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(encode(&Method::GET), "GET /health HTTP/1.1\r\nhost: h\r\n\r\n");
        assert_eq!(encode(&Method::POST), "POST /health HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn lengths_are_written_in_decimal() {
        let mut buffer = [0; 20];
        for value in [0, 7, 10, 65_536, usize::MAX] {
            assert_eq!(format_usize(value, &mut buffer), value.to_string().as_bytes());
        }
    }

    #[test]
    fn targets_with_spaces_or_line_breaks_are_refused() {
        assert!(is_valid_target("/v1/chat/completions?x=1"));
        assert!(!is_valid_target("/v1/chat completions"));
        assert!(!is_valid_target("/v1\r\nx-evil: 1"));
        assert!(!is_valid_target("v1/chat"));
    }

    #[test]
    fn a_response_head_is_read_with_its_fields_and_framing() {
        let head = head("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 42\r\n\r\n");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers[CONTENT_TYPE], "application/json");
        assert_eq!(head.framing, Framing::Length(42));
        assert!(head.keep_alive);
        assert!(!head.headers.contains_key(AUTHORIZATION));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |fields: &str| head(&format!("HTTP/1.1 200 OK\r\n{fields}\r\n")).framing;
        assert_eq!(framing("transfer-encoding: chunked\r\n"), Framing::Chunked);
        assert_eq!(framing("transfer-encoding: gzip, Chunked\r\n"), Framing::Chunked);
        assert_eq!(framing("transfer-encoding: chunked, gzip\r\n"), Framing::UntilClose);
        assert_eq!(framing("transfer-encoding: chunked\r\ncontent-length: 5\r\n"), Framing::Chunked);
        assert_eq!(framing("content-length: 5, 5\r\ncontent-length: 5\r\n"), Framing::Length(5));
        assert_eq!(framing(""), Framing::UntilClose);
        assert_eq!(head("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n").framing, Framing::Empty);
        assert_eq!(head("HTTP/1.1 304 Not Modified\r\n\r\n").framing, Framing::Empty);
    }

    #[test]
    fn only_bodies_with_a_known_end_keep_the_connection() {
        let alive = |text: &str| head(text).keep_alive;
        assert!(alive("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"));
        assert!(!alive("HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: Close\r\n\r\n"));
        assert!(!alive("HTTP/1.1 200 OK\r\n\r\n"), "read until close");
        assert!(!alive("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"));
        assert!(!alive("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"));
        assert!(alive("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nconnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn interim_responses_are_reported_for_skipping() {
        let text = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert!(matches!(parse_response(text.as_bytes()), Ok(Parsed::Interim(25))));
        assert!(matches!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-"), Ok(Parsed::Partial)));
    }

    /// A complete `200` head of exactly `length` bytes (a padding field makes up the size),
    /// with a two-byte body after it.
    pub(crate) fn head_of_length(length: usize) -> String {
        let fixed = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-pad: \r\n\r\n".len();
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-pad: {}\r\n\r\n", "a".repeat(length - fixed));
        assert_eq!(head.len(), length);
        head
    }

    #[test]
    fn a_head_over_the_limit_is_refused_even_when_it_arrives_whole() {
        let over = head_of_length(MAX_HEAD_BYTES + 1);
        assert!(error(&over).contains("larger than"), "one read holding the whole oversized head");
        assert!(error(&format!("{over}ok")).contains("larger than"), "with its body in the same read");
        let interim = format!("HTTP/1.1 103 Early Hints\r\nlink: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert!(error(&interim).contains("larger than"), "an interim head is held to the limit too");
    }

    #[test]
    fn a_head_of_exactly_the_limit_is_accepted() {
        let exact = head_of_length(MAX_HEAD_BYTES);
        assert_eq!(head(&exact).framing, Framing::Length(2));
        // Its body in the same read takes the buffer past the limit; the head is still within it.
        assert!(matches!(parse_response(format!("{exact}ok").as_bytes()), Ok(Parsed::Final(_, MAX_HEAD_BYTES))));
        // One byte short of the limit and unfinished: wait for more.
        assert!(matches!(parse_response(&exact.as_bytes()[..MAX_HEAD_BYTES - 1]), Ok(Parsed::Partial)));
        // The limit reached and still unfinished: the head can only end beyond it.
        let unfinished = &head_of_length(MAX_HEAD_BYTES + 1).into_bytes()[..MAX_HEAD_BYTES];
        assert!(matches!(parse_response(unfinished), Err(ClientError::InvalidResponse(_))));
    }

    #[test]
    fn bad_heads_are_errors() {
        assert!(error("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n").contains("content-length"));
        assert!(error("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").contains("content-length"));
        assert!(error("HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n").contains("content-length"));
        assert!(error("HTTP/1.1 101 Switching Protocols\r\n\r\n").contains("101"));
        assert!(error("SMTP ready\r\n\r\n").contains("malformed"));
        let unfinished = format!("HTTP/1.1 200 OK\r\nx-padding: {}", "a".repeat(MAX_HEAD_BYTES));
        assert!(error(&unfinished).contains("larger than"));
        let too_many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "x-a: 1\r\n".repeat(MAX_HEADERS + 1));
        assert!(error(&too_many).contains("malformed"));
    }
}
