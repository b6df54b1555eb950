//! The conformance story: one walk through every store operation that each backend must pass.
//!
//! Call [`run_story`] on a fresh database from a backend's own test. Every id, team name and
//! secret hash the story uses starts with or is made from a `story` marker, so nothing else is
//! expected to be in the database, but list checks only look at the story's own rows.
//!
//! Rules a backend must follow beyond the trait docs, each checked below:
//! - Timestamps keep whole seconds.
//! - A key's or token's team must exist (`NotFound` otherwise).
//! - Lists are ordered: teams by name; keys and tokens by `created_at`, then id.
//! - Finding by secret returns revoked keys and tokens too: the caller decides what to do.
//! - Rotation: the new secret has no end; every older secret ends at the earlier of its current
//!   end and `old_valid_until`. A later rotation can shorten an older secret, never extend it.
//! - `touch_keys` keeps the latest use time (batches may arrive out of order) and skips unknown ids.
//! - Usage adds up per (hour, key, model): every recorded record counts exactly once, whether it
//!   arrives alone, twice in one batch or again in a later batch; it needs no key on file; time
//!   ranges take whole hours (see [`crate::UsageStore`]). The usage checks use times long past, so
//!   the story's own rows are the only ones they can see in a fresh database.
//! - Usage never overflows: a record's `u64` above [`crate::USAGE_MAX`] is stored as `USAGE_MAX`,
//!   a row at the limit stays there when added to, and every read — reports by each grouping and
//!   filter, per-key totals (prompt plus completion tokens included) — returns sums that stop at
//!   `USAGE_MAX`, however many rows at the limit they add up, never an error.
//! - The change log (see [`crate::ChangeLog`]): every successful call of `create_key`,
//!   `update_key`, `revoke_key`, `rotate_key`, `create_team`, `update_team`, `create_token` and
//!   `revoke_token` appends exactly one change naming its row, even a call that changed nothing
//!   (a second revoke); reads, `touch_keys`, usage and failed mutations append none (the audit log's own story,
//!   in `portcullis-audit`, checks that audit appends log none either).
//!   Seqs increase in commit order and are never reused, so `latest_change` never goes back,
//!   even after pruning deleted every change. Pages hold at most `limit` changes, oldest first.
//!   After pruning, a cursor below the newest pruned seq reads `truncated`; one at or above it
//!   does not. A backend that notifies wakes a receiver within seconds of a commit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: a failed unwrap or assert is a failed conformance check"
)]

mod changes;
mod overflow;
pub mod planted;

use portcullis_types::admin::{LimitOverrides, Role};
use serde_json::json;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use crate::{
    KeyFilter, KeyPatch, KeyRecord, NewAdminToken, NewKey, NewTeam, Rotation, StoreError, Stores, TeamPatch,
    TeamRecord, UsageGrouping, UsageQuery, UsageRecord, UsageRow, UsageTotal,
};

const RED: &str = "story-team-red";
const BLUE: &str = "story-team-blue";

/// Runs the whole story; panics (with the failed check) on the first deviation.
pub async fn run_story(stores: &Stores) {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();

    migrations_run_once(stores).await;
    teams_are_unique_readable_and_patchable(stores, now).await;
    keys_are_stored_whole_and_found_by_secret(stores, now).await;
    key_lists_are_ordered_and_filtered(stores, now).await;
    key_patches_replace_only_given_fields(stores, now).await;
    revocation_keeps_the_first_time(stores, now).await;
    rotation_ends_older_secrets_without_extending_them(stores, now).await;
    touches_keep_the_latest_use(stores, now).await;
    admin_tokens_are_unique_findable_and_revocable(stores, now).await;
    usage_adds_up_exactly(stores).await;
    usage_totals_count_whole_hours_since(stores).await;
    usage_reports_group_filter_and_order(stores).await;
    changes::changes_are_logged_once_in_commit_order(stores, now).await;
    overflow::usage_at_the_limit_reads_saturated(stores).await;
}

async fn migrations_run_once(stores: &Stores) {
    let first = stores.migrator.migrate().await.unwrap();
    assert!(first > 0, "a fresh database has migrations to apply");
    // Idempotent: the server migrates on every start.
    assert_eq!(stores.migrator.migrate().await.unwrap(), 0, "second migrate applies nothing");
    stores.migrator.ping().await.unwrap();
}

