//! Hand-checked examples of evaluation and next-change times.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use chrono_tz::{Asia, Tz, UTC};
use renkei_core::{EventTallier, LineUserId};
use renkei_segments::{EventFact, SegmentSet, UserFacts};
use serde_json::{Map, Value, json};

const TOKYO: Tz = Asia::Tokyo;

fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

fn user(attributes: Option<Value>, events: &[(&str, &str, Value)]) -> UserFacts {
    UserFacts {
        line_user_id: LineUserId::parse("U4af4980629a0b7a1fd4a3c1bb0d7d9c0").unwrap(),
        linked: attributes.is_some(),
        following: true,
        attributes: attributes.map(object),
        events: events
            .iter()
            .map(|(kind, at, props)| EventFact {
                event_type: kind.to_string(),
                occurred_at: t(at),
                properties: object(props.clone()).into(),
            })
            .collect(),
        totals: Default::default(),
    }
}

fn set(rule: &str) -> SegmentSet {
    let text = format!("id: s\nname: S\nrule:\n{}", rule.lines().map(|l| format!("  {l}\n")).collect::<String>());
    SegmentSet::parse_str("s.yaml", &text).unwrap_or_else(|d| panic!("{d:?}"))
}

fn eval(rule: &str, facts: &UserFacts, now: &str) -> bool {
    set(rule).evaluate(facts, t(now), TOKYO)["s"]
}

#[test]
fn cart_abandonment_follows_the_spec_example() {
    let rule = "all:\n  - linked: true\n  - event: cart_add\n    within: 24h\n    older_than: 1h\n    not_followed_by:\n      event: purchase\n      match: [cart_id]";
    let facts = user(
        Some(json!({})),
        &[
            ("cart_add", "2026-03-01T10:00:00Z", json!({"cart_id": "c1"})),
            ("purchase", "2026-03-01T10:30:00Z", json!({"cart_id": "c2"})),
        ],
    );
    assert!(!eval(rule, &facts, "2026-03-01T10:59:59Z"), "not older than 1h yet");
    assert!(eval(rule, &facts, "2026-03-01T11:00:00Z"), "older_than boundary is inclusive");
    assert!(!eval(rule, &facts, "2026-03-02T10:00:00Z"), "within boundary is exclusive");
    let paid = user(
        Some(json!({})),
        &[
            ("cart_add", "2026-03-01T10:00:00Z", json!({"cart_id": "c1"})),
            ("purchase", "2026-03-01T12:00:00Z", json!({"cart_id": "c1"})),
        ],
    );
    assert!(eval(rule, &paid, "2026-03-01T11:30:00Z"), "the purchase has not happened yet at 11:30");
    assert!(!eval(rule, &paid, "2026-03-01T12:00:00Z"));
    let next = set(rule).next_change(&paid, t("2026-03-01T11:30:00Z"), TOKYO);
    assert_eq!(next, Some(t("2026-03-01T12:00:00Z")));
}

#[test]
fn aggregates() {
    let facts = user(
        None,
        &[
            ("purchase", "2026-03-01T00:00:00Z", json!({"amount": 1000})),
            ("purchase", "2026-03-02T00:00:00Z", json!({"amount": "2000"})),
            ("purchase", "2026-03-03T00:00:00Z", json!({"amount": 2500.5})),
        ],
    );
    let now = "2026-03-10T00:00:00Z";
    assert!(eval("event: purchase\ncount: {eq: 3}", &facts, now));
    assert!(eval("event: purchase\nsum: {property: amount, eq: 3500.5}", &facts, now), "a string amount is ignored");
    assert!(eval("event: purchase\navg: {property: amount, gt: 1750, lt: 1751}", &facts, now));
    assert!(eval("event: purchase\nmin: {property: amount, eq: 1000}", &facts, now));
    assert!(eval("event: purchase\nmax: {property: amount, eq: 2500.5}", &facts, now));
    assert!(eval("event: refund\nsum: {property: amount, eq: 0}", &facts, now), "sum over none is 0");
    assert!(!eval("event: refund\navg: {property: amount, gte: 0}", &facts, now), "avg over none is false");
    assert!(!eval("event: refund\nmax: {property: amount, lte: 0}", &facts, now));
    assert!(eval("event: refund\ncount: {eq: 0}", &facts, now));
    assert!(!eval("event: purchase\nwithin: 1d", &facts, now), "default count >= 1");
    assert!(
        eval("event: purchase\nwhere: {amount: {gte: 1000}}\ncount: {eq: 2}", &facts, now),
        "no coercion of \"2000\""
    );
    assert!(!eval("event: purchase", &facts, "2026-02-28T00:00:00Z"), "events after now never count");
}

