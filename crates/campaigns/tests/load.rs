//! Loading campaigns: the shipped examples, and one test per kind of error
//! with its exact `file:line:col: message`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{BUBBLE, segments, template};
use renkei_campaigns::{CampaignSet, Timing, Trigger};
use std::path::PathBuf;

const MESSAGES: &str = "messages:\n  - template: t\n    alt_text: hello\n";

/// Diagnostics for campaign files (named `c.yaml`, `d.yaml`…) and templates, as displayed.
fn errors_with(files: &[(&str, &str)], templates: Vec<(String, PathBuf, String)>) -> Vec<String> {
    let sources = files.iter().map(|(name, text)| (PathBuf::from(name), text.to_string())).collect();
    CampaignSet::from_sources(sources, templates, &segments())
        .expect_err("should be refused")
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn errors(text: &str) -> Vec<String> {
    errors_with(&[("c.yaml", text)], vec![template("t", BUBBLE)])
}

fn campaign(trigger: &str, rest: &str) -> String {
    format!("id: c\nname: テスト\ntrigger:\n{trigger}{MESSAGES}{rest}")
}

#[test]
fn a_valid_campaign_loads_with_every_field() {
    let text = campaign(
        "  event: reservation_created\n  at: { property: reserved_at, offset: -1d }\n  unless: { event: reservation_cancelled, match: [reservation_id] }\n",
        "audience: gold_members\nfrequency_cap: { max: 2, per: 7d }\nquiet_hours: { from: \"21:00\", to: \"09:00\" }\n",
    );
    let set =
        CampaignSet::from_sources(vec![(PathBuf::from("c.yaml"), text)], vec![template("t", BUBBLE)], &segments())
            .unwrap();
    let c = set.get("c").unwrap();
    assert_eq!(c.name, "テスト");
    assert_eq!(c.audience.as_deref(), Some("gold_members"));
    let Trigger::Event { event_type, timing, unless, .. } = &c.trigger else { panic!("event trigger") };
    assert_eq!(event_type, "reservation_created");
    assert_eq!(timing, &Timing::At { property: "reserved_at".into(), offset: chrono::Duration::days(-1) });
    let unless = unless.as_ref().unwrap();
    assert_eq!(unless.event, "reservation_cancelled");
    assert_eq!(unless.match_props, vec!["reservation_id".to_string()]);
    assert_eq!(c.frequency_cap.unwrap().max, 2);
    assert_eq!(c.frequency_cap.unwrap().per, chrono::Duration::days(7));
    assert_eq!(c.quiet_hours.unwrap().from.to_string(), "21:00:00");
    assert_eq!(c.messages[0].template, "t");
    assert_eq!(set.len(), 1);
}

#[test]
fn invalid_id() {
    assert_eq!(
        errors(
            "id: Bad-Id\nname: n\ntrigger:\n  segment_entered: gold_members\nmessages:\n  - template: t\n    alt_text: a\n"
        ),
        vec![r#"c.yaml:1:5: invalid campaign id "Bad-Id": must match [a-z0-9_]{1,64}"#]
    );
}

#[test]
fn duplicate_id_across_files() {
    let text = campaign("  segment_entered: gold_members\n", "");
    assert_eq!(
        errors_with(&[("a.yaml", &text), ("b.yaml", &text)], vec![template("t", BUBBLE)]),
        vec!["b.yaml:1:5: duplicate campaign id `c` (already defined at a.yaml:1:5)"]
    );
}

#[test]
fn unknown_top_level_key() {
    assert_eq!(
        errors(&campaign("  segment_entered: gold_members\n", "colour: red\n")),
        vec![
            "c.yaml:8:1: unknown key `colour` in a campaign (expected one of: id, name, description, trigger, audience, messages, variants, frequency_cap, quiet_hours, goal, holdout, steps, exit)"
        ]
    );
}

#[test]
fn missing_required_key() {
    assert_eq!(
        errors(&format!("id: c\ntrigger:\n  segment_entered: gold_members\n{MESSAGES}")),
        vec!["c.yaml:1:1: missing required key `name` in a campaign"]
    );
}

#[test]
fn wrong_type() {
    assert_eq!(
        errors(&format!("id: c\nname: [a]\ntrigger:\n  segment_entered: gold_members\n{MESSAGES}")),
        vec!["c.yaml:2:7: expected a string, got a list"]
    );
}

#[test]
fn yaml_syntax_error() {
    let found = errors("id: c\nname: [unclosed\n");
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("c.yaml:2:7: invalid YAML"), "{found:?}");
}

#[test]
fn trigger_without_a_kind() {
    assert_eq!(
        errors(&campaign("  audience: gold_members\n", "")),
        vec!["c.yaml:4:3: a trigger needs exactly one of: segment_entered, schedule, event"]
    );
}

#[test]
fn trigger_with_two_kinds() {
    assert_eq!(
        errors(&campaign("  segment_entered: gold_members\n  event: purchase\n", "")),
        vec![
            "c.yaml:5:3: a trigger has exactly one of segment_entered, schedule, event; found `segment_entered` and `event`"
        ]
    );
}

#[test]
fn unknown_segment_in_trigger_and_audience() {
    assert_eq!(
        errors(&campaign("  segment_entered: nope\n", "audience: nobody\n")),
        vec!["c.yaml:4:20: unknown segment `nope`", "c.yaml:8:11: unknown segment `nobody`"]
    );
}

#[test]
fn schedule_needs_an_audience() {
    assert_eq!(
        errors(&campaign("  schedule: \"0 0 9 * * *\"\n", "")),
        vec!["c.yaml:4:3: a schedule trigger needs `audience: SEGMENT` (who receives it at each fire)"]
    );
}

#[test]
fn invalid_cron_expression_is_reported_at_the_expression() {
    let found = errors(&campaign("  schedule: \"0 9 * * *\"\n  audience: birthday_today\n", ""));
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("c.yaml:4:13: invalid cron expression \"0 9 * * *\": "), "{found:?}");
    assert!(found[0].contains("seconds first"), "a 5-field expression gets a hint: {found:?}");
    let found = errors(&campaign("  schedule: \"0 0 9 * * 0\"\n  audience: birthday_today\n", ""));
    assert!(found[0].starts_with("c.yaml:4:13: invalid cron expression \"0 0 9 * * 0\": "), "{found:?}");
    assert!(found[0].contains("1-7 from Sunday"), "{found:?}");
}

