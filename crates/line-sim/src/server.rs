//! HTTP routes of the simulator, answering like the Messaging API and LINE
//! Login do (status codes, bodies and headers per the official OpenAPI).

use crate::config::Endpoint;
use crate::id_token;
use crate::state::{LinkTokenInfo, RecordedRequest, Shared};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::FormRejection;
use axum::extract::{DefaultBodyLimit, Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use rand::distr::Alphanumeric;
use renkei_line::client::{ErrorDetail, MONTHLY_LIMIT_MESSAGE, RATE_LIMIT_MESSAGE};
use renkei_line::limits::{self, MAX_RECIPIENTS, is_push_target, is_user_id};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::Notify;

pub(crate) type AppState = Arc<Shared>;

/// Per-connection signal: notifying it makes the connection task drop the
/// socket without answering.
#[derive(Clone)]
pub(crate) struct DropConnection(pub Arc<Notify>);

/// LINE's 409 body for a retry key that was already accepted.
pub const RETRY_KEY_ACCEPTED_MESSAGE: &str = "The retry key is already accepted";
/// LINE caps request bodies at 2 MB.
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2/bot/message/push", post(push))
        .route("/v2/bot/message/multicast", post(multicast))
        .route("/v2/bot/message/reply", post(reply))
        .route("/v2/bot/chat/loading/start", post(loading_start))
        .route("/v2/bot/chat/markAsRead", post(mark_as_read))
        .route("/v2/bot/message/quota", get(quota))
        .route("/v2/bot/message/quota/consumption", get(consumption))
        .route("/v2/bot/insight/message/event/aggregation", get(statistics_per_unit))
        .route("/v2/bot/user/{user_id}/linkToken", post(link_token))
        .route("/v2/bot/profile/{user_id}", get(profile))
        .route("/v2/bot/user/all/richmenu", get(default_rich_menu).delete(cancel_default_rich_menu))
        .route("/v2/bot/user/all/richmenu/{rich_menu_id}", post(set_default_rich_menu))
        .route("/v2/bot/user/{user_id}/richmenu", get(rich_menu_of_user).delete(unlink_rich_menu))
        .route("/v2/bot/user/{user_id}/richmenu/{rich_menu_id}", post(link_rich_menu))
        .route("/v2/bot/richmenu/bulk/link", post(bulk_link))
        .route("/v2/bot/richmenu/bulk/unlink", post(bulk_unlink))
        .route("/v2/bot/richmenu/list", get(rich_menu_list))
        .route("/oauth2/v2.1/verify", post(verify_id_token))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

pub(crate) fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-line-request-id", value);
    }
    response
}

fn error_response(status: StatusCode, message: &str, details: Vec<ErrorDetail>) -> Response {
    let body = if details.is_empty() {
        json!({ "message": message })
    } else {
        json!({ "message": message, "details": details })
    };
    with_request_id((status, axum::Json(body)).into_response(), &new_request_id())
}

async fn not_found(State(state): State<AppState>) -> Response {
    state.lock().counters.not_found += 1;
    error_response(StatusCode::NOT_FOUND, "Not found", vec![])
}

/// A parsed retry key, checked by [`gate`].
struct Gate {
    retry_key: Option<uuid::Uuid>,
}

