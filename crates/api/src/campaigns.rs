//! `/v1/campaigns`: state, stats, pause and resume. Bearer auth is the
//! caller's layer (the same as every `/v1` route).

use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use renkei_campaigns::{CampaignSet, Trigger};
use renkei_core::Clock;
use renkei_store::StoreError;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;

renkei_store::store_view! {
    /// What the campaign routes read and write: counts, clicks, pauses.
    pub struct CampaignsStore { events: EventStore, outbox: OutboxReads, schedule: ScheduleStore }
}

#[derive(Clone)]
pub struct CampaignsApi {
    pub store: CampaignsStore,
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

fn store_error(e: StoreError) -> ApiError {
    ApiError::store_unavailable(&e)
}

/// 404 for a campaign id that is not configured.
pub fn unknown(id: &str) -> ApiError {
    ApiError::not_found(format!("unknown campaign `{id}`"))
}

fn trigger_json(trigger: &Trigger) -> Value {
    match trigger {
        Trigger::SegmentEntered { segment } => json!({"segment_entered": segment}),
        Trigger::Schedule { expr, audience, .. } => json!({"schedule": expr, "audience": audience}),
        Trigger::Event { event_type, .. } => json!({"event": event_type}),
    }
}

async fn list(State(api): State<CampaignsApi>) -> Result<Json<Value>, ApiError> {
    let paused: HashSet<String> =
        api.store.schedule.paused_campaigns().await.map_err(store_error)?.into_iter().collect();
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
    Ok(Json(json!({"campaigns": out})))
}

async fn stats(State(api): State<CampaignsApi>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if api.campaigns.get(&id).is_none() {
        return Err(unknown(&id));
    }
    let counts = api.store.outbox.campaign_counts(&id).await.map_err(store_error)?;
    let paused = api.store.schedule.paused_campaigns().await.map_err(store_error)?.contains(&id);
    let (clicks, clickers) = api.store.events.campaign_clicks(&id).await.map_err(store_error)?;
    let skipped_total: u64 = counts.skipped.values().sum();
    Ok(Json(json!({
        "campaign": id,
        "state": if paused { "paused" } else { "active" },
        "sent": counts.sent,
        "pending": counts.pending + counts.requested,
        "failed": counts.failed,
        "skipped": skipped_total,
        "skipped_by_reason": counts.skipped,
        "clicked": clicks,
        "clicked_users": clickers,
    })))
}

async fn set_paused(api: CampaignsApi, id: String, paused: bool) -> Result<Json<Value>, ApiError> {
    if api.campaigns.get(&id).is_none() {
        return Err(unknown(&id));
    }
    api.store.schedule.set_campaign_paused(&id, paused, api.clock.now()).await.map_err(store_error)?;
    tracing::info!(campaign = %id, paused, "campaign state changed");
    Ok(Json(json!({"campaign": id, "state": if paused { "paused" } else { "active" }})))
}

async fn pause(State(api): State<CampaignsApi>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    set_paused(api, id, true).await
}

async fn resume(State(api): State<CampaignsApi>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    set_paused(api, id, false).await
}
