//! Bearer-key auth for every `/v1` route: `Authorization: Bearer <key>`
//! checked against `server.api_keys` in constant time, then the key's rate
//! limit (`server.rate_limit_per_second`, [`KeyRateLimits`]).

use crate::error::ApiError;
use crate::limits::KeyRateLimits;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The keys and their rate limits.
#[derive(Clone)]
struct Keys {
    keys: Arc<Vec<String>>,
    limits: Arc<KeyRateLimits>,
}

/// Wraps every route of `router` in the `server.api_keys` check and each
/// key's rate limit. Unmatched paths are left to the application's fallback
/// (a JSON 404).
pub fn require_api_key(router: Router, api_keys: Arc<Vec<String>>, limits: Arc<KeyRateLimits>) -> Router {
    router.route_layer(middleware::from_fn_with_state(Keys { keys: api_keys, limits }, check))
}

/// True when `presented` equals one of `keys`, comparing in constant time.
pub fn key_matches(keys: &[String], presented: &str) -> bool {
    key_index(keys, presented).is_some()
}

/// Which of `keys` `presented` is, comparing with every key in constant time.
fn key_index(keys: &[String], presented: &str) -> Option<usize> {
    let mut found = None;
    for (index, key) in keys.iter().enumerate() {
        if bool::from(key.as_bytes().ct_eq(presented.as_bytes())) {
            found = Some(index);
        }
    }
    found
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 9110 §11.1), so `bearer` and `BEARER` do too.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start_matches(' '))
}

async fn check(State(Keys { keys, limits }): State<Keys>, request: Request, next: Next) -> Response {
    if keys.is_empty() {
        return ApiError::unauthorized("no API keys are configured (server.api_keys / RENKEI_SERVER__API_KEYS)")
            .into_response();
    }
    let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    match presented.map(|key| key_index(&keys, key)) {
        Some(Some(index)) => match limits.check(index) {
            Ok(()) => next.run(request).await,
            Err(limited) => limited.into_response(),
        },
        Some(None) => ApiError::unauthorized("unknown API key").into_response(),
        None => ApiError::unauthorized("missing header Authorization: Bearer <api key>").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, key_matches};

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer k-1"), Some("k-1"));
        assert_eq!(bearer_token("bearer k-1"), Some("k-1"));
        assert_eq!(bearer_token("BEARER  k-1"), Some("k-1"));
        assert_eq!(bearer_token("Basic k-1"), None);
        assert_eq!(bearer_token("Bearerk-1"), None);
    }

    #[test]
    fn api_keys_match_exactly() {
        let keys = vec!["alpha-key".to_string(), "beta-key".to_string()];
        assert!(key_matches(&keys, "beta-key"));
        assert!(!key_matches(&keys, "beta-ke"));
        assert!(!key_matches(&keys, "beta-key2"));
        assert!(!key_matches(&[], "anything"));
    }
}