#[test]
fn delay_and_at_are_mutually_exclusive() {
    assert_eq!(
        errors(&campaign("  event: purchase\n  delay: 1h\n  at: { property: t }\n", "")),
        vec!["c.yaml:6:3: `delay` and `at` are mutually exclusive: use one"]
    );
}

#[test]
fn bad_durations_and_offsets() {
    assert_eq!(
        errors(&campaign("  event: purchase\n  delay: 1y\n", "")),
        vec![
            r#"c.yaml:5:10: invalid duration "1y": expected an integer and a unit s, m, h, d or w (e.g. 90d, 1h, 30s)"#
        ]
    );
    assert_eq!(
        errors(&campaign("  event: reservation_created\n  at: { property: reserved_at, offset: -1 day }\n", "")),
        vec![
            r#"c.yaml:5:40: invalid offset "-1 day": expected an optional sign, an integer and a unit s, m, h, d or w (e.g. -1d, 2h)"#
        ]
    );
}

#[test]
fn at_needs_a_property() {
    assert_eq!(
        errors(&campaign("  event: reservation_created\n  at: { offset: -1d }\n", "")),
        vec!["c.yaml:5:7: missing required key `property` in `at`"]
    );
}

#[test]
fn unless_unknown_key() {
    assert_eq!(
        errors(&campaign(
            "  event: reservation_created\n  unless: { event: reservation_cancelled, matches: [id] }\n",
            ""
        )),
        vec!["c.yaml:5:43: unknown key `matches` in `unless` (expected one of: event, match)"]
    );
}

