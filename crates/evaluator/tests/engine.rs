//! Focused behaviour of the engine: real-time, time-driven, recompute, preview.

mod common;

use chrono::Duration;
use common::{event, fixture, member, t0, user};
use renkei_core::{ChangeListener, LineUserId, LinkMethod, MemberPatch, UserRef};
use renkei_evaluator::{Cause, MembershipEngine, TransitionKind};
use renkei_store::SqliteStore;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;

const BUYERS: &str = "id: buyers\nname: Buyers\nrule:\n  event: purchase\n";
const CART: &str = "id: cart\nname: Cart\nrule:\n  event: cart_add\n  within: 24h\n  older_than: 1h\n";
const LINKED: &str = "id: linked\nname: Linked\nrule:\n  linked: true\n";
const GOLD: &str = "id: gold\nname: Gold\nrule:\n  attribute: rank\n  eq: gold\n";
const GOLD_BUYERS: &str =
    "id: gold_buyers\nname: Gold buyers\nrule:\n  all:\n    - segment: gold\n    - segment: buyers\n";

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn an_ingested_event_enters_the_user_with_a_transition() {
    let f = fixture(&[BUYERS]).await;
    let store = &f.test.store;
    store.link(&member(1), &user(1), LinkMethod::Api, t0()).await.expect("link");
    let e = event(json!({"type": "purchase", "member_id": "m1", "occurred_at": "2026-02-28T23:00:00Z"}));
    store.insert_events(&[e], t0()).await.expect("insert");
    let transitions = f.engine.process_changes(&[UserRef::Member(member(1))], Cause::Event).await.expect("process");
    assert_eq!(transitions.len(), 1);
    let t = &transitions[0];
    assert_eq!(
        (t.segment_id.as_str(), &t.line_user_id, t.kind, t.at, t.cause),
        ("buyers", &user(1), TransitionKind::Entered, t0(), Cause::Event)
    );
    assert_eq!(f.engine.memberships(&user(1)).await.expect("memberships"), ids(&["buyers"]));
    let stored = store.transitions_after(0, 10).await.expect("history");
    assert_eq!(stored.len(), 1);
    // Evaluating again changes nothing.
    assert!(f.engine.evaluate_user(&user(1), Cause::Event).await.expect("again").is_empty());
}

#[tokio::test]
async fn events_of_an_unlinked_member_change_nobody_until_linked() {
    let f = fixture(&[BUYERS]).await;
    let store = &f.test.store;
    let e = event(json!({"type": "purchase", "member_id": "m1", "occurred_at": "2026-02-28T23:00:00Z"}));
    store.insert_events(&[e], t0()).await.expect("insert");
    let none = f.engine.process_changes(&[UserRef::Member(member(1))], Cause::Event).await.expect("process");
    assert!(none.is_empty());
    store.link(&member(1), &user(1), LinkMethod::Api, t0()).await.expect("link");
    let entered = f.engine.process_changes(&[UserRef::LineUser(user(1))], Cause::Link).await.expect("process link");
    assert_eq!(entered.len(), 1);
    assert_eq!(entered[0].cause, Cause::Link);
}

#[tokio::test]
async fn time_boundaries_fire_at_the_exact_due_instant() {
    let f = fixture(&[CART]).await;
    let store = &f.test.store;
    let e = event(json!({"type": "cart_add", "line_user_id": user(1).as_str(), "occurred_at": "2026-03-01T00:00:00Z"}));
    store.insert_events(&[e], t0()).await.expect("insert");
    assert!(f.engine.evaluate_user(&user(1), Cause::Event).await.expect("eval").is_empty());
    let enter_at = t0() + Duration::hours(1);
    assert_eq!(store.next_due().await.expect("due"), Some(enter_at));

    f.clock.set(enter_at - Duration::microseconds(1));
    assert_eq!(f.engine.run_due().await.expect("run"), 0);
    assert!(f.engine.memberships(&user(1)).await.expect("m").is_empty());

    f.clock.set(enter_at);
    assert_eq!(f.engine.run_due().await.expect("run"), 1);
    assert_eq!(f.engine.memberships(&user(1)).await.expect("m"), ids(&["cart"]));
    let exit_at = t0() + Duration::hours(24);
    assert_eq!(store.next_due().await.expect("due"), Some(exit_at));

    f.clock.set(exit_at - Duration::microseconds(1));
    f.engine.run_due().await.expect("run");
    assert_eq!(f.engine.memberships(&user(1)).await.expect("m"), ids(&["cart"]));
    f.clock.set(exit_at);
    f.engine.run_due().await.expect("run");
    assert!(f.engine.memberships(&user(1)).await.expect("m").is_empty());
    assert_eq!(store.next_due().await.expect("due"), None, "nothing left to wait for");

    let history = store.transitions_after(0, 10).await.expect("history");
    let summary: Vec<_> = history.iter().map(|t| (t.transition.kind, t.transition.at, t.transition.cause)).collect();
    assert_eq!(
        summary,
        vec![(TransitionKind::Entered, enter_at, Cause::Time), (TransitionKind::Exited, exit_at, Cause::Time)]
    );
}

