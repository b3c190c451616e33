//! OperatorStore and OverviewReads conformance on both backends: operators
//! and roles, sessions and their idle expiry, sign-in failures per subject,
//! the audit log, and the overview's counts.

use renkei_core::DeferReason;
use renkei_store::dispatch::{ClaimOutcome, NewDelivery, NewRequest, RequestKind};
use renkei_store::{AuditEntry, OperatorRole, OverviewCounts, WaitingDeliveries};
use renkei_test_support::TestStore;
use serde_json::json;

mod common;
use common::{at, member, user};

async fn operators_sessions_failures_and_audit(store: TestStore) {
    assert!(store.create_operator("sato", OperatorRole::Editor, "$argon2id$x", at(1)).await.expect("create"));
    assert!(!store.create_operator("sato", OperatorRole::Admin, "other", at(2)).await.expect("create"), "taken");
    assert!(store.create_operator("admin", OperatorRole::Admin, "$argon2id$y", at(1)).await.expect("create"));
    let listed = store.operators().await.expect("list");
    assert_eq!(
        listed.iter().map(|o| (o.name.as_str(), o.role)).collect::<Vec<_>>(),
        [("admin", OperatorRole::Admin), ("sato", OperatorRole::Editor)]
    );
    let (sato, hash) = store.operator_with_hash("sato").await.expect("read").expect("sato");
    assert_eq!((sato.role, hash.as_str()), (OperatorRole::Editor, "$argon2id$x"), "the first create stays");
    assert!(store.operator_with_hash("nobody").await.expect("read").is_none());

    store.create_session("hash-1", "sato", "csrf-1", at(10)).await.expect("session");
    let session = store.session("hash-1", at(5)).await.expect("read").expect("live");
    assert_eq!(
        (session.operator.as_str(), session.role, session.csrf_token.as_str()),
        ("sato", OperatorRole::Editor, "csrf-1")
    );
    assert!(store.session("hash-1", at(11)).await.expect("read").is_none(), "idle since before `seen_since`");
    store.touch_session("hash-1", at(20)).await.expect("touch");
    assert!(store.session("hash-1", at(11)).await.expect("read").is_some(), "touched");
    assert!(store.set_operator_role("sato", OperatorRole::Viewer, at(21)).await.expect("role"));
    assert!(!store.set_operator_role("nobody", OperatorRole::Viewer, at(21)).await.expect("role"));
    assert_eq!(store.session("hash-1", at(11)).await.expect("read").expect("live").role, OperatorRole::Viewer);
    store.create_session("hash-2", "admin", "csrf-2", at(10)).await.expect("session");
    assert_eq!(store.delete_idle_sessions(at(15)).await.expect("purge"), 1, "admin's idle session");
    assert!(store.remove_operator("sato").await.expect("remove"));
    assert!(!store.remove_operator("sato").await.expect("remove"));
    assert!(store.session("hash-1", at(0)).await.expect("read").is_none(), "a removed operator's sessions end");

    let subjects = ["name:sato", "addr:127.0.0.1"];
    for second in [12, 13, 14] {
        store.record_sign_in_failure(&subjects, at(second), at(0)).await.expect("failure");
    }
    assert_eq!(store.sign_in_failures("name:sato", at(13)).await.expect("count"), 2);
    assert_eq!(store.sign_in_failures("addr:127.0.0.1", at(0)).await.expect("count"), 3);
    store.record_sign_in_failure(&["name:sato"], at(16), at(14)).await.expect("failure forgets old ones");
    assert_eq!(store.sign_in_failures("name:sato", at(0)).await.expect("count"), 2);
    store.clear_sign_in_failures("name:sato").await.expect("clear");
    assert_eq!(store.sign_in_failures("name:sato", at(0)).await.expect("count"), 0);
    assert_eq!(store.sign_in_failures("addr:127.0.0.1", at(0)).await.expect("count"), 3, "other subjects stay");

    for (second, action) in [(20, "sign_in"), (21, "pause")] {
        let entry = AuditEntry {
            at: at(second),
            operator: "admin".into(),
            action: action.into(),
            target: "spring_sale".into(),
            detail: String::new(),
        };
        store.record_audit(&entry).await.expect("audit");
    }
    let log = store.audit_log(10).await.expect("log");
    assert_eq!(
        log.iter().map(|e| (e.action.as_str(), e.at)).collect::<Vec<_>>(),
        [("pause", at(21)), ("sign_in", at(20))]
    );
    assert_eq!(store.audit_log(1).await.expect("log").len(), 1);
}