#[test]
fn event_trigger_options_on_another_trigger() {
    assert_eq!(
        errors(&campaign("  segment_entered: gold_members\n  delay: 1h\n", "")),
        vec!["c.yaml:5:3: `delay` belongs to an event trigger"]
    );
}

#[test]
fn invalid_event_type() {
    let found = errors(&campaign("  event: \"Bad Type\"\n", ""));
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("c.yaml:4:10: invalid event type: "), "{found:?}");
}

#[test]
fn message_count_must_be_1_to_5() {
    assert_eq!(
        errors("id: c\nname: n\ntrigger:\n  segment_entered: gold_members\nmessages: []\n"),
        vec!["c.yaml:5:11: a campaign has 1 to 5 messages, found 0"]
    );
    let six = "  - template: t\n    alt_text: a\n".repeat(6);
    assert_eq!(
        errors(&format!("id: c\nname: n\ntrigger:\n  segment_entered: gold_members\nmessages:\n{six}")),
        vec!["c.yaml:6:3: a campaign has 1 to 5 messages, found 6"]
    );
}

#[test]
fn unknown_template() {
    assert_eq!(
        errors(
            "id: c\nname: n\ntrigger:\n  segment_entered: gold_members\nmessages:\n  - template: nope\n    alt_text: a\n"
        ),
        vec!["c.yaml:6:15: unknown template `nope` (no file nope.json.hbs)"]
    );
}

#[test]
fn empty_alt_text() {
    assert_eq!(
        errors(
            "id: c\nname: n\ntrigger:\n  segment_entered: gold_members\nmessages:\n  - template: t\n    alt_text: \"  \"\n"
        ),
        vec!["c.yaml:7:15: `alt_text` must not be empty"]
    );
}

#[test]
fn alt_text_that_does_not_compile() {
    let found = errors(
        "id: c\nname: n\ntrigger:\n  segment_entered: gold_members\nmessages:\n  - template: t\n    alt_text: \"{{#if x}}a\"\n",
    );
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("c.yaml:7:15: invalid alt_text template: "), "{found:?}");
}

#[test]
fn frequency_cap_errors() {
    assert_eq!(
        errors(&campaign("  segment_entered: gold_members\n", "frequency_cap: { max: 0, per: 0s }\n")),
        vec!["c.yaml:8:23: `max` must be an integer of at least 1", "c.yaml:8:31: `per` must be longer than 0s"]
    );
}

#[test]
fn quiet_hours_errors() {
    assert_eq!(
        errors(&campaign("  segment_entered: gold_members\n", "quiet_hours: { from: \"25:00\", to: \"9:00\" }\n")),
        vec![
            r#"c.yaml:8:22: invalid time "25:00": expected "HH:MM" from 00:00 to 23:59"#,
            r#"c.yaml:8:35: invalid time "9:00": expected "HH:MM" from 00:00 to 23:59"#,
        ]
    );
    assert_eq!(
        errors(&campaign("  segment_entered: gold_members\n", "quiet_hours: { from: \"09:00\", to: \"09:00\" }\n")),
        vec!["c.yaml:8:35: quiet hours `from` and `to` must differ"]
    );
}

#[test]
fn template_that_does_not_compile_is_reported_at_the_template() {
    let found = errors_with(
        &[("c.yaml", &campaign("  segment_entered: gold_members\n", ""))],
        vec![template("t", "{\n  \"type\": \"bubble\",\n  \"x\": \"{{#if member.name}}\"\n}\n")],
    );
    assert_eq!(
        found,
        ["templates/t.json.hbs:3:9: `{{#if}}` opened here is never closed; add `{{/if}}` where the block ends"],
        "where the block opened, not at the end of the file"
    );
    let found = errors_with(
        &[("c.yaml", &campaign("  segment_entered: gold_members\n", ""))],
        vec![template("t", "{\n  \"x\": \"{{#if member.name}}{{/each}}\"\n}\n")],
    );
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("templates/t.json.hbs:2:") && found[0].contains("template error: "), "{found:?}");
}

