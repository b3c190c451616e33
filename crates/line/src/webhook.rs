//! Webhook signature verification and event parsing.
//!
//! Parsing is deliberately tolerant: LINE adds event types and fields over
//! time, and SDK fixtures omit fields that newer deliveries carry. Only the
//! envelope (`destination`, `events`) is required; every event is kept with
//! its raw JSON, and anything renkei does not understand becomes
//! [`EventKind::Other`] instead of an error.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use renkei_core::ids::LineUserId;
use serde_json::{Map, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// `base64(HMAC-SHA256(channel_secret, raw_body))`, the value LINE puts in
/// `x-line-signature`.
pub fn sign(channel_secret: &str, raw_body: &[u8]) -> String {
    STANDARD.encode(mac(channel_secret, raw_body))
}

fn mac(channel_secret: &str, raw_body: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this never fails; the fallback keeps
    // the function total without a panic path.
    let Ok(mut mac) = HmacSha256::new_from_slice(channel_secret.as_bytes()) else {
        return [0; 32];
    };
    mac.update(raw_body);
    mac.finalize().into_bytes().into()
}

/// Checks an `x-line-signature` header against the raw request body.
///
/// The header is decoded and the digests compared in constant time, so the
/// comparison leaks nothing about how much of a forged signature was right.
pub fn verify_signature(channel_secret: &str, raw_body: &[u8], header: &str) -> bool {
    let Ok(given) = STANDARD.decode(header.trim()) else {
        return false;
    };
    let expected = mac(channel_secret, raw_body);
    given.len() == expected.len() && bool::from(given.ct_eq(&expected))
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("webhook body must be a JSON object")]
    NotAnObject,
    #[error("webhook body lacks the string field `destination`")]
    MissingDestination,
    #[error("webhook body lacks the array field `events`")]
    MissingEvents,
}

/// A webhook request body. `events` is empty for LINE's "Verify" call.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookBody {
    /// The bot's user ID that received the events.
    pub destination: String,
    pub events: Vec<WebhookEvent>,
}

/// One webhook event: the fields common to all types, the typed part renkei
/// acts on, and the raw JSON for storage.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    /// The `type` as sent (`follow`, `message`, …, or a type unknown to us).
    pub event_type: String,
    /// Milliseconds since the Unix epoch; 0 when LINE left it out.
    pub timestamp: i64,
    /// `active` or `standby`.
    pub mode: Option<String>,
    /// Absent on a failed `accountLink` event.
    pub source: Option<Source>,
    pub reply_token: Option<String>,
    /// Stable across redeliveries: the dedupe key. Older payloads lack it.
    pub webhook_event_id: Option<String>,
    /// `deliveryContext.isRedelivery`.
    pub is_redelivery: Option<bool>,
    pub kind: EventKind,
    /// The event exactly as received.
    pub raw: Value,
}

impl WebhookEvent {
    /// The user ID in `source`, as sent (not format-checked).
    pub fn user_id(&self) -> Option<&str> {
        self.source.as_ref().and_then(Source::user_id)
    }

    /// The source user as a valid [`LineUserId`], if it is one.
    pub fn line_user_id(&self) -> Option<LineUserId> {
        self.user_id().and_then(|id| LineUserId::parse(id).ok())
    }
}

/// Where an event came from. User IDs are kept as sent: old fixtures use
/// IDs that are not in the `U` + 32 hex format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    User {
        user_id: Option<String>,
    },
    Group {
        group_id: String,
        user_id: Option<String>,
    },
    Room {
        room_id: String,
        user_id: Option<String>,
    },
    /// A source type we do not know; its `type` is kept.
    Other {
        source_type: String,
        user_id: Option<String>,
    },
}

impl Source {
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Source::User { user_id }
            | Source::Group { user_id, .. }
            | Source::Room { user_id, .. }
            | Source::Other { user_id, .. } => user_id.as_deref(),
        }
    }
}