/// What every API request goes through before its own logic: latency,
/// bearer auth, the rate limit, retry-key rules and injected 5xx.
async fn gate(state: &Shared, endpoint: Endpoint, headers: &HeaderMap, bearer: bool) -> Result<Gate, Response> {
    let latency = state.lock().faults.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if bearer {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let reason = match token {
            None | Some("") => Some("no token"),
            Some(t) if !state.tokens.iter().any(|known| known == t) => Some("invalid token"),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            state.lock().counters.unauthorized += 1;
            let message = format!(
                "Authentication failed due to the following reason: {reason}. Confirm that the access token in the authorization header is valid."
            );
            return Err(error_response(StatusCode::UNAUTHORIZED, &message, vec![]));
        }
    }
    let now = Instant::now();
    let (allowed, error_rate) = {
        let mut inner = state.lock();
        let allowed = inner.take_rate(endpoint, now);
        if !allowed {
            inner.counters.rate_limited += 1;
        }
        (allowed, inner.faults.error_rate)
    };
    if !allowed {
        return Err(error_response(StatusCode::TOO_MANY_REQUESTS, RATE_LIMIT_MESSAGE, vec![]));
    }
    let retry_key = match headers.get("x-line-retry-key") {
        None => None,
        Some(_) if !endpoint.accepts_retry_key() => {
            state.lock().counters.bad_request += 1;
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "The X-Line-Retry-Key header cannot be used with this API",
                vec![],
            ));
        }
        Some(value) => match value.to_str().ok().and_then(|v| uuid::Uuid::try_parse(v.trim()).ok()) {
            Some(key) => Some(key),
            None => {
                state.lock().counters.bad_request += 1;
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "The value of the X-Line-Retry-Key header is invalid",
                    vec![ErrorDetail {
                        message: Some("must be a UUID in hexadecimal format".into()),
                        property: Some("X-Line-Retry-Key".into()),
                    }],
                ));
            }
        },
    };
    if chance(error_rate) {
        state.lock().counters.injected_errors += 1;
        return Err(error_response(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error (injected)", vec![]));
    }
    Ok(Gate { retry_key })
}

fn chance(rate: f64) -> bool {
    // random_bool panics outside [0, 1]; NaN and out-of-range rates are clamped.
    if rate.is_nan() || rate <= 0.0 {
        return false;
    }
    rand::rng().random_bool(rate.min(1.0))
}

// The error is the ready answer, returned at once; its size does not matter.
#[allow(clippy::result_large_err)]
fn parse_json(state: &Shared, body: &[u8]) -> Result<Value, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) if value.is_object() => Ok(value),
        Ok(_) => Err(bad_request(state, "The request body must be a JSON object", vec![])),
        Err(e) => Err(bad_request(
            state,
            &format!("The request body could not be parsed as JSON (line: {}, column: {})", e.line(), e.column()),
            vec![],
        )),
    }
}

fn bad_request(state: &Shared, message: &str, details: Vec<ErrorDetail>) -> Response {
    state.lock().counters.bad_request += 1;
    error_response(StatusCode::BAD_REQUEST, message, details)
}

fn invalid_body(state: &Shared, details: Vec<ErrorDetail>) -> Response {
    let message = format!("The request body has {} error(s)", details.len());
    bad_request(state, &message, details)
}

fn detail(property: impl Into<String>, message: impl Into<String>) -> ErrorDetail {
    ErrorDetail { message: Some(message.into()), property: Some(property.into()) }
}

/// How a send request ends once validated.
enum SendKind {
    Push,
    Multicast,
    Reply,
}

async fn push(
    State(state): State<AppState>,
    Extension(conn): Extension<DropConnection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    send(state, conn, headers, body, SendKind::Push).await
}

async fn multicast(
    State(state): State<AppState>,
    Extension(conn): Extension<DropConnection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    send(state, conn, headers, body, SendKind::Multicast).await
}

async fn reply(
    State(state): State<AppState>,
    Extension(conn): Extension<DropConnection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    send(state, conn, headers, body, SendKind::Reply).await
}