#[test]
fn attributes_compare_without_coercion() {
    let facts = user(
        Some(json!({"rank": "gold", "points": 120, "tags": ["vip", 3], "address": {"pref": "東京都"}, "gone": null})),
        &[],
    );
    let now = "2026-03-10T00:00:00Z";
    assert!(eval("attribute: rank\neq: gold", &facts, now));
    assert!(eval("attribute: address.pref\ncontains: 東京", &facts, now));
    assert!(eval("attribute: tags\ncontains: vip", &facts, now));
    assert!(eval("attribute: tags\ncontains: 3", &facts, now));
    assert!(!eval("attribute: points\neq: \"120\"", &facts, now));
    assert!(!eval("attribute: points\nne: \"120\"", &facts, now), "mismatched types compare false, ne too");
    assert!(eval("attribute: points\ngte: 120.0", &facts, now));
    assert!(!eval("attribute: rank\ngt: 1", &facts, now));
    assert!(eval("attribute: rank\nnot_in: [silver, bronze]", &facts, now));
    assert!(eval("attribute: gone\nexists: false", &facts, now), "null is missing");
    assert!(!eval("attribute: gone\nne: x", &facts, now));
    assert!(!eval("attribute: missing\nnot_in: [x]", &facts, now));
    let unlinked = user(None, &[]);
    assert!(eval("attribute: rank\nexists: false", &unlinked, now));
    assert!(!eval("attribute: rank\nne: gold", &unlinked, now));
}

#[test]
fn attribute_times_and_bare_dates_in_tokyo() {
    let facts = user(
        Some(json!({"registered_at": "2026-03-01", "visited_at": "2026-03-01T09:00:00+09:00", "bad": "yesterday"})),
        &[],
    );
    // 2026-03-01 means 2026-02-28T15:00:00Z in Tokyo.
    assert!(eval("attribute: registered_at\nwithin: 1d", &facts, "2026-03-01T14:59:59Z"));
    assert!(!eval("attribute: registered_at\nwithin: 1d", &facts, "2026-03-01T15:00:00Z"));
    assert!(
        !eval("attribute: registered_at\nwithin: 1d", &facts, "2026-02-28T14:59:59Z"),
        "a future time is not within"
    );
    assert!(eval("attribute: visited_at\nolder_than: 1h", &facts, "2026-03-01T01:00:00Z"));
    assert!(!eval("attribute: visited_at\nolder_than: 1h", &facts, "2026-03-01T00:59:59Z"));
    assert!(!eval("attribute: bad\nolder_than: 1s", &facts, "2026-03-10T00:00:00Z"));
    let s = set("attribute: registered_at\nwithin: 1d");
    assert_eq!(s.next_change(&facts, t("2026-03-01T00:00:00Z"), TOKYO), Some(t("2026-03-01T15:00:00Z")));
    assert_eq!(s.next_change(&facts, t("2026-03-01T00:00:00Z"), UTC), Some(t("2026-03-02T00:00:00Z")));
}

