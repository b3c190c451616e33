//! Property tests: (a) the evaluator agrees with a deliberately naive
//! reference written here from the segment language as documented (`rule`
//! conditions and their combinators), sharing no code with the crate;
//! (b) `next_change` is sound: nothing changes strictly before it;
//! (c) evaluating with the store's running totals (and only the events the
//! windows need) answers as evaluating every raw event.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::{America, Asia, Tz, UTC};
use proptest::prelude::*;
use renkei_core::LineUserId;
use renkei_segments::{EventFact, EventTotals, SegmentSet, UserFacts};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

// ---------- random rules, rendered to YAML (JSON is YAML) ----------

#[derive(Debug, Clone)]
enum Rule {
    All(Vec<Rule>),
    Any(Vec<Rule>),
    Not(Box<Rule>),
    Attribute {
        name: &'static str,
        op: &'static str,
        operand: Value,
    },
    Anniversary {
        name: &'static str,
        when: &'static str,
        days: u32,
    },
    Linked(bool),
    Following(bool),
    /// Index of another segment; fixed up to point at an earlier one.
    Segment(usize),
    Event(Box<EventRule>),
}

type Comparators = Vec<(&'static str, Value)>;

#[derive(Debug, Clone)]
struct EventRule {
    event: &'static str,
    filters: Vec<(&'static str, Filter)>,
    within: Option<i64>,
    older_than: Option<i64>,
    follow: Option<Follow>,
    /// (count/sum/…, property, comparators)
    aggregate: Option<(&'static str, &'static str, Comparators)>,
}

#[derive(Debug, Clone)]
enum Filter {
    Equals(Value),
    Comparators(Vec<(&'static str, Value)>),
}

#[derive(Debug, Clone)]
struct Follow {
    negated: bool,
    event: &'static str,
    filters: Vec<(&'static str, Filter)>,
    within: Option<i64>,
    match_properties: Vec<&'static str>,
}

const DURATIONS: [(i64, &str); 9] = [
    (0, "0s"),
    (1800, "30m"),
    (3600, "1h"),
    (7200, "2h"),
    (14_400, "4h"),
    (86_400, "1d"),
    (172_800, "2d"),
    (604_800, "1w"),
    (2_592_000, "30d"),
];

fn duration_text(seconds: i64) -> &'static str {
    DURATIONS.iter().find(|(s, _)| *s == seconds).map(|(_, t)| *t).unwrap()
}

fn operand() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("gold")),
        Just(json!("silver")),
        Just(json!("vip")),
        Just(json!("東京")),
        Just(json!("c1")),
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(1.5)),
        Just(json!(1000)),
        Just(json!(true)),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(1000)),
        Just(json!(2500.5)),
        Just(json!(4000))
    ]
}

fn duration() -> impl Strategy<Value = i64> {
    prop::sample::select(DURATIONS.iter().map(|(s, _)| *s).collect::<Vec<_>>())
}

fn comparator(values: bool) -> impl Strategy<Value = (&'static str, Value)> {
    let ordered = prop_oneof![Just("gt"), Just("gte"), Just("lt"), Just("lte"), Just("eq"), Just("ne")];
    let scalar = (ordered, if values { operand().boxed() } else { number().boxed() })
        .prop_filter("ordered comparators take numbers or strings", |(op, v)| {
            !(op.starts_with('g') || op.starts_with('l')) || !v.is_boolean()
        });
    let lists = (
        prop_oneof![Just("in"), Just("not_in")],
        prop::collection::vec(if values { operand().boxed() } else { number().boxed() }, 0..3),
    )
        .prop_map(|(op, items)| (op, Value::Array(items)));
    if values {
        prop_oneof![
            4 => scalar,
            2 => lists,
            1 => operand().prop_filter("contains takes a scalar", |v| !v.is_boolean()).prop_map(|v| ("contains", v)),
            1 => any::<bool>().prop_map(|b| ("exists", json!(b))),
            1 => duration().prop_map(|d| ("within", json!(duration_text(d)))),
            1 => duration().prop_map(|d| ("older_than", json!(duration_text(d)))),
        ]
        .boxed()
    } else {
        prop_oneof![3 => scalar, 1 => lists].boxed()
    }
}