/// The part of an event renkei acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    /// `follow.isUnblocked` is `Some(true)` when a user unblocked the account.
    Follow {
        is_unblocked: Option<bool>,
    },
    /// The user blocked the account: never message them.
    Unfollow,
    Message(MessageContent),
    Postback {
        data: String,
        params: Option<Map<String, Value>>,
    },
    AccountLink {
        result: LinkResult,
        nonce: Option<String>,
    },
    /// Any other type (join, beacon, a future type …), or a known type whose
    /// payload was malformed; see [`WebhookEvent::raw`].
    Other,
}

/// The message of a `message` event. Only what renkei uses is typed.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageContent {
    pub id: Option<String>,
    /// `text`, `image`, `sticker`, … or a type unknown to us.
    pub message_type: String,
    /// Present for text messages (and some stickers).
    pub text: Option<String>,
    /// Marks the user's messages read (`POST /v2/bot/chat/markAsRead`);
    /// LINE sends it when the channel marks messages read manually.
    pub mark_as_read_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkResult {
    Ok,
    Failed,
    /// A value LINE may add later.
    Other(String),
}

/// Parses a webhook body. Fails only when the envelope is unusable; events
/// of unknown or malformed shape are kept as [`EventKind::Other`].
pub fn parse_webhook(raw: &[u8]) -> Result<WebhookBody, WebhookError> {
    let value: Value = serde_json::from_slice(raw)?;
    let Value::Object(mut object) = value else {
        return Err(WebhookError::NotAnObject);
    };
    let destination = match object.get("destination") {
        Some(Value::String(d)) => d.clone(),
        _ => return Err(WebhookError::MissingDestination),
    };
    let events = match object.remove("events") {
        Some(Value::Array(events)) => events,
        _ => return Err(WebhookError::MissingEvents),
    };
    Ok(WebhookBody { destination, events: events.into_iter().map(parse_event).collect() })
}

fn str_field(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_string)
}

fn parse_event(raw: Value) -> WebhookEvent {
    let event_type = str_field(&raw, "type").unwrap_or_default();
    let kind = match event_type.as_str() {
        "follow" => EventKind::Follow {
            is_unblocked: raw.get("follow").and_then(|f| f.get("isUnblocked")).and_then(Value::as_bool),
        },
        "unfollow" => EventKind::Unfollow,
        "message" => match raw.get("message") {
            Some(message) if message.is_object() => EventKind::Message(MessageContent {
                id: str_field(message, "id"),
                message_type: str_field(message, "type").unwrap_or_default(),
                text: str_field(message, "text"),
                mark_as_read_token: str_field(message, "markAsReadToken"),
            }),
            _ => EventKind::Other,
        },
        "postback" => match raw.get("postback").and_then(|p| p.get("data")).and_then(Value::as_str) {
            Some(data) => EventKind::Postback {
                data: data.to_string(),
                params: raw.get("postback").and_then(|p| p.get("params")).and_then(Value::as_object).cloned(),
            },
            None => EventKind::Other,
        },
        "accountLink" => match raw.get("link").and_then(|l| l.get("result")).and_then(Value::as_str) {
            Some(result) => EventKind::AccountLink {
                result: match result {
                    "ok" => LinkResult::Ok,
                    "failed" => LinkResult::Failed,
                    other => LinkResult::Other(other.to_string()),
                },
                nonce: raw.get("link").and_then(|l| str_field(l, "nonce")),
            },
            None => EventKind::Other,
        },
        _ => EventKind::Other,
    };
    WebhookEvent {
        timestamp: raw.get("timestamp").and_then(Value::as_i64).unwrap_or(0),
        mode: str_field(&raw, "mode"),
        source: raw.get("source").and_then(parse_source),
        reply_token: str_field(&raw, "replyToken"),
        webhook_event_id: str_field(&raw, "webhookEventId"),
        is_redelivery: raw.get("deliveryContext").and_then(|d| d.get("isRedelivery")).and_then(Value::as_bool),
        event_type,
        kind,
        raw,
    }
}

