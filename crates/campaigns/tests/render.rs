//! Rendering: hostile member data always yields valid JSON, helpers, limits.
#![allow(clippy::unwrap_used)]

mod common;

use chrono::{DateTime, Utc};
use common::{BUBBLE, segments, template};
use proptest::prelude::*;
use renkei_campaigns::{CampaignSet, LinkKeys, LinkPayload, RenderContext, RenderError};
use serde_json::{Map, Value, json};
use std::path::PathBuf;
use std::sync::Arc;

const LINK_KEY: &str = "render-test-link-key-0123456789abcdef";

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

/// One campaign `c` (event trigger on `purchase`) with one message.
fn set_with(template_text: &str, alt_text: &str) -> CampaignSet {
    set_without_keys(template_text, alt_text).with_link_keys(Arc::new(LinkKeys::new(&[LINK_KEY]).unwrap()))
}

fn set_without_keys(template_text: &str, alt_text: &str) -> CampaignSet {
    let yaml = format!(
        "id: c\nname: \"キャンペーン\"\ntrigger:\n  event: purchase\nmessages:\n  - template: t\n    alt_text: {}\n",
        serde_json::to_string(alt_text).unwrap()
    );
    CampaignSet::from_sources(vec![(PathBuf::from("c.yaml"), yaml)], vec![template("t", template_text)], &segments())
        .unwrap_or_else(|e| panic!("{e:?}"))
}

fn ctx<'a>(member: &'a Map<String, Value>, event: Option<&'a Value>) -> RenderContext<'a> {
    RenderContext {
        member_id: Some("M\"1"),
        member: Some(member),
        line_user_id: Some("U7db3d96b0f76480d94a7ded5f234fb96"),
        trigger_key: Some("entered:1"),
        event,
        now: utc("2026-08-01T00:30:00Z"),
        timezone: chrono_tz::Asia::Tokyo,
        public_base_url: "https://renkei.example",
    }
}

const ECHO: &str = r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [
  {"type": "text", "text": "{{member.name}}"},
  {"type": "text", "text": "{{member.member_id}}"},
  {"type": "text", "text": "{{member.nested.city}}/{{member.missing}}"}
]}}"#;

fn texts(messages: &[Value]) -> Vec<String> {
    messages[0]["contents"]["body"]["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn hostile_member_data_renders_valid_json_and_round_trips() {
    let set = set_with(ECHO, "{{member.name}}さんへ");
    let hostile =
        "\"}], \"x\": {\"y\": \"\\\\ \n\r\t\u{0}\u{1b} <script>alert('x')</script> &amp; 🎉 {{member.name}} \u{2028}";
    let member = json!({"name": hostile, "nested": {"city": "大阪\"市"}}).as_object().unwrap().clone();
    let messages = set.render(set.get("c").unwrap(), &ctx(&member, None)).unwrap();
    assert_eq!(texts(&messages), vec![hostile.to_string(), "M\"1".to_string(), "大阪\"市/".to_string()]);
    // alt_text is not JSON-escaped: it is the raw text, which serde makes a JSON string.
    assert_eq!(messages[0]["altText"], format!("{hostile}さんへ"));
}

#[test]
fn context_has_event_campaign_now_and_line_user_id() {
    let template = r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [
      {"type": "text", "text": "{{event.type}} {{event.properties.order_id}}"},
      {"type": "text", "text": "{{campaign.id}} {{campaign.name}}"},
      {"type": "text", "text": "{{now}}"},
      {"type": "text", "text": "{{line_user_id}}"}
    ]}}"#;
    let set = set_with(template, "a");
    let event =
        json!({"type": "purchase", "occurred_at": "2026-08-01T09:00:00+09:00", "properties": {"order_id": "O\"1"}});
    let messages = set.render(set.get("c").unwrap(), &ctx(&Map::new(), Some(&event))).unwrap();
    assert_eq!(
        texts(&messages),
        vec!["purchase O\"1", "c キャンペーン", "2026-08-01T09:30:00+09:00", "U7db3d96b0f76480d94a7ded5f234fb96"]
    );
}

