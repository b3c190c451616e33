//! Membership storage, run against every backend: SQLite always, PostgreSQL
//! when `RENKEI_TEST_POSTGRES_URL` is set (and always in CI).

use chrono::{DateTime, Duration, Utc};
use renkei_core::{LineUserId, LinkMethod, MemberPatch, NewEvent};
use renkei_store::membership::{Cause, EventSelection, MembershipUpdate, TransitionKind};
use renkei_test_support::TestStore;
use serde_json::{Value, json};
use std::collections::BTreeSet;

mod common;
use common::{at, event, member, user};

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn update(u: &LineUserId, ids: &[&str], next_due: Option<DateTime<Utc>>) -> MembershipUpdate {
    MembershipUpdate { line_user_id: u.clone(), segments: set(ids), next_due }
}

async fn load_users_resolves_links_following_and_events(store: TestStore) {
    let patch = MemberPatch {
        member_id: member("m1"),
        attributes: json!({"rank": "gold"}).as_object().cloned().expect("object"),
        line_user_id: None,
    };
    store.upsert_members(&[patch], at(1)).await.expect("member");
    store.link(&member("m1"), &user(1), LinkMethod::Api, at(1)).await.expect("link");
    store.set_following(&user(2), true, at(1)).await.expect("follow");
    store.link(&member("m3"), &user(3), LinkMethod::Api, at(1)).await.expect("link 3");
    store.set_following(&user(3), false, at(2)).await.expect("unfollow 3");
    store
        .insert_events(
            &[
                event(json!({"type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T03:00:00Z",
                             "properties": {"amount": 100}})),
                event(
                    json!({"type": "visit", "line_user_id": user(1).as_str(), "occurred_at": "2026-11-23T02:00:00Z"}),
                ),
                // Both keys pointing at the same user: counted once.
                event(json!({"type": "purchase", "member_id": "m1", "line_user_id": user(1).as_str(),
                             "occurred_at": "2026-11-23T04:00:00Z"})),
                event(json!({"type": "purchase", "member_id": "unlinked", "occurred_at": "2026-11-23T04:00:00Z"})),
                event(
                    json!({"type": "visit", "line_user_id": user(2).as_str(), "occurred_at": "2026-11-23T05:00:00Z"}),
                ),
            ],
            at(6),
        )
        .await
        .expect("events");

    let records = store.load_users(&[user(1), user(2), user(3), user(9)], None).await.expect("load");
    assert_eq!(records.len(), 4);
    let one = &records[0];
    assert_eq!(one.line_user_id, user(1));
    assert_eq!(one.member_id, Some(member("m1")));
    assert_eq!(one.attributes.as_ref().and_then(|a| a.get("rank")), Some(&json!("gold")));
    assert!(one.following, "a linked user counts as following until an unfollow is seen");
    let times: Vec<_> = one.events.iter().map(|e| (e.event_type.as_str(), e.occurred_at)).collect();
    assert_eq!(times, vec![("visit", at(2)), ("purchase", at(3)), ("purchase", at(4)),]);
    assert_eq!(one.events[1].properties.get("amount"), Some(&json!(100)));
    assert_eq!(store.user_events(&user(1)).await.expect("user events").len(), one.events.len());

    let two = &records[1];
    assert!(two.following && two.member_id.is_none() && two.attributes.is_none());
    assert_eq!(two.events.len(), 1);
    assert!(!records[2].following, "an unfollow beats the link");
    assert!(!records[3].following && records[3].events.is_empty());

    let only = store.load_users(&[user(1)], Some(&["visit".to_string()])).await.expect("filtered");
    assert_eq!(only[0].events.len(), 1);
    assert!(store.load_users(&[], None).await.expect("empty").is_empty());
}

