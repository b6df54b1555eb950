//! The shape of a request body before anything of it is trusted or forwarded: valid UTF-8, a
//! JSON object, no member twice, no lone UTF-16 surrogate in an escape, no number beyond the
//! range of a double (parsers disagree on what to make of `1e400`), and no nesting deeper
//! than `server.max_json_depth` — model servers parse recursively, and a bomb of nested arrays
//! that reaches one can crash it for everyone. One pass, no recursion, no allocation but the
//! list of top-level members (whose positions let the body be edited without re-serialising).
//!
//! It checks structure, not every rule of JSON: the envelope parse that follows (`serde_json`)
//! refuses what is not JSON at all.

use std::ops::Range;

/// One top-level member: where its key and value lie in the body, and its key unescaped when it
/// has escapes (most keys have none, and are read where they lie: see [`Member::key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The key with its quotes.
    pub key_span: Range<usize>,
    pub value: Range<usize>,
    unescaped: Option<Box<str>>,
}

impl Member {
    /// The member's key as bytes (for comparing without checking UTF-8 again); `body` is the
    /// body it was found in.
    pub fn raw_key<'a>(&'a self, body: &'a [u8]) -> &'a [u8] {
        match &self.unescaped {
            Some(key) => key.as_bytes(),
            None => &body[self.key_span.start + 1..self.key_span.end - 1],
        }
    }

    /// The member's key; `body` is the body it was found in.
    pub fn key<'a>(&'a self, body: &'a [u8]) -> &'a str {
        match &self.unescaped {
            Some(key) => key,
            // Checked UTF-8 without escapes: the bytes between the quotes are the key.
            None => std::str::from_utf8(&body[self.key_span.start + 1..self.key_span.end - 1]).unwrap_or_default(),
        }
    }
}

/// Members up to this many are checked for duplicates pairwise; more go through a hash set (a
/// body of a hundred thousand members must not cost billions of comparisons).
const PAIRWISE_DUPLICATE_CHECK: usize = 16;

/// Why a body was refused; `member` names the top-level member the fault is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    InvalidUtf8 { member: Option<String> },
    NotAnObject,
    Malformed { member: Option<String> },
    TooDeep { member: String, limit: usize },
    LoneSurrogate { member: String },
    NumberOutOfRange { member: String },
    Duplicate { member: String },
}

/// The top-level members of `body`, in order.
pub fn members(body: &[u8], max_depth: usize) -> Result<Vec<Member>, ShapeError> {
    if let Err(error) = std::str::from_utf8(body) {
        return Err(ShapeError::InvalidUtf8 { member: member_at(body, error.valid_up_to()) });
    }
    let mut scanner = Scanner { body, at: 0 };
    scanner.skip_space();
    if !scanner.eat(b'{') {
        return Err(ShapeError::NotAnObject);
    }
    let mut members: Vec<Member> = Vec::with_capacity(8);
    let last_key = |members: &[Member]| members.last().map(|member| member.key(body).to_string());
    scanner.skip_space();
    if scanner.eat(b'}') {
        return scanner.end(members);
    }
    loop {
        scanner.skip_space();
        let key_start = scanner.at;
        if !scanner.eat(b'"') {
            return Err(ShapeError::Malformed { member: last_key(&members) });
        }
        let escaped = scanner.string().map_err(|_| ShapeError::Malformed { member: None })?;
        let key_span = key_start..scanner.at;
        let unescaped = match escaped {
            false => None,
            true => Some(
                serde_json::from_slice::<String>(&body[key_span.clone()])
                    .map_err(|_| ShapeError::Malformed { member: None })?
                    .into_boxed_str(),
            ),
        };
        let member = Member { key_span, value: 0..0, unescaped };
        let key = || member.key(body).to_string();
        scanner.skip_space();
        if !scanner.eat(b':') {
            return Err(ShapeError::Malformed { member: Some(key()) });
        }
        scanner.skip_space();
        let value_start = scanner.at;
        match scanner.value(max_depth) {
            Ok(()) => {}
            Err(Fault::TooDeep) => return Err(ShapeError::TooDeep { member: key(), limit: max_depth }),
            Err(Fault::LoneSurrogate) => return Err(ShapeError::LoneSurrogate { member: key() }),
            Err(Fault::NumberOutOfRange) => return Err(ShapeError::NumberOutOfRange { member: key() }),
            Err(Fault::Malformed) => return Err(ShapeError::Malformed { member: Some(key()) }),
        }
        let value = value_start..trim_end(body, value_start, scanner.at);
        if value.is_empty() {
            return Err(ShapeError::Malformed { member: Some(key()) });
        }
        members.push(Member { value, ..member });
        scanner.skip_space();
        if scanner.eat(b',') {
            continue;
        }
        if scanner.eat(b'}') {
            return scanner.end(members);
        }
        return Err(ShapeError::Malformed { member: last_key(&members) });
    }
}

