//! LINE's request limits and a validator for message objects.
//!
//! The simulator answers 400 from exactly this check, and the dispatcher can
//! run it before sending, so a message that would be refused is failed
//! early with the same property paths LINE reports.

use crate::client::ErrorDetail;
use serde_json::Value;

/// Messages per request.
pub const MAX_MESSAGES: usize = 5;
/// Recipients of one multicast; users of one bulk rich-menu call.
pub const MAX_RECIPIENTS: usize = 500;
/// `altText` of a Flex message, in characters.
pub const ALT_TEXT_MAX_CHARS: usize = 1_500;
/// A text message's `text`, in characters.
pub const TEXT_MAX_CHARS: usize = 5_000;
/// Serialized JSON of one bubble (30 KB, counted as KiB to be safe).
pub const FLEX_BUBBLE_MAX_BYTES: usize = 30 * 1024;
/// Serialized JSON of one carousel (50 KB, counted as KiB).
pub const FLEX_CAROUSEL_MAX_BYTES: usize = 50 * 1024;
/// Bubbles in one carousel.
pub const FLEX_CAROUSEL_MAX_BUBBLES: usize = 12;

const MESSAGE_TYPES: [&str; 10] =
    ["text", "textV2", "sticker", "image", "video", "audio", "location", "imagemap", "template", "flex"];

fn detail(property: impl Into<String>, message: impl Into<String>) -> ErrorDetail {
    ErrorDetail { message: Some(message.into()), property: Some(property.into()) }
}

/// Whether `id` is a user ID (`U` + 32 lowercase hex).
pub fn is_user_id(id: &str) -> bool {
    is_id_with_prefix(id, b'U')
}

/// Whether `id` is a push target: a user, group (`C…`) or room (`R…`) ID.
pub fn is_push_target(id: &str) -> bool {
    is_id_with_prefix(id, b'U') || is_id_with_prefix(id, b'C') || is_id_with_prefix(id, b'R')
}

fn is_id_with_prefix(id: &str, prefix: u8) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 33
        && bytes[0] == prefix
        && bytes[1..].iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Checks the `messages` array of a send request; returns LINE-style
/// details (empty = valid).
pub fn validate_messages(messages: Option<&Value>) -> Vec<ErrorDetail> {
    let mut out = Vec::new();
    let Some(messages) = messages else {
        out.push(detail("messages", "must be specified"));
        return out;
    };
    let Some(list) = messages.as_array() else {
        out.push(detail("messages", "must be an array"));
        return out;
    };
    if list.is_empty() || list.len() > MAX_MESSAGES {
        out.push(detail("messages", format!("Size must be between 1 and {MAX_MESSAGES}")));
        return out;
    }
    for (i, message) in list.iter().enumerate() {
        validate_message(&format!("messages[{i}]"), message, &mut out);
    }
    out
}

fn validate_message(path: &str, message: &Value, out: &mut Vec<ErrorDetail>) {
    let Some(kind) = message.get("type").and_then(Value::as_str) else {
        out.push(detail(format!("{path}.type"), "must be specified"));
        return;
    };
    if !MESSAGE_TYPES.contains(&kind) {
        out.push(detail(
            format!("{path}.type"),
            format!("Must be one of the following values: [{}]", MESSAGE_TYPES.join(", ")),
        ));
        return;
    }
    match kind {
        "text" => match message.get("text").and_then(Value::as_str) {
            None => out.push(detail(format!("{path}.text"), "must be specified")),
            Some(text) => {
                let n = text.chars().count();
                if n == 0 || n > TEXT_MAX_CHARS {
                    out.push(detail(format!("{path}.text"), format!("Length must be between 1 and {TEXT_MAX_CHARS}")));
                }
            }
        },
        "flex" => validate_flex(path, message, out),
        // Other types are passed through: renkei does not build them.
        _ => {}
    }
}

