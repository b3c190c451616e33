//! Stopping the engine by a deadline (issue 17 item 3): a busy worker is cut
//! short, and what is left waiting is saved and queued again by the next
//! start.

mod common;

use common::{event, fixture, t0};
use renkei_core::{ChangeListener, LineUserId, UserRef};
use renkei_evaluator::Evaluator;
use renkei_store::PendingStore;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const BUYERS: &str = "id: buyers\nname: Buyers\nrule:\n  event: purchase\n";

fn users(n: u32) -> Vec<LineUserId> {
    (0..n).map(|i| LineUserId::parse(&format!("U{i:032x}")).expect("valid id")).collect()
}

async fn purchases(store: &renkei_test_support::TestStore, users: &[LineUserId]) {
    let events: Vec<_> = users
        .iter()
        .map(|u| event(json!({"type": "purchase", "line_user_id": u.as_str(), "occurred_at": t0().to_rfc3339()})))
        .collect();
    store.insert_events(&events, t0()).await.expect("insert");
}

/// A full recompute in pages of 3 runs for many seconds: a stop by a
/// deadline does not wait for it, and reports it as left.
#[tokio::test]
async fn a_stop_by_a_deadline_cuts_a_busy_worker_short() {
    let f = fixture(&[BUYERS]).await;
    let all = users(3_000);
    purchases(&f.test, &all).await;
    let handle = f.engine.clone().start_with_queue(10);
    handle.users_changed(&all.iter().cloned().map(UserRef::LineUser).collect::<Vec<_>>());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while f.engine.segment_stats().await.expect("stats")[0].size == 0 {
        assert!(std::time::Instant::now() < deadline, "the recompute did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = Instant::now();
    let (_, left) = handle.stop_by(Some(stopping + Duration::from_millis(200))).await;
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(2), "the stop waited {took:?} for the recompute");
    assert!(left.everyone, "the recompute cut short is left for the next start");
    assert!(f.engine.segment_stats().await.expect("stats")[0].size < 3_000, "it was cut short");
}

/// The evaluator saves the users a stop leaves waiting, and gives the
/// change feed's rows it holds back; the next start queues the saved users
/// again and removes the saved row once they are evaluated.
#[tokio::test]
async fn users_left_waiting_are_saved_and_resumed_at_the_next_start() {
    let f = fixture(&[BUYERS]).await;
    let all = users(5_000);
    purchases(&f.test, &all).await;
    let pending: Arc<dyn PendingStore> = f.test.store.clone();
    let evaluator = Evaluator::start(f.engine.clone(), pending.clone());
    evaluator.users_changed(&all.iter().cloned().map(UserRef::LineUser).collect::<Vec<_>>());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while evaluator.backlog().map_or(0, |b| b.waiting) == 0 {
        assert!(std::time::Instant::now() < deadline, "the feed's users were not queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    evaluator.stop_by(Instant::now() + Duration::from_secs(5)).await;
    let feed: Arc<dyn renkei_store::ChangeFeed> = f.test.store.clone();
    let last = feed.last_change_id().await.expect("feed");
    assert_eq!(feed.changes_left_through(last).await.expect("feed"), 1, "the purchases' row is kept");
    assert!(feed.changes_claimable(t0()).await.expect("feed"), "and given back at the stop");
    let saved = pending.saved_pending().await.expect("saved");
    assert_eq!(saved.len(), 1);
    let left = saved[0].pending.users.len();
    assert!(left >= 3_000, "at most a batch or two is evaluated after the stop: {left} left");
    let evaluated = f.engine.segment_stats().await.expect("stats")[0].size as usize;
    assert!(evaluated + left >= 5_000, "every user is evaluated or saved: {evaluated} + {left}");

    let restarted = Evaluator::start(f.engine.clone(), pending.clone());
    tokio::time::timeout(Duration::from_secs(60), restarted.clone().resume_pending(CancellationToken::new()))
        .await
        .expect("the saved users are evaluated");
    assert!(pending.saved_pending().await.expect("saved").is_empty(), "the row is removed once done");
    assert_eq!(f.engine.segment_stats().await.expect("stats")[0].size, 5_000);
    let mut metrics = String::new();
    restarted.render_metrics(&mut metrics);
    assert!(metrics.contains(&format!("renkei_segment_queue_restored_total {left}")), "{metrics}");
    restarted.stop().await;
}

renkei_test_support::on_both_backends!(
    multi_thread, renkei_test_support::store => instances_that_start_together_recompute_once,
    a_start_recomputes_only_the_changed_segments
);

/// Two instances start while a third (dead) instance's recompute lease is
/// still running: neither recomputes until it expires, then exactly one
/// does and the other takes its mark; an instance started later with the
/// same segments does not recompute, one with other segments does.
async fn instances_that_start_together_recompute_once(test: renkei_test_support::TestStore) {
    use renkei_evaluator::{EngineStore, MembershipEngine, RECOMPUTE_LEASE};
    let clock = renkei_core::ManualClock::new(t0());
    let segments = common::segments(&[BUYERS]);
    let engine = || {
        let store = EngineStore::of(&test.store);
        Arc::new(MembershipEngine::new(store, segments.clone(), Arc::new(clock.clone()), chrono_tz::Asia::Tokyo))
    };
    let buyers = users(20);
    purchases(&test, &buyers).await;
    let dead_until = t0() + chrono::Duration::seconds(5);
    assert!(test.store.acquire_lease(RECOMPUTE_LEASE, "evaluator-dead", t0(), dead_until).await.expect("lease"));
    let pending: Arc<dyn PendingStore> = test.store.clone();
    let (a, b) = (Evaluator::start(engine(), pending.clone()), Evaluator::start(engine(), pending.clone()));
    let stop = CancellationToken::new();
    let runs = [
        tokio::spawn(a.clone().startup_recompute(stop.clone())),
        tokio::spawn(b.clone().startup_recompute(stop.clone())),
    ];
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(a.recomputes() + b.recomputes(), 0, "nobody recomputes while the lease runs");
    clock.advance(chrono::Duration::seconds(6));
    for run in runs {
        tokio::time::timeout(Duration::from_secs(10), run).await.expect("recompute finished").expect("task");
    }
    assert_eq!(a.recomputes() + b.recomputes(), 1, "one recompute between the two");
    let members = a.engine().store().reads.segment_members("buyers", None, 100).await.expect("members");
    assert_eq!(members.len(), buyers.len());

    clock.advance(chrono::Duration::seconds(1));
    let later = Evaluator::start(engine(), pending.clone());
    later.clone().startup_recompute(stop.clone()).await;
    assert_eq!(later.recomputes(), 0, "a start with unchanged segments does not recompute");
    later.stop().await;

    let edited = common::segments(&["id: buyers\nname: Buyers\nrule:\n  event: purchase\n  count: {gte: 2}\n"]);
    let store = EngineStore::of(&test.store);
    let engine = Arc::new(MembershipEngine::new(store, edited, Arc::new(clock.clone()), chrono_tz::Asia::Tokyo));
    let edited_start = Evaluator::start(engine, pending);
    edited_start.clone().startup_recompute(stop.clone()).await;
    assert_eq!(edited_start.recomputes(), 1, "a start with an edited segment recomputes");
    let members = edited_start.engine().store().reads.segment_members("buyers", None, 100).await.expect("members");
    assert!(members.is_empty(), "nobody bought twice: {members:?}");
    edited_start.stop().await;
}

const A: &str = "id: a\nname: A\nrule:\n  event: purchase\n";
const B: &str = "id: b\nname: B\nrule:\n  all:\n    - segment: a\n    - event: visit\n";
const C: &str = "id: c\nname: C\nrule:\n  event: click\n";

/// One start of an evaluator with `files` in `tz`: its start-up recompute
/// and the change feed done; how many recomputes it ran.
async fn start_with(
    test: &renkei_test_support::TestStore,
    clock: &renkei_core::ManualClock,
    files: &[&str],
    tz: chrono_tz::Tz,
) -> u64 {
    use renkei_evaluator::{EngineStore, MembershipEngine};
    clock.advance(chrono::Duration::seconds(1));
    let engine =
        MembershipEngine::new(EngineStore::of(&test.store), common::segments(files), Arc::new(clock.clone()), tz);
    let evaluator = Evaluator::start(Arc::new(engine.with_page_size(2)), test.store.clone());
    evaluator.clone().startup_recompute(CancellationToken::new()).await;
    tokio::time::timeout(Duration::from_secs(30), evaluator.idle()).await.expect("the change feed is done");
    evaluator.stop().await;
    evaluator.recomputes()
}

/// Transitions after `after` (by id) as `(segment, user number, kind, cause)`, sorted; and the last id.
async fn transitions_since(
    test: &renkei_test_support::TestStore,
    after: i64,
) -> (Vec<(String, usize, String, String)>, i64) {
    let stored = test.store.transitions_after(after, 1_000).await.expect("transitions");
    let last = stored.last().map_or(after, |t| t.id);
    let all = users(6);
    let mut out: Vec<_> = stored
        .into_iter()
        .map(|t| {
            let t = t.transition;
            let n = all.iter().position(|u| *u == t.line_user_id).expect("a test user");
            (t.segment_id, n, t.kind.as_str().to_string(), t.cause.as_str().to_string())
        })
        .collect();
    out.sort();
    (out, last)
}

async fn members(test: &renkei_test_support::TestStore, segment: &str) -> Vec<usize> {
    let all = users(6);
    let found = test.store.segment_members(segment, None, 100).await.expect("members");
    found.iter().map(|m| all.iter().position(|u| u == m).expect("a test user")).collect()
}

/// Replaces a user's stored memberships by hand, as no evaluation would:
/// a recompute of the segments it changes would put them back.
async fn tamper(test: &renkei_test_support::TestStore, user: &LineUserId, segments: &[&str]) {
    use renkei_store::membership::{Cause, MembershipUpdate};
    let update = MembershipUpdate {
        line_user_id: user.clone(),
        segments: segments.iter().map(|s| s.to_string()).collect(),
        next_due: None,
    };
    test.store.apply_memberships(&[update], t0(), Cause::Event).await.expect("tamper");
}

fn change(segment: &str, user: usize, kind: &str) -> (String, usize, String, String) {
    (segment.to_string(), user, kind.to_string(), "recompute".to_string())
}

/// A (purchase), B (A and a visit), C (a click): a restart with C edited
/// recomputes C only, with A edited A and B only, with C removed ends C's
/// memberships only, and with another timezone everything. Memberships
/// changed by hand show what a recompute did not touch.
async fn a_start_recomputes_only_the_changed_segments(test: renkei_test_support::TestStore) {
    use chrono_tz::{Asia::Tokyo, UTC};
    let clock = renkei_core::ManualClock::new(t0());
    let u = users(6);
    let happened = |kind: &str, user: usize, minutes: i64| {
        let at = t0() - chrono::Duration::minutes(minutes);
        event(json!({"type": kind, "line_user_id": u[user].as_str(), "occurred_at": at.to_rfc3339()}))
    };
    let events = vec![
        happened("purchase", 0, 1),
        happened("purchase", 1, 1),
        happened("purchase", 1, 2),
        happened("purchase", 2, 1),
        happened("visit", 1, 1),
        happened("visit", 2, 1),
        happened("visit", 3, 1),
        happened("click", 0, 1),
        happened("click", 3, 1),
        happened("click", 4, 1),
        happened("open", 4, 1),
        happened("open", 5, 1),
    ];
    test.insert_events(&events, t0()).await.expect("insert");

    assert_eq!(start_with(&test, &clock, &[A, B, C], Tokyo).await, 1, "the first start recomputes");
    assert_eq!((members(&test, "a").await, members(&test, "b").await), (vec![0, 1, 2], vec![1, 2]));
    assert_eq!(members(&test, "c").await, vec![0, 3, 4]);
    let (_, last) = transitions_since(&test, 0).await;
    assert_eq!(start_with(&test, &clock, &[A, B, C], Tokyo).await, 0, "nothing changed: no recompute");
    assert!(transitions_since(&test, last).await.0.is_empty());

    // C edited: only C. User 0 taken out of A by hand stays out.
    tamper(&test, &u[0], &["c"]).await;
    let (_, last) = transitions_since(&test, last).await;
    let c_opens = "id: c\nname: C\nrule:\n  event: open\n";
    assert_eq!(start_with(&test, &clock, &[A, B, c_opens], Tokyo).await, 1);
    let (changes, last) = transitions_since(&test, last).await;
    assert_eq!(changes, vec![change("c", 0, "exited"), change("c", 3, "exited"), change("c", 5, "entered")]);
    assert_eq!(members(&test, "c").await, vec![4, 5]);
    assert_eq!(members(&test, "a").await, vec![1, 2], "A was not recomputed: user 0 is still out");

    // A edited (two purchases): A and B, which uses A; not C (user 5 taken out by hand stays out).
    tamper(&test, &u[5], &[]).await;
    let (_, last) = transitions_since(&test, last).await;
    let a_twice = "id: a\nname: A\nrule:\n  event: purchase\n  count: {gte: 2}\n";
    assert_eq!(start_with(&test, &clock, &[a_twice, B, c_opens], Tokyo).await, 1);
    let (changes, last) = transitions_since(&test, last).await;
    assert_eq!(changes, vec![change("a", 2, "exited"), change("b", 2, "exited")]);
    assert_eq!((members(&test, "a").await, members(&test, "b").await), (vec![1], vec![1]));
    assert_eq!(members(&test, "c").await, vec![4], "C was not recomputed: user 5 is still out");

    // C removed: its memberships end; A and B untouched (user 1 taken out of B by hand stays out).
    tamper(&test, &u[1], &["a"]).await;
    let (_, last) = transitions_since(&test, last).await;
    assert_eq!(start_with(&test, &clock, &[a_twice, B], Tokyo).await, 1);
    let (changes, last) = transitions_since(&test, last).await;
    assert_eq!(changes, vec![change("c", 4, "exited")]);
    assert!(members(&test, "c").await.is_empty());
    assert!(members(&test, "b").await.is_empty(), "B was not recomputed");

    // Another timezone: everything, so user 1 is back in B.
    assert_eq!(start_with(&test, &clock, &[a_twice, B], UTC).await, 1);
    let (changes, _) = transitions_since(&test, last).await;
    assert_eq!(changes, vec![change("b", 1, "entered")]);
    let (mark, _) = test.store.mark(renkei_evaluator::RECOMPUTED_MARK).await.expect("mark").expect("a mark");
    let mark: serde_json::Value = serde_json::from_str(&mark).expect("JSON");
    assert_eq!(mark["tz"], "UTC");
    let ids: Vec<&String> = mark["segments"].as_object().expect("segments").keys().collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(start_with(&test, &clock, &[B, a_twice], UTC).await, 0, "the mark is of this set and timezone");
}
