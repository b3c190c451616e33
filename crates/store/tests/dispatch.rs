//! Dispatch storage (outbox, requests, campaign state, cron fires, cursors,
//! rich menus), run against every backend: SQLite always, PostgreSQL when
//! `RENKEI_TEST_POSTGRES_URL` is set (and always in CI).

use chrono::{DateTime, Utc};
use renkei_core::{DeferReason, LineUserId, LinkMethod, NewEvent};
use renkei_store::StoreError;
use renkei_store::dispatch::{
    CampaignCounts, ClaimOutcome, CronFire, DeliveryStatus, FireState, NewDelivery, NewRequest, RequestKind,
    RequestStatus, RichMenuChange, SkipReason,
};
use renkei_store::membership::{Cause, MembershipUpdate};
use renkei_test_support::TestStore;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

mod common;
use common::{at, member, user};

fn messages(text: &str) -> Value {
    json!([{"type": "text", "text": text}])
}

fn delivery(campaign: &str, trigger: &str, n: u32, due: DateTime<Utc>) -> NewDelivery {
    NewDelivery {
        campaign_id: campaign.to_string(),
        trigger_key: trigger.to_string(),
        recipient_key: user(n).as_str().to_string(),
        line_user_id: Some(user(n)),
        member_id: None,
        due_at: due,
        messages: messages("hello").into(),
        context: json!({"n": n}),
    }
}

fn push(delivery_id: i64, n: u32) -> NewRequest {
    NewRequest {
        kind: RequestKind::Push,
        retry_key: Uuid::new_v4(),
        messages: messages("hello"),
        recipients: vec![user(n)],
        delivery_ids: vec![delivery_id],
        aggregation_unit: Some("unit_a".into()),
    }
}

fn ids_of<T>(items: &[T], id: impl Fn(&T) -> i64) -> Vec<i64> {
    items.iter().map(id).collect()
}

async fn deliveries_are_deduplicated_by_campaign_trigger_and_recipient(store: TestStore) {
    let mut by_member = delivery("c1", "entered:7", 1, at(2));
    by_member.recipient_key = "member:m1".to_string();
    by_member.line_user_id = None;
    by_member.member_id = Some(member("m1"));
    let batch = vec![
        delivery("c1", "entered:7", 1, at(2)),
        delivery("c1", "entered:7", 2, at(2)),
        // A repeat inside the same batch counts once.
        delivery("c1", "entered:7", 2, at(3)),
        // Same user, other trigger or other campaign: distinct deliveries.
        delivery("c1", "entered:8", 1, at(2)),
        delivery("c2", "entered:7", 1, at(2)),
        by_member.clone(),
    ];
    assert_eq!(store.insert_deliveries(&batch, at(1)).await.expect("insert"), 5);
    assert_eq!(store.insert_deliveries(&batch, at(1)).await.expect("insert again"), 0);
    assert_eq!(store.insert_deliveries(&batch[..1], at(5)).await.expect("insert one again"), 0);
    assert_eq!(store.insert_deliveries(&[], at(5)).await.expect("insert none"), 0);

    let all = store.campaign_deliveries("c1", 0, 100).await.expect("c1 deliveries");
    assert_eq!(all.len(), 4);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ordered by id");
    let first = &all[0];
    assert_eq!(first.trigger_key, "entered:7");
    assert_eq!(first.line_user_id, Some(user(1)));
    assert_eq!(first.status, DeliveryStatus::Pending);
    assert_eq!(first.due_at, at(2));
    assert_eq!(first.created_at, at(1));
    assert_eq!(*first.messages, messages("hello"));
    assert_eq!(first.context, json!({"n": 1}));
    assert_eq!((first.skip_reason, first.request_id, first.requested_at), (None, None, None));
    assert!(all.iter().all(|d| std::sync::Arc::ptr_eq(&d.messages, &first.messages)), "one payload, decoded once");
    // The kept copy of the in-batch repeat is the first one.
    assert_eq!(all[1].due_at, at(2));
    let member_row = all.iter().find(|d| d.recipient_key == "member:m1").expect("member delivery");
    assert_eq!((member_row.line_user_id.clone(), member_row.member_id.clone()), (None, Some(member("m1"))));
    assert_eq!(store.get_delivery(member_row.id).await.expect("get").as_ref(), Some(member_row));
    assert_eq!(store.get_delivery(9_999).await.expect("get missing"), None);

    let page = store.campaign_deliveries("c1", all[1].id, 2).await.expect("page");
    assert_eq!(ids_of(&page, |d| d.id), vec![all[2].id, all[3].id]);
    assert_eq!(store.campaign_deliveries("c2", 0, 100).await.expect("c2").len(), 1);
    assert_eq!(store.campaign_counts("c1").await.expect("counts").pending, 4);

    // A resolved user is stored with the claim's commit.
    let claim = store.claim_deliveries(at(2), 100).await.expect("claim");
    let outcome = ClaimOutcome {
        defers: claim.deliveries.iter().map(|d| (d.id, at(9), DeferReason::QuietHours)).collect(),
        resolved: vec![(member_row.id, user(9))],
        ..ClaimOutcome::default()
    };
    claim.commit(&outcome, at(2)).await.expect("commit");
    let resolved = store.get_delivery(member_row.id).await.expect("get").expect("exists");
    assert_eq!(
        (resolved.line_user_id, resolved.status, resolved.due_at),
        (Some(user(9)), DeliveryStatus::Pending, at(9))
    );
    assert_eq!(resolved.recipient_key, "member:m1", "the dedupe key does not change");
}

async fn claims_respect_due_at_and_come_earliest_first(store: TestStore) {
    let batch = vec![delivery("c", "t", 1, at(5)), delivery("c", "t", 2, at(3)), delivery("c", "t", 3, at(4))];
    store.insert_deliveries(&batch, at(1)).await.expect("insert");
    assert_eq!(store.next_delivery_due().await.expect("next"), Some(at(3)));
    assert!(store.claim_deliveries(at(2), 10).await.expect("too early").is_empty());

    let claim = store.claim_deliveries(at(4), 10).await.expect("claim");
    let users: Vec<_> = claim.deliveries.iter().map(|d| d.line_user_id.clone().expect("user")).collect();
    assert_eq!(users, vec![user(2), user(3)], "due ones only, earliest first");
    assert!(claim.deliveries.iter().all(|d| *d.messages == messages("hello") && d.due_at <= at(4)));
    let skips = claim.deliveries.iter().map(|d| (d.id, SkipReason::Unfollowed)).collect();
    claim.commit(&ClaimOutcome { skips, ..ClaimOutcome::default() }, at(4)).await.expect("skip them");
    assert_eq!(store.next_delivery_due().await.expect("next"), Some(at(5)));

    let one = store.claim_deliveries(at(6), 1).await.expect("limit");
    assert_eq!((one.len(), one.deliveries[0].line_user_id.clone()), (1, Some(user(1))));
    // Deferred deliveries wait for their new due time.
    let id = one.deliveries[0].id;
    one.commit(&ClaimOutcome { defers: vec![(id, at(8), DeferReason::Quota)], ..ClaimOutcome::default() }, at(6))
        .await
        .expect("defer");
    assert_eq!(store.next_delivery_due().await.expect("next"), Some(at(8)));
    assert!(store.claim_deliveries(at(7), 10).await.expect("not yet").is_empty());
    let due = store.claim_deliveries(at(8), 10).await.expect("due");
    assert_eq!((ids_of(&due.deliveries, |d| d.id), due.deliveries[0].due_at), (vec![id], at(8)));
}

