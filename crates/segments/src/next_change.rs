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
use crate::eval::{At, Properties, TypedEvents, UserFacts, lookup, time_of, totals_for};
use crate::set::SegmentSet;
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use std::collections::BTreeSet;

impl SegmentSet {
    /// The earliest instant strictly after `now` at which some segment's
    /// answer for this user could change without new data; `None` if never.
    pub fn next_change(&self, facts: &UserFacts, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let mut earliest = Earliest::new(At { now, tz });
        let events = TypedEvents::new(&self.event_types, &facts.events);
        for segment in &self.segments {
            earliest.condition(&segment.rule, facts, &events);
        }
        earliest.best
    }

    /// Like [`SegmentSet::next_change`] for one segment and the segments it
    /// uses; `None` for an unknown id or if it never changes.
    pub fn next_change_for(&self, id: &str, facts: &UserFacts, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let mut ids: BTreeSet<String> = self.dependencies(id);
        ids.insert(id.to_string());
        let mut earliest = Earliest::new(At { now, tz });
        let events = TypedEvents::new(&self.event_types, &facts.events);
        for segment_id in &ids {
            if let Some(segment) = self.segment(segment_id) {
                earliest.condition(&segment.rule, facts, &events);
            }
        }
        earliest.best
    }
}

struct Earliest {
    at: At,
    best: Option<DateTime<Utc>>,
    /// `at.now` in nanoseconds since the epoch, when an i64 holds it (1677 to 2262).
    now_nanos: Option<i64>,
    /// `best` in nanoseconds, when there is one and an i64 holds it. As `best`
    /// is after `now`, `None` with a `best` means it lies after 2262.
    best_nanos: Option<i64>,
    /// The next local midnight was offered (once is enough for every anniversary).
    midnight_offered: bool,
}

impl Earliest {
    fn new(at: At) -> Self {
        Self { at, best: None, now_nanos: at.now.timestamp_nanos_opt(), best_nanos: None, midnight_offered: false }
    }

    fn offer(&mut self, candidate: Option<DateTime<Utc>>) {
        if let Some(candidate) = candidate.filter(|c| *c > self.at.now) {
            if self.best.is_none_or(|best| candidate < best) {
                self.best = Some(candidate);
                self.best_nanos = candidate.timestamp_nanos_opt();
            }
        }
    }

    /// Offers `base + span`. `base_nanos` is `base.timestamp_nanos_opt()`,
    /// computed once per event by the caller.
    fn offer_after(&mut self, base: DateTime<Utc>, base_nanos: Option<i64>, span: Duration) {
        // Most candidates are not after `now` or not before `best`: integer
        // arithmetic, exact where it applies, rules them out without chrono's
        // date arithmetic. The others take the chrono path below.
        if let (Some(now), Some(base), Some(span)) = (self.now_nanos, base_nanos, span.num_nanoseconds()) {
            if let Some(candidate) = base.checked_add(span) {
                if candidate <= now || self.best_nanos.is_some_and(|best| candidate >= best) {
                    return;
                }
            }
        }
        self.offer(base.checked_add_signed(span));
    }

    fn condition(&mut self, condition: &Condition, facts: &UserFacts, events: &TypedEvents<'_>) {
        match condition {
            Condition::All(items) | Condition::Any(items) => {
                items.iter().for_each(|c| self.condition(c, facts, events))
            }
            Condition::Not(inner) => self.condition(inner, facts, events),
            Condition::Attribute { path, comparator } => {
                let value = facts.attributes.as_ref().and_then(|a| lookup(a, path));
                self.comparator(value, comparator);
            }
            Condition::Anniversary { .. } if !self.midnight_offered => {
                self.midnight_offered = true;
                self.offer(next_local_midnight(self.at.now, self.at.tz));
            }
            Condition::Anniversary { .. } => {}
            // Other segments are visited by the caller; flags do not move with time.
            Condition::Linked(_) | Condition::Following(_) | Condition::Segment { .. } => {}
            Condition::Event(event) => match totals_for(event, facts) {
                // Counted events change nothing with time; pending ones count from their instant.
                Some(totals) => totals.pending.iter().for_each(|(t, _)| self.offer(Some(*t))),
                None => self.event(event, events),
            },
        }
    }

    fn comparator(&mut self, value: Option<&Value>, comparator: &Comparator) {
        let span = match comparator {
            Comparator::Within(span) | Comparator::OlderThan(span) => span.to_chrono(),
            _ => return,
        };
        if let Some(t) = time_of(value, self.at.tz) {
            self.offer(Some(t));
            self.offer_after(t, t.timestamp_nanos_opt(), span);
        }
    }

