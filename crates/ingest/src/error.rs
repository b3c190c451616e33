//! API errors: one JSON shape, `{"error": {"code", "message"}}`, with the
//! right 4xx for a client's mistake. A 500 only ever means renkei's fault.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use renkei_core::ItemError;
use renkei_store::StoreError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Per-item problems of a refused batch.
    pub items: Vec<ItemError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), items: Vec::new() }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    /// A batch refused whole because some items are invalid.
    pub fn invalid_items(what: &str, items: Vec<ItemError>) -> Self {
        let invalid: std::collections::BTreeSet<usize> = items.iter().map(|e| e.index).collect();
        let message = format!("{} invalid {what}; nothing was stored", invalid.len());
        Self { status: StatusCode::UNPROCESSABLE_ENTITY, code: "invalid_batch", message, items }
    }

    pub fn from_body_rejection(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(status, "body_too_large", "request body is larger than this route accepts")
        } else {
            Self::new(status, "bad_body", rejection.body_text())
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(message) => Self::new(StatusCode::CONFLICT, "conflict", message),
            other => {
                tracing::error!(error = %other, "store failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "storage failed; nothing was stored, retry later",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if !self.items.is_empty() {
            body["errors"] = json!(self.items);
        }
        (self.status, Json(body)).into_response()
    }
}
