//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a public API).
//!
//! Each function takes the fuzzer's bytes, runs a parser on them and asserts what must hold for
//! every input: a failed assertion is how the fuzzer learns of a logic bug, not only a panic.
//!
#![doc(hidden)]
#![allow(clippy::panic, reason = "a broken invariant panics so that the fuzzer records the input")]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use portcullis_audit::Redactor;
use portcullis_upstream::fuzzing::read_sizes;
use serde_json::Value;

use crate::proxy::body::{self, Operation, ParsedRequest};
use crate::proxy::capture::{Capture, CapturedText};
use crate::proxy::sse::{Pushed, SseScanner, StreamKind, StreamTally};

/// The credential headers: `Authorization` (first line), `x-api-key` (second) and
/// `X-Forwarded-For` (third) as a client sends them; the first byte picks the peer. Checks
/// [`crate::bearer::bearer_token`] against the header's grammar, the key format on what it
/// returns, and that the client address is the peer unless the peer is a trusted proxy (whose
/// header alone can name another client, or get the request refused).
pub fn credential_header(bytes: &[u8]) {
    let Some((&peer, rest)) = bytes.split_first() else { return };
    let mut lines = rest.split(|&byte| byte == b'\n');
    let mut headers = HeaderMap::new();
    for name in ["authorization", "x-api-key", "x-forwarded-for"] {
        if let Some(Ok(value)) = lines.next().map(HeaderValue::from_bytes) {
            headers.append(name, value);
        }
    }
    if let Some(token) = crate::bearer::bearer_token(&headers) {
        let Some(Ok(value)) = headers.get(AUTHORIZATION).map(HeaderValue::to_str) else {
            panic!("a token from an Authorization header that is not text");
        };
        let Some((scheme, after)) = value.split_once(' ') else { panic!("a token without a scheme: {value:?}") };
        assert!(scheme.eq_ignore_ascii_case("bearer"), "{value:?}");
        assert_eq!(token, after.trim());
        if let Ok(secret) = portcullis_auth::SecretToken::parse(portcullis_auth::SecretKind::ApiKey, token) {
            assert_eq!(secret.expose(), token);
            assert!(value.len() >= 49, "a key from an Authorization header shorter than `Bearer ` + 42");
        }
    }
    let trusted: [IpNet; 2] =
        ["10.0.0.0/8", "fd00::/8"].map(|net| net.parse().unwrap_or_else(|error| panic!("{net}: {error}")));
    let peer = match peer % 3 {
        0 => IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        1 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        _ => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
    };
    let resolved = crate::client_addr::resolve(
        SocketAddr::new(peer, 443),
        &headers,
        &trusted,
        portcullis_config::ForwardedHeader::XForwardedFor,
    );
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    match resolved {
        Ok(client) if client != peer => {
            assert!(is_trusted(&peer), "an untrusted peer's X-Forwarded-For was believed");
            assert!(headers.contains_key("x-forwarded-for"), "{client} without a header naming it");
        }
        Ok(_) => {}
        Err(_) => assert!(is_trusted(&peer), "only a trusted peer's header can be refused"),
    }
}

static REDACTOR: LazyLock<Arc<Redactor>> =
    LazyLock::new(|| Arc::new(Redactor::new(&[]).unwrap_or_else(|error| panic!("built-in rules: {error}"))));

/// The request JSON envelope (`proxy::body::parse`): the first byte picks the operation, the
/// rest is the body. An accepted body is a JSON object whose fields say what the envelope read,
/// is kept byte for byte, and stays accepted, saying the same, after the upstream's `model`
/// translation; its prompt capture yields a JSON record.
pub fn request_body(bytes: &[u8]) {
    let Some((&selector, body)) = bytes.split_first() else { return };
    let operation = Operation::ALL[usize::from(selector) % Operation::ALL.len()];
    let body = Bytes::copy_from_slice(body);
    let Ok(parsed) = body::parse(operation, body.clone(), 64) else { return };
    assert_eq!(parsed.body, body, "the body is relayed as received");
    assert!(!parsed.model.is_empty());
    assert!((1..=128).contains(&parsed.choices));
    assert_ne!(parsed.max_tokens, Some(0));
    assert!(!parsed.stream || operation.generates(), "a streamed request for what generates nothing");
    let document = serde_json::from_slice::<Value>(&body);
    let Ok(Value::Object(object)) = &document else {
        panic!("the envelope accepted a body that is not a JSON object to serde_json: {document:?}");
    };
    assert_eq!(object.get("model").and_then(Value::as_str), Some(parsed.model.as_str()));
    assert_eq!(object.get("stream").and_then(Value::as_bool).unwrap_or(false), parsed.stream);

    let upstream_name = if parsed.model == "upstream-name" { "other-name" } else { "upstream-name" };
    let sent = portcullis_upstream::fuzzing::model_rewrite(&body, &parsed.model, upstream_name);
    match body::parse(operation, sent.clone(), 64) {
        Ok(again) => {
            assert_eq!(again.model, upstream_name, "the model sent upstream is not the translated one");
            let same = |request: &ParsedRequest| {
                (request.stream, request.max_tokens, request.choices, request.wants_stream_usage)
            };
            assert_eq!(same(&again), same(&parsed), "the translation changed what the gateway admitted");
        }
        Err(error) => panic!("the translated body is refused ({error:?}): {:?}", String::from_utf8_lossy(&sent)),
    }

    let content = Capture::new(REDACTOR.clone(), &body).content(None);
    let record = serde_json::from_str::<Value>(&content);
    assert!(record.as_ref().is_ok_and(|record| record["prompt"].is_string()), "capture record {content:?}");
}

