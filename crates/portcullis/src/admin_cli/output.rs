//! Everything the admin CLI prints goes through [`emit`] or, for output that arrives over time
//! (`audit tail -f`, `audit export`), [`Streaming`]: the only places that touch stdout.
//!
//! With `--json` the server's response body is printed as one pretty-printed JSON value. Otherwise
//! lists become an aligned table and single objects `key: value` lines, rendered by [`Render`].

use std::io::Write;

use anyhow::Context;

use portcullis_types::admin::{ListResponse, is_hidden_char};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::client::Fetched;

/// Shown for absent values in human output.
pub const NONE: &str = "-";

/// How one admin API object looks in human output.
pub trait Render {
    /// Plural noun for an empty list message: `"keys"`.
    const PLURAL: &'static str;
    /// Column headers of the list table.
    fn headers() -> &'static [&'static str];
    /// One table row; as many cells as [`Render::headers`].
    fn row(&self) -> Vec<String>;
    /// `label: value` lines for a single object.
    fn fields(&self) -> Vec<(&'static str, String)>;
}

/// A single object: the JSON body, or its fields.
pub fn print_one<T: Render>(json: bool, fetched: &Fetched<T>) -> anyhow::Result<()> {
    if json {
        return emit(&pretty(&fetched.raw)?);
    }
    emit(&fields(&fetched.body.fields()))
}

/// A single object: the JSON body, or its fields and then a table of its parts (an
/// explanation's limits; no table when there are none).
pub fn print_one_with_table<T: Render>(
    json: bool,
    fetched: &Fetched<T>,
    headers: &[&str],
    rows: &[Vec<String>],
) -> anyhow::Result<()> {
    if json {
        return emit(&pretty(&fetched.raw)?);
    }
    let mut text = fields(&fetched.body.fields());
    if !rows.is_empty() {
        text.push_str("\n\n");
        text.push_str(&table(headers, rows));
    }
    emit(&text)
}

/// A list: the whole `{"data": [...]}` body, or a table.
pub fn print_list<T: Render>(json: bool, fetched: &Fetched<ListResponse<T>>) -> anyhow::Result<()> {
    if json {
        return emit(&pretty(&fetched.raw)?);
    }
    if fetched.body.data.is_empty() {
        return emit(&format!("no {}", T::PLURAL));
    }
    let rows: Vec<Vec<String>> = fetched.body.data.iter().map(Render::row).collect();
    emit(&table(T::headers(), &rows))
}

/// A freshly issued credential: the object, then the secret on its own labelled line and the
/// warning that it will not be shown again.
pub fn print_issued<T: Render>(json: bool, fetched: &Fetched<T>, label: &str, secret: &str) -> anyhow::Result<()> {
    if json {
        return emit(&pretty(&fetched.raw)?);
    }
    let message = format!(
        "{}\n\n{label}: {}\n\nThis {label} is shown only once: store it now, it cannot be retrieved later.",
        fields(&fetched.body.fields()),
        clean(secret),
    );
    emit(&message)
}

/// Writes `text` and a final newline to stdout. A closed pipe (`| head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

/// Stdout for output that arrives over time: written and flushed as it comes. A closed pipe
/// (`| head`) ends the output quietly: later writes are dropped and [`Streaming::is_closed`] says so.
pub struct Streaming {
    stdout: std::io::Stdout,
    closed: bool,
}

impl Streaming {
    pub fn stdout() -> Streaming {
        Streaming { stdout: std::io::stdout(), closed: false }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        if self.closed {
            return Ok(());
        }
        let mut out = self.stdout.lock();
        match out.write_all(bytes).and_then(|()| out.flush()) {
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other.context("cannot write to stdout"),
        }
    }

    pub fn line(&mut self, text: &str) -> anyhow::Result<()> {
        self.bytes(format!("{text}\n").as_bytes())
    }

    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.bytes(b"")
    }
}

fn pretty(value: &Value) -> anyhow::Result<String> {
    Ok(json_text(&serde_json::to_string_pretty(value)?))
}

/// JSON text with every [hidden](is_hidden_char) character from U+007F up written as a
/// `\uXXXX` escape: the same value, but nothing invisible or reordering reaches the terminal.
/// serde_json escapes the controls below U+0020 in strings itself (those left are the text's
/// own line breaks), and leaves the others as they are; outside strings JSON is ASCII, so only
/// strings change.
pub fn json_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if u32::from(c) >= 0x7F && is_hidden_char(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Left-aligned columns two spaces apart, header first, no trailing spaces. Cells are measured in
/// characters (no East Asian width handling) after control characters are escaped.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let header: Vec<String> = headers.iter().map(|cell| clean(cell)).collect();
    let body: Vec<Vec<String>> = rows.iter().map(|row| row.iter().map(|cell| clean(cell)).collect()).collect();
    let mut widths: Vec<usize> = Vec::new();
    for row in std::iter::once(&header).chain(&body) {
        for (index, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(index) {
                Some(known) => *known = (*known).max(width),
                None => widths.push(width),
            }
        }
    }
    let mut lines = Vec::with_capacity(body.len() + 1);
    for row in std::iter::once(&header).chain(&body) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let width = widths.get(index).copied().unwrap_or(0);
            line.extend(std::iter::repeat_n(' ', width.saturating_sub(cell.chars().count())));
        }
        lines.push(line.trim_end().to_string());
    }
    lines.join("\n")
}

