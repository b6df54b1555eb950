//! A record as a table row (`audit query`) or a fixed-column line (`audit tail`), or its JSON.

use anyhow::bail;
use portcullis_types::admin::AuditView;
use serde_json::Value;

use crate::admin_cli::output::{self, NONE, Render, Streaming, clean, fmt_text};

pub(super) const TAIL_HEADERS: [&str; 9] =
    ["TS", "NODE", "SEQ", "KIND", "DECISION", "STATUS", "KEY/TEAM", "MODEL", "REASON"];

/// Fixed columns, so lines printed as they arrive line up with the ones before.
pub(super) fn tail_line(cells: &[String; 9]) -> String {
    let [ts, node, seq, kind, decision, status, who, model, reason] = cells.each_ref().map(|cell| clean(cell));
    let line = format!(
        "{ts:<24}  {node:<12}  {seq:>6}  {kind:<8}  {decision:<8}  {status:<6}  {who:<24}  {model:<16}  {reason}"
    );
    line.trim_end().to_string()
}

/// A record as it arrives: its JSON on one line (as the server sent it, when it did), or a tail line.
pub(super) fn print_record(out: &mut Streaming, json: bool, view: &AuditView, raw: &Value) -> anyhow::Result<()> {
    if json {
        let line = if raw.is_null() { serde_json::to_string(view)? } else { raw.to_string() };
        return out.line(&output::json_text(&line));
    }
    let cells: [String; 9] = match view.row().try_into() {
        Ok(cells) => cells,
        Err(_) => bail!("a record row has the wrong number of cells"),
    };
    out.line(&tail_line(&cells))
}

/// `key/team`: the caller (API key, token subject or admin token) and its team.
fn who(view: &AuditView) -> String {
    let caller = view.key_id.as_deref().or(view.subject.as_deref()).or(view.admin_token_id.as_deref());
    match (caller, view.team.as_deref()) {
        (Some(caller), Some(team)) => format!("{caller}/{team}"),
        (Some(caller), None) => caller.to_string(),
        (None, Some(team)) => format!("{NONE}/{team}"),
        (None, None) => NONE.to_string(),
    }
}

/// The reason, with an admin action's target after it.
fn why(view: &AuditView) -> String {
    match (view.reason.as_deref(), view.target.as_deref()) {
        (Some(reason), Some(target)) => format!("{reason} ({target})"),
        (reason, _) => fmt_text(reason),
    }
}

impl Render for AuditView {
    const PLURAL: &'static str = "audit records";

    fn headers() -> &'static [&'static str] {
        &TAIL_HEADERS
    }

    fn row(&self) -> Vec<String> {
        vec![
            portcullis_types::millis::format(self.ts),
            self.node.clone(),
            self.seq.to_string(),
            self.kind.clone(),
            self.decision.clone(),
            self.status.to_string(),
            who(self),
            fmt_text(self.model.as_deref()),
            why(self),
        ]
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        TAIL_HEADERS.iter().copied().zip(self.row()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::sample_view as view;
    use super::*;

    #[test]
    fn table_rows_show_who_and_why() {
        let row = view().row();
        assert_eq!(
            row,
            [
                "2025-06-10T12:30:00.123Z",
                "gw-1",
                "7",
                "request",
                "deny",
                "429",
                "key_1/acme",
                "smollm",
                "rate_limit_exceeded"
            ]
        );
        let admin = AuditView {
            kind: "admin".into(),
            key_id: None,
            team: None,
            admin_token_id: Some("tok_1".into()),
            reason: Some("key.revoke".into()),
            target: Some("key_9".into()),
            model: None,
            ..view()
        };
        let row = admin.row();
        assert_eq!((row[6].as_str(), row[7].as_str(), row[8].as_str()), ("tok_1", "-", "key.revoke (key_9)"));
        let anonymous = AuditView { key_id: None, reason: None, ..view() };
        assert_eq!((who(&anonymous), why(&anonymous)), ("-/acme".to_string(), "-".to_string()));
    }

    #[test]
    fn tail_lines_keep_fixed_columns_and_escape_control_characters() {
        let header = tail_line(&TAIL_HEADERS.map(str::to_string));
        let sneaky = AuditView { model: Some("evil\u{1b}[2J".into()), ..view() };
        let cells: [String; 9] = sneaky.row().try_into().unwrap();
        let line = tail_line(&cells);
        assert_eq!(header.find("KEY/TEAM"), line.find("key_1/acme"), "{header}\n{line}");
        assert!(line.contains("evil\\u{1b}[2J") && !line.contains('\u{1b}'), "{line}");
    }
}