async fn teams_are_unique_readable_and_patchable(stores: &Stores, now: OffsetDateTime) {
    let teams = &stores.teams;
    let red = NewTeam {
        name: RED.into(),
        tier: Some("gold".into()),
        limits: LimitOverrides { requests_per_minute: Some(600), budget_per_day: Some(12.5), ..Default::default() },
        metadata: json!({"cost_centre": "r&d", "tags": ["a", "b"]}),
        capture_content: true,
        created_at: now,
    };
    let created = teams.create_team(red.clone()).await.unwrap();
    assert_eq!(created, team_record(&red), "create returns the stored team");
    assert_eq!(teams.get_team(RED).await.unwrap(), created);

    // Created second but listed first: lists go by name.
    let blue = NewTeam {
        name: BLUE.into(),
        tier: None,
        limits: LimitOverrides::default(),
        metadata: json!({}),
        capture_content: false,
        created_at: now,
    };
    teams.create_team(blue.clone()).await.unwrap();

    let duplicate = teams.create_team(NewTeam { tier: None, ..red.clone() }).await;
    assert!(matches!(duplicate, Err(StoreError::Conflict(_))), "duplicate team name: {duplicate:?}");
    assert_eq!(teams.get_team(RED).await.unwrap(), created, "a failed create changes nothing");

    assert!(matches!(teams.get_team("story-team-none").await, Err(StoreError::NotFound)));
    let names: Vec<String> =
        teams.list_teams().await.unwrap().into_iter().map(|t| t.name).filter(|n| n.starts_with("story-")).collect();
    assert_eq!(names, [BLUE, RED]);

    // A patch replaces only the fields it carries.
    let tier_only = TeamPatch { tier: Some("silver".into()), ..Default::default() };
    let patched = teams.update_team(RED, tier_only).await.unwrap();
    assert_eq!(patched, TeamRecord { tier: Some("silver".into()), ..created.clone() });

    let rest = TeamPatch {
        tier: None,
        limits: Some(LimitOverrides { tokens_per_day: Some(1_000_000), ..Default::default() }),
        metadata: Some(json!({"owner": "story"})),
        capture_content: Some(false),
    };
    let patched = teams.update_team(RED, rest.clone()).await.unwrap();
    let expected = TeamRecord {
        tier: Some("silver".into()),
        limits: rest.limits.unwrap(),
        metadata: rest.metadata.unwrap(),
        capture_content: false,
        ..created.clone()
    };
    assert_eq!(patched, expected, "limits, metadata and capture replaced, tier kept");
    assert_eq!(teams.get_team(RED).await.unwrap(), patched, "the patch is stored");

    let missing = teams.update_team("story-team-none", TeamPatch::default()).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "update of unknown team: {missing:?}");
}

async fn keys_are_stored_whole_and_found_by_secret(stores: &Stores, now: OffsetDateTime) {
    let keys = &stores.keys;
    let full = NewKey {
        models: vec!["llama-3-8b".into(), "qwen-*".into()],
        scopes: vec!["chat".into(), "embeddings".into()],
        allowed_cidrs: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
        limits: LimitOverrides { tokens_per_minute: Some(20_000), budget_per_month: Some(99.75), ..Default::default() },
        metadata: json!({"owner": "story", "nested": {"n": 1}}),
        expires_at: Some(now + Duration::days(30)),
        capture_content: true,
        ..new_key("story-key-full", Some(RED), 0x10, now - Duration::seconds(10))
    };
    let created = keys.create_key(full.clone()).await.unwrap();
    assert_eq!(created, key_record(&full), "create returns every field as given");
    assert_eq!(keys.get_key("story-key-full").await.unwrap(), created);

    // Found by its secret; the first secret has no end.
    let found = keys.find_key_by_secret(&secret(0x10)).await.unwrap().expect("key found by its secret");
    assert_eq!(found.key, created);
    assert_eq!(found.secret_valid_until, None);
    assert_eq!(keys.find_key_by_secret(&secret(0xEE)).await.unwrap(), None, "unknown secret is a miss, not an error");
    assert!(matches!(keys.get_key("story-key-none").await, Err(StoreError::NotFound)));

    // Ids and secrets are unique; a failed create leaves nothing behind.
    let same_id = keys.create_key(new_key("story-key-full", None, 0x11, now)).await;
    assert!(matches!(same_id, Err(StoreError::Conflict(_))), "duplicate key id: {same_id:?}");
    assert_eq!(keys.find_key_by_secret(&secret(0x11)).await.unwrap(), None, "rejected key's secret not kept");
    let same_secret = keys.create_key(new_key("story-key-copy", None, 0x10, now)).await;
    assert!(matches!(same_secret, Err(StoreError::Conflict(_))), "duplicate secret: {same_secret:?}");
    assert!(matches!(keys.get_key("story-key-copy").await, Err(StoreError::NotFound)), "rejected key not kept");

    // A key's team must exist.
    let orphan = keys.create_key(new_key("story-key-orphan", Some("story-team-none"), 0x12, now)).await;
    assert!(matches!(orphan, Err(StoreError::NotFound)), "key for unknown team: {orphan:?}");
}

