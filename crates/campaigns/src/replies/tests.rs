#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use chrono::{DateTime, Utc};
use std::fs;

const MEMBER_CARD: &str = r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [
  {"type": "text", "text": "{{member.name}}さん ({{member.rank}})"},
  {"type": "image", "url": "{{member_code_url}}"}
]}}"#;

fn segments() -> SegmentSet {
    SegmentSet::from_sources(vec![(
        PathBuf::from("gold.yaml"),
        "id: gold\nname: gold\nrule: { attribute: rank, eq: gold }\n".to_string(),
    )])
    .expect("segments")
}

/// A replies directory with `files` and a templates directory with `templates`.
fn load(files: &[(&str, &str)], templates: &[(&str, &str)]) -> Result<ReplySet, Vec<Diagnostic>> {
    let dir = tempfile::tempdir().unwrap();
    let replies = dir.path().join("replies");
    let template_dir = dir.path().join("templates");
    fs::create_dir_all(&replies).unwrap();
    fs::create_dir_all(&template_dir).unwrap();
    for (name, text) in files {
        fs::write(replies.join(name), text).unwrap();
    }
    for (name, text) in templates {
        fs::write(template_dir.join(format!("{name}.json.hbs")), text).unwrap();
    }
    let result = ReplySet::load(&replies, &template_dir, &segments());
    // Diagnostics name files by their full path; keep just the file name.
    result.map_err(|diagnostics| {
        diagnostics
            .into_iter()
            .map(|mut d| {
                d.file = PathBuf::from(d.file.file_name().unwrap());
                d
            })
            .collect()
    })
}

fn messages(diagnostics: &[Diagnostic]) -> Vec<String> {
    diagnostics.iter().map(ToString::to_string).collect()
}

#[test]
fn normalization_makes_widths_and_case_alike() {
    assert_eq!(normalize("ｐｏｉｎｔ"), "point");
    assert_eq!(normalize(" POINT "), "point");
    assert_eq!(normalize("ﾎﾟｲﾝﾄ"), "ポイント");
    assert_eq!(normalize("ポイント"), "ポイント");
    assert_eq!(normalize("会員証"), "会員証");
    assert_eq!(normalize("１２３"), "123");
}

fn rule(id: &str, matches: ReplyMatch) -> ReplyRule {
    ReplyRule {
        id: id.into(),
        file: PathBuf::from(format!("{id}.yaml")),
        matches,
        when: ReplyConditions::default(),
        reply: vec![ReplyMessage::Text { text: "ok".into() }],
        unlinked_reply: None,
    }
}

fn text(mode: TextMatch, pattern: &str) -> ReplyMatch {
    ReplyMatch::Text { mode, pattern: normalize(pattern) }
}

#[test]
fn each_match_mode_compares_normalized_text() {
    let equals = rule("equals", text(TextMatch::Equals, "会員証"));
    let prefix = rule("prefix", text(TextMatch::Prefix, "point"));
    let contains = rule("contains", text(TextMatch::Contains, "ポイント"));
    let postback = rule("postback", ReplyMatch::Postback { action: "points".into() });
    let set = ReplySet { rules: vec![equals, prefix, contains, postback], ..ReplySet::default() };
    let ids = |input: Incoming<'_>| set.candidates(&input).iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(Incoming::Text("会員証")), ["equals"]);
    assert_eq!(ids(Incoming::Text("会員証を見せて")), Vec::<String>::new(), "equals is not contains");
    assert_eq!(ids(Incoming::Text("ＰＯＩＮＴ残高")), ["prefix"]);
    assert_eq!(ids(Incoming::Text("my point")), Vec::<String>::new(), "prefix is at the start");
    assert_eq!(ids(Incoming::Text("今のﾎﾟｲﾝﾄは？")), ["contains"]);
    assert_eq!(ids(Incoming::Postback("x=1&action=points")), ["postback"]);
    assert_eq!(ids(Incoming::Postback("action=pointsx")), Vec::<String>::new());
    assert_eq!(ids(Incoming::Text("action=points")), Vec::<String>::new(), "a text never matches a postback rule");
}

