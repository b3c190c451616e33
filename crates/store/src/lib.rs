//! renkei's storage: one [`Store`] trait, implemented for SQLite (the
//! embedded default) and PostgreSQL (production, scale-out).
//!
//! Every write that the API acknowledges is committed before the call
//! returns, so a 2xx always means "durable".

pub mod dispatch;
mod events;
mod outbox;
pub mod membership;
mod postgres;
pub(crate) mod sqlite;
mod requests;
mod rich_menus;
mod schedule;
mod sql;
pub mod test_support;
pub mod webhook;

pub use events::EventStore;
pub use outbox::{
    CampaignCounts, Claim, ClaimOutcome, Delivery, DeliveryStatus, NewDelivery, OutboxStore, PendingDelivery, QueueKey,
    SkipReason, UserSendFacts,
};
pub use membership::MembershipStore;
pub use postgres::PgStore;
pub use schedule::{CronFire, FireState, ScheduleStore};
pub use rich_menus::{RichMenuChange, RichMenuStore};
pub use requests::{NewRequest, RequestKind, RequestStatus, RequestStore, SendRequest};
pub use sqlite::SqliteStore;
pub use webhook::WebhookStore;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{LineUserId, LinkMethod, MemberId, MemberPatch, NewEvent};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://USER:PASS@HOST/DB")]
    UnsupportedUrl(String),
    #[error("import aborted, nothing written: {0}")]
    ImportAborted(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How a batch of events went: new rows, and repeats of a known `event_id`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IngestOutcome {
    pub accepted: u64,
    pub duplicates: u64,
}

impl IngestOutcome {
    pub fn add(&mut self, other: IngestOutcome) {
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
    }
}

/// How a batch of member updates went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MembersOutcome {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub linked: u64,
}

impl MembersOutcome {
    pub fn add(&mut self, other: MembersOutcome) {
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.linked += other.linked;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub member_id: MemberId,
    pub attributes: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub member_id: MemberId,
    pub line_user_id: LineUserId,
    pub method: LinkMethod,
    pub linked_at: DateTime<Utc>,
}

/// Result of a link request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    Created(Link),
    /// The same pair was already linked; nothing changed.
    AlreadyLinked(Link),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredEvent {
    pub id: i64,
    pub event_id: Option<String>,
    pub event_type: String,
    pub member_id: Option<String>,
    pub line_user_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub properties: Map<String, Value>,
}

/// Row counts per table: what tests use to prove "nothing was written".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    pub members: u64,
    pub links: u64,
    pub friendships: u64,
    pub events: u64,
    pub webhook_events: u64,
    pub deliveries: u64,
    pub send_requests: u64,
}

/// Batches streamed into an import. An `Err` aborts the import and rolls it back.
pub type ImportReceiver<T> = mpsc::Receiver<Result<Vec<T>, String>>;