async fn key_lists_are_ordered_and_filtered(stores: &Stores, now: OffsetDateTime) {
    let keys = &stores.keys;
    // Inserted out of order: lists go by created_at, then id.
    let earlier = now - Duration::seconds(5);
    for (id, team, tag) in
        [("story-key-c", Some(RED), 0x22), ("story-key-a", Some(RED), 0x20), ("story-key-b", Some(BLUE), 0x21)]
    {
        keys.create_key(new_key(id, team, tag, earlier)).await.unwrap();
    }
    let tierless = NewKey { tier: None, ..new_key("story-key-lone", None, 0x23, now) };
    keys.create_key(tierless.clone()).await.unwrap();
    assert_eq!(keys.get_key("story-key-lone").await.unwrap(), key_record(&tierless), "no tier of its own");
    keys.revoke_key("story-key-c", now).await.unwrap();

    let all = KeyFilter { team: None, include_revoked: true };
    assert_eq!(
        story_ids(keys.list_keys(&all).await.unwrap()),
        ["story-key-full", "story-key-a", "story-key-b", "story-key-c", "story-key-lone"]
    );
    let active = KeyFilter { team: None, include_revoked: false };
    assert_eq!(
        story_ids(keys.list_keys(&active).await.unwrap()),
        ["story-key-full", "story-key-a", "story-key-b", "story-key-lone"],
        "revoked keys left out unless asked for"
    );
    let red_all = KeyFilter { team: Some(RED.into()), include_revoked: true };
    assert_eq!(ids(keys.list_keys(&red_all).await.unwrap()), ["story-key-full", "story-key-a", "story-key-c"]);
    let red_active = KeyFilter { team: Some(RED.into()), include_revoked: false };
    assert_eq!(ids(keys.list_keys(&red_active).await.unwrap()), ["story-key-full", "story-key-a"]);
    let nobody = KeyFilter { team: Some("story-team-none".into()), include_revoked: true };
    assert!(keys.list_keys(&nobody).await.unwrap().is_empty());
}

async fn key_patches_replace_only_given_fields(stores: &Stores, now: OffsetDateTime) {
    let keys = &stores.keys;
    let original = keys.get_key("story-key-full").await.unwrap();

    let renamed = keys.update_key("story-key-full", KeyPatch { name: Some("renamed".into()), ..Default::default() });
    let renamed = renamed.await.unwrap();
    assert_eq!(renamed, KeyRecord { name: "renamed".into(), ..original.clone() }, "only the name changed");

    let everything = KeyPatch {
        name: Some("everything".into()),
        tier: Some(Some("premium".into())),
        models: Some(vec!["phi-3".into()]),
        scopes: Some(vec![]),
        allowed_cidrs: Some(vec!["192.168.1.0/24".into()]),
        limits: Some(LimitOverrides { max_concurrent: Some(4), ..Default::default() }),
        metadata: Some(json!(["a", 1, null])),
        expires_at: Some(Some(now + Duration::days(1))),
        capture_content: Some(false),
    };
    let patched = keys.update_key("story-key-full", everything.clone()).await.unwrap();
    let expected = KeyRecord {
        name: everything.name.unwrap(),
        tier: everything.tier.unwrap(),
        models: everything.models.unwrap(),
        scopes: everything.scopes.unwrap(),
        allowed_cidrs: everything.allowed_cidrs.unwrap(),
        limits: everything.limits.unwrap(),
        metadata: everything.metadata.unwrap(),
        expires_at: everything.expires_at.unwrap(),
        capture_content: everything.capture_content.unwrap(),
        ..original.clone()
    };
    assert_eq!(patched, expected, "every given field replaced");
    assert_eq!(keys.get_key("story-key-full").await.unwrap(), expected, "the patch is stored");

    // `Some(None)` clears the expiry, or the key's own tier; an empty patch changes nothing.
    let cleared = keys.update_key("story-key-full", KeyPatch { expires_at: Some(None), ..Default::default() });
    assert_eq!(cleared.await.unwrap(), KeyRecord { expires_at: None, ..expected.clone() });
    let cleared = keys.update_key("story-key-full", KeyPatch { tier: Some(None), ..Default::default() });
    let expected = KeyRecord { expires_at: None, tier: None, ..expected };
    assert_eq!(cleared.await.unwrap(), expected);
    assert_eq!(keys.get_key("story-key-full").await.unwrap(), expected, "a key without a tier of its own is stored");
    let unchanged = keys.update_key("story-key-full", KeyPatch::default()).await.unwrap();
    assert_eq!(unchanged, expected);

    let missing = keys.update_key("story-key-none", KeyPatch::default()).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "update of unknown key: {missing:?}");
}

