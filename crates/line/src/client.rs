//! Messaging API and LINE Login client.
//!
//! Errors are classified so callers can act without looking at status codes:
//! [`LineError::RateLimited`] and [`LineError::Transient`] are retried (with
//! the same retry key), [`LineError::MonthlyLimit`] pauses sending, and
//! [`LineError::Rejected`] is permanent. A 409 on push/multicast with a retry
//! key means LINE already accepted that request, so it is returned as
//! [`Sent`] with `accepted_request_id` set.

use renkei_core::ids::LineUserId;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

/// LINE's body for a 429 caused by the monthly message quota.
pub const MONTHLY_LIMIT_MESSAGE: &str = "You have reached your monthly limit.";
/// LINE's body for a 429 caused by the per-endpoint rate limit.
pub const RATE_LIMIT_MESSAGE: &str = "The API rate limit has been exceeded. Try again later.";
use crate::limits::{MAX_MESSAGES, MAX_RECIPIENTS};
pub const DEFAULT_BASE_URL: &str = "https://api.line.me";

/// A channel access token. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The secret itself; only for building the Authorization header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One entry of `details` in a LINE error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ErrorDetail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LineError {
    /// 429 from the per-endpoint rate limit: back off and retry.
    #[error("LINE rate limit exceeded: {message}")]
    RateLimited { message: String },
    /// 429 because the monthly quota is used up: pause sending, do not retry.
    #[error("LINE monthly message limit reached: {message}")]
    MonthlyLimit { message: String },
    /// A 4xx LINE will refuse again: fail permanently and keep the message.
    #[error("LINE rejected the request ({status}): {message}")]
    Rejected { status: u16, message: String, details: Vec<ErrorDetail> },
    /// 5xx, timeout or connection failure: retry (with the same retry key).
    #[error("LINE request failed transiently{}: {message}", status.map(|s| format!(" ({s})")).unwrap_or_default())]
    Transient { status: Option<u16>, message: String },
    /// A 2xx whose body we could not read as documented.
    #[error("unexpected response from LINE: {0}")]
    InvalidResponse(String),
    /// Refused before sending: the request can never succeed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl LineError {
    /// Whether retrying the same request (same retry key) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LineError::RateLimited { .. } | LineError::Transient { .. })
    }

    /// The HTTP status LINE answered, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            LineError::RateLimited { .. } | LineError::MonthlyLimit { .. } => Some(429),
            LineError::Rejected { status, .. } => Some(*status),
            LineError::Transient { status, .. } => *status,
            LineError::InvalidResponse(_) | LineError::InvalidRequest(_) => None,
        }
    }
}

/// A message object, as LINE's JSON. Any type LINE accepts can be sent;
/// constructors cover the ones renkei builds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Message(pub Value);

impl Message {
    pub fn text(text: impl Into<String>) -> Self {
        Self(serde_json::json!({"type": "text", "text": text.into()}))
    }

