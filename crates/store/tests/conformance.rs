//! One behaviour suite, run against every backend: SQLite always, PostgreSQL
//! when `RENKEI_TEST_POSTGRES_URL` is set (and always in CI).

use chrono::{TimeZone, Utc};
use renkei_core::{LinkMethod, MemberPatch, NewEvent};
use renkei_store::{LinkOutcome, StoreCounts, StoreError};
use renkei_test_support::TestStore;
use serde_json::{Value, json};
use tokio::sync::mpsc;

mod common;
use common::{at, event, member, user};

fn patch(id: &str, attributes: Value) -> MemberPatch {
    MemberPatch {
        member_id: member(id),
        attributes: attributes.as_object().cloned().expect("object"),
        line_user_id: None,
    }
}

async fn events_are_idempotent_on_event_id(store: TestStore) {
    let a = event(
        json!({"event_id": "e1", "type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T10:00:00+09:00"}),
    );
    let b = event(
        json!({"event_id": "e2", "type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T11:00:00+09:00"}),
    );
    let outcome = store.insert_events(&[a.clone(), b.clone(), a.clone()], at(3)).await.expect("insert");
    assert_eq!((outcome.accepted, outcome.duplicates), (2, 1), "a repeat inside the batch is a duplicate");
    let outcome = store.insert_events(&[b, a], at(4)).await.expect("insert again");
    assert_eq!((outcome.accepted, outcome.duplicates), (0, 2), "a later repeat is a duplicate");
    assert_eq!(store.counts().await.expect("counts").events, 2);
}

/// Appends (`POST /v1/events`) say what is a duplicate as inserts do, and
/// reach `events` once merged (at once where the store keeps no inbox).
async fn appended_events_merge_once(store: TestStore) {
    let e = |id: &str, hour: u32| {
        let at = format!("2026-11-23T{hour:02}:00:00Z");
        match id {
            "" => event(json!({"type": "purchase", "member_id": "m1", "occurred_at": at})),
            id => event(json!({"event_id": id, "type": "purchase", "member_id": "m1", "occurred_at": at})),
        }
    };
    let appended = store.append_events(&[e("a", 1), e("b", 2), e("a", 3), e("", 4)], at(5)).await.expect("append");
    assert_eq!((appended.outcome.accepted, appended.outcome.duplicates), (3, 1), "a repeat inside the batch");
    assert_eq!(appended.merged_later, store.keeps_inbox());
    let again = store.append_events(&[e("b", 2), e("a", 1)], at(6)).await.expect("append again");
    assert_eq!((again.outcome.accepted, again.outcome.duplicates), (0, 2), "repeats of appended events, merged or not");
    store.insert_events(&[e("c", 7)], at(7)).await.expect("insert directly");
    let stored = store.append_events(&[e("c", 7), e("d", 8)], at(8)).await.expect("append");
    assert_eq!((stored.outcome.accepted, stored.outcome.duplicates), (1, 1), "a repeat of an event stored directly");

    let mut merged = renkei_store::Merged::default();
    loop {
        let round = store.merge_appended(2).await.expect("merge");
        if round.taken == 0 {
            break;
        }
        assert!(round.taken <= 2, "at most the limit");
        merged.taken += round.taken;
        merged.events += round.events;
        merged.users.extend(round.users);
    }
    let expected_merged = if store.keeps_inbox() { 4 } else { 0 };
    assert_eq!((merged.taken, merged.events), (expected_merged, expected_merged));
    if store.keeps_inbox() {
        assert!(merged.users.contains(&renkei_core::UserRef::Member(member("m1"))), "{:?}", merged.users);
    }
    assert_eq!(store.counts().await.expect("counts").events, 5, "a, b, the one without id, c, d");
    let again = store.append_events(&[e("d", 8)], at(9)).await.expect("append after merge");
    assert_eq!(again.outcome.duplicates, 1, "a repeat of a merged event");
}

