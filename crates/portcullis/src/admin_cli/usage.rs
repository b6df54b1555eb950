//! `portcullis usage`: the usage report through `GET /admin/v1/usage`.

use std::marker::PhantomData;

use clap::{Args, ValueEnum};
use portcullis_types::admin::{ListResponse, UsageView};

use super::client::{AdminClient, Fetched};
use super::output::{self, NONE, Render, fmt_text, fmt_time};

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this key id.
    #[arg(long, value_name = "ID")]
    key: Option<String>,
    /// Only keys of this team.
    #[arg(long, value_name = "TEAM")]
    team: Option<String>,
    /// Only this model.
    #[arg(long, value_name = "MODEL")]
    model: Option<String>,
    /// Start: a duration back from now (`7d`, `24h`) or an RFC 3339 time [server default: 7d].
    #[arg(long, value_name = "DURATION|TIME", value_parser = super::parse_since)]
    since: Option<String>,
    /// End (exclusive), an RFC 3339 time [default: now].
    #[arg(long, value_name = "TIME", value_parser = super::parse_until)]
    until: Option<String>,
    /// What each line sums.
    #[arg(long, value_enum, default_value_t = GroupBy::Day)]
    group_by: GroupBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    Day,
    Hour,
    Model,
    Key,
    Team,
}

impl GroupBy {
    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Hour => "hour",
            GroupBy::Model => "model",
            GroupBy::Key => "key",
            GroupBy::Team => "team",
        }
    }
}

impl UsageArgs {
    /// The query string; `group_by` is always sent so the table matches what the server summed.
    fn query(&self) -> Vec<(&'static str, &str)> {
        let mut query = Vec::new();
        for (name, value) in [
            ("key", &self.key),
            ("team", &self.team),
            ("model", &self.model),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(value) = value {
                query.push((name, value.as_str()));
            }
        }
        query.push(("group_by", self.group_by.as_str()));
        query
    }
}

pub async fn run(args: UsageArgs, global: &crate::GlobalArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(global)?;
    let fetched = client.get::<ListResponse<UsageView>>(&["usage"], &args.query()).await?;
    match args.group_by {
        GroupBy::Day => print::<ByDay>(global.json, fetched),
        GroupBy::Hour => print::<ByHour>(global.json, fetched),
        GroupBy::Model => print::<ByModel>(global.json, fetched),
        GroupBy::Key => print::<ByKey>(global.json, fetched),
        GroupBy::Team => print::<ByTeam>(global.json, fetched),
    }
}

/// `--json`: the API's body as it came. Otherwise a table with the grouping's label columns,
/// the numbers, and a totals line when there is anything to total.
fn print<L: Layout>(json: bool, fetched: Fetched<ListResponse<UsageView>>) -> anyhow::Result<()> {
    let Fetched { raw, body } = fetched;
    let mut lines: Vec<UsageLine<L>> = body.data.iter().map(|view| UsageLine::new(L::labels(view), view)).collect();
    if !lines.is_empty() {
        lines.push(total(&body.data));
    }
    output::print_list(json, &Fetched { raw, body: ListResponse { data: lines } })
}

/// The label columns of one grouping.
trait Layout {
    /// Every column header: the labels, then [`NUMBER_HEADERS`].
    const HEADERS: &'static [&'static str];
    fn labels(view: &UsageView) -> Vec<String>;
}

const NUMBER_HEADERS: [&str; 6] = ["REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "COST", "ESTIMATED"];

#[derive(Debug)]
struct ByDay;
#[derive(Debug)]
struct ByHour;
#[derive(Debug)]
struct ByModel;
#[derive(Debug)]
struct ByKey;
#[derive(Debug)]
struct ByTeam;

impl Layout for ByDay {
    const HEADERS: &'static [&'static str] =
        &["BUCKET", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "COST", "ESTIMATED"];
    fn labels(view: &UsageView) -> Vec<String> {
        // Days start at midnight UTC: the date says it all.
        let day = view.bucket.map(|bucket| bucket.date().to_string());
        vec![day.unwrap_or_else(|| NONE.to_string())]
    }
}

