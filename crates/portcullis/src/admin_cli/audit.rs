//! `portcullis audit query|tail|export|verify`: the audit log through `/admin/v1/audit`.
//!
//! This module holds the command line (subcommands, filters); [`read`] pages through records for
//! `query` and `tail`, [`export`] streams an export, [`verify`] reports the chains, and [`render`]
//! turns a record into a table row or tail line. Every call goes through the one [`AdminClient`].
//!
//! [`AdminClient`]: super::client::AdminClient

mod export;
mod read;
mod render;
mod verify;

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

/// The API's largest page, used when reading everything.
const PAGE: u64 = 1000;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Records matching the filters, oldest first (one page; --all for every one).
    Query(QueryArgs),
    /// The latest records; with -f, keep printing new ones as they arrive.
    Tail(TailArgs),
    /// Every matching record as JSON Lines or CSV, to stdout or a file.
    Export(ExportArgs),
    /// Check every node's hash chain; exits non-zero when any is broken.
    Verify,
}

/// What part of the log to read; filters combine.
#[derive(Debug, Clone, Default, Args)]
pub struct Filters {
    /// Start (inclusive): a duration back from now (`24h`) or an RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME", value_parser = super::parse_since)]
    since: Option<String>,
    /// End (exclusive), an RFC 3339 time.
    #[arg(long, value_name = "TIME", value_parser = super::parse_until)]
    until: Option<String>,
    /// Only this API key id.
    #[arg(long, value_name = "ID")]
    key: Option<String>,
    /// Only this token or certificate subject (a token's `sub`).
    #[arg(long, value_name = "SUB")]
    subject: Option<String>,
    /// Only this token or certificate issuer (a token's `iss`, exactly).
    #[arg(long, value_name = "ISSUER")]
    issuer: Option<String>,
    /// Only the authorizer's records asked by this gateway (`nginx`, `caddy`, `envoy`…).
    #[arg(long, value_name = "GATEWAY")]
    gateway: Option<String>,
    /// Only this team's records.
    #[arg(long, value_name = "TEAM")]
    team: Option<String>,
    /// Only this model.
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// Only this HTTP status.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(100..=599))]
    status: Option<u16>,
    #[arg(long, value_enum)]
    decision: Option<Decision>,
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    /// Only this request id.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
    /// Only this gateway node's records.
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Decision {
    Allow,
    Deny,
    /// Allowed, but the model server failed.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Proxied requests, allowed or denied.
    Request,
    /// The authorizer's decisions about requests other gateways forward, and their settlements.
    Authz,
    /// Admin API actions.
    Admin,
    /// Security events (blocked clients, anomalies).
    Security,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    filters: Filters,
    /// Records per page [server default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=PAGE), conflicts_with = "all")]
    limit: Option<u64>,
    /// Follow the cursor to the last matching record (--json: one array of every record).
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Keep polling (every second) and print new records as they arrive, until interrupted.
    #[arg(short = 'f', long)]
    follow: bool,
    /// How many of the latest records to print first.
    #[arg(short = 'n', long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=PAGE))]
    lines: u64,
    #[command(flatten)]
    filters: Filters,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    format: ExportFormat,
    /// Write to this file instead of stdout (removed again if the export fails halfway).
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    filters: Filters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One JSON record per line, every value exact.
    Jsonl,
    /// A header row, then one row per record (RFC 4180).
    Csv,
}

impl Decision {
    fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Error => "error",
        }
    }
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Authz => "authz",
            Kind::Admin => "admin",
            Kind::Security => "security",
        }
    }
}

impl ExportFormat {
    fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
        }
    }
}

impl Filters {
    /// The query string for the filters given.
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        let texts = [
            ("since", &self.since),
            ("until", &self.until),
            ("key", &self.key),
            ("subject", &self.subject),
            ("issuer", &self.issuer),
            ("gateway", &self.gateway),
            ("team", &self.team),
            ("model", &self.model),
            ("request_id", &self.request_id),
            ("node", &self.node),
        ];
        for (name, value) in texts {
            if let Some(value) = value {
                query.push((name, value.clone()));
            }
        }
        if let Some(status) = self.status {
            query.push(("status", status.to_string()));
        }
        if let Some(decision) = self.decision {
            query.push(("decision", decision.as_str().to_string()));
        }
        if let Some(kind) = self.kind {
            query.push(("kind", kind.as_str().to_string()));
        }
        query
    }
}

