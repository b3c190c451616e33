//! The one API error: every route answers a failure with
//! `{"error": {"code", "message"}}` (plus `errors: [...]` naming invalid
//! fields or batch items), its HTTP status chosen by the code in one place,
//! [`ErrorCode::status`]. A 5xx only ever means renkei's (or LINE's) fault.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use renkei_core::{FieldError, ItemError};
use renkei_store::StoreError;
use serde_json::json;

/// Every error code an API route answers with (README "Error codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Missing or unknown API key; missing or wrong `x-line-signature`.
    Unauthorized,
    /// Unknown route, segment or campaign; a member that is not linked.
    NotFound,
    /// The route does not answer this method (`Allow` lists those it does).
    MethodNotAllowed,
    /// A query parameter out of range (e.g. `limit`).
    BadRequest,
    /// The body is not JSON, or not a JSON object.
    InvalidJson,
    /// The body could not be read.
    BadBody,
    /// A path `member_id` that is not a member ID.
    InvalidMemberId,
    /// The body is larger than the route accepts.
    BodyTooLarge,
    /// More items in one batch than a request may carry.
    BatchTooLarge,
    /// The request's URI is longer than renkei reads.
    UriTooLong,
    /// The request's headers are larger than renkei reads.
    HeadersTooLarge,
    /// The request's body did not arrive within `server.body_read_timeout`.
    BodyTimeout,
    /// Invalid or unknown fields (`errors` names each).
    InvalidRequest,
    /// A batch refused whole for invalid items (`errors` names each with its index).
    InvalidBatch,
    /// LINE refused the ID token, or it is for another channel.
    InvalidIdToken,
    /// The request contradicts what is stored (e.g. a member linked to another LINE user).
    Conflict,
    /// Too many requests for this API key (`server.rate_limit_per_second`); `Retry-After` says when to retry.
    RateLimited,
    /// The database failed; nothing was changed, retry later.
    StoreUnavailable,
    /// A write waited `[database] write_wait` for the database (an import
    /// or another long write holds it); nothing was changed, retry after
    /// `Retry-After` seconds.
    StoreBusy,
    /// The route needs LINE settings that are not configured.
    NotConfigured,
    /// renkei cannot do this right now (e.g. no randomness for a nonce); retry later.
    Unavailable,
    /// LINE is unavailable; retry later.
    LineUnavailable,
    /// LINE answered unexpectedly.
    LineError,
}

impl ErrorCode {
    /// Every code, in the README's order.
    pub const ALL: [ErrorCode; 23] = [
        Self::Unauthorized,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::BadRequest,
        Self::InvalidJson,
        Self::BadBody,
        Self::InvalidMemberId,
        Self::BodyTooLarge,
        Self::BatchTooLarge,
        Self::UriTooLong,
        Self::HeadersTooLarge,
        Self::BodyTimeout,
        Self::InvalidRequest,
        Self::InvalidBatch,
        Self::InvalidIdToken,
        Self::Conflict,
        Self::RateLimited,
        Self::StoreUnavailable,
        Self::StoreBusy,
        Self::NotConfigured,
        Self::Unavailable,
        Self::LineUnavailable,
        Self::LineError,
    ];