/// A claim gives each delivery its own messages and context, also when one
/// batch mixes shared and distinct payloads, and the member-only ones come
/// back resolved after a deferral.
async fn claimed_deliveries_carry_their_own_payload(store: TestStore) {
    let mut batch = Vec::new();
    // Three messages, shared as a render memo shares them, in runs of two;
    // two contexts in runs of three: six distinct payloads, and runs of the
    // same messages or context (written out once) across other changes.
    let shared: Vec<std::sync::Arc<serde_json::Value>> =
        (0..3).map(|k| std::sync::Arc::new(messages(&format!("text {k}")))).collect();
    for n in 1..=12u32 {
        let mut d = delivery("c", "t", n, at(1));
        d.messages = shared[(n as usize / 2) % 3].clone();
        d.context = json!({"part": (n / 3) % 2});
        if n == 12 {
            d.recipient_key = "member:m12".to_string();
            d.line_user_id = None;
            d.member_id = Some(member("m12"));
        }
        batch.push(d);
    }
    store.insert_deliveries(&batch, at(1)).await.expect("insert");
    // A second batch repeating a payload of the first.
    let mut later = delivery("c", "t", 13, at(1));
    later.messages = messages("text 1").into();
    later.context = json!({"part": 1});
    store.insert_deliveries(&[later.clone()], at(1)).await.expect("insert later");
    batch.push(later);

    let claim = store.claim_deliveries(at(2), 100).await.expect("claim");
    assert_eq!(claim.len(), 13);
    for d in &claim.deliveries {
        let stored = store.get_delivery(d.id).await.expect("get").expect("stored");
        let inserted = batch.iter().find(|n| n.recipient_key == stored.recipient_key).expect("inserted");
        assert_eq!((&*d.messages, &*d.context), (&*inserted.messages, &inserted.context), "delivery {}", d.id);
        assert_eq!((&d.line_user_id, &d.member_id), (&inserted.line_user_id, &inserted.member_id));
        assert_eq!((d.campaign_id.as_str(), d.due_at), ("c", at(1)));
    }
    let held = claim.deliveries.iter().find(|d| d.line_user_id.is_none()).map(|d| d.id).expect("member-only");
    let outcome = ClaimOutcome {
        defers: claim.deliveries.iter().map(|d| (d.id, at(3), DeferReason::QuietHours)).collect(),
        resolved: vec![(held, user(12))],
        ..ClaimOutcome::default()
    };
    claim.commit(&outcome, at(2)).await.expect("defer all");
    let again = store.claim_deliveries(at(3), 100).await.expect("claim again");
    let resolved = again.deliveries.iter().find(|d| d.id == held).expect("held again");
    assert_eq!((resolved.line_user_id.clone(), resolved.member_id.clone()), (Some(user(12)), Some(member("m12"))));
    assert_eq!(*resolved.messages, messages("text 0"));
}

/// A claim past a queue key (where an earlier claim ended) sees only what
/// comes after it in queue order (due time, then id); without one, everything due.
async fn claims_can_start_past_a_queue_key(store: TestStore) {
    let batch = vec![
        delivery("c", "t", 1, at(1)),
        delivery("c", "t", 2, at(1)),
        delivery("c", "t", 3, at(2)),
        delivery("c", "t", 4, at(1)),
    ];
    store.insert_deliveries(&batch, at(1)).await.expect("insert");
    let all = store.claim_deliveries_after(at(3), 10, None).await.expect("claim all");
    let keys: Vec<(DateTime<Utc>, i64)> = all.deliveries.iter().map(|d| (d.due_at, d.id)).collect();
    assert_eq!(keys.len(), 4);
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "queue order: {keys:?}");
    let end = all.last_key();
    all.release().await.expect("release");
    let first_two = store.claim_deliveries_after(at(3), 2, None).await.expect("claim two");
    assert_eq!(ids_of(&first_two.deliveries, |d| d.id), vec![keys[0].1, keys[1].1]);
    let past_them = first_two.last_key();
    let skipped = skip_all(&first_two);
    first_two.commit(&skipped, at(3)).await.expect("commit");
    let past_second = store.claim_deliveries_after(at(3), 10, past_them).await.expect("claim past");
    assert_eq!(ids_of(&past_second.deliveries, |d| d.id), vec![keys[2].1, keys[3].1]);
    past_second.release().await.expect("release");
    let past_last = store.claim_deliveries_after(at(3), 10, end).await.expect("claim past the end");
    assert!(past_last.is_empty());
}

/// Skips every delivery a claim holds.
fn skip_all(claim: &renkei_store::dispatch::Claim) -> ClaimOutcome {
    let skips = claim.deliveries.iter().map(|d| (d.id, SkipReason::Unfollowed)).collect();
    ClaimOutcome { skips, ..ClaimOutcome::default() }
}

