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
//! - work is claimed so that several instances share it without doing any
//!   of it twice: due deliveries are held by the planner's open transaction
//!   ([`Claim`]), requests with leases.
//!
//! The outbox is laid out for LINE's multicast rate (~100,000 deliveries/s):
//! a delivery row is written once and is not rewritten on its way out.
//! Pending deliveries wait in the narrow `delivery_queue`; assigning one to
//! a request inserts a narrow `delivery_sends` row (which also serves the
//! frequency caps); whether it was sent or failed is its request's state, so
//! completing a 500-recipient multicast writes one row, not 501.

use crate::sqlite::{from_micros, to_micros};
pub use crate::schedule::{CronFire, FireState};
pub use crate::rich_menus::RichMenuChange;
pub use crate::requests::{NewRequest, RequestKind, RequestStatus, SendRequest};
use crate::requests::{recipients_json, retry_key_conflict};
use crate::sqlite::{ids_json, json_text, users_json};
use crate::{PgStore, SqliteStore, StoreError, StoreResult, StoredEvent, parse_member, parse_user};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
pub use renkei_core::DeliveryStatus;
use renkei_core::{LineUserId, MemberId};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
// foldhash: dispatch hashes every user id of a batch; SipHash cost more than the work around it.
use foldhash::{HashMap, HashMapExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use uuid::Uuid;

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
    /// Shared by the deliveries of one read that carry the same messages
    /// (a campaign's usually do), so they are decoded once.
    pub messages: Arc<Value>,
    pub context: Value,
    pub status: DeliveryStatus,
    pub skip_reason: Option<String>,
    pub request_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    /// When it was assigned to a request (what caps count).
    pub requested_at: Option<DateTime<Utc>>,
}

/// A delivery's place in the queue: due first, then id.
pub type QueueKey = (DateTime<Utc>, i64);

/// A pending delivery as a planner claims it: what the policies and the
/// request grouping need, nothing more.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingDelivery {
    pub id: i64,
    pub campaign_id: String,
    pub line_user_id: Option<LineUserId>,
    pub member_id: Option<MemberId>,
    pub due_at: DateTime<Utc>,
    /// Shared by the deliveries of one read that carry the same messages
    /// (a campaign's usually do), so they are decoded once.
    pub messages: Arc<Value>,
    /// Shared like `messages` by deliveries with the same context.
    pub context: Arc<Value>,
}

impl From<Delivery> for PendingDelivery {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            campaign_id: d.campaign_id,
            line_user_id: d.line_user_id,
            member_id: d.member_id,
            due_at: d.due_at,
            messages: d.messages,
            context: Arc::new(d.context),
        }
    }
}

/// What a planner decided for the deliveries of a [`Claim`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimOutcome {
    /// Requests to create; their deliveries become `requested` (with `requested_at` = the commit's `now`).
    pub requests: Vec<NewRequest>,
    /// Deliveries a policy refused, with the reason (e.g. `unfollowed`, `frequency_cap`).
    pub skips: Vec<(i64, String)>,
    /// Deliveries that wait until a later instant (quiet hours, quota).
    pub defers: Vec<(i64, DateTime<Utc>)>,
    /// LINE users found through the member's link for deliveries enqueued with a member only.
    pub resolved: Vec<(i64, LineUserId)>,
}

/// Due deliveries held by one planner until it commits what it decided.
///
/// PostgreSQL holds them with row locks (`FOR UPDATE SKIP LOCKED`) in an
/// open transaction, so other claims pass them by; SQLite holds its single
/// writer. Nothing is written to claim: dropping the claim, a failed commit or
/// a crash rolls back and leaves them due as they were.
pub struct Claim {
    /// The held deliveries, earliest due first; the planner may take them out.
    pub deliveries: Vec<PendingDelivery>,
    /// The campaign of each held delivery.
    held: BTreeMap<i64, String>,
    lock: Option<Box<dyn ClaimLock>>,
}

impl Claim {
    fn new(mut deliveries: Vec<PendingDelivery>, lock: Box<dyn ClaimLock>) -> Self {
        deliveries.sort_by_key(|d| (d.due_at, d.id));
        let held = deliveries.iter().map(|d| (d.id, d.campaign_id.clone())).collect();
        Self { deliveries, held, lock: Some(lock) }
    }

    fn empty() -> Self {
        Self { deliveries: Vec::new(), held: BTreeMap::new(), lock: None }
    }

    /// How many deliveries are held (also after they were taken out).
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Commits `outcome` atomically and releases the claim. Every held
    /// delivery must be in exactly one request, skip or defer; anything else
    /// is a [`StoreError::Conflict`] and changes nothing. Returns the new
    /// request ids, in the order of `outcome.requests`.
    /// Gives the held deliveries back unchanged, now. (Dropping a claim
    /// does too, but PostgreSQL's rollback then waits until its connection
    /// is next used, and the rows stay held until then.)
    pub async fn release(self) -> StoreResult<()> {
        match self.lock {
            Some(lock) => lock.rollback().await,
            None => Ok(()),
        }
    }

    pub async fn commit(self, outcome: &ClaimOutcome, now: DateTime<Utc>) -> StoreResult<Vec<i64>> {
        let Claim { held, lock, .. } = self;
        let checked = check_outcome(&held, outcome);
        let Some(mut lock) = lock else { return checked.map(|()| Vec::new()) };
        // Released at once on failure, not when the connection is next used.
        let written = match checked {
            Ok(()) => lock.write(&held, outcome, now).await,
            Err(error) => Err(error),
        };
        match written {
            Ok(ids) => lock.commit().await.map(|()| ids),
            Err(error) => {
                if let Err(rollback) = lock.rollback().await {
                    tracing::warn!(%rollback, "rolling back a refused claim failed; it is released with its connection");
                }
                Err(error)
            }
        }
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("held", &self.held.keys()).finish_non_exhaustive()
    }
}

