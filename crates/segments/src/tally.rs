//! Conditions answered from running tallies instead of the events.
//!
//! An event condition with no window (`within`, `older_than`), no follow-up
//! and no time-dependent `where` comparator (`within`, `older_than` on a
//! property) selects the same events at every instant: all of the user's
//! events of its type that pass its filters. Its aggregate then needs only
//! a few running numbers of those events ([`EventTotals`]: how many, how many
//! carry the aggregated property as a number, their sum, min and max, and
//! the latest time), which the store keeps as events are inserted, so that
//! re-evaluating a user costs the same whatever the length of its history.
//!
//! Each such condition has a key naming its tally: the event type alone for
//! a plain count (no filter: the store's per-type totals), else the type and
//! a hash of its filters and aggregated property, so that conditions that
//! select and sum alike share one tally. Sums are `f64` in the order events
//! arrive, as the raw evaluation sums in time order: equal for the integers
//! and binary fractions amounts are, possibly not in the last bit otherwise.

use crate::ast::{AggregateKind, Comparator, EventCondition, FieldPath, PropertyFilter};
use crate::eval::{At, EventTotals, Fields, filters_match, lookup};
use crate::set::SegmentSet;
use chrono::{DateTime, Utc};
use renkei_core::EventTallier;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The key of the tally that answers `condition`, if one can.
pub(crate) fn tally_key(condition: &EventCondition) -> Option<String> {
    let time_free = condition
        .filters
        .iter()
        .flat_map(|f| &f.comparators)
        .all(|c| !matches!(c, Comparator::Within(_) | Comparator::OlderThan(_)));
    if condition.within.is_some() || condition.older_than.is_some() || condition.follow.is_some() || !time_free {
        return None;
    }
    let property = aggregated_property(&condition.aggregate.kind);
    if condition.filters.is_empty() && property.is_none() {
        return Some(condition.event_type.as_str().to_string());
    }
    let shape = format!("{:?}|{:?}", condition.filters, property.map(|p| &p.text));
    Some(format!("{}:{:016x}", condition.event_type.as_str(), fnv1a(shape.as_bytes())))
}

fn aggregated_property(kind: &AggregateKind) -> Option<&FieldPath> {
    match kind {
        AggregateKind::Count => None,
        AggregateKind::Sum(path) | AggregateKind::Avg(path) | AggregateKind::Min(path) | AggregateKind::Max(path) => {
            Some(path)
        }
    }
}

/// 64-bit FNV-1a: stable across builds and platforms, unlike `std`'s hashers.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// What one tally counts: the events of a type that pass the filters, and
/// the aggregated property's numbers among them.
#[derive(Debug, Clone, PartialEq)]
pub struct TalliedCondition {
    pub key: String,
    pub event_type: String,
    filters: Vec<PropertyFilter>,
    property: Option<FieldPath>,
}

impl TalliedCondition {
    fn of(condition: &EventCondition) -> Option<Self> {
        Some(Self {
            key: condition.tally.clone()?,
            event_type: condition.event_type.as_str().to_string(),
            filters: condition.filters.clone(),
            property: aggregated_property(&condition.aggregate.kind).cloned(),
        })
    }

    /// A count of every event of the type: the store's per-type totals.
    pub fn is_plain(&self) -> bool {
        self.filters.is_empty() && self.property.is_none()
    }

    /// Whether an event of this type with `properties` counts, and the
    /// number it adds (`Some(None)`: counted, without a number).
    fn mark(&self, properties: &impl Fields) -> Option<Option<f64>> {
        // Time-free filters never read the instant.
        let at = At { now: DateTime::<Utc>::MIN_UTC, tz: chrono_tz::UTC };
        filters_match(&self.filters, properties, at).then(|| {
            self.property
                .as_ref()
                .and_then(|p| lookup(properties, p))
                .and_then(Value::as_number)
                .and_then(|n| n.as_f64())
        })
    }

    /// Adds an event of this type to `totals` (or to its pending events,
    /// when it was stored ahead of its time), if it counts.
    pub fn add_to(
        &self,
        totals: &mut EventTotals,
        occurred_at: DateTime<Utc>,
        properties: &crate::Properties,
        pending: bool,
    ) {
        if let Some(number) = self.mark(properties) {
            if pending { totals.pending.push((occurred_at, number)) } else { totals.add(occurred_at, number) }
        }
    }
}

impl SegmentSet {
    /// Every tally some condition reads, each key once, by key.
    pub fn tallied_conditions(&self) -> BTreeMap<String, TalliedCondition> {
        let mut out = BTreeMap::new();
        for segment in &self.segments {
            segment.rule.visit(&mut |condition| {
                if let crate::Condition::Event(event) = condition
                    && let Some(tallied) = TalliedCondition::of(event)
                {
                    out.entry(tallied.key.clone()).or_insert(tallied);
                }
            });
        }
        out
    }

    /// The tallies the store keeps as events are inserted: every tallied
    /// condition but the plain counts, which the store keeps per type by itself.
    pub fn tallier(&self) -> Tallier {
        let conditions: Vec<TalliedCondition> =
            self.tallied_conditions().into_values().filter(|c| !c.is_plain()).collect();
        let tallies = conditions.iter().map(|c| (c.key.clone(), c.event_type.clone())).collect();
        Tallier { conditions, tallies }
    }
}

/// [`EventTallier`] for a segment set's keyed tallies.
#[derive(Debug, Clone, Default)]
pub struct Tallier {
    conditions: Vec<TalliedCondition>,
    tallies: Vec<(String, String)>,
}

impl Tallier {
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }
}

impl EventTallier for Tallier {
    fn tallies(&self) -> &[(String, String)] {
        &self.tallies
    }

    fn marks(&self, event_type: &str, properties: &Map<String, Value>, out: &mut Vec<(usize, Option<f64>)>) {
        for (index, condition) in self.conditions.iter().enumerate() {
            if condition.event_type == event_type
                && let Some(number) = condition.mark(properties)
            {
                out.push((index, number));
            }
        }
    }
}
