//! One test per kind of load error, each pinning `file:line:col: message`.
#![allow(clippy::unwrap_used)]

use renkei_segments::{Condition, Diagnostic, SegmentSet};
use std::path::PathBuf;

fn errors(text: &str) -> Vec<String> {
    SegmentSet::parse_str("s.yaml", text).expect_err("should be invalid").iter().map(Diagnostic::to_string).collect()
}

fn files(sources: &[(&str, &str)]) -> Result<SegmentSet, Vec<String>> {
    SegmentSet::from_sources(sources.iter().map(|(f, t)| (PathBuf::from(f), t.to_string())))
        .map_err(|d| d.iter().map(Diagnostic::to_string).collect())
}

fn single(text: &str) -> String {
    let all = errors(text);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.into_iter().next().unwrap()
}

#[test]
fn a_valid_segment_loads() {
    let set = SegmentSet::parse_str(
        "s.yaml",
        "id: cart_abandoners\nname: カゴ落ち\nrule:\n  all:\n    - linked: true\n    - event: cart_add\n      within: 24h\n      older_than: 1h\n      not_followed_by:\n        event: purchase\n        match: [cart_id]\n",
    )
    .expect("valid");
    let segment = set.segment("cart_abandoners").expect("present");
    assert_eq!(segment.name, "カゴ落ち");
    assert!(matches!(segment.rule, Condition::All(ref items) if items.len() == 2));
    assert_eq!(set.referenced_event_types().into_iter().collect::<Vec<_>>(), ["cart_add", "purchase"]);
}

#[test]
fn unknown_key_at_top_level_and_in_conditions() {
    assert_eq!(
        single("id: a\nname: A\ncolour: red\nrule:\n  linked: true\n"),
        "s.yaml:3:1: unknown key `colour` (a segment has id, name, description, rule)"
    );
    assert_eq!(
        single("id: a\nname: A\nrule:\n  event: purchase\n  wher: {x: 1}\n"),
        "s.yaml:5:3: unknown key `wher` in an event condition (expected one of: where, within, older_than, followed_by, not_followed_by, count, sum, avg, min, max)"
    );
    assert_eq!(
        single("id: a\nname: A\nrule:\n  attribute: rank\n  eq: gold\n  where: {}\n"),
        "s.yaml:6:3: unknown key `where` in an attribute condition (expected one of: eq, ne, in, not_in, gt, gte, lt, lte, contains, exists, within, older_than)"
    );
    assert_eq!(
        single("id: a\nname: A\nrule:\n  linked: true\n  within: 1d\n"),
        "s.yaml:5:3: unknown key `within`: `linked` takes no options"
    );
    assert_eq!(
        single("id: a\nname: A\nrule:\n  event: x\n  not_followed_by: {event: y, matches: [a]}\n"),
        "s.yaml:5:31: unknown key `matches` (expected one of: event, where, within, match)"
    );
}

#[test]
fn wrong_types_point_at_the_value() {
    assert_eq!(single("id: a\nname: A\nrule:\n  linked: yes\n"), "s.yaml:4:11: expected true or false, got a string");
    assert_eq!(single("id: a\nname: [A]\nrule:\n  linked: true\n"), "s.yaml:2:7: expected a string, got a list");
    assert_eq!(
        single("id: a\nname: A\nrule:\n  all:\n    linked: true\n"),
        "s.yaml:5:5: expected a list of conditions, got a map"
    );
    assert_eq!(
        single("id: a\nname: A\nrule:\n  event: purchase\n  count: {gte: three}\n"),
        "s.yaml:5:16: expected a number, got a string"
    );
    assert_eq!(
        single("id: a\nname: A\nrule:\n  event: purchase\n  where:\n    sku: [a, b]\n"),
        "s.yaml:6:10: expected a value or a map of comparators, got a list (use `in:` for a list of values, `exists: false` for absence)"
    );
}

#[test]
fn a_condition_needs_exactly_one_condition_key() {
    assert_eq!(
        single("id: a\nname: A\nrule:\n  all:\n    - {}\n"),
        "s.yaml:5:7: a condition needs exactly one of: all, any, not, attribute, anniversary, linked, following, segment, event"
    );
    assert_eq!(
        single("id: a\nname: A\nrule:\n  linked: true\n  following: true\n"),
        "s.yaml:5:3: a condition has exactly one condition key, found `linked` and `following` (combine them with `all` or `any`)"
    );
}

