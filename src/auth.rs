//! Bearer-key auth for the `/v1` routes that do not bring their own (the
//! ingestion router checks keys itself, the same way, with the same answers).

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use renkei_ingest::ApiError;
use renkei_ingest::api::key_matches;
use std::sync::Arc;

/// Wraps every route of `router` in the `server.api_keys` check. Unmatched
/// paths are left to the application's fallback (a JSON 404).
pub fn require_api_key(router: Router, api_keys: Arc<Vec<String>>) -> Router {
    router.route_layer(middleware::from_fn_with_state(api_keys, check))
}

async fn check(State(keys): State<Arc<Vec<String>>>, request: Request, next: Next) -> Response {
    if keys.is_empty() {
        return ApiError::unauthorized("no API keys are configured (server.api_keys / RENKEI_SERVER__API_KEYS)")
            .into_response();
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(key) if key_matches(&keys, key) => next.run(request).await,
        Some(_) => ApiError::unauthorized("unknown API key").into_response(),
        None => ApiError::unauthorized("missing header Authorization: Bearer <api key>").into_response(),
    }
}
