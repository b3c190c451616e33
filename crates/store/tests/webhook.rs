//! WebhookStore conformance: the webhook inbox and account-link nonces behave
//! the same on SQLite and PostgreSQL.

use chrono::{DateTime, Duration, TimeZone, Utc};
use renkei_store::webhook::{NewWebhookEvent, NonceUse};
use renkei_test_support::TestStore;
use serde_json::json;

mod common;
use common::{member, user};

fn at(minute: u32, second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, minute, second).single().expect("valid time")
}

fn event(id: Option<&str>, event_type: &str) -> NewWebhookEvent {
    let mut body = json!({"type": event_type, "timestamp": 1});
    if let Some(id) = id {
        body["webhookEventId"] = json!(id);
    }
    NewWebhookEvent { webhook_event_id: id.map(str::to_string), event_type: event_type.to_string(), body }
}

async fn webhook_events_dedupe_on_webhook_event_id(store: TestStore) {
    let ids = store
        .insert_webhook_events(
            &[event(Some("A"), "follow"), event(Some("B"), "unknownType"), event(Some("A"), "follow")],
            at(0, 0),
        )
        .await
        .expect("insert");
    assert!(ids[0].is_some() && ids[1].is_some());
    assert_eq!(ids[2], None, "a repeat inside the batch is a duplicate");
    let again = store.insert_webhook_events(&[event(Some("B"), "unknownType")], at(1, 0)).await.expect("again");
    assert_eq!(again, vec![None], "a redelivery is a duplicate");
    let without =
        store.insert_webhook_events(&[event(None, "follow"), event(None, "follow")], at(1, 0)).await.expect("no id");
    assert!(without.iter().all(Option::is_some), "events without webhookEventId are always stored");
    assert_eq!(store.counts().await.expect("counts").webhook_events, 4);
    let stored = store.get_webhook_event("B").await.expect("get").expect("stored");
    assert_eq!(stored.event_type, "unknownType");
    assert_eq!(stored.body["webhookEventId"], "B");
    assert_eq!(stored.received_at, at(0, 0));
    assert_eq!(stored.processed_at, None);
    assert_eq!(store.pending_webhook_events().await.expect("pending"), 4);
}

async fn claims_are_leased_and_survive_a_crash(store: TestStore) {
    let inserted = store
        .insert_webhook_events(
            &[event(Some("A"), "follow"), event(Some("B"), "message"), event(Some("C"), "x")],
            at(0, 0),
        )
        .await
        .expect("insert");
    let lease = Duration::seconds(30);
    let first = store.claim_webhook_events(at(0, 1), lease, 2).await.expect("claim");
    assert_eq!(first.iter().map(|r| r.webhook_event_id.as_deref()).collect::<Vec<_>>(), vec![Some("A"), Some("B")]);
    assert_eq!(first[0].id, inserted[0].expect("id"));
    assert_eq!(first[0].attempts, 1);
    let second = store.claim_webhook_events(at(0, 2), lease, 10).await.expect("claim");
    assert_eq!(second.len(), 1, "leased rows are not claimed twice");
    assert_eq!(second[0].webhook_event_id.as_deref(), Some("C"));
    store.finish_webhook_event(first[0].id, at(0, 3), None).await.expect("finish");
    store.record_webhook_error(first[1].id, "store down").await.expect("error");
    // The worker holding B "crashed": once its lease is over, B comes back.
    assert!(store.claim_webhook_events(at(0, 20), lease, 10).await.expect("claim").is_empty());
    let again = store.claim_webhook_events(at(0, 40), lease, 10).await.expect("claim");
    let again_ids: Vec<_> = again.iter().map(|r| r.webhook_event_id.clone().unwrap_or_default()).collect();
    assert_eq!(again_ids, vec!["B", "C"]);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].last_error.as_deref(), Some("store down"));
    let done = store.get_webhook_event("A").await.expect("get").expect("row");
    assert_eq!(done.processed_at, Some(at(0, 3)));
    for row in &again {
        store.finish_webhook_event(row.id, at(0, 41), Some("gave up")).await.expect("finish");
    }
    assert_eq!(store.pending_webhook_events().await.expect("pending"), 0);
    assert!(store.claim_webhook_events(at(5, 0), lease, 10).await.expect("claim").is_empty());
    assert_eq!(store.get_webhook_event("C").await.expect("get").expect("row").last_error.as_deref(), Some("gave up"));
}

async fn nonces_are_single_use_and_expire(store: TestStore) {
    let expires = at(10, 0);
    store.create_link_nonce("n1", &member("m1"), at(0, 0), expires).await.expect("create");
    let duplicate = store.create_link_nonce("n1", &member("m2"), at(0, 0), expires).await;
    assert!(matches!(duplicate, Err(renkei_store::StoreError::Conflict(_))), "{duplicate:?}");
    assert_eq!(store.consume_link_nonce("nope", &user(1), 1, at(1, 0)).await.expect("consume"), NonceUse::Unknown);

    let used = store.consume_link_nonce("n1", &user(1), 7, at(9, 59)).await.expect("consume");
    assert_eq!(used, NonceUse::Consumed(member("m1")));
    // The same webhook row processed again after a crash gets the same answer.
    assert_eq!(store.consume_link_nonce("n1", &user(1), 7, at(9, 59)).await.expect("again"), used);
    assert_eq!(store.consume_link_nonce("n1", &user(2), 8, at(9, 59)).await.expect("reuse"), NonceUse::AlreadyUsed);
    assert_eq!(store.consume_link_nonce("n1", &user(1), 9, at(9, 59)).await.expect("reuse"), NonceUse::AlreadyUsed);
    let nonce = store.get_link_nonce("n1").await.expect("get").expect("exists");
    assert_eq!((nonce.used_at, nonce.result.as_deref()), (Some(at(9, 59)), Some("ok")));
    assert_eq!(nonce.line_user_id.as_deref(), Some(user(1).as_str()));
    store.set_link_nonce_result("n1", "conflict").await.expect("result");
    assert_eq!(store.get_link_nonce("n1").await.expect("get").expect("exists").result.as_deref(), Some("conflict"));

    store.create_link_nonce("n2", &member("m2"), at(0, 0), expires).await.expect("create");
    assert_eq!(store.consume_link_nonce("n2", &user(2), 1, at(10, 0)).await.expect("late"), NonceUse::Expired);
    assert_eq!(store.get_link_nonce("n2").await.expect("get").expect("exists").used_at, None);

    store.create_link_nonce("n3", &member("m3"), at(0, 0), expires).await.expect("create");
    assert!(store.fail_link_nonce("n3", at(1, 0)).await.expect("fail"));
    assert!(!store.fail_link_nonce("n3", at(1, 1)).await.expect("fail twice"));
    assert!(!store.fail_link_nonce("unknown", at(1, 1)).await.expect("fail unknown"));
    let failed = store.get_link_nonce("n3").await.expect("get").expect("exists");
    assert_eq!((failed.result.as_deref(), failed.used_at), (Some("failed"), Some(at(1, 0))));
    assert_eq!(store.consume_link_nonce("n3", &user(3), 2, at(1, 2)).await.expect("after fail"), NonceUse::AlreadyUsed);
}

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    webhook_events_dedupe_on_webhook_event_id,
    claims_are_leased_and_survive_a_crash,
    nonces_are_single_use_and_expire,
);