async fn revocation_keeps_the_first_time(stores: &Stores, now: OffsetDateTime) {
    let keys = &stores.keys;
    let revoked = keys.revoke_key("story-key-a", now).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(now));
    let again = keys.revoke_key("story-key-a", now + Duration::minutes(1)).await.unwrap();
    assert_eq!(again, revoked, "a second revoke keeps the first time");

    // The store still finds a revoked key by its secret: refusing it is the caller's job.
    let found = keys.find_key_by_secret(&secret(0x20)).await.unwrap().expect("revoked key still found");
    assert_eq!(found.key.revoked_at, Some(now));

    let missing = keys.revoke_key("story-key-none", now).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "revoke of unknown key: {missing:?}");
}

async fn rotation_ends_older_secrets_without_extending_them(stores: &Stores, now: OffsetDateTime) {
    let keys = &stores.keys;
    let id = "story-key-rotating";
    let original = keys.create_key(new_key(id, Some(BLUE), 0x30, now)).await.unwrap();
    let (first, second, third, fourth) = (0x30, 0x31, 0x32, 0x33);

    // First rotation: the new secret has no end, the old one ends at the grace time.
    let in_an_hour = now + Duration::hours(1);
    let rotated = keys.rotate_key(id, rotation(second, in_an_hour)).await.unwrap();
    assert_eq!(rotated, KeyRecord { display_prefix: prefix(second), ..original.clone() }, "only the prefix changed");
    assert_eq!(secret_end(stores, second).await, None);
    assert_eq!(secret_end(stores, first).await, Some(in_an_hour));

    // A longer grace ends the newer old secret but does not extend the one already ending sooner.
    let in_two_hours = now + Duration::hours(2);
    keys.rotate_key(id, rotation(third, in_two_hours)).await.unwrap();
    assert_eq!(secret_end(stores, third).await, None);
    assert_eq!(secret_end(stores, second).await, Some(in_two_hours));
    assert_eq!(secret_end(stores, first).await, Some(in_an_hour), "an earlier end is kept");

    // A shorter grace (here none at all) shortens every older secret.
    keys.rotate_key(id, rotation(fourth, now)).await.unwrap();
    for old in [first, second, third] {
        assert_eq!(secret_end(stores, old).await, Some(now), "secret {old:#x} ends at the shorter grace");
    }
    assert_eq!(secret_end(stores, fourth).await, None);
    assert_eq!(keys.get_key(id).await.unwrap().display_prefix, prefix(fourth));

    // A secret already on file cannot be reused; unknown keys cannot rotate.
    let reused = keys.rotate_key(id, rotation(first, now - Duration::hours(1))).await;
    assert!(matches!(reused, Err(StoreError::Conflict(_))), "rotation to a known secret: {reused:?}");
    assert_eq!(secret_end(stores, fourth).await, None, "a failed rotation ends no secret");
    assert_eq!(secret_end(stores, first).await, Some(now), "a failed rotation changes no end");
    assert_eq!(keys.get_key(id).await.unwrap().display_prefix, prefix(fourth), "nor the prefix");
    let missing = keys.rotate_key("story-key-none", rotation(0x3F, now)).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "rotation of unknown key: {missing:?}");
}

