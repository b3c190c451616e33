//! LINE requests: what the sender sends. A request's `retry_key`
//! (`X-Line-Retry-Key`) and its recipients are committed before the first
//! attempt and never change, so a retry after a crash is recognised by LINE
//! (409 = already accepted). Senders share pending requests with leases.

use crate::sql::{Dialect, Row, Sql, Ts, stmt};
use crate::{StoreError, StoreResult, parse_user};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::LineUserId;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

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
    /// LINE's `customAggregationUnits` name of its campaign.
    pub aggregation_unit: Option<String>,
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
    /// LINE's `customAggregationUnits` name of its campaign.
    pub aggregation_unit: Option<String>,
}

#[async_trait]
pub trait RequestStore: Send + Sync + 'static {
    /// Leases up to `limit` pending requests with `next_attempt_at <= now` and
    /// a free or expired lease, incrementing `attempts`.
    async fn claim_requests(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Vec<SendRequest>>;

    /// LINE accepted it: the request (and so its deliveries) become `sent`.
    async fn complete_request(&self, id: i64, accepted_request_id: Option<&str>, at: DateTime<Utc>) -> StoreResult<()>;

    /// [`complete_request`](Self::complete_request) for many requests in one
    /// transaction (the sender records outcomes in batches). Unknown ids are skipped.
    async fn complete_requests(&self, done: &[(i64, Option<String>)], at: DateTime<Utc>) -> StoreResult<()>;

    /// A retryable failure: release the lease, try again at `next_attempt_at`.
    async fn retry_request(&self, id: i64, next_attempt_at: DateTime<Utc>, error: &str) -> StoreResult<()>;

    /// A permanent failure: the request (and so its deliveries) become `failed` with `error`.
    async fn fail_request(&self, id: i64, error: &str, at: DateTime<Utc>) -> StoreResult<()>;

    /// Gives a request `owner` claimed back untried (its claim's attempt
    /// uncounted), for any instance to claim at once. Nothing when the lease
    /// is no longer `owner`'s.
    async fn release_request(&self, id: i64, owner: &str) -> StoreResult<()>;

    async fn get_request(&self, id: i64) -> StoreResult<Option<SendRequest>>;

    /// The earliest `next_attempt_at` of a pending request.
    async fn next_request_due(&self) -> StoreResult<Option<DateTime<Utc>>>;

    /// The aggregation units sent after `since`, with their first send ever
    /// and when LINE's statistics were last fetched, least lately fetched first.
    async fn units_sent_since(&self, since: DateTime<Utc>) -> StoreResult<Vec<UnitSends>>;

    /// Records LINE's statistics of `unit` (`None`: LINE's "fewer than 20").
    async fn save_unit_stats(&self, unit: &str, stats: UnitStats, at: DateTime<Utc>) -> StoreResult<()>;

    /// The last statistics fetched for `unit`, and when.
    async fn unit_stats(&self, unit: &str) -> StoreResult<Option<(UnitStats, DateTime<Utc>)>>;
}

/// An aggregation unit with recent sends (see `RequestStore::units_sent_since`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSends {
    pub unit: String,
    pub first_sent_at: DateTime<Utc>,
    pub fetched_at: Option<DateTime<Utc>>,
}

/// LINE's unique impressions and clicks of a unit; `None` is LINE's null.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UnitStats {
    pub unique_impression: Option<i64>,
    pub unique_click: Option<i64>,
}

/// What differs per backend (`sqlite/requests.rs`, `postgres/requests.rs`).
#[async_trait]
pub trait RequestsSql: Sql {
    /// Leases due requests (`$1` owner, `$2` lease end, `$3` now, `$4` limit) `RETURNING` the request columns.
    const CLAIM_REQUESTS: &'static str;
    /// The earliest time a pending request can be attempted (column `due`).
    const NEXT_REQUEST_DUE: &'static str;

    async fn complete_requests(&self, done: &[(i64, Option<String>)], at: DateTime<Utc>) -> StoreResult<()>;
}

/// A request's columns, as `request_of` reads them.
macro_rules! request_columns {
    () => {
        "id, kind, retry_key, messages, recipients, status, attempts, next_attempt_at, last_error, \
         accepted_request_id, created_at, sent_at, aggregation_unit"
    };
}
pub(crate) use request_columns;

pub(crate) const COMPLETE_REQUEST: &str = "UPDATE send_requests SET status = 'sent',
    accepted_request_id = COALESCE($1, accepted_request_id), sent_at = $2, finished_at = $2, lease_owner = NULL,
    lease_until = NULL WHERE id = $3";

