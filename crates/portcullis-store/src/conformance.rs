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
//! - The audit log gives back every record exactly as written: every field, any `u64` (even above
//!   `i64::MAX`), `Some("")` apart from `None`, `ts` to the millisecond. Appending skips a
//!   `(node, seq)` already stored and one at or below its node's checkpoint (retention removed
//!   it: a late replay must not bring it back). Queries go by (`ts`, node, seq); `since` is
//!   inclusive, `until` and the cursor exclusive. Nodes are listed by name.
//! - Retention deletes, per node, only the start of the chain: the records before the first one
//!   not older than `before` (so a record after a clock step back waits for the newer one before
//!   it). The checkpoint moves to the last deleted record; `last_audit` falls back to it once no
//!   record of the node is left, so the chain continues where it was. The audit checks use a day
//!   long past, so retention in a fresh database only reaches the story's own records.
//! - The change log (see [`crate::ChangeLog`]): every successful call of `create_key`,
//!   `update_key`, `revoke_key`, `rotate_key`, `create_team`, `update_team`, `create_token` and
//!   `revoke_token` appends exactly one change naming its row, even a call that changed nothing
//!   (a second revoke); reads, `touch_keys`, usage, audit and failed mutations append none.
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
    AuditCheckpoint, AuditCursor, AuditDecision, AuditFilter, AuditKind, AuditRecord, KeyFilter, KeyPatch, KeyRecord,
    NewAdminToken, NewKey, NewTeam, Rotation, StoreError, Stores, TeamPatch, TeamRecord, UsageGrouping, UsageQuery,
    UsageRecord, UsageRow, UsageTotal,
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
    audit_appends_once_and_reads_back_exactly(stores).await;
    audit_queries_filter_order_and_page(stores).await;
    audit_retention_moves_checkpoints_and_keeps_chains_whole(stores).await;
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
    keys.create_key(new_key("story-key-lone", None, 0x23, now)).await.unwrap();
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
        tier: Some("premium".into()),
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

    // `Some(None)` clears the expiry; an empty patch changes nothing.
    let cleared = keys.update_key("story-key-full", KeyPatch { expires_at: Some(None), ..Default::default() });
    assert_eq!(cleared.await.unwrap(), KeyRecord { expires_at: None, ..expected.clone() });
    let unchanged = keys.update_key("story-key-full", KeyPatch::default()).await.unwrap();
    assert_eq!(unchanged, KeyRecord { expires_at: None, ..expected });

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

/// The day of the story's audit records: far in the past, so time filters and retention see only
/// them.
const AUDIT_DAY: OffsetDateTime = datetime!(2002-03-04 00:00 UTC);
const NODE_A: &str = "story-node-a";
const NODE_B: &str = "story-node-b";
const NODE_C: &str = "story-node-c";

async fn audit_appends_once_and_reads_back_exactly(stores: &Stores) {
    let audit = &stores.audit;
    audit.append_audit(&[]).await.unwrap();
    assert_eq!(audit.last_audit(NODE_A).await.unwrap(), None, "no chain yet");
    assert_eq!(audit.audit_checkpoint(NODE_A).await.unwrap(), None);
    assert!(story_nodes(stores).await.is_empty());

    let (a, b) = (node_a_records(), node_b_records());
    let first = [&a[..3], &b[..1]].concat();
    audit.append_audit(&first).await.unwrap();
    // Replayed whole, then partly again with the rest (out of order within the batch).
    audit.append_audit(&first).await.unwrap();
    let mut second = [&a[2..], &b[..]].concat();
    second.reverse();
    audit.append_audit(&second).await.unwrap();
    // A different record under a stored (node, seq) is skipped, not stored over the first.
    let forged = AuditRecord { status: 200, hash: "story-forged".into(), ..a[1].clone() };
    audit.append_audit(&[forged]).await.unwrap();

    assert_eq!(audit.audit_chain(NODE_A, 0, 100).await.unwrap(), a, "every field as written, once, by seq");
    assert_eq!(audit.audit_chain(NODE_B, 0, 100).await.unwrap(), b);
    assert_eq!(audit.audit_chain(NODE_A, 2, 2).await.unwrap(), a[2..4], "after seq 2, two records");
    assert_eq!(audit.audit_chain(NODE_A, 6, 100).await.unwrap(), []);
    assert_eq!(audit.audit_chain("story-node-none", 0, 100).await.unwrap(), []);
    assert_eq!(audit.last_audit(NODE_A).await.unwrap(), Some((6, a[5].hash.clone())));
    assert_eq!(audit.last_audit(NODE_B).await.unwrap(), Some((3, b[2].hash.clone())));
    assert_eq!(audit.last_audit("story-node-none").await.unwrap(), None);
    assert_eq!(story_nodes(stores).await, [NODE_A, NODE_B]);
}

