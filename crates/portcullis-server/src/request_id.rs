//! `x-request-id` on every response: the client's own when it is sane and carries nothing that
//! looks like a secret (it is logged and audited), else a fresh one.

use axum::extract::Request;
use http::HeaderValue;
use portcullis_audit::Redactor;

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
pub fn assign(request: &mut Request, redactor: &Redactor) -> HeaderValue {
    let id = request.headers().get(HEADER).filter(|value| acceptable(value, redactor)).cloned().unwrap_or_else(fresh);
    request.extensions_mut().insert(RequestId(id.clone()));
    id
}

/// An id someone else chose (a gateway's), kept when it is acceptable.
pub fn vetted(id: HeaderValue, redactor: &Redactor) -> Option<RequestId> {
    acceptable(&id, redactor).then_some(RequestId(id))
}

/// Whether an id someone else chose may be kept: sane, and not shaped like a secret.
fn acceptable(id: &HeaderValue, redactor: &Redactor) -> bool {
    is_sane(id.as_bytes()) && !looks_secret(id, redactor)
}

/// Whether the redaction rules would mask part of `id` as a credential (a key, a token).
fn looks_secret(id: &HeaderValue, redactor: &Redactor) -> bool {
    id.to_str().is_ok_and(|id| matches!(redactor.redact_credentials(id), std::borrow::Cow::Owned(_)))
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

    #[test]
    fn an_id_shaped_like_a_secret_is_replaced() {
        let redactor = Redactor::new(&[]).unwrap();
        let assigned = |id: &str| {
            let mut request = Request::builder().header(HEADER, id).body(axum::body::Body::empty()).unwrap();
            assign(&mut request, &redactor)
        };
        assert_eq!(assigned("trace-42:a.b"), "trace-42:a.b");
        for secret in
            ["pcl_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789Ab", "sk-proj-abcdefghijklmnopqrstuv", "AKIAABCDEFGHIJKLMNOP"]
        {
            let id = assigned(secret);
            assert!(id.to_str().unwrap().starts_with("req_"), "{secret} was kept");
        }
    }
}
