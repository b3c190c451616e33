//! The change feed across processes (issue 13 item 3): a write made without
//! telling any evaluator (as `renkei import` or another instance makes it)
//! is evaluated by a running one; a crashed evaluator's claim is taken over
//! once it runs out; two evaluators share the rows, each taken once.

mod common;

use common::{event, segments, t0};
use renkei_core::{LineUserId, ManualClock};
use renkei_evaluator::{EngineStore, Evaluator, MembershipEngine};
use renkei_store::{ChangeFeed, PendingStore};
use renkei_test_support::TestStore;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUYERS: &str = "id: buyers\nname: Buyers\nrule:\n  event: purchase\n";

renkei_test_support::on_both_backends!(
    multi_thread, renkei_test_support::store =>
    a_write_no_evaluator_was_told_of_is_evaluated,
    a_crashed_evaluators_claim_is_taken_over,
    two_evaluators_take_each_change_once,
);

fn buyers(from: u32, n: u32) -> Vec<LineUserId> {
    (from..from + n).map(|i| LineUserId::parse(&format!("U{i:032x}")).expect("valid id")).collect()
}

/// Stores purchases the way another process would: no listener is told.
async fn purchases(test: &TestStore, users: &[LineUserId]) {
    let events: Vec<_> = users
        .iter()
        .map(|u| event(json!({"type": "purchase", "line_user_id": u.as_str(), "occurred_at": t0().to_rfc3339()})))
        .collect();
    test.store.insert_events(&events, t0()).await.expect("insert");
}

fn start(test: &TestStore, clock: &ManualClock) -> Evaluator {
    let engine = MembershipEngine::new(
        EngineStore::of(&test.store),
        segments(&[BUYERS]),
        Arc::new(clock.clone()),
        chrono_tz::Asia::Tokyo,
    );
    let pending: Arc<dyn PendingStore> = test.store.clone();
    Evaluator::start(Arc::new(engine), pending)
}

async fn size(test: &TestStore) -> usize {
    let store = EngineStore::of(&test.store);
    store.reads.segment_members("buyers", None, 10_000).await.expect("members").len()
}

/// Waits (at most `limit`) until the segment has `n` members; how long it took.
async fn until_size(test: &TestStore, n: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = size(test).await;
        if now == n {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "the segment has {now} members, not {n}, after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_write_no_evaluator_was_told_of_is_evaluated(test: TestStore) {
    let clock = ManualClock::new(t0());
    let evaluator = start(&test, &clock);
    purchases(&test, &buyers(0, 30)).await;
    // The poll (250 ms) finds it even where nothing notifies.
    let took = until_size(&test, 30, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(1), "evaluated after {took:?}: within 1 s");
    evaluator.idle().await;
    let feed: &dyn ChangeFeed = test.store.as_ref();
    assert_eq!(feed.changes_left_through(i64::MAX).await.expect("feed"), 0, "finished rows are deleted");
    evaluator.stop().await;
}

async fn a_crashed_evaluators_claim_is_taken_over(test: TestStore) {
    let clock = ManualClock::new(t0());
    purchases(&test, &buyers(0, 12)).await;
    let feed: &dyn ChangeFeed = test.store.as_ref();
    let held = feed.claim_changes("evaluator-dead", t0(), t0() + chrono::Duration::seconds(30), 10).await;
    assert_eq!(held.expect("claim").len(), 1, "the dead evaluator holds the row");
    let evaluator = start(&test, &clock);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(size(&test).await, 0, "a held row is not taken while its claim lasts");
    clock.advance(chrono::Duration::seconds(31));
    until_size(&test, 12, Duration::from_secs(5)).await;
    evaluator.idle().await;
    assert_eq!(feed.changes_left_through(i64::MAX).await.expect("feed"), 0);
    evaluator.stop().await;
}

async fn two_evaluators_take_each_change_once(test: TestStore) {
    let clock = ManualClock::new(t0());
    let (a, b) = (start(&test, &clock), start(&test, &clock));
    for batch in 0..20 {
        purchases(&test, &buyers(batch * 10, 10)).await;
    }
    until_size(&test, 200, Duration::from_secs(10)).await;
    a.idle().await;
    b.idle().await;
    let rows = |evaluator: &Evaluator| {
        let mut metrics = String::new();
        evaluator.render_metrics(&mut metrics);
        let line = metrics.lines().find(|l| l.starts_with("renkei_segment_feed_rows_total ")).expect("series");
        line.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()).expect("a number")
    };
    assert_eq!(rows(&a) + rows(&b), 20, "each of the 20 rows is taken exactly once");
    a.stop().await;
    b.stop().await;
}
