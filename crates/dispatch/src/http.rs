//! `/v1/campaigns`: state, stats, pause and resume. Bearer auth is the
//! caller's layer (the same as every `/v1` route).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use renkei_campaigns::{CampaignSet, Trigger};
use renkei_core::{ChangeListener, Clock, LineUserId, NewEvent, UserRef};
use renkei_store::Store;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Clone)]
pub struct CampaignsApi {
    pub store: Arc<dyn Store>,
    pub campaigns: Arc<CampaignSet>,
    pub clock: Arc<dyn Clock>,
}

pub fn router(state: CampaignsApi) -> Router {
    Router::new()
        .route("/v1/campaigns", get(list))
        .route("/v1/campaigns/{id}/stats", get(stats))
        .route("/v1/campaigns/{id}/pause", post(pause))
        .route("/v1/campaigns/{id}/resume", post(resume))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message.into()}}))).into_response()
}

fn store_error(e: renkei_store::StoreError) -> Response {
    tracing::error!(error = %e, "campaigns API: storage failed");
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the database is unavailable; try again")
}

fn unknown(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", format!("unknown campaign `{id}`"))
}

fn trigger_json(trigger: &Trigger) -> Value {
    match trigger {
        Trigger::SegmentEntered { segment } => json!({"segment_entered": segment}),
        Trigger::Schedule { expr, audience, .. } => json!({"schedule": expr, "audience": audience}),
        Trigger::Event { event_type, .. } => json!({"event": event_type}),
    }
}

async fn list(State(api): State<CampaignsApi>) -> Response {
    let paused: HashSet<String> = match api.store.paused_campaigns().await {
        Ok(p) => p.into_iter().collect(),
        Err(e) => return store_error(e),
    };
    let mut out = Vec::new();
    for campaign in api.campaigns.iter() {
        out.push(json!({
            "id": campaign.id,
            "name": campaign.name,
            "trigger": trigger_json(&campaign.trigger),
            "audience": campaign.audience,
            "state": if paused.contains(&campaign.id) { "paused" } else { "active" },
        }));
    }
    Json(json!({"campaigns": out})).into_response()
}

async fn stats(State(api): State<CampaignsApi>, Path(id): Path<String>) -> Response {
    if api.campaigns.get(&id).is_none() {
        return unknown(&id);
    }
    let counts = match api.store.campaign_counts(&id).await {
        Ok(c) => c,
        Err(e) => return store_error(e),
    };
    let paused = match api.store.paused_campaigns().await {
        Ok(p) => p.contains(&id),
        Err(e) => return store_error(e),
    };
    let (clicks, clickers) = match api.store.campaign_clicks(&id).await {
        Ok(c) => c,
        Err(e) => return store_error(e),
    };
    let skipped_total: u64 = counts.skipped.values().sum();
    Json(json!({
        "campaign": id,
        "state": if paused { "paused" } else { "active" },
        "sent": counts.sent,
        "pending": counts.pending + counts.requested,
        "failed": counts.failed,
        "skipped": skipped_total,
        "skipped_by_reason": counts.skipped,
        "clicked": clicks,
        "clicked_users": clickers,
    }))
    .into_response()
}

async fn set_paused(api: CampaignsApi, id: String, paused: bool) -> Response {
    if api.campaigns.get(&id).is_none() {
        return unknown(&id);
    }
    match api.store.set_campaign_paused(&id, paused, api.clock.now()).await {
        Ok(()) => {
            tracing::info!(campaign = %id, paused, "campaign state changed");
            Json(json!({"campaign": id, "state": if paused { "paused" } else { "active" }})).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn pause(State(api): State<CampaignsApi>, Path(id): Path<String>) -> Response {
    set_paused(api, id, true).await
}

async fn resume(State(api): State<CampaignsApi>, Path(id): Path<String>) -> Response {
    set_paused(api, id, false).await
}

/// Tracked links (`{{track url}}` in templates): public, no API key.
#[derive(Clone)]
pub struct TrackApi {
    pub store: Arc<dyn Store>,
    pub campaigns: Arc<CampaignSet>,
    pub clock: Arc<dyn Clock>,
    pub changes: Arc<dyn ChangeListener>,
}

pub fn track_router(state: TrackApi) -> Router {
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
        return unknown(&campaign_id);
    }
    let Some(target) = query.get("to").filter(|t| is_web_url(t)) else {
        return error(StatusCode::BAD_REQUEST, "invalid_link", "query `to` must be an http(s) URL");
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