#[test]
fn template_that_renders_invalid_json_is_reported_at_the_template() {
    let found = errors_with(
        &[("c.yaml", &campaign("  segment_entered: gold_members\n", ""))],
        vec![template("t", "{\n  \"type\": \"bubble\",\n  oops\n}\n")],
    );
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("templates/t.json.hbs:3:1: template does not render valid JSON with sample data: "),
        "{found:?}"
    );
}

#[test]
fn template_that_is_not_a_bubble_or_carousel() {
    assert_eq!(
        errors_with(
            &[("c.yaml", &campaign("  segment_entered: gold_members\n", ""))],
            vec![template("t", "{\"type\": \"text\"}")]
        ),
        vec![
            "templates/t.json.hbs:1:1: not a valid Flex message `contents` (bubble or carousel): contents.type: Must be one of the following values: [bubble, carousel]"
        ]
    );
}

#[test]
fn triple_braces_bypass_escaping_and_are_refused() {
    let text = "{\n  \"type\": \"bubble\",\n  \"x\": \"{{{member.name}}}\"\n}\n";
    assert_eq!(
        errors_with(&[("c.yaml", &campaign("  segment_entered: gold_members\n", ""))], vec![template("t", text)]),
        vec![
            "templates/t.json.hbs:3:9: triple braces `{{{…}}}` would insert a value without JSON escaping; use `{{…}}`"
        ]
    );
}

#[test]
fn a_helper_without_its_argument_is_refused_at_load() {
    let text = "{\"type\": \"bubble\", \"x\": \"{{yen}}\"}";
    let found =
        errors_with(&[("c.yaml", &campaign("  segment_entered: gold_members\n", ""))], vec![template("t", text)]);
    assert_eq!(found.len(), 1);
    assert!(
        found[0].starts_with("templates/t.json.hbs:1:26: template does not render: `yen` needs an argument"),
        "{found:?}"
    );
}

#[test]
fn errors_in_several_places_are_all_reported_sorted() {
    let found = errors_with(
        &[
            (
                "b.yaml",
                "id: b\nname: n\ntrigger:\n  segment_entered: nope\nmessages:\n  - template: t\n    alt_text: a\n",
            ),
            (
                "a.yaml",
                "id: A\nname: n\ntrigger:\n  segment_entered: gold_members\nmessages:\n  - template: t\n    alt_text: a\n",
            ),
        ],
        vec![template("t", BUBBLE)],
    );
    assert_eq!(found.len(), 2);
    assert!(found[0].starts_with("a.yaml:1:5: "), "{found:?}");
    assert!(found[1].starts_with("b.yaml:4:20: unknown segment"), "{found:?}");
}

#[test]
fn missing_directory_is_an_empty_set() {
    let dir = tempfile::tempdir().unwrap();
    let set = CampaignSet::load(&dir.path().join("none"), &dir.path().join("none"), &segments()).unwrap();
    assert!(set.is_empty());
    assert_eq!(set.iter().count(), 0);
}