/// A backend's hold on claimed deliveries.
#[async_trait]
trait ClaimLock: Send {
    /// Writes a checked outcome in the claim's transaction; returns the request ids.
    async fn write(
        &mut self,
        held: &BTreeMap<i64, String>,
        outcome: &ClaimOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>>;

    async fn commit(self: Box<Self>) -> StoreResult<()>;

    async fn rollback(self: Box<Self>) -> StoreResult<()>;
}

/// A user as the send-time policies see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserSendFacts {
    pub member_id: Option<MemberId>,
    /// A linked user counts as following until an unfollow is seen (as in
    /// [`UserRecord`](crate::membership::UserRecord)).
    pub following: bool,
    /// The asked-for segments the user is in now.
    pub segments: BTreeSet<String>,
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

#[async_trait]
pub trait DispatchStore: Send + Sync + 'static {
    // ---- deliveries (the outbox) ----

    /// Inserts deliveries atomically (pending, queued for `due_at`), ignoring any whose
    /// `(campaign_id, trigger_key, recipient_key)` exists. Returns how many were new.
    async fn insert_deliveries(&self, deliveries: &[NewDelivery], now: DateTime<Utc>) -> StoreResult<u64>;

    /// Holds up to `limit` pending deliveries with `due_at <= now` that no
    /// other claim holds, earliest due first, until the claim is committed or
    /// dropped. Deliveries of paused campaigns are not claimed. On SQLite the
    /// claim holds the only writer: no other write of this store may be
    /// awaited while it is open.
    async fn claim_deliveries(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Claim> {
        self.claim_deliveries_after(now, limit, None).await
    }

    /// [`claim_deliveries`](Self::claim_deliveries) looking only past `after`
    /// (a `(due_at, id)` in queue order). A planner that took everything up
    /// to there (or saw it taken) starts past it: on PostgreSQL the head of
    /// the queue is a trail of deleted rows until vacuum comes, and every
    /// claim from the start would walk all of it.
    async fn claim_deliveries_after(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        after: Option<QueueKey>,
    ) -> StoreResult<Claim>;

    /// How many deliveries were `requested` or `sent` to each user since
    /// `since` (by `requested_at`), for one campaign or across all (`None`).
    /// Users with none are absent.
    async fn sent_counts(
        &self,
        users: &[LineUserId],
        campaign_id: Option<&str>,
        since: DateTime<Utc>,
    ) -> StoreResult<HashMap<LineUserId, u64>>;

    /// The LINE users linked to these members; members without a link are absent.
    async fn member_line_users(&self, members: &[MemberId]) -> StoreResult<HashMap<MemberId, LineUserId>>;

    /// What the policies need about each user at send time, for a whole
    /// batch at once: the linked member, whether they follow, and which of
    /// `segments` they are in. Every given user is in the answer.
    async fn send_facts(
        &self,
        users: &[LineUserId],
        segments: &[String],
    ) -> StoreResult<HashMap<LineUserId, UserSendFacts>>;

    async fn get_delivery(&self, id: i64) -> StoreResult<Option<Delivery>>;

    /// Deliveries of a campaign (all states), by id, strictly after `after_id`.
    async fn campaign_deliveries(&self, campaign_id: &str, after_id: i64, limit: u32) -> StoreResult<Vec<Delivery>>;

    async fn campaign_counts(&self, campaign_id: &str) -> StoreResult<CampaignCounts>;

    /// The earliest `due_at` of a pending delivery of a running campaign, to
    /// sleep until (also when another claim holds it).
    async fn next_delivery_due(&self) -> StoreResult<Option<DateTime<Utc>>>;

    /// Events with row id `> after_id` whose type is one of `types`, oldest first.
    async fn events_after(&self, after_id: i64, types: &[String], limit: u32) -> StoreResult<Vec<crate::StoredEvent>>;

    /// The largest event row id (0 when none).
    async fn max_event_id(&self) -> StoreResult<i64>;

    /// `link_click` events of a campaign's tracked links: (clicks, distinct users).
    async fn campaign_clicks(&self, campaign_id: &str) -> StoreResult<(u64, u64)>;

}

// ------------------------------------------------------------ shared

/// A delivery's own columns, as the row readers expect them with the
/// request-derived ones (`status`, `request_id`, `requested_at`) around them.
macro_rules! delivery_own_columns {
    () => {
        "d.id, d.campaign_id, d.trigger_key, d.recipient_key, d.line_user_id, d.member_id, d.due_at, \
         CAST(d.messages AS TEXT) AS messages, CAST(d.context AS TEXT) AS context, d.skip_reason, d.created_at"
    };
}

/// Deliveries as stored (`d`), with their state taken from their request
/// (`s`, `r`) once they are in one. Standard SQL for both backends.
macro_rules! select_deliveries {
    () => {
        concat!(
            "SELECT ",
            delivery_own_columns!(),
            ", ",
            delivery_status!(),
            " AS status, s.request_id, s.requested_at FROM ",
            deliveries_with_requests!()
        )
    };
}

/// One campaign's deliveries counted by state and skip reason; `$campaign` is the placeholder.
macro_rules! count_deliveries {
    ($campaign:literal) => {
        concat!(
            "SELECT ",
            delivery_status!(),
            " AS status, d.skip_reason, COUNT(*) AS n FROM ",
            deliveries_with_requests!(),
            " WHERE d.campaign_id = ",
            $campaign,
            " GROUP BY 1, 2"
        )
    };
}

macro_rules! deliveries_with_requests {
    () => {
        "deliveries d LEFT JOIN delivery_sends s ON s.delivery_id = d.id LEFT JOIN send_requests r ON r.id = s.request_id"
    };
}

macro_rules! delivery_status {
    () => {
        "CASE WHEN s.request_id IS NULL THEN d.status WHEN r.status = 'pending' THEN 'requested' ELSE r.status END"
    };
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn delivery_status(text: &str) -> StoreResult<DeliveryStatus> {
    DeliveryStatus::parse(text).ok_or_else(|| StoreError::Corrupt(format!("delivery status {text:?}")))
}

fn parse_json(text: &str, what: &str) -> StoreResult<Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

fn opt_user(text: Option<String>) -> StoreResult<Option<LineUserId>> {
    text.as_deref().map(parse_user).transpose()
}

fn opt_member(text: Option<String>) -> StoreResult<Option<MemberId>> {
    text.as_deref().map(parse_member).transpose()
}

/// Checks a batch of requests before anything is written; returns every delivery id.
fn request_delivery_ids(requests: &[NewRequest]) -> StoreResult<Vec<i64>> {
    let mut ids = Vec::new();
    for request in requests {
        if request.delivery_ids.is_empty() || request.delivery_ids.len() != request.recipients.len() {
            return Err(StoreError::Conflict(format!(
                "request {} carries {} deliveries for {} recipients",
                request.retry_key,
                request.delivery_ids.len(),
                request.recipients.len()
            )));
        }
        ids.extend_from_slice(&request.delivery_ids);
    }
    Ok(ids)
}

/// Every held delivery goes into exactly one request, skip or defer, and
/// nothing else is touched; a lost delivery or a double send is refused.
fn check_outcome(held: &BTreeMap<i64, String>, outcome: &ClaimOutcome) -> StoreResult<()> {
    let requested = request_delivery_ids(&outcome.requests)?;
    let skipped = outcome.skips.iter().map(|(id, _)| *id);
    let deferred = outcome.defers.iter().map(|(id, _)| *id);
    let resolved = outcome.resolved.iter().map(|(id, _)| *id);
    let mut seen = BTreeSet::new();
    for id in requested.into_iter().chain(skipped).chain(deferred) {
        if !held.contains_key(&id) {
            return Err(StoreError::Conflict(format!("delivery {id} is not held by this claim")));
        }
        if !seen.insert(id) {
            return Err(StoreError::Conflict(format!("delivery {id} is given more than one outcome")));
        }
    }
    if seen.len() != held.len() {
        return Err(StoreError::Conflict(format!(
            "{} of {} claimed deliveries were given no outcome",
            held.len() - seen.len(),
            held.len()
        )));
    }
    if let Some(id) = resolved.into_iter().find(|id| !held.contains_key(id)) {
        return Err(StoreError::Conflict(format!("delivery {id} is not held by this claim")));
    }
    Ok(())
}

/// Each request's deliveries as `(delivery, request, campaign, user)` rows of `delivery_sends`.
fn sends_of<'a>(
    held: &'a BTreeMap<i64, String>,
    requests: &'a [NewRequest],
    ids: &'a [i64],
) -> impl Iterator<Item = (i64, i64, &'a str, &'a str)> {
    requests.iter().zip(ids).flat_map(move |(request, &request_id)| {
        request.delivery_ids.iter().zip(&request.recipients).map(move |(&delivery, user)| {
            (delivery, request_id, held.get(&delivery).map_or("", String::as_str), user.as_str())
        })
    })
}

/// Deliveries that leave the queue: requested or skipped.
fn dequeued(outcome: &ClaimOutcome) -> Vec<i64> {
    let requested = outcome.requests.iter().flat_map(|r| r.delivery_ids.iter().copied());
    requested.chain(outcome.skips.iter().map(|(id, _)| *id)).collect()
}

fn add_count(counts: &mut CampaignCounts, status: &str, reason: Option<String>, n: u64) -> StoreResult<()> {
    match delivery_status(status)? {
        DeliveryStatus::Pending => counts.pending += n,
        DeliveryStatus::Requested => counts.requested += n,
        DeliveryStatus::Sent => counts.sent += n,
        DeliveryStatus::Failed => counts.failed += n,
        DeliveryStatus::Skipped => {
            *counts.skipped.entry(reason.unwrap_or_else(|| "unspecified".to_string())).or_default() += n;
        }
    }
    Ok(())
}

/// One `(user, linked member, following, segments)` row per asked user.
type SendFactsRow = (String, Option<String>, Option<bool>, Vec<String>);

fn send_facts_of(users: &[LineUserId], rows: Vec<SendFactsRow>) -> HashMap<LineUserId, UserSendFacts> {
    let by_text: HashMap<&str, &LineUserId> = users.iter().map(|u| (u.as_str(), u)).collect();
    rows.into_iter()
        .filter_map(|(user, member, following, segments)| {
            let user = by_text.get(user.as_str())?;
            let member_id = member.and_then(|m| {
                parse_member(&m).map_err(|error| tracing::warn!(%error, "ignoring a link with a bad member_id")).ok()
            });
            let following = following.unwrap_or(member_id.is_some());
            Some(((*user).clone(), UserSendFacts { member_id, following, segments: segments.into_iter().collect() }))
        })
        .collect()
}

/// `(user, count)` rows keyed by user, without the zeros.
fn counts_by_user(rows: Vec<(String, i64)>) -> StoreResult<HashMap<LineUserId, u64>> {
    rows.into_iter().filter(|(_, n)| *n > 0).map(|(user, n)| Ok((parse_user(&user)?, count(n)))).collect()
}

/// `(member, user)` rows keyed by member, without the unlinked.
fn users_by_member(rows: Vec<(String, Option<String>)>) -> StoreResult<HashMap<MemberId, LineUserId>> {
    rows.into_iter()
        .filter_map(|(member, user)| user.map(|user| (member, user)))
        .map(|(member, user)| Ok((parse_member(&member)?, parse_user(&user)?)))
        .collect()
}

// ---------------------------------------------------------------- SQLite

/// Rows per INSERT statement: 10 parameters each, far below SQLite's limit.
const DELIVERY_ROWS_PER_STATEMENT: usize = 500;

/// Decodes each distinct messages payload of a read once and shares it.
#[derive(Default)]
struct SharedMessages {
    decoded: HashMap<String, Arc<Value>>,
    /// The previous row's: runs of rows carry the same messages.
    last: Option<(String, Arc<Value>)>,
}

impl SharedMessages {
    fn get(&mut self, text: &str) -> StoreResult<Arc<Value>> {
        if let Some((last, messages)) = &self.last
            && last == text
        {
            return Ok(messages.clone());
        }
        let messages = match self.decoded.get(text) {
            Some(messages) => messages.clone(),
            None => {
                let messages = Arc::new(parse_json(text, "delivery messages")?);
                self.decoded.insert(text.to_string(), messages.clone());
                messages
            }
        };
        self.last = Some((text.to_string(), messages.clone()));
        Ok(messages)
    }
}

fn sqlite_delivery(row: &sqlx::sqlite::SqliteRow, shared: &mut SharedMessages) -> StoreResult<Delivery> {
    let messages: &str = row.try_get("messages")?;
    let context: &str = row.try_get("context")?;
    let status: String = row.try_get("status")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        campaign_id: row.try_get("campaign_id")?,
        trigger_key: row.try_get("trigger_key")?,
        recipient_key: row.try_get("recipient_key")?,
        line_user_id: opt_user(row.try_get("line_user_id")?)?,
        member_id: opt_member(row.try_get("member_id")?)?,
        due_at: from_micros(row.try_get("due_at")?)?,
        messages: shared.get(messages)?,
        context: parse_json(context, "delivery context")?,
        status: delivery_status(&status)?,
        skip_reason: row.try_get("skip_reason")?,
        request_id: row.try_get("request_id")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        requested_at: row.try_get::<Option<i64>, _>("requested_at")?.map(from_micros).transpose()?,
    })
}