#[test]
fn two_aggregates_are_an_error() {
    assert_eq!(
        single("id: a\nname: A\nrule:\n  event: purchase\n  count: {gte: 2}\n  sum: {property: amount, gte: 100}\n"),
        "s.yaml:6:3: an event condition takes at most one aggregate; found `count` and `sum`"
    );
    assert_eq!(
        single("id: a\nname: A\nrule:\n  event: purchase\n  sum: {gte: 100}\n"),
        "s.yaml:5:3: `sum` needs `property: NAME` (the numeric event property)"
    );
}

#[test]
fn bad_durations_point_at_the_value() {
    assert_eq!(
        single("id: a\nname: A\nrule:\n  event: purchase\n  within: 90 days\n"),
        "s.yaml:5:11: invalid duration \"90 days\": expected an integer and a unit s, m, h, d or w (e.g. 90d, 1h, 30s)"
    );
    assert_eq!(
        single("id: a\nname: A\nrule:\n  attribute: registered_at\n  within: 30\n"),
        "s.yaml:5:11: invalid duration \"30\": expected an integer and a unit s, m, h, d or w (e.g. 90d, 1h, 30s)"
    );
    assert_eq!(
        single("id: a\nname: A\nrule:\n  event: cart_add\n  within: 1h\n  older_than: 1h\n"),
        "s.yaml:6:15: older_than (1h) must be shorter than within (1h), or no event can match"
    );
}

#[test]
fn unknown_segment_reference() {
    assert_eq!(
        single("id: a\nname: A\nrule:\n  any:\n    - segment: nowhere\n"),
        "s.yaml:5:16: unknown segment `nowhere`"
    );
}

#[test]
fn reference_cycles_through_any_number_of_segments() {
    assert_eq!(
        single("id: a\nname: A\nrule:\n  not:\n    segment: a\n"),
        "s.yaml:5:14: segment reference cycle: a -> a"
    );
    let result = files(&[
        ("a.yaml", "id: a\nname: A\nrule:\n  segment: b\n"),
        ("b.yaml", "id: b\nname: B\nrule:\n  all:\n    - segment: c\n"),
        ("c.yaml", "id: c\nname: C\nrule:\n  segment: a\n"),
        ("d.yaml", "id: d\nname: D\nrule:\n  segment: a\n"),
    ]);
    assert_eq!(
        result.expect_err("cycle"),
        [
            "a.yaml:4:12: segment reference cycle: a -> b -> c -> a",
            "b.yaml:5:16: segment reference cycle: b -> c -> a -> b",
            "c.yaml:4:12: segment reference cycle: c -> a -> b -> c",
        ]
    );
}

#[test]
fn duplicate_and_invalid_ids() {
    let result = files(&[
        ("a.yaml", "id: same\nname: A\nrule: {linked: true}\n"),
        ("b.yaml", "id: same\nname: B\nrule: {linked: false}\n"),
    ]);
    assert_eq!(result.expect_err("dup"), ["b.yaml:1:5: duplicate segment id `same` (already defined at a.yaml:1:5)"]);
    assert_eq!(
        single("id: Gold-Members\nname: A\nrule: {linked: true}\n"),
        "s.yaml:1:5: invalid segment id \"Gold-Members\": must match [a-z0-9_]{1,64}"
    );
    assert_eq!(
        single(&format!("id: {}\nname: A\nrule: {{linked: true}}\n", "a".repeat(65))),
        format!("s.yaml:1:5: invalid segment id \"{}…\": must match [a-z0-9_]{{1,64}}", "a".repeat(40))
    );
}

#[test]
fn missing_keys_and_duplicate_keys() {
    assert_eq!(single("id: a\nname: A\n"), "s.yaml:1:1: missing required key `rule`");
    assert_eq!(single("id: a\nname: A\nname: B\nrule: {linked: true}\n"), "s.yaml:3:1: duplicate key `name`");
    assert_eq!(single(""), "s.yaml:1:1: expected a segment (a map with id, name, rule), got null");
}

#[test]
fn yaml_syntax_errors_are_positioned() {
    let message = single("id: a\nname: A\nrule: {linked: true\n");
    assert!(message.starts_with("s.yaml:3:7: invalid YAML: "), "{message}");
}

