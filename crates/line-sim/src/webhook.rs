//! Sends signed webhook events to the configured target, as LINE does.

use crate::state::Shared;
use crate::{SimError, server};
use rand::Rng;
use renkei_core::ids::LineUserId;
use renkei_line::webhook::{LinkResult, sign};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

/// One webhook POST the simulator made.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    /// The target's HTTP status.
    pub status: u16,
    /// The exact body sent (what `x-line-signature` signs).
    pub body: String,
    pub signature: String,
    /// The events sent, in order.
    pub events: Vec<Value>,
}

impl WebhookDelivery {
    pub fn webhook_event_ids(&self) -> Vec<String> {
        self.events.iter().filter_map(|e| e["webhookEventId"].as_str().map(str::to_string)).collect()
    }
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID (48-bit millisecond time + 80 random bits, Crockford base32), the
/// format LINE uses for `webhookEventId`.
pub fn ulid() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0) & ((1u128 << 48) - 1);
    let random: u128 = rand::rng().random::<u128>() & ((1u128 << 80) - 1);
    let value = (ms << 80) | random;
    (0..26).map(|i| char::from(CROCKFORD[((value >> (5 * (25 - i))) & 31) as usize])).collect()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The fields every event carries; `user` None = no source (failed link).
pub(crate) fn base_event(shared: &Shared, event_type: &str, user: Option<&LineUserId>, reply_token: bool) -> Value {
    let mut event = json!({
        "type": event_type,
        "mode": "active",
        "timestamp": now_ms(),
        "webhookEventId": ulid(),
        "deliveryContext": { "isRedelivery": false },
    });
    if let Some(user) = user {
        event["source"] = json!({ "type": "user", "userId": user.as_str() });
    }
    if reply_token {
        let token = server::random_token(32);
        shared.lock().reply_tokens.insert(token.clone(), user.map(|u| u.as_str().to_string()));
        event["replyToken"] = json!(token);
    }
    event
}

pub(crate) fn follow(shared: &Shared, user: &LineUserId, is_unblocked: bool) -> Value {
    let mut event = base_event(shared, "follow", Some(user), true);
    event["follow"] = json!({ "isUnblocked": is_unblocked });
    event
}

pub(crate) fn unfollow(shared: &Shared, user: &LineUserId) -> Value {
    base_event(shared, "unfollow", Some(user), false)
}

pub(crate) fn postback(shared: &Shared, user: &LineUserId, data: &str) -> Value {
    let mut event = base_event(shared, "postback", Some(user), true);
    event["postback"] = json!({ "data": data });
    event
}

pub(crate) fn message(shared: &Shared, user: &LineUserId, text: &str) -> Value {
    let mut event = base_event(shared, "message", Some(user), true);
    let read_token = server::random_token(40);
    shared.lock().read_tokens.insert(read_token.clone(), user.as_str().to_string());
    event["message"] = json!({
        "id": ulid_digits(),
        "type": "text",
        "text": text,
        "quoteToken": server::random_token(40),
        "markAsReadToken": read_token,
    });
    event
}

fn ulid_digits() -> String {
    let mut rng = rand::rng();
    (0..18).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect()
}

pub(crate) fn account_link(shared: &Shared, user: &LineUserId, result: &LinkResult, nonce: &str) -> Value {
    let result = match result {
        LinkResult::Ok => "ok",
        LinkResult::Failed => "failed",
        LinkResult::Other(other) => other.as_str(),
    };
    // A failed link carries neither source nor reply token.
    let ok = result == "ok";
    let mut event = base_event(shared, "accountLink", ok.then_some(user), ok);
    event["link"] = json!({ "result": result, "nonce": nonce });
    event
}

/// Posts `events` in one signed body to the webhook target.
pub(crate) async fn deliver(shared: &Shared, events: Vec<Value>) -> Result<WebhookDelivery, SimError> {
    let url = shared.lock().webhook_url.clone().ok_or(SimError::NoWebhookTarget)?;
    let body = serde_json::to_string(&json!({ "destination": shared.bot_user_id, "events": events }))
        .map_err(|e| SimError::Webhook(e.to_string()))?;
    let signature = sign(&shared.channel_secret, body.as_bytes());
    let response = shared
        .http
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .header("x-line-signature", &signature)
        .header("user-agent", "LineBotWebhook/2.0")
        .body(body.clone())
        .send()
        .await
        .map_err(|e| SimError::Webhook(e.to_string()))?;
    Ok(WebhookDelivery { status: response.status().as_u16(), body, signature, events })
}

/// The same events again, marked as a redelivery (same `webhookEventId`).
pub(crate) fn as_redelivery(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .cloned()
        .map(|mut e| {
            e["deliveryContext"] = json!({ "isRedelivery": true });
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_are_26_crockford_chars_and_unique() {
        let a = ulid();
        let b = ulid();
        assert_eq!(a.len(), 26);
        assert!(a.bytes().all(|c| CROCKFORD.contains(&c)));
        assert_ne!(a, b);
    }
}
