//! renkei's HTTP API, served by the `api` role: one error type and body
//! ([`ApiError`], codes in [`ErrorCode`]), the bearer-key layer, and every
//! `/v1` route by area, plus the public tracked links (`/t/…`), and the
//! per-request [`limits`] (body read time, rate per key).
//!
//! | module | routes |
//! |---|---|
//! | [`ingest`] | `POST /v1/events`, `POST /v1/members`, `POST /v1/links`, `GET`/`DELETE /v1/links/{member_id}` |
//! | [`segments`] | `GET /v1/segments`, `GET /v1/segments/{id}/members` |
//! | [`campaigns`] | `GET /v1/campaigns`, `GET /v1/campaigns/{id}/stats`, `POST /v1/campaigns/{id}/pause`, `…/resume` |
//! | [`track`] | `GET /t/{token}` (no bearer key) |
//! | [`member_code`] | `GET /member-code/{token}`: a member's QR code as PNG (no bearer key) |
//!
//! The webhook role's routes (`POST /webhook/line`, and the ID連携 routes
//! `POST /v1/account-link/nonce`, `POST /v1/links/id-token`, which share the
//! webhook's LINE channel settings) live in `renkei-webhook` and answer with
//! the same [`ApiError`]. Logic that is not HTTP stays in its crate: file
//! imports in `renkei-ingest`, the segment engine in `renkei-evaluator`,
//! campaign counts in the store.

pub mod auth;
pub mod campaigns;
pub mod error;
pub mod head;
pub mod ingest;
pub mod limits;
pub mod member_code;
pub mod merger;
pub mod metrics;
pub mod segments;
pub mod track;

pub use auth::require_api_key;
pub use campaigns::CampaignsStore;
pub use error::{ApiError, ErrorCode};
pub use ingest::{IngestState, IngestStore, json_object, link_json};
pub use limits::{BodyDeadline, KeyRateLimits, RateLimit};
pub use merger::EventMerger;
pub use metrics::IngestMetrics;

use axum::Router;
use renkei_campaigns::CampaignSet;
use renkei_core::{ChangeListener, Clock};
use renkei_evaluator::MembershipEngine;
use std::sync::Arc;

renkei_store::store_view! {
    /// What the `api` role's routes read and write, all of it.
    pub struct ApiStore {
        events: EventStore,
        members: MemberStore,
        outbox: OutboxReads,
        schedule: ScheduleStore,
        requests: RequestStore,
    }
}

#[derive(Clone)]
pub struct ApiState {
    pub store: ApiStore,
    pub clock: Arc<dyn Clock>,
    /// Told about every user whose data a request changed, after it is durable.
    pub changes: Arc<dyn ChangeListener>,
    pub metrics: Arc<IngestMetrics>,
    /// Moves the events `POST /v1/events` appends into `events` (see [`merger`]).
    pub merger: Arc<EventMerger>,
    /// Answers the segment reads (it need not be running).
    pub engine: Arc<MembershipEngine>,
    pub campaigns: Arc<CampaignSet>,
    /// `server.api_keys`; none configured refuses every `/v1` request.
    pub api_keys: Arc<Vec<String>>,
    /// Each key's rate limit (`server.rate_limit_per_second`).
    pub key_limits: Arc<KeyRateLimits>,
}

/// Every route of the `api` role: the `/v1` routes (with `more_v1`, e.g.
/// the webhook crate's ID連携 routes) behind the bearer-key layer, and the
/// public tracked links.
pub fn router(state: ApiState, more_v1: Router) -> Router {
    let v1 = ingest::router(IngestState {
        store: ingest::IngestStore { events: state.store.events.clone(), members: state.store.members.clone() },
        clock: state.clock.clone(),
        metrics: state.metrics.clone(),
        changes: state.changes.clone(),
        merger: state.merger.clone(),
    })
    .merge(segments::router(state.engine.clone()))
    .merge(campaigns::router(campaigns::CampaignsApi {
        store: campaigns::CampaignsStore {
            events: state.store.events.clone(),
            outbox: state.store.outbox,
            schedule: state.store.schedule,
            requests: state.store.requests,
        },
        campaigns: state.campaigns.clone(),
        clock: state.clock.clone(),
        timezone: state.engine.timezone(),
    }))
    .merge(more_v1);
    let member_codes = member_code::router(member_code::MemberCodeApi {
        campaigns: state.campaigns.clone(),
        clock: state.clock.clone(),
    });
    let tracked = track::router(track::TrackApi {
        store: state.store.events,
        campaigns: state.campaigns,
        clock: state.clock,
        changes: state.changes,
    });
    tracked.merge(member_codes).merge(require_api_key(v1, state.api_keys, state.key_limits))
}
