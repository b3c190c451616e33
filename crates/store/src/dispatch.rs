//! Storage for campaigns and dispatch: the outbox of deliveries, the LINE
//! requests they are sent in, cron fires, campaign pause state, per-user
//! rich-menu state and tailing cursors. Both backends live in this file.
//!
//! The guarantees rest on three keys:
//! - a delivery is unique per `(campaign_id, trigger_key, recipient_key)`:
//!   a trigger instance reaches a user once, whoever enqueues it and however often;
//! - a request's `retry_key` (`X-Line-Retry-Key`) and its recipients are
//!   committed before the first attempt and never change, so a retry after
//!   a crash is recognised by LINE (409 = already accepted);
//! - rows are claimed with leases (`FOR UPDATE SKIP LOCKED` on PostgreSQL),
//!   so several instances share the work without doing any of it twice.

use crate::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{LineUserId, MemberId};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for `due_at` (and for a lease).
    Pending,
    /// Passed the policies and assigned to a request (counts as sent for caps).
    Requested,
    /// LINE accepted the request (2xx or 409 for its retry key).
    Sent,
    /// A policy said no; `skip_reason` says which.
    Skipped,
    /// LINE refused the request permanently (a 4xx other than 409/429).
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Requested => "requested",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Skipped => "skipped",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => DeliveryStatus::Pending,
            "requested" => DeliveryStatus::Requested,
            "sent" => DeliveryStatus::Sent,
            "skipped" => DeliveryStatus::Skipped,
            "failed" => DeliveryStatus::Failed,
            _ => return None,
        })
    }
}

/// A message to one user for one trigger instance of a campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub campaign_id: String,
    /// The trigger instance: `entered:<transition id>`, `schedule:<fire time RFC 3339>`,
    /// `event:<event row id>`.
    pub trigger_key: String,
    /// The dedupe key of the recipient: the `line_user_id` when known at
    /// enqueue time, else `member:<member_id>`.
    pub recipient_key: String,
    /// `None` when the user is resolved through the member's link at send time.
    pub line_user_id: Option<LineUserId>,
    pub member_id: Option<MemberId>,
    /// When it should go out (delay, `at`, schedule); policies may defer it.
    pub due_at: DateTime<Utc>,
    /// The rendered LINE message objects (a JSON array of 1 to 5).
    pub messages: Value,
    /// What send-time checks need (e.g. the trigger event for `unless`). A JSON object.
    pub context: Value,
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub campaign_id: String,
    pub trigger_key: String,
    pub recipient_key: String,
    pub line_user_id: Option<LineUserId>,
    pub member_id: Option<MemberId>,
    pub due_at: DateTime<Utc>,
    pub messages: Value,
    pub context: Value,
    pub status: DeliveryStatus,
    pub skip_reason: Option<String>,
    pub request_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    /// When it was assigned to a request (what caps count).
    pub requested_at: Option<DateTime<Utc>>,
}

/// Which LINE endpoint a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    Push,
    Multicast,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Push => "push",
            RequestKind::Multicast => "multicast",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "push" => Some(RequestKind::Push),
            "multicast" => Some(RequestKind::Multicast),
            _ => None,
        }
    }
}

/// A LINE request to create, carrying deliveries that share the same messages.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRequest {
    pub kind: RequestKind,
    /// Fixed now, reused on every attempt.
    pub retry_key: Uuid,
    /// The `messages` array sent.
    pub messages: Value,
    /// The recipients, in the order sent (one for push, ≤ 500 for multicast).
    pub recipients: Vec<LineUserId>,
    /// The deliveries it carries (same length as `recipients`).
    pub delivery_ids: Vec<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Pending,
    Sent,
    Failed,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Sent => "sent",
            RequestStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(RequestStatus::Pending),
            "sent" => Some(RequestStatus::Sent),
            "failed" => Some(RequestStatus::Failed),
            _ => None,
        }
    }
}