/// SQLite's hold on claimed deliveries: an IMMEDIATE transaction on the single writer.
struct SqliteClaim {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
}

#[async_trait]
impl ClaimLock for SqliteClaim {
    async fn commit(self: Box<Self>) -> StoreResult<()> {
        Ok(self.tx.commit().await?)
    }

    async fn rollback(self: Box<Self>) -> StoreResult<()> {
        Ok(self.tx.rollback().await?)
    }

    async fn write(
        &mut self,
        held: &BTreeMap<i64, String>,
        outcome: &ClaimOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>> {
        let tx: &mut sqlx::SqliteConnection = &mut self.tx;
        let now = to_micros(now);
        let mut ids = Vec::with_capacity(outcome.requests.len());
        for request in &outcome.requests {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO send_requests (kind, retry_key, messages, recipients, status, attempts, next_attempt_at,
                 created_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?) RETURNING id",
            )
            .bind(request.kind.as_str())
            .bind(request.retry_key.to_string())
            .bind(request.messages.to_string())
            .bind(recipients_json(&request.recipients).to_string())
            .bind(now)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(retry_key_conflict)?;
            ids.push(id);
        }
        let sends: Vec<_> = sends_of(held, &outcome.requests, &ids).collect();
        for chunk in sends.chunks(DELIVERY_ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO delivery_sends (delivery_id, request_id, campaign_id, line_user_id, requested_at) ",
            );
            insert.push_values(chunk, |mut row, (delivery, request, campaign, user)| {
                row.push_bind(*delivery).push_bind(*request).push_bind(*campaign).push_bind(*user).push_bind(now);
            });
            insert.build().execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM delivery_queue WHERE delivery_id IN (SELECT value FROM json_each(?))")
            .bind(ids_json(&dequeued(outcome)))
            .execute(&mut *tx)
            .await?;
        for (id, reason) in &outcome.skips {
            sqlx::query("UPDATE deliveries SET status = 'skipped', skip_reason = ?, finished_at = ? WHERE id = ?")
                .bind(reason)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        for (id, until) in &outcome.defers {
            for update in [
                "UPDATE delivery_queue SET due_at = ? WHERE delivery_id = ?",
                "UPDATE deliveries SET due_at = ? WHERE id = ?",
            ] {
                sqlx::query(update).bind(to_micros(*until)).bind(id).execute(&mut *tx).await?;
            }
        }
        for (id, user) in &outcome.resolved {
            sqlx::query("UPDATE deliveries SET line_user_id = ? WHERE id = ?")
                .bind(user.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        Ok(ids)
    }
}

#[async_trait]
impl DispatchStore for SqliteStore {
    async fn insert_deliveries(&self, deliveries: &[NewDelivery], now: DateTime<Utc>) -> StoreResult<u64> {
        let created = to_micros(now);
        let mut tx = self.writer.begin().await?;
        let mut inserted = 0;
        for chunk in deliveries.chunks(DELIVERY_ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO deliveries (campaign_id, trigger_key, recipient_key, line_user_id, member_id, due_at, \
                 messages, context, status, created_at) ",
            );
            insert.push_values(chunk, |mut row, d| {
                row.push_bind(d.campaign_id.as_str())
                    .push_bind(d.trigger_key.as_str())
                    .push_bind(d.recipient_key.as_str())
                    .push_bind(d.line_user_id.as_ref().map(|u| u.as_str()))
                    .push_bind(d.member_id.as_ref().map(|m| m.as_str()))
                    .push_bind(to_micros(d.due_at))
                    .push_bind(d.messages.to_string())
                    .push_bind(d.context.to_string())
                    .push_bind("pending")
                    .push_bind(created);
            });
            // DO NOTHING also skips repeats inside the same statement; RETURNING names the new rows only.
            insert.push(
                " ON CONFLICT (campaign_id, trigger_key, recipient_key) DO NOTHING RETURNING id, campaign_id, due_at",
            );
            let new: Vec<(i64, String, i64)> = insert.build_query_as().fetch_all(&mut *tx).await?;
            if new.is_empty() {
                continue;
            }
            inserted += new.len() as u64;
            let mut queue = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO delivery_queue (delivery_id, campaign_id, due_at) ",
            );
            queue.push_values(&new, |mut row, (id, campaign, due)| {
                row.push_bind(*id).push_bind(campaign.as_str()).push_bind(*due);
            });
            queue.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn claim_deliveries_after(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        after: Option<QueueKey>,
    ) -> StoreResult<Claim> {
        // IMMEDIATE: the single writer is the claim's until it ends, so nothing can interleave.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            delivery_own_columns!(),
            ", d.status, NULL AS request_id, NULL AS requested_at FROM deliveries d
             WHERE d.id IN (SELECT q.delivery_id FROM delivery_queue q
                            WHERE q.due_at <= ?1
                              AND (?3 IS NULL OR q.due_at > ?3 OR (q.due_at = ?3 AND q.delivery_id > ?4))
                              AND q.campaign_id NOT IN (SELECT campaign_id FROM campaign_state WHERE paused)
                            ORDER BY q.due_at, q.delivery_id LIMIT ?2)"
        ))
        .bind(to_micros(now))
        .bind(i64::from(limit))
        .bind(after.map(|(due, _)| to_micros(due)))
        .bind(after.map(|(_, id)| id))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Claim::empty());
        }
        let mut shared = SharedMessages::default();
        let deliveries = rows
            .iter()
            .map(|row| sqlite_delivery(row, &mut shared).map(PendingDelivery::from))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Claim::new(deliveries, Box::new(SqliteClaim { tx })))
    }

    async fn sent_counts(
        &self,
        users: &[LineUserId],
        campaign_id: Option<&str>,
        since: DateTime<Utc>,
    ) -> StoreResult<HashMap<LineUserId, u64>> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT u.value, (SELECT COUNT(*) FROM delivery_sends s JOIN send_requests r ON r.id = s.request_id
                              WHERE s.line_user_id = u.value AND s.requested_at >= ?2 AND r.status <> 'failed'
                                AND (?3 IS NULL OR s.campaign_id = ?3))
             FROM json_each(?1) u",
        )
        .bind(users_json(users))
        .bind(to_micros(since))
        .bind(campaign_id)
        .fetch_all(&self.reader)
        .await?;
        counts_by_user(rows)
    }

    async fn member_line_users(&self, members: &[MemberId]) -> StoreResult<HashMap<MemberId, LineUserId>> {
        if members.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT m.value, (SELECT l.line_user_id FROM links l WHERE l.member_id = m.value) FROM json_each(?) m",
        )
        .bind(json_text(members, "member ids")?)
        .fetch_all(&self.reader)
        .await?;
        users_by_member(rows)
    }

    async fn send_facts(
        &self,
        users: &[LineUserId],
        segments: &[String],
    ) -> StoreResult<HashMap<LineUserId, UserSendFacts>> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, Option<String>, Option<bool>, String)> = sqlx::query_as(
            "SELECT u.value,
                    (SELECT l.member_id FROM links l WHERE l.line_user_id = u.value),
                    (SELECT f.following FROM friendships f WHERE f.line_user_id = u.value),
                    (SELECT json_group_array(m.segment_id) FROM segment_memberships m
                     WHERE m.line_user_id = u.value AND m.segment_id IN (SELECT value FROM json_each(?2)))
             FROM json_each(?1) u",
        )
        .bind(users_json(users))
        .bind(json_text(segments, "segment ids")?)
        .fetch_all(&self.reader)
        .await?;
        let rows = rows
            .into_iter()
            .map(|(user, member, following, segments)| {
                let segments =
                    serde_json::from_str(&segments).map_err(|e| StoreError::Corrupt(format!("segments: {e}")))?;
                Ok((user, member, following, segments))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(send_facts_of(users, rows))
    }

    async fn get_delivery(&self, id: i64) -> StoreResult<Option<Delivery>> {
        let row =
            sqlx::query(concat!(select_deliveries!(), " WHERE d.id = ?")).bind(id).fetch_optional(&self.reader).await?;
        row.as_ref().map(|row| sqlite_delivery(row, &mut SharedMessages::default())).transpose()
    }

    async fn campaign_deliveries(&self, campaign_id: &str, after_id: i64, limit: u32) -> StoreResult<Vec<Delivery>> {
        let rows =
            sqlx::query(concat!(select_deliveries!(), " WHERE d.campaign_id = ? AND d.id > ? ORDER BY d.id LIMIT ?"))
                .bind(campaign_id)
                .bind(after_id)
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
        let mut shared = SharedMessages::default();
        rows.iter().map(|row| sqlite_delivery(row, &mut shared)).collect()
    }

    async fn campaign_counts(&self, campaign_id: &str) -> StoreResult<CampaignCounts> {
        let rows = sqlx::query(count_deliveries!("?")).bind(campaign_id).fetch_all(&self.reader).await?;
        let mut counts = CampaignCounts::default();
        for row in rows {
            let status: String = row.try_get("status")?;
            add_count(&mut counts, &status, row.try_get("skip_reason")?, count(row.try_get("n")?))?;
        }
        Ok(counts)
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT due_at FROM delivery_queue
             WHERE campaign_id NOT IN (SELECT campaign_id FROM campaign_state WHERE paused)
             ORDER BY due_at LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        due.map(from_micros).transpose()
    }

    async fn events_after(&self, after_id: i64, types: &[String], limit: u32) -> StoreResult<Vec<StoredEvent>> {
        if types.is_empty() {
            return Ok(Vec::new());
        }
        let types = json_text(types, "event types")?;
        let rows = sqlx::query(
            "SELECT id, event_id, type, member_id, line_user_id, occurred_at, properties FROM events
             WHERE id > ? AND type IN (SELECT value FROM json_each(?)) ORDER BY id LIMIT ?",
        )
        .bind(after_id)
        .bind(types)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(crate::sqlite::stored_event).collect()
    }

    async fn max_event_id(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM events").fetch_one(&self.reader).await?)
    }

    async fn campaign_clicks(&self, campaign_id: &str) -> StoreResult<(u64, u64)> {
        let (clicks, users): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(DISTINCT line_user_id) FROM events
             WHERE type = 'link_click' AND json_extract(properties, '$.campaign_id') = ?",
        )
        .bind(campaign_id)
        .fetch_one(&self.reader)
        .await?;
        Ok((clicks.max(0) as u64, users.max(0) as u64))
    }
}

