//! `portcullis audit query|tail|export|verify`: the audit log through `/admin/v1/audit`.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use portcullis_types::admin::{AuditChainStatus, AuditPage, AuditVerifyView, AuditView, ListResponse};
use portcullis_types::openai::ErrorBody;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::client::{AdminClient, Fetched, TOKEN_ENV};
use super::output::{self, NONE, Render, clean, fmt_text};

/// The API's largest page, used when reading everything.
const PAGE: u64 = 1000;
/// How often `tail -f` asks for new records.
const POLL: Duration = Duration::from_secs(1);
/// Windows `tail` widens through, newest first, until it has enough records: reading only the
/// end of a long log, since the API reads oldest first.
const TAIL_WINDOWS: [&str; 6] = ["5m", "1h", "24h", "7d", "30d", "365d"];

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
        AuditCommand::Query(args) => query(args, global).await,
        AuditCommand::Tail(args) => tail(args, global).await,
        AuditCommand::Export(args) => export(args, global).await,
        AuditCommand::Verify => verify(global).await,
    }
}

/// One page of `GET /admin/v1/audit` with `query`, plus `limit` and `cursor`.
async fn fetch_page(
    client: &AdminClient,
    query: &[(&'static str, String)],
    limit: Option<u64>,
    cursor: Option<&str>,
) -> anyhow::Result<Fetched<AuditPage>> {
    let limit = limit.map(|limit| limit.to_string());
    let mut pairs: Vec<(&str, &str)> = query.iter().map(|(name, value)| (*name, value.as_str())).collect();
    if let Some(limit) = &limit {
        pairs.push(("limit", limit));
    }
    if let Some(cursor) = cursor {
        pairs.push(("cursor", cursor));
    }
    client.get::<AuditPage>(&["audit"], &pairs).await
}

/// The records of a page, each with its JSON as the server sent it.
fn records(fetched: Fetched<AuditPage>) -> (Vec<(AuditView, Value)>, Option<String>) {
    let Fetched { raw, body } = fetched;
    let raws = match raw.get("data") {
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    let raws = raws.into_iter().chain(std::iter::repeat(Value::Null));
    (body.data.into_iter().zip(raws).collect(), body.next_cursor)
}

async fn query(args: QueryArgs, global: &crate::GlobalArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(global)?;
    let query = args.filters.query();
    if !args.all {
        let Fetched { raw, body } = fetch_page(&client, &query, args.limit, None).await?;
        return output::print_list(global.json, &Fetched { raw, body: ListResponse { data: body.data } });
    }
    let mut all: Vec<(AuditView, Value)> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (page, next) = records(fetch_page(&client, &query, Some(PAGE), cursor.as_deref()).await?);
        let full = page.len() as u64 >= PAGE;
        all.extend(page);
        match next {
            Some(next) if full => cursor = Some(next),
            _ => break,
        }
    }
    let (views, raws): (Vec<AuditView>, Vec<Value>) = all.into_iter().unzip();
    output::print_list(global.json, &Fetched { raw: Value::Array(raws), body: ListResponse { data: views } })
}

/// The last `lines` records (through widening time windows), then, with `-f`, new ones as they
/// arrive. New records are those after the last one seen in the API's order (`ts`, node, seq);
/// a record stored late with an earlier time than that is not shown.
async fn tail(args: TailArgs, global: &crate::GlobalArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(global)?;
    let mut out = Out::stdout();
    let wanted = usize::try_from(args.lines).unwrap_or(usize::MAX);
    let (latest, mut cursor) = latest(&client, &args.filters, wanted).await?;
    if !global.json {
        out.line(&tail_line(&TAIL_HEADERS.map(str::to_string)))?;
    }
    for (view, raw) in &latest {
        out.record(global.json, view, raw)?;
    }
    if !args.follow {
        return out.finish();
    }
    let query = args.filters.query();
    loop {
        if out.closed {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
        loop {
            let (page, next) = records(fetch_page(&client, &query, Some(PAGE), cursor.as_deref()).await?);
            let full = page.len() as u64 >= PAGE;
            for (view, raw) in &page {
                out.record(global.json, view, raw)?;
            }
            if next.is_some() {
                cursor = next;
            }
            if !full {
                break;
            }
        }
    }
}

/// The last `wanted` records matching `filters`, oldest first, and the cursor after the newest.
async fn latest(
    client: &AdminClient,
    filters: &Filters,
    wanted: usize,
) -> anyhow::Result<(Vec<(AuditView, Value)>, Option<String>)> {
    // A window the caller chose is the only one; otherwise widen until enough records are found,
    // ending with the whole log.
    let windows: Vec<Option<String>> = match &filters.since {
        Some(since) => vec![Some(since.clone())],
        None => TAIL_WINDOWS.iter().map(|window| Some(window.to_string())).chain([None]).collect(),
    };
    let mut found = (Vec::new(), None);
    for window in windows {
        let query = Filters { since: window, ..filters.clone() }.query();
        let mut last: VecDeque<(AuditView, Value)> = VecDeque::new();
        let mut cursor: Option<String> = None;
        let mut seen = 0;
        loop {
            let (page, next) = records(fetch_page(client, &query, Some(PAGE), cursor.as_deref()).await?);
            let full = page.len() as u64 >= PAGE;
            seen += page.len();
            for record in page {
                last.push_back(record);
                if last.len() > wanted {
                    last.pop_front();
                }
            }
            if next.is_some() {
                cursor = next;
            }
            if !full {
                break;
            }
        }
        found = (last.into_iter().collect(), cursor);
        if seen >= wanted {
            break;
        }
    }
    Ok(found)
}

const TAIL_HEADERS: [&str; 9] = ["TS", "NODE", "SEQ", "KIND", "DECISION", "STATUS", "KEY/TEAM", "MODEL", "REASON"];

/// Fixed columns, so lines printed as they arrive line up with the ones before.
fn tail_line(cells: &[String; 9]) -> String {
    let [ts, node, seq, kind, decision, status, who, model, reason] = cells.each_ref().map(|cell| clean(cell));
    let line = format!(
        "{ts:<24}  {node:<12}  {seq:>6}  {kind:<8}  {decision:<8}  {status:<6}  {who:<24}  {model:<16}  {reason}"
    );
    line.trim_end().to_string()
}

async fn export(args: ExportArgs, global: &crate::GlobalArgs) -> anyhow::Result<()> {
    // Checks the URL and token the same way every other command does.
    AdminClient::new(global)?;
    let mut query = args.filters.query();
    query.push(("format", args.format.as_str().to_string()));
    let mut response = stream_get(global, &["audit", "export"], &query).await?;
    match &args.output {
        None => {
            let mut out = Out::stdout();
            while let Some(chunk) = response.chunk().await.context("the export was cut short")? {
                out.bytes(&chunk)?;
                if out.closed {
                    return Ok(());
                }
            }
            out.finish()
        }
        Some(path) => {
            let written = write_file(path, &mut response).await;
            if written.is_err() {
                // A partial export looks complete to whoever opens it: leave nothing behind.
                let _ = std::fs::remove_file(path);
            }
            written
        }
    }
}

async fn write_file(path: &Path, response: &mut reqwest::Response) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut file = std::io::BufWriter::new(file);
    while let Some(chunk) = response.chunk().await.context("the export was cut short")? {
        file.write_all(&chunk).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let file = file.into_inner().map_err(|error| anyhow!("cannot write {}: {}", path.display(), error.error()))?;
    file.sync_all().with_context(|| format!("cannot write {}", path.display()))
}

/// A GET whose body is read as it arrives. [`AdminClient`] reads whole JSON bodies within a
/// total timeout; an export can take longer than that, so this client only bounds the connect and
/// each wait for more data. Same rules otherwise: plain http, no proxy, no redirects.
async fn stream_get(
    global: &crate::GlobalArgs,
    path: &[&str],
    query: &[(&'static str, String)],
) -> anyhow::Result<reqwest::Response> {
    let token = std::env::var(TOKEN_ENV).map(|token| token.trim().to_string()).unwrap_or_default();
    let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| anyhow!("{TOKEN_ENV} contains characters that cannot be sent in an HTTP header"))?;
    authorization.set_sensitive(true);
    let mut url = Url::parse(&global.admin_url)
        .with_context(|| format!("--admin-url {:?} is not a valid URL", global.admin_url))?;
    url.path_segments_mut()
        .map_err(|()| anyhow!("--admin-url {} cannot take a path", global.admin_url))?
        .pop_if_empty()
        .extend(["admin", "v1"])
        .extend(path);
    url.query_pairs_mut().extend_pairs(query);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the HTTP client")?;
    let response = http.get(url.clone()).header(AUTHORIZATION, authorization).send().await.map_err(|error| {
        let what = if error.is_connect() {
            format!("cannot reach the admin API at {} (is `portcullis serve` running there?)", global.admin_url)
        } else {
            format!("request to the admin API failed: {url}")
        };
        anyhow::Error::new(error).context(what)
    })?;
    let status = response.status();
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        return Err(api_error(status, &body));
    }
    Ok(response)
}

/// `"<status>: <message> (<code>)"`, as every other admin command reports a refusal.
fn api_error(status: StatusCode, body: &[u8]) -> anyhow::Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => match error.code {
            Some(code) => anyhow!("{status}: {} ({code})", clean(&error.message)),
            None => anyhow!("{status}: {}", clean(&error.message)),
        },
        Err(_) => anyhow!("{status}"),
    }
}

async fn verify(global: &crate::GlobalArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(global)?;
    let fetched = client.get::<AuditVerifyView>(&["audit", "verify"], &[]).await?;
    let mut out = Out::stdout();
    if global.json {
        out.line(&output::json_text(&serde_json::to_string_pretty(&fetched.raw)?))?;
    } else {
        if fetched.body.nodes.is_empty() {
            out.line("no audit records to verify")?;
        }
        for line in verify_lines(&fetched.body) {
            out.line(&line)?;
        }
    }
    out.finish()?;
    let broken = fetched.body.nodes.iter().filter(|node| node.status != AuditChainStatus::Ok).count();
    if !fetched.body.ok || broken > 0 {
        bail!("{broken} of {} audit chain(s) failed verification", fetched.body.nodes.len());
    }
    Ok(())
}

fn verify_lines(view: &AuditVerifyView) -> Vec<String> {
    view.nodes
        .iter()
        .map(|node| {
            let name = clean(&node.node);
            match node.status {
                AuditChainStatus::Ok => {
                    let from = node.from_checkpoint.map(|seq| format!(" (from checkpoint {seq})")).unwrap_or_default();
                    format!("OK {name}: {} records{from}", node.records_checked)
                }
                AuditChainStatus::Break { seq, problem } => {
                    format!("BROKEN {name}: first problem at seq {seq}: {}", problem.as_str())
                }
            }
        })
        .collect()
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

/// Stdout for output that arrives over time: written and flushed as it comes. A closed pipe
/// (`| head`) ends the output quietly.
struct Out {
    stdout: std::io::Stdout,
    closed: bool,
}

impl Out {
    fn stdout() -> Out {
        Out { stdout: std::io::stdout(), closed: false }
    }

    fn bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
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

    fn line(&mut self, text: &str) -> anyhow::Result<()> {
        self.bytes(format!("{text}\n").as_bytes())
    }

    /// A record: its JSON on one line, or a tail line.
    fn record(&mut self, json: bool, view: &AuditView, raw: &Value) -> anyhow::Result<()> {
        if json {
            let line = if raw.is_null() { serde_json::to_string(view)? } else { raw.to_string() };
            return self.line(&output::json_text(&line));
        }
        let cells: [String; 9] = match view.row().try_into() {
            Ok(cells) => cells,
            Err(_) => bail!("a record row has the wrong number of cells"),
        };
        self.line(&tail_line(&cells))
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.bytes(b"")
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use portcullis_types::admin::{AuditNodeVerifyView, AuditProblem};
    use time::macros::datetime;

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

    fn view() -> AuditView {
        AuditView {
            seq: 7,
            ts: datetime!(2025-06-10 12:30:00.123 UTC),
            node: "gw-1".into(),
            kind: "request".into(),
            request_id: Some("req_1".into()),
            key_id: Some("key_1".into()),
            subject: None,
            team: Some("acme".into()),
            admin_token_id: None,
            client_ip: Some("10.0.0.1".into()),
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

    #[test]
    fn filters_become_the_query() -> anyhow::Result<()> {
        let cli = parse(&[
            "query",
            "--since",
            "24h",
            "--key",
            "key_1",
            "--status",
            "429",
            "--decision",
            "deny",
            "--kind",
            "request",
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
                ("request_id", "req_1".to_string()),
                ("node", "gw-1".to_string()),
                ("status", "429".to_string()),
                ("decision", "deny".to_string()),
                ("kind", "request".to_string()),
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

    #[test]
    fn verify_lines_name_each_node() {
        let node = |name: &str, from_checkpoint, status| AuditNodeVerifyView {
            node: name.into(),
            records_checked: 42,
            last_seq: 42,
            from_checkpoint,
            status,
        };
        let view = AuditVerifyView {
            ok: false,
            nodes: vec![
                node("gw-1", None, AuditChainStatus::Ok),
                node("gw-2", Some(100), AuditChainStatus::Ok),
                node("gw-3", None, AuditChainStatus::Break { seq: 17, problem: AuditProblem::Edited }),
            ],
        };
        assert_eq!(
            verify_lines(&view),
            [
                "OK gw-1: 42 records",
                "OK gw-2: 42 records (from checkpoint 100)",
                "BROKEN gw-3: first problem at seq 17: edited"
            ]
        );
    }

    #[test]
    fn the_server_shapes_read_back() -> anyhow::Result<()> {
        let page: AuditPage = serde_json::from_value(serde_json::json!({
            "data": [serde_json::to_value(view())?],
            "next_cursor": "abc"
        }))?;
        assert_eq!(page.data, [view()]);
        let verified: AuditVerifyView = serde_json::from_value(serde_json::json!({
            "ok": false,
            "nodes": [
                {"node": "a", "records_checked": 3, "last_seq": 3, "from_checkpoint": null, "status": "ok"},
                {"node": "b", "records_checked": 1, "last_seq": 1, "from_checkpoint": 5,
                 "status": {"break": {"seq": 7, "problem": "deleted"}}}
            ]
        }))?;
        assert_eq!(verified.nodes[0].status, AuditChainStatus::Ok);
        assert_eq!(verified.nodes[1].status, AuditChainStatus::Break { seq: 7, problem: AuditProblem::Deleted });
        Ok(())
    }

    #[test]
    fn raw_records_are_printed_as_the_server_sent_them() {
        let raw = serde_json::json!({"data": [{"seq": 7, "extra": true}], "next_cursor": null});
        let body = AuditPage { data: vec![view()], next_cursor: None };
        let (records, next) = records(Fetched { raw, body });
        assert_eq!(records[0].1, serde_json::json!({"seq": 7, "extra": true}));
        assert_eq!(next, None);
    }
}
