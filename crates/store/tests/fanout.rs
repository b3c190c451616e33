//! The fan-out query (who a restock reaches) and the once-per window, on
//! both backends: the same SKU within the window matches; another SKU, an
//! event outside the window, another type or a number never do; member-only
//! events reach the linked LINE user, or stay member-only when unlinked;
//! the outbox tells which recipients already have the trigger's delivery.

use chrono::{DateTime, Duration, Utc};
use renkei_core::LinkMethod;
use renkei_store::dispatch::NewDelivery;
use renkei_store::{FanoutHit, FanoutQuery};
use renkei_test_support::TestStore;
use serde_json::json;
use std::collections::BTreeSet;

mod common;
use common::{at, event, member, user};

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    a_fanout_matches_the_same_sku_within_the_window,
    pages_follow_each_other_without_gaps_or_repeats,
    a_window_is_shared_until_it_ends,
);

fn query(types: &[&str], sku: &str, until: DateTime<Utc>, within: Duration) -> FanoutQuery {
    FanoutQuery {
        event_types: types.iter().map(|t| t.to_string()).collect(),
        matches: vec![("sku".to_string(), sku.to_string())],
        since: until - within,
        until,
    }
}

/// Every page of a query, `limit` at a time.
async fn all_hits(store: &TestStore, query: &FanoutQuery, limit: u32) -> Vec<FanoutHit> {
    let (mut hits, mut after) = (Vec::new(), None);
    loop {
        let page = store.fanout_page(query, after, limit).await.expect("page");
        let Some(last) = page.last() else { return hits };
        after = Some(last.place());
        hits.extend(page);
    }
}

fn recipients(hits: &[FanoutHit]) -> BTreeSet<(Option<String>, Option<String>)> {
    hits.iter().map(|h| (h.line_user_id.clone(), h.member_id.clone())).collect()
}

async fn a_fanout_matches_the_same_sku_within_the_window(store: TestStore) {
    let restock = at(12);
    store.link(&member("m2"), &user(2), LinkMethod::Api, at(0)).await.expect("link");
    let u = |n: u32| user(n).as_str().to_string();
    let ago = |hours: i64| (restock - Duration::hours(hours)).to_rfc3339();
    let events = vec![
        // Matches: by LINE user; by a linked member; by an unlinked member; a `view` when asked.
        json!({"type": "favorite", "line_user_id": u(1), "occurred_at": ago(5), "properties": {"sku": "A"}}),
        json!({"type": "favorite", "member_id": "m2", "occurred_at": ago(6), "properties": {"sku": "A"}}),
        json!({"type": "favorite", "member_id": "m3", "occurred_at": ago(7), "properties": {"sku": "A"}}),
        json!({"type": "view", "line_user_id": u(4), "occurred_at": ago(1), "properties": {"sku": "A"}}),
        // Never: another SKU, outside the window, after the restock, a number, nested elsewhere, no SKU.
        json!({"type": "favorite", "line_user_id": u(5), "occurred_at": ago(1), "properties": {"sku": "B"}}),
        json!({"type": "favorite", "line_user_id": u(6), "occurred_at": ago(25), "properties": {"sku": "A"}}),
        json!({"type": "favorite", "line_user_id": u(7), "occurred_at": (restock + Duration::hours(1)).to_rfc3339(), "properties": {"sku": "A"}}),
        json!({"type": "favorite", "line_user_id": u(8), "occurred_at": ago(1), "properties": {"sku": 1}}),
        json!({"type": "favorite", "line_user_id": u(9), "occurred_at": ago(1), "properties": {"item": {"sku": "A"}}}),
        json!({"type": "favorite", "line_user_id": u(10), "occurred_at": ago(1), "properties": {}}),
        // The edge: exactly `within` before is out, the restock's own instant in.
        json!({"type": "favorite", "line_user_id": u(11), "occurred_at": ago(24), "properties": {"sku": "A"}}),
        json!({"type": "favorite", "line_user_id": u(12), "occurred_at": restock.to_rfc3339(), "properties": {"sku": "A"}}),
    ];
    let events: Vec<_> = events.into_iter().map(event).collect();
    store.insert_events(&events, at(13)).await.expect("insert");

    let favorites = all_hits(&store, &query(&["favorite"], "A", restock, Duration::hours(24)), 100).await;
    assert_eq!(
        recipients(&favorites),
        BTreeSet::from([
            (Some(u(1)), None),
            (Some(u(2)), Some("m2".to_string())),
            (None, Some("m3".to_string())),
            (Some(u(12)), None),
        ])
    );
    let both = all_hits(&store, &query(&["favorite", "view"], "A", restock, Duration::hours(24)), 100).await;
    assert_eq!(recipients(&both).len(), 5, "{both:?}");
    assert!(recipients(&both).contains(&(Some(u(4)), None)));
    let b = all_hits(&store, &query(&["favorite"], "B", restock, Duration::hours(24)), 100).await;
    assert_eq!(recipients(&b), BTreeSet::from([(Some(u(5)), None)]));
    // Which recipients have a delivery of the trigger (by LINE user, or member key).
    let delivery = |recipient: &str, line_user_id: Option<renkei_core::LineUserId>| NewDelivery {
        campaign_id: "c".into(),
        trigger_key: "fanout:k:1".into(),
        recipient_key: recipient.into(),
        line_user_id,
        member_id: None,
        due_at: restock,
        messages: json!([]).into(),
        context: json!({}),
    };
    let done = [delivery(&u(1), Some(user(1))), delivery("member:m3", None)];
    store.insert_deliveries(&done, restock).await.expect("deliveries");
    let asked: Vec<String> = vec![u(1), u(2), "member:m3".into(), "member:m4".into()];
    let delivered = store.delivered_recipients("c", "fanout:k:1", &asked).await.expect("delivered");
    assert_eq!(delivered, [u(1), "member:m3".to_string()].into_iter().collect());
    assert!(store.delivered_recipients("c", "fanout:k:2", &asked).await.expect("other key").is_empty());
    assert!(store.delivered_recipients("c", "fanout:k:1", &[]).await.expect("none asked").is_empty());
    let many: Vec<String> = (0..2_500u32).map(|n| user(n).as_str().to_string()).collect();
    assert_eq!(store.delivered_recipients("c", "fanout:k:1", &many).await.expect("chunks").len(), 1);

    // Nested properties are reached by a dotted name.
    let mut nested = query(&["favorite"], "A", restock, Duration::hours(24));
    nested.matches = vec![("item.sku".to_string(), "A".to_string())];
    assert_eq!(recipients(&all_hits(&store, &nested, 100).await), BTreeSet::from([(Some(u(9)), None)]));
}

