//! The mark a finished start-up recompute leaves (`segments_recomputed`):
//! the timezone and each segment's fingerprint it was done for, and what a
//! start recomputes against it.

use chrono_tz::Tz;
use renkei_segments::{SegmentChanges, SegmentSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a recompute was done for, as the mark's value holds it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecomputedFor {
    /// The timezone's name: every time-of-day and calendar answer depends on it.
    tz: String,
    /// Segment id → [`SegmentSet::segment_fingerprints`].
    segments: BTreeMap<String, String>,
}

impl RecomputedFor {
    pub(crate) fn of(segments: &SegmentSet, tz: Tz) -> Self {
        Self { tz: tz.name().to_string(), segments: segments.segment_fingerprints() }
    }

    /// The mark's value: the same for the same segments and timezone.
    pub(crate) fn value(&self) -> String {
        // Strings only: this cannot fail (and an empty mark would only mean "recompute all").
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What a start recomputes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The last recompute was for these very segments and timezone.
    Nothing,
    /// Every segment, for every user (and every total rebuilt), because of `reason`.
    All { reason: &'static str },
    /// Only these segments (and the removed ones' memberships end).
    Some(SegmentChanges),
}

/// What to recompute for `segments` in `tz`, given the last mark's value.
pub(crate) fn plan(previous: Option<&str>, segments: &SegmentSet, tz: Tz) -> Plan {
    let Some(previous) = previous else {
        return Plan::All { reason: "no recompute finished yet" };
    };
    let Ok(previous) = serde_json::from_str::<RecomputedFor>(previous) else {
        // E.g. the single fingerprint of the whole set that older versions wrote.
        return Plan::All { reason: "the last recompute's mark is of an older format or unreadable" };
    };
    if previous.tz != tz.name() {
        return Plan::All { reason: "the timezone changed" };
    }
    let changes = segments.changes_since(&previous.segments);
    if changes.is_empty() { Plan::Nothing } else { Plan::Some(changes) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{Asia::Tokyo, UTC};
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    fn set(files: &[&str]) -> SegmentSet {
        let sources = files.iter().enumerate().map(|(i, t)| (PathBuf::from(format!("s{i}.yaml")), t.to_string()));
        SegmentSet::from_sources(sources).expect("valid segments")
    }

    const A: &str = "id: a\nname: A\nrule:\n  event: purchase\n";
    const B: &str = "id: b\nname: B\nrule:\n  all:\n    - segment: a\n    - event: visit\n";
    const C: &str = "id: c\nname: C\nrule:\n  event: follow\n";

    fn ids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_same_segments_and_timezone_need_nothing() {
        let value = RecomputedFor::of(&set(&[A, B, C]), Tokyo).value();
        assert_eq!(plan(Some(&value), &set(&[C, B, A]), Tokyo), Plan::Nothing);
        assert_eq!(RecomputedFor::of(&set(&[C, B, A]), Tokyo).value(), value, "one value per set");
    }

    #[test]
    fn an_edited_segment_recomputes_it_and_its_dependents() {
        let value = RecomputedFor::of(&set(&[A, B, C]), Tokyo).value();
        let edited_a = "id: a\nname: A\nrule:\n  event: refund\n";
        match plan(Some(&value), &set(&[edited_a, B, C]), Tokyo) {
            Plan::Some(changes) => {
                assert_eq!(changes.recompute, ids(&["a", "b"]));
                assert!(changes.removed.is_empty());
            }
            other => panic!("{other:?}"),
        }
        match plan(Some(&value), &set(&[A, B]), Tokyo) {
            Plan::Some(changes) => {
                assert!(changes.recompute.is_empty());
                assert_eq!(changes.removed, ids(&["c"]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_timezone_no_mark_or_an_old_mark_recompute_everything() {
        let segments = set(&[A, B, C]);
        let value = RecomputedFor::of(&segments, Tokyo).value();
        assert_eq!(plan(Some(&value), &segments, UTC), Plan::All { reason: "the timezone changed" });
        assert_eq!(plan(None, &segments, Tokyo), Plan::All { reason: "no recompute finished yet" });
        let old = format!("{}@{}", segments.fingerprint(), Tokyo.name());
        assert!(matches!(plan(Some(&old), &segments, Tokyo), Plan::All { .. }));
        assert!(matches!(plan(Some("{\"tz\": \"Asia/Tokyo\"}"), &segments, Tokyo), Plan::All { .. }));
    }
}