/// Everything renkei stores. The webhook, membership and dispatch parts are
/// traits of their own (in `webhook.rs`, `membership.rs`, `dispatch.rs`) so
/// each area keeps its SQL together.
#[async_trait]
pub trait Store: WebhookStore + MembershipStore + OutboxStore + EventStore + RequestStore + ScheduleStore + RichMenuStore + Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;

    /// A cheap round trip, for health checks.
    async fn ping(&self) -> StoreResult<()>;

    /// Stores a validated batch atomically. Events whose `event_id` is known
    /// (stored before, or earlier in the same batch) count as duplicates.
    async fn insert_events(&self, events: &[NewEvent], received_at: DateTime<Utc>) -> StoreResult<IngestOutcome>;

    /// Merges attributes into members (creating them), atomically. Patches
    /// carrying a `line_user_id` also link (method `import`).
    async fn upsert_members(&self, patches: &[MemberPatch], now: DateTime<Utc>) -> StoreResult<MembersOutcome>;

    async fn get_member(&self, member_id: &MemberId) -> StoreResult<Option<Member>>;

    /// Links a member (created if unknown) to a LINE user, one to one.
    /// A member or LINE user already linked elsewhere is a [`StoreError::Conflict`].
    async fn link(
        &self,
        member_id: &MemberId,
        line_user_id: &LineUserId,
        method: LinkMethod,
        at: DateTime<Utc>,
    ) -> StoreResult<LinkOutcome>;

    async fn get_link(&self, member_id: &MemberId) -> StoreResult<Option<Link>>;

    async fn get_link_by_line_user(&self, line_user_id: &LineUserId) -> StoreResult<Option<Link>>;

    /// Removes a member's link; returns what was removed.
    async fn unlink(&self, member_id: &MemberId) -> StoreResult<Option<Link>>;

    async fn set_following(&self, line_user_id: &LineUserId, following: bool, at: DateTime<Utc>) -> StoreResult<()>;

    /// `None` when no follow/unfollow was ever seen for the user.
    async fn get_following(&self, line_user_id: &LineUserId) -> StoreResult<Option<bool>>;

    /// A LINE user's events, oldest first: those sent with its `line_user_id`
    /// and those of the member linked to it (also sent before the link).
    async fn user_events(&self, line_user_id: &LineUserId) -> StoreResult<Vec<StoredEvent>>;

    async fn counts(&self) -> StoreResult<StoreCounts>;

    /// Streams batches into one transaction: all of them or, on any error, none.
    async fn import_events(
        &self,
        batches: ImportReceiver<NewEvent>,
        received_at: DateTime<Utc>,
    ) -> StoreResult<IngestOutcome>;

    /// Streams member batches into one transaction: all of them or none.
    async fn import_members(
        &self,
        batches: ImportReceiver<MemberPatch>,
        now: DateTime<Utc>,
    ) -> StoreResult<MembersOutcome>;
}

/// Opens the store named by a `sqlite://` or `postgres://` URL.
pub async fn connect(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }
}

/// The conflict message when a LINE user is already claimed by another member.
fn line_user_claimed(line_user_id: &str, by: &str) -> StoreError {
    StoreError::Conflict(format!("line_user_id {line_user_id} is already linked to another member ({by})"))
}

fn member_already_linked(member_id: &str, to: &str) -> StoreError {
    StoreError::Conflict(format!(
        "member {member_id} is already linked to {to}; unlink it first (DELETE /v1/links/{{member_id}})"
    ))
}

fn parse_object(text_or_value: Value, what: &str) -> StoreResult<Map<String, Value>> {
    match text_or_value {
        Value::Object(map) => Ok(map),
        _ => Err(StoreError::Corrupt(format!("{what} is not a JSON object"))),
    }
}

fn parse_link(member_id: String, line_user_id: String, method: String, linked_at: DateTime<Utc>) -> StoreResult<Link> {
    Ok(Link {
        member_id: MemberId::parse(&member_id).map_err(|e| StoreError::Corrupt(format!("member_id: {e}")))?,
        line_user_id: LineUserId::parse(&line_user_id)
            .map_err(|e| StoreError::Corrupt(format!("line_user_id: {e}")))?,
        method: LinkMethod::parse(&method).ok_or_else(|| StoreError::Corrupt(format!("link method {method:?}")))?,
        linked_at,
    })
}

/// What merging a patch into a member's current attributes amounts to.
fn merged(current: Option<&Map<String, Value>>, patch: &Map<String, Value>) -> (Map<String, Value>, bool) {
    let mut next = current.cloned().unwrap_or_default();
    renkei_core::merge_attributes(&mut next, patch);
    let changed = current != Some(&next);
    (next, changed)
}

pub(crate) fn parse_user(text: &str) -> StoreResult<LineUserId> {
    LineUserId::parse(text).map_err(|e| StoreError::Corrupt(format!("line_user_id {text:?}: {e}")))
}

pub(crate) fn parse_member(text: &str) -> StoreResult<MemberId> {
    MemberId::parse(text).map_err(|e| StoreError::Corrupt(format!("member_id {text:?}: {e}")))
}
