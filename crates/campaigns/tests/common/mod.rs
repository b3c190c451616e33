#![allow(dead_code, clippy::unwrap_used)]

use renkei_segments::SegmentSet;
use std::path::PathBuf;

pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

pub fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../templates")
}

/// The shipped segments.
pub fn shipped_segments() -> SegmentSet {
    SegmentSet::load_dir(config_dir().join("segments")).unwrap()
}

/// A small set of segments for error tests.
pub fn segments() -> SegmentSet {
    SegmentSet::from_sources([
        (
            PathBuf::from("seg/gold.yaml"),
            "id: gold_members\nname: G\nrule:\n  attribute: rank\n  eq: gold\n".to_string(),
        ),
        (PathBuf::from("seg/cart.yaml"), "id: cart_abandoners\nname: C\nrule:\n  event: cart_add\n".to_string()),
        (
            PathBuf::from("seg/bday.yaml"),
            "id: birthday_today\nname: B\nrule:\n  anniversary: birthday\n  today: true\n".to_string(),
        ),
    ])
    .unwrap()
}

pub const BUBBLE: &str = r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [{"type": "text", "text": "{{member.name}}さん"}]}}"#;

pub fn template(name: &str, text: &str) -> (String, PathBuf, String) {
    (name.to_string(), PathBuf::from(format!("templates/{name}.json.hbs")), text.to_string())
}