#[async_trait]
impl<S: RequestsSql> RequestStore for S {
    async fn claim_requests(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Vec<SendRequest>> {
        let mut claimed = stmt::<S::Db>(S::CLAIM_REQUESTS)
            .bind(owner)
            .bind(Ts(lease_until))
            .bind(Ts(now))
            .bind(limit)
            .all(self.writer(), request_of)
            .await?;
        claimed.sort_by_key(|r| (r.next_attempt_at, r.id));
        Ok(claimed)
    }

    async fn complete_request(&self, id: i64, accepted_request_id: Option<&str>, at: DateTime<Utc>) -> StoreResult<()> {
        let updated = stmt::<S::Db>(COMPLETE_REQUEST)
            .bind(accepted_request_id)
            .bind(Ts(at))
            .bind(id)
            .execute(self.writer())
            .await?;
        if updated == 0 {
            return Err(unknown_request(id));
        }
        Ok(())
    }

    async fn complete_requests(&self, done: &[(i64, Option<String>)], at: DateTime<Utc>) -> StoreResult<()> {
        if done.is_empty() {
            return Ok(());
        }
        RequestsSql::complete_requests(self, done, at).await
    }

    async fn retry_request(&self, id: i64, next_attempt_at: DateTime<Utc>, error: &str) -> StoreResult<()> {
        stmt::<S::Db>(
            "UPDATE send_requests SET next_attempt_at = $1, last_error = $2, lease_owner = NULL, lease_until = NULL
             WHERE id = $3 AND status = 'pending'",
        )
        .bind(Ts(next_attempt_at))
        .bind(error)
        .bind(id)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn release_request(&self, id: i64, owner: &str) -> StoreResult<()> {
        stmt::<S::Db>(
            "UPDATE send_requests SET lease_owner = NULL, lease_until = NULL, attempts = attempts - 1
             WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
        )
        .bind(id)
        .bind(owner)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn fail_request(&self, id: i64, error: &str, at: DateTime<Utc>) -> StoreResult<()> {
        let updated = stmt::<S::Db>(
            "UPDATE send_requests SET status = 'failed', last_error = $1, finished_at = $2, lease_owner = NULL,
             lease_until = NULL WHERE id = $3 AND status <> 'sent'",
        )
        .bind(error)
        .bind(Ts(at))
        .bind(id)
        .execute(self.writer())
        .await?;
        if updated == 0 {
            let known = stmt::<S::Db>("SELECT id FROM send_requests WHERE id = $1")
                .bind(id)
                .fetch_optional(self.writer())
                .await?;
            if known.is_none() {
                return Err(unknown_request(id));
            }
            // Already sent: LINE accepted it, a late failure changes nothing.
        }
        Ok(())
    }

    async fn get_request(&self, id: i64) -> StoreResult<Option<SendRequest>> {
        let get = concat!("SELECT ", request_columns!(), " FROM send_requests WHERE id = $1");
        stmt::<S::Db>(get).bind(id).optional(self.reader(), request_of).await
    }

    async fn next_request_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        stmt::<S::Db>(S::NEXT_REQUEST_DUE).one(self.reader(), |row| row.opt_ts("due")).await
    }

    async fn units_sent_since(&self, since: DateTime<Utc>) -> StoreResult<Vec<UnitSends>> {
        stmt::<S::Db>(
            "SELECT r.unit, r.first_at, l.fetched_at FROM (
                 SELECT aggregation_unit AS unit, MIN(sent_at) AS first_at FROM send_requests
                 WHERE aggregation_unit IS NOT NULL AND status = 'sent' GROUP BY aggregation_unit
                 HAVING MAX(sent_at) > $1
             ) r LEFT JOIN line_unit_stats l ON l.unit = r.unit
             ORDER BY l.fetched_at IS NOT NULL, l.fetched_at, r.unit",
        )
        .bind(Ts(since))
        .all(self.reader(), |row| {
            Ok(UnitSends {
                unit: row.string("unit")?,
                first_sent_at: row.ts("first_at")?,
                fetched_at: row.opt_ts("fetched_at")?,
            })
        })
        .await
    }

    async fn save_unit_stats(&self, unit: &str, stats: UnitStats, at: DateTime<Utc>) -> StoreResult<()> {
        stmt::<S::Db>(
            "INSERT INTO line_unit_stats (unit, unique_impression, unique_click, fetched_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (unit) DO UPDATE SET unique_impression = excluded.unique_impression,
                 unique_click = excluded.unique_click, fetched_at = excluded.fetched_at",
        )
        .bind(unit)
        .bind(stats.unique_impression)
        .bind(stats.unique_click)
        .bind(Ts(at))
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn unit_stats(&self, unit: &str) -> StoreResult<Option<(UnitStats, DateTime<Utc>)>> {
        stmt::<S::Db>("SELECT unique_impression, unique_click, fetched_at FROM line_unit_stats WHERE unit = $1")
            .bind(unit)
            .optional(self.reader(), |row| {
                let stats = UnitStats {
                    unique_impression: row.opt_int("unique_impression")?,
                    unique_click: row.opt_int("unique_click")?,
                };
                Ok((stats, row.ts("fetched_at")?))
            })
            .await
    }
}

/// A `send_requests` row (`request_columns!()`).
fn request_of<DB: Dialect>(row: Row<'_, DB>) -> StoreResult<SendRequest> {
    Ok(SendRequest {
        id: row.int("id")?,
        kind: row.parsed("kind", "request kind", RequestKind::parse)?,
        retry_key: row.uuid("retry_key")?,
        messages: row.json("messages")?,
        recipients: recipients_of(row.json("recipients")?)?,
        status: row.parsed("status", "request status", RequestStatus::parse)?,
        attempts: u32::try_from(row.int("attempts")?.max(0)).unwrap_or(u32::MAX),
        next_attempt_at: row.ts("next_attempt_at")?,
        last_error: row.opt_string("last_error")?,
        accepted_request_id: row.opt_string("accepted_request_id")?,
        created_at: row.ts("created_at")?,
        sent_at: row.opt_ts("sent_at")?,
        aggregation_unit: row.opt_string("aggregation_unit")?,
    })
}

fn recipients_of(value: Value) -> StoreResult<Vec<LineUserId>> {
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => parse_user(text),
                _ => Err(StoreError::Corrupt("request recipient is not a string".into())),
            })
            .collect(),
        _ => Err(StoreError::Corrupt("request recipients are not a JSON array".into())),
    }
}

pub(crate) fn recipients_json(recipients: &[LineUserId]) -> Value {
    Value::Array(recipients.iter().map(|u| Value::String(u.as_str().to_string())).collect())
}

pub(crate) fn retry_key_conflict(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict("a request with this retry key exists already".into())
        }
        _ => error.into(),
    }
}

fn unknown_request(id: i64) -> StoreError {
    StoreError::Conflict(format!("unknown request {id}"))
}