impl Layout for ByHour {
    const HEADERS: &'static [&'static str] = ByDay::HEADERS;
    fn labels(view: &UsageView) -> Vec<String> {
        vec![fmt_time(view.bucket)]
    }
}

impl Layout for ByModel {
    const HEADERS: &'static [&'static str] =
        &["MODEL", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "COST", "ESTIMATED"];
    fn labels(view: &UsageView) -> Vec<String> {
        vec![fmt_text(view.model.as_deref())]
    }
}

impl Layout for ByKey {
    const HEADERS: &'static [&'static str] =
        &["KEY", "TEAM", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "COST", "ESTIMATED"];
    fn labels(view: &UsageView) -> Vec<String> {
        vec![fmt_text(view.key_id.as_deref()), fmt_text(view.team.as_deref())]
    }
}

impl Layout for ByTeam {
    const HEADERS: &'static [&'static str] =
        &["TEAM", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "COST", "ESTIMATED"];
    fn labels(view: &UsageView) -> Vec<String> {
        // `-` is the keys in no team.
        vec![fmt_text(view.team.as_deref())]
    }
}

/// One table line: labels, then the numbers.
#[derive(Debug)]
struct UsageLine<L> {
    labels: Vec<String>,
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    cost: f64,
    estimated_requests: u64,
    layout: PhantomData<L>,
}

impl<L: Layout> UsageLine<L> {
    fn new(labels: Vec<String>, view: &UsageView) -> UsageLine<L> {
        UsageLine {
            labels,
            requests: view.requests,
            prompt_tokens: view.prompt_tokens,
            completion_tokens: view.completion_tokens,
            total_tokens: view.total_tokens,
            cost: view.cost,
            estimated_requests: view.estimated_requests,
            layout: PhantomData,
        }
    }
}

/// `TOTAL` under the first label, the other labels blank, every number summed.
fn total<L: Layout>(views: &[UsageView]) -> UsageLine<L> {
    let label_count = L::HEADERS.len() - NUMBER_HEADERS.len();
    let mut labels = vec![String::new(); label_count];
    if let Some(first) = labels.first_mut() {
        *first = "TOTAL".to_string();
    }
    let mut line = UsageLine {
        labels,
        requests: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
        cost: 0.0,
        estimated_requests: 0,
        layout: PhantomData,
    };
    for view in views {
        line.requests = line.requests.saturating_add(view.requests);
        line.prompt_tokens = line.prompt_tokens.saturating_add(view.prompt_tokens);
        line.completion_tokens = line.completion_tokens.saturating_add(view.completion_tokens);
        line.total_tokens = line.total_tokens.saturating_add(view.total_tokens);
        line.cost += view.cost;
        line.estimated_requests = line.estimated_requests.saturating_add(view.estimated_requests);
    }
    line
}

/// Costs to a millionth of a unit: per-request costs of small models are fractions of a cent.
fn fmt_cost(cost: f64) -> String {
    format!("{cost:.6}")
}

impl<L: Layout> Render for UsageLine<L> {
    const PLURAL: &'static str = "usage in this range";