async fn send(state: AppState, conn: DropConnection, headers: HeaderMap, body: Bytes, kind: SendKind) -> Response {
    let endpoint = match kind {
        SendKind::Push => Endpoint::Push,
        SendKind::Multicast => Endpoint::Multicast,
        SendKind::Reply => Endpoint::Reply,
    };
    let gate = match gate(&state, endpoint, &headers, true).await {
        Ok(gate) => gate,
        Err(response) => return response,
    };
    let body = match parse_json(&state, &body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut details = Vec::new();
    let recipients = recipients_of(&kind, &body, &mut details);
    details.extend(limits::validate_messages(body.get("messages")));
    let unit = aggregation_unit(&kind, &body, &mut details);
    if !details.is_empty() {
        return invalid_body(&state, details);
    }
    let messages = body.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
    let request_uuid = uuid::Uuid::new_v4();
    let request_id = request_uuid.to_string();
    let reached = unit.as_ref().map(|_| recipients.clone());
    let taken = Taken { endpoint, request_uuid, request_id: request_id.clone(), recipients };
    let dropped = match take_send(&state, &gate, &kind, &body, &messages, taken) {
        Ok(dropped) => dropped,
        Err(response) => return response,
    };
    if let (Some(unit), Some(reached)) = (unit, reached) {
        state.lock().unit_users.entry(unit).or_default().extend(reached);
    }
    if dropped {
        // Accepted, but the client never hears so: it must retry with the
        // same key and get 409.
        conn.0.notify_one();
        std::future::pending::<()>().await;
    }
    let body = sent_body(&kind, &messages);
    with_request_id((StatusCode::OK, axum::Json(body)).into_response(), &request_id)
}

/// `customAggregationUnits` of a push or multicast (messaging-api.yml: at
/// most 1 name of `^[a-zA-Z0-9_]{1,30}$`): the unit, with a detail when invalid.
fn aggregation_unit(kind: &SendKind, body: &Value, details: &mut Vec<ErrorDetail>) -> Option<String> {
    let value = body.get("customAggregationUnits")?;
    let property = "customAggregationUnits";
    if matches!(kind, SendKind::Reply) {
        details.push(detail(property, "not allowed for this API"));
        return None;
    }
    let Some(items) = value.as_array() else {
        details.push(detail(property, "must be an array"));
        return None;
    };
    if items.len() > 1 {
        details.push(detail(property, "size must be between 0 and 1"));
        return None;
    }
    let name = items.first()?;
    match name.as_str() {
        Some(unit) if is_unit_name(unit) => Some(unit.to_string()),
        _ => {
            details.push(detail(format!("{property}[0]"), "must match \"^[a-zA-Z0-9_]{1,30}$\""));
            None
        }
    }
}

/// `^[a-zA-Z0-9_]{1,30}$`.
fn is_unit_name(text: &str) -> bool {
    !text.is_empty() && text.len() <= 30 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The recipients a send names, with a detail for each invalid one.
fn recipients_of(kind: &SendKind, body: &Value, details: &mut Vec<ErrorDetail>) -> Vec<String> {
    match kind {
        SendKind::Push => match body.get("to").and_then(Value::as_str) {
            Some(to) if is_push_target(to) => vec![to.to_string()],
            Some(_) => {
                details.push(detail("to", "The value must be a valid user, group or room ID"));
                Vec::new()
            }
            None => {
                details.push(detail("to", "must be specified"));
                Vec::new()
            }
        },
        SendKind::Multicast => user_ids(body, "to", details),
        SendKind::Reply => {
            match body.get("replyToken").and_then(Value::as_str) {
                Some(token) if !token.is_empty() => {}
                _ => details.push(detail("replyToken", "must be specified")),
            }
            Vec::new()
        }
    }
}

/// A valid send request, about to be taken.
struct Taken {
    endpoint: Endpoint,
    request_uuid: uuid::Uuid,
    request_id: String,
    recipients: Vec<String>,
}

/// Takes a valid send under the state's lock: the retry key (409 when it was
/// accepted before), the reply token or the quota, then records it. `Ok(true)`
/// when the fault injection drops the answer.
// The error is the handler's early answer, as in `gate` and `parse_json`.
#[allow(clippy::result_large_err)]
fn take_send(
    state: &AppState,
    gate: &Gate,
    kind: &SendKind,
    body: &Value,
    messages: &[Value],
    taken: Taken,
) -> Result<bool, Response> {
    let Taken { endpoint, request_uuid, request_id, recipients } = taken;
    let now = Instant::now();
    let mut inner = state.lock();
    if let Some(key) = &gate.retry_key {
        if let Some(accepted) = inner.accepted_key(key, now) {
            inner.counters.conflicts += 1;
            drop(inner);
            let mut response = error_response(StatusCode::CONFLICT, RETRY_KEY_ACCEPTED_MESSAGE, vec![]);
            if let Ok(value) = HeaderValue::from_str(&accepted) {
                response.headers_mut().insert("x-line-accepted-request-id", value);
            }
            return Err(response);
        }
    }
    let mut recipients = recipients;
    if let SendKind::Reply = kind {
        let token = body.get("replyToken").and_then(Value::as_str).unwrap_or_default();
        // Reply tokens are single use; tokens the webhook sender did not
        // issue are accepted once too, so tests can reply without it.
        match inner.reply_tokens.get(token) {
            Some(None) => {
                inner.counters.bad_request += 1;
                drop(inner);
                return Err(error_response(StatusCode::BAD_REQUEST, "Invalid reply token", vec![]));
            }
            Some(Some(user)) => recipients = vec![user.clone()],
            None => {}
        }
        inner.reply_tokens.insert(token.to_string(), None);
    } else {
        // Quota counts one message per recipient, whatever the number of
        // message objects; replies are free.
        let cost = recipients.len() as u64;
        if let Some(quota) = inner.quota {
            if inner.usage.saturating_add(cost) > quota {
                inner.counters.monthly_limited += 1;
                drop(inner);
                return Err(error_response(StatusCode::TOO_MANY_REQUESTS, MONTHLY_LIMIT_MESSAGE, vec![]));
            }
        }
        inner.usage = inner.usage.saturating_add(cost);
    }
    if let Some(key) = &gate.retry_key {
        inner.retry_keys.insert(*key, (request_uuid, now));
    }
    let dropped = chance(inner.faults.drop_rate);
    if dropped {
        inner.counters.dropped += 1;
    } else {
        inner.counters.accepted += 1;
    }
    inner.record(RecordedRequest {
        endpoint,
        request_id,
        retry_key: gate.retry_key.map(|k| k.hyphenated().to_string()),
        recipients,
        messages: messages.to_vec(),
        rich_menu_id: None,
        at: SystemTime::now(),
        dropped,
    });
    Ok(dropped)
}

/// LINE's answer to an accepted send.
fn sent_body(kind: &SendKind, messages: &[Value]) -> Value {
    match kind {
        SendKind::Multicast => json!({}),
        SendKind::Push | SendKind::Reply => {
            let sent: Vec<Value> = messages
                .iter()
                .map(|m| {
                    let mut sent = json!({ "id": random_digits(18) });
                    if matches!(
                        m.get("type").and_then(Value::as_str),
                        Some("text" | "textV2" | "sticker" | "image" | "video")
                    ) {
                        sent["quoteToken"] = json!(random_token(40));
                    }
                    sent
                })
                .collect();
            json!({ "sentMessages": sent })
        }
    }
}

fn random_digits(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect()
}

pub(crate) fn random_token(n: usize) -> String {
    rand::rng().sample_iter(Alphanumeric).take(n).map(char::from).collect()
}

/// Records an accepted non-send request and answers with a request ID.
fn accept(
    state: &Shared,
    endpoint: Endpoint,
    recipients: Vec<String>,
    rich_menu_id: Option<String>,
    status: StatusCode,
    body: Value,
) -> Response {
    let request_id = new_request_id();
    {
        let mut inner = state.lock();
        inner.counters.accepted += 1;
        inner.record(RecordedRequest {
            endpoint,
            request_id: request_id.clone(),
            retry_key: None,
            recipients,
            messages: Vec::new(),
            rich_menu_id,
            at: SystemTime::now(),
            dropped: false,
        });
    }
    with_request_id((status, axum::Json(body)).into_response(), &request_id)
}

async fn quota(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(response) = gate(&state, Endpoint::Quota, &headers, true).await {
        return response;
    }
    let body = match state.lock().quota {
        Some(value) => json!({ "type": "limited", "value": value }),
        None => json!({ "type": "none" }),
    };
    accept(&state, Endpoint::Quota, vec![], None, StatusCode::OK, body)
}

async fn consumption(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(response) = gate(&state, Endpoint::QuotaConsumption, &headers, true).await {
        return response;
    }
    let usage = state.lock().usage;
    accept(&state, Endpoint::QuotaConsumption, vec![], None, StatusCode::OK, json!({ "totalUsage": usage }))
}

/// `GET /v2/bot/insight/message/event/aggregation` (insight.yml): the
/// users a unit's sends reached, times the configured shares, null below 20
/// as LINE answers. The period is checked (`yyyyMMdd`, at most 30 days) but
/// every send of the unit counts.
async fn statistics_per_unit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(response) = gate(&state, Endpoint::StatisticsPerUnit, &headers, true).await {
        return response;
    }
    let unit = query.get("customAggregationUnit").map(String::as_str).unwrap_or_default();
    let date = |key: &str| {
        query.get(key).filter(|t| t.len() == 8).and_then(|t| chrono::NaiveDate::parse_from_str(t, "%Y%m%d").ok())
    };
    let mut details = Vec::new();
    if !is_unit_name(unit) {
        details.push(detail("customAggregationUnit", "must match \"^[a-zA-Z0-9_]{1,30}$\""));
    }
    match (date("from"), date("to")) {
        (Some(from), Some(to)) if to >= from && to <= from + chrono::Duration::days(30) => {}
        (Some(_), Some(_)) => details.push(detail("to", "must be on or after from, and at most 30 days after it")),
        (from, to) => {
            for (key, value) in [("from", from), ("to", to)] {
                if value.is_none() {
                    details.push(detail(key, "must be a date in the format yyyyMMdd"));
                }
            }
        }
    }
    if !details.is_empty() {
        return invalid_body(&state, details);
    }
    let (users, (impressions, clicks)) = {
        let inner = state.lock();
        (inner.unit_users.get(unit).map_or(0, |u| u.len()), inner.unit_shares)
    };
    // LINE answers null when fewer than 20 users did it.
    let at_least_20 = |share: f64| {
        let n = (users as f64 * share).floor() as u64;
        if n < 20 { Value::Null } else { json!(n) }
    };
    let body = json!({
        "overview": {"uniqueImpression": at_least_20(impressions), "uniqueClick": at_least_20(clicks),
                     "uniqueMediaPlayed": null, "uniqueMediaPlayed100Percent": null},
        "messages": [],
        "clicks": [],
    });
    accept(&state, Endpoint::StatisticsPerUnit, vec![], None, StatusCode::OK, body)
}

/// `POST /v2/bot/chat/loading/start` (messaging-api.yml
/// `ShowLoadingAnimationRequest`): `chatId` a user ID, `loadingSeconds` 5 to
/// 60 in steps of 5 (default 20); 202 with `{}`.
async fn loading_start(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = gate(&state, Endpoint::LoadingAnimation, &headers, true).await {
        return response;
    }
    let body = match parse_json(&state, &body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut details = Vec::new();
    let chat_id = body.get("chatId").and_then(Value::as_str).unwrap_or_default().to_string();
    if !is_user_id(&chat_id) {
        details.push(detail("chatId", "The value must be a valid user ID"));
    }
    match body.get("loadingSeconds") {
        None => {}
        Some(seconds) => match seconds.as_u64() {
            Some(s) if (5..=60).contains(&s) && s % 5 == 0 => {}
            _ => details.push(detail("loadingSeconds", "must be a multiple of 5 between 5 and 60")),
        },
    }
    if !details.is_empty() {
        return invalid_body(&state, details);
    }
    accept(&state, Endpoint::LoadingAnimation, vec![chat_id], None, StatusCode::ACCEPTED, json!({}))
}

/// `POST /v2/bot/chat/markAsRead`: a `markAsReadToken` this simulator put in
/// a message webhook; any other is LINE's 400.
async fn mark_as_read(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = gate(&state, Endpoint::MarkAsRead, &headers, true).await {
        return response;
    }
    let body = match parse_json(&state, &body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let token = body.get("markAsReadToken").and_then(Value::as_str).unwrap_or_default();
    let user = state.lock().read_tokens.get(token).cloned();
    match user {
        Some(user) => accept(&state, Endpoint::MarkAsRead, vec![user], None, StatusCode::OK, json!({})),
        None => bad_request(
            &state,
            "An invalid markAsReadToken is specified. Tokens must be used by the bot that received them via Webhook.",
            vec![],
        ),
    }
}

fn invalid_user_path(state: &Shared) -> Response {
    bad_request(state, "The value for the 'userId' parameter is invalid", vec![])
}

async fn link_token(State(state): State<AppState>, headers: HeaderMap, Path(user_id): Path<String>) -> Response {
    if let Err(response) = gate(&state, Endpoint::LinkToken, &headers, true).await {
        return response;
    }
    if !is_user_id(&user_id) {
        return invalid_user_path(&state);
    }
    let token = random_token(32);
    state
        .lock()
        .link_tokens
        .insert(token.clone(), LinkTokenInfo { user_id: user_id.clone(), issued: Instant::now(), used: false });
    accept(&state, Endpoint::LinkToken, vec![user_id], None, StatusCode::OK, json!({ "linkToken": token }))
}

async fn profile(State(state): State<AppState>, headers: HeaderMap, Path(user_id): Path<String>) -> Response {
    if let Err(response) = gate(&state, Endpoint::Profile, &headers, true).await {
        return response;
    }
    if !is_user_id(&user_id) {
        state.lock().counters.not_found += 1;
        return error_response(StatusCode::NOT_FOUND, "Not found", vec![]);
    }
    let body = json!({
        "displayName": format!("LINE user {}", &user_id[1..7]),
        "userId": user_id,
        "language": "ja",
    });
    accept(&state, Endpoint::Profile, vec![user_id], None, StatusCode::OK, body)
}

async fn rich_menu_of_user(State(state): State<AppState>, headers: HeaderMap, Path(user_id): Path<String>) -> Response {
    if let Err(response) = gate(&state, Endpoint::RichMenuOfUser, &headers, true).await {
        return response;
    }
    if !is_user_id(&user_id) {
        return invalid_user_path(&state);
    }
    let menu = state.lock().user_menus.get(&user_id).cloned();
    match menu {
        Some(id) => accept(
            &state,
            Endpoint::RichMenuOfUser,
            vec![user_id],
            Some(id.clone()),
            StatusCode::OK,
            json!({ "richMenuId": id }),
        ),
        None => {
            state.lock().counters.not_found += 1;
            error_response(StatusCode::NOT_FOUND, "the user has no richmenu", vec![])
        }
    }
}

async fn link_rich_menu(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((user_id, rich_menu_id)): Path<(String, String)>,
) -> Response {
    if let Err(response) = gate(&state, Endpoint::RichMenuLink, &headers, true).await {
        return response;
    }
    if !is_user_id(&user_id) {
        return invalid_user_path(&state);
    }
    {
        let mut inner = state.lock();
        if !inner.rich_menus.contains_key(&rich_menu_id) {
            inner.counters.not_found += 1;
            drop(inner);
            return error_response(StatusCode::NOT_FOUND, "richmenu not found", vec![]);
        }
        inner.user_menus.insert(user_id.clone(), rich_menu_id.clone());
    }
    accept(&state, Endpoint::RichMenuLink, vec![user_id], Some(rich_menu_id), StatusCode::OK, json!({}))
}

async fn unlink_rich_menu(State(state): State<AppState>, headers: HeaderMap, Path(user_id): Path<String>) -> Response {
    if let Err(response) = gate(&state, Endpoint::RichMenuUnlink, &headers, true).await {
        return response;
    }
    if !is_user_id(&user_id) {
        return invalid_user_path(&state);
    }
    let previous = state.lock().user_menus.remove(&user_id);
    accept(&state, Endpoint::RichMenuUnlink, vec![user_id], previous, StatusCode::OK, json!({}))
}

/// The user-id array `field` of a multicast or bulk rich-menu body (1 to
/// 500 valid ids), each fault a detail as LINE words it.
fn user_ids(body: &Value, field: &str, details: &mut Vec<ErrorDetail>) -> Vec<String> {
    match body.get(field).and_then(Value::as_array) {
        Some(ids) if !ids.is_empty() && ids.len() <= MAX_RECIPIENTS => {
            let mut out = Vec::with_capacity(ids.len());
            for (i, id) in ids.iter().enumerate() {
                match id.as_str() {
                    Some(id) if is_user_id(id) => out.push(id.to_string()),
                    _ => details.push(detail(format!("{field}[{i}]"), "The value must be a valid user ID")),
                }
            }
            out
        }
        Some(_) => {
            details.push(detail(field, format!("Size must be between 1 and {MAX_RECIPIENTS}")));
            Vec::new()
        }
        None => {
            details.push(detail(field, "must be specified"));
            Vec::new()
        }
    }
}

async fn bulk_link(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = gate(&state, Endpoint::RichMenuBulkLink, &headers, true).await {
        return response;
    }
    let body = match parse_json(&state, &body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut details = Vec::new();
    let users = user_ids(&body, "userIds", &mut details);
    let rich_menu_id = body.get("richMenuId").and_then(Value::as_str).unwrap_or_default().to_string();
    if rich_menu_id.is_empty() {
        details.push(detail("richMenuId", "must be specified"));
    }
    if !details.is_empty() {
        return invalid_body(&state, details);
    }
    {
        let mut inner = state.lock();
        if !inner.rich_menus.contains_key(&rich_menu_id) {
            drop(inner);
            return bad_request(&state, "richmenu not found", vec![detail("richMenuId", "richmenu not found")]);
        }
        for user in &users {
            inner.user_menus.insert(user.clone(), rich_menu_id.clone());
        }
    }
    accept(&state, Endpoint::RichMenuBulkLink, users, Some(rich_menu_id), StatusCode::ACCEPTED, json!({}))
}

async fn bulk_unlink(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = gate(&state, Endpoint::RichMenuBulkUnlink, &headers, true).await {
        return response;
    }
    let body = match parse_json(&state, &body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let mut details = Vec::new();
    let users = user_ids(&body, "userIds", &mut details);
    if !details.is_empty() {
        return invalid_body(&state, details);
    }
    {
        let mut inner = state.lock();
        for user in &users {
            inner.user_menus.remove(user);
        }
    }
    accept(&state, Endpoint::RichMenuBulkUnlink, users, None, StatusCode::ACCEPTED, json!({}))
}

async fn set_default_rich_menu(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(rich_menu_id): Path<String>,
) -> Response {
    if let Err(response) = gate(&state, Endpoint::DefaultRichMenu, &headers, true).await {
        return response;
    }
    {
        let mut inner = state.lock();
        if !inner.rich_menus.contains_key(&rich_menu_id) {
            inner.counters.not_found += 1;
            drop(inner);
            return error_response(StatusCode::NOT_FOUND, "richmenu not found", vec![]);
        }
        inner.default_rich_menu = Some(rich_menu_id.clone());
    }
    accept(&state, Endpoint::DefaultRichMenu, vec![], Some(rich_menu_id), StatusCode::OK, json!({}))
}

async fn default_rich_menu(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(response) = gate(&state, Endpoint::DefaultRichMenu, &headers, true).await {
        return response;
    }
    let current = state.lock().default_rich_menu.clone();
    match current {
        Some(id) => accept(
            &state,
            Endpoint::DefaultRichMenu,
            vec![],
            Some(id.clone()),
            StatusCode::OK,
            json!({ "richMenuId": id }),
        ),
        None => {
            state.lock().counters.not_found += 1;
            error_response(StatusCode::NOT_FOUND, "no default richmenu", vec![])
        }
    }
}

async fn cancel_default_rich_menu(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(response) = gate(&state, Endpoint::DefaultRichMenu, &headers, true).await {
        return response;
    }
    let previous = state.lock().default_rich_menu.take();
    accept(&state, Endpoint::DefaultRichMenu, vec![], previous, StatusCode::OK, json!({}))
}

async fn rich_menu_list(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(response) = gate(&state, Endpoint::RichMenuList, &headers, true).await {
        return response;
    }
    let menus: Vec<Value> = state
        .lock()
        .rich_menus
        .iter()
        .map(|(id, name)| {
            json!({
                "richMenuId": id,
                "size": { "width": 2500, "height": 1686 },
                "selected": false,
                "name": name,
                "chatBarText": "Menu",
                "areas": [],
            })
        })
        .collect();
    accept(&state, Endpoint::RichMenuList, vec![], None, StatusCode::OK, json!({ "richmenus": menus }))
}

fn oauth_error(state: &Shared, description: &str) -> Response {
    state.lock().counters.bad_request += 1;
    (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": "invalid_request", "error_description": description })))
        .into_response()
}

async fn verify_id_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    if let Err(response) = gate(&state, Endpoint::VerifyIdToken, &headers, false).await {
        return response;
    }
    let Ok(Form(form)) = form else {
        return oauth_error(&state, "Invalid request body.");
    };
    let (Some(token), Some(client_id)) = (form.get("id_token"), form.get("client_id")) else {
        return oauth_error(&state, "Required parameter missing.");
    };
    match id_token::verify(&state.channel_secret, token, client_id) {
        Ok(claims) => {
            accept(&state, Endpoint::VerifyIdToken, vec![claims.sub.clone()], None, StatusCode::OK, json!(claims))
        }
        Err(description) => oauth_error(&state, description),
    }
}
