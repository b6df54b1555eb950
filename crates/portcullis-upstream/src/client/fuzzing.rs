//! Fuzz entry points for the client's parsers: the chunked decoder, the response-head parser,
//! and the request target and head built from an endpoint URL, a client path and client headers.
//! Re-exported by the crate's `fuzzing` module.
#![allow(clippy::panic, reason = "a broken invariant panics so that the fuzzer records the input")]

use bytes::{Buf, BytesMut};
use http::header::{CONTENT_LENGTH, HeaderName, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use url::Url;

use super::chunked::{ChunkedDecoder, ChunkedError, Decoded};
use super::head::{self, Framing, MAX_HEAD_BYTES, Parsed, RequestHead};
use super::origin::Origin;

/// Sizes of successive reads: all at once for seed 0, else pseudo-random sizes in
/// `1..=seed` (xorshift, so a seed always gives the same split). Shared with the server's
/// targets, which split their streams the same way.
pub fn read_sizes(seed: u8) -> impl Iterator<Item = usize> {
    let mut state = u32::from(seed).wrapping_mul(0x9E37_79B9) | 1;
    std::iter::repeat_with(move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        if seed == 0 { usize::MAX } else { (state % u32::from(seed)) as usize + 1 }
    })
}

/// What a chunked body decoded to, fed in reads of the given sizes.
#[derive(Debug, PartialEq, Eq)]
struct ChunkedOutcome {
    data: Vec<u8>,
    /// `Ok(Some(rest))` at the end of the body with what followed it; `Ok(None)` when the
    /// input ran out first.
    end: Result<Option<Vec<u8>>, ChunkedError>,
}

fn decode_chunked(input: &[u8], seed: u8) -> ChunkedOutcome {
    let mut decoder = ChunkedDecoder::new();
    let mut buffer = BytesMut::new();
    let mut data = Vec::new();
    let mut rest = input;
    let mut sizes = read_sizes(seed);
    loop {
        let before = buffer.len();
        match decoder.decode(&mut buffer) {
            Ok(Decoded::Data(bytes)) => {
                assert!(!bytes.is_empty(), "empty data frame");
                assert!(bytes.len() <= before, "more data than was buffered");
                data.extend_from_slice(&bytes);
            }
            Ok(Decoded::End) => {
                // What follows the body stays, in order: what was buffered, then what was not read.
                let mut after = buffer.to_vec();
                after.extend_from_slice(rest);
                return ChunkedOutcome { data, end: Ok(Some(after)) };
            }
            Ok(Decoded::NeedMore) => {
                assert!(buffer.is_empty(), "NeedMore with {} bytes left in the buffer", buffer.len());
                if rest.is_empty() {
                    return ChunkedOutcome { data, end: Ok(None) };
                }
                let size = sizes.next().unwrap_or(1).clamp(1, rest.len());
                buffer.extend_from_slice(&rest[..size]);
                rest = &rest[size..];
            }
            Err(error) => return ChunkedOutcome { data, end: Err(error) },
        }
    }
}

/// The chunked decoder: the first byte picks how the rest is split into reads. The decoder
/// never yields more data than it was given, and the outcome (data, end, what follows the
/// body, or the error) is the same however the bytes arrive.
pub fn chunked_decode(bytes: &[u8]) {
    let Some((&seed, input)) = bytes.split_first() else { return };
    let whole = decode_chunked(input, 0);
    assert!(whole.data.len() <= input.len());
    if let Ok(Some(after)) = &whole.end {
        assert!(input.ends_with(after));
        assert!(whole.data.len() + after.len() <= input.len());
    }
    let split = decode_chunked(input, seed);
    assert_eq!(whole, split, "the split {seed} changed the outcome");
    let bytewise = decode_chunked(input, 1);
    assert_eq!(whole, bytewise, "byte-by-byte reads changed the outcome");
}

/// What the client's read loop made of a response head.
#[derive(Debug, PartialEq, Eq)]
enum HeadOutcome {
    /// Status, head length, framing, keep-alive; and how many interim heads were skipped.
    Final {
        status: StatusCode,
        length: usize,
        framing: Framing,
        keep_alive: bool,
        interim: usize,
    },
    Refused,
    /// The input ended inside a head.
    Incomplete,
}

/// The read loop of `client::exchange`, over reads of the given sizes times `scale` (the loop
/// parses the whole buffer after each read, so byte-sized reads of a padded head would take
/// seconds).
fn read_head(input: &[u8], seed: u8, scale: usize) -> HeadOutcome {
    let mut buffer = BytesMut::new();
    let mut rest = input;
    let mut sizes = read_sizes(seed).map(|size| size.saturating_mul(scale));
    let mut interim = 0;
    loop {
        match head::parse_response(&buffer) {
            Ok(Parsed::Partial) => {
                if rest.is_empty() {
                    return HeadOutcome::Incomplete;
                }
                let size = sizes.next().unwrap_or(1).clamp(1, rest.len());
                buffer.extend_from_slice(&rest[..size]);
                rest = &rest[size..];
            }
            Ok(Parsed::Interim(length)) => {
                assert!(length > 0 && length <= buffer.len() && length <= MAX_HEAD_BYTES, "interim head of {length}");
                buffer.advance(length);
                interim += 1;
            }
            Ok(Parsed::Final(response, length)) => {
                assert!(length <= buffer.len(), "head longer than the buffer");
                assert!(length <= MAX_HEAD_BYTES, "a head of {length} bytes was accepted");
                check_head(&response);
                return HeadOutcome::Final {
                    status: response.status,
                    length,
                    framing: response.framing,
                    keep_alive: response.keep_alive,
                    interim,
                };
            }
            Err(_) => return HeadOutcome::Refused,
        }
    }
}