    fn headers() -> &'static [&'static str] {
        L::HEADERS
    }

    fn row(&self) -> Vec<String> {
        let mut row = self.labels.clone();
        row.extend([
            self.requests.to_string(),
            self.prompt_tokens.to_string(),
            self.completion_tokens.to_string(),
            self.total_tokens.to_string(),
            fmt_cost(self.cost),
            self.estimated_requests.to_string(),
        ]);
        row
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        let headers = L::HEADERS.iter().copied();
        headers.zip(self.row()).collect()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use time::macros::datetime;

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        args: UsageArgs,
        #[command(flatten)]
        global: crate::GlobalArgs,
    }

    fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("portcullis-usage").chain(args.iter().copied()))
    }

    fn view(requests: u64, cost: f64) -> UsageView {
        UsageView {
            requests,
            prompt_tokens: 10 * requests,
            completion_tokens: 5 * requests,
            total_tokens: 15 * requests,
            cost,
            estimated_requests: 1,
            bucket: None,
            key_id: None,
            team: None,
            model: None,
        }
    }

    fn table<L: Layout>(views: &[UsageView]) -> String {
        let mut lines: Vec<UsageLine<L>> = views.iter().map(|view| UsageLine::new(L::labels(view), view)).collect();
        lines.push(total(views));
        let rows: Vec<Vec<String>> = lines.iter().map(Render::row).collect();
        output::table(L::HEADERS, &rows)
    }

    #[test]
    fn flags_become_the_query_with_the_grouping_always_sent() -> anyhow::Result<()> {
        let cli = parse(&["--key", "key_1", "--since", "24h", "--group-by", "model", "--json"])?;
        assert!(cli.global.json);
        assert_eq!(cli.args.query(), [("key", "key_1"), ("since", "24h"), ("group_by", "model")]);
        let cli = parse(&["--team", "acme", "--model", "m", "--since", "2025-06-01T00:00:00Z"])?;
        let until = parse(&["--until", "2025-06-08T00:00:00+02:00"])?;
        assert_eq!(
            cli.args.query(),
            [("team", "acme"), ("model", "m"), ("since", "2025-06-01T00:00:00Z"), ("group_by", "day")]
        );
        assert_eq!(until.args.query(), [("until", "2025-06-08T00:00:00+02:00"), ("group_by", "day")]);
        Ok(())
    }

    #[test]
    fn bad_times_and_groupings_fail_before_any_request() {
        assert!(parse(&["--since", "last week"]).is_err());
        assert!(parse(&["--until", "7d"]).is_err());
        assert!(parse(&["--group-by", "week"]).is_err());
        for grouping in ["day", "hour", "model", "key", "team"] {
            assert!(parse(&["--group-by", grouping]).is_ok(), "{grouping}");
        }
    }

    #[test]
    fn day_table_shows_dates_numbers_and_a_total() {
        let first = UsageView { bucket: Some(datetime!(2025-06-01 00:00 UTC)), ..view(2, 0.5) };
        let second = UsageView { bucket: Some(datetime!(2025-06-02 00:00 UTC)), ..view(3, 0.000_25) };
        let expected = "\
BUCKET      REQUESTS  PROMPT  COMPLETION  TOTAL  COST      ESTIMATED
2025-06-01  2         20      10          30     0.500000  1
2025-06-02  3         30      15          45     0.000250  1
TOTAL       5         50      25          75     0.500250  2";
        assert_eq!(table::<ByDay>(&[first, second]), expected);
    }

    #[test]
    fn key_table_has_key_and_team_columns() {
        let in_team = UsageView { key_id: Some("key_1".into()), team: Some("acme".into()), ..view(1, 1.0) };
        let alone = UsageView { key_id: Some("key_2".into()), ..view(1, 0.0) };
        let text = table::<ByKey>(&[in_team, alone]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("KEY    TEAM  REQUESTS"), "{text}");
        assert!(lines[1].starts_with("key_1  acme  1"), "{text}");
        assert!(lines[2].starts_with("key_2  -     1"), "{text}");
        assert!(lines[3].starts_with("TOTAL        2"), "{text}");
    }

    #[test]
    fn hour_and_model_labels() {
        let hour = UsageView { bucket: Some(datetime!(2025-06-01 13:00 UTC)), ..view(1, 0.0) };
        assert_eq!(ByHour::labels(&hour), ["2025-06-01T13:00:00Z"]);
        let model = UsageView { model: Some("smollm".into()), ..view(1, 0.0) };
        assert_eq!(ByModel::labels(&model), ["smollm"]);
        assert_eq!(ByTeam::labels(&view(1, 0.0)), ["-"], "the keys in no team");
    }

    #[test]
    fn the_server_shape_reads_back() -> anyhow::Result<()> {
        let raw = serde_json::json!({"data": [{
            "bucket": "2025-06-01T00:00:00Z", "requests": 2, "prompt_tokens": 20, "completion_tokens": 10,
            "total_tokens": 30, "cost": 0.5, "estimated_requests": 0
        }]});
        let body: ListResponse<UsageView> = serde_json::from_value(raw)?;
        assert_eq!(body.data[0].bucket, Some(datetime!(2025-06-01 00:00 UTC)));
        assert_eq!(body.data[0].key_id, None);
        Ok(())
    }
}