fn parse_source(source: &Value) -> Option<Source> {
    let source_type = str_field(source, "type")?;
    let user_id = str_field(source, "userId");
    Some(match source_type.as_str() {
        "user" => Source::User { user_id },
        "group" => Source::Group { group_id: str_field(source, "groupId").unwrap_or_default(), user_id },
        "room" => Source::Room { room_id: str_field(source, "roomId").unwrap_or_default(), user_id },
        _ => Source::Other { source_type, user_id },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::PathBuf;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/line-fixtures")
    }

    #[test]
    fn every_signature_vector_gives_its_labelled_result() {
        let text = std::fs::read_to_string(fixtures().join("signature-vectors.json")).unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let vectors = doc["vectors"].as_array().unwrap();
        assert!(vectors.len() >= 7);
        for v in vectors {
            let body = match (v.get("body"), v.get("body_file")) {
                (Some(Value::String(b)), _) => b.as_bytes().to_vec(),
                (_, Some(Value::String(f))) => std::fs::read(fixtures().join(f)).unwrap(),
                _ => panic!("vector without body: {v}"),
            };
            let secret = v["channel_secret"].as_str().unwrap();
            let header = v["x_line_signature"].as_str().unwrap();
            let valid = v["valid"].as_bool().unwrap();
            assert_eq!(verify_signature(secret, &body, header), valid, "{}", v["source"]);
            if valid {
                assert_eq!(sign(secret, &body), header);
            }
        }
    }

    #[test]
    fn signature_rejects_garbage_and_other_secrets() {
        let body = br#"{"destination":"U8e742f61d673b39c7fff3cecb7536ef0","events":[]}"#;
        let good = sign("8c570fa6dd201bb328f1c1eac23a96d8", body);
        assert!(verify_signature("8c570fa6dd201bb328f1c1eac23a96d8", body, &good));
        assert!(!verify_signature("other", body, &good));
        assert!(!verify_signature("8c570fa6dd201bb328f1c1eac23a96d8", b"x", &good));
        for bad in ["", "!!!", "AAAA", &good[..good.len() - 4]] {
            assert!(!verify_signature("8c570fa6dd201bb328f1c1eac23a96d8", body, bad));
        }
    }

    #[test]
    fn every_webhook_fixture_parses() {
        let mut count = 0;
        for entry in std::fs::read_dir(fixtures().join("webhook")).unwrap() {
            let path = entry.unwrap().path();
            let raw = std::fs::read(&path).unwrap();
            let body = parse_webhook(&raw).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!body.destination.is_empty(), "{}", path.display());
            assert!(!body.events.is_empty(), "{}", path.display());
            for event in &body.events {
                assert!(!event.event_type.is_empty());
                assert!(event.raw.is_object());
            }
            count += 1;
        }
        assert!(count >= 7);
    }

    #[test]
    fn python_fixture_events_are_typed() {
        let raw = std::fs::read(fixtures().join("webhook/python-sdk-v3-webhook-all-events.json")).unwrap();
        let body = parse_webhook(&raw).unwrap();
        assert_eq!(body.destination, "U123");
        assert_eq!(body.events.len(), 28);
        let first = &body.events[0];
        assert_eq!(first.timestamp, 1_462_629_479_859);
        assert_eq!(first.webhook_event_id.as_deref(), Some("testwebhookeventid"));
        assert_eq!(first.is_redelivery, Some(false));
        assert_eq!(first.mode.as_deref(), Some("active"));
        assert_eq!(first.reply_token.as_deref(), Some("nHuyWiB7yP5Zw52FIkcQobQuGDXCTA"));
        assert_eq!(first.line_user_id().map(|u| u.into_string()).as_deref(), Some("U206d25c2ea6bd87c17655609a1c37cb8"));
        assert_eq!(
            first.kind,
            EventKind::Message(MessageContent {
                id: Some("325708".into()),
                message_type: "text".into(),
                text: Some("Hello, world".into()),
                mark_as_read_token: None,
            })
        );
        let by_type = |t: &'static str| body.events.iter().filter(move |e| e.event_type == t);
        let follow = by_type("follow").next().unwrap();
        assert_eq!(follow.kind, EventKind::Follow { is_unblocked: Some(true) });
        assert_eq!(by_type("unfollow").next().unwrap().kind, EventKind::Unfollow);
        let link = by_type("accountLink").next().unwrap();
        assert_eq!(
            link.kind,
            EventKind::AccountLink { result: LinkResult::Ok, nonce: Some("Vb771wDYtXuammLszK6h9A".into()) }
        );
        let postbacks: Vec<_> = by_type("postback").collect();
        assert_eq!(postbacks.len(), 4);
        match &postbacks[0].kind {
            EventKind::Postback { data, params } => {
                assert_eq!(data, "action=buyItem&itemId=123123&color=red");
                assert_eq!(params.as_ref().unwrap()["datetime"], "2017-12-25T01:00");
            }
            other => panic!("{other:?}"),
        }
        // Unknown event type and non-text message types still parse.
        let unknown = by_type("undefined").next().unwrap();
        assert_eq!(unknown.kind, EventKind::Other);
        assert_eq!(unknown.raw["undefinedField"]["1"], 1);
        assert!(matches!(&body.events[1].kind, EventKind::Message(m) if m.message_type == "image" && m.text.is_none()));
        assert!(
            matches!(&body.events[1].source, Some(Source::Room { room_id, user_id: None }) if room_id.starts_with('R'))
        );
        let joined = by_type("join").next().unwrap();
        assert!(matches!(&joined.source, Some(Source::Group { .. })));
        assert_eq!(joined.user_id(), None);
    }

    #[test]
    fn java_fixtures_tolerate_missing_fields_and_lowercase_ids() {
        let raw = std::fs::read(fixtures().join("webhook/java-sdk-follow.json")).unwrap();
        let body = parse_webhook(&raw).unwrap();
        let e = &body.events[0];
        assert_eq!(e.kind, EventKind::Follow { is_unblocked: None });
        assert_eq!(e.webhook_event_id, None);
        assert_eq!(e.is_redelivery, None);
        assert_eq!(e.user_id(), Some("u206d25c2ea6bd87c17655609a1c37cb8"));
        assert_eq!(e.line_user_id(), None);

        let raw = std::fs::read(fixtures().join("webhook/java-sdk-webhook-redelivery.json")).unwrap();
        let e = &parse_webhook(&raw).unwrap().events[0];
        assert_eq!(e.is_redelivery, Some(true));
        assert_eq!(e.webhook_event_id.as_deref(), Some("01G2KZKG2DS765NMRH3GZFD8AP"));

        let raw = std::fs::read(fixtures().join("webhook/java-sdk-postback.json")).unwrap();
        let e = &parse_webhook(&raw).unwrap().events[0];
        assert!(matches!(&e.kind, EventKind::Postback { params: Some(p), .. } if p.is_empty()));
    }

    #[test]
    fn failed_account_link_has_no_source() {
        let raw = br#"{"destination":"Uab","events":[{"type":"accountLink","mode":"active","timestamp":1,
            "webhookEventId":"01H","deliveryContext":{"isRedelivery":false},
            "link":{"result":"failed","nonce":"abc"}}]}"#;
        let e = &parse_webhook(raw).unwrap().events[0];
        assert_eq!(e.kind, EventKind::AccountLink { result: LinkResult::Failed, nonce: Some("abc".into()) });
        assert_eq!(e.source, None);
        assert_eq!(e.reply_token, None);
    }

    #[test]
    fn empty_events_and_bad_envelopes() {
        let body = parse_webhook(br#"{"destination":"U1","events":[]}"#).unwrap();
        assert!(body.events.is_empty());
        assert!(matches!(parse_webhook(b"not json"), Err(WebhookError::Json(_))));
        assert!(matches!(parse_webhook(b"[]"), Err(WebhookError::NotAnObject)));
        assert!(matches!(parse_webhook(br#"{"events":[]}"#), Err(WebhookError::MissingDestination)));
        assert!(matches!(parse_webhook(br#"{"destination":"U1"}"#), Err(WebhookError::MissingEvents)));
        // Malformed events never fail the body.
        let body = parse_webhook(br#"{"destination":"U1","events":[1,{"type":"message"},{"type":"postback","postback":{}},{"type":"follow","source":{"type":"x"}}]}"#).unwrap();
        assert_eq!(body.events.len(), 4);
        assert!(body.events[..3].iter().all(|e| e.kind == EventKind::Other));
        assert_eq!(body.events[3].source, Some(Source::Other { source_type: "x".into(), user_id: None }));
    }
}