#[test]
fn load_reads_named_templates_from_the_templates_dir() {
    let dir = tempfile::tempdir().unwrap();
    let campaigns = dir.path().join("campaigns");
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&campaigns).unwrap();
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        campaigns.join("b.yml"),
        campaign("  segment_entered: gold_members\n", "").replace("id: c", "id: b"),
    )
    .unwrap();
    std::fs::write(
        campaigns.join("a.yaml"),
        campaign("  segment_entered: gold_members\n", "").replace("id: c", "id: a"),
    )
    .unwrap();
    std::fs::write(campaigns.join("notes.txt"), "not a campaign").unwrap();
    std::fs::write(templates.join("t.json.hbs"), BUBBLE).unwrap();
    let set = CampaignSet::load(&campaigns, &templates, &segments()).unwrap();
    assert_eq!(set.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
    assert_eq!(set.get("b").unwrap().file, campaigns.join("b.yml"));

    std::fs::remove_file(templates.join("t.json.hbs")).unwrap();
    let found: Vec<String> =
        CampaignSet::load(&campaigns, &templates, &segments()).unwrap_err().iter().map(ToString::to_string).collect();
    let expected = templates.join("t.json.hbs");
    assert_eq!(
        found,
        vec![
            format!(
                "{}:6:15: unknown template `t` (no file {})",
                campaigns.join("a.yaml").display(),
                expected.display()
            ),
            format!(
                "{}:6:15: unknown template `t` (no file {})",
                campaigns.join("b.yml").display(),
                expected.display()
            ),
        ]
    );
}

