//! The outbox: deliveries, and the claims through which planners turn them
//! into LINE requests, skips and defers. Backend code is in
//! `sqlite/outbox.rs` and `postgres/outbox.rs`; what both say alike is here.
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

use crate::requests::NewRequest;
use crate::sql::{Dialect, Row, Sql, Ts, stmt, stmt_built};
use crate::{StoreError, StoreResult, parse_member, parse_user};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{DeferReason, LineUserId, MemberId};
pub use renkei_core::{DeliveryStatus, SkipReason};
use serde::Serialize;
use serde_json::{Map, Value};
// foldhash: dispatch hashes every user id of a batch; SipHash cost more than the work around it.
use foldhash::HashMap;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

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
    /// The rendered LINE message objects (a JSON array of 1 to 5); shared
    /// by the deliveries rendered alike (a fire of one message: all of them).
    pub messages: Arc<Value>,
    /// What send-time checks need (e.g. the trigger event for `unless`). A JSON object.
    pub context: Value,
}

/// One page of a fire whose messages are the same for every recipient
/// (`CampaignSet::renders_alike`): the deliveries of one trigger instance
/// to the members of `audience` in a range of LINE user ids, each keyed by
/// its LINE user and with the member linked to it.
#[derive(Debug, Clone, Copy)]
pub struct AlikeFire<'a> {
    pub campaign_id: &'a str,
    pub trigger_key: &'a str,
    /// The segment whose members are the recipients.
    pub audience: &'a str,
    pub due_at: DateTime<Utc>,
    pub messages: &'a Value,
    pub context: &'a Value,
}

impl AlikeFire<'_> {
    /// The fire's deliveries to `recipients`, as [`NewDelivery`]s.
    pub fn deliveries(&self, recipients: Vec<(LineUserId, Option<MemberId>)>) -> Vec<NewDelivery> {
        let messages = Arc::new(self.messages.clone());
        recipients
            .into_iter()
            .map(|(user, member_id)| NewDelivery {
                campaign_id: self.campaign_id.to_string(),
                trigger_key: self.trigger_key.to_string(),
                recipient_key: user.as_str().to_string(),
                line_user_id: Some(user),
                member_id,
                due_at: self.due_at,
                messages: Arc::clone(&messages),
                context: self.context.clone(),
            })
            .collect()
    }
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
    pub skip_reason: Option<SkipReason>,
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
    pub skips: Vec<(i64, SkipReason)>,
    /// Deliveries that wait until a later instant, and what for (quiet hours, quota).
    pub defers: Vec<(i64, DateTime<Utc>, DeferReason)>,
    /// LINE users found through the member's link for deliveries enqueued with a member only.
    pub resolved: Vec<(i64, LineUserId)>,
}

/// Due deliveries held by one planner until it commits what it decided.
///
/// PostgreSQL holds them with row locks (`FOR UPDATE SKIP LOCKED`) in an
/// open transaction, so other claims pass them by; SQLite holds its single
/// writer and the store's one claim slot, so a second claim waits for this
/// one to end rather than failing on the busy writer. Nothing is written to claim: dropping the claim, a failed commit or
/// a crash rolls back and leaves them due as they were.
pub struct Claim {
    /// The held deliveries, earliest due first; the planner may take them out.
    pub deliveries: Vec<PendingDelivery>,
    /// The campaign of each held delivery.
    held: BTreeMap<i64, String>,
    lock: Option<Box<dyn ClaimLock>>,
    /// The queue key of the last queue row taken (see [`Claim::last_key`]).
    last_key: Option<QueueKey>,
    /// How many queue rows the claim took out (see [`Claim::queue_rows`]).
    queue_rows: usize,
}

impl Claim {
    pub(crate) fn new(mut deliveries: Vec<PendingDelivery>, lock: Box<dyn ClaimLock>) -> Self {
        deliveries.sort_by_key(|d| (d.due_at, d.id));
        let held = deliveries.iter().map(|d| (d.id, d.campaign_id.clone())).collect();
        let last_key = deliveries.last().map(|d| (d.due_at, d.id));
        let queue_rows = deliveries.len();
        Self { deliveries, held, lock: Some(lock), last_key, queue_rows }
    }

