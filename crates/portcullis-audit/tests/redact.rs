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
    // Where a custom pattern overlaps a built-in rule's match, the built-in rule has run first:
    // `user \w+` would take `user bob` and leave `@example.com` behind.
    let overlapping = Redactor::new(&[r"user \w+".to_string()]).unwrap();
    assert_eq!(
        overlapping.redact("user bob@example.com and user carol"),
        "user [REDACTED:email] and [REDACTED:custom]"
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

/// A secret glued to word characters of any script (`_`, accented letters, CJK, Cyrillic) is
/// still a secret: only its own alphabet bounds it.
#[test]
fn secrets_adjacent_to_word_characters_of_any_script_are_redacted() {
    let pcl = format!("pcl_{}", "aB3".repeat(12) + "xY");
    let pct = format!("pct_{}", "Zz9".repeat(12) + "Q1");
    let secrets = [
        (pcl.as_str(), "[REDACTED:api_key]"),
        (pct.as_str(), "[REDACTED:api_key]"),
        ("sk-proj-abcDEF123_456-ghiJKL789", "[REDACTED:api_key]"),
        ("AKIAIOSFODNN7EXAMPLE", "[REDACTED:aws_key]"),
        ("4111111111111111", "[REDACTED:card]"),
        ("bob@example.com", "[REDACTED:email]"),
    ];
    let sides = [
        ("", "_"),
        ("", "_suffix"),
        ("", "é"),
        ("", "的"),
        ("", "ключ"),
        ("_", ""),
        ("键", ""),
        ("é", ""),
        ("ключ", ""),
        ("密钥", "。"),
        ("x_", "_y"),
    ];
    for (secret, mark) in secrets {
        for (before, after) in sides {
            if mark == "[REDACTED:email]" && before.ends_with('_') {
                continue; // `_bob@example.com` is an address of its own
            }
            let text = format!("{before}{secret}{after}");
            let redacted = redact(&text);
            assert!(!redacted.contains(secret), "{text:?} became {redacted:?}");
            assert!(redacted.starts_with(before) && redacted.contains(mark), "{text:?} became {redacted:?}");
        }
    }
    assert_redacts("卡号4111111111111111。", "卡号[REDACTED:card]。");
    assert_redacts(&format!("密钥{pcl}_old"), "密钥[REDACTED:api_key]_old");
    assert_redacts("ключ AKIAIOSFODNN7EXAMPLEé", "ключ [REDACTED:aws_key]é");
}

#[test]
fn bearer_and_basic_credentials_of_any_plausible_length_are_redacted() {
    assert_redacts("Authorization: Bearer abc123", "Authorization: Bearer [REDACTED:bearer]");
    assert_redacts("-H 'Authorization: Bearer secret'", "-H 'Authorization: Bearer [REDACTED:bearer]'");
    assert_redacts("authorization=\"bearer t\"", "authorization=\"Bearer [REDACTED:bearer]\"");
    assert_redacts("use bearer tok_42 here", "use Bearer [REDACTED:bearer] here");
    assert_redacts("Bearer x-1", "Bearer [REDACTED:bearer]");
    assert_redacts("_Bearer abc.def", "_Bearer [REDACTED:bearer]");
    assert_redacts("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic [REDACTED:basic]");
    assert_redacts("-H \"Authorization: basic YTpi\"", "-H \"Authorization: Basic [REDACTED:basic]\"");
    assert_redacts("send basic dXNlcjpwYXNzd29yZA== now", "send Basic [REDACTED:basic] now");
}

#[test]
fn prose_around_bearer_basic_and_key_prefixes_stays() {
    assert_keeps("The Bearer of this letter; the bearer bond market; Bearer tokens are short-lived");
    assert_keeps("a basic idea, Basic Income, basic training, basic auth is weak, BASIC programs");
    assert_keeps("risk-assessment-and-mitigation-plans and task-management-for-teams-of-ten");
    assert_keeps("Authorization is required; see authorization: roles");
    assert_keeps("the pcl_ and pct_ prefixes, AKIA ids, sk- keys");
}

#[test]
fn credentials_in_short_client_text_are_found_without_running_every_rule() {
    let redactor = Redactor::new(&[]).expect("built-in rules compile");
    let key = format!("pcl_{}", "a1B2c3D4e5".repeat(4).get(..38).expect("38 characters"));
    for text in [
        format!("my-app/1.0 ({key})"),
        "curl/8.0 AKIAABCDEFGHIJKLMNOP".to_string(),
        "tool/2 sk-abcdefghijklmnopqrstuvwx".to_string(),
        "Authorization: Bearer abc".to_string(),
    ] {
        assert_ne!(redactor.redact_credentials(&text), text, "{text}");
        assert_eq!(redactor.redact_credentials(&text), redactor.redact(&text), "{text}");
    }
    for plain in ["oha/1.4.5", "OpenAI/Python 1.54.0", "Mozilla/5.0 (X11; Linux x86_64)", "req-42"] {
        assert!(matches!(redactor.redact_credentials(plain), std::borrow::Cow::Borrowed(_)), "{plain}");
    }
}