#[test]
fn helpers_yen_date_and_track() {
    let template = r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [
      {"type": "text", "text": "{{yen event.properties.amount}} / {{yen event.properties.refund}} / {{yen event.properties.text_amount}}"},
      {"type": "text", "text": "{{date event.properties.reserved_at "%m月%d日 %H:%M"}} / {{date event.properties.day "%Y-%m-%d %H:%M %Z"}}"},
      {"type": "text", "text": "{{track "https://shop.example/cart?item=1&q=\"x\""}}"}
    ]}}"#;
    let set = set_with(template, "{{yen event.properties.amount}}のお買い物");
    let event = json!({"type": "purchase", "occurred_at": "2026-08-01T09:00:00+09:00", "properties": {
        "amount": 3200, "refund": -1234.5, "text_amount": "1000000",
        "reserved_at": "2026-08-12T04:13:20Z", "day": "2026-08-12"}});
    let messages = set.render(set.get("c").unwrap(), &ctx(&Map::new(), Some(&event))).unwrap();
    let texts = texts(&messages);
    assert_eq!(texts[0], "¥3,200 / -¥1,235 / ¥1,000,000");
    assert_eq!(texts[1], "08月12日 13:13 / 2026-08-12 00:00 JST");
    let token = texts[2].strip_prefix("https://renkei.example/t/").unwrap_or_else(|| panic!("{}", texts[2]));
    assert!(!token.contains("U7db3d96b0f76480d94a7ded5f234fb96") && !token.contains("shop"), "{token}");
    let payload = LinkKeys::new(&[LINK_KEY]).unwrap().open(token).unwrap();
    let expected = LinkPayload {
        campaign_id: "c".into(),
        trigger_key: "entered:1".into(),
        line_user_id: "U7db3d96b0f76480d94a7ded5f234fb96".into(),
        target: "https://shop.example/cart?item=1&q=\"x\"".into(),
    };
    assert_eq!(payload, expected);
    assert_eq!(messages[0]["altText"], "¥3,200のお買い物");
    assert_eq!(set.tracking_campaigns().collect::<Vec<_>>(), vec!["c"]);
}

#[test]
fn track_without_a_link_key_loads_but_does_not_render() {
    let template = r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [
      {"type": "text", "text": "{{track "https://shop.example/"}}"}]}}"#;
    let set = set_without_keys(template, "hi");
    assert_eq!(set.tracking_campaigns().collect::<Vec<_>>(), vec!["c"]);
    let error = set.render(set.get("c").unwrap(), &ctx(&Map::new(), None)).unwrap_err();
    assert!(error.to_string().contains("server.link_keys"), "{error}");
    assert_eq!(set_without_keys(ECHO, "hi").tracking_campaigns().count(), 0);
}

#[test]
fn a_missing_helper_argument_is_a_render_error() {
    let template = r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [
      {"type": "text", "text": "{{yen event.properties.amount}}"}]}}"#;
    let set = set_with(template, "a");
    let event = json!({"type": "purchase", "occurred_at": "2026-08-01T09:00:00+09:00", "properties": {}});
    let error = set.render(set.get("c").unwrap(), &ctx(&Map::new(), Some(&event))).unwrap_err();
    let RenderError::Template { template, message } = &error else { panic!("{error:?}") };
    assert_eq!(template, "t");
    assert!(message.contains("`yen`: argument `event.properties.amount` is missing"), "{message}");
    // Without an event at all: the same, not a panic.
    assert!(matches!(set.render(set.get("c").unwrap(), &ctx(&Map::new(), None)), Err(RenderError::Template { .. })));
}

