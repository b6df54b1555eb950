//! The request-head gate of an HTTP/1 connection: it reads along with hyper, byte for byte, and
//! refuses a request head before hyper sees it when it is too large, malformed or ambiguously
//! framed — so that every such refusal is an OpenAI-shaped, audited answer rather than hyper's
//! bare status line, and so that `Content-Length` together with `Transfer-Encoding` is refused
//! (hyper would quietly prefer one of them).
//!
//! It follows the framing hyper will use: a head, then `Content-Length` bytes of body, then the
//! next head. A chunked body ends the gate's watch: the response to a chunked request closes
//! the connection (see `connection.rs`), so no head can follow it. HTTP/2 connections (known by
//! their preface) are not watched: their framing is checked by the h2 codec.

use std::mem::MaybeUninit;

use http::Method;

use crate::error::ApiError;

/// The HTTP/2 connection preface, which hyper-util looks for to pick the protocol.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most header fields any configuration may allow; the parse runs on a stack array of this
/// size.
const MAX_HEADERS_LIMIT: usize = portcullis_config::MAX_HEADERS;

/// What the gate allows in one request head.
#[derive(Debug, Clone, Copy)]
pub struct GateLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

#[derive(Debug)]
enum State {
    /// Matching the HTTP/2 preface; this many of its bytes have been seen.
    Sniff(usize),
    /// Reading a request head; `head` holds what came so far when it spans reads.
    Head,
    /// Inside a body with this many bytes left.
    Body(u64),
    /// Nothing more to check: an HTTP/2 connection, the rest after a chunked body, or after a
    /// refused head (whose connection passes nothing more on).
    Unwatched,
}

/// What became of a batch of bytes read from the client.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// All of it may go on to hyper.
    Pass,
    /// Only the first `keep` bytes may; the head starting there is refused with `error`.
    Refuse { keep: usize, error: ApiError },
}

/// Where a request head begins and ends, for the connection's deadlines.
pub trait HeadEvents {
    /// The first byte of a request head arrived.
    fn head_started(&self);
    /// A request head is complete and was let through.
    fn head_complete(&self);
    /// The connection turned out to speak HTTP/2.
    fn is_http2(&self);
}

#[derive(Debug)]
pub struct HeadGate {
    state: State,
    limits: GateLimits,
    /// The part of a head received so far, when a head spans reads.
    head: Vec<u8>,
}

impl HeadGate {
    pub fn new(limits: GateLimits) -> HeadGate {
        HeadGate { state: State::Sniff(0), limits, head: Vec::new() }
    }

    /// Follows `bytes`, the next bytes read from the client.
    pub fn observe(&mut self, bytes: &[u8], events: &impl HeadEvents) -> Verdict {
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            match self.state {
                State::Unwatched => return Verdict::Pass,
                State::Sniff(matched) => {
                    let same = rest.iter().zip(&H2_PREFACE[matched..]).take_while(|(a, b)| a == b).count();
                    if matched + same == H2_PREFACE.len() {
                        self.state = State::Unwatched;
                        events.is_http2();
                        return Verdict::Pass;
                    }
                    if same == rest.len() {
                        if matched == 0 && same > 0 {
                            events.head_started();
                        }
                        self.state = State::Sniff(matched + same);
                        return Verdict::Pass;
                    }
                    // Not HTTP/2: what matched so far is the start of an HTTP/1 head.
                    self.head.extend_from_slice(&H2_PREFACE[..matched]);
                    self.state = State::Head;
                }
                State::Body(left) => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    at += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { State::Head } else { State::Body(left) };
                }
                State::Head => {
                    if self.head.is_empty() {
                        events.head_started();
                    }
                    match self.read_head(rest) {
                        Ok(None) => return Verdict::Pass,
                        Ok(Some((used, framing))) => {
                            at += used;
                            events.head_complete();
                            self.state = framing;
                        }
                        Err(error) => {
                            // The caller passes nothing after this; bytes before `at` complete
                            // earlier requests. (A head that began in an earlier read reached
                            // hyper only in part: hyper sees it cut short and answers nothing.)
                            self.state = State::Unwatched;
                            self.head = Vec::new();
                            return Verdict::Refuse { keep: at, error };
                        }
                    }
                }
            }
        }
        Verdict::Pass
    }

    /// Reads head bytes from `bytes`. `Ok(None)`: the head goes on in a later read (the bytes are
    /// kept); `Ok(Some((used, next)))`: the head ended after `used` bytes of `bytes`.
    fn read_head(&mut self, bytes: &[u8]) -> Result<Option<(usize, State)>, ApiError> {
        // Common case: the whole head arrives in one read and is checked where it lies.
        if self.head.is_empty() {
            if let Some(done) = complete(bytes, self.limits)? {
                return Ok(Some(done));
            }
            if bytes.len() > self.limits.max_header_bytes {
                return Err(ApiError::HeaderTooLarge);
            }
            self.head.extend_from_slice(bytes);
            return Ok(None);
        }
        let before = self.head.len();
        // Only what can still belong to a head within the limit is copied.
        let room = (self.limits.max_header_bytes + 1).saturating_sub(before);
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        let head = std::mem::take(&mut self.head);
        match complete(&head, self.limits)? {
            Some((length, framing)) => Ok(Some((length - before, framing))),
            None if head.len() > self.limits.max_header_bytes => Err(ApiError::HeaderTooLarge),
            None => {
                self.head = head;
                Ok(None)
            }
        }
    }
}