async fn a_claim_commits_all_of_its_outcome_or_nothing(store: TestStore) {
    store
        .insert_deliveries(&[delivery("c", "t", 1, at(1)), delivery("c", "t", 2, at(1))], at(1))
        .await
        .expect("insert");
    let claim = store.claim_deliveries(at(2), 10).await.expect("claim");
    let (d1, d2) = (claim.deliveries[0].id, claim.deliveries[1].id);
    // Dropped unfinished (a planner failed or crashed): nothing was written.
    drop(claim);
    assert_eq!(store.next_delivery_due().await.expect("next"), Some(at(1)));

    let requests = |ids: &[(i64, u32)]| ids.iter().map(|&(d, n)| push(d, n)).collect::<Vec<_>>();
    let mut mismatched = push(d2, 2);
    mismatched.recipients.push(user(3));
    let refused = [
        ("a delivery left out", ClaimOutcome { requests: requests(&[(d1, 1)]), ..ClaimOutcome::default() }),
        (
            "two outcomes for one delivery",
            ClaimOutcome {
                requests: requests(&[(d1, 1), (d2, 2)]),
                skips: vec![(d1, SkipReason::Unfollowed)],
                ..ClaimOutcome::default()
            },
        ),
        (
            "a delivery in two requests",
            ClaimOutcome { requests: requests(&[(d1, 1), (d1, 1), (d2, 2)]), ..ClaimOutcome::default() },
        ),
        (
            "a delivery the claim does not hold",
            ClaimOutcome {
                requests: requests(&[(d1, 1), (d2, 2)]),
                defers: vec![(9_999, at(5), DeferReason::QuietHours)],
                ..ClaimOutcome::default()
            },
        ),
        (
            "recipients that do not match the deliveries",
            ClaimOutcome { requests: vec![push(d1, 1), mismatched], ..ClaimOutcome::default() },
        ),
        (
            "a resolution for a delivery the claim does not hold",
            ClaimOutcome {
                requests: requests(&[(d1, 1), (d2, 2)]),
                resolved: vec![(9_999, user(9))],
                ..ClaimOutcome::default()
            },
        ),
    ];
    for (what, outcome) in refused {
        let claim = store.claim_deliveries(at(2), 10).await.expect("claim");
        assert_eq!(claim.len(), 2, "{what}: both are claimable again");
        let result = claim.commit(&outcome, at(3)).await;
        assert!(matches!(result, Err(StoreError::Conflict(_))), "{what}: expected a conflict, got {result:?}");
        let one = store.get_delivery(d1).await.expect("get").expect("d1");
        assert_eq!((one.status, one.request_id, one.requested_at), (DeliveryStatus::Pending, None, None), "{what}");
        assert_eq!(store.next_request_due().await.expect("next request"), None, "{what}");
        assert!(store.sent_counts(&[user(1)], None, at(0)).await.expect("count").is_empty(), "{what}");
    }
    let counts = store.counts().await.expect("counts");
    assert_eq!((counts.deliveries, counts.send_requests), (2, 0));
    // The refused commits rolled back the kept counts too (migration 0025).
    let pending = CampaignCounts { pending: 2, ..CampaignCounts::default() };
    assert_eq!(store.campaign_counts("c").await.expect("counts"), pending);

    let claim = store.claim_deliveries(at(2), 10).await.expect("claim");
    let outcome = ClaimOutcome {
        requests: requests(&[(d2, 2)]),
        skips: vec![(d1, SkipReason::Unfollowed)],
        ..ClaimOutcome::default()
    };
    let ids = claim.commit(&outcome, at(3)).await.expect("commit");
    assert_eq!(ids.len(), 1);
    let two = store.get_delivery(d2).await.expect("get").expect("d2");
    assert_eq!((two.status, two.request_id, two.requested_at), (DeliveryStatus::Requested, Some(ids[0]), Some(at(3))));
    let one = store.get_delivery(d1).await.expect("get").expect("d1");
    assert_eq!((one.status, one.skip_reason), (DeliveryStatus::Skipped, Some(SkipReason::Unfollowed)));
    let kept = store.campaign_counts("c").await.expect("counts");
    let expected = CampaignCounts {
        requested: 1,
        skipped: BTreeMap::from([(SkipReason::Unfollowed, 1)]),
        ..CampaignCounts::default()
    };
    assert_eq!((&kept, &store.counted_campaign_counts("c").await.expect("counted")), (&expected, &expected));
    // Requested and skipped deliveries are not claimable any more.
    assert!(store.claim_deliveries(at(9), 10).await.expect("claim").is_empty());
    assert_eq!(store.next_delivery_due().await.expect("next"), None);
}

async fn paused_campaigns_are_not_claimed(store: TestStore) {
    store
        .insert_deliveries(&[delivery("paused", "t", 1, at(1)), delivery("live", "t", 2, at(2))], at(1))
        .await
        .expect("insert");
    store.set_campaign_paused("paused", true, at(1)).await.expect("pause");
    store.set_campaign_paused("other", false, at(1)).await.expect("unpaused row");
    assert_eq!(store.paused_campaigns().await.expect("paused"), vec!["paused".to_string()]);
    assert_eq!(store.next_delivery_due().await.expect("next"), Some(at(2)), "paused campaigns do not wake anyone");

    let claim = store.claim_deliveries(at(3), 10).await.expect("claim");
    assert_eq!(claim.deliveries.iter().map(|d| d.campaign_id.as_str()).collect::<Vec<_>>(), vec!["live"]);
    claim.release().await.expect("release");

    store.set_campaign_paused("paused", false, at(5)).await.expect("resume");
    assert!(store.paused_campaigns().await.expect("paused").is_empty());
    let resumed = store.claim_deliveries(at(5), 10).await.expect("claim resumed");
    assert_eq!(resumed.deliveries.iter().map(|d| d.campaign_id.as_str()).collect::<Vec<_>>(), vec!["paused", "live"]);
}