#[test]
fn bad_helper_values_are_render_errors() {
    let template = r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [
      {"type": "text", "text": "{{yen member.points}} {{date member.birthday}}"}]}}"#;
    let set = set_with(template, "a");
    let c = set.get("c").unwrap();
    let member = json!({"points": "lots", "birthday": "1990-01-01"}).as_object().unwrap().clone();
    assert!(
        matches!(set.render(c, &ctx(&member, None)), Err(RenderError::Template { message, .. }) if message.contains("\"lots\" is not a number"))
    );
    let member = json!({"points": 5, "birthday": "yesterday"}).as_object().unwrap().clone();
    assert!(
        matches!(set.render(c, &ctx(&member, None)), Err(RenderError::Template { message, .. }) if message.contains("is not a time"))
    );
}

#[test]
fn an_unquoted_value_that_breaks_json_is_invalid_json() {
    // `0` keeps the sample render (no size) valid JSON.
    let template = r#"{"type": "bubble", "size": {{member.size}}0}"#;
    let set = set_with(template, "a");
    let member = json!({"size": "1, \"x\": 2"}).as_object().unwrap().clone();
    assert!(matches!(
        set.render(set.get("c").unwrap(), &ctx(&member, None)),
        Err(RenderError::InvalidJson { template, .. }) if template == "t"
    ));
}

#[test]
fn limits_are_checked() {
    let set = set_with(BUBBLE, "{{member.name}}");
    let member = json!({"name": "あ".repeat(1_501)}).as_object().unwrap().clone();
    let error = set.render(set.get("c").unwrap(), &ctx(&member, None)).unwrap_err();
    assert!(matches!(&error, RenderError::Limits(text) if text.contains("messages[0].altText")), "{error:?}");
    let member = json!({"name": "x".repeat(31 * 1024)}).as_object().unwrap().clone();
    let error = set.render(set.get("c").unwrap(), &ctx(&member, None)).unwrap_err();
    assert!(matches!(&error, RenderError::Limits(text) if text.contains("messages[0].contents")), "{error:?}");
    // An alt_text that renders empty is refused too.
    let member = json!({"name": ""}).as_object().unwrap().clone();
    assert!(matches!(set.render(set.get("c").unwrap(), &ctx(&member, None)), Err(RenderError::Limits(_))));
}

proptest! {
    #[test]
    fn any_member_strings_render_valid_json_that_round_trips(
        name in any::<String>(),
        city in "\\PC*",
        key in "[a-z]{1,8}",
        raw in prop::collection::vec(any::<char>(), 0..40),
    ) {
        let raw: String = raw.into_iter().collect();
        let set = set_with(ECHO, "{{member.name}}");
        let mut member = Map::new();
        member.insert("name".into(), Value::String(name.clone()));
        member.insert("nested".into(), json!({"city": city.clone()}));
        member.insert(key, Value::String(raw));
        match set.render(set.get("c").unwrap(), &ctx(&member, None)) {
            Ok(messages) => {
                let texts = texts(&messages);
                prop_assert_eq!(&texts[0], &name);
                prop_assert_eq!(&texts[2], &format!("{city}/"));
                prop_assert_eq!(messages[0]["altText"].as_str().unwrap(), name.as_str());
            }
            // Only LINE's limits may refuse (an empty or over-long altText), never the JSON.
            Err(RenderError::Limits(_)) => prop_assert!(name.is_empty() || name.chars().count() > 1_500),
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}

/// Templates that read different parts of the recipient's context (or what
/// the memo cannot follow), for the shared-render property below.
const SHARED_CASES: [(&str, &str); 6] = [
    (
        r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [{"type": "text", "text": "週末セール {{campaign.name}}"}]}}"#,
        "セール",
    ),
    (
        r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [{"type": "text", "text": "{{member.name}} {{yen member.points}}"}]}}"#,
        "{{member.name}}さん",
    ),
    (
        r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [{"type": "button", "action": {"type": "uri", "label": "見る", "uri": "{{track "https://example.com/sale"}}"}}]}}"#,
        "リンク",
    ),
    (
        r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [{"type": "text", "text": "{{event.type}} {{date now}}"}]}}"#,
        "{{line_user_id}}",
    ),
    (
        r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [{"type": "text", "text": "{{#with member}}{{name}}{{/with}}"}]}}"#,
        "x",
    ),
    (
        r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [{"type": "text", "text": "{{#if member.gold}}gold{{else}}{{campaign.id}}{{/if}}"}]}}"#,
        "y",
    ),
];