/// One comparator per key, as in a YAML map.
fn unique(comparators: Vec<(&'static str, Value)>) -> Vec<(&'static str, Value)> {
    let mut out: Vec<(&'static str, Value)> = Vec::new();
    for (key, value) in comparators {
        out.retain(|(k, _)| *k != key);
        out.push((key, value));
    }
    out
}

fn filters() -> impl Strategy<Value = Vec<(&'static str, Filter)>> {
    let property = prop_oneof![Just("amount"), Just("cart_id"), Just("store"), Just("at"), Just("meta.channel")];
    let filter = prop_oneof![
        operand().prop_map(Filter::Equals),
        prop::collection::vec(comparator(true), 1..3).prop_map(|cs| Filter::Comparators(unique(cs))),
    ];
    // Mostly no filter: random filters rarely match, and then nothing is left to test.
    prop_oneof![
        2 => Just(Vec::new()),
        1 => prop::collection::btree_map(property, filter, 1..3).prop_map(|m| m.into_iter().collect()),
    ]
}

fn event_rule() -> impl Strategy<Value = EventRule> {
    let event = prop_oneof![Just("purchase"), Just("cart_add"), Just("visit")];
    let follow = (
        any::<bool>(),
        prop_oneof![Just("purchase"), Just("visit")],
        filters(),
        prop::option::of(duration()),
        prop::collection::vec(prop_oneof![Just("cart_id"), Just("store")], 0..2),
    )
        .prop_map(|(negated, event, filters, within, match_properties)| Follow {
            negated,
            event,
            filters,
            within,
            match_properties,
        });
    let aggregate = (
        prop_oneof![Just("count"), Just("sum"), Just("avg"), Just("min"), Just("max")],
        prop_oneof![Just("amount"), Just("cart_id")],
        prop::collection::vec(comparator(false), 1..3).prop_map(unique),
    );
    (
        event,
        filters(),
        prop::option::of(duration()),
        prop::option::of(duration()),
        prop::option::weighted(0.4, follow),
        prop::option::weighted(0.5, aggregate),
    )
        .prop_map(|(event, filters, within, older_than, follow, aggregate)| {
            // An empty window is a load error; keep the rule valid.
            let older_than = match (within, older_than) {
                (Some(w), Some(o)) if w <= o => None,
                _ => older_than,
            };
            EventRule { event, filters, within, older_than, follow, aggregate }
        })
}

fn leaf() -> impl Strategy<Value = Rule> {
    let attribute_name = prop_oneof![
        Just("rank"),
        Just("points"),
        Just("tags"),
        Just("registered_at"),
        Just("address.pref"),
        Just("birthday")
    ];
    let leaf = prop_oneof![
        3 => (attribute_name, comparator(true)).prop_map(|(name, (op, operand))| Rule::Attribute { name, op, operand }),
        2 => (prop_oneof![Just("birthday"), Just("registered_at")], prop_oneof![Just("today"), Just("this_month"), Just("within_days")], 1u32..40)
            .prop_map(|(name, when, days)| Rule::Anniversary { name, when, days }),
        1 => any::<bool>().prop_map(Rule::Linked),
        1 => any::<bool>().prop_map(Rule::Following),
        1 => (0usize..4).prop_map(Rule::Segment),
        5 => event_rule().prop_map(|e| Rule::Event(Box::new(e))),
    ];
    leaf
}

fn rule() -> impl Strategy<Value = Rule> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Rule::All),
            prop::collection::vec(inner.clone(), 0..3).prop_map(Rule::Any),
            inner.prop_map(|r| Rule::Not(Box::new(r))),
        ]
    })
}

/// Points segment references of segment `k` at earlier segments only.
fn fix_references(rule: Rule, k: usize) -> Rule {
    match rule {
        Rule::Segment(_) if k == 0 => Rule::Linked(true),
        Rule::Segment(i) => Rule::Segment(i % k),
        Rule::All(items) => Rule::All(items.into_iter().map(|r| fix_references(r, k)).collect()),
        Rule::Any(items) => Rule::Any(items.into_iter().map(|r| fix_references(r, k)).collect()),
        Rule::Not(inner) => Rule::Not(Box::new(fix_references(*inner, k))),
        other => other,
    }
}