#[tokio::test]
async fn unlink_re_evaluates_the_line_user() {
    let f = fixture(&[LINKED, BUYERS]).await;
    let store = &f.test.store;
    store.link(&member(1), &user(1), LinkMethod::Api, t0()).await.expect("link");
    let e = event(json!({"type": "purchase", "member_id": "m1", "occurred_at": "2026-02-28T23:00:00Z"}));
    store.insert_events(&[e], t0()).await.expect("insert");
    f.engine.process_changes(&[UserRef::LineUser(user(1))], Cause::Link).await.expect("link eval");
    assert_eq!(f.engine.memberships(&user(1)).await.expect("m"), ids(&["buyers", "linked"]));
    store.unlink(&member(1), chrono::Utc::now()).await.expect("unlink");
    let exited = f.engine.process_changes(&[UserRef::LineUser(user(1))], Cause::Link).await.expect("unlink eval");
    assert_eq!(exited.len(), 2);
    assert!(exited.iter().all(|t| t.kind == TransitionKind::Exited));
    assert!(f.engine.memberships(&user(1)).await.expect("m").is_empty());
}

#[tokio::test]
async fn segment_references_follow_their_targets() {
    let f = fixture(&[GOLD_BUYERS, GOLD, BUYERS]).await;
    let store = &f.test.store;
    store.link(&member(1), &user(1), LinkMethod::Api, t0()).await.expect("link");
    let e = event(json!({"type": "purchase", "member_id": "m1", "occurred_at": "2026-02-28T23:00:00Z"}));
    store.insert_events(&[e], t0()).await.expect("insert");
    f.engine.process_changes(&[UserRef::Member(member(1))], Cause::Event).await.expect("eval");
    assert_eq!(f.engine.memberships(&user(1)).await.expect("m"), ids(&["buyers"]));
    let patch = MemberPatch {
        member_id: member(1),
        attributes: json!({"rank": "gold"}).as_object().cloned().expect("object"),
        line_user_id: None,
    };
    store.upsert_members(&[patch], t0()).await.expect("patch");
    let entered = f.engine.process_changes(&[UserRef::Member(member(1))], Cause::Member).await.expect("eval");
    let names: BTreeSet<String> = entered.iter().map(|t| t.segment_id.clone()).collect();
    assert_eq!(names, ids(&["gold", "gold_buyers"]));
}

#[tokio::test]
async fn recompute_records_transitions_and_preview_writes_nothing() {
    let f = fixture(&[BUYERS, CART, LINKED]).await;
    let store = &f.test.store;
    for n in 1..=7u8 {
        store.link(&member(n), &user(n), LinkMethod::Api, t0()).await.expect("link");
    }
    store.set_following(&user(9), true, t0()).await.expect("follow");
    let events = vec![
        event(json!({"type": "purchase", "member_id": "m1", "occurred_at": "2026-02-28T23:00:00Z"})),
        event(json!({"type": "purchase", "line_user_id": user(8).as_str(), "occurred_at": "2026-02-28T23:00:00Z"})),
        event(json!({"type": "cart_add", "member_id": "m2", "occurred_at": "2026-02-28T22:00:00Z"})),
        event(json!({"type": "cart_add", "member_id": "m3", "occurred_at": "2026-02-28T23:30:00Z"})),
    ];
    store.insert_events(&events, t0()).await.expect("insert");

    let preview = f.engine.preview("cart", t0() + Duration::hours(1)).await.expect("preview");
    assert_eq!(preview, vec![user(2), user(3)]);
    assert_eq!(f.engine.preview("buyers", t0()).await.expect("preview"), vec![user(1), user(8)]);
    assert!(store.transitions_after(0, 10).await.expect("none").is_empty(), "preview writes nothing");
    assert!(matches!(f.engine.preview("nope", t0()).await, Err(renkei_evaluator::MembershipError::UnknownSegment(_))));

    let mut calls = 0;
    let report = f.engine.recompute_all(|_| calls += 1).await.expect("recompute");
    assert_eq!(report.users, 9, "7 linked + 1 event-only + 1 follower");
    assert_eq!(report.transitions, 2 + 1 + 7);
    assert_eq!(calls, 3, "pages of 3 users");
    let history = store.transitions_after(0, 100).await.expect("history");
    assert!(history.iter().all(|t| t.transition.cause == Cause::Recompute));
    assert_eq!(store.next_due().await.expect("due"), Some(t0() + Duration::minutes(30)));

    // A second recompute finds nothing to change.
    assert_eq!(f.engine.recompute_all(|_| {}).await.expect("again").transitions, 0);
    let stats = f.engine.segment_stats().await.expect("stats");
    let sizes: Vec<_> = stats.iter().map(|s| (s.segment_id.as_str(), s.size)).collect();
    assert_eq!(sizes, vec![("buyers", 2), ("cart", 1), ("linked", 7)]);
}