proptest! {
    /// Renders shared through a memo are exactly the renders made one by one,
    /// whatever the templates read and however the recipients repeat.
    #[test]
    fn shared_renders_equal_renders_one_by_one(
        case in 0..SHARED_CASES.len(),
        recipients in prop::collection::vec((0u8..4, 0u8..3, any::<bool>(), 0u8..3, 0u8..2), 1..30),
    ) {
        let (template_text, alt_text) = SHARED_CASES[case];
        let set = set_with(template_text, alt_text);
        let campaign = set.get("c").unwrap();
        let mut memo = renkei_campaigns::RenderMemo::default();
        for (name, user, gold, event, minute) in recipients {
            let member = json!({"name": format!("会員{name}"), "points": u32::from(name) * 1000, "gold": gold});
            let member = member.as_object().unwrap().clone();
            let event = json!({"type": format!("purchase{event}"), "properties": {}});
            let users = ["U7db3d96b0f76480d94a7ded5f234fb96", "U0000000000000000000000000000000a", "U0000000000000000000000000000000b"];
            let mut ctx = ctx(&member, Some(&event));
            ctx.line_user_id = Some(users[usize::from(user)]);
            ctx.now += chrono::Duration::minutes(i64::from(minute));
            let shared = set.render_step_shared(campaign, None, &ctx, &mut memo);
            prop_assert_eq!(shared.map(|m| (*m).clone()), set.render_step(campaign, None, &ctx).map(serde_json::Value::Array));
        }
    }
}

/// A fire loads member records only for campaigns whose messages may read
/// them: the template or the alt_text, directly or through what the reading
/// cannot follow (`{{#with member}}`).
#[test]
fn campaigns_say_whether_their_messages_read_the_member() {
    let reads = |case: usize| set_with(SHARED_CASES[case].0, SHARED_CASES[case].1).reads_member("c");
    assert!(!reads(0), "campaign name only");
    assert!(reads(1), "member.name in the template");
    assert!(!reads(2), "a tracked link names the user, not the member");
    assert!(!reads(3), "event, time and line_user_id");
    assert!(reads(4), "{{#with member}}");
    assert!(reads(5), "member.gold in a condition");
    let alt_only = set_with(SHARED_CASES[0].0, "{{member.name}}さん");
    assert!(alt_only.reads_member("c"), "member.name in the alt_text");
    assert!(set_with(SHARED_CASES[0].0, "x").reads_member("unknown"), "an unknown campaign is assumed to");
}

/// A fire renders once per page only for campaigns whose messages read
/// nothing of the recipient; for them, the render for any recipient is the
/// render for none.
#[test]
fn campaigns_say_whether_they_render_alike_for_everyone() {
    let alike = |case: usize| {
        let set = set_with(SHARED_CASES[case].0, SHARED_CASES[case].1);
        set.renders_alike(set.get("c").unwrap())
    };
    assert!(alike(0), "campaign name only");
    for case in 1..SHARED_CASES.len() {
        assert!(!alike(case), "case {case} reads the recipient");
    }
    let set = set_with(SHARED_CASES[0].0, "{{member.name}}さん");
    assert!(!set.renders_alike(set.get("c").unwrap()), "member.name in the alt_text");

    let set = set_with(SHARED_CASES[0].0, SHARED_CASES[0].1);
    let campaign = set.get("c").unwrap();
    let member = json!({"name": "会員"}).as_object().unwrap().clone();
    let someone = ctx(&member, None);
    let no_one = RenderContext { member_id: None, member: None, line_user_id: None, ..ctx(&member, None) };
    assert_eq!(set.render(campaign, &someone).unwrap(), set.render(campaign, &no_one).unwrap());
}