async fn pages_follow_each_other_without_gaps_or_repeats(store: TestStore) {
    let restock = at(12);
    // 25 users, several sharing an instant (pages break ties by row id).
    let events: Vec<_> = (1..=25u32)
        .map(|n| {
            let when = restock - Duration::minutes(i64::from(n % 4));
            event(json!({"type": "favorite", "line_user_id": user(n).as_str(), "occurred_at": when.to_rfc3339(),
                         "properties": {"sku": "A"}}))
        })
        .collect();
    store.insert_events(&events, at(13)).await.expect("insert");
    let hits = all_hits(&store, &query(&["favorite"], "A", restock, Duration::hours(1)), 4).await;
    assert_eq!(hits.len(), 25);
    assert_eq!(recipients(&hits).len(), 25, "each event once");
    let places: Vec<_> = hits.iter().map(FanoutHit::place).collect();
    assert!(places.windows(2).all(|w| w[0] < w[1]), "in order: {places:?}");
}

async fn a_window_is_shared_until_it_ends(store: TestStore) {
    let day = Duration::days(1);
    let name = "fanout:c:0123456789abcdef";
    assert_eq!(store.open_window(name, at(1), day).await.expect("open"), at(1), "the first opens it");
    assert_eq!(store.open_window(name, at(1), day).await.expect("again"), at(1), "the same restock again");
    assert_eq!(store.open_window(name, at(20), day).await.expect("inside"), at(1), "a repeat inside it");
    assert_eq!(store.open_window(name, at(0), day).await.expect("late"), at(1), "a late, earlier one joins it");
    let next = at(1) + day;
    assert_eq!(store.open_window(name, next, day).await.expect("at the end"), next, "its end opens the next");
    assert_eq!(store.open_window(name, at(23), day).await.expect("old"), next);
    assert_eq!(store.open_window("fanout:c:other", at(20), day).await.expect("other"), at(20), "per name");
}