fn validate_flex(path: &str, message: &Value, out: &mut Vec<ErrorDetail>) {
    match message.get("altText").and_then(Value::as_str) {
        None => out.push(detail(format!("{path}.altText"), "must be specified")),
        Some(alt) => {
            let n = alt.chars().count();
            if n == 0 || n > ALT_TEXT_MAX_CHARS {
                out.push(detail(
                    format!("{path}.altText"),
                    format!("Length must be between 1 and {ALT_TEXT_MAX_CHARS}"),
                ));
            }
        }
    }
    let contents_path = format!("{path}.contents");
    let Some(contents) = message.get("contents").filter(|c| c.is_object()) else {
        out.push(detail(contents_path, "must be specified"));
        return;
    };
    let size = serde_json::to_vec(contents).map(|v| v.len()).unwrap_or(usize::MAX);
    match contents.get("type").and_then(Value::as_str) {
        Some("bubble") => {
            if size > FLEX_BUBBLE_MAX_BYTES {
                out.push(detail(
                    contents_path,
                    format!("Size of bubble must be at most {FLEX_BUBBLE_MAX_BYTES} bytes"),
                ));
            }
        }
        Some("carousel") => {
            let bubbles = contents.get("contents").and_then(Value::as_array);
            match bubbles {
                Some(b) if !b.is_empty() && b.len() <= FLEX_CAROUSEL_MAX_BUBBLES => {
                    for (i, bubble) in b.iter().enumerate() {
                        let bubble_size = serde_json::to_vec(bubble).map(|v| v.len()).unwrap_or(usize::MAX);
                        if bubble.get("type").and_then(Value::as_str) != Some("bubble") {
                            out.push(detail(format!("{contents_path}.contents[{i}].type"), "must be bubble"));
                        } else if bubble_size > FLEX_BUBBLE_MAX_BYTES {
                            out.push(detail(
                                format!("{contents_path}.contents[{i}]"),
                                format!("Size of bubble must be at most {FLEX_BUBBLE_MAX_BYTES} bytes"),
                            ));
                        }
                    }
                }
                _ => out.push(detail(
                    format!("{contents_path}.contents"),
                    format!("Size must be between 1 and {FLEX_CAROUSEL_MAX_BUBBLES}"),
                )),
            }
            if size > FLEX_CAROUSEL_MAX_BYTES {
                out.push(detail(
                    contents_path,
                    format!("Size of carousel must be at most {FLEX_CAROUSEL_MAX_BYTES} bytes"),
                ));
            }
        }
        _ => {
            out.push(detail(format!("{contents_path}.type"), "Must be one of the following values: [bubble, carousel]"))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn flex_fixture(name: &str) -> Value {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/line-fixtures/flex").join(name);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn official_flex_samples_are_valid() {
        for name in ["java-sdk-Shopping.json", "java-sdk-Receipt.json", "java-sdk-Hotel.json"] {
            let contents = flex_fixture(name);
            let messages = json!([{"type": "flex", "altText": "sample", "contents": contents}]);
            assert_eq!(validate_messages(Some(&messages)), vec![], "{name}");
        }
    }

    #[test]
    fn limits_are_enforced_with_property_paths() {
        let text = json!({"type": "text", "text": "hi"});
        assert!(validate_messages(Some(&json!([text, text, text, text, text]))).is_empty());
        let six = json!([text, text, text, text, text, text]);
        assert_eq!(validate_messages(Some(&six))[0].property.as_deref(), Some("messages"));
        assert!(!validate_messages(Some(&json!([]))).is_empty());
        assert!(!validate_messages(None).is_empty());

        let long_alt = "あ".repeat(ALT_TEXT_MAX_CHARS + 1);
        let bubble = json!({"type": "bubble"});
        let d = validate_messages(Some(&json!([{"type":"flex","altText": long_alt, "contents": bubble}])));
        assert_eq!(d[0].property.as_deref(), Some("messages[0].altText"));
        let ok_alt = "あ".repeat(ALT_TEXT_MAX_CHARS);
        assert!(validate_messages(Some(&json!([{"type":"flex","altText": ok_alt, "contents": bubble}]))).is_empty());

        let big = json!({"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [{"type": "text", "text": "x".repeat(FLEX_BUBBLE_MAX_BYTES)}]}});
        let d = validate_messages(Some(&json!([{"type":"flex","altText":"a","contents": big}])));
        assert_eq!(d[0].property.as_deref(), Some("messages[0].contents"));

        let thirteen: Vec<Value> = (0..13).map(|_| json!({"type":"bubble"})).collect();
        let d = validate_messages(Some(
            &json!([{"type":"flex","altText":"a","contents":{"type":"carousel","contents": thirteen}}]),
        ));
        assert_eq!(d[0].property.as_deref(), Some("messages[0].contents.contents"));

        // 12 bubbles of ~5 KB each: every bubble fits, the carousel does not.
        let fat = json!({"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [{"type": "text", "text": "x".repeat(5_000)}]}});
        let twelve: Vec<Value> = (0..12).map(|_| fat.clone()).collect();
        let d = validate_messages(Some(
            &json!([{"type":"flex","altText":"a","contents":{"type":"carousel","contents": twelve}}]),
        ));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].property.as_deref(), Some("messages[0].contents"));

        let d = validate_messages(Some(&json!([{"type":"nope"}])));
        assert_eq!(d[0].property.as_deref(), Some("messages[0].type"));
    }

    #[test]
    fn id_formats() {
        assert!(is_user_id("U4af4980629a0b7a1fd4a3c1bb0d7d9c0"));
        assert!(!is_user_id("u4af4980629a0b7a1fd4a3c1bb0d7d9c0"));
        assert!(!is_user_id("U4af4980629a0b7a1fd4a3c1bb0d7d9c"));
        assert!(is_push_target("Ca56f94637cc4347f90a25382909b24b9"));
        assert!(!is_user_id("Ca56f94637cc4347f90a25382909b24b9"));
    }
}
