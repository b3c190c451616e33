//! Running totals and tallies of events on both backends: real-time
//! evaluation, which answers every condition without a window (counts,
//! filters, sum/avg/min/max) from the store's tallies, equals evaluation
//! from every raw event (a preview), whatever the events' sources, repeats
//! and times; the tallies follow inserts, ignore repeats, are built from the
//! events stored before them and survive a rebuild.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{event, member, segments, t0, user};
use proptest::prelude::*;
use renkei_core::{Clock, LinkMethod, ManualClock};
use renkei_evaluator::{Cause, EngineStore, MembershipEngine};
use renkei_test_support::{Backend, TestStore};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;

const RULES: &[&str] = &[
    "id: regulars\nname: r\nrule:\n  event: visit\n  count: {gte: 3}\n",
    "id: ever_bought\nname: e\nrule:\n  event: purchase\n",
    "id: lapsed\nname: l\nrule:\n  all:\n    - event: visit\n    - not:\n        event: visit\n        within: 90m\n",
    "id: exactly_two\nname: x\nrule:\n  event: purchase\n  count: {eq: 2}\n",
    "id: big\nname: b\nrule:\n  event: purchase\n  within: 5h\n  sum:\n    property: amount\n    gte: 20000\n",
    "id: shibuya_fans\nname: s\nrule:\n  event: visit\n  where: {store: shibuya}\n  count: {gte: 2}\n",
    "id: lifetime\nname: lv\nrule:\n  event: purchase\n  sum: {property: amount, gte: 30000}\n",
    "id: generous\nname: g\nrule:\n  event: purchase\n  where: {store: {ne: shibuya}}\n  max: {property: amount, gt: 15000}\n",
    "id: steady\nname: st\nrule:\n  event: purchase\n  avg: {property: amount, lt: 12000}\n",
    "id: small_once\nname: so\nrule:\n  event: purchase\n  min: {property: amount, lte: 5000}\n",
];

const USERS: u8 = 3;
const MEMBERS: u8 = 3;

struct Fixture {
    test: TestStore,
    clock: ManualClock,
    engine: MembershipEngine,
}

async fn fixture(backend: Backend) -> Option<Fixture> {
    let test = renkei_test_support::store(backend).await?;
    let clock = ManualClock::new(t0());
    let engine = engine(&test, &clock).with_tallies().await.expect("tallies");
    Some(Fixture { test, clock, engine })
}

fn engine(test: &TestStore, clock: &ManualClock) -> MembershipEngine {
    MembershipEngine::new(EngineStore::of(&test.store), segments(RULES), Arc::new(clock.clone()), chrono_tz::UTC)
        .with_page_size(2)
}

/// An event of `kind` at `now - ago_min`, by a member or a LINE user (or both).
fn visit(
    kind: &str,
    event_id: Option<String>,
    member_id: Option<u8>,
    line_user: Option<u8>,
    at: DateTime<Utc>,
) -> renkei_core::NewEvent {
    visit_with(kind, event_id, member_id, line_user, at, json!({"amount": 12_000}))
}

/// [`visit`] with `properties`.
fn visit_with(
    kind: &str,
    event_id: Option<String>,
    member_id: Option<u8>,
    line_user: Option<u8>,
    at: DateTime<Utc>,
    properties: serde_json::Value,
) -> renkei_core::NewEvent {
    let mut value = json!({"type": kind, "occurred_at": at.to_rfc3339(), "properties": properties});
    if let Some(id) = event_id {
        value["event_id"] = json!(id);
    }
    if let Some(m) = member_id {
        value["member_id"] = json!(member(m).as_str());
    }
    if let Some(u) = line_user {
        value["line_user_id"] = json!(user(u).as_str());
    }
    event(value)
}

/// Every user's memberships by the real-time path, and by a raw preview.
async fn both_ways(f: &Fixture) -> (Vec<BTreeSet<String>>, Vec<BTreeSet<String>>) {
    let now = f.clock.now();
    let users: Vec<_> = (1..=USERS).map(user).collect();
    f.engine.evaluate_users(&users, Cause::Event).await.expect("real-time evaluation");
    let mut kept = Vec::new();
    let mut previewed = vec![BTreeSet::new(); users.len()];
    for u in &users {
        kept.push(f.engine.memberships(u).await.expect("memberships"));
    }
    for id in f.engine.segments().ids().map(str::to_string).collect::<Vec<_>>() {
        for member in f.engine.preview(&id, now).await.expect("preview") {
            if let Some(i) = users.iter().position(|u| *u == member) {
                previewed[i].insert(id.clone());
            }
        }
    }
    (kept, previewed)
}

renkei_test_support::on_both_backends!(bare => counts_follow_sources_repeats_and_time, tallies_are_built_from_the_events_stored_before);