#[test]
fn all_errors_of_all_files_are_collected_and_nothing_loads() {
    let result = files(&[
        ("a.yaml", "id: a\nname: A\nrule:\n  all:\n    - linked: 1\n    - following: 2\n"),
        (
            "b.yaml",
            "id: b\nname: B\nrule:\n  event: purchase\n  within: forever\n  count: {gte: 1}\n  max: {property: amount, gte: 1}\n",
        ),
        ("c.yaml", "id: c\nname: C\nrule:\n  segment: a\n"),
    ]);
    assert_eq!(
        result.expect_err("invalid"),
        [
            "a.yaml:5:15: expected true or false, got a number",
            "a.yaml:6:18: expected true or false, got a number",
            "b.yaml:5:11: invalid duration \"forever\": expected an integer and a unit s, m, h, d or w (e.g. 90d, 1h, 30s)",
            "b.yaml:7:3: an event condition takes at most one aggregate; found `count` and `max`",
        ]
    );
}

#[test]
fn anniversary_options() {
    assert_eq!(
        single("id: a\nname: A\nrule:\n  anniversary: birthday\n"),
        "s.yaml:4:3: an anniversary condition needs one of: today: true, this_month: true, within_days: N"
    );
    assert_eq!(
        single("id: a\nname: A\nrule:\n  anniversary: birthday\n  within_days: 0\n"),
        "s.yaml:5:16: within_days must be an integer from 1 to 366"
    );
    assert_eq!(
        single("id: a\nname: A\nrule:\n  anniversary: birthday\n  today: false\n"),
        "s.yaml:5:10: `today` must be true"
    );
}

#[test]
fn a_one_megabyte_file_is_handled_quickly() {
    let mut text = String::from("id: big\nname: Big\nrule:\n  any:\n");
    while text.len() < 1_000_000 {
        text.push_str("    - {attribute: rank, in: [gold, silver, bronze, platinum]}\n");
    }
    let started = std::time::Instant::now();
    let result = SegmentSet::parse_str("big.yaml", &text);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // Either it loads or it reports a budget error; it never panics.
    if let Err(diagnostics) = result {
        assert!(!diagnostics.is_empty());
    }
    let garbage: String =
        (0..1_000_000u32).map(|i| ['[', '{', ':', '-', ' ', '\n', 'a', '"'][(i * 7 % 8) as usize]).collect();
    let started = std::time::Instant::now();
    assert!(SegmentSet::parse_str("garbage.yaml", &garbage).is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

fn errors_of(file: &str, text: &str) -> Vec<String> {
    SegmentSet::parse_str(file, text).expect_err("invalid").iter().map(Diagnostic::to_string).collect()
}

#[test]
fn hostile_inputs_are_rejected_without_panicking() {
    let deep = format!("id: a\nname: A\nrule: {}{}\n", "{not: ".repeat(5000), "}".repeat(5000));
    assert_eq!(errors_of("deep.yaml", &deep), ["deep.yaml:3:289: invalid YAML: nested deeper than 48 levels"]);
    let deep_block: String = (0..3000).map(|i| format!("{}- all:\n", "  ".repeat(i))).collect();
    assert!(SegmentSet::parse_str("deep_block.yaml", &format!("id: a\nname: A\nrule:\n{deep_block}")).is_err());
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n";
    assert!(SegmentSet::parse_str("bomb.yaml", bomb).is_err());
    // A nested condition reached through an alias is still validated.
    let aliased = "id: a\nname: A\nrule:\n  all:\n    - &c {linked: true}\n    - *c\n";
    assert!(SegmentSet::parse_str("alias.yaml", aliased).is_ok());
}

mod fuzz {
    use proptest::prelude::*;
    use renkei_segments::SegmentSet;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn any_text_gives_a_set_or_positioned_diagnostics(text in "(id: a\nname: A\nrule:\n)?[-:{}\\[\\],&*!|>'\" \n\tabnotlikedvyqu0-9]{0,200}") {
            if let Err(diagnostics) = SegmentSet::parse_str("f.yaml", &text) {
                prop_assert!(!diagnostics.is_empty());
                for d in diagnostics {
                    prop_assert!(d.line >= 1 && d.col >= 1, "{}", d);
                }
            }
        }
    }
}
