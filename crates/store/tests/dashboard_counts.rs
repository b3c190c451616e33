//! The dashboard's hourly counts (`dashboard_counts`, kept by migration
//! 0023's triggers) against the raw tables, on both backends: the level
//! metrics walked back hour by hour equal the overview's counts as they
//! were then, and every flow equals what the counted tables hold.

use chrono::{DateTime, Utc};
use renkei_core::{Cause, LinkMethod, MemberPatch};
use renkei_store::dispatch::{ClaimOutcome, NewDelivery, NewRequest, RequestKind};
use renkei_store::{MembershipUpdate, OverviewCounts, TransitionKind};
use renkei_test_support::TestStore;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::mpsc;

mod common;
use common::{at, member, user};

/// A metric's changes per hour (all keys together).
async fn per_hour(store: &TestStore, metric: &str) -> BTreeMap<DateTime<Utc>, i64> {
    let mut hours = BTreeMap::new();
    for count in store.hourly_counts(metric, None, at(0)).await.expect("counts") {
        *hours.entry(count.hour).or_insert(0) += count.n;
    }
    hours
}

/// A metric's changes per key over all hours.
async fn per_key(store: &TestStore, metric: &str, key: Option<&str>) -> BTreeMap<String, i64> {
    let mut keys = BTreeMap::new();
    for count in store.hourly_counts(metric, key, at(0)).await.expect("counts") {
        *keys.entry(count.key).or_insert(0) += count.n;
    }
    keys
}

/// The level a metric had at the end of `hour`: today's level less every later change.
async fn level_after(store: &TestStore, metric: &str, now: u64, hour: u32) -> u64 {
    let later: i64 = per_hour(store, metric).await.into_iter().filter(|(h, _)| *h > at(hour)).map(|(_, n)| n).sum();
    u64::try_from(i64::try_from(now).expect("fits") - later).expect("a level is never negative")
}

async fn levels_walk_back_to_the_counts_of_each_hour(store: TestStore) {
    // Hour by hour: follows, unfollows, links of followers, of the blocked and
    // of users never seen, a re-follow; the overview's counts after each hour.
    let mut seen: Vec<(u32, OverviewCounts)> = Vec::new();
    let steps: Vec<(u32, Vec<(&str, u32)>)> = vec![
        (1, vec![("follow", 1), ("follow", 2), ("follow", 3)]),
        (2, vec![("link", 1), ("link", 4), ("unfollow", 2)]),
        (3, vec![("link", 2), ("follow", 4), ("follow", 5)]),
        (4, vec![("unfollow", 1), ("unfollow", 4), ("link", 6)]),
        (5, vec![("follow", 1), ("unfollow", 6), ("follow", 3)]),
    ];
    for (hour, actions) in steps {
        for (action, n) in actions {
            match action {
                "follow" => store.set_following(&user(n), true, at(hour)).await.expect("follow"),
                "unfollow" => store.set_following(&user(n), false, at(hour)).await.expect("unfollow"),
                _ => {
                    store.link(&member(&format!("m-{n}")), &user(n), LinkMethod::Api, at(hour)).await.expect("link");
                }
            }
        }
        seen.push((hour, store.overview_counts().await.expect("counts")));
    }
    let now = store.overview_counts().await.expect("counts");
    for (hour, then) in &seen {
        for (metric, at_then, today) in [
            ("friends", then.following, now.following),
            ("blocked", then.blocked, now.blocked),
            ("linked", then.linked, now.linked),
            ("linked_friends", then.linked_following, now.linked_following),
        ] {
            assert_eq!(level_after(&store, metric, today, *hour).await, at_then, "{metric} after hour {hour}");
        }
    }
    // Every change since the empty start adds up to today's counts.
    for (metric, today) in [("friends", now.following), ("blocked", now.blocked), ("linked", now.linked)] {
        assert_eq!(per_hour(&store, metric).await.values().sum::<i64>(), i64::try_from(today).expect("fits"));
    }
    // Flows: follows and unfollows are changes of the friendship rows.
    assert_eq!(per_hour(&store, "follow").await.values().sum::<i64>(), 6, "1,2,3 then 4,5 then 1 again; 3 unchanged");
    assert_eq!(per_hour(&store, "unfollow").await.values().sum::<i64>(), 4);
    assert_eq!(per_key(&store, "link", None).await, BTreeMap::from([("api".to_string(), 4)]));
    // An unlink counts at the time it happens (now), and the levels fall with it.
    store.unlink(&member("m-1"), chrono::Utc::now()).await.expect("unlink").expect("was linked");
    assert_eq!(per_key(&store, "unlink", None).await, BTreeMap::from([("api".to_string(), 1)]));
    let after = store.overview_counts().await.expect("counts");
    for (metric, today) in
        [("friends", after.following), ("linked", after.linked), ("linked_friends", after.linked_following)]
    {
        assert_eq!(
            per_hour(&store, metric).await.values().sum::<i64>(),
            i64::try_from(today).expect("fits"),
            "{metric}"
        );
    }
    // Folding the old hours keeps every sum: the counts now are the same, the recent hours gone.
    let folded = store.fold_hours_before(at(5)).await.expect("fold");
    assert!(folded > 0, "hours 1 to 4 folded");
    assert_eq!(store.overview_counts().await.expect("counts"), after);
    assert!(per_hour(&store, "follow").await.keys().all(|hour| *hour >= at(5)), "only hour 5 on is left");
    assert_eq!(per_hour(&store, "follow").await.values().sum::<i64>(), 1, "hour 5's re-follow");
    store.fold_hours_before(chrono::Utc::now() + chrono::Duration::days(1)).await.expect("fold everything");
    assert_eq!(store.overview_counts().await.expect("counts"), after);
    assert_eq!(store.fold_hours_before(chrono::Utc::now()).await.expect("fold again"), 0, "nothing left to fold");
}