async fn requests_complete_retry_and_fail_with_their_deliveries(store: TestStore) {
    let batch: Vec<_> = (1..=5).map(|n| delivery("c", "t", n, at(1))).collect();
    store.insert_deliveries(&batch, at(1)).await.expect("insert");
    let claim = store.claim_deliveries(at(1), 10).await.expect("claim");
    let claimed = claim.deliveries.clone();
    let id = |n: usize| claimed[n].id;
    let multicast = NewRequest {
        kind: RequestKind::Multicast,
        retry_key: Uuid::new_v4(),
        messages: messages("hello"),
        recipients: vec![user(1), user(2)],
        delivery_ids: vec![id(0), id(1)],
        aggregation_unit: Some("unit_m".into()),
    };
    let single = push(id(2), 3);
    let outcome = ClaimOutcome {
        requests: vec![multicast.clone(), single.clone()],
        skips: vec![(id(3), SkipReason::FrequencyCap), (id(4), SkipReason::Unfollowed)],
        ..ClaimOutcome::default()
    };
    let ids = claim.commit(&outcome, at(1)).await.expect("create");
    let (m, p) = (ids[0], ids[1]);
    assert_eq!(store.counts().await.expect("counts").send_requests, 2);

    let stored = store.get_request(m).await.expect("get").expect("multicast");
    assert_eq!(stored.kind, RequestKind::Multicast);
    assert_eq!(stored.retry_key, multicast.retry_key);
    assert_eq!(stored.recipients, vec![user(1), user(2)]);
    assert_eq!(stored.messages, messages("hello"));
    assert_eq!((stored.status, stored.attempts, stored.next_attempt_at), (RequestStatus::Pending, 0, at(1)));
    assert_eq!((stored.created_at, stored.sent_at), (at(1), None));
    assert_eq!(stored.aggregation_unit.as_deref(), Some("unit_m"));
    let stored_push = store.get_request(p).await.expect("get").expect("push");
    assert_eq!(stored_push.aggregation_unit.as_deref(), Some("unit_a"), "the unit is kept with the request");
    assert_eq!(store.get_delivery(id(0)).await.expect("get").expect("d").status, DeliveryStatus::Requested);
    // Reusing a retry key is refused and changes nothing.
    store.insert_deliveries(&[delivery("c", "t", 6, at(1))], at(1)).await.expect("insert 6");
    let claim = store.claim_deliveries(at(1), 10).await.expect("claim 6");
    let six = claim.deliveries[0].id;
    let mut dup = push(six, 6);
    dup.retry_key = single.retry_key;
    let refused = claim.commit(&ClaimOutcome { requests: vec![dup], ..ClaimOutcome::default() }, at(1)).await;
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "expected a conflict, got {refused:?}");
    assert_eq!(store.get_delivery(six).await.expect("get").expect("6").status, DeliveryStatus::Pending);
    assert_eq!(store.claim_deliveries(at(1), 10).await.expect("claim 6 again").len(), 1);

    assert_eq!(store.next_request_due().await.expect("next"), Some(at(1)));
    let first = store.claim_requests(at(1), 10, "a", at(2)).await.expect("claim requests");
    assert_eq!(ids_of(&first, |r| r.id), vec![m, p]);
    assert!(first.iter().all(|r| r.attempts == 1));
    assert!(store.claim_requests(at(1), 10, "b", at(2)).await.expect("leased").is_empty());

    store.retry_request(m, at(3), "HTTP 500").await.expect("retry");
    let retried = store.get_request(m).await.expect("get").expect("m");
    assert_eq!((retried.next_attempt_at, retried.last_error.as_deref()), (at(3), Some("HTTP 500")));
    assert_eq!(retried.status, RequestStatus::Pending);
    // At 2, m waits for its retry time while p's lease (until 2) has run out.
    let early = store.claim_requests(at(2), 10, "b", at(4)).await.expect("early");
    assert_eq!(early.iter().map(|r| (r.id, r.attempts)).collect::<Vec<_>>(), vec![(p, 2)]);
    let again = store.claim_requests(at(3), 10, "b", at(4)).await.expect("again");
    assert_eq!(again.iter().map(|r| (r.id, r.attempts)).collect::<Vec<_>>(), vec![(m, 2)]);

    store.complete_request(m, Some("req-123"), at(3)).await.expect("complete");
    store.fail_request(p, "400 invalid message", at(3)).await.expect("fail");
    let done = store.get_request(m).await.expect("get").expect("m");
    assert_eq!(
        (done.status, done.accepted_request_id.as_deref(), done.sent_at),
        (RequestStatus::Sent, Some("req-123"), Some(at(3)))
    );
    let failed = store.get_request(p).await.expect("get").expect("p");
    assert_eq!((failed.status, failed.last_error.as_deref()), (RequestStatus::Failed, Some("400 invalid message")));
    for n in [0, 1] {
        assert_eq!(store.get_delivery(id(n)).await.expect("get").expect("d").status, DeliveryStatus::Sent);
    }
    assert_eq!(store.get_delivery(id(2)).await.expect("get").expect("d").status, DeliveryStatus::Failed);
    assert_eq!(store.next_request_due().await.expect("next"), None);
    assert!(store.claim_requests(at(9), 10, "b", at(10)).await.expect("finished").is_empty());
    // A late failure of an accepted request changes nothing.
    store.fail_request(m, "late", at(4)).await.expect("late fail");
    assert_eq!(store.get_request(m).await.expect("get").expect("m").status, RequestStatus::Sent);
    assert!(matches!(store.complete_request(9_999, None, at(4)).await, Err(StoreError::Conflict(_))));
    // LINE's statistics are asked for units sent lately (not for failed requests), and kept with null as null.
    let units = store.units_sent_since(at(0)).await.expect("units");
    assert_eq!(
        units.iter().map(|u| (u.unit.as_str(), u.first_sent_at, u.fetched_at)).collect::<Vec<_>>(),
        vec![("unit_m", at(3), None)]
    );
    assert!(store.units_sent_since(at(3)).await.expect("units").is_empty(), "none sent after 3");
    let stats = renkei_store::UnitStats { unique_impression: Some(120), unique_click: None };
    store.save_unit_stats("unit_m", stats, at(5)).await.expect("save");
    assert_eq!(store.unit_stats("unit_m").await.expect("read"), Some((stats, at(5))));
    let later = renkei_store::UnitStats { unique_impression: None, unique_click: Some(20) };
    store.save_unit_stats("unit_m", later, at(6)).await.expect("save again");
    assert_eq!(store.unit_stats("unit_m").await.expect("read"), Some((later, at(6))));
    assert_eq!(store.units_sent_since(at(0)).await.expect("units")[0].fetched_at, Some(at(6)));
    assert_eq!(store.unit_stats("unit_a").await.expect("read"), None);

    let counts = store.campaign_counts("c").await.expect("counts");
    let expected = CampaignCounts {
        pending: 1,
        requested: 0,
        sent: 2,
        failed: 1,
        skipped: BTreeMap::from([(SkipReason::FrequencyCap, 1), (SkipReason::Unfollowed, 1)]),
    };
    assert_eq!(counts, expected);
    assert_eq!(store.counted_campaign_counts("c").await.expect("counted"), expected, "the rows say the same");
    assert_eq!(store.campaign_counts("none").await.expect("empty"), CampaignCounts::default());
    // A failed request completed after all (in a batch) moves its delivery from failed to sent.
    store.complete_requests(&[(p, Some("req-456".into()))], at(5)).await.expect("complete late");
    let moved = CampaignCounts { sent: 3, failed: 0, ..expected };
    assert_eq!(store.campaign_counts("c").await.expect("counts"), moved);
    assert_eq!(store.counted_campaign_counts("c").await.expect("counted"), moved, "the rows say the same");
}

async fn a_request_lease_is_released_by_retry_and_comes_back_after_expiry(store: TestStore) {
    store.insert_deliveries(&[delivery("c", "t", 1, at(1))], at(1)).await.expect("insert");
    let claim = store.claim_deliveries(at(1), 1).await.expect("claim");
    let requests = vec![push(claim.deliveries[0].id, 1)];
    let r = claim.commit(&ClaimOutcome { requests, ..ClaimOutcome::default() }, at(1)).await.expect("create")[0];
    assert_eq!(store.claim_requests(at(1), 10, "a", at(3)).await.expect("claim").len(), 1);
    // A crashed sender: the request is leased until 3, then claimable again.
    assert_eq!(store.next_request_due().await.expect("next"), Some(at(3)));
    assert!(store.claim_requests(at(2), 10, "b", at(5)).await.expect("leased").is_empty());
    let again = store.claim_requests(at(3), 10, "b", at(5)).await.expect("expired");
    assert_eq!(again.iter().map(|x| (x.id, x.attempts)).collect::<Vec<_>>(), vec![(r, 2)]);
    // Retry releases the lease at once: claimable at next_attempt_at, not at the lease end.
    store.retry_request(r, at(4), "timeout").await.expect("retry");
    assert_eq!(store.next_request_due().await.expect("next"), Some(at(4)));
    assert!(store.claim_requests(at(3), 10, "c", at(9)).await.expect("too early").is_empty());
    assert_eq!(store.claim_requests(at(4), 10, "c", at(9)).await.expect("due")[0].attempts, 3);
}

