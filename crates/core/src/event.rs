//! First-party events (purchases, cart additions, visits, reservations…) and
//! their validation. Validation reports every problem with the field it is
//! in, so a client can fix a whole batch in one go.

use crate::ids::{EventId, EventType, LineUserId, MemberId};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

/// A validated event, ready to store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventId>,
    #[serde(rename = "type")]
    pub event_type: EventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_id: Option<MemberId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_user_id: Option<LineUserId>,
    pub occurred_at: DateTime<Utc>,
    pub properties: Map<String, Value>,
}

/// One problem in one field of one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// A [`FieldError`] located in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemError {
    pub index: usize,
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }

    pub fn at(self, index: usize) -> ItemError {
        ItemError { index, field: self.field, message: self.message }
    }
}

/// The string in `body[field]`; otherwise records why not ("required" or
/// "expected a string") in `errors`, so a body's problems are reported together.
pub fn required_string(body: &Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match body.get(field) {
        Some(Value::String(text)) => Some(text.clone()),
        Some(_) => {
            errors.push(FieldError::new(field, "expected a string"));
            None
        }
        None => {
            errors.push(FieldError::new(field, "required"));
            None
        }
    }
}

const KNOWN_FIELDS: [&str; 6] = ["event_id", "type", "member_id", "line_user_id", "occurred_at", "properties"];

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field<'a>(object: &'a Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<&'a str> {
    match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text),
        Some(other) => {
            errors.push(FieldError::new(field, format!("expected a string, got {}", type_name(other))));
            None
        }
    }
}

/// Parses an RFC 3339 timestamp that must carry an explicit offset (`Z` or `+09:00`).
pub fn parse_rfc3339_with_offset(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|_| {
        format!("expected an RFC 3339 timestamp with offset, like 2026-11-23T10:00:00+09:00 (got {text:?})")
    })
}

impl NewEvent {
    /// Validates one event as sent over HTTP or in an NDJSON line.
    pub fn parse(value: &Value) -> Result<NewEvent, Vec<FieldError>> {
        let Value::Object(object) = value else {
            return Err(vec![FieldError::new("", format!("expected an object, got {}", type_name(value)))]);
        };
        let mut errors = Vec::new();
        for key in object.keys() {
            if !KNOWN_FIELDS.contains(&key.as_str()) {
                errors.push(FieldError::new(
                    key.clone(),
                    format!("unknown field; expected one of {}", KNOWN_FIELDS.join(", ")),
                ));
            }
        }
        let event_id = string_field(object, "event_id", &mut errors)
            .and_then(|t| EventId::parse(t).map_err(|e| errors.push(FieldError::new("event_id", e.to_string()))).ok());
        let event_type = match string_field(object, "type", &mut errors) {
            Some(t) => EventType::parse(t).map_err(|e| errors.push(FieldError::new("type", e.to_string()))).ok(),
            None => {
                if !errors.iter().any(|e| e.field == "type") {
                    errors.push(FieldError::new("type", "required"));
                }
                None
            }
        };
        let member_id = string_field(object, "member_id", &mut errors).and_then(|t| {
            MemberId::parse(t).map_err(|e| errors.push(FieldError::new("member_id", e.to_string()))).ok()
        });
        let line_user_id = string_field(object, "line_user_id", &mut errors).and_then(|t| {
            LineUserId::parse(t).map_err(|e| errors.push(FieldError::new("line_user_id", e.to_string()))).ok()
        });
        let user_fields_ok = !errors.iter().any(|e| e.field == "member_id" || e.field == "line_user_id");
        if member_id.is_none() && line_user_id.is_none() && user_fields_ok {
            errors.push(FieldError::new("member_id", "at least one of member_id and line_user_id is required"));
        }
        let occurred_at = match string_field(object, "occurred_at", &mut errors) {
            Some(t) => parse_rfc3339_with_offset(t).map_err(|m| errors.push(FieldError::new("occurred_at", m))).ok(),
            None => {
                if !errors.iter().any(|e| e.field == "occurred_at") {
                    errors.push(FieldError::new("occurred_at", "required"));
                }
                None
            }
        };
        let properties = match object.get("properties") {
            None | Some(Value::Null) => Some(Map::new()),
            Some(Value::Object(map)) => Some(map.clone()),
            Some(other) => {
                errors.push(FieldError::new("properties", format!("expected an object, got {}", type_name(other))));
                None
            }
        };
        match (event_type, occurred_at, properties) {
            (Some(event_type), Some(occurred_at), Some(properties)) if errors.is_empty() => {
                Ok(NewEvent { event_id, event_type, member_id, line_user_id, occurred_at, properties })
            }
            _ => Err(errors),
        }
    }
}

