//! Members: the company's customer records, keyed by `member_id`, with free
//! JSON attributes that are merged on update (`null` deletes a key).

use crate::event::FieldError;
use crate::ids::{LineUserId, MemberId};
use serde_json::{Map, Value};

/// An update to one member: attributes to merge, `null` values delete.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberPatch {
    pub member_id: MemberId,
    pub attributes: Map<String, Value>,
    /// Set by imports that carry a `line_user_id` column: also link the member.
    pub line_user_id: Option<LineUserId>,
}

const KNOWN_FIELDS: [&str; 3] = ["member_id", "attributes", "line_user_id"];

impl MemberPatch {
    /// Validates one member object (HTTP body item or NDJSON import line).
    /// `allow_line_user_id` is false for the HTTP API, where links have their own route.
    pub fn parse(value: &Value, allow_line_user_id: bool) -> Result<MemberPatch, Vec<FieldError>> {
        let Value::Object(object) = value else {
            return Err(vec![FieldError::new("", "expected an object")]);
        };
        let mut errors = Vec::new();
        for key in object.keys() {
            let allowed = KNOWN_FIELDS.contains(&key.as_str()) && (allow_line_user_id || key != "line_user_id");
            if !allowed {
                errors.push(FieldError::new(key.clone(), "unknown field"));
            }
        }
        let member_id = match object.get("member_id") {
            Some(Value::String(text)) => {
                MemberId::parse(text).map_err(|e| errors.push(FieldError::new("member_id", e.to_string()))).ok()
            }
            Some(_) => {
                errors.push(FieldError::new("member_id", "expected a string"));
                None
            }
            None => {
                errors.push(FieldError::new("member_id", "required"));
                None
            }
        };
        let attributes = match object.get("attributes") {
            None => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(_) => {
                errors.push(FieldError::new("attributes", "expected an object"));
                Map::new()
            }
        };
        let line_user_id = match object.get("line_user_id") {
            Some(Value::String(text)) if allow_line_user_id => {
                LineUserId::parse(text).map_err(|e| errors.push(FieldError::new("line_user_id", e.to_string()))).ok()
            }
            Some(Value::Null) | None => None,
            Some(_) if allow_line_user_id => {
                errors.push(FieldError::new("line_user_id", "expected a string"));
                None
            }
            Some(_) => None,
        };
        match member_id {
            Some(member_id) if errors.is_empty() => Ok(MemberPatch { member_id, attributes, line_user_id }),
            _ => Err(errors),
        }
    }
}

/// Merges `patch` into `current`: keys with `null` are removed, others replace.
pub fn merge_attributes(current: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        if value.is_null() {
            current.remove(key);
        } else {
            current.insert(key.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_replaces_adds_and_deletes() {
        let mut current = json!({"rank": "silver", "name": "花子", "old": 1}).as_object().cloned().expect("object");
        let patch = json!({"rank": "gold", "old": null, "points": 10}).as_object().cloned().expect("object");
        merge_attributes(&mut current, &patch);
        assert_eq!(Value::Object(current), json!({"rank": "gold", "name": "花子", "points": 10}));
    }

    #[test]
    fn parse_rejects_unknown_fields_and_bad_ids() {
        let errors = MemberPatch::parse(&json!({"member_id": "", "attrs": {}}), false).expect_err("bad");
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["attrs", "member_id"]);
        let errors = MemberPatch::parse(&json!({"member_id": "m", "line_user_id": "U0"}), false).expect_err("bad");
        assert_eq!(errors[0].field, "line_user_id");
        let ok =
            MemberPatch::parse(&json!({"member_id": "m", "line_user_id": "U4af4980629a0b7a1fd4a3c1bb0d7d9c0"}), true)
                .expect("valid");
        assert!(ok.line_user_id.is_some());
    }
}