/// A request its sender could not send before its lease neared its end
/// (the channel's budget was busy) is given back untried, for anyone at once.
async fn a_request_given_back_untried_is_claimable_at_once_with_its_attempt_uncounted(store: TestStore) {
    store.insert_deliveries(&[delivery("c", "t", 1, at(1))], at(1)).await.expect("insert");
    let claim = store.claim_deliveries(at(1), 1).await.expect("claim");
    let requests = vec![push(claim.deliveries[0].id, 1)];
    let r = claim.commit(&ClaimOutcome { requests, ..ClaimOutcome::default() }, at(1)).await.expect("create")[0];
    assert_eq!(store.claim_requests(at(1), 10, "a", at(3)).await.expect("claim")[0].attempts, 1);
    // Only the lease's owner can give it back.
    store.release_request(r, "b").await.expect("not b's");
    assert!(store.claim_requests(at(2), 10, "b", at(5)).await.expect("still a's").is_empty());
    store.release_request(r, "a").await.expect("a's");
    let again = store.claim_requests(at(2), 10, "b", at(5)).await.expect("given back");
    assert_eq!(again.iter().map(|x| (x.id, x.attempts)).collect::<Vec<_>>(), vec![(r, 1)]);
}

async fn sends_are_counted_per_user_campaign_and_window(store: TestStore) {
    let batch = vec![
        delivery("c1", "t1", 1, at(1)),
        delivery("c1", "t2", 1, at(1)),
        delivery("c2", "t1", 1, at(1)),
        delivery("c1", "t1", 2, at(1)),
        delivery("c1", "t3", 1, at(1)),
        delivery("c1", "t4", 1, at(1)),
    ];
    store.insert_deliveries(&batch, at(1)).await.expect("insert");
    let mut stored = store.campaign_deliveries("c1", 0, 10).await.expect("c1");
    stored.extend(store.campaign_deliveries("c2", 0, 10).await.expect("c2"));
    let find = |c: &str, t: &str, n: u32| {
        stored
            .iter()
            .find(|d| d.campaign_id == c && d.trigger_key == t && d.line_user_id == Some(user(n)))
            .expect("delivery")
            .id
    };
    // Requested at 2: c1 t1 → 1; at 4: c1 t2 → 1, c2 t1 → 1, c1 t1 → 2.
    let first = store.claim_deliveries(at(1), 10).await.expect("claim");
    let requests = vec![push(find("c1", "t1", 1), 1)];
    let defers = first
        .deliveries
        .iter()
        .filter(|d| d.id != find("c1", "t1", 1))
        .map(|d| (d.id, at(4), DeferReason::QuietHours))
        .collect();
    first.commit(&ClaimOutcome { requests, defers, ..ClaimOutcome::default() }, at(2)).await.expect("at 2");
    let second = store.claim_deliveries(at(4), 10).await.expect("claim");
    let outcome = ClaimOutcome {
        requests: vec![
            push(find("c1", "t2", 1), 1),
            push(find("c2", "t1", 1), 1),
            push(find("c1", "t1", 2), 2),
            push(find("c1", "t4", 1), 1),
        ],
        // Skipped deliveries never count, nor do failed ones (t4, below).
        skips: vec![(find("c1", "t3", 1), SkipReason::NotInAudience)],
        ..ClaimOutcome::default()
    };
    let ids = second.commit(&outcome, at(4)).await.expect("at 4");
    store.complete_request(ids[0], None, at(5)).await.expect("sent still counts");
    store.fail_request(ids[3], "400 invalid message", at(5)).await.expect("failed does not count");

    let (u1, u2, u3) = (user(1), user(2), user(3));
    let everyone = [u1.clone(), u2.clone(), u3.clone()];
    let counts = |pairs: &[(&LineUserId, u64)]| -> foldhash::HashMap<LineUserId, u64> {
        pairs.iter().map(|(u, n)| ((*u).clone(), *n)).collect()
    };
    assert_eq!(store.sent_counts(&everyone, None, at(1)).await.expect("all"), counts(&[(&u1, 3), (&u2, 1)]));
    assert_eq!(store.sent_counts(&everyone, Some("c1"), at(1)).await.expect("c1"), counts(&[(&u1, 2), (&u2, 1)]));
    assert_eq!(store.sent_counts(&everyone, Some("c2"), at(1)).await.expect("c2"), counts(&[(&u1, 1)]));
    assert_eq!(
        store.sent_counts(&everyone, Some("c1"), at(3)).await.expect("c1 since 3"),
        counts(&[(&u1, 1), (&u2, 1)])
    );
    assert_eq!(
        store.sent_counts(std::slice::from_ref(&u1), None, at(4)).await.expect("since is inclusive"),
        counts(&[(&u1, 2)])
    );
    assert_eq!(store.sent_counts(&everyone, None, at(5)).await.expect("since 5"), counts(&[]));
    assert_eq!(store.sent_counts(&[u3], None, at(1)).await.expect("nobody"), counts(&[]));
    assert_eq!(store.sent_counts(&[], None, at(1)).await.expect("no users"), counts(&[]));
}

/// A fire of messages alike for all cuts its audience into ranges (where
/// each page ends) and inserts each range's deliveries in the store, each
/// with its user's member (none when unlinked); a range again adds nothing.
async fn an_alike_fire_enqueues_its_audience_by_ranges(store: TestStore) {
    let now = at(1);
    for n in [1, 2, 4, 5] {
        store.link(&member(&format!("m{n}")), &user(n), LinkMethod::Api, now).await.expect("link");
    }
    let update = |n: u32, segments: &[&str]| MembershipUpdate {
        line_user_id: user(n),
        segments: segments.iter().map(|s| s.to_string()).collect(),
        next_due: None,
    };
    let updates: Vec<_> = (1..=5).map(|n| update(n, &["gold"])).chain([update(6, &["silver"])]).collect();
    store.apply_memberships(&updates, now, Cause::Recompute).await.expect("memberships");
    let mut ends = Vec::new();
    let mut after: Option<String> = None;
    while let Some(end) = store.segment_page_end("gold", after.as_deref(), 2).await.expect("end") {
        after = Some(end.as_str().to_string());
        ends.push(end);
    }
    assert_eq!(ends, [user(2), user(4)], "pages of two end at the 2nd and the 4th");
    let linked = store.segment_range_linked("gold", Some(user(2).as_str()), Some(user(4).as_str())).await;
    let linked = linked.expect("range");
    assert_eq!(linked, [(user(3), None), (user(4), Some(member("m4")))], "(2, 4], with the links");

    let (messages, context) = (messages("sale"), json!({"fire_at": "x"}));
    let fire = renkei_store::dispatch::AlikeFire {
        campaign_id: "c",
        trigger_key: "schedule:x",
        audience: "gold",
        due_at: now,
        messages: &messages,
        context: &context,
    };
    let ranges = [(None, Some(user(2))), (Some(user(2)), Some(user(4))), (Some(user(4)), None)];
    let mut added = Vec::new();
    for (after, through) in &ranges {
        let (after, through) = (after.as_ref().map(|u| u.as_str()), through.as_ref().map(|u| u.as_str()));
        added.push(store.insert_audience_range(&fire, after, through, now).await.expect("range"));
    }
    assert_eq!(added, [2, 2, 1]);
    let again = store.insert_audience_range(&fire, None, None, now).await.expect("again");
    assert_eq!(again, 0, "the whole audience again adds nothing");
    let deliveries = store.campaign_deliveries("c", 0, 10).await.expect("deliveries");
    let got: Vec<_> = deliveries.iter().map(|d| (d.recipient_key.clone(), d.member_id.clone())).collect();
    let want: Vec<_> = [(1, Some("m1")), (2, Some("m2")), (3, None), (4, Some("m4")), (5, Some("m5"))]
        .into_iter()
        .map(|(n, m)| (user(n).as_str().to_string(), m.map(member)))
        .collect();
    assert_eq!(got, want);
    let claim = store.claim_deliveries(at(2), 10).await.expect("claim");
    assert_eq!(claim.len(), 5);
    assert!(claim.deliveries.iter().all(|d| *d.messages == messages && *d.context == context));
}

