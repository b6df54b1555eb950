//! Each redaction rule, on text it must mask and on look-alikes it must leave alone.
#![allow(clippy::unwrap_used, reason = "test helpers: a failure is a failed test")]

use std::borrow::Cow;

use portcullis_audit::Redactor;

fn redact(text: &str) -> String {
    Redactor::new(&[]).unwrap().redact(text).into_owned()
}

fn assert_redacts(text: &str, expected: &str) {
    assert_eq!(redact(text), expected, "redacting {text:?}");
}

fn assert_keeps(text: &str) {
    assert_eq!(redact(text), text, "{text:?} should stay");
}

#[test]
fn text_without_sensitive_data_is_borrowed_unchanged() {
    let redactor = Redactor::new(&[]).unwrap();
    let text = "Summarise the 3 main points of chapter 12, version 2.4.1, in 150 words.";
    assert!(matches!(redactor.redact(text), Cow::Borrowed(_)));
}

#[test]
fn emails_are_redacted() {
    assert_redacts("mail alice.smith+tag@example.co.uk now", "mail [REDACTED:email] now");
    assert_redacts("a@b.io,c_d@e-f.org", "[REDACTED:email],[REDACTED:email]");
}

#[test]
fn email_look_alikes_stay() {
    assert_keeps("ping @channel about user@localhost");
    assert_keeps("decorators like @property and a @ b.com");
}

#[test]
fn international_phone_numbers_are_redacted() {
    assert_redacts("call +44 20 7946 0958 today", "call [REDACTED:phone] today");
    assert_redacts("+1 (555) 123-4567", "[REDACTED:phone]");
    assert_redacts("+4915112345678", "[REDACTED:phone]");
    assert_redacts("+33 1 23 45 67 89", "[REDACTED:phone]");
}

#[test]
fn us_phone_numbers_are_redacted() {
    assert_redacts("(555) 123-4567", "[REDACTED:phone]");
    assert_redacts("tel 555-123-4567.", "tel [REDACTED:phone].");
    assert_redacts("555.123.4567", "[REDACTED:phone]");
    assert_redacts("1-555-123-4567", "[REDACTED:phone]");
}

#[test]
fn phone_look_alikes_stay() {
    assert_keeps("version 1.2.3, +5 points, 2024-01-15, 10:30");
    assert_keeps("order 5551234567 shipped"); // a bare 10-digit run is an id as often as a phone
    assert_keeps("score +12 34");
}

#[test]
fn card_numbers_that_pass_luhn_are_redacted() {
    assert_redacts("card 4111111111111111 exp", "card [REDACTED:card] exp");
    assert_redacts("4111 1111 1111 1111", "[REDACTED:card]");
    assert_redacts("5500-0000-0000-0004", "[REDACTED:card]");
    assert_redacts("amex 3782 822463 10005", "amex [REDACTED:card]");
    assert_redacts("6011000990139424", "[REDACTED:card]");
}

#[test]
fn digit_runs_that_fail_luhn_or_length_stay() {
    assert_keeps("ref 1234567812345678 ok"); // 16 digits, fails Luhn
    assert_keeps("1234 5678 9012 3456");
    assert_keeps("4111111111111112");
    assert_keeps("tracking 12345678901"); // too short for a card
    assert_keeps("ids 41111111111111111111111"); // too long for a card
}

#[test]
fn portcullis_keys_and_tokens_are_redacted() {
    let key = format!("pcl_{}", "aB3".repeat(12) + "xY");
    let token = format!("pct_{}", "Zz9".repeat(12) + "Q1");
    assert_redacts(&format!("my key is {key}."), "my key is [REDACTED:api_key].");
    assert_redacts(&format!("token: {token}"), "token: [REDACTED:api_key]");
}

#[test]
fn portcullis_key_look_alikes_stay() {
    assert_keeps("pcl_short and pcl_ prefix, pcx_aB3aB3aB3aB3aB3aB3aB3aB3aB3aB3aB3aB3xY");
}

#[test]
fn openai_style_keys_are_redacted() {
    assert_redacts("OPENAI_API_KEY=sk-proj-abcDEF123_456-ghiJKL789", "OPENAI_API_KEY=[REDACTED:api_key]");
    assert_redacts("sk-abcdefghijklmnopqrstuvwx", "[REDACTED:api_key]");
}

#[test]
fn short_sk_words_stay() {
    assert_keeps("sk-learn is a library; task-sk-1 and desk-lamp");
}

#[test]
fn bearer_tokens_are_redacted() {
    assert_redacts(
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-x",
        "Authorization: Bearer [REDACTED:bearer]",
    );
    assert_redacts("bearer abcdefghijklmnopqrstu", "Bearer [REDACTED:bearer]");
}

#[test]
fn the_word_bearer_alone_stays() {
    assert_keeps("the bearer of bad news; ring-bearer duties");
}

#[test]
fn aws_access_key_ids_are_redacted() {
    assert_redacts("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "aws_access_key_id = [REDACTED:aws_key]");
}

#[test]
fn aws_look_alikes_stay() {
    assert_keeps("AKIA alone, AKIAshort, akiaiosfodnn7example");
}

#[test]
fn custom_patterns_are_redacted_after_the_built_in_rules() {
    let redactor = Redactor::new(&[r"\bproject-[a-z]+\b".to_string(), r"(?i)codename \w+".to_string()]).unwrap();
    assert_eq!(
        redactor.redact("project-falcon, Codename Bluebird, bob@example.com"),
        "[REDACTED:custom], [REDACTED:custom], [REDACTED:email]"
    );
}

#[test]
fn an_invalid_custom_pattern_is_an_error() {
    assert!(Redactor::new(&["(unclosed".to_string()]).is_err());
}

#[test]
fn several_kinds_in_one_text_are_all_redacted() {
    assert_redacts(
        "From bob@example.com (+1 555 123 4567), card 4111-1111-1111-1111, key AKIAIOSFODNN7EXAMPLE.",
        "From [REDACTED:email] ([REDACTED:phone]), card [REDACTED:card], key [REDACTED:aws_key].",
    );
}