async fn overview_counts_friends_links_and_deliveries(store: TestStore) {
    assert_eq!(store.overview_counts().await.expect("counts"), OverviewCounts::default());
    for (n, following) in [(1, true), (2, true), (3, false)] {
        store.set_following(&user(n), following, at(1)).await.expect("follow");
    }
    assert_eq!(store.friendship(&user(3)).await.expect("read"), Some((false, at(1))));
    let event = |id: &str, member_id: Option<&str>, line_user: Option<u32>, hour: u32| renkei_core::NewEvent {
        event_id: Some(renkei_core::EventId::parse(id).expect("event id")),
        event_type: renkei_core::EventType::parse("purchase").expect("type"),
        member_id: member_id.map(member),
        line_user_id: line_user.map(user),
        occurred_at: at(hour),
        properties: serde_json::Map::new(),
    };
    let events = [
        event("e1", Some("m-1"), None, 3),
        event("e2", None, Some(1), 5),
        event("e3", Some("m-1"), Some(1), 4),
        event("e4", Some("m-9"), Some(9), 6),
    ];
    store.insert_events(&events, at(7)).await.expect("events");
    let ids =
        |events: Vec<renkei_store::StoredEvent>| events.into_iter().filter_map(|e| e.event_id).collect::<Vec<_>>();
    let both = store.recent_events_of(Some(&user(1)), Some(&member("m-1")), 10).await.expect("events");
    assert_eq!(ids(both), ["e2", "e3", "e1"], "newest first, each once");
    let limited = store.recent_events_of(Some(&user(1)), Some(&member("m-1")), 2).await.expect("events");
    assert_eq!(ids(limited), ["e2", "e3"]);
    assert!(store.recent_events_of(None, None, 10).await.expect("events").is_empty());
    assert_eq!(store.friendship(&user(4)).await.expect("read"), None, "never followed");
    // Linked: one following friend, one blocked, one who never followed.
    for (n, id) in [(1, "m-1"), (3, "m-3"), (4, "m-4")] {
        store.link(&member(id), &user(n), renkei_core::LinkMethod::Api, at(2)).await.expect("link");
    }
    assert_eq!(store.links_by_method().await.expect("links"), [("api".to_string(), 3)]);
    // Nonces: one used, one failed, one never used and expired, one still open; one too old to count.
    for (nonce, created) in [("n-ok", 2), ("n-failed", 2), ("n-expired", 2), ("n-open", 5), ("n-old", 0)] {
        let expires = at(created) + chrono::Duration::minutes(10);
        store.create_link_nonce(nonce, &member("m-1"), at(created), expires).await.expect("nonce");
    }
    assert!(store.fail_link_nonce("n-failed", at(2)).await.expect("fail"));
    store.set_link_nonce_result("n-ok", "ok").await.expect("result");
    let nonces = store.link_nonces_by_result(at(1), at(5)).await.expect("nonces");
    let expected: Vec<(String, u64)> =
        [("expired", 1), ("failed", 1), ("ok", 1), ("open", 1)].map(|(k, n)| (k.to_string(), n)).into();
    assert_eq!(nonces, expected);
    let counts = store.overview_counts().await.expect("counts");
    // Linked with no follow or unfollow seen (user 4) counts as following, as the planner judges.
    let expected = OverviewCounts {
        following: 3,
        blocked: 1,
        linked: 3,
        linked_following: 2,
        deliveries_pending: 0,
        deliveries_failed: 0,
    };
    assert_eq!(counts, expected);

    // Deliveries: one waiting, two in requests LINE has not accepted, then one of those failed;
    // the same as the campaign's stats count them.
    let deliveries: Vec<NewDelivery> = (1..=3)
        .map(|n| NewDelivery {
            campaign_id: "c1".into(),
            trigger_key: "t".into(),
            recipient_key: user(n).as_str().to_string(),
            line_user_id: Some(user(n)),
            member_id: None,
            due_at: at(3),
            messages: json!([{"type": "text", "text": "hi"}]).into(),
            context: json!({}),
        })
        .collect();
    store.insert_deliveries(&deliveries, at(3)).await.expect("insert");
    let claim = store.claim_deliveries(at(4), 10).await.expect("claim");
    let ids: Vec<i64> = claim.deliveries.iter().map(|d| d.id).collect();
    let push = |id: i64, n: u32| NewRequest {
        kind: RequestKind::Push,
        retry_key: uuid::Uuid::new_v4(),
        messages: json!([{"type": "text", "text": "hi"}]),
        recipients: vec![user(n)],
        delivery_ids: vec![id],
        aggregation_unit: None,
    };
    let outcome = ClaimOutcome {
        requests: vec![push(ids[0], 1), push(ids[1], 2)],
        defers: vec![(ids[2], at(9), DeferReason::QuietHours)],
        ..ClaimOutcome::default()
    };
    let requests = claim.commit(&outcome, at(4)).await.expect("commit");
    let counts = store.overview_counts().await.expect("counts");
    assert_eq!((counts.deliveries_pending, counts.deliveries_failed), (3, 0));
    store.fail_request(requests[1], "400 bad", at(5)).await.expect("fail");
    let counts = store.overview_counts().await.expect("counts");
    assert_eq!((counts.deliveries_pending, counts.deliveries_failed), (2, 1));
    // One more due later on its own: it waits apart from the one quiet hours put back.
    let later = NewDelivery {
        recipient_key: "later".into(),
        line_user_id: Some(user(9)),
        due_at: at(20),
        ..deliveries[0].clone()
    };
    store.insert_deliveries(&[later], at(5)).await.expect("insert later");
    let waiting = store.waiting_by_campaign().await.expect("waiting");
    let waits = |waits_for, next_due| WaitingDeliveries { campaign_id: "c1".into(), waits_for, count: 1, next_due };
    assert_eq!(waiting, [waits(None, at(20)), waits(Some(DeferReason::QuietHours), at(9))]);
    let failures = store.recent_failures(10).await.expect("failures");
    assert_eq!(failures.len(), 1);
    let failure = &failures[0];
    assert_eq!(
        (failure.id, failure.campaign_id.as_deref(), failure.deliveries, failure.error.as_deref()),
        (requests[1], Some("c1"), 1, Some("400 bad"))
    );
    let of_user = |n: u32| {
        let store = &store;
        async move {
            let rows = store.recent_deliveries_to(&user(n), 10).await.expect("deliveries");
            rows.into_iter().map(|d| (d.campaign_id, d.status)).collect::<Vec<_>>()
        }
    };
    assert_eq!(of_user(2).await, [("c1".to_string(), "failed".to_string())]);
    assert_eq!(of_user(3).await, [("c1".to_string(), "pending".to_string())]);
    assert_eq!(of_user(1).await, [("c1".to_string(), "requested".to_string())]);
    let stats = store.campaign_counts("c1").await.expect("stats");
    assert_eq!((stats.pending + stats.requested, stats.failed), (3, 1), "as the stats count");
}

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    operators_sessions_failures_and_audit,
    overview_counts_friends_links_and_deliveries,
);