#[test]
fn conditions_pick_the_answer_or_pass_to_the_next_rule() {
    let none = BTreeSet::new();
    let gold: BTreeSet<String> = ["gold".to_string()].into();
    let mut linked_only = rule("linked_only", text(TextMatch::Contains, "x"));
    linked_only.when.linked = Some(true);
    let mut with_unlinked = linked_only.clone();
    with_unlinked.id = "with_unlinked".into();
    with_unlinked.unlinked_reply = Some(vec![ReplyMessage::Text { text: "link first".into() }]);
    let mut gold_only = rule("gold_only", text(TextMatch::Contains, "x"));
    gold_only.when.segment = Some("gold".into());
    let mut unlinked_only = rule("unlinked_only", text(TextMatch::Contains, "x"));
    unlinked_only.when.linked = Some(false);
    let fallback = rule("fallback", text(TextMatch::Contains, "x"));

    let pick = |rules: &[&ReplyRule], linked: bool, segments: &BTreeSet<String>| {
        ReplySet::choose(rules, &UserFacts { linked, segments }).map(|c| (c.rule.id.clone(), c.answer))
    };
    assert_eq!(pick(&[&linked_only], true, &none), Some(("linked_only".into(), Answer::Reply)));
    assert_eq!(pick(&[&linked_only], false, &none), Some(("linked_only".into(), Answer::LinkPrompt)));
    assert_eq!(pick(&[&with_unlinked], false, &none), Some(("with_unlinked".into(), Answer::UnlinkedReply)));
    assert_eq!(pick(&[&gold_only, &fallback], true, &none), Some(("fallback".into(), Answer::Reply)));
    assert_eq!(pick(&[&gold_only, &fallback], true, &gold), Some(("gold_only".into(), Answer::Reply)));
    assert_eq!(pick(&[&unlinked_only, &fallback], true, &none), Some(("fallback".into(), Answer::Reply)));
    assert_eq!(pick(&[&unlinked_only], false, &none), Some(("unlinked_only".into(), Answer::Reply)));
    assert_eq!(pick(&[&gold_only], true, &none), None);
}

#[test]
fn rules_load_in_file_name_order_and_render_for_a_member() {
    let set = load(
        &[
            (
                "20_card.yaml",
                "id: card\nmatch: { text: { equals: 会員証 } }\nwhen: { linked: true }\nreply:\n  - template: member_card\n    alt_text: \"{{member.name}}さんの会員証\"\n",
            ),
            ("10_points.yaml", "id: points\nmatch: { text: { contains: ﾎﾟｲﾝﾄ } }\nreply:\n  - text: \"{{member.name}}さんは{{member.points}}ポイントです\"\nunlinked_reply:\n  - text: 連携してください\n"),
        ],
        &[("member_card", MEMBER_CARD)],
    )
    .expect("valid");
    assert_eq!(set.rules().iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["points", "card"]);
    assert!(set.uses_member_code());
    let mut member = Map::new();
    member.insert("name".into(), json!("佐藤 \"花子\""));
    member.insert("rank".into(), json!("gold"));
    member.insert("points".into(), json!(250));
    let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
    let ctx = RenderContext {
        member_id: Some("M1"),
        member: Some(&member),
        line_user_id: Some("U00000000000000000000000000000001"),
        trigger_key: None,
        event: None,
        now,
        timezone: chrono_tz::Asia::Tokyo,
        public_base_url: "https://r.example",
    };
    let mut extras = Map::new();
    extras.insert(MEMBER_CODE_URL.into(), json!("https://r.example/member-code/abc"));
    let facts = UserFacts { linked: true, segments: &BTreeSet::new() };
    let candidates = set.candidates(&Incoming::Text("会員証"));
    let choice = ReplySet::choose(&candidates, &facts).unwrap();
    let card = set.render(&choice, &ctx, &extras).unwrap();
    assert_eq!(card[0]["altText"], "佐藤 \"花子\"さんの会員証");
    assert_eq!(card[0]["contents"]["body"]["contents"][0]["text"], "佐藤 \"花子\"さん (gold)");
    assert_eq!(card[0]["contents"]["body"]["contents"][1]["url"], "https://r.example/member-code/abc");

    let candidates = set.candidates(&Incoming::Text("ポイント"));
    let points = ReplySet::choose(&candidates, &facts).unwrap();
    assert_eq!(
        set.render(&points, &ctx, &extras).unwrap(),
        vec![json!({"type": "text", "text": "佐藤 \"花子\"さんは250ポイントです"})]
    );
    let unlinked = UserFacts { linked: false, segments: &BTreeSet::new() };
    let choice = ReplySet::choose(&candidates, &unlinked).unwrap();
    assert_eq!(set.render(&choice, &ctx, &extras).unwrap(), vec![json!({"type": "text", "text": "連携してください"})]);
    let card_rules = set.candidates(&Incoming::Text("会員証"));
    let prompt = ReplySet::choose(&card_rules, &unlinked).unwrap();
    assert_eq!(prompt.answer, Answer::LinkPrompt);
    let rendered = set.render(&prompt, &ctx, &extras).unwrap();
    assert_eq!(rendered[0]["quickReply"]["items"][0]["action"]["data"], LINK_ACTION_DATA);
}