pub async fn run(command: AuditCommand, global: &crate::GlobalArgs) -> anyhow::Result<()> {
    match command {
        AuditCommand::Query(args) => read::query(args, global).await,
        AuditCommand::Tail(args) => read::tail(args, global).await,
        AuditCommand::Export(args) => export::export(args, global).await,
        AuditCommand::Verify => verify::verify(global).await,
    }
}

/// A request record as the API shows it, for the tests of every submodule.
#[cfg(test)]
fn sample_view() -> portcullis_types::admin::AuditView {
    portcullis_types::admin::AuditView {
        seq: 7,
        ts: time::macros::datetime!(2025-06-10 12:30:00.123 UTC),
        node: "gw-1".into(),
        kind: "request".into(),
        request_id: Some("req_1".into()),
        principal_kind: Some("key".into()),
        key_id: Some("key_1".into()),
        subject: None,
        issuer: None,
        credential_id: None,
        team: Some("acme".into()),
        admin_token_id: None,
        client_ip: Some("10.0.0.1".into()),
        gateway: None,
        method: Some("POST".into()),
        path: Some("/v1/chat/completions".into()),
        model: Some("smollm".into()),
        upstream: None,
        status: 429,
        decision: "deny".into(),
        reason: Some("rate_limit_exceeded".into()),
        target: None,
        stream: false,
        latency_ms: 2,
        ttfb_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        usage_estimated: false,
        cost: None,
        cost_pico: None,
        user_agent: None,
        content: None,
        prev_hash: "a".repeat(64),
        hash: "b".repeat(64),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: AuditCommand,
        #[command(flatten)]
        global: crate::GlobalArgs,
    }

    fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("portcullis-audit").chain(args.iter().copied()))
    }

    #[test]
    fn filters_become_the_query() -> anyhow::Result<()> {
        let cli = parse(&[
            "query",
            "--since",
            "24h",
            "--key",
            "key_1",
            "--subject",
            "svc-ingest",
            "--issuer",
            "https://idp.example",
            "--gateway",
            "envoy",
            "--status",
            "429",
            "--decision",
            "deny",
            "--kind",
            "authz",
            "--request-id",
            "req_1",
            "--node",
            "gw-1",
            "--limit",
            "5",
        ])?;
        let AuditCommand::Query(args) = cli.command else { panic!("not a query") };
        assert_eq!(
            args.filters.query(),
            [
                ("since", "24h".to_string()),
                ("key", "key_1".to_string()),
                ("subject", "svc-ingest".to_string()),
                ("issuer", "https://idp.example".to_string()),
                ("gateway", "envoy".to_string()),
                ("request_id", "req_1".to_string()),
                ("node", "gw-1".to_string()),
                ("status", "429".to_string()),
                ("decision", "deny".to_string()),
                ("kind", "authz".to_string()),
            ]
        );
        assert_eq!((args.limit, args.all), (Some(5), false));
        Ok(())
    }

    #[test]
    fn bad_flags_fail_before_any_request() {
        for bad in [
            &["query", "--since", "yesterday"][..],
            &["query", "--until", "24h"],
            &["query", "--status", "99"],
            &["query", "--decision", "maybe"],
            &["query", "--kind", "other"],
            &["query", "--limit", "0"],
            &["query", "--limit", "1001"],
            &["query", "--limit", "5", "--all"],
            &["export", "--format", "xml"],
            &["tail", "-n", "5000"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["tail", "-f", "--team", "acme", "--json"]).is_ok());
        assert!(parse(&["export", "--format", "csv", "-o", "audit.csv", "--since", "2025-06-01T00:00:00Z"]).is_ok());
        assert!(parse(&["verify", "--json"]).is_ok());
    }
}
