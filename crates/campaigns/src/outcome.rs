//! What a campaign achieved: conversions of its recipients against its goal,
//! for the treated and the holdout group, and the lift between them. Pure:
//! the caller reads the exposures and the goal events (already of the goal's
//! type and passing its `where`) from the store.
//!
//! - An exposure is one trigger instance of one user: the instant LINE
//!   accepted its first message, or for a holdout user the instant it would
//!   have been sent.
//! - It converts when a goal event of that user occurs in
//!   `(exposure, exposure + within]`, once per trigger instance; its value is
//!   the first converting event's (by `occurred_at`, then input order).
//! - The lift's 95 % interval is Newcombe's hybrid score interval for a
//!   difference of proportions (his method 10, built on Wilson intervals).

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// One trigger instance of one user, as exposed to the campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct Exposure {
    pub trigger_key: String,
    pub line_user_id: String,
    pub at: DateTime<Utc>,
    pub holdout: bool,
}

/// An event of the goal's type, passing its filters, of one user.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalEvent {
    pub line_user_id: String,
    pub occurred_at: DateTime<Utc>,
    /// The goal's `value` property, when the event has it as a number.
    pub value: Option<f64>,
}

/// One group's trigger instances, how many converted and their value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GroupOutcome {
    pub users: u64,
    pub converted: u64,
    pub conversion_value: f64,
}