fn render_filters(filters: &[(&str, Filter)]) -> Value {
    let mut map = Map::new();
    for (name, filter) in filters {
        let value = match filter {
            Filter::Equals(v) => v.clone(),
            Filter::Comparators(cs) => Value::Object(cs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()),
        };
        map.insert(name.to_string(), value);
    }
    Value::Object(map)
}

fn render(rule: &Rule) -> Value {
    match rule {
        Rule::All(items) => json!({"all": items.iter().map(render).collect::<Vec<_>>()}),
        Rule::Any(items) => json!({"any": items.iter().map(render).collect::<Vec<_>>()}),
        Rule::Not(inner) => json!({"not": render(inner)}),
        Rule::Attribute { name, op, operand } => json!({"attribute": name, *op: operand}),
        Rule::Anniversary { name, when, days } => {
            let option = if *when == "within_days" { json!(days) } else { json!(true) };
            json!({"anniversary": name, *when: option})
        }
        Rule::Linked(b) => json!({"linked": b}),
        Rule::Following(b) => json!({"following": b}),
        Rule::Segment(i) => json!({"segment": format!("s{i}")}),
        Rule::Event(e) => {
            let mut map = Map::new();
            map.insert("event".into(), json!(e.event));
            if !e.filters.is_empty() {
                map.insert("where".into(), render_filters(&e.filters));
            }
            if let Some(w) = e.within {
                map.insert("within".into(), json!(duration_text(w)));
            }
            if let Some(o) = e.older_than {
                map.insert("older_than".into(), json!(duration_text(o)));
            }
            if let Some(f) = &e.follow {
                let mut follow = Map::new();
                follow.insert("event".into(), json!(f.event));
                if !f.filters.is_empty() {
                    follow.insert("where".into(), render_filters(&f.filters));
                }
                if let Some(w) = f.within {
                    follow.insert("within".into(), json!(duration_text(w)));
                }
                if !f.match_properties.is_empty() {
                    follow.insert("match".into(), json!(f.match_properties));
                }
                map.insert(if f.negated { "not_followed_by" } else { "followed_by" }.into(), Value::Object(follow));
            }
            if let Some((kind, property, comparators)) = &e.aggregate {
                let mut agg: Map<String, Value> = comparators.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                if *kind != "count" {
                    agg.insert("property".into(), json!(property));
                }
                map.insert(kind.to_string(), Value::Object(agg));
            }
            Value::Object(map)
        }
    }
}

// ---------- random facts ----------

fn base() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 2, 20, 0, 0, 0).unwrap()
}

fn time_text(now: DateTime<Utc>, half_hours: i64, bare: bool) -> Value {
    let t = now + Duration::minutes(30 * half_hours);
    if bare { json!(t.format("%Y-%m-%d").to_string()) } else { json!(t.to_rfc3339()) }
}

#[derive(Debug, Clone)]
struct Scenario {
    rules: Vec<Rule>,
    facts: UserFacts,
    now: DateTime<Utc>,
    tz: Tz,
}

fn property_value() -> impl Strategy<Value = Value> {
    prop_oneof![Just(Value::Null), operand(), number(), Just(json!("2000")), Just(json!([1, "vip"]))]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    scenario_of(prop::collection::vec(rule(), 1..4).boxed(), false)
}

/// One simple condition, so that no other candidate instant hides a missing one.
fn single_condition_scenario() -> impl Strategy<Value = Scenario> {
    scenario_of(time_leaf().prop_map(|r| vec![r]).boxed(), true)
}