#[test]
fn a_bad_date_format_is_refused_at_load() {
    let found = errors(
        "id: c\nname: n\ntrigger:\n  segment_entered: gold_members\nmessages:\n  - template: t\n    alt_text: \"{{date now \\\"%Q\\\"}}\"\n",
    );
    assert_eq!(found, vec![r#"c.yaml:7:15: alt_text does not render: `date`: invalid format "%Q" (line 1, column 1)"#]);
}

#[test]
fn a_goal_and_a_holdout_load() {
    let text = campaign(
        "  segment_entered: gold_members\n",
        "goal:\n  event: purchase\n  where: { product: { ne: trial_set } }\n  within: 14d\n  value: amount\nholdout: 12.5%\n",
    );
    let set =
        CampaignSet::from_sources(vec![(PathBuf::from("c.yaml"), text)], vec![template("t", BUBBLE)], &segments())
            .unwrap();
    let c = set.get("c").unwrap();
    let goal = c.goal.as_ref().unwrap();
    assert_eq!(
        (goal.event.as_str(), goal.within, goal.value.as_deref()),
        ("purchase", chrono::Duration::days(14), Some("amount"))
    );
    assert_eq!(goal.filters.len(), 1);
    assert_eq!(c.holdout.unwrap().basis_points, 1_250);
}

#[test]
fn goal_and_holdout_errors_point_at_the_value() {
    let rest = "goal:\n  event: purchase\n  within: 0d\n  where: { amount: { gte: } }\n  colour: red\nholdout: 60%\n";
    assert_eq!(
        errors(&campaign("  segment_entered: gold_members\n", rest)),
        [
            "c.yaml:10:11: `within` must be longer than 0: nothing could convert",
            "c.yaml:11:25: expected a number or a string, got null",
            "c.yaml:12:3: unknown key `colour` in `goal` (expected one of: event, where, within, value)",
            "c.yaml:13:10: holdout \"60%\" must be more than 0% and at most 50%",
        ]
    );
    let missing = errors(&campaign("  segment_entered: gold_members\n", "goal: { where: {a: 1} }\nholdout: ten\n"));
    assert!(missing.iter().any(|e| e.contains("missing required key `event`")), "{missing:?}");
    assert!(missing.iter().any(|e| e.contains("invalid holdout \"ten\"")), "{missing:?}");
}

const VARIANTS: &str = "variants:\n  - id: coupon\n    weight: 30\n    messages: [ { template: t, alt_text: a }, { template: t, alt_text: b } ]\n  - id: story\n    weight: 70\n    messages: [ { template: t, alt_text: c } ]\n";

#[test]
fn variants_load_with_their_messages() {
    let text = format!("id: c\nname: n\ntrigger:\n  segment_entered: gold_members\n{VARIANTS}");
    let set =
        CampaignSet::from_sources(vec![(PathBuf::from("c.yaml"), text)], vec![template("t", BUBBLE)], &segments())
            .unwrap();
    let c = set.get("c").unwrap();
    let arms: Vec<(&str, u32, std::ops::Range<usize>)> =
        c.variants.iter().map(|v| (v.id.as_str(), v.weight, v.messages.clone())).collect();
    assert_eq!(arms, [("coupon", 30, 0..2), ("story", 70, 2..3)]);
    let alts: Vec<&str> = c.messages.iter().map(|m| m.alt_text.as_str()).collect();
    assert_eq!(alts, ["a", "b", "c"]);
    // Each recipient gets its variant's messages only.
    for user in ["U1", "U2", "U3", "U4", "U5"] {
        let (variant, messages) = c.messages_for(Some(user));
        let variant = variant.unwrap();
        assert_eq!(messages.len(), variant.messages.len(), "{user}");
        assert_eq!(Some(variant), c.variant_for(user));
    }
}

#[test]
fn variant_errors_point_at_the_value() {
    let head = "id: c\nname: n\ntrigger:\n  segment_entered: gold_members\n";
    let weights = VARIANTS.replace("weight: 70", "weight: 60");
    assert_eq!(errors(&format!("{head}{weights}")), ["c.yaml:6:3: variant weights must sum to 100, found 90"]);
    let duplicate = VARIANTS.replace("id: story", "id: coupon");
    assert_eq!(errors(&format!("{head}{duplicate}")), ["c.yaml:9:9: duplicate variant id `coupon`"]);
    let both = errors(&format!("{head}{MESSAGES}{VARIANTS}"));
    assert_eq!(both, ["c.yaml:8:1: `messages` and `variants` exclude each other: give one"]);
    let one = errors(&format!(
        "{head}variants:\n  - {{ id: a, weight: 100, messages: [ {{ template: t, alt_text: x }} ] }}\n"
    ));
    assert_eq!(one, ["c.yaml:6:3: `variants` needs at least 2 variants, found 1"]);
    let neither = errors(head);
    assert_eq!(neither, ["c.yaml:1:1: missing required key `messages` (or `variants`, `steps`) in a campaign"]);
    let bad = VARIANTS.replace("weight: 30", "weight: 0").replace("id: story", "id: Story");
    let bad = errors(&format!("{head}{bad}"));
    assert!(bad.iter().any(|e| e.starts_with("c.yaml:7:13: expected a whole percent from 1 to 100")), "{bad:?}");
    assert!(bad.iter().any(|e| e.contains("invalid variant id \"Story\"")), "{bad:?}");
}

const STEPS: &str = "steps:\n  - id: thanks\n    messages: [ { template: t, alt_text: a } ]\n  - id: day3\n    wait: 3d\n    at: \"10:00\"\n    if: { segment: gold_members }\n    variants:\n      - { id: coupon, weight: 50, messages: [ { template: t, alt_text: b } ] }\n      - { id: story, weight: 50, messages: [ { template: t, alt_text: c } ] }\nexit:\n  goal: true\n  event: { event: unsubscribe_request }\n";
const GOAL: &str = "goal: { event: purchase, within: 14d }\n";

#[test]
fn steps_load_with_their_messages_variants_and_exit() {
    let text = format!("id: c\nname: n\ntrigger:\n  event: purchase\n{STEPS}{GOAL}");
    let set =
        CampaignSet::from_sources(vec![(PathBuf::from("c.yaml"), text)], vec![template("t", BUBBLE)], &segments())
            .unwrap();
    let c = set.get("c").unwrap();
    type StepShape<'a> = (&'a str, chrono::Duration, Option<String>, std::ops::Range<usize>, usize);
    let steps: Vec<StepShape<'_>> = c
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.wait, s.if_segment.clone(), s.messages.clone(), s.variants.len()))
        .collect();
    assert_eq!(
        steps,
        [
            ("thanks", chrono::Duration::zero(), None, 0..1, 0),
            ("day3", chrono::Duration::days(3), Some("gold_members".to_string()), 1..3, 2),
        ]
    );
    assert_eq!(c.steps[1].at.unwrap().to_string(), "10:00:00");
    let exit = c.exit.as_ref().unwrap();
    assert!(exit.goal && exit.segment_exited.is_none());
    assert_eq!(exit.event.as_ref().unwrap().event, "unsubscribe_request");
    // Each step renders its own messages (a step's variant for a user).
    let (variant, range) = c.message_range(Some(1), Some("U1"));
    assert!(range.start >= 1 && range.end <= 3 && range.len() == 1, "{range:?}");
    assert!(variant.is_some());
    assert_eq!(c.message_range(Some(0), Some("U1")), (None, 0..1));
}