    /// A Flex message; `contents` is a bubble or carousel container.
    pub fn flex(alt_text: impl Into<String>, contents: Value) -> Self {
        Self(serde_json::json!({"type": "flex", "altText": alt_text.into(), "contents": contents}))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushRequest {
    /// A user, group or room ID.
    pub to: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_aggregation_units: Option<Vec<String>>,
}

/// The overview of LINE's statistics per unit. `None` is LINE's `null`:
/// fewer than 20 users, never 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitStatistics {
    #[serde(default)]
    pub unique_impression: Option<i64>,
    #[serde(default)]
    pub unique_click: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MulticastRequest {
    /// 1 to 500 user IDs.
    pub to: Vec<String>,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_aggregation_units: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplyRequest {
    pub reply_token: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification_disabled: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentMessage {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote_token: Option<String>,
}

/// A send LINE accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// `x-line-request-id` of this response (empty if LINE omitted it).
    pub request_id: String,
    /// Set when LINE answered 409: the retry key had already been accepted
    /// by the request with this ID, so nothing new was sent.
    pub accepted_request_id: Option<String>,
    /// `sentMessages` (push and reply; empty for multicast and on 409).
    pub sent_messages: Vec<SentMessage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub display_name: String,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// A rich menu from `GET /v2/bot/richmenu/list`; `size` and `areas` are kept
/// as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RichMenu {
    pub rich_menu_id: String,
    #[serde(default)]
    pub size: Value,
    #[serde(default)]
    pub selected: bool,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub chat_bar_text: String,
    #[serde(default)]
    pub areas: Vec<Value>,
}

/// The monthly target limit (`GET /v2/bot/message/quota`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    Unlimited,
    Limited(u64),
}

/// Claims of a verified LINE Login ID token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdTokenClaims {
    pub iss: String,
    /// The LINE user ID.
    pub sub: String,
    /// The LINE Login channel ID.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amr: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// Knobs for [`LineClient::with_options`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// LINE Login base URL for ID token verification (default
    /// `https://api.line.me`), separate because tests point the Messaging API
    /// at a simulator while Login may live elsewhere.
    pub login_base_url: String,
    /// Whole-request timeout; a timeout is [`LineError::Transient`].
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            login_base_url: DEFAULT_BASE_URL.to_string(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A Messaging API client for one channel. Cheap to clone.
#[derive(Clone)]
pub struct LineClient {
    http: reqwest::Client,
    api_base: String,
    login_base: String,
    token: AccessToken,
}

impl fmt::Debug for LineClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineClient")
            .field("api_base", &self.api_base)
            .field("login_base", &self.login_base)
            .field("token", &self.token)
            .finish()
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    details: Vec<ErrorDetail>,
    // LINE Login errors use OAuth's shape instead.
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SentBody {
    #[serde(default)]
    sent_messages: Vec<SentMessage>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BulkLink<'a> {
    rich_menu_id: &'a str,
    user_ids: Vec<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BulkUnlink<'a> {
    user_ids: Vec<&'a str>,
}

impl LineClient {
    /// A client with default options. `api_base_url` is e.g.
    /// `https://api.line.me` or a simulator's base URL.
    pub fn new(api_base_url: &str, channel_access_token: &str) -> Result<Self, LineError> {
        Self::with_options(api_base_url, channel_access_token, ClientOptions::default())
    }

    pub fn with_options(
        api_base_url: &str,
        channel_access_token: &str,
        options: ClientOptions,
    ) -> Result<Self, LineError> {
        // reqwest is built without a default TLS provider; installing ring
        // twice is harmless (the second call just reports it is set).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|e| LineError::InvalidRequest(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            api_base: api_base_url.trim_end_matches('/').to_string(),
            login_base: options.login_base_url.trim_end_matches('/').to_string(),
            token: AccessToken::new(channel_access_token),
        })
    }

    pub fn api_base_url(&self) -> &str {
        &self.api_base
    }

    fn request(&self, method: Method, path: &str) -> Result<RequestBuilder, LineError> {
        let mut auth = HeaderValue::try_from(format!("Bearer {}", self.token.expose()))
            .map_err(|_| LineError::InvalidRequest("channel access token has invalid characters".into()))?;
        // Keeps the token out of any header debug output.
        auth.set_sensitive(true);
        Ok(self.http.request(method, format!("{}{path}", self.api_base)).header(AUTHORIZATION, auth))
    }

    /// Sends a push message. With a retry key, a 409 (already accepted) is
    /// success.
    pub async fn push(&self, request: &PushRequest, retry_key: Option<Uuid>) -> Result<Sent, LineError> {
        check_messages(&request.messages)?;
        let builder = with_retry_key(self.request(Method::POST, "/v2/bot/message/push")?, retry_key);
        self.send_message(builder.json(request), retry_key.is_some()).await
    }

    /// Sends one set of messages to up to 500 users.
    pub async fn multicast(&self, request: &MulticastRequest, retry_key: Option<Uuid>) -> Result<Sent, LineError> {
        check_messages(&request.messages)?;
        check_recipients(request.to.len())?;
        let builder = with_retry_key(self.request(Method::POST, "/v2/bot/message/multicast")?, retry_key);
        self.send_message(builder.json(request), retry_key.is_some()).await
    }

    /// Replies with a webhook's reply token (no retry key: LINE refuses one).
    pub async fn reply(&self, request: &ReplyRequest) -> Result<Sent, LineError> {
        check_messages(&request.messages)?;
        let builder = self.request(Method::POST, "/v2/bot/message/reply")?;
        self.send_message(builder.json(request), false).await
    }

    async fn send_message(&self, builder: RequestBuilder, has_retry_key: bool) -> Result<Sent, LineError> {
        let response = builder.send().await.map_err(transport_error)?;
        let status = response.status();
        let headers = response.headers().clone();
        let request_id = header(&headers, "x-line-request-id").unwrap_or_default();
        if status == StatusCode::CONFLICT && has_retry_key {
            if let Some(accepted) = header(&headers, "x-line-accepted-request-id") {
                return Ok(Sent { request_id, accepted_request_id: Some(accepted), sent_messages: Vec::new() });
            }
        }
        if !status.is_success() {
            return Err(error_from(response).await);
        }
        // The send happened; a body we cannot read must not turn it into a
        // failure that would be retried.
        let bytes = response.bytes().await.unwrap_or_default();
        let body: SentBody = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(Sent { request_id, accepted_request_id: None, sent_messages: body.sent_messages })
    }

    /// `POST /v2/bot/chat/loading/start`: LINE's loading animation in the
    /// user's chat for `seconds` (rounded up to a multiple of 5, 5 to 60), or
    /// until a message from the account arrives.
    pub async fn show_loading_animation(&self, user: &LineUserId, seconds: u32) -> Result<(), LineError> {
        let seconds = seconds.clamp(5, 60).div_ceil(5) * 5;
        let body = serde_json::json!({"chatId": user.as_str(), "loadingSeconds": seconds});
        self.call_empty(self.request(Method::POST, "/v2/bot/chat/loading/start")?.json(&body)).await
    }

    /// `POST /v2/bot/chat/markAsRead`: marks the user's messages read up to
    /// the message that carried `token` (its webhook's `markAsReadToken`).
    pub async fn mark_as_read(&self, token: &str) -> Result<(), LineError> {
        let body = serde_json::json!({"markAsReadToken": token});
        self.call_empty(self.request(Method::POST, "/v2/bot/chat/markAsRead")?.json(&body)).await
    }

    /// `POST /v2/bot/user/{userId}/linkToken`: a link token (10 min, single use).
    pub async fn issue_link_token(&self, user: &LineUserId) -> Result<String, LineError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            link_token: String,
        }
        let path = format!("/v2/bot/user/{user}/linkToken");
        let body: Body = self.call_json(self.request(Method::POST, &path)?).await?;
        Ok(body.link_token)
    }

    pub async fn get_profile(&self, user: &LineUserId) -> Result<Profile, LineError> {
        let path = format!("/v2/bot/profile/{user}");
        self.call_json(self.request(Method::GET, &path)?).await
    }

    /// Links a rich menu to one user.
    pub async fn link_rich_menu(&self, user: &LineUserId, rich_menu_id: &str) -> Result<(), LineError> {
        check_path_segment(rich_menu_id)?;
        let path = format!("/v2/bot/user/{user}/richmenu/{rich_menu_id}");
        self.call_empty(self.request(Method::POST, &path)?).await
    }

    pub async fn unlink_rich_menu(&self, user: &LineUserId) -> Result<(), LineError> {
        let path = format!("/v2/bot/user/{user}/richmenu");
        self.call_empty(self.request(Method::DELETE, &path)?).await
    }

    /// Links a rich menu to up to 500 users (LINE answers 202 and applies it
    /// asynchronously).
    pub async fn bulk_link_rich_menu(&self, rich_menu_id: &str, users: &[LineUserId]) -> Result<(), LineError> {
        check_recipients(users.len())?;
        let body = BulkLink { rich_menu_id, user_ids: users.iter().map(LineUserId::as_str).collect() };
        self.call_empty(self.request(Method::POST, "/v2/bot/richmenu/bulk/link")?.json(&body)).await
    }

    pub async fn bulk_unlink_rich_menu(&self, users: &[LineUserId]) -> Result<(), LineError> {
        check_recipients(users.len())?;
        let body = BulkUnlink { user_ids: users.iter().map(LineUserId::as_str).collect() };
        self.call_empty(self.request(Method::POST, "/v2/bot/richmenu/bulk/unlink")?.json(&body)).await
    }

    /// Sets the channel's default rich menu: what every user without a menu
    /// of their own sees.
    pub async fn set_default_rich_menu(&self, rich_menu_id: &str) -> Result<(), LineError> {
        check_path_segment(rich_menu_id)?;
        let path = format!("/v2/bot/user/all/richmenu/{rich_menu_id}");
        self.call_empty(self.request(Method::POST, &path)?).await
    }

    /// The channel's default rich menu set with the Messaging API; `None`
    /// when none is set (LINE answers 404).
    pub async fn default_rich_menu(&self) -> Result<Option<String>, LineError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            rich_menu_id: String,
        }
        match self.call_json::<Body>(self.request(Method::GET, "/v2/bot/user/all/richmenu")?).await {
            Ok(body) => Ok(Some(body.rich_menu_id)),
            Err(LineError::Rejected { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub async fn list_rich_menus(&self) -> Result<Vec<RichMenu>, LineError> {
        #[derive(Deserialize)]
        struct Body {
            richmenus: Vec<RichMenu>,
        }
        let body: Body = self.call_json(self.request(Method::GET, "/v2/bot/richmenu/list")?).await?;
        Ok(body.richmenus)
    }

    pub async fn quota(&self) -> Result<Quota, LineError> {
        #[derive(Deserialize)]
        struct Body {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            value: Option<u64>,
        }
        let body: Body = self.call_json(self.request(Method::GET, "/v2/bot/message/quota")?).await?;
        match (body.kind.as_str(), body.value) {
            ("none", _) => Ok(Quota::Unlimited),
            ("limited", Some(value)) => Ok(Quota::Limited(value)),
            (kind, _) => Err(LineError::InvalidResponse(format!("unknown quota type {kind:?}"))),
        }
    }

    /// Messages sent this month (`totalUsage`).
    pub async fn quota_consumption(&self) -> Result<u64, LineError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            total_usage: u64,
        }
        let body: Body = self.call_json(self.request(Method::GET, "/v2/bot/message/quota/consumption")?).await?;
        Ok(body.total_usage)
    }

    /// LINE's statistics of the pushes and multicasts sent with
    /// `customAggregationUnits: [unit]` over `from..=to` (dates in UTC+9, at
    /// most 30 days apart; `GET /v2/bot/insight/message/event/aggregation`).
    pub async fn statistics_per_unit(
        &self,
        unit: &str,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<UnitStatistics, LineError> {
        #[derive(Deserialize)]
        struct Body {
            overview: UnitStatistics,
        }
        let (from, to) = (from.format("%Y%m%d").to_string(), to.format("%Y%m%d").to_string());
        let query = [("customAggregationUnit", unit), ("from", from.as_str()), ("to", to.as_str())];
        let builder = self.request(Method::GET, "/v2/bot/insight/message/event/aggregation")?.query(&query);
        let body: Body = self.call_json(builder).await?;
        Ok(body.overview)
    }

    /// Verifies a LINE Login ID token with LINE (`POST /oauth2/v2.1/verify`).
    /// LINE checks signature, expiry and audience (`client_id` = the LINE
    /// Login channel ID); a bad token is [`LineError::Rejected`] with 400.
    pub async fn verify_id_token(&self, id_token: &str, client_id: &str) -> Result<IdTokenClaims, LineError> {
        let builder = self
            .http
            .post(format!("{}/oauth2/v2.1/verify", self.login_base))
            .form(&[("id_token", id_token), ("client_id", client_id)]);
        self.call_json(builder).await
    }

    async fn call_json<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T, LineError> {
        let response = builder.send().await.map_err(transport_error)?;
        if !response.status().is_success() {
            return Err(error_from(response).await);
        }
        let bytes = response.bytes().await.map_err(transport_error)?;
        serde_json::from_slice(&bytes).map_err(|e| LineError::InvalidResponse(e.to_string()))
    }

    async fn call_empty(&self, builder: RequestBuilder) -> Result<(), LineError> {
        let response = builder.send().await.map_err(transport_error)?;
        if !response.status().is_success() {
            return Err(error_from(response).await);
        }
        Ok(())
    }
}

fn with_retry_key(builder: RequestBuilder, retry_key: Option<Uuid>) -> RequestBuilder {
    match retry_key {
        Some(key) => builder.header("X-Line-Retry-Key", key.hyphenated().to_string()),
        None => builder,
    }
}

fn check_messages(messages: &[Message]) -> Result<(), LineError> {
    if messages.is_empty() || messages.len() > MAX_MESSAGES {
        return Err(LineError::InvalidRequest(format!(
            "a request carries 1 to {MAX_MESSAGES} messages (got {})",
            messages.len()
        )));
    }
    Ok(())
}

fn check_recipients(count: usize) -> Result<(), LineError> {
    if count == 0 || count > MAX_RECIPIENTS {
        return Err(LineError::InvalidRequest(format!(
            "a request carries 1 to {MAX_RECIPIENTS} user IDs (got {count})"
        )));
    }
    Ok(())
}

// A rich menu ID goes into the URL path; refuse anything that could change
// the path instead of escaping it.
fn check_path_segment(id: &str) -> Result<(), LineError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(LineError::InvalidRequest(format!("invalid rich menu ID {id:?}")));
    }
    Ok(())
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn transport_error(error: reqwest::Error) -> LineError {
    // reqwest's Display never includes header values, so the token stays out.
    let kind = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "connection error"
    };
    LineError::Transient { status: error.status().map(|s| s.as_u16()), message: format!("{kind}: {error}") }
}