/// Conditions that move with time, each alone, to check every kind of change instant.
fn time_leaf() -> impl Strategy<Value = Rule> {
    let short = prop::sample::select(vec![1800i64, 3600, 7200]);
    let time_comparator = (prop_oneof![Just("within"), Just("older_than")], short.clone())
        .prop_map(|(op, d)| (op, json!(duration_text(d))));
    prop_oneof![
        (prop_oneof![Just("registered_at"), Just("birthday")], time_comparator.clone())
            .prop_map(|(name, (op, operand))| Rule::Attribute { name, op, operand }),
        (prop_oneof![Just("today"), Just("this_month"), Just("within_days")], 1u32..3)
            .prop_map(|(when, days)| Rule::Anniversary { name: "birthday", when, days }),
        (event_rule(), time_comparator, any::<bool>()).prop_map(|(mut e, c, in_follow)| {
            let filter = ("at", Filter::Comparators(vec![c]));
            e.aggregate = None;
            if in_follow {
                e.filters = vec![];
                e.follow = Some(Follow {
                    negated: e.follow.as_ref().is_some_and(|f| f.negated),
                    event: "visit",
                    filters: vec![filter],
                    within: None,
                    match_properties: vec![],
                });
            } else {
                e.filters = vec![filter];
            }
            Rule::Event(Box::new(e))
        }),
        (event_rule(), any::<bool>(), prop::option::of(short.clone()), prop::option::of(short)).prop_map(
            |(mut e, negated, within, follow_within)| {
                e.within = within.map(|w| w * 2);
                e.older_than = None;
                e.filters = vec![];
                e.aggregate = None;
                e.follow = Some(Follow {
                    negated,
                    event: "visit",
                    filters: vec![],
                    within: follow_within,
                    match_properties: vec![],
                });
                Rule::Event(Box::new(e))
            }
        ),
        event_rule().prop_map(|e| Rule::Event(Box::new(e))),
    ]
}

/// `tight` puts every time within a few hours of `now`, where the short
/// durations make windows open and close.
fn scenario_of(rules: BoxedStrategy<Vec<Rule>>, tight: bool) -> impl Strategy<Value = Scenario> {
    let near = |wide: BoxedStrategy<i64>| if tight { (-12i64..8).boxed() } else { wide };
    let now_offset = 0i64..(10 * 24 * 60);
    let tz = prop_oneof![Just(Asia::Tokyo), Just(UTC), Just(America::New_York)];
    let event = (
        prop_oneof![Just("purchase"), Just("cart_add"), Just("visit")],
        near(prop_oneof![3 => -80i64..0, 1 => 0i64..6].boxed()),
        0i64..3,
        prop::collection::btree_map(
            prop_oneof![Just("amount"), Just("cart_id"), Just("store")],
            property_value(),
            0..3,
        ),
        prop::option::of(near((-60i64..60).boxed())),
        prop::option::of(operand()),
    );
    let attributes = (
        prop::option::of(prop_oneof![Just(json!("gold")), Just(json!("silver")), Just(json!(1)), Just(Value::Null)]),
        prop::option::of(number()),
        prop::option::of(prop::collection::vec(operand(), 0..3)),
        prop::option::of((near((-100i64..10).boxed()), any::<bool>())),
        prop::option::of(prop_oneof![Just("東京都"), Just("大阪府")]),
        prop::option::of(prop_oneof![(-400i64..400).prop_map(Some), Just(None)]),
    );
    let linked = if tight { Just(true).boxed() } else { any::<bool>().boxed() };
    (rules, now_offset, tz, linked, any::<bool>(), attributes, prop::collection::vec(event, 0..8)).prop_map(
        |(rules, now_offset, tz, linked, following, attributes, events)| {
            // Whole minutes, so that boundaries of 30-minute steps are hit exactly.
            let now = base() + Duration::minutes(now_offset);
            let (rank, points, tags, registered, pref, birthday) = attributes;
            let mut map = Map::new();
            if let Some(rank) = rank {
                map.insert("rank".into(), rank);
            }
            if let Some(points) = points {
                map.insert("points".into(), points);
            }
            if let Some(tags) = tags {
                map.insert("tags".into(), Value::Array(tags));
            }
            if let Some((half_hours, bare)) = registered {
                map.insert("registered_at".into(), time_text(now, half_hours, bare));
            }
            if let Some(pref) = pref {
                map.insert("address".into(), json!({"pref": pref}));
            }
            if let Some(days) = birthday {
                let value = match days {
                    Some(days) => json!(
                        (now.date_naive() + Duration::days(days))
                            .with_year(1990)
                            .map_or("2000-02-29".to_string(), |d| d.format("%Y-%m-%d").to_string())
                    ),
                    None => json!("2000-02-29"),
                };
                map.insert("birthday".into(), value);
            }
            let events = events
                .into_iter()
                .map(|(kind, half_hours, jitter_seconds, props, at, channel)| {
                    let mut properties: Map<String, Value> =
                        props.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                    if let Some(at) = at {
                        properties.insert("at".into(), time_text(now, at, at % 5 == 0));
                    }
                    if let Some(channel) = channel {
                        properties.insert("meta".into(), json!({"channel": channel}));
                    }
                    EventFact {
                        event_type: kind.to_string(),
                        occurred_at: now + Duration::minutes(30 * half_hours) + Duration::seconds(jitter_seconds),
                        properties: properties.into(),
                    }
                })
                .collect();
            let facts = UserFacts {
                line_user_id: LineUserId::parse("U4af4980629a0b7a1fd4a3c1bb0d7d9c0").unwrap(),
                linked,
                following,
                attributes: linked.then_some(map),
                events,
                totals: Default::default(),
            };
            let rules = rules.into_iter().enumerate().map(|(k, r)| fix_references(r, k)).collect();
            Scenario { rules, facts, now, tz }
        },
    )
}

