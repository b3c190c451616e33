//! When could an answer change with no new data? Segment answers move with
//! time only at a few kinds of instants; this collects them all and returns
//! the earliest one after `now`.
//!
//! Boundary convention: an event window is half-open, `(now - within,
//! now - older_than]`. Seen from the event at `t`, it is selected for
//! `now` in `[t + older_than, t + within)`: it enters exactly at
//! `t + older_than` and leaves exactly at `t + within`. Both instants are
//! candidates. So are: the instant a future event or follow-up starts to
//! count (`now` reaches its `occurred_at`), a follow-up's `within` deadline,
//! an attribute or property time `t` and `t + d` for `within: d` /
//! `older_than: d`, and the next local midnight for `anniversary`.
//!
//! The result may be early (nothing changes there) but is never later than
//! a real change: the answer is constant on `(now, next_change)`.

use crate::ast::{Comparator, Condition, EventCondition, PropertyFilter};
use crate::calendar::next_local_midnight;
use crate::eval::{At, Properties, UserFacts, lookup, time_of};
use crate::set::SegmentSet;
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use std::collections::BTreeSet;

impl SegmentSet {
    /// The earliest instant strictly after `now` at which some segment's
    /// answer for this user could change without new data; `None` if never.
    pub fn next_change(&self, facts: &UserFacts, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let mut earliest = Earliest { at: At { now, tz }, best: None };
        for segment in &self.segments {
            earliest.condition(&segment.rule, facts);
        }
        earliest.best
    }

    /// Like [`SegmentSet::next_change`] for one segment and the segments it
    /// uses; `None` for an unknown id or if it never changes.
    pub fn next_change_for(&self, id: &str, facts: &UserFacts, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let mut ids: BTreeSet<String> = self.dependencies(id);
        ids.insert(id.to_string());
        let mut earliest = Earliest { at: At { now, tz }, best: None };
        for segment_id in &ids {
            if let Some(segment) = self.segment(segment_id) {
                earliest.condition(&segment.rule, facts);
            }
        }
        earliest.best
    }
}

struct Earliest {
    at: At,
    best: Option<DateTime<Utc>>,
}

impl Earliest {
    fn offer(&mut self, candidate: Option<DateTime<Utc>>) {
        if let Some(candidate) = candidate.filter(|c| *c > self.at.now) {
            if self.best.is_none_or(|best| candidate < best) {
                self.best = Some(candidate);
            }
        }
    }

    fn offer_after(&mut self, base: DateTime<Utc>, span: Duration) {
        self.offer(base.checked_add_signed(span));
    }

    fn condition(&mut self, condition: &Condition, facts: &UserFacts) {
        match condition {
            Condition::All(items) | Condition::Any(items) => items.iter().for_each(|c| self.condition(c, facts)),
            Condition::Not(inner) => self.condition(inner, facts),
            Condition::Attribute { path, comparator } => {
                let value = facts.attributes.as_ref().and_then(|a| lookup(a, path));
                self.comparator(value, comparator);
            }
            Condition::Anniversary { .. } => self.offer(next_local_midnight(self.at.now, self.at.tz)),
            // Other segments are visited by the caller; flags do not move with time.
            Condition::Linked(_) | Condition::Following(_) | Condition::Segment { .. } => {}
            Condition::Event(event) => self.event(event, facts),
        }
    }

    fn comparator(&mut self, value: Option<&Value>, comparator: &Comparator) {
        let span = match comparator {
            Comparator::Within(span) | Comparator::OlderThan(span) => span.to_chrono(),
            _ => return,
        };
        if let Some(t) = time_of(value, self.at.tz) {
            self.offer(Some(t));
            self.offer_after(t, span);
        }
    }

    fn filters(&mut self, filters: &[PropertyFilter], properties: &Properties) {
        for filter in filters {
            let value = lookup(properties, &filter.path);
            for comparator in &filter.comparators {
                self.comparator(value, comparator);
            }
        }
    }

    fn event(&mut self, condition: &EventCondition, facts: &UserFacts) {
        let older_than = condition.older_than.map(|d| d.to_chrono()).unwrap_or_default();
        for event in facts.events.iter().filter(|e| e.event_type == condition.event_type.as_str()) {
            // Enters the window (or starts to count, if in the future)…
            self.offer_after(event.occurred_at, older_than);
            // …and leaves it.
            if let Some(within) = condition.within {
                self.offer_after(event.occurred_at, within.to_chrono());
            }
            self.filters(&condition.filters, &event.properties);
            if let Some(within) = condition.follow.as_ref().and_then(|f| f.within) {
                self.offer_after(event.occurred_at, within.to_chrono());
            }
        }
        if let Some(follow) = &condition.follow {
            for next in facts.events.iter().filter(|e| e.event_type == follow.event_type.as_str()) {
                // A follow-up counts from the instant it occurred.
                self.offer(Some(next.occurred_at));
                self.filters(&follow.filters, &next.properties);
            }
        }
    }
}