async fn counts_follow_sources_repeats_and_time(f: Fixture) {
    let f = Fixture { engine: f.engine.with_tallies().await.expect("tallies"), ..f };
    let store = f.test.store.as_ref();
    let now = t0();
    let id = |n: u32| Some(format!("ev-{n}"));
    // Two visits of member 1 (not linked yet), one repeated; one of user 1 naming member 1 too.
    let batch = [
        visit("visit", id(1), Some(1), None, now - Duration::days(400)),
        visit("visit", id(2), Some(1), None, now - Duration::days(300)),
        visit("visit", id(1), Some(1), None, now - Duration::days(400)),
    ];
    let outcome = store.insert_events(&batch, now).await.expect("insert");
    assert_eq!((outcome.accepted, outcome.duplicates), (2, 1));
    store
        .insert_events(&[visit("visit", id(3), Some(1), Some(1), now - Duration::days(200))], now)
        .await
        .expect("insert");
    let regulars = |u: u8| {
        let engine = &f.engine;
        async move { engine.memberships(&user(u)).await.expect("memberships").contains("regulars") }
    };
    f.engine.evaluate_user(&user(1), Cause::Event).await.expect("evaluate");
    assert!(!regulars(1).await, "the member's visits count only once linked; user 1 has one visit");
    store.link(&member(1), &user(1), LinkMethod::Api, now).await.expect("link");
    f.engine.evaluate_user(&user(1), Cause::Link).await.expect("evaluate");
    assert!(regulars(1).await, "linked: three distinct visits, the one naming both counted once");
    // Repeats change nothing, in a later batch too.
    store.insert_events(&[visit("visit", id(2), Some(1), None, now - Duration::days(300))], now).await.expect("insert");
    // A purchase stored ahead of its time counts from then on.
    let later = now + Duration::hours(2);
    store.insert_events(&[visit("purchase", id(4), None, Some(1), later)], now).await.expect("insert");
    f.engine.evaluate_user(&user(1), Cause::Event).await.expect("evaluate");
    let kept = f.engine.memberships(&user(1)).await.expect("memberships");
    assert!(!kept.contains("ever_bought"), "a future purchase does not count yet: {kept:?}");
    f.clock.set(later);
    assert!(f.engine.run_due().await.expect("run due") >= 1, "the purchase's time is a due time");
    assert!(f.engine.memberships(&user(1)).await.expect("memberships").contains("ever_bought"));
    let (kept, previewed) = both_ways(&f).await;
    assert_eq!(kept, previewed);
    // A clock set back before a counted event: read raw, still the raw answer.
    f.clock.set(now - Duration::days(250));
    let (kept, previewed) = both_ways(&f).await;
    assert_eq!(kept, previewed);
    assert!(!kept[0].contains("regulars"), "at that instant user 1 had two visits");
    // A rebuild changes no answer.
    f.clock.set(later);
    let (before, _) = both_ways(&f).await;
    f.engine.rebuild_totals().await.expect("rebuild");
    let (after, previewed) = both_ways(&f).await;
    assert_eq!((&before, &before), (&after, &previewed));
}

/// The fixture's store and clock with an engine that does not keep tallies yet.
async fn bare(backend: Backend) -> Option<Fixture> {
    let test = renkei_test_support::store(backend).await?;
    let clock = ManualClock::new(t0());
    let engine = engine(&test, &clock);
    Some(Fixture { test, clock, engine })
}

async fn tallies_are_built_from_the_events_stored_before(f: Fixture) {
    let store = f.test.store.clone();
    let now = t0();
    let id = |n: u32| Some(format!("ev-{n}"));
    let days = |d: i64| now - Duration::days(d);
    // User 1: 16,000 at shibuya and 16,000 at umeda; member 1 (user 2 once
    // linked): 4,000 at umeda, twice (one a repeat), and a visit to shibuya.
    let before = [
        visit_with("purchase", id(1), None, Some(1), days(300), json!({"amount": 16_000, "store": "shibuya"})),
        visit_with("purchase", id(2), None, Some(1), days(200), json!({"amount": 16_000, "store": "umeda"})),
        visit_with("purchase", id(3), Some(1), None, days(100), json!({"amount": 4_000, "store": "umeda"})),
        visit_with("purchase", id(3), Some(1), None, days(100), json!({"amount": 4_000, "store": "umeda"})),
        visit_with("visit", id(4), Some(1), None, days(90), json!({"store": "shibuya"})),
    ];
    store.insert_events(&before, now).await.expect("insert");
    store.link(&member(1), &user(2), LinkMethod::Api, now).await.expect("link");
    // The engine starts keeping tallies: those of its keys are built from the events.
    let f = Fixture { engine: f.engine.with_tallies().await.expect("tallies"), ..f };
    let (kept, previewed) = both_ways(&f).await;
    assert_eq!(kept, previewed);
    let has = |u: usize, id: &str| kept[u].contains(id);
    assert!(has(0, "lifetime") && has(0, "generous") && !has(0, "steady"), "user 1: {:?}", kept[0]);
    assert!(has(1, "small_once") && has(1, "steady") && !has(1, "shibuya_fans"), "user 2: {:?}", kept[1]);
    // Inserts add to the built tallies: a second shibuya visit and a large purchase for user 2.
    let after = [
        visit_with("visit", id(5), None, Some(2), days(10), json!({"store": "shibuya"})),
        visit_with("purchase", id(6), Some(1), Some(2), days(5), json!({"amount": 30_000, "store": "shibuya"})),
        visit_with("purchase", id(1), None, Some(2), days(5), json!({"amount": 90_000, "store": "umeda"})),
    ];
    let outcome = store.insert_events(&after, now).await.expect("insert");
    assert_eq!((outcome.accepted, outcome.duplicates), (2, 1), "ev-1 is a repeat and adds nothing");
    let (kept, previewed) = both_ways(&f).await;
    assert_eq!(kept, previewed);
    assert!(kept[1].contains("shibuya_fans") && kept[1].contains("lifetime"), "user 2: {:?}", kept[1]);
    assert!(!kept[1].contains("generous"), "the 30,000 purchase was at shibuya: {:?}", kept[1]);
    // A second engine with the same segments finds every key built; a rebuild changes no answer.
    let again = Fixture { engine: engine(&f.test, &f.clock).with_tallies().await.expect("tallies"), ..f };
    again.engine.rebuild_totals().await.expect("rebuild");
    assert_eq!(both_ways(&again).await, (kept.clone(), kept));
}