impl GroupOutcome {
    pub fn rate(&self) -> Option<f64> {
        (self.users > 0).then(|| self.converted as f64 / self.users as f64)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Outcome {
    pub treated: GroupOutcome,
    pub holdout: GroupOutcome,
}

/// Conversions of `exposures` by `events` within `within` of each exposure.
/// A trigger instance exposed twice counts once, from its first exposure.
pub fn attribute(exposures: &[Exposure], events: &[GoalEvent], within: Duration) -> Outcome {
    let mut first: BTreeMap<(&str, &str), &Exposure> = BTreeMap::new();
    for exposure in exposures {
        let slot = first.entry((&exposure.trigger_key, &exposure.line_user_id)).or_insert(exposure);
        if exposure.at < slot.at {
            *slot = exposure;
        }
    }
    let mut by_user: HashMap<&str, Vec<&GoalEvent>> = HashMap::new();
    for event in events {
        by_user.entry(&event.line_user_id).or_default().push(event);
    }
    for list in by_user.values_mut() {
        list.sort_by_key(|e| e.occurred_at);
    }
    let mut outcome = Outcome::default();
    for exposure in first.values() {
        let group = if exposure.holdout { &mut outcome.holdout } else { &mut outcome.treated };
        group.users += 1;
        let Some(list) = by_user.get(exposure.line_user_id.as_str()) else { continue };
        let start = list.partition_point(|e| e.occurred_at <= exposure.at);
        let end = exposure.at.checked_add_signed(within);
        if let Some(event) = list.get(start).filter(|e| end.is_none_or(|end| e.occurred_at <= end)) {
            group.converted += 1;
            group.conversion_value += event.value.unwrap_or(0.0);
        }
    }
    outcome
}

/// The treated group's conversion rate against the holdout's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Lift {
    pub treated_rate: f64,
    pub holdout_rate: f64,
    /// `treated_rate - holdout_rate`.
    pub absolute: f64,
    /// 95 % interval of `absolute` (Newcombe's hybrid score interval).
    pub ci95: [f64; 2],
    /// `absolute / holdout_rate`; `None` when the holdout converted none.
    pub relative: Option<f64>,
}

/// The lift, when both groups have trigger instances.
pub fn lift(outcome: &Outcome) -> Option<Lift> {
    let (treated, holdout) = (&outcome.treated, &outcome.holdout);
    let (p1, p2) = (treated.rate()?, holdout.rate()?);
    let ((l1, u1), (l2, u2)) = (wilson(treated.converted, treated.users), wilson(holdout.converted, holdout.users));
    let absolute = p1 - p2;
    let ci95 = [
        absolute - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt(),
        absolute + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt(),
    ];
    let relative = (p2 > 0.0).then(|| absolute / p2);
    Some(Lift { treated_rate: p1, holdout_rate: p2, absolute, ci95, relative })
}

/// Wilson's 95 % score interval for `successes` of `trials` (trials > 0).
fn wilson(successes: u64, trials: u64) -> (f64, f64) {
    const Z: f64 = 1.959_963_984_540_054;
    let (n, p) = (trials as f64, successes as f64 / trials as f64);
    let denominator = 1.0 + Z * Z / n;
    let center = (p + Z * Z / (2.0 * n)) / denominator;
    let half = Z * (p * (1.0 - p) / n + Z * Z / (4.0 * n * n)).sqrt() / denominator;
    ((center - half).max(0.0), (center + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap() + Duration::minutes(minutes)
    }

    /// The rule read literally: per distinct trigger instance, its earliest
    /// exposure; the earliest event strictly after it and not after the end.
    fn reference(exposures: &[Exposure], events: &[GoalEvent], within: Duration) -> Outcome {
        let mut instances: Vec<(&str, &str)> = Vec::new();
        for e in exposures {
            if !instances.contains(&(e.trigger_key.as_str(), e.line_user_id.as_str())) {
                instances.push((&e.trigger_key, &e.line_user_id));
            }
        }
        let mut outcome = Outcome::default();
        for (trigger, user) in instances {
            let same = exposures.iter().filter(|e| e.trigger_key == trigger && e.line_user_id == user);
            let exposure = same.min_by_key(|e| e.at).expect("one at least");
            let group = if exposure.holdout { &mut outcome.holdout } else { &mut outcome.treated };
            group.users += 1;
            let mut best: Option<&GoalEvent> = None;
            for event in events {
                let inside = event.line_user_id == user
                    && event.occurred_at > exposure.at
                    && event.occurred_at <= exposure.at + within;
                if inside && best.is_none_or(|b| event.occurred_at < b.occurred_at) {
                    best = Some(event);
                }
            }
            if let Some(event) = best {
                group.converted += 1;
                group.conversion_value += event.value.unwrap_or(0.0);
            }
        }
        outcome
    }

    fn exposures() -> impl Strategy<Value = Vec<Exposure>> {
        let one = (0u8..3, 0u8..4, -10i64..100, any::<bool>()).prop_map(|(trigger, user, at, holdout)| Exposure {
            trigger_key: format!("t{trigger}"),
            // A user's group is fixed by the hash in practice; here by the user.
            line_user_id: format!("U{user}"),
            at: t(at),
            holdout: holdout && user % 2 == 0,
        });
        prop::collection::vec(one, 0..12)
    }

    fn events() -> impl Strategy<Value = Vec<GoalEvent>> {
        let one = (0u8..5, -20i64..200, prop::option::of(0u32..5_000)).prop_map(|(user, at, value)| GoalEvent {
            line_user_id: format!("U{user}"),
            occurred_at: t(at),
            value: value.map(f64::from),
        });
        prop::collection::vec(one, 0..16)
    }

    proptest! {
        #[test]
        fn attribution_equals_the_rule_read_literally(
            exposures in exposures(),
            events in events(),
            within in prop_oneof![Just(0i64), 1i64..60, Just(60), Just(100_000)],
        ) {
            let within = Duration::minutes(within);
            prop_assert_eq!(attribute(&exposures, &events, within), reference(&exposures, &events, within));
        }

        #[test]
        fn the_interval_holds_the_difference_and_stays_in_bounds(
            (n1, c1) in (1u64..5_000).prop_flat_map(|n| (Just(n), 0..=n)),
            (n2, c2) in (1u64..5_000).prop_flat_map(|n| (Just(n), 0..=n)),
        ) {
            let outcome = Outcome {
                treated: GroupOutcome { users: n1, converted: c1, conversion_value: 0.0 },
                holdout: GroupOutcome { users: n2, converted: c2, conversion_value: 0.0 },
            };
            let lift = lift(&outcome).expect("both groups");
            prop_assert!(lift.ci95[0] <= lift.absolute && lift.absolute <= lift.ci95[1]);
            prop_assert!(-1.0 <= lift.ci95[0] && lift.ci95[1] <= 1.0);
        }
    }

    #[test]
    fn the_window_is_open_at_exposure_and_closed_at_its_end() {
        let exposure = Exposure { trigger_key: "t".into(), line_user_id: "U1".into(), at: t(0), holdout: false };
        let at = |m: i64| GoalEvent { line_user_id: "U1".into(), occurred_at: t(m), value: Some(f64::from(m as i32)) };
        let converted =
            |events: &[GoalEvent]| attribute(std::slice::from_ref(&exposure), events, Duration::minutes(60));
        assert_eq!(converted(&[at(0)]).treated.converted, 0, "an event at the exposure instant is not after it");
        assert_eq!(converted(&[at(60)]).treated.conversion_value, 60.0, "the window's end is inside");
        assert_eq!(converted(&[at(61)]).treated.converted, 0);
        assert_eq!(converted(&[at(50), at(10)]).treated.conversion_value, 10.0, "the first converting event's value");
    }

    #[test]
    fn lift_matches_newcombes_worked_example() {
        // Newcombe (1998), table II, example (a): 56/70 against 48/80 → 0.2000, CI 0.0524 to 0.3339.
        let outcome = Outcome {
            treated: GroupOutcome { users: 70, converted: 56, conversion_value: 0.0 },
            holdout: GroupOutcome { users: 80, converted: 48, conversion_value: 0.0 },
        };
        let lift = lift(&outcome).expect("both groups");
        assert!((lift.absolute - 0.2).abs() < 1e-12);
        assert!((lift.ci95[0] - 0.0524).abs() < 5e-5, "{:?}", lift.ci95);
        assert!((lift.ci95[1] - 0.3339).abs() < 5e-5, "{:?}", lift.ci95);
        assert!((lift.relative.expect("holdout converted") - 0.2 / 0.6).abs() < 1e-12);
        assert!(super::lift(&Outcome { holdout: GroupOutcome::default(), ..outcome }).is_none());
    }
}
