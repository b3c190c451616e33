//! Events: ingest (batches and streamed imports, deduplicated by
//! `event_id`), and reads by row id (the scheduler tails them) and clicks.

use crate::sql::{Dialect, Row, Sql, Ts, stmt, stmt_built};
use crate::tallies::{TallyAdd, batch_tallies, merged_tallies};
use crate::{ImportReceiver, StoreError, StoreResult, parse_object};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{Cause, EventTallier, NewEvent, UserRef};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::Database;
use std::sync::Arc;

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

    /// A batch's outcome from which of its events were stored.
    fn of(stored: &[bool]) -> Self {
        let accepted = stored.iter().filter(|s| **s).count() as u64;
        Self { accepted, duplicates: stored.len() as u64 - accepted }
    }
}

/// An event a merge stored: what the change feed and the tallies read.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedEvent {
    pub event_type: String,
    pub member_id: Option<String>,
    pub line_user_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// Empty unless a tally reads the event's type.
    pub properties: Map<String, Value>,
}

/// Most unmerged events [`EventStore::appended_waiting`] counts: past that a
/// count reads a large inbox every time it is asked (each second, for
/// `/metrics`).
pub const UNMERGED_COUNTED: u64 = 1_000_000;

/// How [`EventStore::append_events`] kept a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub outcome: IngestOutcome,
    /// The accepted events wait in the inbox for [`EventStore::merge_appended`]
    /// (PostgreSQL); `false`: they are in `events` already (SQLite).
    pub merged_later: bool,
}

/// What one [`EventStore::merge_appended`] moved into `events`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// Rows taken out of the inbox.
    pub taken: u64,
    /// Of those, events stored (not repeats of an `event_id` stored meanwhile).
    pub events: u64,
    /// The users whose events were stored, by every key they carry.
    pub users: Vec<UserRef>,
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

/// Whom a fan-out reaches: events of one of `event_types` that occurred in
/// `(since, until]` and carry each of `matches` (property, dotted for nested,
/// of `[A-Za-z0-9_]` segments) as this string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutQuery {
    pub event_types: Vec<String>,
    pub matches: Vec<(String, String)>,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// One event a fan-out matched, with its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutHit {
    /// Its place in the order of pages: (`occurred_at`, row id).
    pub occurred_at: DateTime<Utc>,
    pub id: i64,
    /// The event's LINE user, else the one its member is linked to.
    pub line_user_id: Option<String>,
    pub member_id: Option<String>,
}

impl FanoutHit {
    /// Where the next page starts.
    pub fn place(&self) -> (DateTime<Utc>, i64) {
        (self.occurred_at, self.id)
    }
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Stores a validated batch atomically. Events whose `event_id` is known
    /// (stored before, or earlier in the same batch) count as duplicates.
    async fn insert_events(&self, events: &[NewEvent], received_at: DateTime<Utc>) -> StoreResult<IngestOutcome>;

    /// Stores a validated batch durably and says which events repeat a known
    /// `event_id`, as [`insert_events`](Self::insert_events) does; where the
    /// backend keeps an inbox (PostgreSQL, migration 0027) the events are
    /// appended to it, and reach `events` at the next
    /// [`merge_appended`](Self::merge_appended).
    async fn append_events(&self, events: &[NewEvent], received_at: DateTime<Utc>) -> StoreResult<Appended>;

    /// Moves up to `limit` appended events into `events` (with their totals,
    /// tallies and change-feed rows) in one transaction; several callers
    /// take different rows. Nothing where the backend keeps no inbox.
    async fn merge_appended(&self, limit: u32) -> StoreResult<Merged>;

    /// Whether [`append_events`](Self::append_events) leaves events for a
    /// merger to move.
    fn keeps_inbox(&self) -> bool;

    /// Appended events not yet merged, those a merge is moving included (0
    /// where the store keeps no inbox), counted up to [`UNMERGED_COUNTED`].
    async fn appended_waiting(&self) -> StoreResult<u64>;

    /// Streams batches into one transaction: all of them or, on any error, none.
    async fn import_events(
        &self,
        batches: ImportReceiver<NewEvent>,
        received_at: DateTime<Utc>,
    ) -> StoreResult<IngestOutcome>;