async fn touches_keep_the_latest_use(stores: &Stores, now: OffsetDateTime) {
    let keys = &stores.keys;
    let later = now + Duration::seconds(20);
    let uses = [("story-key-b".to_string(), later), ("story-key-lone".to_string(), now)];
    keys.touch_keys(&uses).await.unwrap();
    assert_eq!(keys.get_key("story-key-b").await.unwrap().last_used_at, Some(later));
    assert_eq!(keys.get_key("story-key-lone").await.unwrap().last_used_at, Some(now));

    // An older use arriving late does not move the time back; unknown ids are skipped.
    let stale = [("story-key-b".to_string(), now), ("story-key-none".to_string(), now)];
    keys.touch_keys(&stale).await.unwrap();
    assert_eq!(keys.get_key("story-key-b").await.unwrap().last_used_at, Some(later));
    keys.touch_keys(&[]).await.unwrap();
}

async fn admin_tokens_are_unique_findable_and_revocable(stores: &Stores, now: OffsetDateTime) {
    let tokens = &stores.tokens;
    // Created out of order: lists go by created_at, then id.
    let team_admin =
        NewAdminToken { role: Role::TeamAdmin, team: Some(RED.into()), ..new_token("story-token-team", 0x41, now) };
    let admin = new_token("story-token-admin", 0x40, now - Duration::seconds(1));
    let team_admin_record = tokens.create_token(team_admin.clone()).await.unwrap();
    let admin_record = tokens.create_token(admin.clone()).await.unwrap();
    assert_eq!(team_admin_record.role, Role::TeamAdmin);
    assert_eq!(team_admin_record.team.as_deref(), Some(RED));
    assert_eq!(admin_record.id, admin.id);
    assert_eq!(admin_record.revoked_at, None);

    let found = tokens.find_token_by_secret(&secret(0x40)).await.unwrap();
    assert_eq!(found, Some(admin_record.clone()));
    assert_eq!(tokens.find_token_by_secret(&secret(0xEF)).await.unwrap(), None, "unknown token is a miss");

    let same_id = tokens.create_token(new_token("story-token-admin", 0x42, now)).await;
    assert!(matches!(same_id, Err(StoreError::Conflict(_))), "duplicate token id: {same_id:?}");
    let same_secret = tokens.create_token(new_token("story-token-copy", 0x40, now)).await;
    assert!(matches!(same_secret, Err(StoreError::Conflict(_))), "duplicate token secret: {same_secret:?}");
    let orphan = NewAdminToken { team: Some("story-team-none".into()), ..new_token("story-token-orphan", 0x43, now) };
    let orphan = tokens.create_token(orphan).await;
    assert!(matches!(orphan, Err(StoreError::NotFound)), "token for unknown team: {orphan:?}");

    let listed: Vec<_> =
        tokens.list_tokens().await.unwrap().into_iter().filter(|t| t.id.starts_with("story-")).collect();
    assert_eq!(listed, [admin_record, team_admin_record]);

    // Revocation is idempotent, and a revoked token is still found (the caller refuses it).
    let revoked = tokens.revoke_token("story-token-team", now).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(now));
    let again = tokens.revoke_token("story-token-team", now + Duration::minutes(1)).await.unwrap();
    assert_eq!(again, revoked, "a second revoke keeps the first time");
    assert_eq!(tokens.find_token_by_secret(&secret(0x41)).await.unwrap(), Some(revoked));
    let missing = tokens.revoke_token("story-token-none", now).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "revoke of unknown token: {missing:?}");
}

/// The first day of the story's usage; the second is `DAY_ONE + 1 day`. Far in the past, so no
/// live traffic can land in these hours.
const DAY_ONE: OffsetDateTime = datetime!(2001-02-03 00:00 UTC);
const MODEL_1: &str = "story-model-1";
const MODEL_2: &str = "story-model-2";
/// Usage of a key that is not on file: usage outlives keys.
const GONE_KEY: &str = "story-key-gone";

