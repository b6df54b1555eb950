//! The story's change-log chapter: what [`crate::ChangeLog`] must record, and when.

use std::time::Duration as StdDuration;

use portcullis_types::admin::LimitOverrides;
use serde_json::json;
use time::{Duration, OffsetDateTime};

use super::{DAY_ONE, MODEL_1, new_key, new_token, rotation, secret, used};
use crate::{Change, ChangePage, KeyPatch, NewTeam, StoreError, Stores, TeamPatch};

const GREEN: &str = "story-team-green";
const LOGGED_KEY: &str = "story-key-logged";
const LOGGED_TOKEN: &str = "story-token-logged";
/// How long a notification may take to arrive.
const NOTIFY_WITHIN: StdDuration = StdDuration::from_secs(5);

/// Runs after the other chapters, so the log already holds their changes: every check starts
/// from [`crate::ChangeLog::latest_change`].
pub(super) async fn changes_are_logged_once_in_commit_order(stores: &Stores, now: OffsetDateTime) {
    let start = stores.changes.latest_change().await.unwrap();
    let earlier = all_changes(stores, 0).await;
    assert!(!earlier.truncated, "nothing pruned yet");
    assert_eq!(earlier.changes.last().map(|(seq, _)| *seq), Some(start), "the other chapters' changes are logged");
    assert!(earlier.changes.windows(2).all(|pair| pair[0].0 < pair[1].0), "seqs increase");
    assert_eq!(earlier.changes[0].1, Change::Team(super::RED.into()), "the story's first mutation comes first");

    let mut log = Follower { stores, cursor: start };
    each_successful_mutation_appends_one_change(stores, &mut log, now).await;
    reads_usage_and_failures_append_nothing(stores, &mut log, now).await;
    pages_add_up_to_the_whole(stores, start, log.cursor).await;
    notifications_wake_after_a_commit(stores, &mut log).await;
    pruning_truncates_older_cursors_only(stores, &mut log, now).await;
}

/// Reads the log like a replica does: everything after its cursor.
struct Follower<'a> {
    stores: &'a Stores,
    cursor: u64,
}

impl Follower<'_> {
    /// The changes since the last look must be exactly `expected`, in order.
    async fn expect(&mut self, expected: &[Change], what: &str) {
        let page = self.stores.changes.changes_since(self.cursor, 100).await.unwrap();
        assert!(!page.truncated, "{what}: nothing pruned");
        let seqs: Vec<u64> = page.changes.iter().map(|(seq, _)| *seq).collect();
        assert!(seqs.iter().all(|seq| *seq > self.cursor), "{what}: only changes after the cursor: {seqs:?}");
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{what}: seqs increase: {seqs:?}");
        let changes: Vec<Change> = page.changes.into_iter().map(|(_, change)| change).collect();
        assert_eq!(changes, expected, "{what}");
        if let Some(last) = seqs.last() {
            self.cursor = *last;
        }
        assert_eq!(self.stores.changes.latest_change().await.unwrap(), self.cursor, "{what}: latest_change");
    }
}