fn check_head(response: &head::ResponseHead) {
    let status = response.status;
    assert!(!status.is_informational(), "an interim status as the final one");
    match response.framing {
        Framing::Empty => assert!(status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED),
        Framing::Chunked => assert!(response.headers.contains_key(TRANSFER_ENCODING)),
        Framing::Length(length) => {
            assert!(!response.headers.contains_key(TRANSFER_ENCODING));
            for value in response.headers.get_all(CONTENT_LENGTH) {
                let text = value.to_str().unwrap_or_default();
                assert!(text.split(',').all(|item| item.trim().parse() == Ok(length)), "{text:?} vs {length}");
            }
        }
        Framing::UntilClose => assert!(!response.keep_alive, "a close-delimited body cannot keep the connection"),
    }
}

/// The response-head parser as the client's read loop drives it. The first byte picks the
/// split into reads and, when its top three bits are set, pads the head with a field of
/// `(byte & 0x1f) * 4 KiB` so that the 64 KiB limit is within reach. The outcome must not
/// depend on how the bytes arrive, and no accepted head exceeds the limit.
pub fn response_head(bytes: &[u8]) {
    let Some((&seed, input)) = bytes.split_first() else { return };
    let padded;
    let input = if seed & 0xe0 == 0xe0 {
        let Some(line_end) = input.iter().position(|&byte| byte == b'\n') else { return };
        let mut with_padding = input[..=line_end].to_vec();
        with_padding.extend_from_slice(b"x-pad: ");
        with_padding.resize(with_padding.len() + usize::from(seed & 0x1f) * 4096, b'a');
        with_padding.extend_from_slice(b"\r\n");
        with_padding.extend_from_slice(&input[line_end + 1..]);
        padded = with_padding;
        &padded[..]
    } else {
        input
    };
    let scale = if input.len() > 8192 { 509 } else { 1 };
    let whole = read_head(input, 0, 1);
    let split = read_head(input, seed & 0x1f, scale);
    assert_eq!(whole, split, "the split {} changed the outcome", seed & 0x1f);
    if let HeadOutcome::Final { length, interim: 0, .. } = whole {
        // Every prefix of an accepted head is merely incomplete.
        assert_eq!(read_head(&input[..length - 1], 0, 1), HeadOutcome::Incomplete, "a prefix of an accepted head");
    }
}

/// An endpoint URL (first line), a client path (second line) and client header fields (the
/// other lines, `name: value`): the endpoint is accepted as configuration accepts it, the
/// target is the prefix joined with the path, and a request head with a valid target and the
/// outbound headers must read back as exactly that one request: same target, `host`, fields,
/// and no client credential.
pub fn upstream_path(bytes: &[u8]) {
    let mut lines = bytes.split(|&byte| byte == b'\n');
    let Some(Ok(endpoint)) = lines.next().map(std::str::from_utf8) else { return };
    let Some(Ok(path)) = lines.next().map(std::str::from_utf8) else { return };
    let Ok(url) = Url::parse(endpoint) else { return };
    // What portcullis-config's validation lets through.
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return;
    }
    let origin = Origin::new(&url);
    check_origin(&url, &origin);
    let target = origin.target(path);
    assert!(target.starts_with(&origin.path_prefix));
    assert!(target.ends_with(path));
    assert!(target.len() <= origin.path_prefix.len() + path.len() + 1);
    if !head::is_valid_target(&target) {
        return;
    }
    let mut client = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&byte| byte == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        client.append(name, value);
    }
    let outbound = crate::headers::outbound(client);
    for name in ["authorization", "x-api-key", "cookie", "host", "content-length", "connection", "transfer-encoding"] {
        assert!(!outbound.contains_key(name), "{name} would be forwarded");
    }
    let credential = HeaderValue::from_static("Bearer upstream");
    let body = b"{}";
    let mut encoded = Vec::new();
    RequestHead {
        method: &Method::POST,
        target: &target,
        host: &origin.authority,
        headers: &outbound,
        authorization: Some(&credential),
        content_length: body.len(),
    }
    .encode(&mut encoded);
    let mut fields = vec![httparse::EMPTY_HEADER; outbound.len() + 3];
    let mut request = httparse::Request::new(&mut fields);
    match request.parse(&encoded) {
        Ok(httparse::Status::Complete(length)) => assert_eq!(length, encoded.len(), "bytes after the request head"),
        other => panic!("the request head does not read back ({other:?}): {:?}", String::from_utf8_lossy(&encoded)),
    }
    assert_eq!(request.method, Some("POST"));
    assert_eq!(request.path, Some(target.as_str()));
    let expected: Vec<(&str, &[u8])> = [("host", origin.authority.as_bytes())]
        .into_iter()
        .chain(outbound.iter().map(|(name, value)| (name.as_str(), value.as_bytes())))
        .chain([("authorization", credential.as_bytes()), ("content-length", &b"2"[..])])
        .collect();
    let read: Vec<(&str, &[u8])> = request.headers.iter().map(|field| (field.name, field.value)).collect();
    assert_eq!(read, expected, "the fields do not read back as written");
}

fn check_origin(url: &Url, origin: &Origin) {
    assert!(!origin.host.is_empty(), "{url}: no host to connect to");
    assert_eq!(Some(origin.port), url.port_or_known_default());
    assert_eq!(origin.authority.to_str().ok(), Some(url.authority()), "{url}: wrong Host");
    // An https host that is no TLS server name is `Some(Err(_))`: never connected to at all.
    assert_eq!(origin.tls_name.is_some(), url.scheme() == "https", "{url}: TLS only for https, and always");
    assert!(!origin.path_prefix.ends_with('/'));
    assert!(origin.path_prefix.is_empty() || origin.path_prefix.starts_with('/'));
}