/// A merge writes what a direct insert writes beside the event: the running
/// totals (0010's trigger) and a change-feed row naming the users.
async fn merged_events_count_and_feed_changes(store: TestStore) {
    let e = |m: &str, hour: u32| {
        event(json!({"type": "store_visit", "member_id": m, "occurred_at": format!("2026-11-23T{hour:02}:00:00Z")}))
    };
    store.append_events(&[e("m1", 1), e("m2", 2), e("m1", 3)], at(5)).await.expect("append");
    while store.merge_appended(100).await.expect("merge").taken > 0 {}
    let now = at(6);
    let claimed = store.claim_changes("test", now, now + chrono::Duration::minutes(1), 100).await.expect("claim");
    let users: Vec<_> = claimed.iter().flat_map(|c| c.users.clone()).collect();
    for m in ["m1", "m2"] {
        assert!(users.contains(&renkei_core::UserRef::Member(member(m))), "{m} in {users:?}");
    }
    if store.keeps_inbox() {
        let pg = renkei_store::PgStore::connect(&store.url).await.expect("connect");
        let totals: Vec<(String, i64)> =
            sqlx::query_as("SELECT member_id, SUM(count)::int8 FROM event_totals GROUP BY 1 ORDER BY 1")
                .fetch_all(pg.pool())
                .await
                .expect("totals");
        assert_eq!(totals, vec![("m1".to_string(), 2), ("m2".to_string(), 1)]);
    }
}

/// An import storing an appended event before its merge: the merge takes
/// the row and stores nothing (the event is in `events` once).
async fn a_merge_skips_an_event_stored_meanwhile(store: TestStore) {
    let e =
        event(json!({"event_id": "x", "type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T01:00:00Z"}));
    store.append_events(std::slice::from_ref(&e), at(2)).await.expect("append");
    store.insert_events(std::slice::from_ref(&e), at(3)).await.expect("insert");
    let merged = store.merge_appended(10).await.expect("merge");
    let expected = if store.keeps_inbox() { (1, 0) } else { (0, 0) };
    assert_eq!((merged.taken, merged.events), expected);
    assert_eq!(store.counts().await.expect("counts").events, 1);
}

async fn events_without_event_id_are_all_kept(store: TestStore) {
    let a = event(json!({"type": "store_visit", "member_id": "m1", "occurred_at": "2026-11-23T10:00:00Z"}));
    let outcome = store.insert_events(&[a.clone(), a], at(3)).await.expect("insert");
    assert_eq!((outcome.accepted, outcome.duplicates), (2, 0));
}

async fn members_merge_and_null_deletes(store: TestStore) {
    let outcome =
        store.upsert_members(&[patch("m1", json!({"rank": "silver", "name": "花子"}))], at(1)).await.expect("create");
    assert_eq!(outcome.created, 1);
    let outcome = store
        .upsert_members(&[patch("m1", json!({"rank": "gold", "name": null, "points": 10}))], at(2))
        .await
        .expect("merge");
    assert_eq!(outcome.updated, 1);
    let outcome = store.upsert_members(&[patch("m1", json!({"rank": "gold"}))], at(3)).await.expect("same");
    assert_eq!(outcome.unchanged, 1);
    let stored = store.get_member(&member("m1")).await.expect("get").expect("exists");
    assert_eq!(Value::Object(stored.attributes), json!({"rank": "gold", "points": 10}));
    assert_eq!(stored.created_at, at(1));
    assert_eq!(stored.updated_at, at(2), "an unchanged merge does not touch updated_at");
    assert!(store.get_member(&member("nobody")).await.expect("get").is_none());
}