/// PostgreSQL reads small and large properties through different indexes
/// (migration 0006); every event must come back once, whatever its size.
async fn load_users_reads_events_of_every_size(store: TestStore) {
    store.link(&member("m1"), &user(1), LinkMethod::Api, at(1)).await.expect("link");
    // ~6 kB that does not compress: larger than any index entry may be.
    let big: String = (0..6_000u32).map(|i| char::from(b'a' + ((i * 7919 + i / 13) % 26) as u8)).collect();
    let events: Vec<NewEvent> = [
        ("member_small", json!({"member_id": "m1", "properties": {"note": "small"}})),
        ("member_big", json!({"member_id": "m1", "properties": {"note": big}})),
        ("user_small", json!({"line_user_id": user(1).as_str(), "properties": {"note": "small"}})),
        ("user_big", json!({"line_user_id": user(1).as_str(), "properties": {"note": big}})),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (kind, mut value))| {
        value["type"] = json!(kind);
        value["occurred_at"] = json!(format!("2026-11-23T0{i}:00:00Z"));
        event(value)
    })
    .collect();
    store.insert_events(&events, at(6)).await.expect("events");

    for types in [None, Some(vec!["member_big".to_string(), "user_small".to_string()])] {
        let records = store.load_users(&[user(1)], types.as_deref()).await.expect("load");
        let loaded: Vec<(&str, usize)> = records[0]
            .events
            .iter()
            .map(|e| (e.event_type.as_str(), e.properties["note"].as_str().map_or(0, str::len)))
            .collect();
        let expected: Vec<(&str, usize)> =
            vec![("member_small", 5), ("member_big", 6_000), ("user_small", 5), ("user_big", 6_000)]
                .into_iter()
                .filter(|(kind, _)| types.as_ref().is_none_or(|t| t.iter().any(|k| k == kind)))
                .collect();
        assert_eq!(loaded, expected, "types {types:?}");
    }
}

/// What segment evaluation loads: only the listed types, each event with
/// only the listed property keys, and per type only events after `since`.
async fn load_user_facts_thins_properties_and_old_events(store: TestStore) {
    store.link(&member("m1"), &user(1), LinkMethod::Api, at(1)).await.expect("link");
    let big: String = (0..6_000u32).map(|i| char::from(b'a' + ((i * 7919 + i / 13) % 26) as u8)).collect();
    store
        .insert_events(
            &[
                event(json!({"type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T01:00:00Z",
                             "properties": {"amount": 1, "cart_id": "c1", "sku": "s1"}})),
                event(json!({"type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T03:00:00Z",
                             "properties": {"amount": 3, "note": big, "nested": {"a": [1, 2]}}})),
                event(json!({"type": "visit", "line_user_id": user(1).as_str(), "occurred_at": "2026-11-23T02:00:00Z",
                             "properties": {"store": "st1"}})),
                event(json!({"type": "visit", "member_id": "m1", "occurred_at": "2026-11-23T00:30:00Z",
                             "properties": {"store": "st2"}})),
                event(json!({"type": "page_view", "member_id": "m1", "occurred_at": "2026-11-23T02:30:00Z",
                             "properties": {"path": "/"}})),
            ],
            at(6),
        )
        .await
        .expect("events");
    let keys = [("purchase".to_string(), set(&["amount", "nested"])), ("visit".to_string(), set(&[]))];
    let selection = EventSelection {
        types: vec!["purchase".to_string(), "visit".to_string()],
        keys: keys.into_iter().collect(),
        since: [("visit".to_string(), at(0) + Duration::minutes(45))].into_iter().collect(),
        ..EventSelection::default()
    };
    // A user twice in one page gets its facts twice.
    let records = store.load_user_facts(&[user(1), user(2), user(1)], &selection).await.expect("load");
    assert_eq!(records.len(), 3);
    assert!(records[1].events.is_empty() && records[1].member_id.is_none());
    assert_eq!(records[0], records[2]);
    let one = &records[0];
    assert_eq!(one.member_id, Some(member("m1")));
    let loaded: Vec<(&str, DateTime<Utc>, Value)> = one
        .events
        .iter()
        .map(|e| (e.event_type.as_str(), e.occurred_at, Value::Object(e.properties.iter().cloned().collect())))
        .collect();
    assert_eq!(
        loaded,
        vec![
            ("purchase", at(1), json!({"amount": 1})),
            ("visit", at(2), json!({})),
            ("purchase", at(3), json!({"amount": 3, "nested": {"a": [1, 2]}})),
        ]
    );
    // With no `since`, every event of the types.
    let all = EventSelection { since: Default::default(), ..selection };
    let records = store.load_user_facts(&[user(1)], &all).await.expect("load all");
    assert_eq!(records[0].events.len(), 4);
    assert!(store.load_user_facts(&[], &all).await.expect("empty").is_empty());
}

