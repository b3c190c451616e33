//! renkei's storage, for SQLite (the embedded default) and PostgreSQL
//! (production, scale-out), by area: members & links ([`MemberStore`]),
//! events ([`EventStore`]), the webhook inbox ([`WebhookStore`]),
//! memberships & transitions ([`MembershipStore`], [`MembershipReads`]),
//! the outbox ([`OutboxStore`], [`OutboxReads`]), LINE requests
//! ([`RequestStore`]), the scheduler's state ([`ScheduleStore`]), rich
//! menus ([`RichMenuStore`]), leases for singleton work ([`LeaseStore`]),
//! re-evaluations a stop left waiting ([`PendingStore`]), the change feed
//! evaluators of every process follow ([`ChangeFeed`]), the replies
//! made to users' messages ([`ReplyStore`]), the webhook relay's queue
//! ([`RelayStore`]), the dashboard's operators, sessions and audit log
//! ([`OperatorStore`]) and its reads of other areas ([`OverviewReads`]),
//! the channel's send budget shared by instances ([`BudgetStore`]).
//! [`Store`] is all
//! of them at once.
//!
//! Each area's types and shared SQL are in `<area>.rs`; what differs per
//! backend is in `sqlite/<area>.rs` and `postgres/<area>.rs`. SQL the
//! dialects agree on is written once over the dialect layer (`sql.rs`).
//!
//! Every write that the API acknowledges is committed before the call
//! returns, so a 2xx always means "durable".

pub mod budget;
pub mod changes;
pub mod dispatch;
mod events;
mod leases;
mod members;
pub mod membership;
mod operators;
mod outbox;
mod overview;
pub mod pending;
mod postgres;
pub mod relay;
mod replies;
mod requests;
mod rich_menus;
mod schedule;
mod sql;
mod sqlite;
mod tallies;
#[cfg(feature = "test-support")]
mod test_reads;
pub mod webhook;

pub use budget::{BudgetSlot, BudgetStore, BudgetTake};
pub use changes::{ChangeFeed, UserChanges};
pub use events::{Appended, EventStore, FanoutHit, FanoutQuery, IngestOutcome, Merged, StoredEvent};
pub use leases::{LeaseHolder, LeaseStore};
pub use members::{Link, LinkOutcome, Member, MemberStore, MembersOutcome};
pub use membership::{
    AudiencePage, Cause, EventSelection, FactEventRecord, MembershipReads, MembershipStore, MembershipUpdate,
    SegmentStats, StoredTransition, TotalsRecord, Transition, TransitionKind, UserEventRecord, UserRecord,
};
pub use operators::{AuditEntry, Operator, OperatorRole, OperatorSession, OperatorStore};
pub use outbox::{
    AlikeFire, CampaignCounts, Claim, ClaimOutcome, Delivery, DeliveryStatus, ExposureRow, NewDelivery, OutboxReads,
    OutboxStore, PendingDelivery, QueueKey, SkipReason, UserEventRow, UserSendFacts,
};
pub use overview::{
    DashboardTally, FailedRequest, HourCount, OverviewCounts, OverviewReads, UserDelivery, WaitingDeliveries,
};
pub use pending::{PendingEvaluations, PendingStore, SavedPending};
pub use postgres::PgStore;
pub use relay::{RelayBody, RelayCounts, RelayItem, RelayStore};
pub use replies::{ReplyCount, ReplyRecord, ReplyStore};
pub use requests::{NewRequest, RequestKind, RequestStatus, RequestStore, SendRequest, UnitSends, UnitStats};
pub use rich_menus::{RichMenuChange, RichMenuStore};
pub use schedule::{CronFire, FireState, ScheduleStore};
pub use sqlite::SqliteStore;
#[cfg(feature = "test-support")]
pub use test_reads::{RECOUNT_CAMPAIGN_COUNTS, StoreCounts, TestReads};
pub use webhook::{LinkNonce, NewWebhookEvent, NonceUse, WebhookEventRow, WebhookStore};