async fn flows_equal_the_raw_tables(store: TestStore) {
    // Segment transitions over three hours.
    let update = |n: u32, segments: &[&str]| MembershipUpdate {
        line_user_id: user(n),
        segments: segments.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        next_due: None,
    };
    store.apply_memberships(&[update(1, &["a"]), update(2, &["a", "b"])], at(1), Cause::Recompute).await.expect("t");
    store.apply_memberships(&[update(1, &["b"]), update(3, &["a"])], at(2), Cause::Recompute).await.expect("t");
    store.apply_memberships(&[update(2, &[])], at(2), Cause::Recompute).await.expect("t");
    let stored = store.transitions_after(0, 1_000).await.expect("transitions");
    let mut raw: BTreeMap<(String, String, DateTime<Utc>), i64> = BTreeMap::new();
    for t in &stored {
        let kind = if t.transition.kind == TransitionKind::Entered { "entered" } else { "exited" };
        *raw.entry((kind.to_string(), t.transition.segment_id.clone(), t.transition.at)).or_insert(0) += 1;
    }
    let mut counted = BTreeMap::new();
    for kind in ["entered", "exited"] {
        for c in store.hourly_counts(kind, None, at(0)).await.expect("counts") {
            counted.insert((kind.to_string(), c.key, c.hour), c.n);
        }
    }
    assert_eq!(counted, raw);
    assert_eq!(raw.len(), 6, "entered a/b at 1, entered b/a and exited a/b at 2");
    // Segment sizes are the sums of entries less exits, as the memberships count them.
    let stats = store.segment_stats().await.expect("stats");
    let ids: Vec<&str> = stats.iter().map(|s| s.segment_id.as_str()).chain(["never"]).collect();
    let mut sizes = store.segment_sizes(&ids).await.expect("sizes");
    let never = sizes.pop().expect("the segment with no transition");
    assert_eq!((never.size, never.updated_at), (0, None));
    assert_eq!(sizes, stats);
    assert_eq!(stats.iter().map(|s| s.size).sum::<u64>(), 2, "a: user 3; b: user 1 (user 2 left both)");
    for stat in store.segment_stats().await.expect("stats") {
        let entered: i64 = per_key(&store, "entered", Some(&stat.segment_id)).await.values().sum();
        let exited: i64 = per_key(&store, "exited", Some(&stat.segment_id)).await.values().sum();
        assert_eq!(entered - exited, i64::try_from(stat.size).expect("fits"), "{}", stat.segment_id);
    }

    // Sends: two requests accepted in different hours, one failed, one still waiting.
    let deliveries: Vec<NewDelivery> = (1..=4)
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
    let request = |ids: &[i64], users: &[u32]| NewRequest {
        kind: RequestKind::Multicast,
        retry_key: uuid::Uuid::new_v4(),
        messages: json!([{"type": "text", "text": "hi"}]),
        recipients: users.iter().map(|n| user(*n)).collect(),
        delivery_ids: ids.to_vec(),
        aggregation_unit: Some("c1".into()),
    };
    let outcome = ClaimOutcome {
        requests: vec![request(&ids[0..2], &[1, 2]), request(&ids[2..3], &[3]), request(&ids[3..4], &[4])],
        ..ClaimOutcome::default()
    };
    let requests = claim.commit(&outcome, at(4)).await.expect("commit");
    store.complete_requests(&[(requests[0], Some("r-1".into()))], at(5)).await.expect("sent");
    store.complete_requests(&[(requests[1], None)], at(7)).await.expect("sent");
    store.complete_requests(&[(requests[1], None)], at(8)).await.expect("sent again changes nothing");
    store.fail_request(requests[2], "400 bad", at(7)).await.expect("fail");
    let sent = per_hour(&store, "sent").await;
    assert_eq!(sent, BTreeMap::from([(at(5), 2), (at(7), 1)]));
    let counts = store.campaign_counts("c1").await.expect("stats");
    assert_eq!(sent.values().sum::<i64>(), i64::try_from(counts.sent).expect("fits"), "as the stats count sent");

    // Nonces and their outcomes, a result changed after the use.
    for (nonce, created) in [("n-ok", 2), ("n-failed", 2), ("n-open", 3), ("n-conflict", 3)] {
        let expires = at(created) + chrono::Duration::minutes(10);
        store.create_link_nonce(nonce, &member("m-1"), at(created), expires).await.expect("nonce");
    }
    assert!(store.fail_link_nonce("n-failed", at(2)).await.expect("fail"));
    store.set_link_nonce_result("n-ok", "ok").await.expect("result");
    store.set_link_nonce_result("n-conflict", "ok").await.expect("result");
    store.set_link_nonce_result("n-conflict", "conflict").await.expect("result");
    assert_eq!(per_hour(&store, "nonce").await, BTreeMap::from([(at(2), 2), (at(3), 2)]));
    let attempts: BTreeMap<String, i64> =
        per_key(&store, "attempt", None).await.into_iter().filter(|(_, n)| *n != 0).collect();
    let raw = store.link_nonces_by_result(at(0), at(1)).await.expect("nonces");
    let raw: BTreeMap<String, i64> = raw
        .into_iter()
        .filter(|(outcome, _)| !["open", "expired"].contains(&outcome.as_str()))
        .map(|(outcome, n)| (outcome, i64::try_from(n).expect("fits")))
        .collect();
    assert_eq!(attempts, raw);
    assert_eq!(attempts.values().sum::<i64>(), 3);

    let before_fold = store.segment_sizes(&["a", "b"]).await.expect("sizes");
    store.fold_hours_before(at(2)).await.expect("fold hour 1");
    assert_eq!(store.segment_sizes(&["a", "b"]).await.expect("sizes"), before_fold, "folding keeps the sizes");
}

