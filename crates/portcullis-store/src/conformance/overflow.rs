//! The story's overflow chapter: usage figures at the most a column holds, in many rows, read
//! back by every read path as saturated numbers, never as an error.
//!
//! A model server may report any `u64` (2⁶⁴ − 1 tokens, 9.2 × 10¹⁸); a usage row stores at most
//! [`USAGE_MAX`], and a sum of many such rows must stop there too — on the roll-up reports, on
//! the per-key totals the server seeds its limiter from at start-up, and when a record is added
//! to a row already at the limit. (The audit log keeps such figures exactly: its own story checks
//! that, in `portcullis-audit`.)

use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::{BLUE, MODEL_1, MODEL_2, RED, story_query, sums, used};
use crate::{Stores, USAGE_MAX, UsageGrouping, UsageQuery, UsageRow, UsageTotal};

/// The first day of this chapter's usage, before every other chapter's, so only the chapter's own
/// keys (`story-huge-…`) are in its reports; the second day follows it.
const HUGE_DAY: OffsetDateTime = datetime!(1999-09-09 00:00 UTC);
/// Keys whose every figure is at the limit: two in team red, one in no team.
const HUGE_KEYS: [(&str, Option<&str>); 3] =
    [("story-huge-a", Some(RED)), ("story-huge-b", Some(RED)), ("story-huge-c", None)];
/// A key with small figures next to the huge ones: its sums stay exact.
const SMALL_KEY: &str = "story-huge-small";
/// Hours (from `HUGE_DAY`) with usage of every huge key and model: three on day one, two on day two.
const HOURS: [i64; 5] = [0, 1, 2, 24, 25];

/// Every read path, after rows at the limit were written (and added to) many times over.
pub(super) async fn usage_at_the_limit_reads_saturated(stores: &Stores) {
    rows_at_the_limit_saturate_every_report(stores).await;
    totals_at_the_limit_saturate(stores).await;
}

fn limit() -> UsageRow {
    sums([USAGE_MAX; 5])
}

