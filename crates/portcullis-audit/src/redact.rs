//! Masking sensitive text in opted-in prompt and completion content before it is recorded.
//!
//! Built-in rules, applied in this order (earlier rules win where matches overlap):
//! 1. `api_key`: Portcullis secrets (`pcl_`/`pct_` + 38 base62 characters) and OpenAI-style `sk-…` keys
//!    (20 or more of `A-Za-z0-9_-`, not right after an ASCII letter or digit: `risk-…` is a word);
//! 2. `aws_key`: AWS access key ids, `AKIA` + 16 of `0-9A-Z`;
//! 3. `bearer` / `basic`: the credential of an `Authorization` header (`Bearer` or `Basic`, any
//!    case, any length), the scheme word kept; elsewhere `Bearer <token>` when the token has 16 or
//!    more characters or any that is not a letter (`the bearer of` is prose), and `Basic <base64>`
//!    when it decodes to printable `user:password`;
//! 4. `email`: `local@domain.tld`;
//! 5. `card`: 13–19 digits, optionally grouped by single spaces or dashes, that pass the Luhn check (a
//!    number that fails it, such as most order or tracking numbers, stays; one after a `+` is a phone);
//! 6. `phone`: `+` and a country code followed by 8–15 digits in all, grouped by spaces, dots, dashes or
//!    a parenthesised area code; or the US/NANP shape `(555) 123-4567` / `555-123-4567` / `555.123.4567` /
//!    `555 123 4567`, optionally after `1`. A bare run of 10 digits is not taken for a phone number: it
//!    is as likely an id.
//!
//! Then each custom regex from config, as `custom`. A match becomes `[REDACTED:<rule>]`.
//! Rules are deliberately shape-based: they over-redact rather than let a secret through.
//!
//! A secret is bounded by its own alphabet, not by "word characters": Unicode's `\b` sees no
//! boundary between a key and a following `_`, `é` or `的`, so a key glued to text in any script
//! slipped through. Keys therefore have no boundary assertions at all (their prefixes are
//! distinctive), and the other rules use ASCII boundaries (`(?-u:\b)`), for which a letter of
//! another script is a boundary. Where a rule needs context that is not part of the secret (the
//! character before `sk-`, the `Authorization:` before a scheme) only its `secret` group is replaced.

use std::borrow::Cow;

use regex::Regex;

#[derive(Debug, Clone)]
pub struct Redactor {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: Regex,
    replacement: &'static str,
    accept: Check,
}

impl Rule {
    /// The text with this rule's matches (or their `secret` group) replaced, or `None` when
    /// nothing was.
    fn apply(&self, text: &str) -> Option<String> {
        let mut out: Option<String> = None;
        let mut copied = 0;
        let mut replace = |found: regex::Match<'_>| {
            if !(self.accept)(found.as_str()) {
                return;
            }
            let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
            out.push_str(&text[copied..found.start()]);
            out.push_str(self.replacement);
            copied = found.end();
        };
        if self.pattern.captures_len() > 1 {
            // Context matched around the secret stays; `find_iter` is faster where there is none.
            for captures in self.pattern.captures_iter(text) {
                if let Some(found) = captures.name("secret") {
                    replace(found);
                }
            }
        } else {
            self.pattern.find_iter(text).for_each(&mut replace);
        }
        let mut out = out?;
        out.push_str(&text[copied..]);
        Some(out)
    }
}

/// A second look at a match the regex alone cannot judge.
type Check = fn(&str) -> bool;

/// The built-in rules' patterns; compiled once per [`Redactor`], and known to compile (tested).
/// `(?:^|[^A-Za-z0-9])` before a group stands for "not right after an ASCII letter or digit"
/// (the regex crate has no look-behind); only the `secret` group is then replaced. Bearer tokens
/// are RFC 6750 `b64token`s.
const BUILT_IN: [(&str, &str, Check); 11] = [
    (r"pc[lt]_[0-9A-Za-z]{38}", "[REDACTED:api_key]", always),
    (r"(?:^|[^A-Za-z0-9])(?P<secret>sk-[A-Za-z0-9_-]{20,})", "[REDACTED:api_key]", always),
    (r"AKIA[0-9A-Z]{16}", "[REDACTED:aws_key]", always),
    (
        r#"(?i:authorization)\s*[:=]\s*["']?\s*(?P<secret>(?i:bearer)\s+[A-Za-z0-9._~+/=-]+)"#,
        "Bearer [REDACTED:bearer]",
        always,
    ),
    (
        r#"(?i:authorization)\s*[:=]\s*["']?\s*(?P<secret>(?i:basic)\s+[A-Za-z0-9+/=]+)"#,
        "Basic [REDACTED:basic]",
        always,
    ),
    (r"(?:^|[^A-Za-z0-9])(?P<secret>(?i:bearer)\s+[A-Za-z0-9._~+/=-]+)", "Bearer [REDACTED:bearer]", is_bearer_token),
    (r"(?:^|[^A-Za-z0-9])(?P<secret>(?i:basic)\s+[A-Za-z0-9+/]+={0,2})", "Basic [REDACTED:basic]", is_basic_credential),
    (r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}", "[REDACTED:email]", always),
    (r"(?:^|[^0-9A-Za-z])(?P<secret>\+?\d(?:[ -]?\d){12,18})(?:(?-u:\b)|_)", "[REDACTED:card]", is_card_number),
    (r"\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){1,6}", "[REDACTED:phone]", is_international_phone),
    (r"(?:(?-u:\b)1[ .-]?)?(?:\(\d{3}\)[ .-]?|(?-u:\b)\d{3}[ .-])\d{3}[ .-]\d{4}(?-u:\b)", "[REDACTED:phone]", always),
];