async fn member_resolves_to_its_line_user(store: TestStore) {
    store.link(&member("m1"), &user(1), LinkMethod::Api, at(1)).await.expect("link");
    assert_eq!(store.member_line_user(&member("m1")).await.expect("resolve"), Some(user(1)));
    assert_eq!(store.member_line_user(&member("m2")).await.expect("resolve"), None);
    store.unlink(&member("m1"), chrono::Utc::now()).await.expect("unlink");
    assert_eq!(store.member_line_user(&member("m1")).await.expect("resolve"), None);
}

async fn audience_is_every_known_line_user_in_pages(store: TestStore) {
    store.set_following(&user(5), true, at(1)).await.expect("follow");
    store.set_following(&user(2), false, at(1)).await.expect("unfollow");
    store.link(&member("m1"), &user(3), LinkMethod::Api, at(1)).await.expect("link");
    store.link(&member("m2"), &user(5), LinkMethod::Api, at(1)).await.expect("link");
    let events: Vec<NewEvent> = [1u32, 4, 4, 6]
        .iter()
        .map(|n| {
            event(json!({"type": "visit", "line_user_id": user(*n).as_str(), "occurred_at": "2026-11-23T01:00:00Z"}))
        })
        .chain([event(json!({"type": "visit", "member_id": "m9", "occurred_at": "2026-11-23T01:00:00Z"}))])
        .collect();
    store.insert_events(&events, at(2)).await.expect("events");
    let mut all = Vec::new();
    let mut after: Option<LineUserId> = None;
    loop {
        let page = store.audience_page(after.as_ref(), 2).await.expect("page");
        assert!(page.len() <= 2);
        let Some(last) = page.last().cloned() else { break };
        all.extend(page.users);
        after = Some(last);
    }
    assert_eq!(all, vec![user(1), user(2), user(3), user(4), user(5), user(6)]);
}