async fn links_are_one_to_one(store: TestStore) {
    let created = store.link(&member("m1"), &user(1), LinkMethod::Api, at(1)).await.expect("link");
    let LinkOutcome::Created(link) = created else { panic!("expected a new link, got {created:?}") };
    assert_eq!((link.method, link.linked_at), (LinkMethod::Api, at(1)));
    let again = store.link(&member("m1"), &user(1), LinkMethod::Import, at(2)).await.expect("same pair");
    assert!(matches!(again, LinkOutcome::AlreadyLinked(ref l) if l.linked_at == at(1) && l.method == LinkMethod::Api));
    let before = store.counts().await.expect("counts");
    let claimed = store.link(&member("m2"), &user(1), LinkMethod::Api, at(3)).await;
    assert!(
        matches!(claimed, Err(StoreError::Conflict(ref m)) if m.contains("already linked to another member")),
        "{claimed:?}"
    );
    let relinked = store.link(&member("m1"), &user(2), LinkMethod::Api, at(3)).await;
    assert!(matches!(relinked, Err(StoreError::Conflict(ref m)) if m.contains("unlink it first")), "{relinked:?}");
    assert_eq!(store.counts().await.expect("counts"), before, "a refused link writes nothing (not even member m2)");
    assert_eq!(store.get_link_by_line_user(&user(1)).await.expect("get").map(|l| l.member_id), Some(member("m1")));
}

/// Every way of linking leaves the member there (PostgreSQL keeps no
/// foreign key for it, migration 0028): a link to a member never seen, a
/// member batch with a LINE user, a streamed import, a relink.
async fn every_link_has_its_member(store: TestStore) {
    store.link(&member("via-api"), &user(1), LinkMethod::Api, at(1)).await.expect("link");
    let with_user = |id: &str, n: u32| MemberPatch { line_user_id: Some(user(n)), ..patch(id, json!({})) };
    store.upsert_members(&[with_user("via-batch", 2)], at(2)).await.expect("batch");
    let (tx, rx) = mpsc::channel(1);
    tx.send(Ok(vec![with_user("via-import", 3)])).await.expect("send");
    drop(tx);
    store.import_members(rx, at(3)).await.expect("import");
    store.unlink(&member("via-api"), at(4)).await.expect("unlink");
    store.link(&member("relinked"), &user(1), LinkMethod::AccountLink, at(5)).await.expect("relink");
    for (id, n) in [("via-batch", 2), ("via-import", 3), ("relinked", 1)] {
        let link = store.get_link_by_line_user(&user(n)).await.expect("link").expect("linked");
        assert_eq!(link.member_id, member(id));
        assert!(store.get_member(&member(id)).await.expect("member").is_some(), "{id} has its member");
    }
    assert!(store.get_member(&member("via-api")).await.expect("member").is_some(), "an unlinked member stays");
}

async fn unlink_then_relink(store: TestStore) {
    store.link(&member("m1"), &user(1), LinkMethod::Api, at(1)).await.expect("link");
    let removed = store.unlink(&member("m1"), chrono::Utc::now()).await.expect("unlink").expect("was linked");
    assert_eq!(removed.line_user_id, user(1));
    assert!(store.unlink(&member("m1"), chrono::Utc::now()).await.expect("unlink twice").is_none());
    assert!(store.get_link(&member("m1")).await.expect("get").is_none());
    let again = store.link(&member("m2"), &user(1), LinkMethod::AccountLink, at(2)).await.expect("relink");
    assert!(matches!(again, LinkOutcome::Created(_)));
}

async fn user_events_resolve_through_links(store: TestStore) {
    let events = [
        event(json!({"type": "purchase", "member_id": "m1", "occurred_at": "2026-11-20T10:00:00Z"})),
        event(
            json!({"type": "message", "line_user_id": format!("U{:032x}", 1), "occurred_at": "2026-11-21T10:00:00Z"}),
        ),
        event(json!({"type": "purchase", "member_id": "m2", "occurred_at": "2026-11-22T10:00:00Z"})),
    ];
    store.insert_events(&events, at(1)).await.expect("insert");
    let types = |events: Vec<renkei_store::StoredEvent>| events.into_iter().map(|e| e.event_type).collect::<Vec<_>>();
    assert_eq!(
        types(store.user_events(&user(1)).await.expect("events")),
        ["message"],
        "member events wait for the link"
    );
    store.link(&member("m1"), &user(1), LinkMethod::Api, at(2)).await.expect("link");
    let linked = store.user_events(&user(1)).await.expect("events");
    assert_eq!(types(linked.clone()), ["purchase", "message"], "oldest first, member events now count");
    assert_eq!(linked[0].occurred_at, Utc.with_ymd_and_hms(2026, 11, 20, 10, 0, 0).single().expect("time"));
    store.unlink(&member("m1"), chrono::Utc::now()).await.expect("unlink");
    assert_eq!(types(store.user_events(&user(1)).await.expect("events")), ["message"]);
}