    /// A claim of `queue_rows` queue rows, the last with this key: where
    /// queue rows are pages (PostgreSQL), the page's key, not its last delivery's.
    pub(crate) fn of_pages(mut self, queue_rows: usize, last_key: Option<QueueKey>) -> Self {
        (self.queue_rows, self.last_key) = (queue_rows, last_key);
        self
    }

    pub(crate) fn empty() -> Self {
        Self { deliveries: Vec::new(), held: BTreeMap::new(), lock: None, last_key: None, queue_rows: 0 }
    }

    /// How many rows the claim took out of the queue: its deliveries, or on
    /// PostgreSQL its pages. Each leaves an index entry behind until the
    /// queue is tidied ([`OutboxStore::tidy_queue`]).
    pub fn queue_rows(&self) -> usize {
        self.queue_rows
    }

    /// Where a claim past everything this one took would start
    /// ([`OutboxStore::claim_deliveries_after`]).
    pub fn last_key(&self) -> Option<QueueKey> {
        self.last_key
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
pub(crate) trait ClaimLock: Send {
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
    pub skipped: BTreeMap<SkipReason, u64>,
}

#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Inserts deliveries atomically (pending, queued for `due_at`), ignoring any whose
    /// `(campaign_id, trigger_key, recipient_key)` exists. Returns how many were new.
    async fn insert_deliveries(&self, deliveries: &[NewDelivery], now: DateTime<Utc>) -> StoreResult<u64>;

    /// Inserts `fire`'s deliveries to the members of its audience in
    /// `(after, through]` by LINE user id (to the end without `through`), as
    /// [`insert_deliveries`](Self::insert_deliveries) would
    /// ([`AlikeFire::deliveries`]). Returns how many were new.
    async fn insert_audience_range(
        &self,
        fire: &AlikeFire<'_>,
        after: Option<&str>,
        through: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<u64>;

    /// Holds up to `limit` pending deliveries with `due_at <= now` that no
    /// other claim holds, earliest due first, until the claim is committed or
    /// dropped. Deliveries of paused campaigns are not claimed. On SQLite the
    /// claim holds the only writer, and the store lets one claim be open at a
    /// time: another claim waits until it ends (planners may run side by side
    /// and take turns); other writes wait for the writer as they always do.
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

    /// Whether claims taken side by side make progress together (PostgreSQL's
    /// `SKIP LOCKED`) or take turns on the one writer (SQLite), where a
    /// second planner would only wait.
    fn parallel_claims(&self) -> bool;

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

    /// The earliest `due_at` of a pending delivery of a running campaign, to
    /// sleep until (also when another claim holds it).
    async fn next_delivery_due(&self) -> StoreResult<Option<DateTime<Utc>>>;

    /// Clears what claims left behind in the queue. On PostgreSQL a claimed
    /// row stays in the queue's index until a vacuum, and every look from
    /// the start of the queue (a full claim, `next_delivery_due`) walks past
    /// them: 7 ms a look behind a million. SQLite removes them at once.
    async fn tidy_queue(&self) -> StoreResult<()> {
        Ok(())
    }
}

// ------------------------------------------------------------ shared

// Backend code (`sqlite/outbox.rs`, `postgres/outbox.rs`) implements
// [`OutboxStore`]: the claims (`BEGIN IMMEDIATE` on the single writer vs
// `FOR UPDATE SKIP LOCKED`), batch inserts (chunked `VALUES` vs `UNNEST`)
// and set reads (`json_each` vs arrays) differ.

/// A delivery's own columns, as the row readers expect them with the
/// request-derived ones (`status`, `request_id`, `requested_at`) around them.
macro_rules! delivery_own_columns {
    () => {
        "d.id, d.campaign_id, d.trigger_key, d.recipient_key, d.line_user_id, d.member_id, d.due_at, \
         CAST(d.messages AS TEXT) AS messages, CAST(d.context AS TEXT) AS context, d.skip_reason, d.created_at"
    };
}
pub(crate) use delivery_own_columns;

/// Deliveries as stored (`d`), with their state taken from their request
/// (`s`, `r`) once they are in one. Standard SQL for both backends.
macro_rules! select_deliveries {
    () => {
        concat!(
            "SELECT ",
            $crate::outbox::delivery_own_columns!(),
            ", ",
            $crate::outbox::delivery_status!(),
            " AS status, s.request_id, s.requested_at FROM ",
            $crate::outbox::deliveries_with_requests!()
        )
    };
}
#[cfg(feature = "test-support")]
pub(crate) use select_deliveries;

/// One campaign's deliveries counted by state and skip reason, from the
/// rows themselves (what `campaign_counts`, migration 0025, must equal);
/// `$campaign` is the placeholder.
#[cfg(feature = "test-support")]
macro_rules! count_deliveries {
    ($campaign:literal) => {
        concat!(
            "SELECT ",
            $crate::outbox::delivery_status!(),
            " AS status, d.skip_reason, COUNT(*) AS n FROM ",
            $crate::outbox::deliveries_with_requests!(),
            " WHERE d.campaign_id = ",
            $campaign,
            " GROUP BY 1, 2"
        )
    };
}
#[cfg(feature = "test-support")]
pub(crate) use count_deliveries;

macro_rules! deliveries_with_requests {
    () => {
        "deliveries d LEFT JOIN delivery_sends s ON s.delivery_id = d.id LEFT JOIN send_requests r ON r.id = s.request_id"
    };
}
pub(crate) use deliveries_with_requests;

macro_rules! delivery_status {
    () => {
        "CASE WHEN s.request_id IS NULL THEN d.status WHEN r.status = 'pending' THEN 'requested' ELSE r.status END"
    };
}
pub(crate) use delivery_status;

pub(crate) fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(feature = "test-support")]
fn status_of(text: &str) -> StoreResult<DeliveryStatus> {
    DeliveryStatus::parse(text).ok_or_else(|| StoreError::Corrupt(format!("delivery status {text:?}")))
}

pub(crate) fn parse_json(text: &str, what: &str) -> StoreResult<Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
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
    let deferred = outcome.defers.iter().map(|(id, _, _)| *id);
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
pub(crate) fn sends_of<'a>(
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
pub(crate) fn dequeued(outcome: &ClaimOutcome) -> Vec<i64> {
    let requested = outcome.requests.iter().flat_map(|r| r.delivery_ids.iter().copied());
    requested.chain(outcome.skips.iter().map(|(id, _)| *id)).collect()
}

/// A transaction's moves of campaign counts (migration 0025):
/// `(campaign, counter, skip reason or "") → n`, in key order (the order upserts take their rows).
pub(crate) type CountMoves<'a> = BTreeMap<(&'a str, &'static str, &'a str), i64>;