async fn send_facts_cover_links_following_and_asked_segments(store: TestStore) {
    let now = at(1);
    for (m, n) in [("m1", 1), ("m2", 2)] {
        store.link(&member(m), &user(n), LinkMethod::Api, now).await.expect("link");
    }
    // 2 blocked the account; 3 follows without a link; 4 is unknown.
    store.set_following(&user(2), false, now).await.expect("unfollow");
    store.set_following(&user(3), true, now).await.expect("follow");
    let update = |n: u32, segments: &[&str]| MembershipUpdate {
        line_user_id: user(n),
        segments: segments.iter().map(|s| s.to_string()).collect(),
        next_due: None,
    };
    store
        .apply_memberships(&[update(1, &["gold", "vip"]), update(3, &["gold"])], now, Cause::Recompute)
        .await
        .expect("m");

    let users = [user(1), user(2), user(3), user(4)];
    let facts = store.send_facts(&users, &["gold".to_string()]).await.expect("facts");
    let got = |n: u32| {
        let f = &facts[&user(n)];
        (
            f.member_id.as_ref().map(|m| m.as_str().to_string()),
            f.following,
            f.segments.iter().cloned().collect::<Vec<_>>(),
        )
    };
    assert_eq!(got(1), (Some("m1".to_string()), true, vec!["gold".to_string()]), "only the asked segments");
    assert_eq!(got(2), (Some("m2".to_string()), false, vec![]));
    assert_eq!(got(3), (None, true, vec!["gold".to_string()]));
    assert_eq!(got(4), (None, false, vec![]));
    assert!(store.send_facts(&users, &[]).await.expect("no segments").values().all(|f| f.segments.is_empty()));

    let linked = store.member_line_users(&[member("m1"), member("m2"), member("m9")]).await.expect("links");
    assert_eq!(
        linked,
        [(member("m1"), user(1)), (member("m2"), user(2))].into_iter().collect::<foldhash::HashMap<_, _>>()
    );
}

async fn campaign_enabled_at_keeps_the_first_instant(store: TestStore) {
    assert_eq!(store.campaign_enabled_at("c", at(3)).await.expect("first"), at(3));
    assert_eq!(store.campaign_enabled_at("c", at(5)).await.expect("again"), at(3));
    assert_eq!(store.campaign_enabled_at("d", at(5)).await.expect("other"), at(5));
    // A campaign paused before it was first enabled still records the instant, and stays paused.
    store.set_campaign_paused("e", true, at(1)).await.expect("pause");
    assert_eq!(store.campaign_enabled_at("e", at(6)).await.expect("paused"), at(6));
    assert_eq!(store.campaign_enabled_at("e", at(7)).await.expect("paused again"), at(6));
    assert_eq!(store.paused_campaigns().await.expect("paused"), vec!["e".to_string()]);
}

async fn cron_fires_are_recorded_once(store: TestStore) {
    assert_eq!(store.last_fire("daily").await.expect("none"), None);
    assert!(store.record_fire("daily", at(9), FireState::Started).await.expect("first"));
    assert!(!store.record_fire("daily", at(9), FireState::Started).await.expect("second"), "recorded before");
    assert!(store.record_fire("weekly", at(9), FireState::Started).await.expect("other campaign"));
    assert!(store.record_fire("daily", at(8), FireState::Missed).await.expect("older fire"));

    let fire = |c: &str, t, s: FireState| CronFire { campaign_id: c.to_string(), fire_at: t, state: s };
    assert_eq!(store.last_fire("daily").await.expect("last"), Some(fire("daily", at(9), FireState::Started)));
    assert_eq!(
        store.unfinished_fires().await.expect("unfinished"),
        vec![fire("daily", at(9), FireState::Started), fire("weekly", at(9), FireState::Started)]
    );
    store.set_fire_state("daily", at(9), FireState::Done).await.expect("done");
    assert_eq!(store.unfinished_fires().await.expect("unfinished"), vec![fire("weekly", at(9), FireState::Started)]);
    assert_eq!(store.last_fire("daily").await.expect("last"), Some(fire("daily", at(9), FireState::Done)));
    assert!(!store.record_fire("daily", at(9), FireState::Started).await.expect("done stays done"));
    assert_eq!(store.last_fire("daily").await.expect("last").map(|f| f.state), Some(FireState::Done));
}

async fn cursors_are_stored_by_name(store: TestStore) {
    assert_eq!(store.get_cursor("transitions").await.expect("none"), None);
    store.set_cursor("transitions", 42).await.expect("set");
    store.set_cursor("events", 7).await.expect("set other");
    assert_eq!(store.get_cursor("transitions").await.expect("get"), Some(42));
    store.set_cursor("transitions", 43).await.expect("move");
    assert_eq!(store.get_cursor("transitions").await.expect("get"), Some(43));
    assert_eq!(store.get_cursor("events").await.expect("get"), Some(7));
}