async fn following_is_recorded(store: TestStore) {
    assert_eq!(store.get_following(&user(1)).await.expect("get"), None);
    store.set_following(&user(1), true, at(1)).await.expect("follow");
    store.set_following(&user(1), false, at(2)).await.expect("unfollow");
    assert_eq!(store.get_following(&user(1)).await.expect("get"), Some(false));
    assert_eq!(store.counts().await.expect("counts").friendships, 1);
}

async fn timestamps_keep_microseconds(store: TestStore) {
    let e = event(json!({"type": "x", "member_id": "m1", "occurred_at": "2026-11-23T10:00:00.123456+09:00"}));
    store.insert_events(std::slice::from_ref(&e), at(1)).await.expect("insert");
    store.link(&member("m1"), &user(1), LinkMethod::Api, at(1)).await.expect("link");
    let stored = store.user_events(&user(1)).await.expect("events");
    assert_eq!(stored[0].occurred_at, e.occurred_at);
}

async fn member_batch_is_atomic(store: TestStore) {
    store.link(&member("owner"), &user(1), LinkMethod::Api, at(1)).await.expect("link");
    let before = store.counts().await.expect("counts");
    let mut claiming = patch("m2", json!({"rank": "gold"}));
    claiming.line_user_id = Some(user(1));
    let result = store.upsert_members(&[patch("m1", json!({"rank": "silver"})), claiming], at(2)).await;
    assert!(matches!(result, Err(StoreError::Conflict(_))), "{result:?}");
    assert_eq!(store.counts().await.expect("counts"), before, "the first member of the refused batch is not written");
}

/// A batch is applied in order: a member repeated in it merges twice, a
/// LINE user claimed twice in it is refused whole, and a link repeated to the
/// same LINE user changes nothing.
async fn member_batch_applies_in_order(store: TestStore) {
    let linked =
        |id: &str, attributes: Value, n: u32| MemberPatch { line_user_id: Some(user(n)), ..patch(id, attributes) };
    let batch = [
        linked("m1", json!({"rank": "silver", "points": 1}), 1),
        patch("m2", json!({"rank": "gold"})),
        linked("m1", json!({"points": null, "name": "花子"}), 1),
        patch("m2", json!({"rank": "gold"})),
    ];
    let outcome = store.upsert_members(&batch, at(1)).await.expect("batch");
    assert_eq!((outcome.created, outcome.updated, outcome.unchanged, outcome.linked), (2, 1, 1, 1));
    let m1 = store.get_member(&member("m1")).await.expect("get").expect("m1");
    assert_eq!(Value::Object(m1.attributes), json!({"rank": "silver", "name": "花子"}));
    let link = store.get_link(&member("m1")).await.expect("get link").expect("linked");
    assert_eq!((link.line_user_id, link.method), (user(1), LinkMethod::Import));

    let before = store.counts().await.expect("counts");
    let result =
        store.upsert_members(&[linked("m3", json!({"a": 1}), 3), linked("m4", json!({"a": 2}), 3)], at(2)).await;
    assert!(matches!(result, Err(StoreError::Conflict(ref m)) if m.contains("m3")), "{result:?}");
    assert_eq!(store.counts().await.expect("counts"), before, "nothing of the refused batch is written");
    let result = store.upsert_members(&[linked("m1", json!({}), 2)], at(2)).await;
    assert!(matches!(result, Err(StoreError::Conflict(ref m)) if m.contains("m1")), "{result:?}");
}

