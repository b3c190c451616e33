//! `GET /t/{token}`: tracked links (`{{track url}}` in templates).
//! Public: opened by people on their phones, so no bearer key.
//!
//! The token (see `renkei_campaigns::link`) is sealed with `server.link_keys`:
//! only the target a template rendered is ever followed, and a click is
//! recorded for the user the link was sent to, once per link. Anything that
//! does not open (old `/t/<campaign>?u=…&to=…` links, tampered or truncated
//! tokens, tokens of a removed key) or names an unknown campaign is 404 and
//! records nothing.

use crate::error::ApiError;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use renkei_campaigns::{CampaignSet, LinkPayload};
use renkei_core::{ChangeListener, Clock, LineUserId, NewEvent, UserRef};
use renkei_store::EventStore;
use serde_json::json;
use std::sync::Arc;

/// Tracked links (`{{track url}}` in templates): public, no API key.
#[derive(Clone)]
pub struct TrackApi {
    pub store: Arc<dyn EventStore>,
    /// Holds the link keys (`CampaignSet::link_keys`).
    pub campaigns: Arc<CampaignSet>,
    pub clock: Arc<dyn Clock>,
    pub changes: Arc<dyn ChangeListener>,
}

pub fn router(state: TrackApi) -> Router {
    Router::new().route("/t/{token}", get(track)).with_state(state)
}

/// Redirects to the token's target; a GET also records the click (a
/// `link_click` event, properties `campaign_id` and `url`, usable in
/// segments), once per link.
async fn track(State(api): State<TrackApi>, method: Method, Path(token): Path<String>) -> Response {
    let Some(link) = open(&api.campaigns, &token) else {
        return ApiError::not_found("no such tracked link").into_response();
    };
    if method == Method::GET {
        record_click(&api, &link).await;
    }
    (StatusCode::FOUND, [(header::LOCATION, link.target.as_str())]).into_response()
}

/// The link a token stands for, if it opens under a configured key and
/// names a known campaign and a web target.
fn open(campaigns: &CampaignSet, token: &str) -> Option<LinkPayload> {
    let link = campaigns.link_keys()?.open(token).ok()?;
    (campaigns.get(&link.campaign_id).is_some() && is_web_url(&link.target)).then_some(link)
}

/// Stores the click; a failure is logged: the person still gets where they
/// wanted to go.
async fn record_click(api: &TrackApi, link: &LinkPayload) {
    let Ok(user) = LineUserId::parse(&link.line_user_id) else { return };
    let event = json!({
        "event_id": link.click_event_id(),
        "type": "link_click",
        "line_user_id": user.as_str(),
        "occurred_at": api.clock.now().to_rfc3339(),
        "properties": {"campaign_id": link.campaign_id, "url": link.target},
    });
    match NewEvent::parse(&event) {
        Ok(event) => match api.store.insert_events(&[event], api.clock.now()).await {
            Ok(outcome) if outcome.accepted > 0 => api.changes.users_changed(&[UserRef::LineUser(user)]),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "recording a tracked click failed"),
        },
        Err(errors) => tracing::warn!(?errors, "a tracked click did not make a valid event"),
    }
}

fn is_web_url(text: &str) -> bool {
    (text.starts_with("https://") || text.starts_with("http://"))
        && text.len() <= 2_048
        && !text.chars().any(|c| c.is_control() || c.is_whitespace())
}