/// An import links members in batches (set-based statements on PostgreSQL):
/// its links of followers, of the blocked and of users never seen, and an
/// unlink after, leave the level metrics equal to the counts of the rows.
async fn an_imports_links_are_counted_as_the_rows_hold_them(store: TestStore) {
    for n in 1..=4 {
        store.set_following(&user(n), true, at(1)).await.expect("follow");
    }
    for n in 5..=6 {
        store.set_following(&user(n), false, at(1)).await.expect("unfollow");
    }
    store.link(&member("m-1"), &user(1), LinkMethod::Api, at(1)).await.expect("link");
    let patch = |id: &str, n: Option<u32>| MemberPatch {
        member_id: member(id),
        attributes: json!({"rank": "gold"}).as_object().cloned().expect("object"),
        line_user_id: n.map(user),
    };
    // m-1 keeps its link; m-3 repeats within a batch; m-9 has no LINE user.
    let batches = vec![
        vec![patch("m-1", Some(1)), patch("m-2", Some(2)), patch("m-3", Some(3)), patch("m-3", Some(3))],
        vec![patch("m-4", Some(4)), patch("m-5", Some(5)), patch("m-6", Some(6))],
        vec![patch("m-7", Some(7)), patch("m-8", Some(8)), patch("m-9", None)],
    ];
    let (tx, rx) = mpsc::channel(4);
    for batch in batches {
        tx.send(Ok(batch)).await.expect("send");
    }
    drop(tx);
    let outcome = store.import_members(rx, at(2)).await.expect("import");
    assert_eq!((outcome.created, outcome.linked), (8, 7));
    store.unlink(&member("m-5"), at(3)).await.expect("unlink").expect("was linked");

    // The overview's levels (sums of the triggers' changes) against the rows.
    let mut rows = OverviewCounts::default();
    for n in 1..=9 {
        let following = store.get_following(&user(n)).await.expect("friendship");
        let linked = store.get_link_by_line_user(&user(n)).await.expect("link").is_some();
        // A linked user never seen to follow or unfollow counts as a friend.
        let friend = following.unwrap_or(linked);
        rows.following += u64::from(friend);
        rows.blocked += u64::from(following == Some(false));
        rows.linked += u64::from(linked);
        rows.linked_following += u64::from(linked && friend);
    }
    let counted = store.overview_counts().await.expect("counts");
    assert_eq!(
        (counted.following, counted.blocked, counted.linked, counted.linked_following),
        (rows.following, rows.blocked, rows.linked, rows.linked_following)
    );
    assert_eq!((rows.following, rows.blocked, rows.linked, rows.linked_following), (6, 2, 7, 6));
    // Links made by method and hour: the API's at 1, the import's at 2.
    assert_eq!(per_key(&store, "link", None).await, BTreeMap::from([("api".into(), 1), ("import".into(), 7)]));
    assert_eq!(per_hour(&store, "link").await, BTreeMap::from([(at(1), 1), (at(2), 7)]));
    let by_method: BTreeMap<String, i64> = store
        .links_by_method()
        .await
        .expect("links")
        .into_iter()
        .map(|(method, n)| (method, i64::try_from(n).expect("fits")))
        .collect();
    let link = per_key(&store, "link", None).await;
    let unlink = per_key(&store, "unlink", None).await;
    let kept: BTreeMap<String, i64> =
        link.iter().map(|(method, n)| (method.clone(), n - unlink.get(method).copied().unwrap_or(0))).collect();
    assert_eq!(kept, by_method, "links made less unlinks, by method, are the rows");
}

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    levels_walk_back_to_the_counts_of_each_hour,
    flows_equal_the_raw_tables,
    an_imports_links_are_counted_as_the_rows_hold_them,
);