/// What a claim's commit moves: every held delivery was pending, and is now
/// requested or skipped (a deferred one stays pending).
pub(crate) fn claim_moves<'a>(held: &'a BTreeMap<i64, String>, outcome: &'a ClaimOutcome) -> CountMoves<'a> {
    let campaign = |id: &i64| held.get(id).map_or("", String::as_str);
    let mut moves = CountMoves::new();
    for id in outcome.requests.iter().flat_map(|r| &r.delivery_ids) {
        *moves.entry((campaign(id), "requested", "")).or_default() += 1;
    }
    for (id, reason) in &outcome.skips {
        *moves.entry((campaign(id), "skipped", reason.as_str())).or_default() += 1;
    }
    moves
}

/// The counts slot (0–7) of a transaction, from an id it alone writes.
pub(crate) fn count_slot(id: i64) -> i64 {
    id.rem_euclid(8)
}

/// Adds `moves` to `campaign_counts` in the writer's transaction, at `slot`
/// (0–7: concurrent writers that pick different slots never wait on one row).
pub(crate) async fn add_campaign_counts<DB: Dialect>(
    conn: &mut DB::Connection,
    moves: &CountMoves<'_>,
    slot: i64,
) -> StoreResult<()> {
    for ((campaign, status, reason), n) in moves {
        stmt::<DB>(
            "INSERT INTO campaign_counts (campaign_id, status, skip_reason, slot, n) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (campaign_id, status, skip_reason, slot) DO UPDATE SET n = campaign_counts.n + excluded.n",
        )
        .bind(*campaign)
        .bind(*status)
        .bind(*reason)
        .bind(slot)
        .bind(*n)
        .execute_in(conn)
        .await?;
    }
    Ok(())
}