async fn error_from(response: Response) -> LineError {
    let status = response.status();
    let bytes = response.bytes().await.unwrap_or_default();
    let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
    let message = body.message.or(body.error_description).or(body.error).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&bytes);
        let text: String = text.chars().take(200).collect();
        if text.is_empty() { status.to_string() } else { text }
    });
    classify(status.as_u16(), message, body.details)
}

/// Maps a non-2xx answer to what the caller should do about it.
pub fn classify(status: u16, message: String, details: Vec<ErrorDetail>) -> LineError {
    match status {
        429 if message.contains("monthly limit") => LineError::MonthlyLimit { message },
        429 => LineError::RateLimited { message },
        500..=599 => LineError::Transient { status: Some(status), message },
        _ => LineError::Rejected { status, message, details },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn token_never_shows_in_debug() {
        let client = LineClient::new("http://127.0.0.1:1", "super-secret-token").unwrap();
        let text = format!("{client:?} {:?} {}", client.token, client.token);
        assert!(!text.contains("super-secret"), "{text}");
        assert!(text.contains("***"));
    }

    #[test]
    fn classification() {
        assert!(matches!(classify(429, MONTHLY_LIMIT_MESSAGE.into(), vec![]), LineError::MonthlyLimit { .. }));
        assert!(matches!(classify(429, RATE_LIMIT_MESSAGE.into(), vec![]), LineError::RateLimited { .. }));
        assert!(classify(429, RATE_LIMIT_MESSAGE.into(), vec![]).is_retryable());
        assert!(!classify(429, MONTHLY_LIMIT_MESSAGE.into(), vec![]).is_retryable());
        assert!(classify(503, "x".into(), vec![]).is_retryable());
        assert!(!classify(400, "x".into(), vec![]).is_retryable());
        assert_eq!(classify(401, "x".into(), vec![]).status(), Some(401));
    }

    #[test]
    fn message_json_matches_line() {
        let text = serde_json::to_value(Message::text("hi")).unwrap();
        assert_eq!(text, serde_json::json!({"type":"text","text":"hi"}));
        let push = PushRequest {
            to: "U1".into(),
            messages: vec![Message::flex("alt", serde_json::json!({"type":"bubble"}))],
            notification_disabled: Some(true),
            custom_aggregation_units: None,
        };
        let value = serde_json::to_value(&push).unwrap();
        assert_eq!(value["notificationDisabled"], true);
        assert_eq!(value["messages"][0]["altText"], "alt");
        assert!(value.get("customAggregationUnits").is_none());
    }

    #[test]
    fn rich_menu_ids_cannot_escape_the_path() {
        assert!(check_path_segment("richmenu-0123456789abcdef0123456789abcdef").is_ok());
        for bad in ["", "../x", "a/b", "a?b", "a b"] {
            assert!(check_path_segment(bad).is_err(), "{bad}");
        }
    }
}
