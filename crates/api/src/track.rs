//! `GET /t/{campaign_id}`: tracked links (`{{track url}}` in templates).
//! Public: opened by people on their phones, so no bearer key.

use crate::campaigns::unknown;
use crate::error::{ApiError, ErrorCode};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use renkei_campaigns::CampaignSet;
use renkei_core::{ChangeListener, Clock, LineUserId, NewEvent, UserRef};
use renkei_store::EventStore;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// Tracked links (`{{track url}}` in templates): public, no API key.
#[derive(Clone)]
pub struct TrackApi {
    pub store: Arc<dyn EventStore>,
    pub campaigns: Arc<CampaignSet>,
    pub clock: Arc<dyn Clock>,
    pub changes: Arc<dyn ChangeListener>,
}

pub fn router(state: TrackApi) -> Router {
    Router::new().route("/t/{campaign_id}", get(track)).with_state(state)
}

/// Records a `link_click` event (type usable in segments, properties
/// `campaign_id` and `url`) for the user, then redirects to the target.
/// Only http(s) targets of known campaigns are followed.
async fn track(
    State(api): State<TrackApi>,
    Path(campaign_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if api.campaigns.get(&campaign_id).is_none() {
        return unknown(&campaign_id).into_response();
    }
    let Some(target) = query.get("to").filter(|t| is_web_url(t)) else {
        return ApiError::new(ErrorCode::InvalidLink, "query `to` must be an http(s) URL").into_response();
    };
    let user = query.get("u").and_then(|u| LineUserId::parse(u).ok());
    if let Some(user) = &user {
        let event = json!({
            "type": "link_click",
            "line_user_id": user.as_str(),
            "occurred_at": api.clock.now().to_rfc3339(),
            "properties": {"campaign_id": campaign_id, "url": target},
        });
        match NewEvent::parse(&event) {
            Ok(event) => match api.store.insert_events(&[event], api.clock.now()).await {
                Ok(_) => api.changes.users_changed(&[UserRef::LineUser(user.clone())]),
                // The person still gets where they wanted to go.
                Err(e) => tracing::warn!(error = %e, "recording a tracked click failed"),
            },
            Err(errors) => tracing::warn!(?errors, "a tracked click did not make a valid event"),
        }
    }
    (StatusCode::FOUND, [(axum::http::header::LOCATION, target.as_str())]).into_response()
}

fn is_web_url(text: &str) -> bool {
    (text.starts_with("https://") || text.starts_with("http://"))
        && text.len() <= 2_048
        && !text.chars().any(|c| c.is_control() || c.is_whitespace())
}