/// Reads what [`audit_appends_once_and_reads_back_exactly`] stored. By (ts, node, seq): A1, A2
/// and B1 (same time: node decides), A3, B2, A4 and B3 (same time), A5, A6.
async fn audit_queries_filter_order_and_page(stores: &Stores) {
    let audit = &stores.audit;
    let (a, b) = (node_a_records(), node_b_records());
    let ordered = [&a[0], &a[1], &b[0], &a[2], &b[1], &a[3], &b[2], &a[4], &a[5]].map(Clone::clone);
    let day =
        AuditFilter { since: Some(AUDIT_DAY), until: Some(AUDIT_DAY + Duration::days(1)), ..AuditFilter::default() };
    let query = |filter: AuditFilter| async move { audit.query_audit(&filter, None, 100).await.unwrap() };
    let refs = |records: Vec<AuditRecord>| -> Vec<(String, u64)> {
        records.into_iter().map(|record| (record.node, record.seq)).collect()
    };
    let expect = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
        pairs.iter().map(|(node, seq)| (node.to_string(), *seq)).collect()
    };

    assert_eq!(query(day.clone()).await, ordered, "oldest first; same time by node, then seq");

    let checks: [(AuditFilter, &[(&str, u64)]); 14] = [
        (AuditFilter { node: Some(NODE_B.into()), ..day.clone() }, &[(NODE_B, 1), (NODE_B, 2), (NODE_B, 3)]),
        (AuditFilter { key_id: Some("story-key-a".into()), ..day.clone() }, &[(NODE_A, 1), (NODE_A, 4), (NODE_A, 6)]),
        (AuditFilter { team: Some(BLUE.into()), ..day.clone() }, &[(NODE_A, 2), (NODE_B, 2)]),
        (
            AuditFilter { model: Some(MODEL_1.into()), ..day.clone() },
            &[(NODE_A, 1), (NODE_B, 1), (NODE_B, 2), (NODE_A, 4)],
        ),
        (AuditFilter { status: Some(200), ..day.clone() }, &[(NODE_A, 1), (NODE_A, 3), (NODE_B, 2), (NODE_A, 6)]),
        (AuditFilter { decision: Some(AuditDecision::Deny), ..day.clone() }, &[(NODE_A, 2), (NODE_B, 1), (NODE_A, 5)]),
        (AuditFilter { decision: Some(AuditDecision::Error), ..day.clone() }, &[(NODE_A, 4)]),
        (AuditFilter { kind: Some(AuditKind::Admin), ..day.clone() }, &[(NODE_A, 3)]),
        (AuditFilter { kind: Some(AuditKind::Security), ..day.clone() }, &[(NODE_A, 5)]),
        (AuditFilter { request_id: Some("story-req-b1".into()), ..day.clone() }, &[(NODE_B, 1)]),
        // `since` is inclusive, `until` exclusive.
        (AuditFilter { since: Some(a[3].ts), ..day.clone() }, &[(NODE_A, 4), (NODE_B, 3), (NODE_A, 5), (NODE_A, 6)]),
        (
            AuditFilter { until: Some(a[3].ts), ..day.clone() },
            &[(NODE_A, 1), (NODE_A, 2), (NODE_B, 1), (NODE_A, 3), (NODE_B, 2)],
        ),
        // Filters combine.
        (
            AuditFilter { key_id: Some("story-key-a".into()), model: Some(MODEL_2.into()), ..day.clone() },
            &[(NODE_A, 6)],
        ),
        (AuditFilter { key_id: Some("story-key-none".into()), ..day.clone() }, &[]),
    ];
    for (filter, expected) in checks {
        assert_eq!(refs(query(filter.clone()).await), expect(expected), "{filter:?}");
    }
    let empty_window = AuditFilter { until: Some(AUDIT_DAY), ..day.clone() };
    assert_eq!(query(empty_window).await, []);

    // Pages of four, each continuing after the last record of the one before, add up to the whole.
    let mut pages = Vec::new();
    let mut cursor: Option<AuditCursor> = None;
    loop {
        let page = audit.query_audit(&day, cursor.as_ref(), 4).await.unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some(AuditCursor { ts: last.ts, node: last.node.clone(), seq: last.seq });
        pages.push(page);
        assert!(pages.len() <= 3, "nine records fill three pages of four");
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 1]);
    assert_eq!(pages.concat(), ordered);

    // The cursor's tie-break: after A4 comes B3, at the same time.
    let after_a4 = AuditCursor { ts: a[3].ts, node: NODE_A.into(), seq: 4 };
    assert_eq!(refs(audit.query_audit(&day, Some(&after_a4), 2).await.unwrap()), expect(&[(NODE_B, 3), (NODE_A, 5)]));
    // And with a filter, one at a time.
    let denied = AuditFilter { decision: Some(AuditDecision::Deny), ..day.clone() };
    let after_a2 = AuditCursor { ts: a[1].ts, node: NODE_A.into(), seq: 2 };
    assert_eq!(refs(audit.query_audit(&denied, Some(&after_a2), 1).await.unwrap()), expect(&[(NODE_B, 1)]));
    assert_eq!(audit.query_audit(&day, None, 0).await.unwrap(), []);
}