/// Counts from `campaign_counts`' counters: a delivery is pending until
/// requested or skipped, and in a request until it is sent or failed.
fn kept_counts_of<DB: Dialect>(rows: &[DB::Row]) -> StoreResult<CampaignCounts> {
    let (mut created, mut requested) = (0, 0);
    let mut counts = CampaignCounts::default();
    for row in rows {
        let row = Row::<DB>(row);
        let n = row.int("n")?;
        match row.string("status")?.as_str() {
            "created" => created += n,
            "requested" => requested += n,
            "sent" => counts.sent = count(n),
            "failed" => counts.failed = count(n),
            "skipped" if n > 0 => {
                let reason = reason_of(Some(row.string("skip_reason")?))?;
                *counts.skipped.entry(reason).or_default() += count(n);
            }
            "skipped" => {}
            other => return Err(StoreError::Corrupt(format!("campaign_counts counter {other:?}"))),
        }
    }
    let skipped: u64 = counts.skipped.values().sum();
    counts.pending = count(created - requested).saturating_sub(skipped);
    counts.requested = count(requested).saturating_sub(counts.sent + counts.failed);
    Ok(counts)
}

/// Counts from the deliveries' own `(status, skip_reason, n)` rows
/// (`count_deliveries!`), which the kept counts must equal.
#[cfg(feature = "test-support")]
pub(crate) fn counts_of<DB: Dialect>(rows: &[DB::Row]) -> StoreResult<CampaignCounts> {
    let mut counts = CampaignCounts::default();
    for row in rows {
        let row = Row::<DB>(row);
        add_count(&mut counts, &row.string("status")?, row.opt_string("skip_reason")?, count(row.int("n")?))?;
    }
    Ok(counts)
}

#[cfg(feature = "test-support")]
fn add_count(counts: &mut CampaignCounts, status: &str, reason: Option<String>, n: u64) -> StoreResult<()> {
    match status_of(status)? {
        DeliveryStatus::Pending => counts.pending += n,
        DeliveryStatus::Requested => counts.requested += n,
        DeliveryStatus::Sent => counts.sent += n,
        DeliveryStatus::Failed => counts.failed += n,
        DeliveryStatus::Skipped => *counts.skipped.entry(reason_of(reason)?).or_default() += n,
    }
    Ok(())
}

/// A skipped delivery's stored reason; every skip is written with one.
fn reason_of(text: Option<String>) -> StoreResult<SkipReason> {
    let text = text.ok_or_else(|| StoreError::Corrupt("a skipped delivery has no skip_reason".to_string()))?;
    SkipReason::parse(&text).ok_or_else(|| StoreError::Corrupt(format!("unknown skip_reason {text:?}")))
}

/// One `(user, linked member, following, segments)` row per asked user.
pub(crate) type SendFactsRow = (String, Option<String>, Option<bool>, Vec<String>);