fn load(rules: &[Rule]) -> SegmentSet {
    let sources = rules.iter().enumerate().map(|(k, rule)| {
        let text = format!("id: s{k}\nname: セグメント{k}\nrule: {}\n", render(rule));
        (format!("s{k}.yaml").into(), text)
    });
    SegmentSet::from_sources(sources).unwrap_or_else(|d| panic!("generated rules must load: {d:#?}"))
}

// ---------- the naive reference ----------

fn reference_lookup<'a>(map: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut current: Option<&Value> = None;
    for (i, part) in path.split('.').enumerate() {
        current = if i == 0 { map.get(part) } else { current?.as_object()?.get(part) };
    }
    match current {
        Some(Value::Null) | None => None,
        Some(v) => Some(v),
    }
}

fn reference_equal(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
        return x == y;
    }
    if let (Value::Array(xs), Value::Array(ys)) = (a, b) {
        if xs.len() != ys.len() {
            return false;
        }
        for i in 0..xs.len() {
            if !reference_equal(&xs[i], &ys[i]) {
                return false;
            }
        }
        return true;
    }
    a == b
}

fn same_type(a: &Value, b: &Value) -> bool {
    (a.is_number() && b.is_number())
        || (a.is_string() && b.is_string())
        || (a.is_boolean() && b.is_boolean())
        || (a.is_array() && b.is_array())
        || (a.is_object() && b.is_object())
}

/// -1, 0, 1, or None when the two cannot be ordered.
fn reference_order(a: &Value, b: &Value) -> Option<i32> {
    if let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) {
        return Some(if x < y {
            -1
        } else if x > y {
            1
        } else {
            0
        });
    }
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        return Some(if x < y {
            -1
        } else if x > y {
            1
        } else {
            0
        });
    }
    None
}