/// The head at the start of `bytes`, checked, if it is complete there: its length and what
/// follows it. One parse serves both.
fn complete(bytes: &[u8], limits: GateLimits) -> Result<Option<(usize, State)>, ApiError> {
    // A head ends with an empty line; without one there is nothing to parse yet.
    if !has_blank_line(bytes) {
        return Ok(None);
    }
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_LIMIT];
    let mut request = httparse::Request::new(&mut []);
    let max = limits.max_headers.min(MAX_HEADERS_LIMIT);
    match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, bytes, &mut headers[..max])
    {
        Ok(httparse::Status::Complete(length)) if length > limits.max_header_bytes => Err(ApiError::HeaderTooLarge),
        Ok(httparse::Status::Complete(length)) => Ok(Some((length, check_request(&request)?))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(ApiError::HeaderTooLarge),
        Err(error) => Err(malformed(&format!("the request head is malformed ({error})"))),
    }
}

/// Whether `bytes` hold an empty line (`\n\r\n` or `\n\n`), which ends a head.
fn has_blank_line(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes).any(|at| matches!(&bytes[at + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// Headers of which a request may carry one only: which one would count?
pub const SINGLE_HEADERS: [&str; 3] = ["host", "authorization", "x-api-key"];

/// A request carrying a second `name` header (see [`SINGLE_HEADERS`]).
pub fn repeated(name: &str) -> ApiError {
    malformed(&format!("the {name} header appears more than once"))
}

/// An HTTP/1.1 request without `Host`.
pub fn host_missing() -> ApiError {
    malformed("an HTTP/1.1 request needs a Host header")
}

/// Checks a complete request head and says what follows it. hyper validates the same head again;
/// what it would refuse with a bare status line is refused here first.
fn check_request(request: &httparse::Request<'_, '_>) -> Result<State, ApiError> {
    let method = request.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| malformed("the request method is malformed"))?;
    if method == Method::CONNECT {
        return Err(ApiError::MethodNotAllowed);
    }
    let path = request.path.unwrap_or_default();
    if http::Uri::try_from(path).is_err() {
        return Err(malformed("the request target is malformed"));
    }
    let is_http_11 = request.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encodings = 0;
    let mut singles = [0u8; SINGLE_HEADERS.len()];
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(malformed("Content-Length appears more than once"));
            }
            length = Some(content_length(header.value)?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encodings += 1;
            chunked = header.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if let Some(index) = SINGLE_HEADERS.iter().position(|name| header.name.eq_ignore_ascii_case(name)) {
            singles[index] += 1;
            if singles[index] > 1 {
                return Err(repeated(SINGLE_HEADERS[index]));
            }
        }
    }
    if is_http_11 && singles[0] == 0 {
        return Err(host_missing());
    }
    if transfer_encodings > 0 {
        if !is_http_11 {
            return Err(malformed("Transfer-Encoding is not allowed in HTTP/1.0"));
        }
        if length.is_some() {
            return Err(malformed("Content-Length and Transfer-Encoding must not appear together"));
        }
        if transfer_encodings > 1 || !chunked {
            return Err(malformed("Transfer-Encoding must be exactly \"chunked\""));
        }
        return Ok(State::Unwatched);
    }
    Ok(match length {
        Some(length) if length > 0 => State::Body(length),
        _ => State::Head,
    })
}

fn content_length(value: &[u8]) -> Result<u64, ApiError> {
    let digits = value.trim_ascii();
    let invalid = || malformed("Content-Length is not a number");
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    std::str::from_utf8(digits).ok().and_then(|text| text.parse().ok()).ok_or_else(invalid)
}

fn malformed(message: &str) -> ApiError {
    ApiError::MalformedRequest { message: message.to_string() }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const LIMITS: GateLimits = GateLimits { max_header_bytes: 8192, max_headers: 16 };

    #[derive(Default)]
    struct Events {
        started: Cell<u32>,
        complete: Cell<u32>,
        http2: Cell<bool>,
    }

    impl HeadEvents for Events {
        fn head_started(&self) {
            self.started.set(self.started.get() + 1);
        }
        fn head_complete(&self) {
            self.complete.set(self.complete.get() + 1);
        }
        fn is_http2(&self) {
            self.http2.set(true);
        }
    }

    /// Feeds `bytes` in pieces of `step` bytes; the first refusal, with the offset (in the whole
    /// input) up to which bytes were passed.
    fn feed(bytes: &[u8], step: usize) -> (Option<(usize, ApiError)>, Events) {
        let events = Events::default();
        let mut gate = HeadGate::new(LIMITS);
        for (index, piece) in bytes.chunks(step).enumerate() {
            if let Verdict::Refuse { keep, error } = gate.observe(piece, &events) {
                return (Some((index * step + keep, error)), events);
            }
        }
        (None, events)
    }

    fn code(error: &ApiError) -> &'static str {
        error.kind_and_code().1
    }

    #[test]
    fn well_formed_requests_pass_whole_or_byte_by_byte() {
        let two = b"POST /v1/chat HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
        for step in [1, 3, 7, two.len()] {
            let (refused, events) = feed(two, step);
            assert!(refused.is_none(), "step {step}: {refused:?}");
            assert_eq!(events.complete.get(), 2, "step {step}");
        }
    }

    #[test]
    fn http2_is_recognised_by_its_preface_and_left_alone() {
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend_from_slice(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00 whatever follows");
        for step in [1, 5, bytes.len()] {
            let (refused, events) = feed(&bytes, step);
            assert!(refused.is_none());
            assert!(events.http2.get());
        }
        // A request that merely starts like the preface is HTTP/1.
        let (refused, events) = feed(b"PRI-ish / HTTP/1.1\r\nHost: a\r\n\r\n", 2);
        assert!(refused.is_none());
        assert_eq!(events.complete.get(), 1);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let cases: [&[u8]; 6] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for case in cases {
            let (refused, _) = feed(case, case.len());
            let (keep, error) = refused.unwrap_or_else(|| panic!("passed: {}", String::from_utf8_lossy(case)));
            assert_eq!((keep, code(&error)), (0, "malformed_request"), "{}", String::from_utf8_lossy(case));
        }
    }

    #[test]
    fn malformed_and_oversized_heads_are_refused_as_hyper_would() {
        let (refused, _) = feed(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 4);
        assert_eq!(code(&refused.unwrap().1), "malformed_request");
        let (refused, _) = feed(b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 100);
        assert_eq!(code(&refused.unwrap().1), "malformed_request");
        let (refused, _) = feed(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 100);
        assert_eq!(code(&refused.unwrap().1), "method_not_allowed");
        let many: String = (0..17).map(|i| format!("X-{i}: v\r\n")).collect();
        let (refused, _) = feed(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), 50);
        assert_eq!(code(&refused.unwrap().1), "request_header_too_large");
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        for step in [1000, long.len()] {
            let (refused, _) = feed(long.as_bytes(), step);
            assert_eq!(code(&refused.unwrap().1), "request_header_too_large", "step {step}");
        }
        // Without an end of head, the limit still holds.
        let (refused, _) = feed(&[b'a'; 9000], 512);
        assert_eq!(code(&refused.unwrap().1), "request_header_too_large");
    }

    #[test]
    fn a_head_with_two_credentials_or_hosts_or_no_host_is_refused() {
        let cases: [&[u8]; 4] = [
            b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\nauthorization: Bearer y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nx-api-key: x\r\nX-Api-Key: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nAuthorization: Bearer x\r\n\r\n",
        ];
        for case in cases {
            let (refused, _) = feed(case, case.len());
            assert_eq!(code(&refused.expect("refused").1), "malformed_request", "{}", String::from_utf8_lossy(case));
        }
        let (refused, _) = feed(b"GET / HTTP/1.0\r\n\r\n", 64);
        assert!(refused.is_none(), "HTTP/1.0 needs no Host");
    }

    #[test]
    fn a_bad_head_after_a_good_request_keeps_the_good_one() {
        let good = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let bad = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        let both = [good.as_slice(), bad.as_slice()].concat();
        let (refused, events) = feed(&both, both.len());
        let (keep, _) = refused.unwrap();
        assert_eq!(keep, good.len(), "everything before the bad head goes on");
        assert_eq!(events.complete.get(), 1);
    }

    #[test]
    fn a_chunked_request_ends_the_watch() {
        let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nnot a head at all\r\n\r\n";
        let (refused, _) = feed(chunked, 10);
        assert!(refused.is_none());
    }

    #[test]
    fn head_events_mark_each_head() {
        let (_, events) = feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /", 5);
        assert_eq!((events.started.get(), events.complete.get()), (2, 1), "the second head has begun");
    }
}