/// Validates a whole batch: every event or none.
pub fn parse_event_batch(values: &[Value]) -> Result<Vec<NewEvent>, Vec<ItemError>> {
    let mut events = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    for (index, value) in values.iter().enumerate() {
        match NewEvent::parse(value) {
            Ok(event) => events.push(event),
            Err(field_errors) => errors.extend(field_errors.into_iter().map(|e| e.at(index))),
        }
    }
    if errors.is_empty() { Ok(events) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> Vec<String> {
        NewEvent::parse(&value).expect_err("should be invalid").into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn parses_a_full_event() {
        let event = NewEvent::parse(&json!({
            "event_id": "ord-1", "type": "purchase", "member_id": "m1",
            "line_user_id": "U4af4980629a0b7a1fd4a3c1bb0d7d9c0",
            "occurred_at": "2026-11-23T10:00:00+09:00", "properties": {"amount": 1200}
        }))
        .expect("valid");
        assert_eq!(event.occurred_at.to_rfc3339(), "2026-11-23T01:00:00+00:00");
        assert_eq!(event.properties["amount"], json!(1200));
        assert_eq!(event.event_type.as_str(), "purchase");
    }

    #[test]
    fn reports_each_bad_field() {
        assert_eq!(fields(json!({"member_id": "m", "occurred_at": "2026-11-23T10:00:00Z"})), ["type"]);
        assert_eq!(fields(json!({"type": "x", "member_id": "m"})), ["occurred_at"]);
        assert_eq!(
            fields(json!({"type": "x", "member_id": "m", "occurred_at": "2026-11-23T10:00:00"})),
            ["occurred_at"]
        );
        assert_eq!(fields(json!({"type": "x", "occurred_at": "2026-11-23T10:00:00Z"})), ["member_id"]);
        assert_eq!(fields(json!({"type": 5, "member_id": "m", "occurred_at": "2026-11-23T10:00:00Z"})), ["type"]);
        assert_eq!(
            fields(json!({"type": "x", "member_id": "m", "occurred_at": "2026-11-23T10:00:00Z", "colour": 1})),
            ["colour"]
        );
        assert_eq!(
            fields(json!({"type": "x", "line_user_id": "Ubad", "occurred_at": "2026-11-23T10:00:00Z"})),
            ["line_user_id"]
        );
        assert_eq!(
            fields(json!({"type": "x", "member_id": "m", "occurred_at": "2026-11-23T10:00:00Z", "properties": [1]})),
            ["properties"]
        );
        assert_eq!(fields(json!([1, 2])), [""]);
    }

    #[test]
    fn batch_is_all_or_nothing_with_indexes() {
        let ok = json!({"type": "x", "member_id": "m", "occurred_at": "2026-11-23T10:00:00Z"});
        let bad = json!({"type": "X", "member_id": "m", "occurred_at": "2026-11-23T10:00:00Z"});
        let errors = parse_event_batch(&[ok.clone(), bad, ok]).expect_err("one bad item");
        assert_eq!(errors.len(), 1);
        assert_eq!((errors[0].index, errors[0].field.as_str()), (1, "type"));
    }
}
