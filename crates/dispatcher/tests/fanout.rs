//! Fan-out campaigns (再入荷) driven by the scheduler and sent through the
//! dispatcher to the LINE simulator, on both backends, with a manual clock:
//! the window (a repeat inside it reaches only users who qualified since; a
//! restock after its end opens the next), unlinked members skipped with
//! their reason, and a trigger event that lacks the match property.
#![allow(clippy::unwrap_used)]

mod common;

use chrono::Duration;
use common::{Backend, Spec, harness, personal_attrs, t0, user};
use renkei_core::{Clock, NewEvent, SkipReason};
use renkei_store::StoredEvent;
use serde_json::json;

renkei_test_support::on_both_backends!(
    renkei_test_support::available =>
    a_fanout_window_holds_repeats_and_the_next_window_reaches_again,
);

const RESTOCK: &str = "id: restock\nname: 再入荷\ntrigger:\n  fanout:\n    event: restock\n    to: { event: [favorite, view], match: [sku], within: 7d }\nmessages:\n  - template: same\n    alt_text: 再入荷しました\n";

fn favourite(user_n: Option<u32>, member: Option<&str>, sku: &str, at: chrono::DateTime<chrono::Utc>) -> NewEvent {
    let mut event = json!({"type": "favorite", "occurred_at": at.to_rfc3339(), "properties": {"sku": sku}});
    if let Some(n) = user_n {
        event["line_user_id"] = json!(user(n).as_str());
    }
    if let Some(member) = member {
        event["member_id"] = json!(member);
    }
    NewEvent::parse(&event).unwrap()
}

fn restock(id: &str, properties: serde_json::Value, at: chrono::DateTime<chrono::Utc>) -> NewEvent {
    NewEvent::parse(&json!({"event_id": id, "type": "restock", "line_user_id": user(99).as_str(),
        "occurred_at": at.to_rfc3339(), "properties": properties}))
    .unwrap()
}

async fn a_fanout_window_holds_repeats_and_the_next_window_reaches_again(backend: Backend) {
    let spec = Spec { campaigns: &[RESTOCK], ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    h.add_members(&[(1, personal_attrs(1, "gold")), (2, personal_attrs(2, "gold")), (3, personal_attrs(3, "gold"))])
        .await;
    let store = &h.test.store;
    let day = Duration::days(1);
    let insert = async |events: Vec<NewEvent>| store.insert_events(&events, h.clock.now()).await.unwrap();
    let restocks = async |id: &str| -> StoredEvent {
        let all = store.events_after(0, &["restock".to_string()], 100).await.unwrap();
        all.into_iter().find(|e| e.event_id.as_deref() == Some(id)).unwrap()
    };
    let campaign = h.campaigns.get("restock").unwrap();

    // User 1 by LINE user, user 2 through member m2's link, and the unlinked member m9.
    insert(vec![
        favourite(Some(1), None, "A", t0() - day),
        favourite(None, Some("m2"), "A", t0() - day),
        favourite(None, Some("m9"), "A", t0() - day),
        favourite(Some(3), None, "B", t0() - day),
    ])
    .await;
    insert(vec![restock("r1", json!({"sku": "A"}), t0())]).await;
    assert_eq!(h.runner.fan_out(campaign, &restocks("r1").await).await.unwrap(), 3);
    assert_eq!(h.runner.fan_out(campaign, &restocks("r1").await).await.unwrap(), 0, "reprocessed: nothing new");
    h.drain().await;
    let accepted = h.accepted_per_user();
    assert_eq!((accepted.get(user(1).as_str()), accepted.get(user(2).as_str())), (Some(&1), Some(&1)));
    let counts = store.campaign_counts("restock").await.unwrap();
    assert_eq!((counts.sent, counts.skipped.get(&SkipReason::Unlinked)), (2, Some(&1)), "{counts:?}");

    // Inside the window, a repeat reaches only user 3, who viewed A since.
    h.clock.set(t0() + Duration::hours(2));
    insert(vec![favourite(Some(3), None, "A", t0() + Duration::hours(1))]).await;
    let view = NewEvent::parse(&json!({"type": "view", "line_user_id": user(3).as_str(),
        "occurred_at": (t0() + Duration::hours(1)).to_rfc3339(), "properties": {"sku": "A"}}))
    .unwrap();
    insert(vec![view, restock("r2", json!({"sku": "A"}), t0() + Duration::hours(2))]).await;
    assert_eq!(h.runner.fan_out(campaign, &restocks("r2").await).await.unwrap(), 1);
    h.drain().await;
    assert_eq!(h.accepted_per_user().get(user(3).as_str()), Some(&1));

    // After the window's end (7 days after r1), the next restock opens a new
    // window: user 1, who favourited A again, is reached again; the others'
    // favourites are older than 7 days by then.
    let later = t0() + Duration::days(8);
    h.clock.set(later);
    insert(vec![favourite(Some(1), None, "A", later - day), restock("r3", json!({"sku": "A"}), later)]).await;
    assert_eq!(h.runner.fan_out(campaign, &restocks("r3").await).await.unwrap(), 1);
    h.drain().await;
    let accepted = h.accepted_per_user();
    assert_eq!(
        (accepted.get(user(1).as_str()), accepted.get(user(2).as_str()), accepted.get(user(3).as_str())),
        (Some(&2), Some(&1), Some(&1))
    );

    // A restock without a string `sku` reaches nobody; the events tail
    // handles fan-outs too (on_events).
    insert(vec![
        favourite(None, Some("m2"), "B", later - Duration::hours(1)),
        restock("r4", json!({"sku": 7}), later),
        restock("r5", json!({"sku": "B"}), later),
    ])
    .await;
    assert_eq!(h.runner.fan_out(campaign, &restocks("r4").await).await.unwrap(), 0);
    h.runner.on_events(&[restocks("r4").await, restocks("r5").await]).await.unwrap();
    let counts = store.campaign_counts("restock").await.unwrap();
    assert_eq!(counts.pending + counts.sent, 4 + 1, "user 2 for B (user 3's B favourite is 9 days old): {counts:?}");
}