/// A recompute reads whole audience pages, which a store may read as key
/// ranges: a page's facts are exactly those of its users read one by one,
/// and a user that joined the range after paging is left to the next read.
async fn page_reads_agree_with_listed_reads(store: TestStore) {
    let big: String = (0..6_000u32).map(|i| char::from(b'a' + ((i * 7919 + i / 13) % 26) as u8)).collect();
    store.link(&member("m2"), &user(2), LinkMethod::Api, at(1)).await.expect("link 2");
    store.link(&member("m6"), &user(6), LinkMethod::Api, at(1)).await.expect("link 6");
    store.link(&member("m10"), &user(10), LinkMethod::Api, at(1)).await.expect("link 10");
    store.set_following(&user(6), false, at(1)).await.expect("unfollow 6");
    store.set_following(&user(4), true, at(1)).await.expect("follow 4");
    let events: Vec<NewEvent> = [
        json!({"type": "purchase", "member_id": "m2", "properties": {"amount": 1, "sku": "s"}}),
        json!({"type": "purchase", "member_id": "m2", "properties": {"amount": 2, "note": big}}),
        json!({"type": "purchase", "line_user_id": user(2).as_str(), "properties": {"amount": 3}}),
        json!({"type": "visit", "line_user_id": user(2).as_str(), "properties": {"note": big}}),
        json!({"type": "visit", "line_user_id": user(8).as_str()}),
        // m10's event naming another user counts for both.
        json!({"type": "visit", "member_id": "m10", "line_user_id": user(4).as_str()}),
        json!({"type": "purchase", "member_id": "m6", "line_user_id": user(6).as_str(), "properties": {"amount": 6}}),
        json!({"type": "purchase", "member_id": "unlinked", "properties": {"amount": 9}}),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, mut value)| {
        value["occurred_at"] = json!(format!("2026-11-23T0{i}:00:00Z"));
        event(value)
    })
    .collect();
    store.insert_events(&events, at(9)).await.expect("events");
    let keys = [("purchase".to_string(), set(&["amount", "note"])), ("visit".to_string(), set(&[]))];
    let selection = EventSelection {
        types: vec!["purchase".to_string(), "visit".to_string()],
        keys: keys.into_iter().collect(),
        since: [("purchase".to_string(), at(0) + Duration::minutes(30))].into_iter().collect(),
        ..EventSelection::default()
    };
    for size in [1, 2, 3, 10] {
        let (mut after, mut seen, mut events) = (None, Vec::new(), 0);
        loop {
            let page = store.audience_page(after.as_ref(), size).await.expect("page");
            let Some(last) = page.last().cloned() else { break };
            let by_page = store.load_page_facts(&page, &selection).await.expect("page facts");
            let by_list = store.load_user_facts(&page.users, &selection).await.expect("listed facts");
            assert_eq!(by_page, by_list, "page of {size} after {after:?}");
            events += by_page.iter().map(|r| r.events.len()).sum::<usize>();
            seen.extend(page.users);
            after = Some(last);
        }
        assert_eq!(seen, vec![user(2), user(4), user(6), user(8), user(10)], "pages of {size}");
        assert_eq!(events, 7, "pages of {size}: every loadable event once per user it counts for");
    }

    // Paged, then a user joins inside the page's range: the page keeps to its users.
    let page = store.audience_page(None, 2).await.expect("page");
    assert_eq!(page.users, vec![user(2), user(4)]);
    store.set_following(&user(3), true, at(9)).await.expect("follow 3");
    let records = store.load_page_facts(&page, &selection).await.expect("stale page");
    assert_eq!(records.iter().map(|r| r.line_user_id.clone()).collect::<Vec<_>>(), page.users);

    // Applying a page's memberships: the same outcome as applying a list.
    let updates = [update(&user(2), &["gold", "vip"], Some(at(20))), update(&user(4), &[], Some(at(21)))];
    let applied =
        store.apply_page_memberships(&page, &updates, at(10), Cause::Recompute, None).await.expect("apply page");
    assert_eq!(applied.len(), 2);
    store.apply_memberships(&[update(&user(3), &["gold"], None)], at(10), Cause::Event).await.expect("apply 3");
    assert!(
        store.apply_page_memberships(&page, &updates, at(11), Cause::Recompute, None).await.expect("again").is_empty()
    );
    let moved = [update(&user(2), &["vip"], None), update(&user(4), &[], Some(at(22)))];
    let applied = store.apply_page_memberships(&page, &moved, at(12), Cause::Recompute, None).await.expect("moved");
    let summary: Vec<_> = applied.iter().map(|t| (t.segment_id.as_str(), t.kind)).collect();
    assert_eq!(summary, vec![("gold", TransitionKind::Exited)]);
    assert_eq!(store.user_memberships(&user(2)).await.expect("2"), set(&["vip"]));
    assert_eq!(store.user_memberships(&user(3)).await.expect("3"), set(&["gold"]), "outside the updates: untouched");
    assert_eq!(store.due_users(at(23), 10).await.expect("due"), vec![user(4)]);
    assert_eq!(store.next_due().await.expect("next"), Some(at(22)));
}