/// Continues from [`audit_queries_filter_order_and_page`]'s records.
async fn audit_retention_moves_checkpoints_and_keeps_chains_whole(stores: &Stores) {
    let audit = &stores.audit;
    let (a, b) = (node_a_records(), node_b_records());
    let checkpoint = |node: &str, record: &AuditRecord| AuditCheckpoint {
        node: node.into(),
        seq: record.seq,
        hash: record.hash.clone(),
    };

    assert_eq!(audit.delete_audit_before(AUDIT_DAY).await.unwrap(), 0, "nothing that old");
    assert_eq!(audit.audit_checkpoint(NODE_A).await.unwrap(), None);

    // A4's time: A1-A3 and B1-B2 are older.
    assert_eq!(audit.delete_audit_before(a[3].ts).await.unwrap(), 5);
    assert_eq!(audit.audit_checkpoint(NODE_A).await.unwrap(), Some(checkpoint(NODE_A, &a[2])));
    assert_eq!(audit.audit_checkpoint(NODE_B).await.unwrap(), Some(checkpoint(NODE_B, &b[1])));
    assert_eq!(audit.audit_chain(NODE_A, 0, 100).await.unwrap(), a[3..]);
    assert_eq!(audit.audit_chain(NODE_B, 0, 100).await.unwrap(), b[2..]);
    assert_eq!(audit.last_audit(NODE_A).await.unwrap(), Some((6, a[5].hash.clone())), "the chain's end stays");

    // Again: nothing more to delete, the checkpoints stay; a replay does not bring records back.
    assert_eq!(audit.delete_audit_before(a[3].ts).await.unwrap(), 0);
    assert_eq!(audit.audit_checkpoint(NODE_A).await.unwrap(), Some(checkpoint(NODE_A, &a[2])));
    audit.append_audit(&[&a[..], &b[..]].concat()).await.unwrap();
    assert_eq!(audit.audit_chain(NODE_A, 0, 100).await.unwrap(), a[3..], "deleted records stay deleted");
    assert_eq!(audit.audit_chain(NODE_B, 0, 100).await.unwrap(), b[2..]);

    // Every record of node B goes: its chain continues from the checkpoint.
    assert_eq!(audit.delete_audit_before(a[4].ts).await.unwrap(), 2, "A4 and B3");
    assert_eq!(audit.audit_checkpoint(NODE_B).await.unwrap(), Some(checkpoint(NODE_B, &b[2])));
    assert_eq!(audit.audit_chain(NODE_B, 0, 100).await.unwrap(), []);
    assert_eq!(audit.last_audit(NODE_B).await.unwrap(), Some((3, b[2].hash.clone())), "from the checkpoint");
    assert_eq!(story_nodes(stores).await, [NODE_A, NODE_B], "a node with only a checkpoint is still listed");
    let b4 = AuditRecord { reason: Some("restarted".into()), ..link(audited(NODE_B, 4, 7_000), &b[2]) };
    audit.append_audit(std::slice::from_ref(&b4)).await.unwrap();
    assert_eq!(audit.last_audit(NODE_B).await.unwrap(), Some((4, b4.hash.clone())));

    // Node C's clock stepped: C2 is stamped later than C3. Only the chain's start goes, so C3
    // waits for C2 even though it is older than the cut.
    let c1 = audited(NODE_C, 1, 1_000);
    let c2 = link(audited(NODE_C, 2, 9_000), &c1);
    let c3 = link(audited(NODE_C, 3, 2_000), &c2);
    audit.append_audit(&[c1.clone(), c2.clone(), c3.clone()]).await.unwrap();
    assert_eq!(audit.delete_audit_before(AUDIT_DAY + Duration::seconds(5)).await.unwrap(), 1);
    assert_eq!(audit.audit_checkpoint(NODE_C).await.unwrap(), Some(checkpoint(NODE_C, &c1)));
    assert_eq!(audit.audit_chain(NODE_C, 0, 100).await.unwrap(), [c2, c3.clone()]);
    assert_eq!(audit.audit_chain(NODE_A, 0, 100).await.unwrap(), a[4..], "A5 is not older than the cut");
    assert_eq!(audit.delete_audit_before(AUDIT_DAY + Duration::seconds(10)).await.unwrap(), 5, "A5, A6, B4, C2, C3");
    assert_eq!(audit.audit_checkpoint(NODE_C).await.unwrap(), Some(checkpoint(NODE_C, &c3)));
    assert_eq!(story_nodes(stores).await, [NODE_A, NODE_B, NODE_C]);
}

