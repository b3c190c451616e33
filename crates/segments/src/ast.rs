//! The validated form of a segment file. Values of these types only come
//! out of the parser, so the evaluator can trust them (e.g. an aggregate
//! that needs a property always has one).

use crate::yaml::Pos;
use renkei_core::{EventType, SpanDuration};
use serde_json::Value;
use std::path::PathBuf;

/// One segment, as loaded from one file.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub rule: Condition,
    /// The file it was loaded from.
    pub file: PathBuf,
}

/// A dotted attribute or property path (`address.prefecture`), split on `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    pub text: String,
    pub parts: Vec<String>,
}

impl FieldPath {
    pub fn new(text: &str) -> Self {
        Self { text: text.to_string(), parts: text.split('.').map(str::to_string).collect() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Attribute {
        path: FieldPath,
        comparator: Comparator,
    },
    Anniversary {
        path: FieldPath,
        when: AnniversaryWhen,
    },
    Linked(bool),
    Following(bool),
    /// Membership of another segment, for the same user at the same instant.
    Segment {
        id: String,
        pos: Pos,
    },
    Event(EventCondition),
}

/// A comparison of one JSON value. Values are never coerced: a comparison
/// between different JSON types is false (`ne` and `not_in` included).
#[derive(Debug, Clone, PartialEq)]
pub enum Comparator {
    Eq(Value),
    Ne(Value),
    In(Vec<Value>),
    NotIn(Vec<Value>),
    Gt(Value),
    Gte(Value),
    Lt(Value),
    Lte(Value),
    /// Substring of a string, or element of an array.
    Contains(Value),
    Exists(bool),
    /// The value is a time in `(now - d, now]`.
    Within(SpanDuration),
    /// The value is a time at or before `now - d`.
    OlderThan(SpanDuration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnniversaryWhen {
    Today,
    ThisMonth,
    /// Today up to and including today + N - 1 (N >= 1).
    WithinDays(u32),
}

/// A test on one event property (`where`).
#[derive(Debug, Clone, PartialEq)]
pub struct PropertyFilter {
    pub path: FieldPath,
    /// All must hold; a scalar in YAML is a single `Eq`.
    pub comparators: Vec<Comparator>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventCondition {
    pub event_type: EventType,
    pub filters: Vec<PropertyFilter>,
    pub within: Option<SpanDuration>,
    pub older_than: Option<SpanDuration>,
    pub follow: Option<FollowUp>,
    pub aggregate: Aggregate,
    /// The key of the running tally that answers this condition, when one
    /// can (see [`crate::tally`]); set by the parser.
    pub tally: Option<String>,
}

/// `followed_by` (`negated == false`) or `not_followed_by` (`negated == true`).
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    pub negated: bool,
    pub event_type: EventType,
    pub filters: Vec<PropertyFilter>,
    /// The follow-up must occur at most this long after the first event.
    pub within: Option<SpanDuration>,
    /// Properties whose values must be equal (and present) on both events.
    pub match_properties: Vec<FieldPath>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AggregateKind {
    Count,
    Sum(FieldPath),
    Avg(FieldPath),
    Min(FieldPath),
    Max(FieldPath),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    pub kind: AggregateKind,
    /// All must hold on the aggregate's number.
    pub comparators: Vec<Comparator>,
}

impl Aggregate {
    /// The default when an event condition names no aggregate: `count: {gte: 1}`.
    pub fn at_least_one() -> Self {
        Self { kind: AggregateKind::Count, comparators: vec![Comparator::Gte(Value::from(1u64))] }
    }
}

impl Condition {
    /// Segment ids this condition refers to directly, with where.
    pub fn segment_references(&self) -> Vec<(&str, Pos)> {
        let mut out = Vec::new();
        self.visit(&mut |condition| {
            if let Condition::Segment { id, pos } = condition {
                out.push((id.as_str(), *pos));
            }
        });
        out
    }

    /// Calls `f` on this condition and every condition nested in it.
    pub fn visit<'a>(&'a self, f: &mut impl FnMut(&'a Condition)) {
        f(self);
        match self {
            Condition::All(items) | Condition::Any(items) => items.iter().for_each(|c| c.visit(f)),
            Condition::Not(inner) => inner.visit(f),
            _ => {}
        }
    }
}