async fn events_after_filters_by_type_and_id(store: TestStore) {
    assert_eq!(store.max_event_id().await.expect("empty"), 0);
    assert_eq!(store.max_transition_id().await.expect("empty"), 0);
    let events: Vec<NewEvent> = [
        json!({"type": "purchase", "line_user_id": user(1).as_str(), "occurred_at": "2026-11-23T01:00:00Z",
               "properties": {"amount": 100}}),
        json!({"type": "visit", "line_user_id": user(1).as_str(), "occurred_at": "2026-11-23T02:00:00Z"}),
        json!({"type": "reservation", "member_id": "m1", "occurred_at": "2026-11-23T03:00:00Z"}),
        json!({"type": "purchase", "member_id": "m2", "occurred_at": "2026-11-23T00:00:00Z"}),
    ]
    .iter()
    .map(|v| NewEvent::parse(v).expect("valid event"))
    .collect();
    store.insert_events(&events, at(5)).await.expect("events");
    let max = store.max_event_id().await.expect("max");
    let wanted = vec!["purchase".to_string(), "reservation".to_string()];

    let all = store.events_after(0, &wanted, 100).await.expect("after 0");
    assert_eq!(
        all.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        vec!["purchase", "reservation", "purchase"]
    );
    assert!(all.windows(2).all(|w| w[0].id < w[1].id), "oldest (by row id) first");
    assert_eq!(all.last().map(|e| e.id), Some(max));
    assert_eq!(all[0].properties.get("amount"), Some(&json!(100)));
    assert_eq!(all[0].line_user_id.as_deref(), Some(user(1).as_str()));
    assert_eq!(all[1].member_id.as_deref(), Some("m1"));
    assert_eq!(all[0].occurred_at, at(1));

    let rest = store.events_after(all[0].id, &wanted, 1).await.expect("page");
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), vec![all[1].id]);
    assert!(store.events_after(max, &wanted, 10).await.expect("none after max").is_empty());
    assert!(store.events_after(0, &[], 10).await.expect("no types").is_empty());
    let visits = store.events_after(0, &["visit".to_string()], 10).await.expect("visits");
    assert_eq!(visits.len(), 1);

    store.link(&member("m1"), &user(1), LinkMethod::Api, at(1)).await.expect("link");
    let update =
        MembershipUpdate { line_user_id: user(1), segments: BTreeSet::from(["s".to_string()]), next_due: None };
    store.apply_memberships(&[update], at(6), Cause::Event).await.expect("apply");
    let transitions = store.transitions_after(0, 10).await.expect("transitions");
    assert_eq!(store.max_transition_id().await.expect("max transition"), transitions.last().expect("one").id);
}

async fn rich_menu_changes_are_claimed_until_linked(store: TestStore) {
    let menu = |s: &str| Some(s.to_string());
    store
        .set_desired_rich_menus(
            &[(user(1), menu("gold")), (user(2), None), (user(3), menu("silver")), (user(3), menu("gold"))],
            at(1),
        )
        .await
        .expect("desired");
    assert_eq!(store.linked_rich_menu(&user(1)).await.expect("linked"), None);

    // user 2 wants no menu and has none: nothing to do. user 3: the last wish wins.
    let change =
        |n, desired: Option<String>, linked: Option<String>| RichMenuChange { line_user_id: user(n), desired, linked };
    let claimed = store.claim_rich_menu_changes(at(1), 10, "a", at(3)).await.expect("claim");
    assert_eq!(claimed, vec![change(1, menu("gold"), None), change(3, menu("gold"), None)]);
    assert!(store.claim_rich_menu_changes(at(2), 10, "b", at(3)).await.expect("leased").is_empty());

    store.mark_rich_menus_linked(&[(user(1), menu("gold"))], at(2)).await.expect("linked 1");
    store.release_rich_menu_changes(&[user(3)], at(5), "HTTP 500").await.expect("release 3");
    assert_eq!(store.linked_rich_menu(&user(1)).await.expect("linked"), menu("gold"));
    // user 3 waits for its retry time; user 1 is done.
    assert!(store.claim_rich_menu_changes(at(4), 10, "b", at(6)).await.expect("backing off").is_empty());
    let retried = store.claim_rich_menu_changes(at(5), 10, "b", at(6)).await.expect("retry");
    assert_eq!(retried, vec![change(3, menu("gold"), None)]);
    store.mark_rich_menus_linked(&[(user(3), menu("gold"))], at(5)).await.expect("linked 3");
    assert!(store.claim_rich_menu_changes(at(9), 10, "b", at(10)).await.expect("all done").is_empty());

    // A new wish (including "no menu") makes the user a change again; a repeat does not.
    store.set_desired_rich_menus(&[(user(1), None), (user(3), menu("gold"))], at(6)).await.expect("desired");
    let unlink = store.claim_rich_menu_changes(at(6), 10, "b", at(7)).await.expect("unlink");
    assert_eq!(unlink, vec![change(1, None, menu("gold"))]);
    store.mark_rich_menus_linked(&[(user(1), None)], at(6)).await.expect("unlinked");
    assert_eq!(store.linked_rich_menu(&user(1)).await.expect("linked"), None);
    // An expired lease makes the user claimable again.
    store.set_desired_rich_menus(&[(user(4), menu("silver"))], at(6)).await.expect("desired 4");
    assert_eq!(store.claim_rich_menu_changes(at(6), 10, "a", at(7)).await.expect("a").len(), 1);
    assert_eq!(
        store.claim_rich_menu_changes(at(7), 10, "b", at(8)).await.expect("b after expiry"),
        vec![change(4, menu("silver"), None)]
    );
}

/// Tidying the queue (a vacuum of what claims left) while a claim is open
/// keeps that claim's rows held and the rest claimable, in order. (SQLite's
/// tidy does nothing, and a second claim there waits for the first.)
#[tokio::test]
async fn postgres_a_tidied_queue_keeps_held_and_waiting_deliveries() {
    let Some(store) = renkei_test_support::postgres().await.expect("postgres store") else { return };
    // Three queue pages of ten, one per claim.
    for page in 0..3 {
        let batch: Vec<_> = (1..=10).map(|n| delivery("c", "t", page * 10 + n, at(1))).collect();
        store.insert_deliveries(&batch, at(1)).await.expect("insert");
    }
    let first = store.claim_deliveries(at(2), 10).await.expect("first");
    let skipped = skip_all(&first);
    first.commit(&skipped, at(2)).await.expect("commit");
    let held = store.claim_deliveries(at(2), 10).await.expect("held");
    store.tidy_queue().await.expect("tidy");
    let rest = store.claim_deliveries(at(2), 100).await.expect("rest");
    let ids = |claim: &renkei_store::dispatch::Claim| ids_of(&claim.deliveries, |d| d.id);
    let (held_ids, rest_ids) = (ids(&held), ids(&rest));
    assert_eq!((held_ids.len(), rest_ids.len()), (10, 10));
    assert!(held_ids.iter().max() < rest_ids.iter().min(), "{held_ids:?} then {rest_ids:?}");
    held.release().await.expect("release");
    assert_eq!(store.claim_deliveries(at(2), 100).await.expect("released").len(), 10);
}