#[tokio::test]
async fn odd_stored_properties_do_not_break_evaluation() {
    let f =
        fixture(&["id: big\nname: Big\nrule:\n  event: purchase\n  sum:\n    property: amount\n    gte: 10\n"]).await;
    let store = &f.test.store;
    let e = event(json!({"type": "purchase", "line_user_id": user(1).as_str(), "occurred_at": "2026-02-28T23:00:00Z",
                         "properties": {"amount": 20}}));
    store.insert_events(&[e.clone(), e], t0()).await.expect("insert");
    let raw = SqliteStore::connect(&f.test.url).await.expect("raw connection");
    sqlx::query("UPDATE events SET properties = '[1, 2]' WHERE id = 1")
        .execute(raw.writer_pool())
        .await
        .expect("corrupt one");
    sqlx::query("UPDATE events SET properties = 'not json' WHERE id = 2")
        .execute(raw.writer_pool())
        .await
        .expect("corrupt two");
    let transitions = f.engine.evaluate_user(&user(1), Cause::Event).await.expect("evaluates");
    assert!(transitions.is_empty(), "odd properties count as none");
}

#[tokio::test]
async fn the_running_engine_processes_reported_changes_and_time() {
    let test = renkei_test_support::sqlite().await.expect("store");
    let segments = common::segments(&[BUYERS, "id: settled\nname: S\nrule:\n  event: purchase\n  older_than: 1s\n"]);
    let engine = Arc::new(MembershipEngine::new(
        renkei_evaluator::EngineStore::of(&test.store),
        segments,
        Arc::new(renkei_core::SystemClock),
        chrono_tz::Asia::Tokyo,
    ));
    let handle = engine.clone().start();
    test.store.link(&member(1), &user(1), LinkMethod::Api, chrono::Utc::now()).await.expect("link");
    let now = chrono::Utc::now();
    let e = event(json!({"type": "purchase", "member_id": "m1", "occurred_at": now.to_rfc3339()}));
    test.store.insert_events(&[e], now).await.expect("insert");
    let listener: &dyn ChangeListener = &handle;
    listener.users_changed(&[UserRef::Member(member(1)), UserRef::Member(member(1)), UserRef::Member(member(2))]);
    handle.idle().await;
    assert_eq!(engine.memberships(&user(1)).await.expect("m"), ids(&["buyers"]));
    // The timer enters `settled` one second after the purchase, with no new data.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while engine.memberships(&user(1)).await.expect("m").len() < 2 {
        assert!(std::time::Instant::now() < deadline, "time-driven change did not happen");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let history = test.store.transitions_after(0, 10).await.expect("history");
    let last = &history.last().expect("a transition").transition;
    assert_eq!((last.segment_id.as_str(), last.cause), ("settled", Cause::Time));
    assert!(last.at >= now + Duration::seconds(1));
    handle.shutdown().await;
}