/// A LINE request as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SendRequest {
    pub id: i64,
    pub kind: RequestKind,
    pub retry_key: Uuid,
    pub messages: Value,
    pub recipients: Vec<LineUserId>,
    pub status: RequestStatus,
    /// Attempts made so far (incremented by `claim_requests`).
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub accepted_request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// Counts of one campaign's deliveries by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CampaignCounts {
    pub pending: u64,
    /// Assigned to a request not yet accepted.
    pub requested: u64,
    pub sent: u64,
    pub failed: u64,
    /// Skips by reason.
    pub skipped: BTreeMap<String, u64>,
}

/// A recorded cron fire of a scheduled campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CronFire {
    pub campaign_id: String,
    pub fire_at: DateTime<Utc>,
    /// `started` (enqueueing), `done`, or `missed` (skipped by the catch-up rule).
    pub state: String,
}

/// A user whose rich menu must change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RichMenuChange {
    pub line_user_id: LineUserId,
    /// The menu to link; `None` means unlink.
    pub desired: Option<String>,
    /// The menu LINE has now (as far as renkei knows).
    pub linked: Option<String>,
}

#[async_trait]
pub trait DispatchStore: Send + Sync + 'static {
    // ---- deliveries (the outbox) ----

    /// Inserts deliveries atomically, ignoring any whose
    /// `(campaign_id, trigger_key, recipient_key)` exists. Returns how many were new.
    async fn insert_deliveries(&self, deliveries: &[NewDelivery], now: DateTime<Utc>) -> StoreResult<u64>;

    /// Leases up to `limit` pending deliveries with `due_at <= now` whose
    /// lease is free or expired (earliest due first), for `owner` until `lease_until`.
    /// Deliveries of paused campaigns are not claimed.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Vec<Delivery>>;

    /// Marks leased deliveries skipped with a reason (e.g. `unfollowed`, `frequency_cap`).
    async fn skip_deliveries(&self, skips: &[(i64, String)], at: DateTime<Utc>) -> StoreResult<()>;

    /// Releases leased deliveries with a new `due_at` (quiet hours, quota pause).
    async fn defer_deliveries(&self, ids: &[i64], until: DateTime<Utc>) -> StoreResult<()>;

    /// Sets the resolved `line_user_id` of deliveries enqueued with a member only.
    async fn resolve_delivery_user(&self, id: i64, line_user_id: &LineUserId) -> StoreResult<()>;

    /// Creates the requests and marks their deliveries `requested` (with
    /// `requested_at = now`), in one transaction. Deliveries no longer leased by
    /// `owner` make the whole call fail with `StoreError::Conflict` and change nothing.
    async fn create_requests(&self, requests: &[NewRequest], owner: &str, now: DateTime<Utc>) -> StoreResult<Vec<i64>>;

    /// How many deliveries were `requested` or `sent` to the user since `since`
    /// (by `requested_at`), for one campaign or across all (`None`).
    async fn count_sent_since(
        &self,
        line_user_id: &LineUserId,
        campaign_id: Option<&str>,
        since: DateTime<Utc>,
    ) -> StoreResult<u64>;

    async fn get_delivery(&self, id: i64) -> StoreResult<Option<Delivery>>;

    /// Deliveries of a campaign (all states), by id, strictly after `after_id`.
    async fn campaign_deliveries(&self, campaign_id: &str, after_id: i64, limit: u32) -> StoreResult<Vec<Delivery>>;

    async fn campaign_counts(&self, campaign_id: &str) -> StoreResult<CampaignCounts>;

    /// The earliest `due_at` of a pending delivery, to sleep until.
    async fn next_delivery_due(&self) -> StoreResult<Option<DateTime<Utc>>>;

    // ---- requests ----

    /// Leases up to `limit` pending requests with `next_attempt_at <= now` and
    /// a free or expired lease, incrementing `attempts`.
    async fn claim_requests(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Vec<SendRequest>>;

    /// LINE accepted it: the request and its deliveries become `sent`.
    async fn complete_request(&self, id: i64, accepted_request_id: Option<&str>, at: DateTime<Utc>) -> StoreResult<()>;

    /// A retryable failure: release the lease, try again at `next_attempt_at`.
    async fn retry_request(&self, id: i64, next_attempt_at: DateTime<Utc>, error: &str) -> StoreResult<()>;

    /// A permanent failure: the request and its deliveries become `failed` with `error`.
    async fn fail_request(&self, id: i64, error: &str, at: DateTime<Utc>) -> StoreResult<()>;

    async fn get_request(&self, id: i64) -> StoreResult<Option<SendRequest>>;

    /// The earliest `next_attempt_at` of a pending request.
    async fn next_request_due(&self) -> StoreResult<Option<DateTime<Utc>>>;

    // ---- campaigns ----

    async fn set_campaign_paused(&self, campaign_id: &str, paused: bool, at: DateTime<Utc>) -> StoreResult<()>;

    async fn paused_campaigns(&self) -> StoreResult<Vec<String>>;

    /// Records that a campaign was first seen enabled at `at` (kept if already
    /// recorded). Returns the stored instant: segment entries before it do not trigger.
    async fn campaign_enabled_at(&self, campaign_id: &str, at: DateTime<Utc>) -> StoreResult<DateTime<Utc>>;

    // ---- cron fires ----

    /// Records a fire as `started`. `true` when this call recorded it, `false`
    /// when it was recorded before (by this or another instance).
    async fn record_fire(&self, campaign_id: &str, fire_at: DateTime<Utc>, state: &str) -> StoreResult<bool>;

    async fn set_fire_state(&self, campaign_id: &str, fire_at: DateTime<Utc>, state: &str) -> StoreResult<()>;

    /// The latest recorded fire of a campaign.
    async fn last_fire(&self, campaign_id: &str) -> StoreResult<Option<CronFire>>;

    /// Fires left `started` (a crash while enqueueing), to finish.
    async fn unfinished_fires(&self) -> StoreResult<Vec<CronFire>>;

    // ---- cursors (tailing transitions and events) ----

    async fn get_cursor(&self, name: &str) -> StoreResult<Option<i64>>;

    async fn set_cursor(&self, name: &str, value: i64) -> StoreResult<()>;

    /// Events with row id `> after_id` whose type is one of `types`, oldest first.
    async fn events_after(
        &self,
        after_id: i64,
        types: &[String],
        limit: u32,
    ) -> StoreResult<Vec<crate::StoredEvent>>;

    /// The largest event row id (0 when none).
    async fn max_event_id(&self) -> StoreResult<i64>;

    /// The largest transition row id (0 when none).
    async fn max_transition_id(&self) -> StoreResult<i64>;

    // ---- rich menus ----

    /// Sets each user's desired menu (`None` = no per-user menu).
    async fn set_desired_rich_menus(&self, desired: &[(LineUserId, Option<String>)], now: DateTime<Utc>) -> StoreResult<()>;

    /// Leases up to `limit` users whose desired menu differs from the linked one.
    async fn claim_rich_menu_changes(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Vec<RichMenuChange>>;

    /// Records that LINE now has `linked` for these users and releases them.
    async fn mark_rich_menus_linked(&self, done: &[(LineUserId, Option<String>)], now: DateTime<Utc>) -> StoreResult<()>;

    /// Releases users after a failed attempt, to retry at `retry_at`.
    async fn release_rich_menu_changes(&self, users: &[LineUserId], retry_at: DateTime<Utc>, error: &str) -> StoreResult<()>;

    /// The menu LINE has for a user, as far as renkei knows.
    async fn linked_rich_menu(&self, line_user_id: &LineUserId) -> StoreResult<Option<String>>;
}