/// A page applied with a scope compares and writes only the scope's
/// segments, and moves due times only earlier.
async fn scoped_page_updates_leave_other_segments_alone(store: TestStore) {
    let (a, b) = (user(1), user(2));
    for u in [&a, &b] {
        store.set_following(u, true, at(1)).await.expect("follow");
    }
    let first = [update(&a, &["base", "edited", "gone"], Some(at(15))), update(&b, &["base"], None)];
    store.apply_memberships(&first, at(1), Cause::Event).await.expect("apply");
    let page = store.audience_page(None, 10).await.expect("page");
    assert_eq!(page.users, vec![a.clone(), b.clone()]);
    let scope = set(&["edited", "gone", "new"]);
    // `outside` is not in the scope: neither entered nor compared; `base` is not either: kept.
    let updates = [update(&a, &["new", "outside"], Some(at(20))), update(&b, &["edited"], Some(at(10)))];
    let applied =
        store.apply_page_memberships(&page, &updates, at(2), Cause::Recompute, Some(&scope)).await.expect("scoped");
    let mut summary: Vec<_> = applied
        .iter()
        .map(|t| (t.line_user_id.clone(), t.segment_id.as_str(), t.kind.as_str(), t.cause.as_str()))
        .collect();
    summary.sort();
    let (entered, exited, recompute) =
        (TransitionKind::Entered.as_str(), TransitionKind::Exited.as_str(), Cause::Recompute.as_str());
    assert_eq!(
        summary,
        vec![
            (a.clone(), "edited", exited, recompute),
            (a.clone(), "gone", exited, recompute),
            (a.clone(), "new", entered, recompute),
            (b.clone(), "edited", entered, recompute),
        ]
    );
    assert_eq!(store.user_memberships(&a).await.expect("a"), set(&["base", "new"]));
    assert_eq!(store.user_memberships(&b).await.expect("b"), set(&["base", "edited"]));
    // a's stored due (15) is earlier than the scope's (20): kept; b had none: set.
    assert_eq!(store.due_users(at(14), 10).await.expect("due"), vec![b.clone()]);
    assert_eq!(store.due_users(at(19), 10).await.expect("due"), vec![b.clone(), a.clone()]);

    // The same again: nothing to write; no due time is cleared by a scope.
    let again = [update(&a, &["new"], None), update(&b, &["edited"], None)];
    let applied =
        store.apply_page_memberships(&page, &again, at(3), Cause::Recompute, Some(&scope)).await.expect("again");
    assert!(applied.is_empty(), "{applied:?}");
    assert_eq!(store.due_users(at(19), 10).await.expect("due"), vec![b.clone(), a.clone()]);
    // An earlier due time moves the stored one.
    let earlier = [update(&a, &["new"], Some(at(8))), update(&b, &["edited"], None)];
    store.apply_page_memberships(&page, &earlier, at(4), Cause::Recompute, Some(&scope)).await.expect("earlier");
    assert_eq!(store.due_users(at(9), 10).await.expect("due"), vec![a.clone()]);
    assert_eq!(store.next_due().await.expect("next"), Some(at(8)));

    // Unscoped, the same page is compared against every segment again.
    let full = [update(&a, &["new"], None), update(&b, &["edited"], None)];
    let applied = store.apply_page_memberships(&page, &full, at(5), Cause::Recompute, None).await.expect("full");
    let exits: BTreeSet<_> =
        applied.iter().map(|t| (t.line_user_id.clone(), t.segment_id.as_str(), t.kind.as_str())).collect();
    assert_eq!(exits, BTreeSet::from([(a.clone(), "base", exited), (b.clone(), "base", exited)]));
    assert_eq!(store.next_due().await.expect("next"), None);
}

