//! Fan-out triggers (再入荷): what a valid one means, and each mistake
//! `renkei check` reports with its exact `file:line:col: message`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{BUBBLE, segments, template};
use renkei_campaigns::{CampaignSet, FanoutTarget, Trigger};
use serde_json::json;
use std::path::PathBuf;

fn load(text: &str) -> Result<CampaignSet, Vec<String>> {
    CampaignSet::from_sources(
        vec![(PathBuf::from("c.yaml"), text.to_string())],
        vec![template("t", BUBBLE)],
        &segments(),
    )
    .map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

/// A campaign whose trigger is `fanout:` followed by `body` (indented by the caller).
fn fanout(body: &str) -> String {
    format!(
        "id: c\nname: 再入荷\ntrigger:\n  fanout:\n{body}messages:\n  - template: t\n    alt_text: 再入荷しました\n"
    )
}

const VALID: &str = "    event: restock\n    where: { stock: { gte: 1 } }\n    to: { event: [favorite, view], match: [sku, color], within: 90d }\n";

#[test]
fn a_valid_fanout_loads_with_its_target() {
    let set = load(&fanout(VALID)).unwrap();
    let trigger = &set.get("c").unwrap().trigger;
    let Trigger::Fanout { event_type, to, .. } = trigger else { panic!("fan-out trigger: {trigger:?}") };
    assert_eq!(event_type, "restock");
    assert_eq!(
        to,
        &FanoutTarget {
            event_types: vec!["favorite".into(), "view".into()],
            match_props: vec!["sku".into(), "color".into()],
            within: chrono::Duration::days(90),
        }
    );
    assert_eq!(trigger.event_type(), Some("restock"));
    assert_eq!(set.fanning_out("restock").count(), 1);
    assert_eq!(set.on_event("restock").count(), 0, "not an event campaign");
    let now = chrono::Utc::now();
    let takes = |p: serde_json::Value| trigger.takes_event(p.as_object().unwrap(), now, chrono_tz::Asia::Tokyo);
    assert!(takes(json!({"sku": "A", "stock": 3})));
    assert!(!takes(json!({"sku": "A", "stock": 0})), "`where` filters the trigger event");

    // One type is a list of one.
    let one = load(&fanout("    event: restock\n    to: { event: favorite, match: [sku], within: 1h }\n")).unwrap();
    let Trigger::Fanout { to, .. } = &one.get("c").unwrap().trigger else { panic!("fan-out") };
    assert_eq!(to.event_types, vec!["favorite".to_string()]);
}

#[test]
fn match_values_are_the_trigger_events_strings_and_key_them_stably() {
    let to = FanoutTarget {
        event_types: vec!["favorite".into()],
        match_props: vec!["sku".into(), "item.color".into()],
        within: chrono::Duration::days(90),
    };
    let props = json!({"sku": "A-1", "item": {"color": "赤"}});
    let values = to.match_values(props.as_object().unwrap()).unwrap();
    assert_eq!(values, vec![("sku".into(), "A-1".into()), ("item.color".into(), "赤".into())]);
    let key = FanoutTarget::values_key(&values);
    assert_eq!(key.len(), 16);
    assert_eq!(key, FanoutTarget::values_key(&values), "stable");
    let other = vec![("sku".into(), "A-2".into()), ("item.color".into(), "赤".into())];
    assert_ne!(key, FanoutTarget::values_key(&other));
    // A missing or non-string value names the property.
    assert_eq!(to.match_values(json!({"sku": 1, "item": {"color": "赤"}}).as_object().unwrap()), Err("sku".into()));
    assert_eq!(to.match_values(json!({"sku": "A"}).as_object().unwrap()), Err("item.color".into()));
}

#[test]
fn check_reports_each_mistake_at_its_place() {
    let cases: [(&str, &[&str]); 10] = [
        (
            "    event: restock\n    to: { event: favorite, match: [], within: 90d }\n",
            &["c.yaml:6:35: `match` needs at least 1 property: without one every such event would match every trigger"],
        ),
        (
            "    event: restock\n    to: { event: favorite, match: [sku], within: 90x }\n",
            &[
                "c.yaml:6:50: invalid duration \"90x\": expected an integer and a unit s, m, h, d or w (e.g. 90d, 1h, 30s)",
            ],
        ),
        (
            "    event: restock\n    to: { event: favorite, match: [sku], within: 0s }\n",
            &["c.yaml:6:50: `within` must be longer than 0: no event could match"],
        ),
        (
            "    event: restock\n    to: { event: favorite, match: [sku] }\n",
            &["c.yaml:6:9: missing required key `within` in `fanout.to`"],
        ),
        (
            "    event: restock\n    to: { event: favorite, match: [sku], within: 1d, since: 2d }\n",
            &["c.yaml:6:54: unknown key `since` in `fanout.to` (expected one of: event, match, within)"],
        ),
        (
            "    event: restock\n    delay: 1h\n    to: { event: favorite, match: [sku], within: 1d }\n",
            &["c.yaml:6:5: unknown key `delay` in `fanout` (expected one of: event, where, to)"],
        ),
        (
            "    to: { event: favorite, match: [sku], within: 1d }\n",
            &["c.yaml:5:5: missing required key `event` in `fanout`"],
        ),
        (
            "    event: restock\n    to: { event: [favorite, favorite], match: [sku], within: 1d }\n",
            &["c.yaml:6:29: duplicate event type `favorite`"],
        ),
        (
            "    event: restock\n    to: { event: favorite, match: [\"sku'--\"], within: 1d }\n",
            &["c.yaml:6:36: invalid match property \"sku'--\": letters, digits and `_` only (dots for nested)"],
        ),
        (
            "    event: restock\n    to: { event: Favorite, match: [sku], within: 1d }\n",
            &["c.yaml:6:18: invalid event type: "],
        ),
    ];
    for (body, expected) in cases {
        let found = load(&fanout(body)).err().unwrap_or_default();
        assert_eq!(found.len(), expected.len(), "{body}: {found:?}");
        for (found, expected) in found.iter().zip(expected.iter()) {
            assert!(found.starts_with(expected), "{body}:\n found    {found}\n expected {expected}");
        }
    }
}

#[test]
fn trigger_level_options_of_other_kinds_are_refused_next_to_a_fanout() {
    let text = format!(
        "id: c\nname: n\ntrigger:\n  fanout:\n{VALID}  where: {{ a: 1 }}\n  unless: {{ event: x }}\nmessages:\n  - template: t\n    alt_text: a\n"
    );
    assert_eq!(
        load(&text).err().unwrap(),
        [
            "c.yaml:8:3: a fan-out's `where` goes inside `fanout` (`fanout: {event, where, to}`)",
            "c.yaml:9:3: `unless` belongs to an event trigger",
        ]
    );
    let both = "id: c\nname: n\ntrigger:\n  event: restock\n  fanout: { event: restock, to: { event: f, match: [sku], within: 1d } }\nmessages:\n  - template: t\n    alt_text: a\n";
    let found = load(both).err().unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("c.yaml:5:3: a trigger has exactly one of"), "{found:?}");
}

#[test]
fn a_fanout_may_have_steps() {
    let text = "id: c\nname: n\ntrigger:\n  fanout:\n    event: restock\n    to: { event: favorite, match: [sku], within: 90d }\nsteps:\n  - id: now\n    messages: [ { template: t, alt_text: a } ]\n  - id: later\n    wait: 1d\n    messages: [ { template: t, alt_text: b } ]\n";
    let set = load(text).unwrap();
    assert_eq!(set.get("c").unwrap().steps.len(), 2);
}
