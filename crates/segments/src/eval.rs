//! Evaluation of segments for one user at one instant. Pure: the caller
//! passes the facts, `now` and the configured timezone.

use crate::ast::{
    Aggregate, AggregateKind, Comparator, Condition, EventCondition, FieldPath, FollowUp, PropertyFilter,
};
use crate::calendar::{anniversary_matches, local_date, parse_date_only, parse_time};
use crate::set::SegmentSet;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use renkei_core::LineUserId;
use serde_json::{Map, Number, Value};
use std::cell::OnceCell;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// One event of the user, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFact {
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub properties: Properties,
}

/// An event's top-level properties: a few keys, each once, kept in a plain
/// list (a map per event costs more than the few comparisons a lookup makes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties(Vec<(String, Value)>);

impl Properties {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key`, replacing an earlier value.
    pub fn insert(&mut self, key: String, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// As a JSON object.
    pub fn to_map(&self) -> Map<String, Value> {
        self.0.iter().cloned().collect()
    }
}

impl From<Map<String, Value>> for Properties {
    fn from(map: Map<String, Value>) -> Self {
        Self(map.into_iter().collect())
    }
}

impl From<Vec<(String, Value)>> for Properties {
    /// Takes the list as it is when its keys are distinct (the store hands
    /// them so); otherwise like collecting it: a repeated key keeps its first
    /// place and its last value.
    fn from(items: Vec<(String, Value)>) -> Self {
        let distinct = items.iter().enumerate().all(|(i, (key, _))| items[..i].iter().all(|(k, _)| k != key));
        if distinct { Self(items) } else { items.into_iter().collect() }
    }
}

impl FromIterator<(String, Value)> for Properties {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(items: I) -> Self {
        let mut properties = Properties::new();
        for (key, value) in items {
            properties.insert(key, value);
        }
        properties
    }
}

/// Objects whose fields a path can start from.
pub(crate) trait Fields {
    fn field(&self, key: &str) -> Option<&Value>;
}

impl Fields for Map<String, Value> {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

impl Fields for Properties {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

/// Everything a segment can look at for one LINE user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserFacts {
    pub line_user_id: LineUserId,
    pub linked: bool,
    pub following: bool,
    /// The linked member's attributes; `None` when not linked to a member.
    pub attributes: Option<Map<String, Value>>,
    /// In any order; events after `now` are ignored.
    pub events: Vec<EventFact>,
    /// Per tally key (see [`crate::tally`]), the store's running totals,
    /// which answer the conditions of that key instead of `events` (which
    /// then need not hold the type's whole history). A condition whose key
    /// is not listed is answered from `events`.
    pub totals: BTreeMap<String, EventTotals>,
}

/// A user's events counted by one tally (see [`crate::tally`]): what a
/// condition with no window needs, whatever the history's size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventTotals {
    /// How many events the totals hold.
    pub count: u64,
    /// How many of them carry the aggregated property as a number.
    pub numbers: u64,
    /// Those numbers' sum, least and greatest.
    pub sum: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// The latest `occurred_at` among them: the totals can answer only at
    /// an instant at or after it (see [`UserFacts::totals_usable_at`]).
    pub last: Option<DateTime<Utc>>,
    /// The counted events not in the totals (stored ahead of their time,
    /// they count from then on): when they occur, and their number.
    pub pending: Vec<(DateTime<Utc>, Option<f64>)>,
}

impl EventTotals {
    /// Adds an event's occurrence (and its number) to the totals.
    pub fn add(&mut self, occurred_at: DateTime<Utc>, number: Option<f64>) {
        self.count += 1;
        self.last = self.last.max(Some(occurred_at));
        if let Some(number) = number {
            self.numbers += 1;
            self.sum += number;
            self.min = Some(self.min.map_or(number, |m| m.min(number)));
            self.max = Some(self.max.map_or(number, |m| m.max(number)));
        }
    }

    /// Adds other totals of the same user and tally (from another source of
    /// its events: its LINE user id, its member id; or another slot).
    pub fn merge(&mut self, other: EventTotals) {
        self.count += other.count;
        self.numbers += other.numbers;
        self.sum += other.sum;
        self.min = [self.min, other.min].into_iter().flatten().reduce(f64::min);
        self.max = [self.max, other.max].into_iter().flatten().reduce(f64::max);
        self.last = self.last.max(other.last);
        self.pending.extend(other.pending);
    }

    /// The totals of the events at or before `now`: these and the pending
    /// ones that have occurred.
    fn at(&self, now: DateTime<Utc>) -> EventTotals {
        let mut totals = EventTotals { pending: Vec::new(), ..self.clone() };
        for (occurred_at, number) in self.pending.iter().filter(|(t, _)| *t <= now) {
            totals.add(*occurred_at, *number);
        }
        totals
    }

    /// The aggregate's comparisons on these totals at `at.now`, as
    /// [`aggregate_holds`] on the events they count.
    fn hold(&self, aggregate: &Aggregate, at: At) -> bool {
        let totals = self.at(at.now);
        let number = |x: Option<f64>| x.and_then(Number::from_f64).map(Value::Number);
        let result = match &aggregate.kind {
            AggregateKind::Count => return count_holds(aggregate, totals.count, at),
            AggregateKind::Sum(_) => number(Some(totals.sum)),
            AggregateKind::Avg(_) => number((totals.numbers > 0).then(|| totals.sum / totals.numbers as f64)),
            AggregateKind::Min(_) => number(totals.min),
            AggregateKind::Max(_) => number(totals.max),
        };
        result.is_some_and(|value| aggregate.comparators.iter().all(|c| compare(Some(&value), c, at)))
    }
}

impl UserFacts {
    /// Whether every total counts all its events at `now` (none of them is
    /// after `now`). When not, the facts must be loaded without totals to
    /// be evaluated at `now` (e.g. a preview of an earlier instant).
    pub fn totals_usable_at(&self, now: DateTime<Utc>) -> bool {
        self.totals.values().all(|totals| totals.last.is_none_or(|last| last <= now))
    }
}

/// The user's events grouped by their type among the set's referenced event
/// types. Built once per call, so that each event condition visits only the
/// events of its type instead of comparing every event's type string.
pub(crate) struct TypedEvents<'a> {
    known_types: &'a [String],
    events: &'a [EventFact],
    /// Indices into `events`: those of `known_types[0]`, then of
    /// `known_types[1]`, …, then of other types; each group in event order.
    grouped: Vec<usize>,
    /// Group `k` is `grouped[starts[k]..starts[k + 1]]`.
    starts: Vec<usize>,
}

impl<'a> TypedEvents<'a> {
    pub(crate) fn new(known_types: &'a [String], events: &'a [EventFact]) -> Self {
        let other = known_types.len();
        let group_of =
            |event: &EventFact| known_types.iter().position(|t| same_text(t, &event.event_type)).unwrap_or(other);
        let groups: Vec<usize> = events.iter().map(group_of).collect();
        // Counting sort: group ends, then each event placed backwards from its group's end.
        let mut starts = vec![0; other + 2];
        for &group in &groups {
            starts[group] += 1;
        }
        let mut end = 0;
        for slot in &mut starts {
            end += *slot;
            *slot = end;
        }
        let mut grouped = vec![0; events.len()];
        for (index, &group) in groups.iter().enumerate().rev() {
            starts[group] -= 1;
            grouped[starts[group]] = index;
        }
        Self { known_types, events, grouped, starts }
    }

    /// The events of type `event_type`, in their order.
    pub(crate) fn of_type<'s>(&'s self, event_type: &'s str) -> impl Iterator<Item = &'a EventFact> + 's {
        let known = self.known_types.iter().position(|t| same_text(t, event_type));
        let group = known.map(|k| &self.grouped[self.starts[k]..self.starts[k + 1]]).unwrap_or_default();
        // A type the set does not reference (never so for its own conditions): compare strings.
        let unknown = known.is_none().then(|| self.events.iter().filter(move |e| e.event_type == event_type));
        let events = self.events;
        group.iter().map(move |&index| &events[index]).chain(unknown.into_iter().flatten())
    }
}

/// `a == b`, inlined for the lengths event types usually have (8 to 16
/// bytes: two overlapping 8-byte words) instead of a call to `memcmp`.
fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let words = |s: &[u8]| Some((u64::from_ne_bytes(*s.first_chunk()?), u64::from_ne_bytes(*s.last_chunk()?)));
    match (a.len(), words(a), words(b)) {
        (8..=16, Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// Time context of one evaluation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    pub now: DateTime<Utc>,
    pub tz: Tz,
}

impl SegmentSet {
    /// Every segment's answer for this user at `now`, evaluated in dependency
    /// order so that `segment: id` sees the same user at the same instant.
    pub fn evaluate(&self, facts: &UserFacts, now: DateTime<Utc>, tz: Tz) -> BTreeMap<String, bool> {
        let answers = self.evaluate_in_order(facts, now, tz);
        self.segments.iter().zip(answers).map(|(segment, answer)| (segment.id.clone(), answer)).collect()
    }

    /// Like [`SegmentSet::evaluate`], as one answer per segment in
    /// [`SegmentSet::in_dependency_order`] order.
    pub fn evaluate_in_order(&self, facts: &UserFacts, now: DateTime<Utc>, tz: Tz) -> Vec<bool> {
        let at = At { now, tz };
        let events = TypedEvents::new(&self.event_types, &facts.events);
        let mut results = Results::new(self, self.segments.len());
        for segment in &self.segments {
            let answer = eval_condition(&segment.rule, facts, &events, at, &results);
            results.answers.push(answer);
        }
        results.answers
    }

    /// One segment's answer (with the segments it uses); `None` for an unknown id.
    pub fn evaluate_segment(&self, id: &str, facts: &UserFacts, now: DateTime<Utc>, tz: Tz) -> Option<bool> {
        let target = *self.index.get(id)?;
        let at = At { now, tz };
        let needed = self.dependencies(id);
        let events = TypedEvents::new(&self.event_types, &facts.events);
        // Segments not needed are never referenced by those that are: they stay false.
        let mut results = Results::new(self, target + 1);
        for segment in &self.segments[..=target] {
            let answer = (segment.id == id || needed.contains(&segment.id))
                && eval_condition(&segment.rule, facts, &events, at, &results);
            results.answers.push(answer);
        }
        results.answers.get(target).copied()
    }
}

/// Answers of the segments evaluated so far, in dependency order.
struct Results<'s> {
    set: &'s SegmentSet,
    answers: Vec<bool>,
    /// The local date of `now`, worked out once per call on first use.
    today: OnceCell<NaiveDate>,
}

impl<'s> Results<'s> {
    fn new(set: &'s SegmentSet, capacity: usize) -> Self {
        Self { set, answers: Vec::with_capacity(capacity), today: OnceCell::new() }
    }

    fn get(&self, id: &str) -> Option<bool> {
        self.set.index.get(id).and_then(|&i| self.answers.get(i)).copied()
    }
}

fn eval_condition(
    condition: &Condition,
    facts: &UserFacts,
    events: &TypedEvents<'_>,
    at: At,
    results: &Results<'_>,
) -> bool {
    match condition {
        Condition::All(items) => items.iter().all(|c| eval_condition(c, facts, events, at, results)),
        Condition::Any(items) => items.iter().any(|c| eval_condition(c, facts, events, at, results)),
        Condition::Not(inner) => !eval_condition(inner, facts, events, at, results),
        Condition::Attribute { path, comparator } => {
            let value = facts.attributes.as_ref().and_then(|a| lookup(a, path));
            compare(value, comparator, at)
        }
        Condition::Anniversary { path, when } => {
            let birth = facts
                .attributes
                .as_ref()
                .and_then(|a| lookup(a, path))
                .and_then(Value::as_str)
                .and_then(parse_date_only);
            let today = || *results.today.get_or_init(|| local_date(at.now, at.tz));
            birth.is_some_and(|birth| anniversary_matches(birth, today(), *when))
        }
        Condition::Linked(expected) => facts.linked == *expected,
        Condition::Following(expected) => facts.following == *expected,
        // Dependency order guarantees the referenced answer is already there.
        Condition::Segment { id, .. } => results.get(id).unwrap_or(false),
        Condition::Event(event) => match totals_for(event, facts) {
            Some(totals) => totals.hold(&event.aggregate, at),
            None => eval_event(event, events, at),
        },
    }
}

/// The totals that answer `condition`, if it has a tally and it was loaded.
pub(crate) fn totals_for<'f>(condition: &EventCondition, facts: &'f UserFacts) -> Option<&'f EventTotals> {
    condition.tally.as_deref().and_then(|key| facts.totals.get(key))
}

/// The value at a dotted path; JSON `null` counts as missing.
pub(crate) fn lookup<'a>(root: &'a impl Fields, path: &FieldPath) -> Option<&'a Value> {
    let (first, rest) = path.parts.split_first()?;
    let mut value = root.field(first)?;
    for part in rest {
        value = value.as_object()?.get(part)?;
    }
    (!value.is_null()).then_some(value)
}

/// The time a value denotes: an RFC 3339 or `YYYY-MM-DD` string.
pub(crate) fn time_of(value: Option<&Value>, tz: Tz) -> Option<DateTime<Utc>> {
    value.and_then(Value::as_str).and_then(|text| parse_time(text, tz))
}

pub(crate) fn compare(value: Option<&Value>, comparator: &Comparator, at: At) -> bool {
    let Some(value) = value else {
        return matches!(comparator, Comparator::Exists(false));
    };
    match comparator {
        Comparator::Exists(expected) => *expected,
        Comparator::Eq(operand) => values_equal(value, operand),
        Comparator::Ne(operand) => same_kind(value, operand) && !values_equal(value, operand),
        Comparator::In(operands) => operands.iter().any(|o| values_equal(value, o)),
        Comparator::NotIn(operands) => operands.iter().all(|o| same_kind(value, o) && !values_equal(value, o)),
        Comparator::Gt(operand) => order(value, operand) == Some(Ordering::Greater),
        Comparator::Gte(operand) => matches!(order(value, operand), Some(Ordering::Greater | Ordering::Equal)),
        Comparator::Lt(operand) => order(value, operand) == Some(Ordering::Less),
        Comparator::Lte(operand) => matches!(order(value, operand), Some(Ordering::Less | Ordering::Equal)),
        Comparator::Contains(operand) => match value {
            Value::String(text) => operand.as_str().is_some_and(|needle| text.contains(needle)),
            Value::Array(items) => items.iter().any(|item| values_equal(item, operand)),
            _ => false,
        },
        Comparator::Within(span) => time_of(Some(value), at.tz)
            .is_some_and(|t| t <= at.now && at.now.checked_sub_signed(span.to_chrono()).is_none_or(|start| t > start)),
        Comparator::OlderThan(span) => time_of(Some(value), at.tz)
            .is_some_and(|t| at.now.checked_sub_signed(span.to_chrono()).is_some_and(|limit| t <= limit)),
    }
}

/// Same JSON type; numbers are one type whatever their representation.
fn same_kind(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| values_equal(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len() && xs.iter().all(|(k, x)| ys.get(k).is_some_and(|y| values_equal(x, y)))
        }
        _ => a == b,
    }
}

/// Numbers with numbers, strings with strings; anything else is unordered.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// Exact for integers (any mix of i64 and u64), else as f64.
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    let integer = |n: &Number| n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
    match (integer(a), integer(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

pub(crate) fn filters_match(filters: &[PropertyFilter], properties: &impl Fields, at: At) -> bool {
    filters.iter().all(|filter| {
        let value = lookup(properties, &filter.path);
        filter.comparators.iter().all(|c| compare(value, c, at))
    })
}

/// Whether event properties pass `where` filters at `now` (in `tz`), as
/// they do in an event condition (for other files that filter events alike).
pub fn properties_match(
    filters: &[PropertyFilter],
    properties: &Map<String, Value>,
    now: DateTime<Utc>,
    tz: Tz,
) -> bool {
    filters_match(filters, properties, At { now, tz })
}

/// The event window `(now - within, now - older_than]` of one condition at
/// one instant, computed once per evaluation rather than once per event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Window {
    /// Exclusive; `None` without `within` or when `now - within` overflows
    /// (then nothing is too old).
    lower: Option<DateTime<Utc>>,
    /// Inclusive; `None` when `now - older_than` overflows (then nothing is in
    /// the window).
    upper: Option<DateTime<Utc>>,
}

impl Window {
    pub(crate) fn new(condition: &EventCondition, now: DateTime<Utc>) -> Self {
        let older_than = condition.older_than.map(|d| d.to_chrono()).unwrap_or_default();
        Self {
            lower: condition.within.and_then(|within| now.checked_sub_signed(within.to_chrono())),
            upper: now.checked_sub_signed(older_than),
        }
    }

    pub(crate) fn contains(&self, occurred_at: DateTime<Utc>) -> bool {
        self.upper.is_some_and(|upper| occurred_at <= upper) && self.lower.is_none_or(|lower| occurred_at > lower)
    }
}

fn eval_event(condition: &EventCondition, events: &TypedEvents<'_>, at: At) -> bool {
    let window = Window::new(condition, at.now);
    let selected = events
        .of_type(condition.event_type.as_str())
        .filter(|event| window.contains(event.occurred_at) && filters_match(&condition.filters, &event.properties, at));
    match &condition.follow {
        None => aggregate_holds(&condition.aggregate, selected, at),
        Some(follow) => aggregate_holds(
            &condition.aggregate,
            selected.filter(|first| is_followed(first, follow, events, at) != follow.negated),
            at,
        ),
    }
}

/// Whether a matching follow-up occurred strictly after `first`, at or
/// before `now`, and (when `within` is given) at most `within` after `first`.
fn is_followed(first: &EventFact, follow: &FollowUp, events: &TypedEvents<'_>, at: At) -> bool {
    let deadline = follow.within.and_then(|w| first.occurred_at.checked_add_signed(w.to_chrono()));
    events.of_type(follow.event_type.as_str()).any(|next| {
        next.occurred_at > first.occurred_at
            && next.occurred_at <= at.now
            && (follow.within.is_none() || deadline.is_none_or(|d| next.occurred_at <= d))
            && follow.match_properties.iter().all(|path| {
                match (lookup(&first.properties, path), lookup(&next.properties, path)) {
                    (Some(a), Some(b)) => values_equal(a, b),
                    _ => false,
                }
            })
            && filters_match(&follow.filters, &next.properties, at)
    })
}

/// The numbers at `path` among `events`, in order.
fn numbers<'a>(events: impl Iterator<Item = &'a EventFact>, path: &FieldPath) -> impl Iterator<Item = &'a Number> {
    events.filter_map(move |e| lookup(&e.properties, path)).filter_map(Value::as_number)
}

/// A `count` aggregate's comparisons on `count` events.
fn count_holds(aggregate: &Aggregate, count: u64, at: At) -> bool {
    let value = Value::from(count);
    aggregate.comparators.iter().all(|c| compare(Some(&value), c, at))
}

/// Streams over the kept events (no list of them is built).
fn aggregate_holds<'a>(aggregate: &Aggregate, events: impl Iterator<Item = &'a EventFact>, at: At) -> bool {
    let result: Option<Value> = match &aggregate.kind {
        AggregateKind::Count => return count_holds(aggregate, events.count() as u64, at),
        AggregateKind::Sum(path) => {
            let sum: f64 = numbers(events, path).filter_map(|n| n.as_f64()).sum();
            Number::from_f64(sum).map(Value::Number)
        }
        AggregateKind::Avg(path) => {
            let mut count = 0usize;
            let sum: f64 = numbers(events, path).inspect(|_| count += 1).filter_map(|n| n.as_f64()).sum();
            (count > 0).then(|| Number::from_f64(sum / count as f64)).flatten().map(Value::Number)
        }
        AggregateKind::Min(path) => numbers(events, path)
            .min_by(|a, b| compare_numbers(a, b).unwrap_or(Ordering::Equal))
            .map(|n| Value::Number(n.clone())),
        AggregateKind::Max(path) => numbers(events, path)
            .max_by(|a, b| compare_numbers(a, b).unwrap_or(Ordering::Equal))
            .map(|n| Value::Number(n.clone())),
    };
    // Over no events avg/min/max have no value, and every comparison is false.
    result.is_some_and(|value| aggregate.comparators.iter().all(|c| compare(Some(&value), c, at)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ast::Aggregate;
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;
    use renkei_core::{EventType, SpanDuration};

    /// The per-event window test `Window` replaced, kept as the reference.
    fn in_window_reference(occurred_at: DateTime<Utc>, condition: &EventCondition, now: DateTime<Utc>) -> bool {
        let older_than = condition.older_than.map(|d| d.to_chrono()).unwrap_or_default();
        let Some(upper) = now.checked_sub_signed(older_than) else { return false };
        let after_lower = match condition.within {
            Some(within) => now.checked_sub_signed(within.to_chrono()).is_none_or(|lower| occurred_at > lower),
            None => true,
        };
        occurred_at <= upper && after_lower
    }

    fn condition(within: Option<i64>, older_than: Option<i64>) -> EventCondition {
        EventCondition {
            event_type: EventType::parse("purchase").expect("valid event type"),
            filters: vec![],
            within: within.map(SpanDuration::from_seconds),
            older_than: older_than.map(SpanDuration::from_seconds),
            follow: None,
            aggregate: Aggregate::at_least_one(),
            tally: None,
        }
    }

    fn instant(nanos: i64) -> DateTime<Utc> {
        Utc.timestamp_nanos(nanos)
    }

    // Near the edges of chrono's range the subtractions overflow.
    fn extreme_instant() -> impl Strategy<Value = DateTime<Utc>> {
        prop_oneof![
            Just(DateTime::<Utc>::MIN_UTC),
            Just(DateTime::<Utc>::MAX_UTC),
            (0i64..1_000_000_000_000).prop_map(|n| DateTime::<Utc>::MIN_UTC + Duration::nanoseconds(n)),
            (0i64..1_000_000_000_000).prop_map(|n| DateTime::<Utc>::MAX_UTC - Duration::nanoseconds(n)),
        ]
    }

    fn span() -> impl Strategy<Value = Option<i64>> {
        prop::option::of(prop_oneof![0i64..10, 0i64..200_000, Just(3600), Just(86_400), Just(7_776_000)])
    }

    // Short, long, and 8 to 16 bytes (the inlined comparison), some sharing first or last bytes.
    const TYPES: [&str; 9] =
        ["a", "visit", "purchase", "cart_add", "store_visit", "store_visix", "xtore_visit", "campaign_entry_2026", ""];

    proptest! {
        #[test]
        fn same_text_is_string_equality(a in prop::sample::select(&TYPES[..]), b in prop::sample::select(&TYPES[..])) {
            prop_assert_eq!(same_text(a, b), a == b);
        }

        #[test]
        fn typed_events_of_type_are_the_events_of_that_type_in_order(
            known in prop::sample::subsequence(&TYPES[..], 0..TYPES.len()),
            types in prop::collection::vec(prop::sample::select(&TYPES[..]), 0..30),
            wanted in prop::sample::select(&TYPES[..]),
        ) {
            let known: Vec<String> = known.into_iter().map(str::to_string).collect();
            let events: Vec<EventFact> = types
                .iter()
                .enumerate()
                .map(|(i, t)| EventFact {
                    event_type: t.to_string(),
                    occurred_at: instant(i as i64),
                    properties: Properties::new(),
                })
                .collect();
            let typed = TypedEvents::new(&known, &events);
            let expected: Vec<&EventFact> = events.iter().filter(|e| e.event_type == wanted).collect();
            prop_assert_eq!(typed.of_type(wanted).collect::<Vec<_>>(), expected);
        }

        #[test]
        fn properties_from_a_list_are_the_collected_list(
            items in prop::collection::vec((prop::sample::select(&TYPES[..]), 0u8..4), 0..6),
        ) {
            let items: Vec<(String, Value)> = items.into_iter().map(|(k, v)| (k.to_string(), Value::from(v))).collect();
            let collected: Properties = items.clone().into_iter().collect();
            prop_assert_eq!(Properties::from(items), collected);
        }

        #[test]
        fn window_agrees_with_the_per_event_test(
            now in 0i64..1_000_000_000_000_000,
            offsets in prop::collection::vec(-10_000_000_000_000_000i64..1_000_000_000, 1..20),
            within in span(),
            older_than in span(),
        ) {
            let (condition, now) = (condition(within, older_than), instant(now));
            let window = Window::new(&condition, now);
            for t in offsets.iter().map(|o| now + Duration::nanoseconds(*o)) {
                prop_assert_eq!(window.contains(t), in_window_reference(t, &condition, now), "t {}", t);
            }
            // Exactly on and next to each bound.
            for bound in [within, older_than].into_iter().flatten() {
                let edge = now - Duration::seconds(bound);
                for t in [edge - Duration::nanoseconds(1), edge, edge + Duration::nanoseconds(1)] {
                    prop_assert_eq!(window.contains(t), in_window_reference(t, &condition, now), "t {}", t);
                }
            }
        }

        #[test]
        fn window_agrees_when_the_bounds_overflow(
            now in extreme_instant(),
            t in extreme_instant(),
            within in span(),
            older_than in span(),
        ) {
            let condition = condition(within, older_than);
            prop_assert_eq!(Window::new(&condition, now).contains(t), in_window_reference(t, &condition, now));
        }
    }
}