async fn apply_memberships_records_transitions(store: TestStore) {
    let (a, b) = (user(1), user(2));
    let transitions = store
        .apply_memberships(
            &[update(&a, &["gold", "vip"], Some(at(5))), update(&b, &["gold"], None)],
            at(1),
            Cause::Event,
        )
        .await
        .expect("apply");
    assert_eq!(transitions.len(), 3);
    assert!(transitions.iter().all(|t| t.kind == TransitionKind::Entered && t.at == at(1) && t.cause == Cause::Event));
    assert_eq!(store.user_memberships(&a).await.expect("current"), set(&["gold", "vip"]));

    let transitions =
        store.apply_memberships(&[update(&a, &["gold", "new"], None)], at(2), Cause::Time).await.expect("apply");
    let summary: Vec<_> = transitions.iter().map(|t| (t.segment_id.as_str(), t.kind)).collect();
    assert_eq!(summary, vec![("vip", TransitionKind::Exited), ("new", TransitionKind::Entered)]);
    assert_eq!(store.user_memberships(&a).await.expect("current"), set(&["gold", "new"]));

    // The same state again changes nothing.
    let transitions =
        store.apply_memberships(&[update(&a, &["gold", "new"], None)], at(3), Cause::Recompute).await.expect("apply");
    assert!(transitions.is_empty());

    let stored = store.transitions_after(0, 100).await.expect("history");
    assert_eq!(stored.len(), 5);
    assert!(stored.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(stored[4].transition.cause, Cause::Time);
    let later = store.transitions_after(stored[2].id, 100).await.expect("later");
    assert_eq!(later.len(), 2);

    let stats = store.segment_stats().await.expect("stats");
    let summary: Vec<_> = stats.iter().map(|s| (s.segment_id.as_str(), s.size, s.updated_at)).collect();
    assert_eq!(summary, vec![("gold", 2, Some(at(1))), ("new", 1, Some(at(2))), ("vip", 0, Some(at(2)))]);
}

/// Only what differs from the stored state is written: the same memberships
/// with a new due time move the due time alone; a user named twice in a
/// batch ends with the last update's due time.
async fn apply_memberships_writes_only_differences(store: TestStore) {
    let (a, b, c) = (user(1), user(2), user(3));
    let first = [update(&a, &["gold"], Some(at(5))), update(&b, &[], Some(at(6))), update(&c, &["vip"], None)];
    assert_eq!(store.apply_memberships(&first, at(1), Cause::Event).await.expect("apply").len(), 2);
    assert!(store.apply_memberships(&first, at(2), Cause::Recompute).await.expect("again").is_empty());
    assert_eq!(store.due_users(at(23), 10).await.expect("due"), vec![a.clone(), b.clone()]);

    let moved = [
        update(&a, &["gold"], Some(at(7))),
        update(&b, &[], None),
        update(&c, &["vip"], Some(at(4))),
        update(&c, &["vip"], Some(at(8))),
    ];
    assert!(store.apply_memberships(&moved, at(3), Cause::Time).await.expect("moved").is_empty());
    assert_eq!(store.due_users(at(23), 10).await.expect("due"), vec![a.clone(), c.clone()]);
    assert_eq!(store.next_due().await.expect("next"), Some(at(7)));
    assert_eq!(store.user_memberships(&c).await.expect("c"), set(&["vip"]));
    assert_eq!(store.transitions_after(0, 100).await.expect("history").len(), 2);
}

async fn schedule_is_set_cleared_and_due(store: TestStore) {
    let (a, b, c) = (user(1), user(2), user(3));
    assert_eq!(store.next_due().await.expect("none"), None);
    store.apply_memberships(&[update(&a, &[], Some(at(5)))], at(1), Cause::Event).await.expect("apply");
    store.set_due(&b, Some(at(3))).await.expect("due b");
    store.set_due(&c, Some(at(4))).await.expect("due c");
    assert_eq!(store.next_due().await.expect("next"), Some(at(3)));
    assert_eq!(store.due_users(at(3) - Duration::microseconds(1), 10).await.expect("due"), Vec::<LineUserId>::new());
    assert_eq!(store.due_users(at(3), 10).await.expect("due"), vec![b.clone()]);
    assert_eq!(store.due_users(at(9), 2).await.expect("due"), vec![b.clone(), c.clone()]);
    store.set_due(&b, None).await.expect("clear");
    store.set_due(&c, Some(at(6))).await.expect("move");
    assert_eq!(store.due_users(at(5), 10).await.expect("due"), vec![a.clone()]);
    store.apply_memberships(&[update(&a, &[], None)], at(5), Cause::Time).await.expect("apply");
    assert_eq!(store.next_due().await.expect("next"), Some(at(6)));
}

async fn segment_members_are_paged_by_line_user_id(store: TestStore) {
    let updates: Vec<_> = [4u32, 1, 3, 2].iter().map(|n| update(&user(*n), &["s"], None)).collect();
    store.apply_memberships(&updates, at(1), Cause::Recompute).await.expect("apply");
    store.apply_memberships(&[update(&user(9), &["other"], None)], at(1), Cause::Recompute).await.expect("apply");
    let first = store.segment_members("s", None, 3).await.expect("first");
    assert_eq!(first, vec![user(1), user(2), user(3)]);
    let rest = store.segment_members("s", Some(user(3).as_str()), 3).await.expect("rest");
    assert_eq!(rest, vec![user(4)]);
    assert!(store.segment_members("nope", None, 3).await.expect("none").is_empty());
}

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    load_users_resolves_links_following_and_events,
    load_users_reads_events_of_every_size,
    load_user_facts_thins_properties_and_old_events,
    member_resolves_to_its_line_user,
    audience_is_every_known_line_user_in_pages,
    page_reads_agree_with_listed_reads,
    apply_memberships_records_transitions,
    apply_memberships_writes_only_differences,
    scoped_page_updates_leave_other_segments_alone,
    schedule_is_set_cleared_and_due,
    segment_members_are_paged_by_line_user_id,
);