/// `label: value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(label, _)| label.chars().count() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(label, value)| format!("{:<width$} {}", format!("{label}:"), clean(value)).trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Escapes control characters, so server-supplied text cannot break a table or drive the
/// terminal, and invisible or format characters (bidirectional overrides, zero-width
/// characters, …), so it cannot pass for other text (`evil\u{202E}gnp.exe` would show as
/// `evilexe.png`). The admin API refuses them in what it stores, but records quote clients
/// (user agents, paths) and older stores may hold some.
pub fn clean(text: &str) -> String {
    text.chars().map(|c| if is_hidden_char(c) { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// RFC 3339, or `-`.
pub fn fmt_time(value: Option<OffsetDateTime>) -> String {
    value.and_then(|value| value.format(&Rfc3339).ok()).unwrap_or_else(|| NONE.to_string())
}

/// The text, or `-`.
pub fn fmt_text(value: Option<&str>) -> String {
    value.filter(|value| !value.is_empty()).unwrap_or(NONE).to_string()
}

/// Comma-separated, or `-` when empty.
pub fn fmt_list(values: &[String]) -> String {
    if values.is_empty() { NONE.to_string() } else { values.join(", ") }
}

/// Compact JSON, or `-` for null and empty objects or arrays (metadata, limit overrides).
pub fn fmt_json(value: &Value) -> String {
    match value {
        Value::Null => NONE.to_string(),
        Value::Object(map) if map.is_empty() => NONE.to_string(),
        Value::Array(items) if items.is_empty() => NONE.to_string(),
        other => other.to_string(),
    }
}

/// Any serializable value as [`fmt_json`] (limit overrides skip their unset fields).
pub fn fmt_serialized<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).map(|value| fmt_json(&value)).unwrap_or_else(|_| NONE.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|cell| cell.to_string()).collect()
    }

    #[test]
    fn table_aligns_columns_to_the_widest_cell() {
        let text = table(&["ID", "NAME", "TIER"], &[row(&["k1", "ci-bot", "free"]), row(&["key_0002", "x", "-"])]);
        let expected = "\
ID        NAME    TIER
k1        ci-bot  free
key_0002  x       -";
        assert_eq!(text, expected);
    }

    #[test]
    fn table_counts_characters_not_bytes_and_trims_line_ends() {
        let text = table(&["A", "B"], &[row(&["é", ""]), row(&["ab", "c"])]);
        assert_eq!(text, "A   B\né\nab  c");
    }

    #[test]
    fn table_with_no_rows_is_the_header() {
        assert_eq!(table(&["ID", "NAME"], &[]), "ID  NAME");
    }

    #[test]
    fn control_characters_are_escaped() {
        let text = table(&["NAME"], &[row(&["evil\n\u{1b}[2J"])]);
        assert_eq!(text, "NAME\nevil\\n\\u{1b}[2J");
    }

    #[test]
    fn json_output_escapes_hidden_characters_and_keeps_the_value() {
        let value =
            serde_json::json!({"name": "evil\u{202E}gnp.exe", "tag": "a\u{E0041}", "del": "\u{7f}", "ok": "Zoë"});
        let text = pretty(&value).unwrap();
        assert!(text.contains(r#""evil\u202egnp.exe""#) && text.contains(r#""a\udb40\udc41""#), "{text}");
        assert!(text.contains(r#""\u007f""#) && text.contains("Zoë"), "{text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
    }

    #[test]
    fn format_characters_are_escaped() {
        let text = table(&["NAME"], &[row(&["evil\u{202E}gnp.exe\u{200B}"])]);
        assert_eq!(text, "NAME\nevil\\u{202e}gnp.exe\\u{200b}");
        assert_eq!(fields(&[("name", "a\u{2066}b\u{2028}".to_string())]), "name: a\\u{2066}b\\u{2028}");
        assert_eq!(clean("café ☕ 東京"), "café ☕ 東京");
    }

    #[test]
    fn fields_align_values() {
        let text = fields(&[("id", "k1".to_string()), ("expires_at", NONE.to_string()), ("metadata", String::new())]);
        assert_eq!(text, "id:         k1\nexpires_at: -\nmetadata:");
    }

    #[test]
    fn absent_values_print_as_dash() {
        assert_eq!(fmt_time(None), "-");
        assert_eq!(fmt_time(Some(time::macros::datetime!(2025-01-02 03:04:05 UTC))), "2025-01-02T03:04:05Z");
        assert_eq!(fmt_text(None), "-");
        assert_eq!(fmt_list(&[]), "-");
        assert_eq!(fmt_json(&serde_json::json!({})), "-");
        assert_eq!(fmt_json(&serde_json::json!({"a": 1})), r#"{"a":1}"#);
    }
}
