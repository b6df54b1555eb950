//! Why a token is refused: one variant per reason, each with the message its holder sees.

use std::fmt;

/// Why a token was not accepted. The message names the reason, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not three base64url segments of JSON, or a header that is not a JWS header.
    Malformed(&'static str),
    /// No configured issuer has this `iss` (or, for an opaque token, none introspects).
    UnknownIssuer,
    /// The header's `alg` is not on the issuer's allow-list (`none` and `HS*` never are).
    AlgorithmNotAllowed(String),
    /// A claim is missing or of the wrong JSON type (`exp` as a string, `aud` as a number).
    InvalidClaim {
        claim: String,
        problem: &'static str,
    },
    Expired,
    NotYetValid,
    WrongAudience,
    /// No key of the issuer's key set has the token's `kid` (after any refresh allowed).
    UnknownKey,
    BadSignature,
    /// A claimed team or tier outside the issuer's allow-list.
    NotAllowed {
        field: &'static str,
        value: String,
    },
    /// Introspection answered `active: false`.
    Inactive,
    /// The issuer's keys or introspection endpoint could not be reached and nothing cached
    /// decides: the token could not be checked (fail closed, but the client may retry).
    Unavailable(&'static str),
}

impl Refusal {
    /// A bounded label for metrics and audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::UnknownIssuer => "unknown_issuer",
            Refusal::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            Refusal::InvalidClaim { .. } => "invalid_claim",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::WrongAudience => "wrong_audience",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::NotAllowed { .. } => "not_allowed",
            Refusal::Inactive => "inactive",
            Refusal::Unavailable(_) => "unavailable",
        }
    }

    /// The issuer could not be consulted: retry later rather than get a new token.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Refusal::Unavailable(_))
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Malformed(what) => write!(f, "the token is malformed: {what}"),
            Refusal::UnknownIssuer => f.write_str("the token's issuer is not trusted"),
            Refusal::AlgorithmNotAllowed(alg) => write!(f, "the token's algorithm {alg} is not allowed"),
            Refusal::InvalidClaim { claim, problem } => write!(f, "the token's {claim:?} claim {problem}"),
            Refusal::Expired => f.write_str("the token has expired"),
            Refusal::NotYetValid => f.write_str("the token is not valid yet"),
            Refusal::WrongAudience => f.write_str("the token is not meant for this gateway (audience)"),
            Refusal::UnknownKey => f.write_str("the token is signed with an unknown key"),
            Refusal::BadSignature => f.write_str("the token's signature is invalid"),
            Refusal::NotAllowed { field, value } => {
                write!(f, "the token claims {field} {value:?}, which its issuer may not grant")
            }
            Refusal::Inactive => f.write_str("the token is not active"),
            Refusal::Unavailable(what) => write!(f, "the token could not be checked: {what}"),
        }
    }
}

impl std::error::Error for Refusal {}