async fn each_successful_mutation_appends_one_change(stores: &Stores, log: &mut Follower<'_>, now: OffsetDateTime) {
    let green = NewTeam {
        name: GREEN.into(),
        tier: None,
        limits: LimitOverrides::default(),
        metadata: json!({}),
        capture_content: false,
        created_at: now,
    };
    stores.teams.create_team(green).await.unwrap();
    log.expect(&[Change::Team(GREEN.into())], "create_team").await;
    let tier = TeamPatch { tier: Some("bronze".into()), ..TeamPatch::default() };
    stores.teams.update_team(GREEN, tier).await.unwrap();
    log.expect(&[Change::Team(GREEN.into())], "update_team").await;

    let key = Change::Key(LOGGED_KEY.into());
    stores.keys.create_key(new_key(LOGGED_KEY, Some(GREEN), 0x60, now)).await.unwrap();
    log.expect(std::slice::from_ref(&key), "create_key").await;
    let renamed = KeyPatch { name: Some("logged".into()), ..KeyPatch::default() };
    stores.keys.update_key(LOGGED_KEY, renamed).await.unwrap();
    log.expect(std::slice::from_ref(&key), "update_key").await;
    stores.keys.rotate_key(LOGGED_KEY, rotation(0x61, now)).await.unwrap();
    log.expect(std::slice::from_ref(&key), "rotate_key").await;
    stores.keys.revoke_key(LOGGED_KEY, now).await.unwrap();
    log.expect(std::slice::from_ref(&key), "revoke_key").await;
    // A call that succeeds logs its change even when it changed nothing: followers re-read.
    stores.keys.revoke_key(LOGGED_KEY, now + Duration::minutes(1)).await.unwrap();
    log.expect(std::slice::from_ref(&key), "a second revoke_key").await;

    let token = Change::AdminToken(LOGGED_TOKEN.into());
    stores.tokens.create_token(new_token(LOGGED_TOKEN, 0x62, now)).await.unwrap();
    log.expect(std::slice::from_ref(&token), "create_token").await;
    stores.tokens.revoke_token(LOGGED_TOKEN, now).await.unwrap();
    log.expect(std::slice::from_ref(&token), "revoke_token").await;

    // Several mutations read at once come back in the order they were committed.
    stores.keys.update_key(LOGGED_KEY, KeyPatch::default()).await.unwrap();
    stores.teams.update_team(GREEN, TeamPatch::default()).await.unwrap();
    stores.tokens.revoke_token(LOGGED_TOKEN, now).await.unwrap();
    stores.teams.update_team(super::RED, TeamPatch::default()).await.unwrap();
    let expected = [key, Change::Team(GREEN.into()), token, Change::Team(super::RED.into())];
    log.expect(&expected, "four mutations in a row").await;
}

async fn reads_usage_and_failures_append_nothing(stores: &Stores, log: &mut Follower<'_>, now: OffsetDateTime) {
    // Use times and usage are not admin changes.
    stores.keys.touch_keys(&[(LOGGED_KEY.to_string(), now)]).await.unwrap();
    let usage = used(DAY_ONE - Duration::days(1), LOGGED_KEY, Some(GREEN), MODEL_1, [1, 1, 1, 1, 0]);
    stores.usage.record_usage(&[usage]).await.unwrap();
    // Nor are reads.
    stores.keys.get_key(LOGGED_KEY).await.unwrap();
    stores.keys.find_key_by_secret(&secret(0x61)).await.unwrap();
    stores.teams.list_teams().await.unwrap();
    stores.tokens.list_tokens().await.unwrap();
    log.expect(&[], "touch, usage and reads").await;

    // A mutation that fails commits nothing, its change included.
    let fails = |result: Result<(), StoreError>, what: &str| {
        assert!(matches!(result, Err(StoreError::NotFound | StoreError::Conflict(_))), "{what}: {result:?}");
    };
    let duplicate_team = NewTeam {
        name: GREEN.into(),
        tier: None,
        limits: LimitOverrides::default(),
        metadata: json!({}),
        capture_content: false,
        created_at: now,
    };
    fails(stores.teams.create_team(duplicate_team).await.map(drop), "duplicate team");
    fails(stores.teams.update_team("story-team-none", TeamPatch::default()).await.map(drop), "unknown team");
    fails(stores.keys.create_key(new_key(LOGGED_KEY, None, 0x63, now)).await.map(drop), "duplicate key id");
    fails(stores.keys.create_key(new_key("story-key-x", None, 0x60, now)).await.map(drop), "duplicate key secret");
    let orphan = new_key("story-key-orphan", Some("story-team-none"), 0x64, now);
    fails(stores.keys.create_key(orphan).await.map(drop), "key of unknown team");
    fails(stores.keys.update_key("story-key-none", KeyPatch::default()).await.map(drop), "update unknown key");
    fails(stores.keys.revoke_key("story-key-none", now).await.map(drop), "revoke unknown key");
    fails(stores.keys.rotate_key(LOGGED_KEY, rotation(0x60, now)).await.map(drop), "rotate to a known secret");
    fails(stores.keys.rotate_key("story-key-none", rotation(0x65, now)).await.map(drop), "rotate unknown key");
    fails(stores.tokens.create_token(new_token(LOGGED_TOKEN, 0x66, now)).await.map(drop), "duplicate token");
    fails(stores.tokens.revoke_token("story-token-none", now).await.map(drop), "revoke unknown token");
    log.expect(&[], "failed mutations").await;
}