fn reference_time(value: &Value, tz: Tz) -> Option<DateTime<Utc>> {
    let text = value.as_str()?;
    if text.len() == 10 {
        let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
        return tz.from_local_datetime(&date.and_hms_opt(0, 0, 0)?).earliest().map(|t| t.with_timezone(&Utc));
    }
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

fn reference_compare(value: Option<&Value>, op: &str, operand: &Value, now: DateTime<Utc>, tz: Tz) -> bool {
    let Some(value) = value else {
        return op == "exists" && operand == &json!(false);
    };
    match op {
        "exists" => operand == &json!(true),
        "eq" => reference_equal(value, operand),
        "ne" => same_type(value, operand) && !reference_equal(value, operand),
        "in" => {
            for item in operand.as_array().unwrap() {
                if reference_equal(value, item) {
                    return true;
                }
            }
            false
        }
        "not_in" => {
            for item in operand.as_array().unwrap() {
                if !same_type(value, item) || reference_equal(value, item) {
                    return false;
                }
            }
            true
        }
        "gt" => reference_order(value, operand) == Some(1),
        "gte" => matches!(reference_order(value, operand), Some(0 | 1)),
        "lt" => reference_order(value, operand) == Some(-1),
        "lte" => matches!(reference_order(value, operand), Some(-1 | 0)),
        "contains" => {
            if let (Some(text), Some(needle)) = (value.as_str(), operand.as_str()) {
                return text.contains(needle);
            }
            if let Some(items) = value.as_array() {
                for item in items {
                    if reference_equal(item, operand) {
                        return true;
                    }
                }
            }
            false
        }
        "within" | "older_than" => {
            let seconds = DURATIONS.iter().find(|(_, t)| Some(*t) == operand.as_str()).unwrap().0;
            let Some(t) = reference_time(value, tz) else { return false };
            if op == "within" {
                t <= now && t > now - Duration::seconds(seconds)
            } else {
                t <= now - Duration::seconds(seconds)
            }
        }
        other => panic!("unexpected comparator {other}"),
    }
}

fn reference_filters(filters: &[(&str, Filter)], properties: &Map<String, Value>, now: DateTime<Utc>, tz: Tz) -> bool {
    for (name, filter) in filters {
        let value = reference_lookup(properties, name);
        let ok = match filter {
            Filter::Equals(expected) => reference_compare(value, "eq", expected, now, tz),
            Filter::Comparators(cs) => cs.iter().all(|(op, operand)| reference_compare(value, op, operand, now, tz)),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn reference_anniversary(birth: NaiveDate, today: NaiveDate, when: &str, days: u32) -> bool {
    if when == "this_month" {
        return birth.month() == today.month();
    }
    let span = if when == "today" { 1 } else { days };
    for k in 0..span {
        let date = today + Duration::days(i64::from(k));
        let leap = NaiveDate::from_ymd_opt(date.year(), 2, 29).is_some();
        let (month, day) =
            if birth.month() == 2 && birth.day() == 29 && !leap { (2, 28) } else { (birth.month(), birth.day()) };
        if date.month() == month && date.day() == day {
            return true;
        }
    }
    false
}

fn reference_event(e: &EventRule, facts: &UserFacts, now: DateTime<Utc>, tz: Tz) -> bool {
    let mut kept: Vec<&EventFact> = Vec::new();
    for event in &facts.events {
        if event.event_type != e.event || event.occurred_at > now {
            continue;
        }
        if let Some(w) = e.within {
            if event.occurred_at <= now - Duration::seconds(w) {
                continue;
            }
        }
        if let Some(o) = e.older_than {
            if event.occurred_at > now - Duration::seconds(o) {
                continue;
            }
        }
        if !reference_filters(&e.filters, &event.properties.to_map(), now, tz) {
            continue;
        }
        if let Some(f) = &e.follow {
            let mut followed = false;
            for next in &facts.events {
                let mut ok =
                    next.event_type == f.event && next.occurred_at > event.occurred_at && next.occurred_at <= now;
                if let Some(w) = f.within {
                    ok = ok && next.occurred_at - event.occurred_at <= Duration::seconds(w);
                }
                for p in &f.match_properties {
                    match (
                        reference_lookup(&event.properties.to_map(), p),
                        reference_lookup(&next.properties.to_map(), p),
                    ) {
                        (Some(a), Some(b)) => ok = ok && reference_equal(a, b),
                        _ => ok = false,
                    }
                }
                ok = ok && reference_filters(&f.filters, &next.properties.to_map(), now, tz);
                if ok {
                    followed = true;
                }
            }
            if followed == f.negated {
                continue;
            }
        }
        kept.push(event);
    }
    let (kind, property, comparators) = match &e.aggregate {
        Some((kind, property, comparators)) => (*kind, *property, comparators.clone()),
        None => ("count", "", vec![("gte", json!(1))]),
    };
    let mut numbers = Vec::new();
    for event in &kept {
        if let Some(n) = reference_lookup(&event.properties.to_map(), property).and_then(Value::as_f64) {
            numbers.push(n);
        }
    }
    let result = match kind {
        "count" => Some(kept.len() as f64),
        "sum" => Some(numbers.iter().sum()),
        "avg" if !numbers.is_empty() => Some(numbers.iter().sum::<f64>() / numbers.len() as f64),
        "min" if !numbers.is_empty() => Some(numbers.iter().cloned().fold(f64::INFINITY, f64::min)),
        "max" if !numbers.is_empty() => Some(numbers.iter().cloned().fold(f64::NEG_INFINITY, f64::max)),
        _ => None,
    };
    let Some(result) = result else { return false };
    comparators.iter().all(|(op, operand)| reference_compare(Some(&json!(result)), op, operand, now, tz))
}

fn reference(rule: &Rule, facts: &UserFacts, now: DateTime<Utc>, tz: Tz, earlier: &[bool]) -> bool {
    match rule {
        Rule::All(items) => items.iter().all(|r| reference(r, facts, now, tz, earlier)),
        Rule::Any(items) => items.iter().any(|r| reference(r, facts, now, tz, earlier)),
        Rule::Not(inner) => !reference(inner, facts, now, tz, earlier),
        Rule::Attribute { name, op, operand } => {
            let value = facts.attributes.as_ref().and_then(|a| reference_lookup(a, name));
            reference_compare(value, op, operand, now, tz)
        }
        Rule::Anniversary { name, when, days } => {
            let Some(text) = facts.attributes.as_ref().and_then(|a| reference_lookup(a, name)).and_then(Value::as_str)
            else {
                return false;
            };
            let Ok(birth) = NaiveDate::parse_from_str(text, "%Y-%m-%d") else { return false };
            text.len() == 10 && reference_anniversary(birth, now.with_timezone(&tz).date_naive(), when, *days)
        }
        Rule::Linked(b) => facts.linked == *b,
        Rule::Following(b) => facts.following == *b,
        Rule::Segment(i) => earlier[*i],
        Rule::Event(e) => reference_event(e, facts, now, tz),
    }
}

fn reference_all(rules: &[Rule], facts: &UserFacts, now: DateTime<Utc>, tz: Tz) -> BTreeMap<String, bool> {
    let mut answers = Vec::new();
    for rule in rules {
        let answer = reference(rule, facts, now, tz, &answers);
        answers.push(answer);
    }
    answers.into_iter().enumerate().map(|(k, a)| (format!("s{k}"), a)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn evaluator_agrees_with_the_naive_reference(s in scenario(), shifts in prop::collection::vec(-200i64..200, 3)) {
        let set = load(&s.rules);
        // At `now` and at instants on 30-minute boundaries around it.
        for at in std::iter::once(s.now).chain(shifts.iter().map(|m| s.now + Duration::minutes(30 * m))) {
            let expected = reference_all(&s.rules, &s.facts, at, s.tz);
            prop_assert_eq!(set.evaluate(&s.facts, at, s.tz), expected, "at {}", at);
        }
    }

    #[test]
    fn nothing_changes_before_next_change(s in scenario(), fractions in prop::collection::vec(0.0f64..1.0, 6)) {
        check_next_change(&s, &fractions)?;
    }

    #[test]
    fn nothing_changes_before_next_change_single(s in single_condition_scenario(), fractions in prop::collection::vec(0.0f64..1.0, 6)) {
        check_next_change(&s, &fractions)?;
    }
}

fn check_next_change(s: &Scenario, fractions: &[f64]) -> Result<(), TestCaseError> {
    let set = load(&s.rules);
    let before = set.evaluate(&s.facts, s.now, s.tz);
    let next = set.next_change(&s.facts, s.now, s.tz);
    if let Some(next) = next {
        prop_assert!(next > s.now);
    }
    let horizon = next.unwrap_or(s.now + Duration::days(800));
    let span = (horizon - s.now).num_nanoseconds().unwrap();
    let mut samples: Vec<DateTime<Utc>> =
        fractions.iter().map(|f| s.now + Duration::nanoseconds(((span as f64) * f) as i64)).collect();
    samples.push(horizon - Duration::nanoseconds(1));
    samples.push(s.now + Duration::nanoseconds(1));
    for at in samples.into_iter().filter(|at| *at > s.now && *at < horizon) {
        prop_assert_eq!(set.evaluate(&s.facts, at, s.tz), before.clone(), "at {} (next change {:?})", at, next);
    }
    // Stepping from change to change, each answer holds until the next.
    let mut at = s.now;
    for _ in 0..5 {
        let Some(next) = set.next_change(&s.facts, at, s.tz) else { break };
        let answer = set.evaluate(&s.facts, at, s.tz);
        let middle = at + (next - at) / 2;
        if middle > at {
            prop_assert_eq!(set.evaluate(&s.facts, middle, s.tz), answer.clone());
        }
        prop_assert_eq!(set.evaluate(&s.facts, next - Duration::nanoseconds(1), s.tz), answer);
        at = next;
    }
    Ok(())
}

// ---------- (c) running totals ----------

/// The facts as the engine loads them for real-time evaluation at `now`:
/// each tally as totals of two sources (the events of the LINE user and of
/// its member, as `sources` splits them), folded as the store adds events up,
/// holding the events received at or after they occurred, the others
/// pending; and raw events only inside the horizons beside totals.
/// `received` (half hours after each event) makes some events arrive ahead
/// of their time (a negative value, or a future event: nothing is received
/// after `now`).
fn with_totals(set: &SegmentSet, facts: &UserFacts, now: DateTime<Utc>, received: &[(i64, bool)]) -> UserFacts {
    let mut totals: BTreeMap<String, EventTotals> = BTreeMap::new();
    for (key, tallied) in set.tallied_conditions() {
        let mut sources: [EventTotals; 2] = Default::default();
        for (event, (delay, member)) in facts.events.iter().zip(received.iter().cycle()) {
            if event.event_type != tallied.event_type {
                continue;
            }
            let received_at = (event.occurred_at + Duration::minutes(30 * delay)).min(now);
            let pending = event.occurred_at > received_at;
            tallied.add_to(&mut sources[usize::from(*member)], event.occurred_at, &event.properties, pending);
        }
        // Every tally is loaded, even of no events.
        let [mut user, member] = sources;
        user.merge(member);
        totals.insert(key, user);
    }
    let horizons = set.event_horizons_beside_totals();
    let needed = |event: &EventFact| match horizons.get(&event.event_type) {
        Some(Some(horizon)) => event.occurred_at > now - horizon.to_chrono(),
        _ => true,
    };
    let events = facts.events.iter().filter(|e| needed(e)).cloned().collect();
    UserFacts { events, totals, ..facts.clone() }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn totals_answer_as_raw_events(
        s in scenario(),
        received in prop::collection::vec((-4i64..6, any::<bool>()), 1..8),
        fractions in prop::collection::vec(0.0f64..1.0, 4),
    ) {
        let set = load(&s.rules);
        let totalled = with_totals(&set, &s.facts, s.now, &received);
        prop_assert!(totalled.totals_usable_at(s.now));
        // At `now`, at instants up to the next change the totals suggest, and
        // stepping from change to change: the raw answer every time.
        let next = set.next_change(&totalled, s.now, s.tz).unwrap_or(s.now + Duration::days(800));
        let span = (next - s.now).num_nanoseconds().unwrap();
        let mut instants: Vec<DateTime<Utc>> = vec![s.now];
        instants.extend(fractions.iter().map(|f| s.now + Duration::nanoseconds(((span as f64) * f) as i64)));
        let mut at = s.now;
        for _ in 0..5 {
            let Some(next) = set.next_change(&totalled, at, s.tz) else { break };
            instants.extend([next - Duration::nanoseconds(1), next]);
            at = next;
        }
        for at in instants {
            prop_assert_eq!(set.evaluate(&totalled, at, s.tz), set.evaluate(&s.facts, at, s.tz), "at {}", at);
        }
    }
}

#[test]
fn totals_are_unusable_before_their_last_event() {
    let set = load(&[]);
    let now = base();
    let mut facts = UserFacts {
        line_user_id: LineUserId::parse("U4af4980629a0b7a1fd4a3c1bb0d7d9c0").unwrap(),
        linked: false,
        following: true,
        attributes: None,
        events: Vec::new(),
        totals: BTreeMap::new(),
    };
    let mut totals = EventTotals::default();
    totals.add(now, None);
    facts.totals.insert("visit".into(), totals);
    assert!(facts.totals_usable_at(now));
    assert!(!facts.totals_usable_at(now - Duration::nanoseconds(1)));
    assert!(set.is_empty());
}