/// What the SSE scanner relayed and learned from one stream.
#[derive(Debug, PartialEq, Eq)]
struct Scanned {
    relayed: Vec<u8>,
    tally: StreamTally,
    text: Option<CapturedText>,
    /// How the scan ended: `Open` when the stream ran out.
    ended: Pushed,
}

fn scan(stream: &[u8], seed: u8, kind: StreamKind, strip: bool, capture: bool, cap: Option<u64>) -> Scanned {
    let mut scanner = SseScanner::new(kind, strip, capture, 64 * 1024);
    let mut out = VecDeque::new();
    let mut relayed = Vec::new();
    let mut rest = stream;
    let mut sizes = read_sizes(seed);
    let mut ended = Pushed::Open;
    while !rest.is_empty() && ended == Pushed::Open {
        let size = sizes.next().unwrap_or(1).clamp(1, rest.len());
        let frame = Bytes::copy_from_slice(&rest[..size]);
        rest = &rest[size..];
        ended = scanner.push(frame, &mut out, cap);
        relayed.extend(out.drain(..).flat_map(|slice| slice.to_vec()));
    }
    Scanned { relayed, tally: scanner.tally, text: scanner.text, ended }
}

/// The SSE scanner: the first byte sets stripping of the usage chunk (bit 0), content capture
/// (bit 1), a cap on content events (bits 2–4, 0 for none) and whose events the stream carries
/// (bits 5–6: chat chunks, Responses, Anthropic); the second picks how the
/// stream is split into frames. The scanner adds nothing: what it relays is the stream up to
/// its last complete event — or up to the first whose data is not a JSON object, where it
/// stops — less what it removes (only the usage chunk, only when asked, and what follows the
/// cap); and none of it depends on how the stream is framed.
pub fn sse_scan(bytes: &[u8]) {
    let [flags, seed, stream @ ..] = bytes else { return };
    let strip = flags & 1 == 1;
    let capture = flags & 2 == 2;
    let cap = match (flags >> 2) & 7 {
        0 => None,
        cap => Some(u64::from(cap)),
    };
    let kind = [StreamKind::OpenAi, StreamKind::Responses, StreamKind::Anthropic, StreamKind::OpenAi]
        [usize::from((flags >> 5) & 3)];
    let scanned = |seed, strip, capture, cap| scan(stream, seed, kind, strip, capture, cap);
    let whole = scanned(0, strip, capture, cap);
    assert!(whole.relayed.len() <= stream.len(), "relayed more than was received");
    assert_eq!(whole.text.is_some(), capture);
    if let Some(cap) = cap {
        assert!(whole.tally.content_events <= cap, "relayed past the cap");
    }
    let split = scanned(*seed, strip, capture, cap);
    assert_eq!(whole, split, "the framing {seed} changed the outcome");

    let plain = scanned(0, false, false, None);
    assert!(stream.starts_with(&plain.relayed), "without stripping, the stream is relayed unchanged");
    let unfinished = &stream[plain.relayed.len()..];
    if plain.ended == Pushed::Invalid {
        assert!(begins_with_a_non_json_event(unfinished), "stopped before an event that is fine: {unfinished:?}");
    } else {
        assert!(
            !unfinished.windows(2).any(|pair| pair == b"\n\n")
                && !unfinished.windows(3).any(|three| three == b"\n\r\n"),
            "a complete event was held back"
        );
    }
    if cap.is_none() {
        assert_eq!(plain.tally, whole.tally, "stripping or capture changed what was counted");
        if whole.tally.usage.is_none() {
            assert_eq!(plain.relayed, whole.relayed, "something was stripped without a usage report");
        }
    } else {
        let uncapped = scanned(0, strip, capture, None);
        assert!(uncapped.relayed.starts_with(&whole.relayed), "the cap changed what came before it");
    }
}

/// Whether `stream` begins (after blank lines) with a complete event whose first `data:` line
/// holds something other than `[DONE]` or a JSON object (judged by its first non-blank byte):
/// written here from the SSE format, apart from the scanner it checks.
fn begins_with_a_non_json_event(stream: &[u8]) -> bool {
    let lines = stream.split(|byte| *byte == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let (mut data, mut complete, mut started) = (None, false, false);
    for line in lines {
        // Blank lines before an event's first line end no event: they dispatch nothing.
        if line.is_empty() && started {
            complete = true;
            break;
        }
        started |= !line.is_empty();
        if data.is_none() {
            data = line.strip_prefix(b"data:").map(|rest| rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    let Some(data) = data.filter(|_| complete) else { return false };
    data != b"[DONE]" && data.iter().find(|byte| !byte.is_ascii_whitespace()).is_some_and(|first| *first != b'{')
}