impl Redactor {
    /// The built-in rules followed by `custom` regexes (from config), each replaced by `[REDACTED:custom]`.
    pub fn new(custom: &[String]) -> Result<Redactor, regex::Error> {
        let mut rules = Vec::with_capacity(BUILT_IN.len() + custom.len());
        for (pattern, replacement, accept) in BUILT_IN {
            rules.push(Rule { pattern: Regex::new(pattern)?, replacement, accept });
        }
        for pattern in custom {
            rules.push(Rule { pattern: Regex::new(pattern)?, replacement: "[REDACTED:custom]", accept: always });
        }
        Ok(Redactor { rules })
    }

    /// `text` with every match replaced; borrowed when nothing matched.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for rule in &self.rules {
            if let Some(changed) = rule.apply(&out) {
                out = Cow::Owned(changed);
            }
        }
        out
    }

    /// [`Redactor::redact`] for short text a client chose that is logged with every request (a
    /// user agent, a request id): the rules run only when the text could hold a credential — a
    /// run of [`CREDENTIAL_RUN`] characters of a key's or token's alphabet, or the word `bearer`
    /// or `basic` — so that ordinary text costs one pass over its bytes instead of every rule.
    pub fn redact_credentials<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if may_hold_credential(text) { self.redact(text) } else { Cow::Borrowed(text) }
    }
}

/// The shortest run of token characters a credential rule matches (`AKIA` + 16; keys, `sk-…`
/// and long bearer tokens are longer).
pub const CREDENTIAL_RUN: usize = 16;

fn may_hold_credential(text: &str) -> bool {
    let bytes = text.as_bytes();
    // Most short text is shorter than a credential: nothing to look for.
    if bytes.len() < CREDENTIAL_RUN.min(b"basic ".len()) {
        return false;
    }
    let mut run = 0;
    for &byte in bytes {
        let token = byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.' | b'~' | b'+' | b'/' | b'=');
        run = if token { run + 1 } else { 0 };
        if run >= CREDENTIAL_RUN {
            return true;
        }
    }
    let words = |word: &[u8]| bytes.windows(word.len()).any(|window| window.eq_ignore_ascii_case(word));
    words(b"bearer") || words(b"basic")
}

fn always(_: &str) -> bool {
    true
}

fn digits(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.chars().filter_map(|c| c.to_digit(10))
}

/// The pattern takes a leading `+` only to refuse it here: `+49…` is a phone number even when its
/// digits happen to pass Luhn (the regex crate has no look-behind).
fn is_card_number(text: &str) -> bool {
    if text.starts_with('+') {
        return false;
    }
    let count = digits(text).count();
    (13..=19).contains(&count) && luhn(text)
}

/// The Luhn checksum: from the right, double every second digit (minus 9 above 9); the sum ends in 0.
fn luhn(text: &str) -> bool {
    let digits: Vec<u32> = digits(text).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(at, &digit)| {
            if at % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `bearer <token>` outside an `Authorization` header: a token of 16 or more characters, or one
/// with a character that is not a letter (`Bearer abc123`); `the bearer of bad news` is prose.
fn is_bearer_token(text: &str) -> bool {
    let token = text.split_whitespace().nth(1).unwrap_or_default();
    token.len() >= 16 || !token.chars().all(|c| c.is_ascii_alphabetic())
}

/// `basic <base64>` outside an `Authorization` header: only when it decodes to printable
/// `user:password` (RFC 7617), so that `basic idea` stays.
fn is_basic_credential(text: &str) -> bool {
    let encoded = text.split_whitespace().nth(1).unwrap_or_default();
    base64_decode(encoded).is_some_and(|decoded| {
        decoded.contains(&b':') && std::str::from_utf8(&decoded).is_ok_and(|text| !text.chars().any(char::is_control))
    })
}

/// Standard base64 with optional padding; `None` for a length no encoder produces.
fn base64_decode(encoded: &str) -> Option<Vec<u8>> {
    let digits = encoded.trim_end_matches('=').as_bytes();
    if digits.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let (mut bits, mut count) = (0u32, 0u32);
    for &digit in digits {
        let value = match digit {
            b'A'..=b'Z' => digit - b'A',
            b'a'..=b'z' => digit - b'a' + 26,
            b'0'..=b'9' => digit - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push(((bits >> count) & 0xff) as u8);
        }
    }
    Some(out)
}

/// E.164 allows at most 15 digits; fewer than 8 is more likely a version or a count than a phone.
fn is_international_phone(text: &str) -> bool {
    (8..=15).contains(&digits(text).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_rejects_one_digit_off() {
        assert!(luhn("4111111111111111"));
        assert!(luhn("5500 0000 0000 0004"));
        assert!(luhn("378282246310005"));
        assert!(!luhn("4111111111111112"));
        assert!(!luhn("1234567812345678"));
    }

    #[test]
    fn base64_decodes_what_basic_credentials_carry() {
        assert_eq!(base64_decode("dXNlcjpwYXNz").as_deref(), Some(&b"user:pass"[..]));
        assert_eq!(base64_decode("YTpi").as_deref(), Some(&b"a:b"[..]));
        assert_eq!(base64_decode("dXNlcjpwYXNzd29yZA==").as_deref(), Some(&b"user:password"[..]));
        assert_eq!(base64_decode("abcde"), None);
        assert_eq!(base64_decode("a-b_"), None);
    }

    #[test]
    fn built_in_rules_compile() {
        assert!(Redactor::new(&[]).is_ok());
    }
}
