//! `/v1/campaigns`: state, stats, pause and resume. Bearer auth is the
//! caller's layer (the same as every `/v1` route).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use renkei_campaigns::{CampaignSet, Trigger};
use renkei_core::Clock;
use renkei_store::Store;
use serde_json::{Value, json};
use std::collections::HashSet;
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
    let skipped_total: u64 = counts.skipped.values().sum();
    Json(json!({
        "campaign": id,
        "state": if paused { "paused" } else { "active" },
        "sent": counts.sent,
        "pending": counts.pending + counts.requested,
        "failed": counts.failed,
        "skipped": skipped_total,
        "skipped_by_reason": counts.skipped,
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
