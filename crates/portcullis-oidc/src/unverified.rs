//! What can be read from a JWT before its signature is checked, and only to decide whether
//! checking it is worth anything: its shape, header, issuer, audience and times. Nothing read
//! here is trusted; it only lets a doomed token be refused before any key is looked up or
//! fetched.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::refusal::Refusal;

/// The most bytes of a token looked at; identity providers' tokens are a few KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A token that looks like a JWS in compact form.
#[derive(Debug)]
pub struct Unverified {
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
}

/// Three non-empty base64url segments: a JWT rather than an opaque token.
pub fn is_jwt_shaped(token: &str) -> bool {
    let mut segments = token.split('.');
    let shaped =
        segments.by_ref().take(3).filter(|segment| !segment.is_empty() && segment.bytes().all(is_base64url)).count()
            == 3;
    shaped && segments.next().is_none()
}

fn is_base64url(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

pub fn peek(token: &str) -> Result<Unverified, Refusal> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::Malformed("too long"));
    }
    if !is_jwt_shaped(token) {
        return Err(Refusal::Malformed("not three base64url segments"));
    }
    let mut segments = token.split('.');
    let header = json_object(segments.next(), "header is not base64url", "header is not a JSON object")?;
    let claims = json_object(segments.next(), "payload is not base64url", "payload is not a JSON object")?;
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(Refusal::Malformed("header without a string alg")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(Refusal::Malformed("header kid is not a string")),
    };
    Ok(Unverified { alg, kid, claims })
}

fn json_object(
    segment: Option<&str>,
    not_base64: &'static str,
    not_object: &'static str,
) -> Result<Map<String, Value>, Refusal> {
    let bytes = URL_SAFE_NO_PAD.decode(segment.unwrap_or_default()).map_err(|_| Refusal::Malformed(not_base64))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(Refusal::Malformed(not_object)),
    }
}

/// The registered claims, type-checked: a claim of the wrong JSON type refuses the token.
#[derive(Debug)]
pub struct Registered<'a> {
    pub exp: i64,
    pub nbf: Option<i64>,
    pub aud: Vec<&'a str>,
}

pub fn registered(claims: &Map<String, Value>) -> Result<Registered<'_>, Refusal> {
    required_string(claims, "iss")?;
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| missing("exp"))?;
    let nbf = numeric_date(claims, "nbf")?;
    let aud = match claims.get("aud") {
        None => return Err(missing("aud")),
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many
            .iter()
            .map(|value| value.as_str().ok_or_else(|| wrong_type("aud", "must be a string or an array of strings")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(wrong_type("aud", "must be a string or an array of strings")),
    };
    for optional in ["sub", "jti"] {
        if claims.get(optional).is_some_and(|value| !value.is_string()) {
            return Err(wrong_type(optional, "must be a string"));
        }
    }
    Ok(Registered { exp, nbf, aud })
}

/// The token's `iss`, only to pick the issuer whose rules then apply.
pub fn issuer(claims: &Map<String, Value>) -> Result<&str, Refusal> {
    required_string(claims, "iss")
}

fn required_string<'a>(claims: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, Refusal> {
    match claims.get(name) {
        None => Err(missing(name)),
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(wrong_type(name, "must be a string")),
    }
}

/// A NumericDate: a JSON number of seconds (fractions are cut, as RFC 7519 allows them).
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, Refusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(number)) => number
            .as_i64()
            .or_else(|| number.as_f64().filter(|seconds| seconds.is_finite() && seconds.abs() < 1e15).map(|s| s as i64))
            .map(Some)
            .ok_or_else(|| wrong_type(name, "is out of range")),
        Some(_) => Err(wrong_type(name, "must be a number (seconds since the epoch)")),
    }
}

fn missing(claim: &'static str) -> Refusal {
    Refusal::InvalidClaim { claim: claim.into(), problem: "is required" }
}

fn wrong_type(claim: &'static str, problem: &'static str) -> Refusal {
    Refusal::InvalidClaim { claim: claim.into(), problem }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(value: &str) -> String {
        URL_SAFE_NO_PAD.encode(value)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", encode(header), encode(payload))
    }

    #[test]
    fn only_three_base64url_segments_are_jwt_shaped() {
        assert!(is_jwt_shaped("a.b.c"));
        assert!(!is_jwt_shaped("a.b"));
        assert!(!is_jwt_shaped("a.b.c.d"));
        assert!(!is_jwt_shaped("a..c"));
        assert!(!is_jwt_shaped("a.b+.c"));
        assert!(!is_jwt_shaped("opaque-token-value"));
    }

    #[test]
    fn header_and_payload_must_be_json_objects() {
        assert_eq!(peek(&token("[]", "{}")).unwrap_err(), Refusal::Malformed("header is not a JSON object"));
        assert_eq!(
            peek(&token(r#"{"alg":"ES256"}"#, "1")).unwrap_err(),
            Refusal::Malformed("payload is not a JSON object")
        );
        assert_eq!(peek(&token(r#"{"alg":1}"#, "{}")).unwrap_err(), Refusal::Malformed("header without a string alg"));
        let peeked = peek(&token(r#"{"alg":"ES256","kid":"k"}"#, r#"{"iss":"i"}"#)).unwrap();
        assert_eq!((peeked.alg.as_str(), peeked.kid.as_deref()), ("ES256", Some("k")));
    }

    #[test]
    fn registered_claims_of_the_wrong_type_are_refused() {
        let claims = |json: &str| serde_json::from_str::<Map<String, Value>>(json).unwrap();
        let string_exp = claims(r#"{"iss":"i","aud":"a","exp":"9999999999"}"#);
        assert_eq!(registered(&string_exp).unwrap_err().code(), "invalid_claim");
        let numeric_aud = claims(r#"{"iss":"i","aud":7,"exp":1}"#);
        assert!(registered(&numeric_aud).is_err());
        let array_iss = claims(r#"{"iss":["i"],"aud":"a","exp":1}"#);
        assert!(registered(&array_iss).is_err());
        let no_exp = claims(r#"{"iss":"i","aud":"a"}"#);
        assert!(registered(&no_exp).is_err());
        let fine = claims(r#"{"iss":"i","aud":["a","b"],"exp":1.5,"nbf":0}"#);
        let fine = registered(&fine).unwrap();
        assert_eq!((fine.exp, fine.nbf, fine.aud), (1, Some(0), vec!["a", "b"]));
    }
}