async fn usage_adds_up_exactly(stores: &Stores) {
    let usage = &stores.usage;
    let day_two = DAY_ONE + Duration::days(1);
    usage.record_usage(&[]).await.unwrap();

    // Two records for one (hour, key, model) row in separate batches, one of them with a second
    // row alongside; a third record for that row twice in one batch.
    let first =
        used(DAY_ONE + Duration::minutes(10 * 60 + 15), "story-key-a", Some(RED), MODEL_1, [1, 100, 50, 1_000, 0]);
    let other_model =
        used(DAY_ONE + Duration::minutes(11 * 60 + 5), "story-key-a", Some(RED), MODEL_2, [1, 7, 3, 70, 0]);
    usage.record_usage(&[first.clone(), other_model]).await.unwrap();
    let second = used(DAY_ONE + Duration::minutes(10 * 60 + 45), "story-key-a", Some(RED), MODEL_1, [2, 10, 5, 500, 1]);
    let blue = used(day_two + Duration::hours(9), "story-key-b", Some(BLUE), MODEL_1, [4, 40, 20, 4_000, 2]);
    let gone = used(day_two + Duration::minutes(9 * 60 + 30), GONE_KEY, None, MODEL_2, [1, 1, 1, 0, 0]);
    usage.record_usage(&[second, blue, gone.clone()]).await.unwrap();

    let by_hour = |key: &str| UsageQuery {
        key_id: Some(key.into()),
        group_by: UsageGrouping::Hour,
        ..story_query(DAY_ONE, day_two + Duration::days(1))
    };
    let rows = usage.usage_report(&by_hour("story-key-a")).await.unwrap();
    assert_eq!(
        rows,
        [
            UsageRow { bucket: Some(DAY_ONE + Duration::hours(10)), ..sums([3, 110, 55, 1_500, 1]) },
            UsageRow { bucket: Some(DAY_ONE + Duration::hours(11)), ..sums([1, 7, 3, 70, 0]) },
        ],
        "records of one hour, key and model add up; other models and hours stay apart"
    );

    // The same record again counts again, exactly once more; twice in one batch, twice more.
    usage.record_usage(std::slice::from_ref(&gone)).await.unwrap();
    let rows = usage.usage_report(&by_hour(GONE_KEY)).await.unwrap();
    assert_eq!(rows, [UsageRow { bucket: Some(day_two + Duration::hours(9)), ..sums([2, 2, 2, 0, 0]) }]);
    usage.record_usage(&[gone.clone(), gone]).await.unwrap();
    let rows = usage.usage_report(&by_hour(GONE_KEY)).await.unwrap();
    assert_eq!(rows, [UsageRow { bucket: Some(day_two + Duration::hours(9)), ..sums([4, 4, 4, 0, 0]) }]);

    // A record of an hour already on file but under another team does not move the row's team.
    let moved = UsageRecord { team: Some(BLUE.into()), requests: 0, ..first };
    usage.record_usage(&[moved]).await.unwrap();
    let by_key = UsageQuery { group_by: UsageGrouping::Key, ..by_hour("story-key-a") };
    let rows = usage.usage_report(&by_key).await.unwrap();
    assert_eq!(
        rows,
        [UsageRow { key_id: Some("story-key-a".into()), team: Some(RED.into()), ..sums([4, 217, 108, 2_570, 1]) }],
        "a row keeps its first team (and a zero-request record still adds its tokens)"
    );
}

/// Reads the rows [`usage_adds_up_exactly`] left: key a 4 requests, 217 + 108 tokens, cost 2 570
/// on day one (10:00 and 11:00); key b on day two at 09:00; the gone key on day two at 09:00.
async fn usage_totals_count_whole_hours_since(stores: &Stores) {
    let day_two = DAY_ONE + Duration::days(1);
    let a = UsageTotal { key_id: "story-key-a".into(), team: Some(RED.into()), tokens: 325, cost_pico: 2_570 };
    let b = UsageTotal { key_id: "story-key-b".into(), team: Some(BLUE.into()), tokens: 60, cost_pico: 4_000 };
    let gone = UsageTotal { key_id: GONE_KEY.into(), team: None, tokens: 8, cost_pico: 0 };

    assert_eq!(story_totals(stores, DAY_ONE).await, [a.clone(), b.clone(), gone.clone()], "ordered by key id");
    assert_eq!(
        story_totals(stores, DAY_ONE + Duration::hours(11)).await,
        [UsageTotal { tokens: 10, cost_pico: 70, ..a.clone() }, b.clone(), gone.clone(),]
    );
    assert_eq!(story_totals(stores, day_two).await, [b.clone(), gone.clone()]);
    // A time inside an hour takes the whole hour.
    assert_eq!(story_totals(stores, day_two + Duration::minutes(9 * 60 + 59)).await, [b, gone]);
    assert_eq!(story_totals(stores, day_two + Duration::hours(10)).await, []);
}