    /// Events with row id `> after_id` whose type is one of `types`, oldest first.
    async fn events_after(&self, after_id: i64, types: &[String], limit: u32) -> StoreResult<Vec<StoredEvent>>;

    /// The largest event row id (0 when none).
    async fn max_event_id(&self) -> StoreResult<i64>;

    /// One page of the events a fan-out matches, in (`occurred_at`, id)
    /// order after `after`. A user with several such events appears once
    /// per event: the caller deduplicates.
    async fn fanout_page(
        &self,
        query: &FanoutQuery,
        after: Option<(DateTime<Utc>, i64)>,
        limit: u32,
    ) -> StoreResult<Vec<FanoutHit>>;

    /// `link_click` events of a campaign's tracked links: (clicks, distinct users).
    async fn campaign_clicks(&self, campaign_id: &str) -> StoreResult<(u64, u64)> {
        let by_user = self.campaign_clicks_by_user(campaign_id).await?;
        Ok((by_user.iter().map(|(_, n)| n).sum(), by_user.len() as u64))
    }

    /// `link_click` events of a campaign's tracked links, per LINE user.
    async fn campaign_clicks_by_user(&self, campaign_id: &str) -> StoreResult<Vec<(String, u64)>>;
}

/// What differs per backend (`sqlite/events.rs`, `postgres/events.rs`).
#[async_trait]
pub trait EventsSql: Sql {
    /// Inserts a batch inside a transaction (chunked VALUES vs UNNEST):
    /// whether each event was stored (not a repeat of a known `event_id`).
    async fn insert_events_tx(
        conn: &mut <Self::Db as Database>::Connection,
        events: &[NewEvent],
        received_at: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>>;

    /// Whether the backend keeps an inbox ([`EventsSql::append_tx`]).
    const INBOX: bool = false;

    /// Appends a batch without repeated `event_id`s to the inbox in one
    /// statement: the `event_id`s it kept (those neither appended before nor
    /// in `events`).
    async fn append_tx(&self, _events: &[&NewEvent], _received_at: DateTime<Utc>) -> StoreResult<Vec<String>> {
        Ok(Vec::new())
    }

    /// Moves up to `limit` inbox rows that no other transaction holds into
    /// `events`, in one statement: how many rows it took, and the events it
    /// stored (with their properties if their type is one of `tallied`).
    async fn merge_tx(
        _conn: &mut <Self::Db as Database>::Connection,
        _limit: u32,
        _tallied: &[&str],
    ) -> StoreResult<(u64, Vec<MergedEvent>)> {
        Ok((0, Vec::new()))
    }

    /// The tallier whose tallies inserts add to (see `tallies.rs`).
    fn tallier(&self) -> Option<Arc<dyn EventTallier>>;

    /// Adds rows to `event_tallies` (one row per source and key at most).
    async fn add_tallies_tx(conn: &mut <Self::Db as Database>::Connection, rows: &[TallyAdd]) -> StoreResult<()>;

    /// Counts `link_click`s of campaign `$1` per `line_user_id` (column
    /// `clicks`): the JSON path syntax differs.
    const CAMPAIGN_CLICKS: &'static str;

    /// A condition that the event `e`'s property `path` (`[A-Za-z0-9_]`
    /// segments, dotted for nested) is a string equal to parameter `$param`,
    /// written as migration 0018's index on `sku` is, so that it serves.
    fn property_equals(path: &str, param: usize) -> String;

    /// [`EventStore::events_after`] with at least one type (a set parameter).
    async fn events_after(&self, after_id: i64, types: &[String], limit: u32) -> StoreResult<Vec<StoredEvent>>;
}

/// Inserts a batch and adds its tallies, inside the caller's transaction.
async fn insert_batch_tx<S: EventsSql>(
    store: &S,
    conn: &mut <S::Db as Database>::Connection,
    events: &[NewEvent],
    received_at: DateTime<Utc>,
) -> StoreResult<IngestOutcome> {
    let stored = S::insert_events_tx(conn, events, received_at).await?;
    let changed =
        crate::changes::distinct(events.iter().zip(&stored).filter(|(_, stored)| **stored).flat_map(|(e, _)| {
            e.line_user_id.clone().map(UserRef::LineUser).into_iter().chain(e.member_id.clone().map(UserRef::Member))
        }));
    crate::changes::record_changes_tx::<S::Db>(conn, &changed, Cause::Event, received_at).await?;
    if let Some(tallier) = store.tallier() {
        let rows = batch_tallies(tallier.as_ref(), events, &stored, received_at);
        if !rows.is_empty() {
            S::add_tallies_tx(conn, &rows).await?;
        }
    }
    Ok(IngestOutcome::of(&stored))
}

/// The event types the tallier reads, each once.
fn distinct_types(tallier: &dyn EventTallier) -> Vec<&str> {
    let mut types: Vec<&str> = tallier.tallies().iter().map(|(_, t)| t.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    types
}

/// A merged event's users, by every key it carries.
fn merged_users(event: &MergedEvent) -> Vec<StoreResult<UserRef>> {
    let by_user = event.line_user_id.as_deref().map(|id| crate::parse_user(id).map(UserRef::LineUser));
    let by_member = event.member_id.as_deref().map(|id| crate::parse_member(id).map(UserRef::Member));
    by_user.into_iter().chain(by_member).collect()
}

/// A batch's events without those whose `event_id` came earlier in it.
fn first_of_each_key(events: &[NewEvent]) -> Vec<&NewEvent> {
    let mut seen = std::collections::HashSet::new();
    events.iter().filter(|e| e.event_id.as_ref().is_none_or(|id| seen.insert(id.as_str()))).collect()
}

#[async_trait]
impl<S: EventsSql> EventStore for S {
    async fn insert_events(&self, events: &[NewEvent], received_at: DateTime<Utc>) -> StoreResult<IngestOutcome> {
        let mut tx = S::Db::begin(self.writer()).await?;
        let outcome = insert_batch_tx(self, &mut tx, events, received_at).await?;
        S::Db::commit(tx).await?;
        Ok(outcome)
    }

    async fn append_events(&self, events: &[NewEvent], received_at: DateTime<Utc>) -> StoreResult<Appended> {
        if !S::INBOX {
            let outcome = self.insert_events(events, received_at).await?;
            return Ok(Appended { outcome, merged_later: false });
        }
        let kept = self.append_tx(&first_of_each_key(events), received_at).await?;
        let outcome = IngestOutcome::of(&crate::tallies::stored_of(events, &kept));
        Ok(Appended { outcome, merged_later: true })
    }

    async fn merge_appended(&self, limit: u32) -> StoreResult<Merged> {
        if !S::INBOX {
            return Ok(Merged::default());
        }
        let tallier = self.tallier();
        let tallied = tallier.as_ref().map(|t| distinct_types(t.as_ref())).unwrap_or_default();
        let mut tx = S::Db::begin(self.writer()).await?;
        let (taken, stored) = S::merge_tx(&mut tx, limit, &tallied).await?;
        if stored.is_empty() {
            S::Db::commit(tx).await?;
            return Ok(Merged { taken, ..Merged::default() });
        }
        let users = crate::changes::distinct(stored.iter().flat_map(merged_users).collect::<StoreResult<Vec<_>>>()?);
        let changed_at = stored.iter().map(|e| e.received_at).max().unwrap_or_else(Utc::now);
        crate::changes::record_changes_tx::<S::Db>(&mut tx, &users, Cause::Event, changed_at).await?;
        if let Some(tallier) = &tallier {
            let rows = merged_tallies(tallier.as_ref(), &stored);
            if !rows.is_empty() {
                S::add_tallies_tx(&mut tx, &rows).await?;
            }
        }
        S::Db::commit(tx).await?;
        Ok(Merged { taken, events: stored.len() as u64, users })
    }

    fn keeps_inbox(&self) -> bool {
        S::INBOX
    }

    async fn appended_waiting(&self) -> StoreResult<u64> {
        if !S::INBOX {
            return Ok(0);
        }
        let count = stmt::<S::Db>("SELECT COUNT(*) AS n FROM (SELECT 1 FROM event_inbox LIMIT $1) AS waiting")
            .bind(UNMERGED_COUNTED as i64)
            .one(self.reader(), |row| row.int("n"))
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn import_events(
        &self,
        mut batches: ImportReceiver<NewEvent>,
        received_at: DateTime<Utc>,
    ) -> StoreResult<IngestOutcome> {
        let mut tx = S::Db::begin(self.writer()).await?;
        let mut outcome = IngestOutcome::default();
        while let Some(batch) = batches.recv().await {
            let batch = batch.map_err(StoreError::ImportAborted)?;
            outcome.add(insert_batch_tx(self, &mut tx, &batch, received_at).await?);
        }
        S::Db::commit(tx).await?;
        Ok(outcome)
    }

    async fn events_after(&self, after_id: i64, types: &[String], limit: u32) -> StoreResult<Vec<StoredEvent>> {
        if types.is_empty() {
            return Ok(Vec::new());
        }
        EventsSql::events_after(self, after_id, types, limit).await
    }

    async fn max_event_id(&self) -> StoreResult<i64> {
        stmt::<S::Db>("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) AS id FROM events")
            .one(self.reader(), |row| row.int("id"))
            .await
    }

    async fn fanout_page(
        &self,
        query: &FanoutQuery,
        after: Option<(DateTime<Utc>, i64)>,
        limit: u32,
    ) -> StoreResult<Vec<FanoutHit>> {
        if query.event_types.is_empty() || query.matches.is_empty() {
            return Ok(Vec::new());
        }
        let (after_at, after_id) = after.unwrap_or((query.since, 0));
        let mut sql = fanout_sql(query, S::property_equals);
        sql.push_str(" ORDER BY e.occurred_at, e.id LIMIT $1");
        let mut statement = stmt_built::<S::Db>(sql)
            .bind(limit)
            .bind(Ts(query.since))
            .bind(Ts(query.until))
            .bind(Ts(after_at))
            .bind(after_id);
        for event_type in &query.event_types {
            statement = statement.bind(event_type.as_str());
        }
        for (_, value) in &query.matches {
            statement = statement.bind(value.as_str());
        }
        statement
            .all(self.reader(), |row| {
                Ok(FanoutHit {
                    occurred_at: row.ts("occurred_at")?,
                    id: row.int("id")?,
                    line_user_id: row.opt_string("line_user_id")?,
                    member_id: row.opt_string("member_id")?,
                })
            })
            .await
    }

    async fn campaign_clicks_by_user(&self, campaign_id: &str) -> StoreResult<Vec<(String, u64)>> {
        let rows = stmt::<S::Db>(S::CAMPAIGN_CLICKS)
            .bind(campaign_id)
            .all(self.reader(), |row| {
                Ok((row.opt_string("line_user_id")?, u64::try_from(row.int("clicks")?).unwrap_or(0)))
            })
            .await?;
        Ok(rows.into_iter().filter_map(|(user, clicks)| Some((user?, clicks))).collect())
    }
}

/// A fan-out's query: `$1` the limit, `$2`/`$3` the window, `$4`/`$5` the
/// place after which the page starts, then the types, then the match values.
/// The recipient is the event's LINE user, else its member's linked one.
/// `occurred_at >= $4` bounds the index range, so a page reads from where
/// the last one ended.
fn fanout_sql(query: &FanoutQuery, property_equals: fn(&str, usize) -> String) -> String {
    let types = query.event_types.len();
    let type_params: Vec<String> = (0..types).map(|k| format!("${}", 6 + k)).collect();
    let mut sql = format!(
        "SELECT e.id, e.occurred_at, COALESCE(e.line_user_id, l.line_user_id) AS line_user_id, e.member_id
         FROM events e LEFT JOIN links l ON e.line_user_id IS NULL AND l.member_id = e.member_id
         WHERE e.type IN ({}) AND e.occurred_at > $2 AND e.occurred_at <= $3
           AND e.occurred_at >= $4 AND (e.occurred_at > $4 OR e.id > $5)",
        type_params.join(", ")
    );
    for (k, (path, _)) in query.matches.iter().enumerate() {
        sql.push_str(" AND ");
        sql.push_str(&property_equals(path, 6 + types + k));
    }
    sql
}

/// An `events` row (`id, event_id, type, member_id, line_user_id, occurred_at, properties`).
pub(crate) fn event_of<DB: Dialect>(row: Row<'_, DB>) -> StoreResult<StoredEvent> {
    Ok(StoredEvent {
        id: row.int("id")?,
        event_id: row.opt_string("event_id")?,
        event_type: row.string("type")?,
        member_id: row.opt_string("member_id")?,
        line_user_id: row.opt_string("line_user_id")?,
        occurred_at: row.ts("occurred_at")?,
        properties: parse_object(row.json("properties")?, "event properties")?,
    })
}
