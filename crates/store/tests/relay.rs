//! RelayStore conformance: the webhook relay's queue behaves the same on
//! SQLite and PostgreSQL: bodies queued with their events, per target, in
//! order, byte for byte; retries, dead letters, and one holder per target.

use chrono::{DateTime, Duration, TimeZone, Utc};
use renkei_store::webhook::NewWebhookEvent;
use renkei_store::{RelayBody, RelayCounts};
use renkei_test_support::TestStore;
use serde_json::json;

fn at(minute: u32, second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, minute, second).single().expect("valid time")
}

fn event(id: &str) -> NewWebhookEvent {
    NewWebhookEvent {
        webhook_event_id: Some(id.to_string()),
        event_type: "message".into(),
        body: json!({"type": "message", "webhookEventId": id}),
    }
}

fn targets() -> Vec<String> {
    vec!["crm".to_string(), "bot".to_string()]
}

/// Accepts a body holding the event `id`, relayed to `targets`.
async fn accept(store: &TestStore, id: &str, body: &[u8], targets: &[String], when: DateTime<Utc>) -> Vec<Option<i64>> {
    let relay = RelayBody { body, signature: &format!("sig-{id}"), targets };
    store.accept_webhook(&[event(id)], Some(relay), when).await.expect("accept")
}

async fn bodies_are_queued_per_target_in_order_byte_for_byte(store: TestStore) {
    // Bytes as received: spacing, key order, a trailing newline, even a byte that is not UTF-8.
    let bodies: [&[u8]; 3] = [b"{ \"events\" : [1] }\n", b"{\"b\":2,\"a\":1}", b"\xff\x00raw"];
    for (n, body) in bodies.iter().enumerate() {
        let ids = accept(&store, &format!("E{n}"), body, &targets(), at(0, n as u32)).await;
        assert!(ids[0].is_some());
    }
    // A redelivery of stored events only is not queued again; without targets nothing is queued.
    assert_eq!(accept(&store, "E1", b"again", &targets(), at(1, 0)).await, vec![None]);
    assert!(accept(&store, "E9", b"nowhere", &[], at(1, 0)).await[0].is_some());
    store.insert_webhook_events(&[event("E10")], at(1, 0)).await.expect("plain insert");

    for target in ["crm", "bot"] {
        let items = store.next_relay_items(target, 10).await.expect("items");
        let got: Vec<&[u8]> = items.iter().map(|i| i.body.as_slice()).collect();
        assert_eq!(got, bodies.to_vec(), "{target}");
        assert!(items.windows(2).all(|w| w[0].body_id < w[1].body_id));
        assert_eq!(items[1].signature, "sig-E1");
        assert_eq!((items[2].received_at, items[2].attempts, items[2].next_attempt_at), (at(0, 2), 0, at(0, 2)));
        assert_eq!(store.relay_counts(target).await.expect("counts"), RelayCounts { pending: 3, dead: 0 });
    }
    assert_eq!(store.next_relay_items("crm", 2).await.expect("limit").len(), 2);
    assert!(store.next_relay_items("unknown", 10).await.expect("none").is_empty());
    assert_eq!(store.relay_counts("unknown").await.expect("counts"), RelayCounts::default());
}

async fn delivered_retried_and_dead_lettered_rows_leave_the_queue_in_order(store: TestStore) {
    for n in 0..3 {
        accept(&store, &format!("E{n}"), format!("body {n}").as_bytes(), &targets(), at(0, n)).await;
    }
    let first = store.next_relay_items("crm", 10).await.expect("items");
    // Delivered to one target: the other still has it.
    store.relay_delivered("crm", first[0].body_id).await.expect("delivered");
    let crm = store.next_relay_items("crm", 10).await.expect("crm");
    assert_eq!(crm.iter().map(|i| i.body.clone()).collect::<Vec<_>>(), vec![b"body 1".to_vec(), b"body 2".to_vec()]);
    assert_eq!(store.next_relay_items("bot", 10).await.expect("bot")[0].body, b"body 0");
    store.relay_delivered("bot", first[0].body_id).await.expect("delivered to both");
    assert_eq!(store.next_relay_items("bot", 10).await.expect("bot")[0].body, b"body 1");

    // A failure keeps the row at the head, counted, until its retry time.
    let head = crm[0].body_id;
    store.relay_failed("crm", head, "503 Service Unavailable", Some(at(5, 0)), at(1, 0)).await.expect("failed");
    let again = store.next_relay_items("crm", 10).await.expect("again");
    assert_eq!((again[0].body_id, again[0].attempts, again[0].next_attempt_at), (head, 1, at(5, 0)));
    // Dead-lettered: out of the queue, counted, and the next body is the head.
    store.relay_failed("crm", head, "timed out", None, at(6, 0)).await.expect("dead");
    let after = store.next_relay_items("crm", 10).await.expect("after");
    assert_eq!(after.iter().map(|i| i.body.clone()).collect::<Vec<_>>(), vec![b"body 2".to_vec()]);
    assert_eq!(store.relay_counts("crm").await.expect("counts"), RelayCounts { pending: 1, dead: 1 });
    assert_eq!(store.relay_counts("bot").await.expect("counts"), RelayCounts { pending: 2, dead: 0 });
    // The dead body stays for inspection while the other target still delivers it.
    store.relay_delivered("bot", head).await.expect("bot has it");
    assert_eq!(store.relay_counts("crm").await.expect("counts"), RelayCounts { pending: 1, dead: 1 });
}

async fn one_instance_holds_a_target_at_a_time(store: TestStore) {
    let until = |t: DateTime<Utc>| t + Duration::seconds(30);
    assert!(store.acquire_relay_lease("crm", "a", at(0, 0), until(at(0, 0))).await.expect("a takes"));
    assert!(!store.acquire_relay_lease("crm", "b", at(0, 10), until(at(0, 10))).await.expect("b waits"));
    assert!(store.acquire_relay_lease("bot", "b", at(0, 10), until(at(0, 10))).await.expect("another target"));
    assert!(store.acquire_relay_lease("crm", "a", at(0, 20), until(at(0, 20))).await.expect("a renews"));
    assert!(!store.acquire_relay_lease("crm", "b", at(0, 40), until(at(0, 40))).await.expect("renewed lease holds"));
    assert!(store.acquire_relay_lease("crm", "b", at(0, 50), until(at(0, 50))).await.expect("expired: b takes over"));
    assert!(!store.acquire_relay_lease("crm", "a", at(0, 51), until(at(0, 51))).await.expect("a lost it"));
    store.release_relay_lease("crm", "a").await.expect("not a's to release");
    assert!(!store.acquire_relay_lease("crm", "c", at(0, 52), until(at(0, 52))).await.expect("still b's"));
    store.release_relay_lease("crm", "b").await.expect("release");
    assert!(store.acquire_relay_lease("crm", "c", at(0, 53), until(at(0, 53))).await.expect("released: c takes"));
}

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    bodies_are_queued_per_target_in_order_byte_for_byte,
    delivered_retried_and_dead_lettered_rows_leave_the_queue_in_order,
    one_instance_holds_a_target_at_a_time,
);