#[derive(Debug, Clone)]
enum Op {
    Event {
        purchase: bool,
        event_id: Option<u8>,
        member: Option<u8>,
        user: Option<u8>,
        offset_min: i64,
        amount: Option<u32>,
        shibuya: bool,
    },
    Link {
        member: u8,
        user: u8,
    },
    Unlink {
        member: u8,
    },
    Advance {
        minutes: i64,
    },
    Rebuild,
}

fn op() -> impl Strategy<Value = Op> {
    let who = (prop::option::of(1u8..=MEMBERS), prop::option::of(1u8..=USERS))
        .prop_map(|(m, u)| if m.is_none() && u.is_none() { (Some(1), None) } else { (m, u) });
    prop_oneof![
        6 => (
            (any::<bool>(), prop::option::of(0u8..6), who, -120i64..600),
            (prop::option::of(prop::sample::select(vec![0u32, 4_000, 5_000, 12_000, 16_000, 30_000])), any::<bool>()),
        )
            .prop_map(|((purchase, event_id, (member, user), offset_min), (amount, shibuya))| Op::Event {
                purchase,
                event_id,
                member,
                user,
                offset_min,
                amount,
                shibuya,
            }),
        2 => (1u8..=MEMBERS, 1u8..=USERS).prop_map(|(member, user)| Op::Link { member, user }),
        1 => (1u8..=MEMBERS).prop_map(|member| Op::Unlink { member }),
        2 => (0i64..240).prop_map(|minutes| Op::Advance { minutes }),
        1 => Just(Op::Rebuild),
    ]
}

async fn run_case(backend: Backend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let Some(f) = fixture(backend).await else { return Ok(()) };
    let store = f.test.store.as_ref();
    for op in ops {
        let now = f.clock.now();
        match op {
            Op::Event { purchase, event_id, member, user, offset_min, amount, shibuya } => {
                let kind = if purchase { "purchase" } else { "visit" };
                let id = event_id.map(|n| format!("ev-{n}"));
                let store_name = if shibuya { "shibuya" } else { "umeda" };
                let properties = match amount {
                    Some(amount) => json!({"amount": amount, "store": store_name}),
                    None => json!({"amount": "n/a", "store": store_name}),
                };
                let new = visit_with(kind, id, member, user, now - Duration::minutes(offset_min), properties);
                store.insert_events(&[new], now).await.expect("insert");
            }
            Op::Link { member: m, user: u } => {
                let _ = store.link(&member(m), &user(u), LinkMethod::Api, now).await;
            }
            Op::Unlink { member: m } => {
                store.unlink(&member(m), chrono::Utc::now()).await.expect("unlink");
            }
            Op::Advance { minutes } => f.clock.set(now + Duration::minutes(minutes)),
            Op::Rebuild => f.engine.rebuild_totals().await.expect("rebuild"),
        }
        let (kept, previewed) = both_ways(&f).await;
        prop_assert_eq!(kept, previewed);
    }
    Ok(())
}

fn run(backend: Backend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(run_case(backend, ops))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn real_time_with_totals_equals_raw_on_sqlite(ops in prop::collection::vec(op(), 1..25)) {
        run(Backend::Sqlite, ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn real_time_with_totals_equals_raw_on_postgres(ops in prop::collection::vec(op(), 1..25)) {
        run(Backend::Postgres, ops)?;
    }
}