// ------------------------------------------------------------ PostgreSQL

fn pg_delivery(row: &sqlx::postgres::PgRow, shared: &mut SharedMessages) -> StoreResult<Delivery> {
    let messages: &str = row.try_get("messages")?;
    let context: &str = row.try_get("context")?;
    let status: String = row.try_get("status")?;
    Ok(Delivery {
        id: row.try_get("id")?,
        campaign_id: row.try_get("campaign_id")?,
        trigger_key: row.try_get("trigger_key")?,
        recipient_key: row.try_get("recipient_key")?,
        line_user_id: opt_user(row.try_get("line_user_id")?)?,
        member_id: opt_member(row.try_get("member_id")?)?,
        due_at: row.try_get("due_at")?,
        messages: shared.get(messages)?,
        context: parse_json(context, "delivery context")?,
        status: delivery_status(&status)?,
        skip_reason: row.try_get("skip_reason")?,
        request_id: row.try_get("request_id")?,
        created_at: row.try_get("created_at")?,
        requested_at: row.try_get("requested_at")?,
    })
}

/// 1677-09-21: earlier than any due time, and inside PostgreSQL's range.
const BEFORE_ANY_DUE: DateTime<Utc> = DateTime::from_timestamp_nanos(i64::MIN);

/// A `delivery_queue` row: id, campaign, due, LINE user, member, and the
/// delivery whose messages and context it shares.
type QueueRow = (i64, String, DateTime<Utc>, Option<String>, Option<String>, i64);