async fn rows_at_the_limit_saturate_every_report(stores: &Stores) {
    let usage = &stores.usage;
    // 30 rows (5 hours × 3 keys × 2 models), each from a record of 2⁶⁴ − 1 in every figure.
    let mut batch = Vec::new();
    for hour in HOURS {
        for (key, team) in HUGE_KEYS {
            for model in [MODEL_1, MODEL_2] {
                batch.push(used(HUGE_DAY + Duration::hours(hour), key, team, model, [u64::MAX; 5]));
            }
        }
    }
    usage.record_usage(&batch).await.unwrap();
    // Added to rows already at the limit, by a whole batch again and by records just above and
    // at it: the rows stay at the limit, the batch does not fail.
    usage.record_usage(&batch).await.unwrap();
    let (a, a_team) = HUGE_KEYS[0];
    let edges = [
        used(HUGE_DAY, a, a_team, MODEL_1, [USAGE_MAX + 1; 5]),
        used(HUGE_DAY, a, a_team, MODEL_1, [USAGE_MAX; 5]),
        used(HUGE_DAY, a, a_team, MODEL_1, [1; 5]),
    ];
    usage.record_usage(&edges).await.unwrap();
    // Small figures in a saturated hour, and alone on day two's last hour.
    let small = [
        used(HUGE_DAY + Duration::hours(1), SMALL_KEY, Some(BLUE), MODEL_1, [1, 2, 3, 4, 0]),
        used(HUGE_DAY + Duration::hours(47), SMALL_KEY, Some(BLUE), MODEL_1, [5, 6, 7, 8, 1]),
    ];
    usage.record_usage(&small).await.unwrap();

    let everything = story_query(HUGE_DAY, HUGE_DAY + Duration::days(2));
    let report = |group_by: UsageGrouping| {
        let query = UsageQuery { group_by, ..everything.clone() };
        async move { usage.usage_report(&query).await.unwrap() }
    };
    let day_two = HUGE_DAY + Duration::days(1);
    let mut by_hour: Vec<UsageRow> =
        HOURS.iter().map(|hour| UsageRow { bucket: Some(HUGE_DAY + Duration::hours(*hour)), ..limit() }).collect();
    by_hour.push(UsageRow { bucket: Some(HUGE_DAY + Duration::hours(47)), ..sums([5, 6, 7, 8, 1]) });
    assert_eq!(report(UsageGrouping::Hour).await, by_hour, "six hours at the limit add up to the limit");
    assert_eq!(
        report(UsageGrouping::Day).await,
        [UsageRow { bucket: Some(HUGE_DAY), ..limit() }, UsageRow { bucket: Some(day_two), ..limit() }]
    );
    assert_eq!(
        report(UsageGrouping::Model).await,
        [UsageRow { model: Some(MODEL_1.into()), ..limit() }, UsageRow { model: Some(MODEL_2.into()), ..limit() }]
    );
    let huge_key = |(key, team): (&str, Option<&str>)| UsageRow {
        key_id: Some(key.into()),
        team: team.map(Into::into),
        ..limit()
    };
    let small_key = UsageRow { key_id: Some(SMALL_KEY.into()), team: Some(BLUE.into()), ..sums([6, 8, 10, 12, 1]) };
    let mut by_key: Vec<UsageRow> = HUGE_KEYS.into_iter().map(huge_key).collect();
    by_key.push(small_key.clone());
    assert_eq!(report(UsageGrouping::Key).await, by_key, "the small key's sums stay exact");
    assert_eq!(
        report(UsageGrouping::Team).await,
        [
            UsageRow { team: Some(BLUE.into()), ..sums([6, 8, 10, 12, 1]) },
            UsageRow { team: Some(RED.into()), ..limit() },
            UsageRow { team: None, ..limit() },
        ]
    );

    // Filtered the way `GET /v1/usage` asks for one key's spend, and by team and model.
    let key_a = UsageQuery { key_id: Some(a.into()), group_by: UsageGrouping::Day, ..everything.clone() };
    assert_eq!(
        usage.usage_report(&key_a).await.unwrap(),
        [UsageRow { bucket: Some(HUGE_DAY), ..limit() }, UsageRow { bucket: Some(day_two), ..limit() }]
    );
    let red_model_2 = UsageQuery {
        team: Some(RED.into()),
        model: Some(MODEL_2.into()),
        group_by: UsageGrouping::Key,
        ..everything.clone()
    };
    assert_eq!(usage.usage_report(&red_model_2).await.unwrap(), [huge_key(HUGE_KEYS[0]), huge_key(HUGE_KEYS[1])]);
    let small_only = UsageQuery { key_id: Some(SMALL_KEY.into()), group_by: UsageGrouping::Key, ..everything };
    assert_eq!(usage.usage_report(&small_only).await.unwrap(), [small_key]);
}

/// Continues from [`rows_at_the_limit_saturate_every_report`]'s rows.
async fn totals_at_the_limit_saturate(stores: &Stores) {
    let huge = |(key, team): (&str, Option<&str>)| UsageTotal {
        key_id: key.into(),
        team: team.map(Into::into),
        tokens: USAGE_MAX,
        cost_pico: USAGE_MAX,
    };
    let small = UsageTotal { key_id: SMALL_KEY.into(), team: Some(BLUE.into()), tokens: 18, cost_pico: 12 };
    let mut expected: Vec<UsageTotal> = HUGE_KEYS.into_iter().map(huge).collect();
    expected.push(small.clone());
    // Prompt plus completion tokens: two sums at the limit, added, still at the limit.
    assert_eq!(huge_totals(stores, HUGE_DAY).await, expected, "ordered by key id, saturated");
    let day_two_end = HUGE_DAY + Duration::hours(47);
    let small_day_two = UsageTotal { tokens: 13, cost_pico: 8, ..small };
    assert_eq!(huge_totals(stores, day_two_end).await, [small_day_two]);
}

async fn huge_totals(stores: &Stores, since: OffsetDateTime) -> Vec<UsageTotal> {
    let totals = stores.usage.usage_totals_since(since).await.unwrap();
    totals.into_iter().filter(|total| total.key_id.starts_with("story-huge-")).collect()
}