/// A stop does not wait for a backlog: the worker finishes the batch in hand,
/// the rest is left to the next start's recompute, which evaluates it from
/// the stored data.
#[tokio::test]
async fn shutdown_leaves_the_backlog_to_the_next_recompute() {
    let f = fixture(&[BUYERS]).await;
    let users: Vec<LineUserId> =
        (0..5_000u32).map(|n| LineUserId::parse(&format!("U{n:032x}")).expect("valid id")).collect();
    let events: Vec<_> = users
        .iter()
        .map(|u| event(json!({"type": "purchase", "line_user_id": u.as_str(), "occurred_at": t0().to_rfc3339()})))
        .collect();
    f.test.store.insert_events(&events, t0()).await.expect("insert");
    let handle = f.engine.clone().start();
    let changed: Vec<UserRef> = users.iter().cloned().map(UserRef::LineUser).collect();
    handle.users_changed(&changed);
    handle.users_changed(&changed);
    assert_eq!(handle.backlog().waiting, 5_000, "each user waits once");
    let left = handle.shutdown().await;
    assert!(left.waiting >= 4_000, "at most one batch is finished after the stop; {} left", left.waiting);
    assert!(f.engine.segment_stats().await.expect("stats")[0].size <= 1_000);

    let report = f.engine.recompute_all(|_| {}).await.expect("recompute");
    assert_eq!(report.users, 5_000);
    assert_eq!(f.engine.segment_stats().await.expect("stats")[0].size, 5_000);
}

/// More distinct users than the queue holds: one full recompute instead.
#[tokio::test]
async fn a_full_change_queue_recomputes_everyone() {
    let f = fixture(&[BUYERS]).await;
    let users: Vec<LineUserId> =
        (0..50u32).map(|n| LineUserId::parse(&format!("U{n:032x}")).expect("valid id")).collect();
    let events: Vec<_> = users
        .iter()
        .map(|u| event(json!({"type": "purchase", "line_user_id": u.as_str(), "occurred_at": t0().to_rfc3339()})))
        .collect();
    f.test.store.insert_events(&events, t0()).await.expect("insert");
    let handle = f.engine.clone().start_with_queue(10);
    handle.users_changed(&users.iter().cloned().map(UserRef::LineUser).collect::<Vec<_>>());
    handle.idle().await;
    let backlog = handle.backlog();
    assert_eq!((backlog.overflows, backlog.waiting), (1, 0));
    assert_eq!(f.engine.segment_stats().await.expect("stats")[0].size, 50);
    let history = f.test.store.transitions_after(0, 100).await.expect("history");
    assert!(history.iter().all(|t| t.transition.cause == Cause::Recompute));
    handle.shutdown().await;
}

renkei_test_support::on_both_backends!(multi_thread, renkei_test_support::store => one_timer_among_instances_and_takeover);

/// Two instances on one store: one runs the timer (lease
/// `membership_timer`), and when it stops the other takes the time-driven
/// work over.
async fn one_timer_among_instances_and_takeover(test: renkei_test_support::TestStore) {
    let segments = common::segments(&[BUYERS, "id: settled\nname: S\nrule:\n  event: purchase\n  older_than: 1s\n"]);
    let start = || {
        let engine = Arc::new(MembershipEngine::new(
            renkei_evaluator::EngineStore::of(&test.store),
            segments.clone(),
            Arc::new(renkei_core::SystemClock),
            chrono_tz::Asia::Tokyo,
        ));
        (engine.clone(), engine.start())
    };
    let (engine_a, handle_a) = start();
    let (engine_b, handle_b) = start();
    let holder = || async {
        let leases = test.store.leases().await.expect("leases");
        let timer = leases.iter().find(|l| l.name == renkei_evaluator::TIMER_LEASE).cloned();
        timer.map(|l| l.holder)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while holder().await.is_none() {
        assert!(std::time::Instant::now() < deadline, "nobody took the timer");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let first = holder().await.expect("holder");
    // The holder renews; the other never takes it while it lives.
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert_eq!(holder().await.as_deref(), Some(first.as_str()));

    // The holder stops: the other takes the timer over within seconds.
    let (stopped, left, engine_left) =
        if first == engine_a.instance() { (handle_a, handle_b, engine_b) } else { (handle_b, handle_a, engine_a) };
    stopped.shutdown().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while holder().await.as_deref() != Some(engine_left.instance()) {
        assert!(std::time::Instant::now() < deadline, "the timer was not taken over");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The remaining instance does the time-driven work.
    test.store.link(&member(1), &user(1), LinkMethod::Api, chrono::Utc::now()).await.expect("link");
    let now = chrono::Utc::now();
    let e = event(json!({"type": "purchase", "member_id": "m1", "occurred_at": now.to_rfc3339()}));
    test.store.insert_events(&[e], now).await.expect("insert");
    let listener: &dyn ChangeListener = &left;
    listener.users_changed(&[UserRef::Member(member(1))]);
    left.idle().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while engine_left.memberships(&user(1)).await.expect("m").len() < 2 {
        assert!(std::time::Instant::now() < deadline, "time-driven change did not happen after the takeover");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    left.shutdown().await;
}