#[test]
fn step_errors_point_at_the_value() {
    let head = |trigger: &str| format!("id: c\nname: n\ntrigger:\n{trigger}");
    let on_schedule =
        errors(&format!("{}{STEPS}{GOAL}", head("  schedule: \"0 0 9 * * *\"\n  audience: gold_members\n")));
    assert_eq!(on_schedule, ["c.yaml:6:1: `steps` need an `event` or `segment_entered` trigger, not a `schedule`"]);
    let without_goal = errors(&format!("{}{STEPS}", head("  event: purchase\n")));
    assert_eq!(without_goal, ["c.yaml:16:3: `exit.goal` needs a `goal` to convert on"]);
    let without_steps = errors(&format!("{}{MESSAGES}exit: {{ goal: true }}\n{GOAL}", head("  event: purchase\n")));
    assert_eq!(without_steps, ["c.yaml:8:7: `exit` ends a sequence: it needs `steps`"]);
    let duplicate = STEPS.replace("id: day3", "id: thanks");
    let duplicate = errors(&format!("{}{duplicate}{GOAL}", head("  event: purchase\n")));
    assert_eq!(duplicate, ["c.yaml:8:9: duplicate step id `thanks`"]);
    let both = STEPS.replace("    variants:\n", "    messages: [ { template: t, alt_text: x } ]\n    variants:\n");
    let both = errors(&format!("{}{both}{GOAL}", head("  event: purchase\n")));
    assert_eq!(both, ["c.yaml:13:5: `messages` and `variants` exclude each other: give one"]);
    let unitless = STEPS.replace("wait: 3d", "wait: 3");
    let unitless = errors(&format!("{}{unitless}{GOAL}", head("  event: purchase\n")));
    assert!(unitless.len() == 1 && unitless[0].starts_with("c.yaml:9:11: "), "{unitless:?}");
    let unknown = STEPS.replace("segment: gold_members", "segment: nope");
    let unknown = errors(&format!("{}{unknown}{GOAL}", head("  event: purchase\n")));
    assert_eq!(unknown, ["c.yaml:11:20: unknown segment `nope`"]);
}

#[test]
fn an_event_trigger_takes_only_events_passing_its_where() {
    let text = campaign("  event: purchase\n  where: { product: trial_set, amount: { gte: 1000 } }\n", "");
    let set =
        CampaignSet::from_sources(vec![(PathBuf::from("c.yaml"), text)], vec![template("t", BUBBLE)], &segments())
            .unwrap();
    let trigger = &set.get("c").unwrap().trigger;
    let takes = |properties: serde_json::Value| {
        trigger.takes_event(properties.as_object().unwrap(), chrono::Utc::now(), chrono_tz::Asia::Tokyo)
    };
    assert!(takes(serde_json::json!({"product": "trial_set", "amount": 1200})));
    assert!(!takes(serde_json::json!({"product": "trial_set", "amount": 900})));
    assert!(!takes(serde_json::json!({"product": "full_size", "amount": 5000})));
    let bad = errors(&campaign("  segment_entered: gold_members\n  where: { a: 1 }\n", ""));
    assert_eq!(bad, ["c.yaml:5:3: `where` belongs to an event trigger"]);
}
