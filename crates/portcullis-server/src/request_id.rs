//! `x-request-id` on every response: the client's own when it is sane, else a fresh one.

use axum::extract::Request;
use http::HeaderValue;

pub const HEADER: &str = "x-request-id";

/// The request's id, in the request's extensions for every later phase.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        // Only ASCII ids are ever constructed.
        self.0.to_str().unwrap_or_default()
    }
}

/// Gives `request` its id (in its extensions) and returns it, for the response.
pub fn assign(request: &mut Request) -> HeaderValue {
    let id = request.headers().get(HEADER).filter(|value| is_sane(value.as_bytes())).cloned().unwrap_or_else(fresh);
    request.extensions_mut().insert(RequestId(id.clone()));
    id
}

/// Short, printable and free of anything a log or header parser could trip on.
fn is_sane(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A new id, `req_` and a ULID.
pub fn fresh() -> HeaderValue {
    const PREFIX: &[u8] = b"req_";
    // Formatted on the stack: this runs for nearly every request.
    let mut ulid = [0u8; ulid::ULID_LEN];
    let ulid = ulid::Ulid::new().array_to_str(&mut ulid);
    let mut id = [0u8; PREFIX.len() + ulid::ULID_LEN];
    id[..PREFIX.len()].copy_from_slice(PREFIX);
    id[PREFIX.len()..].copy_from_slice(ulid.as_bytes());
    // A ULID is 26 base32 characters: always a valid header value.
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("req_unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids_and_rejects_odd_ones() {
        assert!(is_sane(b"abc-123_X.y:z"));
        assert!(!is_sane(b""));
        assert!(!is_sane(b"has space"));
        assert!(!is_sane(b"new\nline"));
        assert!(!is_sane(&[b'a'; 129]));
        let id = fresh();
        let id = id.to_str().unwrap();
        assert!(id.starts_with("req_"), "{id}");
        assert!(ulid::Ulid::from_string(&id[4..]).is_ok(), "{id}");
        assert_ne!(fresh(), fresh());
    }
}