/// One holder at a time; renewals keep it; an expired lease is taken over;
/// only the holder releases it.
async fn leases_have_one_holder(store: TestStore) {
    assert!(store.acquire_lease("quota", "a", at(1), at(2)).await.expect("take"));
    assert!(!store.acquire_lease("quota", "b", at(1), at(3)).await.expect("held by a"));
    assert!(store.acquire_lease("quota", "a", at(1), at(4)).await.expect("renew"));
    assert!(!store.acquire_lease("quota", "b", at(3), at(5)).await.expect("renewed until 4"));
    let leases = store.leases().await.expect("leases");
    assert_eq!(leases.len(), 1);
    assert_eq!((leases[0].holder.as_str(), leases[0].acquired_at, leases[0].expires_at), ("a", at(1), at(4)));
    assert!(store.acquire_lease("quota", "b", at(4), at(6)).await.expect("expired: taken over"));
    assert!(store.acquire_lease("sync", "a", at(4), at(6)).await.expect("another name"));
    store.release_lease("quota", "a").await.expect("not the holder: no effect");
    let leases = store.leases().await.expect("leases");
    assert_eq!((leases[0].holder.as_str(), leases[0].acquired_at), ("b", at(4)));
    store.release_lease("quota", "b").await.expect("release");
    assert!(store.acquire_lease("quota", "a", at(5), at(6)).await.expect("free again"));
}

async fn import_is_all_or_nothing(store: TestStore) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(Ok(vec![patch("m1", json!({"a": 1})), patch("m2", json!({"a": 2}))])).await.expect("send");
    tx.send(Err("members.csv:7: broken".to_string())).await.expect("send");
    drop(tx);
    let result = store.import_members(rx, at(1)).await;
    assert!(matches!(result, Err(StoreError::ImportAborted(ref m)) if m.contains(":7:")), "{result:?}");
    assert_eq!(store.counts().await.expect("counts"), StoreCounts::default());

    let (tx, rx) = mpsc::channel(4);
    let events: Vec<NewEvent> = (0..2500)
        .map(|i| event(json!({"event_id": format!("e{}", i % 2000), "type": "x", "member_id": "m1", "occurred_at": "2026-11-23T10:00:00Z"})))
        .collect();
    for chunk in events.chunks(1000) {
        tx.send(Ok(chunk.to_vec())).await.expect("send");
    }
    drop(tx);
    let outcome = store.import_events(rx, at(1)).await.expect("import");
    assert_eq!((outcome.accepted, outcome.duplicates), (2000, 500));
}

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    events_are_idempotent_on_event_id,
    events_without_event_id_are_all_kept,
    appended_events_merge_once,
    merged_events_count_and_feed_changes,
    a_merge_skips_an_event_stored_meanwhile,
    members_merge_and_null_deletes,
    links_are_one_to_one,
    unlink_then_relink,
    every_link_has_its_member,
    user_events_resolve_through_links,
    following_is_recorded,
    timestamps_keep_microseconds,
    member_batch_is_atomic,
    member_batch_applies_in_order,
    leases_have_one_holder,
    import_is_all_or_nothing,
);

#[test]
fn the_suite_knows_where_postgres_is() {
    // Keeps the skip rule visible: in CI the variable must be set.
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(std::env::var(renkei_test_support::POSTGRES_URL_VAR).is_ok());
    }
}

/// Every query renkei runs is short: JIT compilation (redone on every
/// execution) would cost more than it saves, so the store's sessions run
/// without it, whatever the server's default.
#[tokio::test]
async fn postgres_sessions_run_without_jit() {
    let Some(test) = renkei_test_support::postgres().await.expect("postgres store") else { return };
    let store = renkei_store::PgStore::connect(&test.url).await.expect("connect");
    let jit: String = sqlx::query_scalar("SHOW jit").fetch_one(store.pool()).await.expect("show jit");
    assert_eq!(jit, "off");
}