pub(crate) fn send_facts_of(users: &[LineUserId], rows: Vec<SendFactsRow>) -> HashMap<LineUserId, UserSendFacts> {
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
pub(crate) fn counts_by_user(rows: Vec<(String, i64)>) -> StoreResult<HashMap<LineUserId, u64>> {
    rows.into_iter().filter(|(_, n)| *n > 0).map(|(user, n)| Ok((parse_user(&user)?, count(n)))).collect()
}

/// `(member, user)` rows keyed by member, without the unlinked.
pub(crate) fn users_by_member(rows: Vec<(String, Option<String>)>) -> StoreResult<HashMap<MemberId, LineUserId>> {
    rows.into_iter()
        .filter_map(|(member, user)| user.map(|user| (member, user)))
        .map(|(member, user)| Ok((parse_member(&member)?, parse_user(&user)?)))
        .collect()
}

/// Decodes each distinct messages payload of a read once and shares it.
#[derive(Default)]
pub(crate) struct SharedMessages {
    decoded: HashMap<String, Arc<Value>>,
    /// The previous row's: runs of rows carry the same messages.
    last: Option<(String, Arc<Value>)>,
}

impl SharedMessages {
    pub(crate) fn get(&mut self, text: &str) -> StoreResult<Arc<Value>> {
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

/// One trigger instance of one user exposed to a campaign: when LINE
/// accepted its messages, or for the control group when they would have gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposureRow {
    pub trigger_key: String,
    pub line_user_id: LineUserId,
    pub at: DateTime<Utc>,
    pub holdout: bool,
    /// The A/B variant the delivery was rendered with (`context.variant`).
    pub variant: Option<String>,
}

/// An event of one of a campaign's exposed users (through its LINE user id
/// or its linked member, as segments read events).
#[derive(Debug, Clone, PartialEq)]
pub struct UserEventRow {
    pub line_user_id: LineUserId,
    pub occurred_at: DateTime<Utc>,
    pub properties: Map<String, Value>,
}

/// A campaign's deliveries as the API reports them: the same SQL on both backends.
#[async_trait]
pub trait OutboxReads: Send + Sync + 'static {
    /// Deliveries of a campaign (all states), by id, strictly after `after_id`.
    async fn campaign_deliveries(&self, campaign_id: &str, after_id: i64, limit: u32) -> StoreResult<Vec<Delivery>>;
    async fn campaign_counts(&self, campaign_id: &str) -> StoreResult<CampaignCounts>;

    /// Every exposure of the campaign: sent deliveries (at LINE's
    /// acceptance) and holdout ones (at the instant they were held out).
    /// `with_variants`: read each delivery's variant (else `None`, which
    /// spares decoding every delivery's context).
    async fn campaign_exposures(&self, campaign_id: &str, with_variants: bool) -> StoreResult<Vec<ExposureRow>>;

    /// The events of type `event_type` that occurred after `after` of the
    /// users the campaign has deliveries for (a superset of those it exposed).
    async fn exposed_users_events(
        &self,
        campaign_id: &str,
        event_type: &str,
        after: DateTime<Utc>,
    ) -> StoreResult<Vec<UserEventRow>>;

    /// Which of `recipient_keys` (at most a few thousand) have a delivery of
    /// this campaign and trigger: one probe of the unique index each.
    async fn delivered_recipients(
        &self,
        campaign_id: &str,
        trigger_key: &str,
        recipient_keys: &[String],
    ) -> StoreResult<HashSet<String>>;
}

#[async_trait]
impl<S: Sql> OutboxReads for S {
    // `IN ($3, $4, …)`: the same SQL on both backends, and each key a lookup
    // of (campaign_id, trigger_key, recipient_key).
    async fn delivered_recipients(
        &self,
        campaign_id: &str,
        trigger_key: &str,
        recipient_keys: &[String],
    ) -> StoreResult<HashSet<String>> {
        let mut found = HashSet::new();
        for chunk in recipient_keys.chunks(1_000) {
            let params: Vec<String> = (0..chunk.len()).map(|k| format!("${}", k + 3)).collect();
            let sql = format!(
                "SELECT recipient_key FROM deliveries WHERE campaign_id = $1 AND trigger_key = $2 AND recipient_key IN ({})",
                params.join(", ")
            );
            let mut statement = stmt_built::<S::Db>(sql).bind(campaign_id).bind(trigger_key);
            for key in chunk {
                statement = statement.bind(key.as_str());
            }
            found.extend(statement.all(self.reader(), |row| row.string("recipient_key")).await?);
        }
        Ok(found)
    }

    async fn campaign_deliveries(&self, campaign_id: &str, after_id: i64, limit: u32) -> StoreResult<Vec<Delivery>> {
        let rows = stmt::<S::Db>(concat!(
            select_deliveries!(),
            " WHERE d.campaign_id = $1 AND d.id > $2 ORDER BY d.id LIMIT $3"
        ))
        .bind(campaign_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(self.reader())
        .await?;
        let mut shared = SharedMessages::default();
        rows.iter().map(|row| delivery_of(Row::<S::Db>(row), &mut shared)).collect()
    }

    async fn campaign_exposures(&self, campaign_id: &str, with_variants: bool) -> StoreResult<Vec<ExposureRow>> {
        let variant_of = |row: &Row<'_, S::Db>| -> StoreResult<Option<String>> {
            if !with_variants {
                return Ok(None);
            }
            Ok(row.json("context")?.get("variant").and_then(Value::as_str).map(str::to_string))
        };
        let exposure = |row: Row<'_, S::Db>| {
            Ok(ExposureRow {
                trigger_key: row.string("trigger_key")?,
                line_user_id: row.user("line_user_id")?,
                at: row.ts("at")?,
                holdout: row.int("holdout")? == 1,
                variant: variant_of(&row)?,
            })
        };
        stmt::<S::Db>(
            "SELECT d.trigger_key, d.line_user_id, MIN(r.sent_at) AS at, CAST(0 AS BIGINT) AS holdout, d.context
             FROM deliveries d JOIN delivery_sends s ON s.delivery_id = d.id JOIN send_requests r ON r.id = s.request_id
             WHERE d.campaign_id = $1 AND d.line_user_id IS NOT NULL AND r.status = 'sent' AND r.sent_at IS NOT NULL
             GROUP BY d.id, d.trigger_key, d.line_user_id
             UNION ALL
             SELECT d.trigger_key, d.line_user_id, d.finished_at AS at, CAST(1 AS BIGINT) AS holdout, d.context
             FROM deliveries d
             WHERE d.campaign_id = $1 AND d.line_user_id IS NOT NULL AND d.status = 'skipped'
               AND d.skip_reason = 'holdout' AND d.finished_at IS NOT NULL",
        )
        .bind(campaign_id)
        .all(self.reader(), exposure)
        .await
    }

    async fn exposed_users_events(
        &self,
        campaign_id: &str,
        event_type: &str,
        after: DateTime<Utc>,
    ) -> StoreResult<Vec<UserEventRow>> {
        let event = |row: Row<'_, S::Db>| {
            Ok(UserEventRow {
                line_user_id: row.user("u")?,
                occurred_at: row.ts("occurred_at")?,
                properties: crate::membership::properties_of(row.json("properties")?),
            })
        };
        // A semi-join on the campaign's deliveries: the planner may walk the
        // users' `(…, type, occurred_at)` index ranges or scan the type's events.
        stmt::<S::Db>(
            "SELECT e.line_user_id AS u, e.occurred_at, e.properties FROM events e
             WHERE e.type = $2 AND e.occurred_at > $3 AND e.line_user_id IS NOT NULL
               AND e.line_user_id IN (SELECT d.line_user_id FROM deliveries d WHERE d.campaign_id = $1)
             UNION ALL
             SELECT l.line_user_id AS u, e.occurred_at, e.properties FROM events e JOIN links l ON l.member_id = e.member_id
             WHERE e.type = $2 AND e.occurred_at > $3 AND (e.line_user_id IS NULL OR e.line_user_id <> l.line_user_id)
               AND l.line_user_id IN (SELECT d.line_user_id FROM deliveries d WHERE d.campaign_id = $1)",
        )
        .bind(campaign_id)
        .bind(event_type)
        .bind(Ts(after))
        .all(self.reader(), event)
        .await
    }

    async fn campaign_counts(&self, campaign_id: &str) -> StoreResult<CampaignCounts> {
        // Kept as deliveries move (migration 0025): a few rows, however many deliveries.
        let rows = stmt::<S::Db>(
            "SELECT status, skip_reason, CAST(SUM(n) AS BIGINT) AS n FROM campaign_counts
             WHERE campaign_id = $1 GROUP BY status, skip_reason",
        )
        .bind(campaign_id)
        .fetch_all(self.reader())
        .await?;
        kept_counts_of::<S::Db>(&rows)
    }
}

/// A delivery row (`select_deliveries!()` and the claims' reads).
pub(crate) fn delivery_of<DB: Dialect>(row: Row<'_, DB>, shared: &mut SharedMessages) -> StoreResult<Delivery> {
    let messages = row.string("messages")?;
    let context = row.string("context")?;
    Ok(Delivery {
        id: row.int("id")?,
        campaign_id: row.string("campaign_id")?,
        trigger_key: row.string("trigger_key")?,
        recipient_key: row.string("recipient_key")?,
        line_user_id: row.opt_user("line_user_id")?,
        member_id: row.opt_member("member_id")?,
        due_at: row.ts("due_at")?,
        messages: shared.get(&messages)?,
        context: parse_json(&context, "delivery context")?,
        status: row.parsed("status", "delivery status", DeliveryStatus::parse)?,
        skip_reason: row.opt_string("skip_reason")?.map(|r| reason_of(Some(r))).transpose()?,
        request_id: row.opt_int("request_id")?,
        created_at: row.ts("created_at")?,
        requested_at: row.opt_ts("requested_at")?,
    })
}