#[test]
fn mistakes_are_reported_at_file_line_col() {
    let errors = load(
        &[
            ("a.yaml", "id: a\nmatch: { text: { equal: x } }\nreply: [ { text: hi } ]\n"),
            ("b.yaml", "id: b\nmatch: { postback: { action: link } }\nreply: [ { text: hi } ]\n"),
            ("c.yaml", "id: c\nmatch: { text: { equals: x } }\nwhen: { segment: silver }\nreply: [ { text: x } ]\n"),
            ("f.yaml", "id: f\nmatch: { text: { equals: x } }\nreply: [ { template: nope, alt_text: x }, { text: \"{{#if x}}\" } ]\n"),
            ("d.yaml", "id: a\nmatch: { text: { equals: \"  \" } }\nreply: [ { text: \"{{#if x}}\" } ]\n"),
            ("e.yaml", "id: e\nmatch: { text: { prefix: x }, postback: { action: y } }\nreply: []\n"),
        ],
        &[],
    )
    .expect_err("invalid");
    let text = messages(&errors).join("\n");
    for expected in [
        "a.yaml:2:18: unknown key `equal` in `match.text`",
        "b.yaml:2:30: postback action `link` is renkei's own",
        "c.yaml:3:18: unknown segment `silver`",
        "f.yaml:3:22: unknown template `nope`",
        "f.yaml:3:51: invalid template:",
        "d.yaml:2:26: the text to match must not be empty",
        "d.yaml:1:5: duplicate reply rule id `a` (already defined at",
        "e.yaml:2:8: `match` needs exactly one of `text` or `postback`",
        "e.yaml:3:8: `reply` has 1 to 5 messages, found 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn flex_templates_are_checked_like_campaign_templates() {
    let errors = load(
        &[("a.yaml", "id: a\nmatch: { text: { equals: x } }\nreply: [ { template: bad, alt_text: x } ]\n")],
        &[("bad", "{\"type\": \"bubble\", \"body\": {{{member.name}}} }")],
    )
    .expect_err("invalid");
    assert!(messages(&errors).iter().any(|m| m.starts_with("bad.json.hbs:1:28: triple braces")), "{errors:?}");
}

#[test]
fn a_missing_directory_is_no_rules() {
    let set = ReplySet::load(Path::new("/nonexistent/replies"), Path::new("/nonexistent"), &segments()).unwrap();
    assert!(set.is_empty());
    assert!(set.candidates(&Incoming::Text("anything")).is_empty());
}
