//! Per-segment fingerprints and what a start recomputes after edits
//! (`SegmentSet::changes_since`, `SegmentSet::with_dependencies`).

use proptest::prelude::*;
use renkei_segments::SegmentSet;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn set(files: &[String]) -> SegmentSet {
    let sources = files.iter().enumerate().map(|(i, text)| (PathBuf::from(format!("s{i}.yaml")), text.clone()));
    SegmentSet::from_sources(sources).expect("valid segments")
}

fn plain(id: &str, event: &str) -> String {
    format!("id: {id}\nname: {id}\nrule:\n  event: {event}\n")
}

fn referencing(id: &str, base: &str, event: &str) -> String {
    format!("id: {id}\nname: {id}\nrule:\n  all:\n    - segment: {base}\n    - event: {event}\n")
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// a; b uses a; c uses b; d alone.
fn chain(a: &str, d: &str) -> SegmentSet {
    set(&[plain("a", a), referencing("b", "a", "visit"), referencing("c", "b", "click"), plain("d", d)])
}

#[test]
fn unchanged_segments_need_nothing() {
    let before = chain("purchase", "follow");
    let changes = chain("purchase", "follow").changes_since(&before.segment_fingerprints());
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn names_files_and_comments_do_not_change_a_fingerprint() {
    let before = set(&[plain("a", "purchase")]);
    let after = SegmentSet::from_sources([(
        PathBuf::from("other.yaml"),
        "# a comment\nid: a\nname: Another name\nrule:\n  event: purchase\n".to_string(),
    )])
    .expect("valid");
    assert_eq!(before.segment_fingerprints(), after.segment_fingerprints());
}

#[test]
fn a_changed_leaf_recomputes_only_itself() {
    let before = chain("purchase", "follow");
    let changes = chain("purchase", "unfollow").changes_since(&before.segment_fingerprints());
    assert_eq!(changes.recompute, ids(&["d"]));
    assert!(changes.removed.is_empty());
}

#[test]
fn a_changed_base_recomputes_its_dependents_transitively() {
    let before = chain("purchase", "follow");
    let changes = chain("refund", "follow").changes_since(&before.segment_fingerprints());
    assert_eq!(changes.recompute, ids(&["a", "b", "c"]));
}

#[test]
fn a_change_in_the_middle_leaves_its_base_alone() {
    let before = chain("purchase", "follow");
    let after = set(&[
        plain("a", "purchase"),
        referencing("b", "a", "open"),
        referencing("c", "b", "click"),
        plain("d", "follow"),
    ]);
    assert_eq!(after.changes_since(&before.segment_fingerprints()).recompute, ids(&["b", "c"]));
}

#[test]
fn removed_segments_are_named_and_new_ones_recomputed() {
    let before = chain("purchase", "follow");
    let after = set(&[plain("a", "purchase"), referencing("b", "a", "visit"), plain("e", "follow")]);
    let changes = after.changes_since(&before.segment_fingerprints());
    assert_eq!(changes.removed, ids(&["c", "d"]));
    assert_eq!(changes.recompute, ids(&["e"]));
}

#[test]
fn no_previous_fingerprints_recompute_everything() {
    let changes = chain("purchase", "follow").changes_since(&BTreeMap::new());
    assert_eq!(changes.recompute, ids(&["a", "b", "c", "d"]));
    assert!(changes.removed.is_empty());
}

#[test]
fn with_dependencies_keeps_what_the_segments_reference_in_order() {
    let full = chain("purchase", "follow");
    let sub = full.with_dependencies(["c", "nowhere"]);
    let order: Vec<&str> = sub.in_dependency_order().map(|s| s.id.as_str()).collect();
    assert_eq!(order, ["a", "b", "c"]);
    assert_eq!(sub.referenced_event_types(), ids(&["click", "purchase", "visit"]));
    assert!(full.with_dependencies(["d"]).segment("a").is_none());
    assert!(full.with_dependencies(std::iter::empty()).is_empty());
}

/// A set of `n` segments where segment `i` counts events of type `t{kind}`
/// and references some earlier segments (a DAG by construction).
fn generated(kinds: &[u8], references: &[Vec<usize>]) -> SegmentSet {
    let files: Vec<String> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            let mut items = vec![format!("    - event: t{kind}\n")];
            items.extend(references[i].iter().filter(|&&r| r < i).map(|r| format!("    - segment: s{r}\n")));
            format!("id: s{i}\nname: s{i}\nrule:\n  any:\n{}", items.concat())
        })
        .collect();
    set(&files)
}

proptest! {
    /// Exactly the edited segments and those that reach one through
    /// references are recomputed.
    #[test]
    fn recompute_is_the_edited_segments_and_their_dependents(
        kinds in prop::collection::vec(0u8..3, 1..8),
        references in prop::collection::vec(prop::collection::vec(0usize..8, 0..3), 8),
        edits in prop::collection::vec(any::<bool>(), 8),
    ) {
        let before = generated(&kinds, &references);
        let edited: Vec<u8> = kinds.iter().zip(&edits).map(|(k, e)| if *e { k + 10 } else { *k }).collect();
        let after = generated(&edited, &references);
        let changes = after.changes_since(&before.segment_fingerprints());
        let expected: BTreeSet<String> = (0..kinds.len())
            .filter(|&i| {
                let id = format!("s{i}");
                let mut reached = after.dependencies(&id);
                reached.insert(id);
                reached.iter().any(|d| edits[d[1..].parse::<usize>().expect("id")])
            })
            .map(|i| format!("s{i}"))
            .collect();
        prop_assert_eq!(&changes.recompute, &expected);
        prop_assert!(changes.removed.is_empty());
        let sub = after.with_dependencies(changes.recompute.iter().map(String::as_str));
        for id in &changes.recompute {
            prop_assert!(sub.segment(id).is_some());
            for dependency in after.dependencies(id) {
                prop_assert!(sub.segment(&dependency).is_some());
            }
        }
    }
}