/// PostgreSQL's hold on claimed deliveries: the open transaction holding their queue rows' locks.
struct PgClaim {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// The queue rows the claim took out, to put the deferred ones back.
    queued: HashMap<i64, QueueRow>,
}

#[async_trait]
impl ClaimLock for PgClaim {
    async fn commit(self: Box<Self>) -> StoreResult<()> {
        Ok(self.tx.commit().await?)
    }

    async fn rollback(self: Box<Self>) -> StoreResult<()> {
        Ok(self.tx.rollback().await?)
    }

    async fn write(
        &mut self,
        held: &BTreeMap<i64, String>,
        outcome: &ClaimOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>> {
        let tx: &mut sqlx::PgConnection = &mut self.tx;
        let ids = pg_insert_requests(&mut *tx, &outcome.requests, now).await?;
        let (mut deliveries, mut requests, mut campaigns, mut users) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (delivery, request, campaign, user) in sends_of(held, &outcome.requests, &ids) {
            deliveries.push(delivery);
            requests.push(request);
            campaigns.push(campaign);
            users.push(user);
        }
        if !deliveries.is_empty() {
            sqlx::query(
                "INSERT INTO delivery_sends (delivery_id, request_id, campaign_id, line_user_id, requested_at)
                 SELECT d, r, c, u, $5 FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS s (d, r, c, u)",
            )
            .bind(&deliveries)
            .bind(&requests)
            .bind(&campaigns)
            .bind(&users)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if !outcome.skips.is_empty() {
            let (ids, reasons): (Vec<i64>, Vec<&str>) = outcome.skips.iter().map(|(id, r)| (*id, r.as_str())).unzip();
            sqlx::query(
                "UPDATE deliveries d SET status = 'skipped', skip_reason = s.reason, finished_at = $3
                 FROM UNNEST($1::bigint[], $2::text[]) AS s (id, reason) WHERE d.id = s.id",
            )
            .bind(&ids)
            .bind(&reasons)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if !outcome.resolved.is_empty() {
            let (ids, users): (Vec<i64>, Vec<&str>) = outcome.resolved.iter().map(|(id, u)| (*id, u.as_str())).unzip();
            sqlx::query(
                "UPDATE deliveries d SET line_user_id = s.u FROM UNNEST($1::bigint[], $2::text[]) AS s (id, u)
                 WHERE d.id = s.id",
            )
            .bind(&ids)
            .bind(&users)
            .execute(&mut *tx)
            .await?;
        }
        if !outcome.defers.is_empty() {
            // Back in the queue at their new time, with the LINE user found now (if any).
            let resolved: HashMap<i64, &str> = outcome.resolved.iter().map(|(id, u)| (*id, u.as_str())).collect();
            let n = outcome.defers.len();
            let (mut ids, mut until, mut campaigns) =
                (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
            let (mut users, mut members, mut payloads) =
                (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
            for (id, at) in &outcome.defers {
                let Some((_, campaign, _, user, member, payload_of)) = self.queued.get(id) else {
                    return Err(StoreError::Conflict(format!("delivery {id} is not held by this claim")));
                };
                ids.push(*id);
                until.push(*at);
                campaigns.push(campaign.as_str());
                users.push(resolved.get(id).copied().or(user.as_deref()));
                members.push(member.as_deref());
                payloads.push(*payload_of);
            }
            sqlx::query(
                "WITH s AS (SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                                                 $6::bigint[]) AS s (id, until, c, u, m, p)),
                      q AS (INSERT INTO delivery_queue (delivery_id, campaign_id, due_at, line_user_id, member_id, payload_of)
                            SELECT id, c, until, u, m, p FROM s)
                 UPDATE deliveries d SET due_at = s.until FROM s WHERE d.id = s.id",
            )
            .bind(&ids)
            .bind(&until)
            .bind(&campaigns)
            .bind(&users)
            .bind(&members)
            .bind(&payloads)
            .execute(&mut *tx)
            .await?;
        }
        Ok(ids)
    }
}

/// Inserts requests in one statement; returns their ids in the given order.
async fn pg_insert_requests(
    tx: &mut sqlx::PgConnection,
    requests: &[NewRequest],
    now: DateTime<Utc>,
) -> StoreResult<Vec<i64>> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let kinds: Vec<&str> = requests.iter().map(|r| r.kind.as_str()).collect();
    let keys: Vec<Uuid> = requests.iter().map(|r| r.retry_key).collect();
    let messages: Vec<String> = requests.iter().map(|r| r.messages.to_string()).collect();
    let recipients: Vec<String> = requests.iter().map(|r| recipients_json(&r.recipients).to_string()).collect();
    let rows: Vec<(i64, Uuid)> = sqlx::query_as(
        "INSERT INTO send_requests (kind, retry_key, messages, recipients, status, attempts, next_attempt_at, created_at)
         SELECT k, key, m::json, r::json, 'pending', 0, $5, $5
         FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::text[]) AS s (k, key, m, r)
         RETURNING id, retry_key",
    )
    .bind(&kinds)
    .bind(&keys)
    .bind(&messages)
    .bind(&recipients)
    .bind(now)
    .fetch_all(&mut *tx)
    .await
    .map_err(retry_key_conflict)?;
    let by_key: HashMap<Uuid, i64> = rows.into_iter().map(|(id, key)| (key, id)).collect();
    keys.iter()
        .map(|key| by_key.get(key).copied().ok_or_else(|| StoreError::Corrupt(format!("request {key} was not stored"))))
        .collect()
}

#[async_trait]
impl DispatchStore for PgStore {
    async fn insert_deliveries(&self, deliveries: &[NewDelivery], now: DateTime<Utc>) -> StoreResult<u64> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        let n = deliveries.len();
        let (mut campaigns, mut triggers, mut recipients) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut users, mut members, mut due) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut messages, mut contexts) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for d in deliveries {
            campaigns.push(d.campaign_id.as_str());
            triggers.push(d.trigger_key.as_str());
            recipients.push(d.recipient_key.as_str());
            users.push(d.line_user_id.as_ref().map(|u| u.as_str()));
            members.push(d.member_id.as_ref().map(|m| m.as_str()));
            due.push(d.due_at);
            messages.push(d.messages.to_string());
            contexts.push(d.context.to_string());
        }
        // DO NOTHING also skips repeats inside the same statement; only new rows are queued.
        let inserted = sqlx::query(
            "WITH new AS (
                 INSERT INTO deliveries (campaign_id, trigger_key, recipient_key, line_user_id, member_id, due_at,
                                         messages, context, status, created_at)
                 SELECT c, t, r, u, m, d, msg::json, ctx::json, 'pending', $9
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                             $7::text[], $8::text[]) AS s (c, t, r, u, m, d, msg, ctx)
                 ON CONFLICT (campaign_id, trigger_key, recipient_key) DO NOTHING
                 RETURNING id, campaign_id, due_at, line_user_id, member_id, CAST(messages AS TEXT) AS m,
                           CAST(context AS TEXT) AS ctx)
             INSERT INTO delivery_queue (delivery_id, campaign_id, due_at, line_user_id, member_id, payload_of)
             SELECT id, campaign_id, due_at, line_user_id, member_id, MIN(id) OVER (PARTITION BY m, ctx) FROM new",
        )
        .bind(&campaigns)
        .bind(&triggers)
        .bind(&recipients)
        .bind(&users)
        .bind(&members)
        .bind(&due)
        .bind(&messages)
        .bind(&contexts)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted)
    }

    async fn claim_deliveries_after(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        after: Option<QueueKey>,
    ) -> StoreResult<Claim> {
        let mut tx = self.pool.begin().await?;
        // The queue swings between empty and millions of rows, so its
        // statistics are mostly stale: planned from them, a claim reads and
        // sorts the whole queue and the commit's writes scan whole tables for
        // a batch's rows. This transaction goes by key: due rows in index
        // order, and the pages it reads are hot, so priced as such. A planner
        // that stops answering (hung, or cut off without the connection
        // closing) loses its claim after a minute instead of holding it forever.
        sqlx::raw_sql(
            "SET LOCAL enable_sort = off; SET LOCAL random_page_cost = 1.1;
             SET LOCAL idle_in_transaction_session_timeout = '60s'",
        )
        .execute(&mut *tx)
        .await?;
        // SKIP LOCKED: concurrent claims (other planners, other instances)
        // take disjoint rows. The queue row carries what the policies need,
        // so a claim reads the wide deliveries only for their distinct
        // payloads: one row for a campaign's 2,000 identical messages.
        // The held rows leave the queue in the claim itself (by their row
        // address, no index probe); a rollback or a crash puts them back,
        // and the commit puts back the deferred ones.
        let rows: Vec<QueueRow> = sqlx::query_as(
            "WITH claimed AS (
                 SELECT q.ctid AS row, q.delivery_id, q.campaign_id, q.due_at, q.line_user_id, q.member_id, q.payload_of
                 FROM delivery_queue q
                 WHERE q.due_at <= $1
                   AND (q.due_at, q.delivery_id) > ($3, $4)
                   AND q.campaign_id <> ALL(ARRAY(SELECT campaign_id FROM campaign_state WHERE paused))
                 ORDER BY q.due_at, q.delivery_id LIMIT $2
                 FOR UPDATE OF q SKIP LOCKED),
             gone AS (DELETE FROM delivery_queue WHERE ctid = ANY(ARRAY(SELECT row FROM claimed)))
             SELECT delivery_id, campaign_id, due_at, line_user_id, member_id, payload_of FROM claimed",
        )
        .bind(now)
        .bind(i64::from(limit))
        // No `after`: from before any key, so the row comparison stays an index condition.
        .bind(after.map_or(BEFORE_ANY_DUE, |(due, _)| due))
        .bind(after.map_or(i64::MIN, |(_, id)| id))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Claim::empty());
        }
        let payload_ids: Vec<i64> = rows.iter().map(|r| r.5).collect::<BTreeSet<_>>().into_iter().collect();
        let payload_rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT id, CAST(messages AS TEXT), CAST(context AS TEXT) FROM deliveries WHERE id = ANY($1)",
        )
        .bind(&payload_ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut shared = SharedMessages::default();
        let mut payloads = HashMap::with_capacity(payload_rows.len());
        for (id, messages, context) in payload_rows {
            let context = Arc::new(parse_json(&context, "delivery context")?);
            payloads.insert(id, (shared.get(&messages)?, context));
        }
        let queued: HashMap<i64, QueueRow> = rows.iter().map(|row| (row.0, row.clone())).collect();
        let deliveries =
            rows.into_iter()
                .map(|(id, campaign_id, due_at, user, member, payload_of)| {
                    let (messages, context) = payloads.get(&payload_of).cloned().ok_or_else(|| {
                        StoreError::Corrupt(format!("delivery {id}: payload {payload_of} is missing"))
                    })?;
                    Ok(PendingDelivery {
                        id,
                        campaign_id,
                        line_user_id: opt_user(user)?,
                        member_id: opt_member(member)?,
                        due_at,
                        messages,
                        context,
                    })
                })
                .collect::<StoreResult<Vec<_>>>()?;
        Ok(Claim::new(deliveries, Box::new(PgClaim { tx, queued })))
    }

    async fn sent_counts(
        &self,
        users: &[LineUserId],
        campaign_id: Option<&str>,
        since: DateTime<Utc>,
    ) -> StoreResult<HashMap<LineUserId, u64>> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
        // Per-user subqueries: index probes, where a join would make the
        // planner hash the whole table for a few thousand users.
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT u.id, (SELECT COUNT(*) FROM delivery_sends s JOIN send_requests r ON r.id = s.request_id
                           WHERE s.line_user_id = u.id AND s.requested_at >= $2 AND r.status <> 'failed'
                             AND ($3::text IS NULL OR s.campaign_id = $3))
             FROM UNNEST($1::text[]) AS u (id)",
        )
        .bind(&ids)
        .bind(since)
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?;
        counts_by_user(rows)
    }

    async fn member_line_users(&self, members: &[MemberId]) -> StoreResult<HashMap<MemberId, LineUserId>> {
        if members.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<&str> = members.iter().map(|m| m.as_str()).collect();
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT m.id, (SELECT l.line_user_id FROM links l WHERE l.member_id = m.id) FROM UNNEST($1::text[]) AS m (id)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        users_by_member(rows)
    }

    async fn send_facts(
        &self,
        users: &[LineUserId],
        segments: &[String],
    ) -> StoreResult<HashMap<LineUserId, UserSendFacts>> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let ids: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
        // Per-user subqueries: index probes, where joins would make the
        // planner hash the whole of links for a few thousand users.
        let rows: Vec<SendFactsRow> = sqlx::query_as(
            "SELECT u.id,
                    (SELECT l.member_id FROM links l WHERE l.line_user_id = u.id),
                    (SELECT f.following FROM friendships f WHERE f.line_user_id = u.id),
                    CASE WHEN cardinality($2::text[]) = 0 THEN '{}'::text[]
                         ELSE ARRAY(SELECT m.segment_id FROM segment_memberships m
                                    WHERE m.line_user_id = u.id AND m.segment_id = ANY($2)) END
             FROM UNNEST($1::text[]) AS u (id)",
        )
        .bind(&ids)
        .bind(segments)
        .fetch_all(&self.pool)
        .await?;
        Ok(send_facts_of(users, rows))
    }

    async fn get_delivery(&self, id: i64) -> StoreResult<Option<Delivery>> {
        let row =
            sqlx::query(concat!(select_deliveries!(), " WHERE d.id = $1")).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(|row| pg_delivery(row, &mut SharedMessages::default())).transpose()
    }

    async fn campaign_deliveries(&self, campaign_id: &str, after_id: i64, limit: u32) -> StoreResult<Vec<Delivery>> {
        let rows = sqlx::query(concat!(
            select_deliveries!(),
            " WHERE d.campaign_id = $1 AND d.id > $2 ORDER BY d.id LIMIT $3"
        ))
        .bind(campaign_id)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut shared = SharedMessages::default();
        rows.iter().map(|row| pg_delivery(row, &mut shared)).collect()
    }

    async fn campaign_counts(&self, campaign_id: &str) -> StoreResult<CampaignCounts> {
        let rows = sqlx::query(count_deliveries!("$1")).bind(campaign_id).fetch_all(&self.pool).await?;
        let mut counts = CampaignCounts::default();
        for row in rows {
            let status: String = row.try_get("status")?;
            add_count(&mut counts, &status, row.try_get("skip_reason")?, count(row.try_get("n")?))?;
        }
        Ok(counts)
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(
            "SELECT q.due_at FROM delivery_queue q
             WHERE NOT EXISTS (SELECT 1 FROM campaign_state c WHERE c.campaign_id = q.campaign_id AND c.paused)
             ORDER BY q.due_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn events_after(&self, after_id: i64, types: &[String], limit: u32) -> StoreResult<Vec<StoredEvent>> {
        if types.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, event_id, type, member_id, line_user_id, occurred_at, properties FROM events
             WHERE id > $1 AND type = ANY($2) ORDER BY id LIMIT $3",
        )
        .bind(after_id)
        .bind(types)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(crate::postgres::stored_event).collect()
    }

    async fn max_event_id(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(id), 0)::bigint FROM events").fetch_one(&self.pool).await?)
    }

    async fn campaign_clicks(&self, campaign_id: &str) -> StoreResult<(u64, u64)> {
        let (clicks, users): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(DISTINCT line_user_id) FROM events
             WHERE type = 'link_click' AND properties->>'campaign_id' = $1",
        )
        .bind(campaign_id)
        .fetch_one(&self.pool)
        .await?;
        Ok((clicks.max(0) as u64, users.max(0) as u64))
    }
}