use async_trait::async_trait;
use renkei_core::{LineUserId, MemberId};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Conflict(String),
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://USER:PASS@HOST/DB")]
    UnsupportedUrl(String),
    #[error("import aborted, nothing written: {0}")]
    ImportAborted(String),
    #[error("cannot connect to PostgreSQL at {target}: {cause}")]
    Unreachable { target: String, cause: String },
    /// A write could not get the database within the write wait (another
    /// write holds it: an import, a recompute, another process); nothing
    /// was written, retry later.
    #[error("the database is busy ({0}); nothing was written, retry later")]
    Busy(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Waiting for the writer past the write wait is [`StoreError::Busy`]: an
/// exhausted pool (its acquire timeout is the write wait), SQLite's
/// `SQLITE_BUSY` (its `busy_timeout` is the write wait) and PostgreSQL's
/// `lock_not_available` (its `lock_timeout` is the write wait).
impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        let busy = match &error {
            sqlx::Error::PoolTimedOut => true,
            // SQLITE_BUSY and its extended codes (RECOVERY, SNAPSHOT, TIMEOUT), SQLITE_LOCKED; 55P03.
            sqlx::Error::Database(db) => {
                matches!(db.code().as_deref(), Some("5" | "261" | "517" | "773" | "6" | "55P03"))
            }
            _ => false,
        };
        if busy { StoreError::Busy(error.to_string()) } else { StoreError::Database(error) }
    }
}

/// How the store waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// The longest a write waits for the writer (SQLite's one writer
    /// connection and its file lock; a PostgreSQL connection or row lock)
    /// before it fails with [`StoreError::Busy`].
    pub write_wait: Duration,
}

/// `[database] write_wait`'s default.
pub const DEFAULT_WRITE_WAIT: Duration = Duration::from_secs(5);

impl Default for StoreOptions {
    fn default() -> Self {
        Self { write_wait: DEFAULT_WRITE_WAIT }
    }
}

/// Whether writes can get the writer now, as `/healthz` reports it: found
/// without taking the writer, so it answers while the writer is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WriteState {
    /// The writer has been held (SQLite), or a write has waited on a lock
    /// (PostgreSQL), for at least [`WriteState::BLOCKED_AFTER`].
    pub blocked: bool,
    /// For how long, in milliseconds (0 when the writer is free).
    pub held_ms: u64,
}

impl WriteState {
    /// Writes take milliseconds; a writer held this long is holding others back.
    pub const BLOCKED_AFTER: Duration = Duration::from_secs(1);