async fn usage_reports_group_filter_and_order(stores: &Stores) {
    let usage = &stores.usage;
    let day_two = DAY_ONE + Duration::days(1);
    let everything = story_query(DAY_ONE, day_two + Duration::days(1));
    let report = |query: UsageQuery| async move { usage.usage_report(&query).await.unwrap() };

    let by_day = report(UsageQuery { group_by: UsageGrouping::Day, ..everything.clone() }).await;
    assert_eq!(
        by_day,
        [
            UsageRow { bucket: Some(DAY_ONE), ..sums([4, 217, 108, 2_570, 1]) },
            UsageRow { bucket: Some(day_two), ..sums([8, 44, 24, 4_000, 2]) },
        ]
    );

    let by_model = report(UsageQuery { group_by: UsageGrouping::Model, ..everything.clone() }).await;
    assert_eq!(
        by_model,
        [
            UsageRow { model: Some(MODEL_1.into()), ..sums([7, 250, 125, 6_500, 3]) },
            UsageRow { model: Some(MODEL_2.into()), ..sums([5, 11, 7, 70, 0]) },
        ]
    );

    let by_key = report(UsageQuery { group_by: UsageGrouping::Key, ..everything.clone() }).await;
    assert_eq!(
        by_key,
        [
            UsageRow { key_id: Some("story-key-a".into()), team: Some(RED.into()), ..sums([4, 217, 108, 2_570, 1]) },
            UsageRow { key_id: Some("story-key-b".into()), team: Some(BLUE.into()), ..sums([4, 40, 20, 4_000, 2]) },
            UsageRow { key_id: Some(GONE_KEY.into()), team: None, ..sums([4, 4, 4, 0, 0]) },
        ]
    );

    let by_team = report(UsageQuery { group_by: UsageGrouping::Team, ..everything.clone() }).await;
    assert_eq!(
        by_team,
        [
            UsageRow { team: Some(BLUE.into()), ..sums([4, 40, 20, 4_000, 2]) },
            UsageRow { team: Some(RED.into()), ..sums([4, 217, 108, 2_570, 1]) },
            UsageRow { team: None, ..sums([4, 4, 4, 0, 0]) },
        ],
        "teams by name, the keys in no team last"
    );

    // Filters combine; `until` is exclusive and `since` takes its whole hour.
    let red_model_1 = UsageQuery {
        team: Some(RED.into()),
        model: Some(MODEL_1.into()),
        group_by: UsageGrouping::Key,
        ..everything.clone()
    };
    assert_eq!(
        report(red_model_1).await,
        [UsageRow { key_id: Some("story-key-a".into()), team: Some(RED.into()), ..sums([3, 210, 105, 2_500, 1]) }]
    );
    let key_b = UsageQuery { key_id: Some("story-key-b".into()), ..everything.clone() };
    assert_eq!(report(key_b).await, [UsageRow { bucket: Some(day_two), ..sums([4, 40, 20, 4_000, 2]) }]);
    let before_day_two_nine = UsageQuery {
        group_by: UsageGrouping::Hour,
        ..story_query(DAY_ONE + Duration::minutes(11 * 60 + 30), day_two + Duration::hours(9))
    };
    assert_eq!(
        report(before_day_two_nine).await,
        [UsageRow { bucket: Some(DAY_ONE + Duration::hours(11)), ..sums([1, 7, 3, 70, 0]) }]
    );

    // Nothing matching is an empty report, never an error.
    let nobody = UsageQuery { key_id: Some("story-key-none".into()), ..everything.clone() };
    assert_eq!(report(nobody).await, []);
    let no_model = UsageQuery { model: Some("story-model-none".into()), group_by: UsageGrouping::Team, ..everything };
    assert_eq!(report(no_model).await, []);
    let empty_window = story_query(DAY_ONE - Duration::days(30), DAY_ONE);
    for group_by in UsageGrouping::ALL {
        assert_eq!(report(UsageQuery { group_by, ..empty_window.clone() }).await, [], "{group_by:?}");
    }
}

