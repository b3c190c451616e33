//! The channel's send budget (`BudgetStore`): slots of an endpoint's time,
//! taken in one statement, never overlap and never reach further back than
//! the burst, so the tokens granted up to any time stay within the rate
//! times the time elapsed plus the burst (and one slot).

use renkei_store::{BudgetSlot, BudgetTake};
use renkei_test_support::TestStore;
use std::time::Duration;

const RATE: u32 = 1_000;
const BURST_US: i64 = 50_000;
const COST_US: i64 = 10_000;

fn take(bucket: &str) -> BudgetTake<'_> {
    BudgetTake { bucket, rate: RATE, burst_us: BURST_US, cost_us: COST_US }
}

/// Checks `slots` (in any order) against the bucket's rules: each is
/// `cost` long, none overlaps another, none starts before its take's time
/// less the burst, and the time granted up to the last take is at most the
/// time elapsed since the first plus the burst and one slot.
fn assert_within_budget(slots: &[BudgetSlot]) {
    let mut sorted = slots.to_vec();
    sorted.sort_by_key(|s| s.start_us);
    for slot in &sorted {
        assert_eq!(slot.end_us - slot.start_us, COST_US, "{slot:?}");
        assert!(slot.start_us >= slot.now_us - BURST_US, "a slot reaches back past the burst: {slot:?}");
    }
    for pair in sorted.windows(2) {
        assert!(pair[0].end_us <= pair[1].start_us, "overlapping slots: {pair:?}");
    }
    let first = slots.iter().map(|s| s.now_us).min().expect("slots");
    let last = slots.iter().map(|s| s.now_us).max().expect("slots");
    let granted: i64 = sorted.iter().filter(|s| s.start_us <= last).map(|s| s.end_us - s.start_us).sum();
    assert!(granted <= last - first + BURST_US + COST_US, "granted {granted} µs of sends in {} µs", last - first);
}

async fn slots_follow_one_another_within_the_burst(test: TestStore) {
    let store = test.store.clone();
    let mut slots = Vec::new();
    for _ in 0..40 {
        slots.push(store.take_budget(take("push")).await.expect("take"));
    }
    // A new bucket starts a burst back; every later slot starts where the
    // previous ended, or a burst back from its take when the bucket sat idle.
    assert_eq!(slots[0].start_us, slots[0].now_us - BURST_US);
    for pair in slots.windows(2) {
        assert_eq!(pair[1].start_us, pair[0].end_us.max(pair[1].now_us - BURST_US), "{pair:?}");
    }
    assert_within_budget(&slots);
    // 40 slots of 10 ms taken at once: the last starts about 350 ms ahead (takers wait for it).
    let last = slots[39];
    assert!(last.start_us - last.now_us >= 390_000 - BURST_US - (last.now_us - slots[0].now_us), "{last:?}");

    // Other endpoints have buckets of their own.
    let multicast = store.take_budget(take("multicast")).await.expect("multicast");
    assert_eq!(multicast.start_us, multicast.now_us - BURST_US);
}

async fn an_idle_bucket_saves_up_no_more_than_its_burst(test: TestStore) {
    let store = test.store.clone();
    let first = store.take_budget(take("push")).await.expect("take");
    // Idle for longer than the slot and the burst together.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = store.take_budget(take("push")).await.expect("take");
    assert!(second.now_us - first.end_us > BURST_US, "idle long enough: {first:?} {second:?}");
    assert_eq!(second.start_us, second.now_us - BURST_US, "the time nobody used is gone but for the burst");
}

renkei_test_support::on_both_backends!(
    renkei_test_support::store =>
    slots_follow_one_another_within_the_burst,
    an_idle_bucket_saves_up_no_more_than_its_burst,
);

#[tokio::test]
async fn sqlite_keeps_its_budget_in_memory_and_postgres_shares_it() {
    let sqlite = renkei_test_support::sqlite().await.expect("sqlite");
    assert!(!sqlite.store.budget_shared());
    if let Some(postgres) = renkei_test_support::postgres().await.expect("postgres") {
        assert!(postgres.store.budget_shared());
    }
}

/// Instances taking at once (here 8 pools on one database) together stay
/// within the one bucket: their slots never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_takers_share_one_bucket() {
    let Some(test) = renkei_test_support::postgres().await.expect("postgres store") else { return };
    let mut takers = Vec::new();
    for _ in 0..8 {
        // A store (pool) per taker, as each instance has its own.
        let store = renkei_store::connect(&test.url).await.expect("connect");
        takers.push(tokio::spawn(async move {
            let mut slots = Vec::new();
            for _ in 0..25 {
                slots.push(store.take_budget(take("push")).await.expect("take"));
            }
            slots
        }));
    }
    let mut slots = Vec::new();
    for taker in takers {
        slots.extend(taker.await.expect("taker"));
    }
    assert_eq!(slots.len(), 200);
    assert_within_budget(&slots);
    // Back to back: 200 slots of 10 ms cover 2 s from the first slot's start.
    let start = slots.iter().map(|s| s.start_us).min().expect("slots");
    let end = slots.iter().map(|s| s.end_us).max().expect("slots");
    assert!(end - start >= 200 * COST_US, "{} µs", end - start);
}