/// On PostgreSQL a queue row is a page of deliveries: a claim needing part
/// of one takes its first deliveries and leaves the rest queued, in order
/// (held until the claim ends); a claim given back restores the page whole.
#[tokio::test]
async fn postgres_a_claim_takes_part_of_a_queue_page() {
    let Some(store) = renkei_test_support::postgres().await.expect("postgres store") else { return };
    let batch: Vec<_> = (1..=30).map(|n| delivery("c", "t", n, at(1))).collect();
    store.insert_deliveries(&batch, at(1)).await.expect("insert");
    let ids = |claim: &renkei_store::dispatch::Claim| ids_of(&claim.deliveries, |d| d.id);
    let given_back = store.claim_deliveries(at(2), 7).await.expect("seven");
    let seven = ids(&given_back);
    assert_eq!(seven.len(), 7);
    given_back.release().await.expect("release");
    let first = store.claim_deliveries(at(2), 10).await.expect("ten");
    let ten = ids(&first);
    assert_eq!(ten[..7], seven[..], "the page was whole again");
    let skipped = skip_all(&first);
    first.commit(&skipped, at(2)).await.expect("commit");
    assert_eq!(store.overview_counts().await.expect("overview").deliveries_pending, 20);
    let rest = store.claim_deliveries(at(2), 100).await.expect("rest");
    let twenty = ids(&rest);
    assert_eq!(twenty.len(), 20);
    assert!(ten.iter().max() < twenty.iter().min(), "{ten:?} then {twenty:?}");
    let all: BTreeSet<i64> = ten.iter().chain(&twenty).copied().collect();
    assert_eq!(all.len(), 30, "each delivery once");
    rest.release().await.expect("release");
}

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    deliveries_are_deduplicated_by_campaign_trigger_and_recipient,
    claims_respect_due_at_and_come_earliest_first,
    claimed_deliveries_carry_their_own_payload,
    claims_can_start_past_a_queue_key,
    a_claim_commits_all_of_its_outcome_or_nothing,
    paused_campaigns_are_not_claimed,
    requests_complete_retry_and_fail_with_their_deliveries,
    a_request_lease_is_released_by_retry_and_comes_back_after_expiry,
    a_request_given_back_untried_is_claimable_at_once_with_its_attempt_uncounted,
    sends_are_counted_per_user_campaign_and_window,
    send_facts_cover_links_following_and_asked_segments,
    an_alike_fire_enqueues_its_audience_by_ranges,
    campaign_enabled_at_keeps_the_first_instant,
    cron_fires_are_recorded_once,
    cursors_are_stored_by_name,
    events_after_filters_by_type_and_id,
    rich_menu_changes_are_claimed_until_linked,
);

/// Two instances claiming at once from the same outbox never share a delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_claims_never_overlap() {
    let Some(test) = renkei_test_support::postgres().await.expect("postgres store") else { return };
    let store = test.store.clone();
    let batch: Vec<_> = (1..=200).map(|n| delivery("c", "t", n, at(1))).collect();
    assert_eq!(store.insert_deliveries(&batch, at(1)).await.expect("insert"), 200);

    let worker = || {
        let store = store.clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claim = store.claim_deliveries(at(2), 7).await.expect("claim");
                if claim.is_empty() {
                    break;
                }
                let ids: Vec<i64> = claim.deliveries.iter().map(|d| d.id).collect();
                tokio::task::yield_now().await;
                let skips = ids.iter().map(|id| (*id, SkipReason::Unfollowed)).collect();
                claim.commit(&ClaimOutcome { skips, ..ClaimOutcome::default() }, at(2)).await.expect("commit");
                mine.extend(ids);
            }
            mine
        })
    };
    let (a, b) = (worker(), worker());
    let (a, b) = (a.await.expect("task a"), b.await.expect("task b"));
    let a_set: BTreeSet<i64> = a.iter().copied().collect();
    let b_set: BTreeSet<i64> = b.iter().copied().collect();
    assert_eq!(a_set.len(), a.len(), "a never claims the same delivery twice");
    assert_eq!(b_set.len(), b.len(), "b never claims the same delivery twice");
    assert!(a_set.is_disjoint(&b_set), "a and b shared {:?}", a_set.intersection(&b_set).collect::<Vec<_>>());
    assert_eq!(a.len() + b.len(), 200, "every delivery claimed exactly once");
    eprintln!("a claimed {}, b claimed {}", a.len(), b.len());
}

/// A claim passes by deliveries another claim (or any transaction) holds
/// instead of waiting for them; they come back when that one rolls back.
#[tokio::test]
async fn postgres_claim_skips_rows_held_elsewhere() {
    use sqlx::Connection;
    let Some(test) = renkei_test_support::postgres().await.expect("postgres store") else { return };
    let store = test.store.clone();
    // A queue page each: the other transaction holds three of them.
    for n in 1..=6 {
        store.insert_deliveries(&[delivery("c", "t", n, at(1))], at(1)).await.expect("insert");
    }

    let mut other = sqlx::PgConnection::connect(&test.url).await.expect("connect");
    let mut tx = other.begin().await.expect("begin");
    let locked: Vec<i64> =
        sqlx::query_scalar("SELECT delivery_id FROM delivery_queue ORDER BY delivery_id LIMIT 3 FOR UPDATE")
            .fetch_all(&mut *tx)
            .await
            .expect("lock");
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), store.claim_deliveries(at(2), 2))
        .await
        .expect("a claim must not wait for locked rows")
        .expect("claim");
    let second = store.claim_deliveries(at(2), 10).await.expect("claim the rest");
    let ids = |claim: &renkei_store::dispatch::Claim| claim.deliveries.iter().map(|d| d.id).collect::<BTreeSet<_>>();
    let (first_ids, second_ids) = (ids(&first), ids(&second));
    assert_eq!((first_ids.len(), second_ids.len()), (2, 1));
    assert!(first_ids.is_disjoint(&second_ids));
    assert!(first_ids.iter().chain(&second_ids).all(|id| !locked.contains(id)), "locked {locked:?}");
    assert!(store.claim_deliveries(at(2), 10).await.expect("nothing free").is_empty());
    assert_eq!(store.next_delivery_due().await.expect("next"), Some(at(1)), "held ones are still due");

    tx.rollback().await.expect("rollback");
    drop(second);
    // A dropped claim rolls back as its connection goes back to the pool, a moment later.
    drop(first);
    let mut expected: BTreeSet<i64> = locked.into_iter().collect();
    expected.extend(first_ids);
    expected.extend(second_ids);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let back = store.claim_deliveries(at(2), 10).await.expect("claim released");
        if ids(&back) == expected {
            break;
        }
        drop(back);
        assert!(std::time::Instant::now() < deadline, "held deliveries did not come back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// SQLite's single writer is held by one claim at a time: a second claim
/// waits for the first to end (rather than failing on the busy writer), then
/// takes what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_claims_take_turns() {
    let test = renkei_test_support::sqlite().await.expect("sqlite store");
    let store = test.store.clone();
    let batch: Vec<_> = (1..=4).map(|n| delivery("c", "t", n, at(1))).collect();
    store.insert_deliveries(&batch, at(1)).await.expect("insert");

    let first = store.claim_deliveries(at(2), 2).await.expect("first claim");
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.claim_deliveries(at(2), 10).await.map(|claim| claim.len()) })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "a second claim waits while the first is open");
    let skips = first.deliveries.iter().map(|d| (d.id, SkipReason::Unfollowed)).collect();
    first.commit(&ClaimOutcome { skips, ..ClaimOutcome::default() }, at(2)).await.expect("commit");
    let second = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the second claim goes ahead once the first ended")
        .expect("task")
        .expect("second claim");
    assert_eq!(second, 2, "the rest");
}
