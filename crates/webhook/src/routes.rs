//! `POST /webhook/line` (signed by LINE, no bearer key) and the `/v1` ID連携
//! routes `POST /v1/account-link/nonce` and `POST /v1/links/id-token`.

use crate::{MAX_API_BYTES, MAX_WEBHOOK_BYTES, NONCE_TTL, WebhookState, url_encode};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use chrono::SecondsFormat;
use rand::TryRngCore as _;
use renkei_api::{ApiError, ErrorCode, json_object, link_json};
use renkei_core::{FieldError, LineUserId, LinkMethod, MemberId, UserRef};
use renkei_line::{LineError, parse_webhook, verify_signature};
use renkei_store::webhook::NewWebhookEvent;
use renkei_store::{LinkOutcome, RelayBody};
use serde_json::{Map, Value, json};

/// Bytes of CSPRNG output in a nonce: 256 bits, 43 base64url characters.
const NONCE_BYTES: usize = 32;
/// LINE's link tokens are short; anything longer is not one.
const MAX_LINK_TOKEN_CHARS: usize = 512;
const MAX_ID_TOKEN_CHARS: usize = 8192;

/// `POST /webhook/line`. Mount without bearer auth: LINE signs the body.
pub fn public_router(state: WebhookState) -> Router {
    Router::new()
        .route("/webhook/line", post(webhook))
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
        .with_state(state)
}

/// `POST /v1/account-link/nonce` and `POST /v1/links/id-token`. The app
/// wraps these in its bearer-key layer.
pub fn api_router(state: WebhookState) -> Router {
    Router::new()
        .route("/v1/account-link/nonce", post(create_nonce))
        .route("/v1/links/id-token", post(link_by_id_token))
        .layer(DefaultBodyLimit::max(MAX_API_BYTES))
        .with_state(state)
}

async fn webhook(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(ApiError::from_body_rejection)?;
    let Some(signature) = headers.get("x-line-signature") else {
        return Err(ApiError::unauthorized("missing header x-line-signature"));
    };
    if state.config.channel_secret.is_empty() {
        // Unverifiable: refuse rather than accept unsigned input.
        tracing::error!("webhook refused: line.channel_secret is not configured");
        return Err(ApiError::new(ErrorCode::NotConfigured, "the LINE channel secret is not configured"));
    }
    // Compared in constant time over the raw bytes, before any parsing.
    let valid = signature.to_str().is_ok_and(|s| verify_signature(&state.config.channel_secret, &body, s));
    if !valid {
        tracing::warn!("webhook refused: bad signature");
        return Err(ApiError::unauthorized("x-line-signature does not match the body"));
    }
    let parsed = parse_webhook(&body).map_err(|e| ApiError::bad_json(e.to_string()))?;
    if parsed.events.is_empty() {
        // LINE's "Verify" call: it checks renkei's URL; not relayed (each
        // target's own URL is verified in its own channel settings).
        return Ok(Json(json!({"received": 0, "duplicates": 0})));
    }
    let events: Vec<NewWebhookEvent> = parsed
        .events
        .into_iter()
        .map(|e| NewWebhookEvent { webhook_event_id: e.webhook_event_id, event_type: e.event_type, body: e.raw })
        .collect();
    // LINE's own signature goes with the body to the relay's targets.
    let signature = signature.to_str().unwrap_or_default();
    let relay = RelayBody { body: &body, signature, targets: &state.config.relay_targets };
    let ids = state.store.inbox.accept_webhook(&events, Some(relay), state.clock.now()).await?;
    let received = ids.iter().flatten().count();
    let duplicates = ids.len() - received;
    if received > 0 {
        state.wake_worker();
        if !state.config.relay_targets.is_empty() {
            state.wake_relay();
        }
    }
    tracing::info!(received, duplicates, "webhook stored");
    Ok(Json(json!({"received": received, "duplicates": duplicates})))
}

/// Reads `member_id` and one token field, collecting every problem.
fn parse_body(
    body: &Map<String, Value>,
    token_field: &'static str,
    max_chars: usize,
) -> Result<(MemberId, String), ApiError> {
    let mut errors = Vec::new();
    for key in body.keys() {
        if key != "member_id" && key != token_field {
            errors.push(FieldError::new(key.clone(), format!("unknown field; expected member_id and {token_field}")));
        }
    }
    let member_id = renkei_core::required_string(body, "member_id", &mut errors);
    let token = renkei_core::required_string(body, token_field, &mut errors);
    let member_id = member_id
        .and_then(|t| MemberId::parse(&t).map_err(|e| errors.push(FieldError::new("member_id", e.to_string()))).ok());
    let token = token.and_then(|t| {
        let count = t.chars().count();
        if count == 0 || count > max_chars || t.chars().any(|c| c.is_control() || c.is_whitespace()) {
            errors.push(FieldError::new(
                token_field,
                format!("must be 1 to {max_chars} characters without spaces or control characters"),
            ));
            None
        } else {
            Some(t)
        }
    });
    match (member_id, token) {
        (Some(m), Some(t)) if errors.is_empty() => Ok((m, t)),
        _ => Err(ApiError::invalid_fields(errors)),
    }
}