    /// The `code` of the body.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BadRequest => "bad_request",
            Self::InvalidJson => "invalid_json",
            Self::BadBody => "bad_body",
            Self::InvalidMemberId => "invalid_member_id",
            Self::BodyTooLarge => "body_too_large",
            Self::BatchTooLarge => "batch_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidBatch => "invalid_batch",
            Self::InvalidIdToken => "invalid_id_token",
            Self::Conflict => "conflict",
            Self::RateLimited => "rate_limited",
            Self::StoreUnavailable => "store_unavailable",
            Self::StoreBusy => "store_busy",
            Self::NotConfigured => "not_configured",
            Self::Unavailable => "unavailable",
            Self::LineUnavailable => "line_unavailable",
            Self::LineError => "line_error",
        }
    }

    /// The HTTP status every error with this code answers with.
    pub const fn status(self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadRequest | Self::InvalidJson | Self::BadBody | Self::InvalidMemberId => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge | Self::BatchTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::InvalidRequest | Self::InvalidBatch | Self::InvalidIdToken => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict => StatusCode::CONFLICT,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::StoreUnavailable
            | Self::StoreBusy
            | Self::NotConfigured
            | Self::Unavailable
            | Self::LineUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::LineError => StatusCode::BAD_GATEWAY,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Per-item problems of a refused batch (`errors`).
    pub items: Vec<ItemError>,
    /// Per-field problems of a refused body (`errors`).
    pub fields: Vec<FieldError>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

/// `Retry-After` of a `store_busy` answer: about one default write wait.
pub const BUSY_RETRY_AFTER_SECS: u64 = 5;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), items: Vec::new(), fields: Vec::new(), retry_after: None }
    }

    /// With a `Retry-After: seconds` header.
    pub fn retry_after(self, seconds: u64) -> Self {
        Self { retry_after: Some(seconds), ..self }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidJson, message)
    }

    /// 422 `invalid_request` with one message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// 422 `invalid_request` naming each invalid field.
    pub fn invalid_fields(fields: Vec<FieldError>) -> Self {
        let message = fields.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ");
        Self { fields, ..Self::new(ErrorCode::InvalidRequest, message) }
    }

    /// A batch refused whole because some items are invalid.
    pub fn invalid_items(what: &str, items: Vec<ItemError>) -> Self {
        let invalid: std::collections::BTreeSet<usize> = items.iter().map(|e| e.index).collect();
        let message = format!("{} invalid {what}; nothing was stored", invalid.len());
        Self { items, ..Self::new(ErrorCode::InvalidBatch, message) }
    }

    /// 503 `store_busy` with `Retry-After`: the database was held longer than a write waits.
    pub fn store_busy(error: &StoreError) -> Self {
        tracing::warn!(%error, "store busy; answered 503");
        let message =
            "the database is busy (a long write such as an import holds it); nothing was changed, retry later";
        Self { retry_after: Some(BUSY_RETRY_AFTER_SECS), ..Self::new(ErrorCode::StoreBusy, message) }
    }

    /// A database failure on a route that reads.
    pub fn store_unavailable(error: &StoreError) -> Self {
        if matches!(error, StoreError::Busy(_)) {
            return Self::store_busy(error);
        }
        tracing::error!(%error, "store failure");
        Self::new(ErrorCode::StoreUnavailable, "the database is unavailable; retry later")
    }

    pub fn from_body_rejection(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(ErrorCode::BodyTooLarge, "request body is larger than this route accepts")
        } else if crate::limits::is_body_timeout(&rejection) {
            Self::new(ErrorCode::BodyTimeout, rejection.body_text())
        } else {
            Self::new(ErrorCode::BadBody, rejection.body_text())
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(message) => Self::new(ErrorCode::Conflict, message),
            busy @ StoreError::Busy(_) => Self::store_busy(&busy),
            other => {
                tracing::error!(error = %other, "store failure");
                Self::new(ErrorCode::StoreUnavailable, "storage failed; nothing was stored, retry later")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code.as_str(), "message": self.message}});
        if !self.items.is_empty() {
            body["errors"] = json!(self.items);
        } else if !self.fields.is_empty() {
            body["errors"] = json!(self.fields);
        }
        let mut response = (self.code.status(), Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_store_failures_are_store_unavailable() {
        let names: std::collections::BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        let error = ApiError::from(StoreError::Corrupt("down".into()));
        assert_eq!(error.code.as_str(), "store_unavailable");
        assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn a_busy_store_is_503_store_busy_with_retry_after() {
        let response = ApiError::from(StoreError::Busy("pool timed out".into())).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], BUSY_RETRY_AFTER_SECS.to_string().as_str());
        let read = ApiError::store_unavailable(&StoreError::Busy("pool timed out".into()));
        assert_eq!(read.code, ErrorCode::StoreBusy);
    }
}