/// Node A's chain: requests allowed, denied and failed, an admin action, a security event, and
/// one record with every optional field set to values a careless encoding would change.
fn node_a_records() -> Vec<AuditRecord> {
    let a1 = AuditRecord {
        request_id: Some("story-req-a1".into()),
        key_id: Some("story-key-a".into()),
        team: Some(RED.into()),
        model: Some(MODEL_1.into()),
        latency_ms: 12,
        prompt_tokens: Some(10),
        completion_tokens: Some(5),
        cost_pico: Some(1_500),
        ..audited(NODE_A, 1, 1_001)
    };
    let a2 = AuditRecord {
        key_id: Some("story-key-b".into()),
        team: Some(BLUE.into()),
        model: Some(MODEL_2.into()),
        status: 429,
        decision: AuditDecision::Deny,
        reason: Some("rate_limit_exceeded".into()),
        ..link(audited(NODE_A, 2, 2_002), &a1)
    };
    let a3 = AuditRecord {
        kind: AuditKind::Admin,
        admin_token_id: Some("story-token-admin".into()),
        method: Some("POST".into()),
        path: Some("/admin/v1/keys/story-key-c/revoke".into()),
        reason: Some("key.revoke".into()),
        target: Some("story-key-c".into()),
        ..link(audited(NODE_A, 3, 3_003), &a2)
    };
    let a4 = AuditRecord {
        kind: AuditKind::Request,
        request_id: Some("story-req-a4".into()),
        key_id: Some("story-key-a".into()),
        subject: Some("svc:ingest@example".into()),
        team: Some(RED.into()),
        admin_token_id: Some(String::new()),
        client_ip: Some("2001:db8::7".into()),
        method: Some("POST".into()),
        path: Some("/v1/chat/completions?x=1&y=ü".into()),
        model: Some(MODEL_1.into()),
        upstream: Some("http://127.0.0.1:9000".into()),
        status: 502,
        decision: AuditDecision::Error,
        reason: Some("upstream_unavailable".into()),
        target: Some(String::new()),
        stream: true,
        latency_ms: u64::MAX,
        ttfb_ms: Some(0),
        prompt_tokens: Some(i64::MAX as u64 + 1),
        completion_tokens: Some(0),
        usage_estimated: true,
        cost_pico: Some(u64::MAX),
        user_agent: Some(String::new()),
        content: Some("{\"prompt\":\"héllo \\u0000 [EMAIL]\",\n\"completion\":\"🙂 'quoted' \\\"x\\\"\"}".into()),
        ..link(audited(NODE_A, 4, 4_000), &a3)
    };
    let a5 = AuditRecord {
        kind: AuditKind::Security,
        client_ip: Some("203.0.113.9".into()),
        status: 403,
        decision: AuditDecision::Deny,
        reason: Some("client_blocked".into()),
        ..link(audited(NODE_A, 5, 5_005), &a4)
    };
    let a6 = AuditRecord {
        key_id: Some("story-key-a".into()),
        team: Some(RED.into()),
        model: Some(MODEL_2.into()),
        stream: true,
        ttfb_ms: Some(3),
        ..link(audited(NODE_A, 6, 6_006), &a5)
    };
    vec![a1, a2, a3, a4, a5, a6]
}