    /// The state for a writer held `held` (`None`: free).
    pub fn held(held: Option<Duration>) -> Self {
        let held = held.unwrap_or_default();
        Self { blocked: held >= Self::BLOCKED_AFTER, held_ms: u64::try_from(held.as_millis()).unwrap_or(u64::MAX) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Batches streamed into an import. An `Err` aborts the import and rolls it back.
pub type ImportReceiver<T> = mpsc::Receiver<Result<Vec<T>, String>>;

/// Everything renkei stores, for whoever needs all of it: every area's
/// trait, plus what concerns the store as a whole. Consumers that need one
/// area can take that area's trait.
#[async_trait]
pub trait Store: AllAreas + Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;

    /// A cheap round trip, for health checks.
    async fn ping(&self) -> StoreResult<()>;

    /// Whether writes are held back now (for `/healthz`); never waits for the writer.
    async fn write_state(&self) -> StoreResult<WriteState>;
}

/// Declares a trait that is the sum of the listed ones, implemented for every
/// type that implements them all: the list is written once.
macro_rules! trait_sum {
    ($(#[$doc:meta])* $name:ident = $first:ident $(+ $rest:ident)*) => {
        $(#[$doc])*
        pub trait $name: $first $(+ $rest)* {}

        impl<T> $name for T where T: $first $(+ $rest)* {}
    };
}

trait_sum! {
    /// Every area trait (and, with the `test-support` feature, [`TestReads`]).
    AllAreas = MemberStore
        + EventStore
        + WebhookStore
        + MembershipStore
        + MembershipReads
        + OutboxStore
        + OutboxReads
        + RequestStore
        + ScheduleStore
        + RichMenuStore
        + LeaseStore
        + PendingStore
        + ChangeFeed
        + OperatorStore
        + OverviewReads
        + DashboardTally
        + ReplyStore
        + RelayStore
        + BudgetStore
        + TestReadsIfEnabled
}

#[cfg(feature = "test-support")]
pub use test_reads::TestReads as TestReadsIfEnabled;

/// Without the `test-support` feature, nothing.
#[cfg(not(feature = "test-support"))]
pub trait TestReadsIfEnabled {}
#[cfg(not(feature = "test-support"))]
impl<T> TestReadsIfEnabled for T {}

/// Declares a consumer's view of the store: one handle per area it uses,
/// each the whole store seen through that area's trait. What a role may
/// touch is its view's field list; [`connect`]'s store makes any view.
///
/// ```ignore
/// renkei_store::store_view! {
///     /// What the engine reads and writes.
///     pub struct EngineStore { memberships: MembershipStore, reads: MembershipReads }
/// }
/// ```
#[macro_export]
macro_rules! store_view {
    ($(#[$doc:meta])* $vis:vis struct $name:ident { $($field:ident: $area:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone)]
        $vis struct $name {
            $(pub $field: ::std::sync::Arc<dyn $crate::$area>,)+
        }

        impl $name {
            /// This view of `store`.
            pub fn of(store: &::std::sync::Arc<dyn $crate::Store>) -> Self {
                Self { $($field: store.clone(),)+ }
            }
        }
    };
}

/// Opens the store named by a `sqlite://` or `postgres://` URL.
pub async fn connect(url: &str) -> StoreResult<Arc<dyn Store>> {
    connect_with(url, StoreOptions::default()).await
}

/// As [`connect`], with `options`.
pub async fn connect_with(url: &str, options: StoreOptions) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect_with(url, options).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect_with(url, options).await?))
    } else {
        Err(StoreError::UnsupportedUrl(without_password(url)))
    }
}

/// `url` with the password of its `user:password@` part replaced by `***`,
/// for messages (never more of the URL than it must: a missing or unusual
/// URL is shown whole only when it has no password part).
pub(crate) fn without_password(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = url.split_at(start);
    // The last `@`: a password may hold an unescaped `/` or `@`.
    let Some(at) = rest.rfind('@') else { return url.to_string() };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}{user}:***{}", &rest[at..]),
        None => url.to_string(),
    }
}

fn parse_object(text_or_value: Value, what: &str) -> StoreResult<Map<String, Value>> {
    match text_or_value {
        Value::Object(map) => Ok(map),
        _ => Err(StoreError::Corrupt(format!("{what} is not a JSON object"))),
    }
}

pub(crate) fn parse_user(text: &str) -> StoreResult<LineUserId> {
    LineUserId::parse(text).map_err(|e| StoreError::Corrupt(format!("line_user_id {text:?}: {e}")))
}

pub(crate) fn parse_member(text: &str) -> StoreResult<MemberId> {
    MemberId::parse(text).map_err(|e| StoreError::Corrupt(format!("member_id {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn urls_lose_their_password_only() {
        assert_eq!(without_password("mysql://u:pw@h:3306/db"), "mysql://u:***@h:3306/db");
        assert_eq!(without_password("u:p/w@d@h/db"), "u:***@h/db");
        assert_eq!(without_password("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(without_password("renkei.db"), "renkei.db");
    }

    #[tokio::test]
    async fn an_unsupported_url_is_named_without_its_password() {
        let Err(error) = super::connect("mysql://renkei:hunter2@db/renkei").await else { panic!("mysql connected") };
        let message = error.to_string();
        assert!(message.contains("mysql://renkei:***@db/renkei") && !message.contains("hunter2"), "{message}");
    }
}