/// Pages of `limit` changes, each after the last seq of the one before, add up to one big read.
async fn pages_add_up_to_the_whole(stores: &Stores, start: u64, end: u64) {
    let whole = stores.changes.changes_since(start, 1_000).await.unwrap().changes;
    assert_eq!(whole.last().map(|(seq, _)| *seq), Some(end));
    assert_eq!(whole.len(), 13, "the chapter's own mutations so far");
    let mut paged = Vec::new();
    let mut cursor = start;
    loop {
        let page = stores.changes.changes_since(cursor, 4).await.unwrap();
        assert!(!page.truncated);
        assert!(page.changes.len() <= 4, "at most `limit`");
        let Some((last, _)) = page.changes.last() else { break };
        cursor = *last;
        paged.extend(page.changes);
        assert!(paged.len() <= whole.len(), "pages never repeat a change");
    }
    assert_eq!(paged, whole);
    let none = stores.changes.changes_since(start, 0).await.unwrap();
    assert_eq!(none, ChangePage { changes: vec![], truncated: false }, "limit 0 reads nothing");
    let after_end = stores.changes.changes_since(end, 10).await.unwrap();
    assert_eq!(after_end, ChangePage { changes: vec![], truncated: false });
    let beyond = stores.changes.changes_since(u64::MAX, 10).await.unwrap();
    assert_eq!(beyond.changes, [], "a cursor past the end reads nothing");
}

/// When the backend can notify, a committed change wakes a receiver taken before it.
async fn notifications_wake_after_a_commit(stores: &Stores, log: &mut Follower<'_>) {
    let Some(mut notified) = stores.changes.change_notifications() else {
        return;
    };
    notified.borrow_and_update();
    let patch = TeamPatch { metadata: Some(json!({"notified": true})), ..TeamPatch::default() };
    stores.teams.update_team(GREEN, patch).await.unwrap();
    let woken = tokio::time::timeout(NOTIFY_WITHIN, notified.changed()).await;
    assert!(matches!(woken, Ok(Ok(()))), "no notification within {NOTIFY_WITHIN:?} of a commit");
    log.expect(&[Change::Team(GREEN.into())], "the notified change").await;
}

async fn pruning_truncates_older_cursors_only(stores: &Stores, log: &mut Follower<'_>, now: OffsetDateTime) {
    let changes = &stores.changes;
    let latest = log.cursor;
    let everything = all_changes(stores, 0).await.changes.len();
    assert_eq!(changes.prune_changes(now - Duration::days(1)).await.unwrap(), 0, "nothing that old");
    assert!(!changes.changes_since(0, 1).await.unwrap().truncated, "pruning nothing truncates nothing");

    let deleted = changes.prune_changes(now + Duration::hours(1)).await.unwrap();
    assert_eq!(usize::try_from(deleted).unwrap(), everything, "a future cut deletes every change");
    assert_eq!(changes.latest_change().await.unwrap(), latest, "pruning never moves the latest seq back");
    let caught_up = changes.changes_since(latest, 10).await.unwrap();
    assert_eq!(caught_up, ChangePage { changes: vec![], truncated: false }, "a follower at the end missed nothing");
    for behind in [latest - 1, 0] {
        let page = changes.changes_since(behind, 10).await.unwrap();
        assert_eq!(page, ChangePage { changes: vec![], truncated: true }, "a follower at {behind} missed changes");
    }

    // The log goes on after the pruned seqs, and the pruning mark stays.
    stores.keys.update_key(LOGGED_KEY, KeyPatch::default()).await.unwrap();
    log.expect(&[Change::Key(LOGGED_KEY.into())], "a change after pruning").await;
    assert!(log.cursor > latest, "seqs are never reused");
    assert!(changes.changes_since(latest - 1, 10).await.unwrap().truncated);
    assert_eq!(changes.prune_changes(now + Duration::hours(1)).await.unwrap(), 1);
    assert!(changes.changes_since(latest, 10).await.unwrap().truncated, "its one change is gone now");
    assert!(!changes.changes_since(log.cursor, 10).await.unwrap().truncated);
}

async fn all_changes(stores: &Stores, after: u64) -> ChangePage {
    stores.changes.changes_since(after, 100_000).await.unwrap()
}
