//! The differential proof (memberships do not depend on the path): memberships kept by the real-time and
//! time-driven paths equal a fresh full recompute's at the same instant.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{event, fixture, member, user};
use proptest::prelude::*;
use renkei_core::{LinkMethod, MemberPatch, UserRef};
use renkei_evaluator::{Cause, MembershipEngine};
use renkei_store::Store;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

const RULES: &[&str] = &[
    "id: cart_abandoners\nname: c\nrule:\n  all:\n    - linked: true\n    - event: cart_add\n      within: 6h\n      older_than: 1h\n      not_followed_by:\n        event: purchase\n        match: [cart_id]\n",
    "id: big\nname: b\nrule:\n  event: purchase\n  within: 5h\n  sum:\n    property: amount\n    gte: 20000\n",
    "id: visitors\nname: v\nrule:\n  event: visit\n  within: 2h\n",
    "id: lapsed\nname: l\nrule:\n  all:\n    - event: visit\n    - not:\n        event: visit\n        within: 90m\n",
    "id: gold\nname: g\nrule:\n  attribute: rank\n  eq: gold\n",
    "id: gold_buyers\nname: gb\nrule:\n  all:\n    - segment: gold\n    - event: purchase\n      count: {gte: 2}\n",
    "id: unlinked_followers\nname: u\nrule:\n  all:\n    - following: true\n    - linked: false\n",
    "id: new_members\nname: n\nrule:\n  attribute: registered_at\n  within: 3h\n",
];

const USERS: u8 = 5;
const MEMBERS: u8 = 4;

#[derive(Debug, Clone)]
enum Op {
    Event { kind: u8, by_member: bool, who: u8, offset_min: i64, amount: u32, cart: u8 },
    Link { member: u8, user: u8 },
    Unlink { member: u8 },
    Follow { user: u8, following: bool },
    Rank { member: u8, gold: bool, registered_ago_min: i64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..3, any::<bool>(), 1u8..=USERS, -60i64..240, 0u32..15_000, 0u8..3).prop_map(
            |(kind, by_member, who, offset_min, amount, cart)| Op::Event { kind, by_member, who, offset_min, amount, cart }
        ),
        2 => (1u8..=MEMBERS, 1u8..=USERS).prop_map(|(member, user)| Op::Link { member, user }),
        1 => (1u8..=MEMBERS).prop_map(|member| Op::Unlink { member }),
        1 => (1u8..=USERS, any::<bool>()).prop_map(|(user, following)| Op::Follow { user, following }),
        1 => (1u8..=MEMBERS, any::<bool>(), -30i64..300)
            .prop_map(|(member, gold, registered_ago_min)| Op::Rank { member, gold, registered_ago_min }),
    ]
}

/// Applies one operation like ingestion would, returning the users it reports.
async fn apply(store: &dyn Store, op: &Op, now: DateTime<Utc>) -> (Vec<UserRef>, Cause) {
    match *op {
        Op::Event { kind, by_member, who, offset_min, amount, cart } => {
            let kind = ["purchase", "cart_add", "visit"][kind as usize];
            let occurred = (now - Duration::minutes(offset_min)).to_rfc3339();
            let props = json!({"amount": amount, "cart_id": format!("c{cart}")});
            let (value, reported) = if by_member {
                let m = member(who.min(MEMBERS));
                (
                    json!({"type": kind, "member_id": m.as_str(), "occurred_at": occurred, "properties": props}),
                    UserRef::Member(m),
                )
            } else {
                let u = user(who);
                (
                    json!({"type": kind, "line_user_id": u.as_str(), "occurred_at": occurred, "properties": props}),
                    UserRef::LineUser(u),
                )
            };
            store.insert_events(&[event(value)], now).await.expect("insert");
            (vec![reported], Cause::Event)
        }
        Op::Link { member: m, user: u } => match store.link(&member(m), &user(u), LinkMethod::Api, now).await {
            Ok(_) => (vec![UserRef::LineUser(user(u))], Cause::Link),
            Err(_) => (vec![], Cause::Link), // conflict: nothing changed
        },
        Op::Unlink { member: m } => match store.unlink(&member(m), chrono::Utc::now()).await.expect("unlink") {
            Some(link) => (vec![UserRef::LineUser(link.line_user_id)], Cause::Link),
            None => (vec![], Cause::Link),
        },
        Op::Follow { user: u, following } => {
            store.set_following(&user(u), following, now).await.expect("follow");
            (vec![UserRef::LineUser(user(u))], Cause::Follow)
        }
        Op::Rank { member: m, gold, registered_ago_min } => {
            let attributes = json!({
                "rank": if gold { "gold" } else { "silver" },
                "registered_at": (now - Duration::minutes(registered_ago_min)).to_rfc3339(),
            });
            let patch = MemberPatch {
                member_id: member(m),
                attributes: attributes.as_object().cloned().expect("object"),
                line_user_id: None,
            };
            store.upsert_members(&[patch], now).await.expect("patch");
            (vec![UserRef::Member(member(m))], Cause::Member)
        }
    }
}

/// Moves the clock to `target`, stopping at every due instant on the way,
/// as the timer task would.
async fn advance(engine: &MembershipEngine, clock: &renkei_core::ManualClock, target: DateTime<Utc>) {
    while let Some(due) = engine.store().reads.next_due().await.expect("next due") {
        if due > target {
            break;
        }
        clock.set(due);
        engine.run_due().await.expect("run due");
    }
    clock.set(target);
    engine.run_due().await.expect("run due");
}

async fn stored_memberships(engine: &MembershipEngine) -> BTreeMap<String, BTreeSet<String>> {
    let mut all = BTreeMap::new();
    for n in 1..=USERS {
        let set = engine.memberships(&user(n)).await.expect("memberships");
        if !set.is_empty() {
            all.insert(user(n).to_string(), set);
        }
    }
    all
}

async fn run_case(steps: Vec<(Op, i64)>) {
    let f = fixture(RULES).await;
    let store = f.test.store.as_ref();
    for (op, advance_min) in &steps {
        let now = renkei_core::Clock::now(&f.clock);
        let (users, cause) = apply(store, op, now).await;
        f.engine.process_changes(&users, cause).await.expect("real-time path");
        advance(&f.engine, &f.clock, now + Duration::minutes(*advance_min)).await;
    }
    let kept = stored_memberships(&f.engine).await;
    let report = f.engine.recompute_all(|_| {}).await.expect("recompute");
    let recomputed = stored_memberships(&f.engine).await;
    assert_eq!(kept, recomputed, "real-time + time-driven memberships differ from a full recompute");
    assert_eq!(report.transitions, 0, "a recompute right after must change nothing");
    // Preview computes the same on the fly.
    let now = renkei_core::Clock::now(&f.clock);
    for id in f.engine.segments().ids().map(str::to_string).collect::<Vec<_>>() {
        let preview: BTreeSet<String> =
            f.engine.preview(&id, now).await.expect("preview").into_iter().map(|u| u.to_string()).collect();
        let stored: BTreeSet<String> =
            kept.iter().filter(|(_, set)| set.contains(&id)).map(|(u, _)| u.clone()).collect();
        assert_eq!(preview, stored, "preview of {id}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn real_time_equals_full_recompute(steps in prop::collection::vec((op(), 0i64..150), 1..30)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(run_case(steps));
    }
}