/// A key that two members share.
fn duplicate(body: &[u8], members: &[Member]) -> Option<String> {
    let mut keys = members.iter().map(|member| member.key(body));
    if members.len() <= PAIRWISE_DUPLICATE_CHECK {
        let keys: Vec<&str> = keys.collect();
        return keys.iter().enumerate().find(|(at, key)| keys[..*at].contains(key)).map(|(_, key)| key.to_string());
    }
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    keys.find(|key| !seen.insert(*key)).map(str::to_string)
}

enum Fault {
    TooDeep,
    LoneSurrogate,
    NumberOutOfRange,
    Malformed,
}

struct Scanner<'a> {
    body: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn skip_space(&mut self) {
        while self.body.get(self.at).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.body.get(self.at) == Some(&byte);
        self.at += usize::from(found);
        found
    }

    fn end(mut self, members: Vec<Member>) -> Result<Vec<Member>, ShapeError> {
        self.skip_space();
        if self.at != self.body.len() {
            return Err(ShapeError::Malformed { member: None });
        }
        match duplicate(self.body, &members) {
            Some(member) => Err(ShapeError::Duplicate { member }),
            None => Ok(members),
        }
    }

    /// Past one JSON value — validated by JSON's grammar — and the whitespace after it. Arrays
    /// and objects inside count towards `max_depth` (the top-level object is depth 1).
    fn value(&mut self, max_depth: usize) -> Result<(), Fault> {
        // Open containers below the member's own value: `true` for an object, `false` for an
        // array. Only their kinds are kept, one bit each.
        let mut open = Containers::default();
        loop {
            // A value.
            self.skip_space();
            let &byte = self.body.get(self.at).ok_or(Fault::Malformed)?;
            match byte {
                b'{' | b'[' => {
                    self.at += 1;
                    if open.depth() + 2 > max_depth {
                        return Err(Fault::TooDeep);
                    }
                    let object = byte == b'{';
                    open.push(object);
                    self.skip_space();
                    let close = if object { b'}' } else { b']' };
                    if self.eat(close) {
                        open.pop();
                    } else {
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    self.at += 1;
                    self.string()?;
                }
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return Err(Fault::Malformed),
            }
            // After a value: the next element, the end of its container, or the end of the member.
            loop {
                self.skip_space();
                let Some(object) = open.top() else { return Ok(()) };
                if self.eat(b',') {
                    if object {
                        self.key()?;
                    }
                    break;
                }
                if self.eat(if object { b'}' } else { b']' }) {
                    open.pop();
                    continue;
                }
                return Err(Fault::Malformed);
            }
        }
    }

    /// A key and its colon, inside an object.
    fn key(&mut self) -> Result<(), Fault> {
        self.skip_space();
        if !self.eat(b'"') {
            return Err(Fault::Malformed);
        }
        self.string()?;
        self.skip_space();
        if self.eat(b':') { Ok(()) } else { Err(Fault::Malformed) }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Fault> {
        if self.body[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(Fault::Malformed)
        }
    }

    /// Past a number: JSON's grammar, and finite as a double.
    fn number(&mut self) -> Result<(), Fault> {
        let start = self.at;
        let digits = |scanner: &mut Self| {
            let from = scanner.at;
            while scanner.body.get(scanner.at).is_some_and(u8::is_ascii_digit) {
                scanner.at += 1;
            }
            scanner.at - from
        };
        self.eat(b'-');
        match self.body.get(self.at) {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(Fault::Malformed),
        }
        if self.eat(b'.') && digits(self) == 0 {
            return Err(Fault::Malformed);
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if digits(self) == 0 {
                return Err(Fault::Malformed);
            }
        }
        let text = std::str::from_utf8(&self.body[start..self.at]).map_err(|_| Fault::Malformed)?;
        match text.parse::<f64>() {
            Ok(number) if number.is_finite() => Ok(()),
            Ok(_) => Err(Fault::NumberOutOfRange),
            Err(_) => Err(Fault::Malformed),
        }
    }

    /// Past a string whose opening quote was just read: no raw control character, only JSON's
    /// escapes, and `\u` escapes that pair their surrogates. Returns whether it had an escape.
    fn string(&mut self) -> Result<bool, Fault> {
        // A high surrogate seen last, waiting for its low half.
        let mut pending_high = false;
        let mut escaped_any = false;
        loop {
            let rest = &self.body[self.at..];
            let Some(offset) = memchr::memchr2(b'"', b'\\', rest) else { return Err(Fault::Malformed) };
            if rest[..offset].iter().any(|&byte| byte < 0x20) {
                return Err(Fault::Malformed);
            }
            if pending_high && offset > 0 {
                return Err(Fault::LoneSurrogate);
            }
            self.at += offset;
            if self.body[self.at] == b'"' {
                if pending_high {
                    return Err(Fault::LoneSurrogate);
                }
                self.at += 1;
                return Ok(escaped_any);
            }
            // A backslash and what it escapes.
            escaped_any = true;
            let escaped = *self.body.get(self.at + 1).ok_or(Fault::Malformed)?;
            if escaped != b'u' {
                if !matches!(escaped, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') {
                    return Err(Fault::Malformed);
                }
                if pending_high {
                    return Err(Fault::LoneSurrogate);
                }
                self.at += 2;
                continue;
            }
            let hex = self.body.get(self.at + 2..self.at + 6).ok_or(Fault::Malformed)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(Fault::Malformed);
            }
            let unit = std::str::from_utf8(hex).ok().and_then(|hex| u16::from_str_radix(hex, 16).ok());
            let unit = unit.ok_or(Fault::Malformed)?;
            match (pending_high, unit) {
                (false, 0xD800..=0xDBFF) => pending_high = true,
                (true, 0xDC00..=0xDFFF) => pending_high = false,
                (false, 0xDC00..=0xDFFF) | (true, _) => return Err(Fault::LoneSurrogate),
                (false, _) => {}
            }
            self.at += 6;
        }
    }
}