/// A fresh nonce from the operating system's CSPRNG, base64url.
fn new_nonce() -> Result<String, ApiError> {
    let mut bytes = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes).map_err(|e| {
        tracing::error!(error = %e, "no randomness for a nonce");
        ApiError::new(ErrorCode::Unavailable, "cannot create a nonce now; retry later")
    })?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

async fn create_nonce(
    State(state): State<WebhookState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (member_id, link_token) = parse_body(&json_object(body)?, "link_token", MAX_LINK_TOKEN_CHARS)?;
    let nonce = new_nonce()?;
    let now = state.clock.now();
    let expires_at = now + NONCE_TTL;
    state.store.inbox.create_link_nonce(&nonce, &member_id, now, expires_at).await?;
    let redirect_url =
        format!("{}?linkToken={}&nonce={}", state.config.account_link_url, url_encode(&link_token), url_encode(&nonce));
    tracing::info!(member_id = %member_id, "account-link nonce issued");
    Ok(Json(json!({
        "redirect_url": redirect_url,
        "expires_at": expires_at.to_rfc3339_opts(SecondsFormat::Millis, true),
    })))
}

fn invalid_id_token(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidIdToken, message)
}

async fn link_by_id_token(
    State(state): State<WebhookState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (member_id, id_token) = parse_body(&json_object(body)?, "id_token", MAX_ID_TOKEN_CHARS)?;
    let channel_id = state.config.login_channel_id.as_str();
    let (Some(line), false) = (&state.line, channel_id.is_empty()) else {
        return Err(ApiError::new(
            ErrorCode::NotConfigured,
            "LINE Login is not configured (line.login_channel_id and the LINE API)",
        ));
    };
    let claims = match line.verify_id_token(&id_token, channel_id).await {
        Ok(claims) => claims,
        // LINE's message ("IdToken expired.", "Invalid IdToken Audience.", …) never echoes the token.
        Err(LineError::Rejected { message, .. }) => {
            tracing::info!(member_id = %member_id, reason = %message, "ID token refused by LINE");
            return Err(invalid_id_token(format!("LINE refused the ID token: {message}; nothing was linked")));
        }
        Err(e) if e.is_retryable() => {
            tracing::warn!(error = %e, "ID token verification unavailable");
            return Err(ApiError::new(ErrorCode::LineUnavailable, "LINE is unavailable; retry later"));
        }
        Err(e) => {
            tracing::error!(error = %e, "ID token verification failed");
            return Err(ApiError::new(ErrorCode::LineError, "LINE answered unexpectedly; nothing was linked"));
        }
    };
    // LINE checked the audience already; checking again costs nothing.
    if claims.aud != channel_id {
        return Err(invalid_id_token("the ID token was issued for another LINE Login channel"));
    }
    let Ok(line_user_id) = LineUserId::parse(&claims.sub) else {
        return Err(invalid_id_token("the ID token's subject is not a LINE user ID"));
    };
    match state.store.members.link(&member_id, &line_user_id, LinkMethod::IdToken, state.clock.now()).await? {
        LinkOutcome::Created(link) => {
            state.changes.users_changed(&[
                UserRef::LineUser(link.line_user_id.clone()),
                UserRef::Member(link.member_id.clone()),
            ]);
            tracing::info!(member_id = %link.member_id, line_user_id = %link.line_user_id, "linked by ID token");
            Ok((StatusCode::CREATED, Json(link_json(&link))).into_response())
        }
        LinkOutcome::AlreadyLinked(link) => Ok((StatusCode::OK, Json(link_json(&link))).into_response()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nonces_are_long_unpredictable_and_url_safe() {
        let a = new_nonce().unwrap();
        let b = new_nonce().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!((10..=255).contains(&a.len()));
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn bodies_report_every_bad_field() {
        let body = json!({"member_id": "", "link_token": 5, "extra": 1});
        let error = parse_body(body.as_object().unwrap(), "link_token", 10).unwrap_err();
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let fields: Vec<_> = error.fields.iter().map(|f| f.field.as_str()).collect();
        assert!(fields.contains(&"member_id") && fields.contains(&"link_token") && fields.contains(&"extra"));
        let ok = json!({"member_id": "m1", "link_token": "tok"});
        assert_eq!(parse_body(ok.as_object().unwrap(), "link_token", 10).unwrap().1, "tok");
    }
}
