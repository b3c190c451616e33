//! `/v1/campaigns`: state, stats, pause and resume. Bearer auth is the
//! caller's layer (the same as every `/v1` route).

use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use renkei_campaigns::outcome::{GoalEvent, GroupOutcome, Outcome, attribute, lift};
use renkei_campaigns::{Campaign, CampaignSet, Goal, Trigger};
use renkei_core::{Clock, SkipReason};
use renkei_store::StoreError;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

renkei_store::store_view! {
    /// What the campaign routes read and write: counts, clicks, pauses.
    pub struct CampaignsStore { events: EventStore, outbox: OutboxReads, schedule: ScheduleStore, requests: RequestStore }
}

#[derive(Clone)]
pub struct CampaignsApi {
    pub store: CampaignsStore,
    pub campaigns: Arc<CampaignSet>,
    pub clock: Arc<dyn Clock>,
    /// The configured timezone (for `where` comparisons of dates).
    pub timezone: Tz,
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

/// A duration as written in YAML, in its largest whole unit (`90d`, `36h`).
fn duration_text(duration: chrono::Duration) -> String {
    let seconds = duration.num_seconds();
    let (count, unit) = [(604_800, 'w'), (86_400, 'd'), (3_600, 'h'), (60, 'm')]
        .into_iter()
        .find(|(size, _)| seconds != 0 && seconds % size == 0)
        .map_or((seconds, 's'), |(size, unit)| (seconds / size, unit));
    format!("{count}{unit}")
}

fn trigger_json(trigger: &Trigger) -> Value {
    match trigger {
        Trigger::SegmentEntered { segment } => json!({"segment_entered": segment}),
        Trigger::Schedule { expr, audience, .. } => json!({"schedule": expr, "audience": audience}),
        Trigger::Event { event_type, .. } => json!({"event": event_type}),
        Trigger::Fanout { event_type, to, .. } => json!({"fanout": {"event": event_type, "to": {
            "event": to.event_types, "match": to.match_props, "within": duration_text(to.within)}}}),
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
    let Some(campaign) = api.campaigns.get(&id) else {
        return Err(unknown(&id));
    };
    let stats = campaign_stats(&api.store, campaign, api.clock.now(), api.timezone, Period::default())
        .await
        .map_err(store_error)?;
    Ok(Json(stats))
}

/// Which exposures the conversions, the holdout and the lift judge: those
/// at or after `from` and before `to` (each bound optional).
#[derive(Debug, Clone, Copy, Default)]
pub struct Period {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl Period {
    fn contains(&self, at: DateTime<Utc>) -> bool {
        self.from.is_none_or(|from| at >= from) && self.to.is_none_or(|to| at < to)
    }
}

/// A campaign's stats, as `GET /v1/campaigns/{id}/stats` and `renkei
/// campaigns report` show them: deliveries by state, clicks, and with a
/// goal its conversions, the holdout's and the lift (null without a goal or
/// a holdout). Holdout deliveries are counted in `holdout`, not as skips.
/// `period` narrows the exposures judged; the delivery counts are the
/// campaign's whole.
pub async fn campaign_stats(
    store: &CampaignsStore,
    campaign: &Campaign,
    now: DateTime<Utc>,
    tz: Tz,
    period: Period,
) -> Result<Value, StoreError> {
    let mut stats = campaign_counted(store, campaign).await?;
    with_measured(&mut stats, &campaign_measured(store, campaign, now, tz, period).await?);
    Ok(stats)
}

/// The keys of [`campaign_stats`] that [`campaign_measured`] gives: they
/// read every exposure of the campaign (and its goal events), so they take
/// time in proportion to its size.
pub const MEASURED: [&str; 7] = ["exposed", "converted", "conversion_value", "holdout", "lift", "variants", "steps"];

/// Sets `stats`' measured keys from `measured` (the rest of
/// [`campaign_stats`] is read from kept counts, quick at any size).
pub fn with_measured(stats: &mut Value, measured: &Value) {
    for key in MEASURED {
        stats[key] = measured[key].clone();
    }
}

/// [`campaign_stats`] without its measured keys (null), read from kept
/// counts: quick whatever the campaign's size.
pub async fn campaign_counted(store: &CampaignsStore, campaign: &Campaign) -> Result<Value, StoreError> {
    let id = &campaign.id;
    let mut counts = store.outbox.campaign_counts(id).await?;
    let paused = store.schedule.paused_campaigns().await?.contains(id);
    let (clicks, clickers) = store.events.campaign_clicks(id).await?;
    counts.skipped.remove(&SkipReason::Holdout);
    let skipped_total: u64 = counts.skipped.values().sum();
    let mut stats = json!({
        "campaign": id,
        "state": if paused { "paused" } else { "active" },
        "sent": counts.sent,
        "pending": counts.pending + counts.requested,
        "failed": counts.failed,
        "skipped": skipped_total,
        "skipped_by_reason": counts.skipped,
        "clicked": clicks,
        "clicked_users": clickers,
        "line": line_json(store, campaign, counts.sent).await?,
    });
    for key in MEASURED {
        stats[key] = Value::Null;
    }
    Ok(stats)
}

/// The measured keys of [`campaign_stats`]: exposures judged against the
/// goal, the holdout, the lift, the variants and the steps.
pub async fn campaign_measured(
    store: &CampaignsStore,
    campaign: &Campaign,
    now: DateTime<Utc>,
    tz: Tz,
    period: Period,
) -> Result<Value, StoreError> {
    let held_out = store.outbox.campaign_counts(&campaign.id).await?.skipped.remove(&SkipReason::Holdout).unwrap_or(0);
    // A holdout user of a sequence is held out at every step it reaches: count trigger instances.
    let held_out = if campaign.steps.is_empty() || held_out == 0 {
        held_out
    } else {
        let exposures = exposures_of(store, campaign, period).await?;
        let instances: HashSet<(&str, &str)> = exposures
            .plain
            .iter()
            .filter(|e| e.holdout)
            .map(|e| (e.trigger_key.as_str(), e.line_user_id.as_str()))
            .collect();
        instances.len() as u64
    };
    let judged = judge(store, campaign, now, tz, period).await?;
    let outcome = judged.as_ref().map(|j| j.outcome);
    let group = |g: Option<GroupOutcome>, users: u64| match g {
        Some(g) => json!({"users": g.users, "converted": g.converted, "conversion_value": g.conversion_value}),
        None => json!({"users": users, "converted": null, "conversion_value": null}),
    };
    let holdout = (campaign.holdout.is_some() || held_out > 0).then(|| group(outcome.map(|o| o.holdout), held_out));
    Ok(json!({
        "exposed": outcome.map(|o| o.treated.users),
        "converted": outcome.map(|o| o.treated.converted),
        "conversion_value": outcome.map(|o| o.treated.conversion_value),
        "holdout": holdout,
        "lift": outcome.as_ref().and_then(lift),
        "variants": variants_json(store, campaign, judged.as_ref(), period).await?,
        "steps": steps_json(store, campaign).await?,
    }))
}

/// Per step of a sequence (null without steps): deliveries `sent`,
/// `pending` (waiting or in flight), `skipped` (any reason but `exited` and
/// `holdout`), `exited` (the sequence ended before it) and `holdout`, with
/// `unit`, its LINE aggregation unit.
async fn steps_json(store: &CampaignsStore, campaign: &Campaign) -> Result<Value, StoreError> {
    use renkei_core::DeliveryStatus;
    if campaign.steps.is_empty() {
        return Ok(Value::Null);
    }
    let mut counts: HashMap<String, [u64; 5]> = HashMap::new();
    let mut after = 0;
    loop {
        let page = store.outbox.campaign_deliveries(&campaign.id, after, 1_000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for delivery in &page {
            let Some(step) = delivery.context.get("step").and_then(Value::as_str) else { continue };
            let slot = match (delivery.status, delivery.skip_reason) {
                (DeliveryStatus::Sent, _) => 0,
                (DeliveryStatus::Pending | DeliveryStatus::Requested, _) => 1,
                (DeliveryStatus::Skipped, Some(SkipReason::Exited)) => 3,
                (DeliveryStatus::Skipped, Some(SkipReason::Holdout)) => 4,
                (DeliveryStatus::Skipped | DeliveryStatus::Failed, _) => 2,
            };
            counts.entry(step.to_string()).or_default()[slot] += 1;
        }
    }
    let mut out = serde_json::Map::new();
    for step in &campaign.steps {
        let [sent, pending, skipped, exited, holdout] = counts.get(&step.id).copied().unwrap_or_default();
        let unit = renkei_campaigns::aggregation_unit(&campaign.id, Some(&step.id));
        out.insert(
            step.id.clone(),
            json!({"sent": sent, "pending": pending, "skipped": skipped, "exited": exited, "holdout": holdout, "unit": unit}),
        );
    }
    Ok(Value::Object(out))
}

/// LINE's own numbers for the campaign's aggregation unit: `delivered` is
/// renkei's count of recipients LINE accepted; impressions and clicks are
/// LINE's statistics per unit as last fetched (null: fewer than 20, or not
/// fetched yet, then `updated_at` is null too).
async fn line_json(store: &CampaignsStore, campaign: &Campaign, delivered: u64) -> Result<Value, StoreError> {
    let unit = renkei_campaigns::aggregation_unit(&campaign.id, None);
    let fetched = store.requests.unit_stats(&unit).await?;
    let (stats, at) = fetched.map_or((Default::default(), None), |(stats, at)| (stats, Some(at)));
    Ok(json!({
        "unit": unit,
        "delivered": delivered,
        "unique_impression": stats.unique_impression,
        "unique_click": stats.unique_click,
        "updated_at": at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
    }))
}

/// Per variant (null without variants): `users` (distinct LINE users it was
/// sent to), `sent` (its exposures), `clicked` (its users' clicks), and with a
/// goal `converted`, `conversion_value` and the lift against the holdout.
async fn variants_json(
    store: &CampaignsStore,
    campaign: &Campaign,
    judged: Option<&Judged>,
    period: Period,
) -> Result<Value, StoreError> {
    // A campaign's arms, or its steps' (by arm id).
    let mut arms: Vec<&str> = campaign.variants.iter().map(|v| v.id.as_str()).collect();
    for step in &campaign.steps {
        arms.extend(
            step.variants.iter().map(|v| v.id.as_str()).filter(|id| !campaign.variants.iter().any(|v| v.id == *id)),
        );
    }
    arms.dedup();
    if arms.is_empty() {
        return Ok(Value::Null);
    }
    let loaded;
    let exposures = match judged {
        Some(judged) => &judged.exposures,
        None => {
            loaded = exposures_of(store, campaign, period).await?;
            &loaded
        }
    };
    let clicks: HashMap<String, u64> = store.events.campaign_clicks_by_user(&campaign.id).await?.into_iter().collect();
    let mut out = serde_json::Map::new();
    for arm_id in arms {
        let arm: Vec<&renkei_campaigns::outcome::Exposure> = exposures
            .plain
            .iter()
            .zip(&exposures.variants)
            .filter(|(e, variant)| !e.holdout && variant.as_deref() == Some(arm_id))
            .map(|(e, _)| e)
            .collect();
        let users: HashSet<&str> = arm.iter().map(|e| e.line_user_id.as_str()).collect();
        let clicked: u64 = users.iter().filter_map(|u| clicks.get(*u)).sum();
        let mut entry = json!({"users": users.len(), "sent": arm.len(), "clicked": clicked,
                               "converted": null, "conversion_value": null, "lift": null});
        if let Some(judged) = judged {
            // The arm's trigger instances, each judged from its first exposure
            // (a step's arm counts the whole sequence of the users it reached).
            let instances: HashSet<(&str, &str)> =
                arm.iter().map(|e| (e.trigger_key.as_str(), e.line_user_id.as_str())).collect();
            let plain: Vec<_> = exposures
                .plain
                .iter()
                .filter(|e| instances.contains(&(e.trigger_key.as_str(), e.line_user_id.as_str())))
                .cloned()
                .collect();
            let group = attribute(&plain, &judged.events, judged.within).treated;
            entry["converted"] = json!(group.converted);
            entry["conversion_value"] = json!(group.conversion_value);
            entry["lift"] = json!(lift(&Outcome { treated: group, holdout: judged.outcome.holdout }));
        }
        out.insert(arm_id.to_string(), entry);
    }
    Ok(Value::Object(out))
}

/// An exposure with the variant its delivery was rendered with.
#[derive(Debug, Clone)]
struct Exposures {
    plain: Vec<renkei_campaigns::outcome::Exposure>,
    /// Aligned with `plain`.
    variants: Vec<Option<String>>,
}

/// The campaign's exposures in `period`. A step's delivery is exposed as
/// its trigger instance (the key without `/<step id>`), so a sequence is
/// judged from its first message.
async fn exposures_of(store: &CampaignsStore, campaign: &Campaign, period: Period) -> Result<Exposures, StoreError> {
    let instance = |key: String| match (campaign.steps.is_empty(), key.rsplit_once('/')) {
        (false, Some((instance, _))) => instance.to_string(),
        _ => key,
    };
    let rows = store.outbox.campaign_exposures(&campaign.id, has_variants(campaign)).await?;
    let mut exposures = Exposures { plain: Vec::with_capacity(rows.len()), variants: Vec::with_capacity(rows.len()) };
    for e in rows.into_iter().filter(|e| period.contains(e.at)) {
        exposures.variants.push(e.variant);
        exposures.plain.push(renkei_campaigns::outcome::Exposure {
            trigger_key: instance(e.trigger_key),
            line_user_id: e.line_user_id.as_str().to_string(),
            at: e.at,
            holdout: e.holdout,
        });
    }
    Ok(exposures)
}

/// Whether the campaign (or one of its steps) has A/B variants.
fn has_variants(campaign: &Campaign) -> bool {
    !campaign.variants.is_empty() || campaign.steps.iter().any(|s| !s.variants.is_empty())
}

/// A campaign with a goal, judged: its exposures, its goal events, the outcome.
struct Judged {
    exposures: Exposures,
    events: Vec<GoalEvent>,
    within: chrono::Duration,
    outcome: Outcome,
}

/// The campaign's exposures judged against its goal (`None` without a goal).
async fn judge(
    store: &CampaignsStore,
    campaign: &Campaign,
    now: DateTime<Utc>,
    tz: Tz,
    period: Period,
) -> Result<Option<Judged>, StoreError> {
    let Some(goal) = &campaign.goal else { return Ok(None) };
    let exposures = exposures_of(store, campaign, period).await?;
    let plain = &exposures.plain;
    let events = match plain.iter().map(|e| e.at).min() {
        Some(first) => goal_events(store, &campaign.id, goal, first, now, tz).await?,
        None => Vec::new(),
    };
    let outcome = attribute(plain, &events, goal.within);
    Ok(Some(Judged { exposures, events, within: goal.within, outcome }))
}

/// The goal events of the campaign's exposed users after `first`.
async fn goal_events(
    store: &CampaignsStore,
    campaign_id: &str,
    goal: &Goal,
    first: DateTime<Utc>,
    now: DateTime<Utc>,
    tz: Tz,
) -> Result<Vec<GoalEvent>, StoreError> {
    Ok(store
        .outbox
        .exposed_users_events(campaign_id, &goal.event, first)
        .await?
        .into_iter()
        .filter_map(|e| goal.goal_event(e.line_user_id.as_str(), e.occurred_at, &e.properties, now, tz))
        .collect())
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