/// The kinds of the containers open inside a member's value, as a stack of bits (object or
/// array), as deep as the deepest limit allows.
#[derive(Default)]
struct Containers {
    bits: [u64; 8],
    depth: usize,
}

impl Containers {
    fn depth(&self) -> usize {
        self.depth
    }

    fn push(&mut self, object: bool) {
        let (word, bit) = (self.depth / 64, self.depth % 64);
        if let Some(word) = self.bits.get_mut(word) {
            *word = (*word & !(1 << bit)) | (u64::from(object) << bit);
        }
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Whether the innermost open container is an object; `None` when none is open.
    fn top(&self) -> Option<bool> {
        let at = self.depth.checked_sub(1)?;
        Some(self.bits.get(at / 64).is_some_and(|word| word >> (at % 64) & 1 == 1))
    }
}

/// `end` moved back over trailing whitespace, not before `start`.
fn trim_end(body: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && matches!(body[end - 1], b' ' | b'\t' | b'\n' | b'\r') {
        end -= 1;
    }
    end
}

/// The top-level member a byte offset falls in, for an error that names where the fault is; a
/// best effort on a body that may be broken at that very spot.
fn member_at(body: &[u8], offset: usize) -> Option<String> {
    let valid = std::str::from_utf8(&body[..offset]).ok()?;
    // Scan what is valid with the same rules, remembering the last top-level key that began.
    let mut scanner = Scanner { body: valid.as_bytes(), at: 0 };
    scanner.skip_space();
    if !scanner.eat(b'{') {
        return None;
    }
    let mut last = None;
    loop {
        scanner.skip_space();
        let key_start = scanner.at;
        if !scanner.eat(b'"') || scanner.string().is_err() {
            return last;
        }
        last = serde_json::from_slice::<String>(&valid.as_bytes()[key_start..scanner.at]).ok();
        scanner.skip_space();
        if !scanner.eat(b':') {
            return last;
        }
        scanner.skip_space();
        if scanner.value(usize::MAX).is_err() || !scanner.eat(b',') {
            return last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(body: &str) -> Vec<String> {
        members(body.as_bytes(), 64).unwrap().iter().map(|member| member.key(body.as_bytes()).to_string()).collect()
    }

    #[test]
    fn members_and_their_values_are_found_with_escapes_and_whitespace() {
        let body = r#" { "model" : "m" , "messages":[{"content":"a \"}\" ]"}], "max\u005ftokens": 5 ,"x":{}} "#;
        let found = members(body.as_bytes(), 64).unwrap();
        let pairs: Vec<(&str, &str)> = found.iter().map(|m| (m.key(body.as_bytes()), &body[m.value.clone()])).collect();
        assert_eq!(
            pairs,
            vec![("model", r#""m""#), ("messages", r#"[{"content":"a \"}\" ]"}]"#), ("max_tokens", "5"), ("x", "{}"),]
        );
        assert_eq!(&body[found[2].key_span.clone()], r#""max\u005ftokens""#);
        assert_eq!(keys("{}"), Vec::<String>::new());
    }

    #[test]
    fn nesting_past_the_limit_is_refused_naming_the_member() {
        let deep = format!(r#"{{"model":"m","messages":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(members(deep.as_bytes(), 64), Err(ShapeError::TooDeep { member: "messages".into(), limit: 64 }));
        let ok = format!(r#"{{"a":{}1{}}}"#, "[".repeat(63), "]".repeat(63));
        assert!(members(ok.as_bytes(), 64).is_ok(), "63 arrays inside the object make 64 levels");
        let over = format!(r#"{{"a":{}1{}}}"#, "[".repeat(64), "]".repeat(64));
        assert!(matches!(members(over.as_bytes(), 64), Err(ShapeError::TooDeep { .. })));
    }

    #[test]
    fn invalid_utf8_is_refused_naming_the_member_it_is_in() {
        let mut body = br#"{"model":"m","messages":[{"content":"caf"#.to_vec();
        body.extend_from_slice(&[0xC3, 0x28]);
        body.extend_from_slice(br#""}]}"#);
        assert_eq!(members(&body, 64), Err(ShapeError::InvalidUtf8 { member: Some("messages".into()) }));
        assert_eq!(members(&[0xFF], 64), Err(ShapeError::InvalidUtf8 { member: None }));
    }

    #[test]
    fn lone_surrogates_and_duplicates_are_refused() {
        for lone in [r#""\ud800""#, r#""\udc00""#, r#""\ud800x""#, r#""\ud800\n""#, r#""\ud800\u0041""#] {
            let body = format!(r#"{{"messages":{lone}}}"#);
            assert_eq!(
                members(body.as_bytes(), 64),
                Err(ShapeError::LoneSurrogate { member: "messages".into() }),
                "{lone}"
            );
        }
        assert!(members(r#"{"a":"\ud83d\ude00"}"#.as_bytes(), 64).is_ok(), "a proper pair");
        for huge in ["1e400", "-1e400", "[1,2,1e309]"] {
            let body = format!(r#"{{"x":{huge}}}"#);
            assert_eq!(
                members(body.as_bytes(), 64),
                Err(ShapeError::NumberOutOfRange { member: "x".into() }),
                "{huge}"
            );
        }
        assert!(members(br#"{"a":18446748192515361616189,"b":-0.5e-3,"c":1E5}"#, 64).is_ok(), "large but finite");
        assert_eq!(
            members(r#"{"max_tokens":1,"max_\u0074okens":100000}"#.as_bytes(), 64),
            Err(ShapeError::Duplicate { member: "max_tokens".into() })
        );
    }

    #[test]
    fn duplicates_among_many_members_are_found_without_comparing_every_pair() {
        let many: Vec<String> = (0..100_000).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let unique = format!("{{{}}}", many.join(","));
        assert_eq!(members(unique.as_bytes(), 64).map(|found| found.len()), Ok(100_000));
        let twice = format!("{{{},\"k7\":0}}", many.join(","));
        assert_eq!(members(twice.as_bytes(), 64), Err(ShapeError::Duplicate { member: "k7".into() }));
    }

    #[test]
    fn what_is_not_an_object_or_is_cut_short_is_refused() {
        assert_eq!(members(b"[1,2]", 64), Err(ShapeError::NotAnObject));
        for broken in [r#"{"a":1"#, r#"{"a":"x}"#, r#"{"a"}"#, r#"{"a":1}x"#, r#"{"a":}"#, r#"{"a":1,}"#] {
            assert!(matches!(members(broken.as_bytes(), 64), Err(ShapeError::Malformed { .. })), "{broken}");
        }
    }

    #[test]
    fn values_inside_members_follow_jsons_grammar() {
        let fine = [
            r#"[]"#,
            r#"{}"#,
            r#"[1,-0.5,2e-3,1E+2,"x",true,false,null,{"k":[{}]}]"#,
            r#" { "k" : [ 1 , 2 ] } "#,
            r#""\"\\\/\b\f\n\r\t\u00e9""#,
        ];
        for value in fine {
            let body = format!(r#"{{"a":{value},"b":1}}"#);
            assert_eq!(keys(&body), ["a", "b"], "{value}");
        }
        let broken = [
            "tru",
            "nul",
            "falsy",
            "01",
            "1.",
            ".5",
            "1e",
            "-",
            "+1",
            "[1,]",
            "[1 2]",
            r#"{"k"}"#,
            r#"{"k":1,}"#,
            r#"{k:1}"#,
            "[1",
            r#"{"k":[}"#,
            r#""\q""#,
            r#""\u12g4""#,
            "\"tab\there\"",
            "[1]]",
        ];
        for value in broken {
            let body = format!(r#"{{"a":{value},"b":1}}"#);
            assert_eq!(
                members(body.as_bytes(), 64),
                Err(ShapeError::Malformed { member: Some("a".into()) }),
                "{value}"
            );
        }
    }
}