/// Node B's chain: B1 at A2's time, B3 at A4's.
fn node_b_records() -> Vec<AuditRecord> {
    let b1 = AuditRecord {
        request_id: Some("story-req-b1".into()),
        key_id: Some(GONE_KEY.into()),
        model: Some(MODEL_1.into()),
        status: 401,
        decision: AuditDecision::Deny,
        reason: Some("invalid_api_key".into()),
        ..audited(NODE_B, 1, 2_002)
    };
    let b2 = AuditRecord {
        key_id: Some("story-key-b".into()),
        team: Some(BLUE.into()),
        model: Some(MODEL_1.into()),
        ..link(audited(NODE_B, 2, 3_500), &b1)
    };
    let b3 = AuditRecord { model: Some(MODEL_2.into()), status: 404, ..link(audited(NODE_B, 3, 4_000), &b2) };
    vec![b1, b2, b3]
}

/// An allowed request record with no optional field set, `millis` after [`AUDIT_DAY`]. Hashes
/// are stand-ins: the store never computes them.
fn audited(node: &str, seq: u64, millis: i64) -> AuditRecord {
    AuditRecord {
        seq,
        ts: AUDIT_DAY + Duration::milliseconds(millis),
        node: node.into(),
        kind: AuditKind::Request,
        request_id: None,
        key_id: None,
        subject: None,
        team: None,
        admin_token_id: None,
        client_ip: None,
        method: None,
        path: None,
        model: None,
        upstream: None,
        status: 200,
        decision: AuditDecision::Allow,
        reason: None,
        target: None,
        stream: false,
        latency_ms: 1,
        ttfb_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        usage_estimated: false,
        cost_pico: None,
        user_agent: None,
        content: None,
        prev_hash: "0".repeat(64),
        hash: format!("story-hash-{node}-{seq}"),
    }
}

/// `record` chained after `previous`.
fn link(record: AuditRecord, previous: &AuditRecord) -> AuditRecord {
    AuditRecord { prev_hash: previous.hash.clone(), ..record }
}

async fn story_nodes(stores: &Stores) -> Vec<String> {
    let nodes = stores.audit.audit_nodes().await.unwrap();
    nodes.into_iter().filter(|node| node.starts_with("story-")).collect()
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
        tier: "default".into(),
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