#[test]
fn anniversary_uses_the_configured_timezone() {
    let facts = user(Some(json!({"birthday": "1990-03-02", "leap": "2000-02-29", "odd": "1990-03-02T00:00:00Z"})), &[]);
    let today = set("anniversary: birthday\ntoday: true");
    // 2026-03-01T15:00Z is already 2 March in Tokyo but still 1 March in UTC.
    let now = t("2026-03-01T15:00:00Z");
    assert!(today.evaluate(&facts, now, TOKYO)["s"]);
    assert!(!today.evaluate(&facts, now, UTC)["s"]);
    assert_eq!(today.next_change(&facts, now - Duration::seconds(1), TOKYO), Some(now));
    assert_eq!(today.next_change(&facts, now, UTC), Some(t("2026-03-02T00:00:00Z")));
    assert!(eval("anniversary: leap\ntoday: true", &facts, "2027-02-28T03:00:00Z"));
    assert!(!eval("anniversary: leap\ntoday: true", &facts, "2028-02-28T03:00:00Z"));
    assert!(eval("anniversary: leap\nthis_month: true", &facts, "2027-02-01T03:00:00Z"));
    assert!(
        eval("anniversary: birthday\nwithin_days: 3", &facts, "2026-02-27T15:00:00Z"),
        "28 Feb + 3 days covers 2 Mar"
    );
    assert!(!eval("anniversary: birthday\nwithin_days: 3", &facts, "2026-02-26T15:00:00Z"));
    assert!(!eval("anniversary: odd\nthis_month: true", &facts, "2026-03-05T00:00:00Z"), "not a bare date");
    assert!(!eval("anniversary: missing\nthis_month: true", &facts, "2026-03-05T00:00:00Z"));
}

#[test]
fn followed_by_within_and_where() {
    let rule =
        "event: reservation\nfollowed_by:\n  event: visit\n  within: 2h\n  where: {store: {in: [shibuya, shinjuku]}}";
    let facts = user(
        None,
        &[
            ("reservation", "2026-03-01T10:00:00Z", json!({})),
            ("visit", "2026-03-01T10:00:00Z", json!({"store": "shibuya"})),
            ("visit", "2026-03-01T12:00:00Z", json!({"store": "shinjuku"})),
        ],
    );
    assert!(!eval(rule, &facts, "2026-03-01T11:00:00Z"), "same instant is not later");
    assert!(eval(rule, &facts, "2026-03-01T12:00:00Z"), "exactly within 2h of the first counts");
}

#[test]
fn segment_references_use_the_same_user_and_instant() {
    let sources = [
        ("a.yaml", "id: gold\nname: ゴールド\nrule: {attribute: rank, eq: gold}\n"),
        (
            "b.yaml",
            "id: gold_recent\nname: 最近のゴールド\nrule:\n  all:\n    - segment: gold\n    - event: visit\n      within: 1d\n",
        ),
        ("c.yaml", "id: not_gold\nname: ゴールド以外\nrule: {not: {segment: gold}}\n"),
    ];
    let s = SegmentSet::from_sources(sources.iter().map(|(f, x)| (f.into(), x.to_string()))).unwrap();
    let order: Vec<&str> = s.in_dependency_order().map(|x| x.id.as_str()).collect();
    assert_eq!(order, ["gold", "gold_recent", "not_gold"]);
    let facts = user(Some(json!({"rank": "gold"})), &[("visit", "2026-03-01T00:00:00Z", json!({}))]);
    let answers = s.evaluate(&facts, t("2026-03-01T12:00:00Z"), TOKYO);
    assert_eq!(
        answers.into_iter().collect::<Vec<_>>(),
        [("gold".into(), true), ("gold_recent".into(), true), ("not_gold".into(), false)]
    );
    assert_eq!(s.evaluate_segment("gold_recent", &facts, t("2026-03-02T00:00:00Z"), TOKYO), Some(false));
    assert_eq!(s.next_change_for("not_gold", &facts, t("2026-03-01T12:00:00Z"), TOKYO), None);
    assert_eq!(
        s.next_change_for("gold_recent", &facts, t("2026-03-01T12:00:00Z"), TOKYO),
        Some(t("2026-03-02T00:00:00Z"))
    );
}

