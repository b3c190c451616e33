//! API errors in renkei's one JSON shape, `{"error": {"code", "message"}}`,
//! plus `errors: [{field, message}]` for invalid fields.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use renkei_core::FieldError;
use renkei_store::StoreError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fields: Vec<FieldError>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), fields: Vec::new() }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    /// 422 naming each invalid field.
    pub fn invalid_fields(fields: Vec<FieldError>) -> Self {
        let message = fields.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ");
        Self { status: StatusCode::UNPROCESSABLE_ENTITY, code: "invalid_request", message, fields }
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
        if !self.fields.is_empty() {
            body["errors"] = json!(self.fields);
        }
        (self.status, Json(body)).into_response()
    }
}