    fn filters(&mut self, filters: &[PropertyFilter], properties: &Properties) {
        // Only time comparators suggest instants: skip the lookup for the others.
        let is_timed = |c: &Comparator| matches!(c, Comparator::Within(_) | Comparator::OlderThan(_));
        for filter in filters.iter().filter(|f| f.comparators.iter().any(is_timed)) {
            let value = lookup(properties, &filter.path);
            for comparator in &filter.comparators {
                self.comparator(value, comparator);
            }
        }
    }

    fn event(&mut self, condition: &EventCondition, events: &TypedEvents<'_>) {
        let older_than = condition.older_than.map(|d| d.to_chrono()).unwrap_or_default();
        for event in events.of_type(condition.event_type.as_str()) {
            let nanos = event.occurred_at.timestamp_nanos_opt();
            // Enters the window (or starts to count, if in the future)…
            self.offer_after(event.occurred_at, nanos, older_than);
            // …and leaves it.
            if let Some(within) = condition.within {
                self.offer_after(event.occurred_at, nanos, within.to_chrono());
            }
            self.filters(&condition.filters, &event.properties);
            if let Some(within) = condition.follow.as_ref().and_then(|f| f.within) {
                self.offer_after(event.occurred_at, nanos, within.to_chrono());
            }
        }
        if let Some(follow) = &condition.follow {
            for next in events.of_type(follow.event_type.as_str()) {
                // A follow-up counts from the instant it occurred.
                self.offer(Some(next.occurred_at));
                self.filters(&follow.filters, &next.properties);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    /// `offer_after` before the integer shortcut, kept as the reference.
    fn offer_after_reference(
        now: DateTime<Utc>,
        best: &mut Option<DateTime<Utc>>,
        base: DateTime<Utc>,
        span: Duration,
    ) {
        if let Some(candidate) = base.checked_add_signed(span).filter(|c| *c > now) {
            if best.is_none_or(|b| candidate < b) {
                *best = Some(candidate);
            }
        }
    }

    fn nanos_instant() -> impl Strategy<Value = DateTime<Utc>> {
        let now = Utc.with_ymd_and_hms(2026, 3, 15, 3, 4, 5).single().expect("valid instant")
            + Duration::nanoseconds(123_456_789);
        prop_oneof![
            // A few nanoseconds either side of `now`, where sub-microsecond precision decides.
            4 => (-3i64..3).prop_map(move |n| now + Duration::nanoseconds(n)),
            2 => (-2_000i64..2_000).prop_map(move |n| now + Duration::nanoseconds(n)),
            4 => (-20_000_000_000_000_000i64..1_000_000_000_000).prop_map(move |n| now + Duration::nanoseconds(n)),
            // Either side of the i64-nanosecond range (1677 and 2262) and at chrono's limits.
            1 => (-5_000i64..5_000).prop_map(|n| Utc.timestamp_nanos(i64::MAX) + Duration::nanoseconds(n)),
            1 => (-5_000i64..5_000).prop_map(|n| Utc.timestamp_nanos(i64::MIN) + Duration::nanoseconds(n)),
            1 => Just(DateTime::<Utc>::MAX_UTC),
            1 => Just(DateTime::<Utc>::MIN_UTC),
        ]
    }

    fn span() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::zero()),
            (-3i64..3).prop_map(Duration::nanoseconds),
            (-2_000i64..2_000).prop_map(Duration::nanoseconds),
            (0i64..10_000_000).prop_map(Duration::seconds),
            Just(Duration::days(90)),
            Just(Duration::MAX),
            Just(Duration::MIN),
        ]
    }

    proptest! {
        #[test]
        fn offer_after_picks_the_reference_earliest(
            now in nanos_instant(),
            offers in prop::collection::vec((nanos_instant(), span(), any::<bool>()), 1..30),
        ) {
            let mut earliest = Earliest::new(At { now, tz: chrono_tz::UTC });
            let mut expected = None;
            for (base, span, plain) in offers {
                // Interleaved with plain offers, as the other candidates are.
                if plain {
                    earliest.offer(Some(base));
                    offer_after_reference(now, &mut expected, base, Duration::zero());
                } else {
                    earliest.offer_after(base, base.timestamp_nanos_opt(), span);
                    offer_after_reference(now, &mut expected, base, span);
                }
                prop_assert_eq!(earliest.best, expected);
            }
        }
    }
}