#[test]
fn the_example_segments_load_and_behave() {
    let set = SegmentSet::load_dir("../../config/segments")
        .unwrap_or_else(|d| panic!("{}", d.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")));
    for id in [
        "gold_members",
        "frequent_buyers",
        "big_spenders",
        "campaign_participants",
        "store_visitors",
        "new_members",
        "birthday_this_month",
        "birthday_today",
        "cart_abandoners",
        "lapsed_visitors",
        "unlinked_followers",
    ] {
        assert!(set.segment(id).is_some(), "{id} missing");
    }
    let now = "2026-03-10T03:00:00Z";
    let member = user(
        Some(json!({"rank": "gold", "birthday": "1990-03-10", "registered_at": "2026-03-01T10:00:00+09:00"})),
        &[
            ("purchase", "2026-02-01T00:00:00Z", json!({"amount": 12000})),
            ("purchase", "2026-02-15T00:00:00Z", json!({"amount": 9000, "cart_id": "c0"})),
            ("purchase", "2026-03-01T00:00:00Z", json!({"amount": 10000})),
            ("store_visit", "2025-12-01T00:00:00Z", json!({})),
            ("cart_add", "2026-03-10T01:00:00Z", json!({"cart_id": "c1"})),
        ],
    );
    let answers = set.evaluate(&member, t(now), TOKYO);
    let members: Vec<&str> = answers.iter().filter(|(_, v)| **v).map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        members,
        [
            "big_spenders",
            "birthday_this_month",
            "birthday_today",
            "cart_abandoners",
            "frequent_buyers",
            "gold_frequent_buyers",
            "gold_members",
            "lapsed_visitors",
            "new_members",
            "not_reviewed",
        ]
    );
    let mut follower = user(None, &[]);
    follower.following = true;
    assert!(set.evaluate(&follower, t(now), TOKYO)["unlinked_followers"]);
    // The cart leaves the 24h window first.
    assert_eq!(set.next_change_for("cart_abandoners", &member, t(now), TOKYO), Some(t("2026-03-11T01:00:00Z")));
    assert_eq!(set.next_change(&member, t(now), TOKYO), Some(t("2026-03-10T15:00:00Z")), "Tokyo midnight");
}

#[test]
fn property_reads_name_the_keys_each_event_type_needs() {
    let sources = [
        (
            "a.yaml",
            "id: a\nname: A\nrule:\n  event: purchase\n  within: 90d\n  sum:\n    property: amount.yen\n    gte: 3\n",
        ),
        (
            "b.yaml",
            "id: b\nname: B\nrule:\n  all:\n    - event: cart_add\n      where: {channel: web}\n      not_followed_by:\n        event: purchase\n        match: [cart_id]\n        where: {paid: true}\n    - not:\n        event: store_visit\n        within: 60d\n",
        ),
        (
            "c.yaml",
            "id: c\nname: C\nrule:\n  any:\n    - event: page_view\n      count: {gte: 2}\n    - attribute: rank\n      eq: gold\n",
        ),
    ];
    let set = SegmentSet::from_sources(sources.iter().map(|(f, t)| (std::path::PathBuf::from(f), t.to_string())))
        .unwrap_or_else(|d| panic!("{d:?}"));
    let reads: Vec<(String, Vec<String>)> =
        set.property_reads().into_iter().map(|(t, keys)| (t, keys.into_iter().collect())).collect();
    let expected: Vec<(String, Vec<String>)> = [
        ("cart_add", vec!["cart_id", "channel"]),
        ("page_view", vec![]),
        ("purchase", vec!["amount", "cart_id", "paid"]),
        ("store_visit", vec![]),
    ]
    .iter()
    .map(|(t, keys)| (t.to_string(), keys.iter().map(|k| k.to_string()).collect()))
    .collect();
    assert_eq!(reads, expected);
    assert_eq!(
        set.property_reads().into_keys().collect::<std::collections::BTreeSet<_>>(),
        set.referenced_event_types()
    );
}

#[test]
fn event_horizons_are_the_widest_window_per_type() {
    let sources = [
        ("a.yaml", "id: a\nname: A\nrule:\n  event: purchase\n  within: 90d\n  count: {gte: 3}\n"),
        (
            "b.yaml",
            "id: b\nname: B\nrule:\n  event: cart_add\n  within: 24h\n  older_than: 1h\n  not_followed_by:\n    event: purchase\n    match: [cart_id]\n",
        ),
        (
            "c.yaml",
            "id: c\nname: C\nrule:\n  all:\n    - event: store_visit\n    - not:\n        event: store_visit\n        within: 60d\n",
        ),
        ("d.yaml", "id: d\nname: D\nrule:\n  event: review\n  followed_by:\n    event: refund\n    within: 1h\n"),
        ("e.yaml", "id: e\nname: E\nrule:\n  event: page_view\n  within: 7d\n"),
        ("f.yaml", "id: f\nname: F\nrule:\n  event: page_view\n  within: 30d\n"),
    ];
    let set = SegmentSet::from_sources(sources.iter().map(|(f, t)| (std::path::PathBuf::from(f), t.to_string())))
        .unwrap_or_else(|d| panic!("{d:?}"));
    let horizons: Vec<(String, Option<i64>)> =
        set.event_horizons().into_iter().map(|(t, h)| (t, h.map(|d| d.seconds()))).collect();
    let day = 86_400;
    let expected: Vec<(String, Option<i64>)> = [
        ("cart_add", Some(day)),
        ("page_view", Some(30 * day)),
        ("purchase", Some(90 * day)),
        ("refund", None),
        ("review", None),
        ("store_visit", None),
    ]
    .iter()
    .map(|(t, h)| (t.to_string(), *h))
    .collect();
    assert_eq!(horizons, expected);
    assert_eq!(
        set.event_horizons().into_keys().collect::<std::collections::BTreeSet<_>>(),
        set.referenced_event_types()
    );
    // With totals, store_visit's whole-history count reads no event; its 60d window still does.
    assert_eq!(set.totalled_types().into_iter().collect::<Vec<_>>(), ["store_visit"]);
    let beside: Vec<(String, Option<i64>)> =
        set.event_horizons_beside_totals().into_iter().map(|(t, h)| (t, h.map(|d| d.seconds()))).collect();
    let mut expected = expected;
    expected[5].1 = Some(60 * day);
    assert_eq!(beside, expected);
}

#[test]
fn a_type_only_counted_whole_needs_no_event_beside_totals() {
    let counted = set("event: store_visit\ncount: {gte: 2}");
    assert_eq!(counted.totalled_types().into_iter().collect::<Vec<_>>(), ["store_visit"]);
    let horizons: Vec<(String, Option<i64>)> =
        counted.event_horizons_beside_totals().into_iter().map(|(t, h)| (t, h.map(|d| d.seconds()))).collect();
    assert_eq!(horizons, [("store_visit".to_string(), Some(0))]);
    // Filters and other aggregates have tallies of their own, each under its key.
    for rule in ["event: store_visit\nwhere: {store: shibuya}", "event: purchase\nsum: {property: amount, gte: 1}"] {
        let tallied = set(rule);
        assert_eq!(tallied.totalled_types().len(), 1, "{rule}");
        let keys: Vec<String> = tallied.tallied_conditions().into_keys().collect();
        assert!(keys.len() == 1 && keys[0].contains(':'), "{rule}: {keys:?}");
        assert_eq!(tallied.tallier().tallies().len(), 1, "{rule}: the store keeps it");
    }
    assert!(counted.tallier().is_empty(), "a plain count is the store's per-type totals");
    // A window, a follow-up or a time-dependent filter needs the events.
    for rule in [
        "event: store_visit\nolder_than: 1d",
        "event: purchase\nfollowed_by: {event: visit}",
        "event: purchase\nwhere: {at: {within: 1d}}",
    ] {
        assert!(set(rule).totalled_types().is_empty(), "{rule}");
    }
}
