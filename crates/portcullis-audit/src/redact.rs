//! Masking sensitive text in opted-in prompt and completion content before it is recorded.
//!
//! Built-in rules, applied in this order (earlier rules win where matches overlap):
//! 1. `api_key`: Portcullis secrets (`pcl_`/`pct_` + 38 base62 characters) and OpenAI-style `sk-…` keys
//!    (20 or more of `A-Za-z0-9_-`);
//! 2. `aws_key`: AWS access key ids, `AKIA` + 16 of `0-9A-Z`;
//! 3. `bearer`: `Bearer <token>` (any case, token of 16+ characters), the scheme word kept;
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
    /// The text with this rule's matches replaced, or `None` when nothing was.
    fn apply(&self, text: &str) -> Option<String> {
        let mut out: Option<String> = None;
        let mut copied = 0;
        for found in self.pattern.find_iter(text) {
            if !(self.accept)(found.as_str()) {
                continue;
            }
            let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
            out.push_str(&text[copied..found.start()]);
            out.push_str(self.replacement);
            copied = found.end();
        }
        let mut out = out?;
        out.push_str(&text[copied..]);
        Some(out)
    }
}

/// A second look at a match the regex alone cannot judge.
type Check = fn(&str) -> bool;

/// The built-in rules' patterns; compiled once per [`Redactor`], and known to compile (tested).
const BUILT_IN: [(&str, &str, Check); 8] = [
    (r"\bpc[lt]_[0-9A-Za-z]{38}\b", "[REDACTED:api_key]", always),
    (r"\bsk-[A-Za-z0-9_-]{20,}", "[REDACTED:api_key]", always),
    (r"\bAKIA[0-9A-Z]{16}\b", "[REDACTED:aws_key]", always),
    (r"(?i:\bbearer)\s+[A-Za-z0-9._~+/=-]{16,}", "Bearer [REDACTED:bearer]", always),
    (r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b", "[REDACTED:email]", always),
    (r"\+?\b\d(?:[ -]?\d){12,18}\b", "[REDACTED:card]", is_card_number),
    (r"\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){1,6}", "[REDACTED:phone]", is_international_phone),
    (r"(?:\b1[ .-]?)?(?:\(\d{3}\)[ .-]?|\b\d{3}[ .-])\d{3}[ .-]\d{4}\b", "[REDACTED:phone]", always),
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
    fn built_in_rules_compile() {
        assert!(Redactor::new(&[]).is_ok());
    }
}