/// `[requests, prompt, completion, cost_pico, estimated]` at `at`.
fn used(at: OffsetDateTime, key: &str, team: Option<&str>, model: &str, counts: [u64; 5]) -> UsageRecord {
    let [requests, prompt_tokens, completion_tokens, cost_pico, estimated_requests] = counts;
    UsageRecord {
        at,
        key_id: key.into(),
        team: team.map(Into::into),
        model: model.into(),
        requests,
        prompt_tokens,
        completion_tokens,
        cost_pico,
        estimated_requests,
    }
}

/// A row with these `[requests, prompt, completion, cost_pico, estimated]` sums and no labels.
fn sums(counts: [u64; 5]) -> UsageRow {
    let [requests, prompt_tokens, completion_tokens, cost_pico, estimated_requests] = counts;
    UsageRow { requests, prompt_tokens, completion_tokens, cost_pico, estimated_requests, ..UsageRow::default() }
}

fn story_query(since: OffsetDateTime, until: OffsetDateTime) -> UsageQuery {
    UsageQuery { key_id: None, team: None, model: None, since, until, group_by: UsageGrouping::Day }
}

async fn story_totals(stores: &Stores, since: OffsetDateTime) -> Vec<UsageTotal> {
    let totals = stores.usage.usage_totals_since(since).await.unwrap();
    totals.into_iter().filter(|total| total.key_id.starts_with("story-")).collect()
}

/// A stand-in secret hash; the store never sees secrets, so any distinct 32 bytes will do.
fn secret(tag: u8) -> [u8; 32] {
    [tag; 32]
}

fn prefix(tag: u8) -> String {
    format!("pcl_{tag:02x}")
}

fn rotation(tag: u8, old_valid_until: OffsetDateTime) -> Rotation {
    Rotation { new_secret: secret(tag), new_display_prefix: prefix(tag), old_valid_until }
}

async fn secret_end(stores: &Stores, tag: u8) -> Option<OffsetDateTime> {
    let found = stores.keys.find_key_by_secret(&secret(tag)).await.unwrap();
    found.unwrap_or_else(|| panic!("secret {tag:#x} still on file")).secret_valid_until
}

fn new_key(id: &str, team: Option<&str>, tag: u8, created_at: OffsetDateTime) -> NewKey {
    NewKey {
        id: id.into(),
        name: format!("{id} name"),
        secret_hash: secret(tag),
        display_prefix: prefix(tag),
        team: team.map(Into::into),
        tier: Some("default".into()),
        models: vec![],
        scopes: vec![],
        allowed_cidrs: vec![],
        limits: LimitOverrides::default(),
        metadata: json!({}),
        expires_at: None,
        capture_content: false,
        created_by: "story-admin".into(),
        created_at,
    }
}

fn new_token(id: &str, tag: u8, created_at: OffsetDateTime) -> NewAdminToken {
    NewAdminToken {
        id: id.into(),
        name: format!("{id} name"),
        secret_hash: secret(tag),
        display_prefix: prefix(tag),
        role: Role::Admin,
        team: None,
        created_by: "story-admin".into(),
        created_at,
    }
}

/// What a freshly created key must look like.
fn key_record(key: &NewKey) -> KeyRecord {
    KeyRecord {
        id: key.id.clone(),
        name: key.name.clone(),
        display_prefix: key.display_prefix.clone(),
        team: key.team.clone(),
        tier: key.tier.clone(),
        models: key.models.clone(),
        scopes: key.scopes.clone(),
        allowed_cidrs: key.allowed_cidrs.clone(),
        limits: key.limits.clone(),
        metadata: key.metadata.clone(),
        expires_at: key.expires_at,
        capture_content: key.capture_content,
        created_by: key.created_by.clone(),
        created_at: key.created_at,
        revoked_at: None,
        last_used_at: None,
    }
}

fn team_record(team: &NewTeam) -> TeamRecord {
    TeamRecord {
        name: team.name.clone(),
        tier: team.tier.clone(),
        limits: team.limits.clone(),
        metadata: team.metadata.clone(),
        capture_content: team.capture_content,
        created_at: team.created_at,
    }
}

fn ids(keys: Vec<KeyRecord>) -> Vec<String> {
    keys.into_iter().map(|k| k.id).collect()
}

/// Ids of the story's own keys, in list order.
fn story_ids(keys: Vec<KeyRecord>) -> Vec<String> {
    ids(keys).into_iter().filter(|id| id.starts_with("story-")).collect()
}
