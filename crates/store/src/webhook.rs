//! Storage for the LINE webhook inbox (dedupe on webhookEventId, processing
//! leases) and the account-link nonces. Both backends' implementations live
//! in this file.
//!
//! Friendships are written through [`Store::set_following`](crate::Store::set_following).

use crate::sqlite::{from_micros, to_micros};
use crate::{PgStore, SqliteStore, StoreError, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{LineUserId, MemberId};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use sqlx::types::Json;

/// One webhook event as received, to be stored before LINE gets its 200.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWebhookEvent {
    /// The dedupe key; events without one are always stored.
    pub webhook_event_id: Option<String>,
    /// The event's `type` as sent (may be unknown to renkei, or empty).
    pub event_type: String,
    /// The event's raw JSON.
    pub body: Value,
}

/// A stored webhook event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WebhookEventRow {
    pub id: i64,
    pub webhook_event_id: Option<String>,
    pub event_type: String,
    pub body: Value,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    /// How many times a worker claimed it.
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// An account-link nonce and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkNonce {
    pub nonce: String,
    pub member_id: MemberId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    /// `ok`, `failed` (LINE said so) or `conflict` (ok, but the link was refused).
    pub result: Option<String>,
    pub line_user_id: Option<String>,
}

/// What consuming a nonce amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NonceUse {
    /// The nonce was valid (or was consumed earlier by this same webhook
    /// row, which is being processed again): link this member.
    Consumed(MemberId),
    Unknown,
    Expired,
    AlreadyUsed,
}

#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Stores raw webhook events in one transaction. Returns, per input, the
    /// new row's id, or `None` for a known `webhookEventId` (a redelivery, or
    /// a repeat earlier in the same batch).
    async fn insert_webhook_events(
        &self,
        events: &[NewWebhookEvent],
        received_at: DateTime<Utc>,
    ) -> StoreResult<Vec<Option<i64>>>;

    /// Claims up to `limit` unprocessed events, oldest first, that nobody
    /// holds a live lease on, for `lease`. Rows a crashed worker claimed come
    /// back once their lease has run out.
    async fn claim_webhook_events(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: u32,
    ) -> StoreResult<Vec<WebhookEventRow>>;

    /// Marks an event processed (`error` says why it was given up on, if so).
    async fn finish_webhook_event(&self, id: i64, now: DateTime<Utc>, error: Option<&str>) -> StoreResult<()>;

    /// Records a failed attempt; the event stays unprocessed and is claimed
    /// again when its lease runs out.
    async fn record_webhook_error(&self, id: i64, error: &str) -> StoreResult<()>;

    async fn get_webhook_event(&self, webhook_event_id: &str) -> StoreResult<Option<WebhookEventRow>>;

    /// How many stored events are not processed yet.
    async fn pending_webhook_events(&self) -> StoreResult<u64>;

    /// Stores a fresh nonce; a nonce that exists already is a [`StoreError::Conflict`].
    async fn create_link_nonce(
        &self,
        nonce: &str,
        member_id: &MemberId,
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Uses a nonce for an `ok` accountLink event, atomically: only once, and
    /// only while `now < expires_at`. `consumer` is the webhook row's id.
    async fn consume_link_nonce(
        &self,
        nonce: &str,
        line_user_id: &LineUserId,
        consumer: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<NonceUse>;

    /// Records LINE's `failed` result against an unused nonce, which uses it
    /// up. Returns false if the nonce is unknown or already used.
    async fn fail_link_nonce(&self, nonce: &str, now: DateTime<Utc>) -> StoreResult<bool>;

    /// Overwrites the result of a consumed nonce (e.g. `conflict`).
    async fn set_link_nonce_result(&self, nonce: &str, result: &str) -> StoreResult<()>;

    async fn get_link_nonce(&self, nonce: &str) -> StoreResult<Option<LinkNonce>>;
}

fn attempts(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

fn member(text: String) -> StoreResult<MemberId> {
    MemberId::parse(&text).map_err(|e| StoreError::Corrupt(format!("nonce member_id: {e}")))
}

fn lease_end(now: DateTime<Utc>, lease: chrono::Duration) -> DateTime<Utc> {
    now.checked_add_signed(lease).unwrap_or(now)
}

fn nonce_conflict(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict("nonce already exists".into()),
        _ => StoreError::Database(error),
    }
}

/// Decides why a nonce could not be consumed, from its current row.
fn refused_use(row: Option<(String, Option<i64>, bool)>, consumer: i64) -> StoreResult<NonceUse> {
    Ok(match row {
        None => NonceUse::Unknown,
        Some((member_id, consumed_by, _)) if consumed_by == Some(consumer) => NonceUse::Consumed(member(member_id)?),
        Some((_, _, true)) => NonceUse::AlreadyUsed,
        Some((_, _, false)) => NonceUse::Expired,
    })
}

// ---------------------------------------------------------------- SQLite

const SQLITE_ROW: &str = "id, webhook_event_id, type, body, received_at, processed_at, attempts, last_error";

fn sqlite_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<WebhookEventRow> {
    let body: String = row.try_get("body")?;
    Ok(WebhookEventRow {
        id: row.try_get("id")?,
        webhook_event_id: row.try_get("webhook_event_id")?,
        event_type: row.try_get("type")?,
        body: serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("webhook body: {e}")))?,
        received_at: from_micros(row.try_get("received_at")?)?,
        processed_at: row.try_get::<Option<i64>, _>("processed_at")?.map(from_micros).transpose()?,
        attempts: attempts(row.try_get("attempts")?),
        last_error: row.try_get("last_error")?,
    })
}

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn insert_webhook_events(
        &self,
        events: &[NewWebhookEvent],
        received_at: DateTime<Utc>,
    ) -> StoreResult<Vec<Option<i64>>> {
        let mut tx = self.writer.begin().await?;
        let mut ids = Vec::with_capacity(events.len());
        for event in events {
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO webhook_events (webhook_event_id, type, body, received_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT (webhook_event_id) DO NOTHING RETURNING id",
            )
            .bind(event.webhook_event_id.as_deref())
            .bind(&event.event_type)
            .bind(event.body.to_string())
            .bind(to_micros(received_at))
            .fetch_optional(&mut *tx)
            .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn claim_webhook_events(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: u32,
    ) -> StoreResult<Vec<WebhookEventRow>> {
        // One writer connection: the UPDATE is the claim, no other worker
        // can interleave.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE webhook_events SET claimed_until = ?, attempts = attempts + 1
             WHERE id IN (SELECT id FROM webhook_events
                          WHERE processed_at IS NULL AND (claimed_until IS NULL OR claimed_until <= ?)
                          ORDER BY id LIMIT ?)
             RETURNING {SQLITE_ROW}"
        )))
        .bind(to_micros(lease_end(now, lease)))
        .bind(to_micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        let mut claimed = rows.iter().map(sqlite_row).collect::<StoreResult<Vec<_>>>()?;
        claimed.sort_by_key(|row| row.id);
        Ok(claimed)
    }

    async fn finish_webhook_event(&self, id: i64, now: DateTime<Utc>, error: Option<&str>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_events SET processed_at = ?, claimed_until = NULL, last_error = COALESCE(?, last_error)
             WHERE id = ?",
        )
        .bind(to_micros(now))
        .bind(error)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn record_webhook_error(&self, id: i64, error: &str) -> StoreResult<()> {
        sqlx::query("UPDATE webhook_events SET last_error = ? WHERE id = ?")
            .bind(error)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn get_webhook_event(&self, webhook_event_id: &str) -> StoreResult<Option<WebhookEventRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SQLITE_ROW} FROM webhook_events WHERE webhook_event_id = ?"
        )))
        .bind(webhook_event_id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(sqlite_row).transpose()
    }

    async fn pending_webhook_events(&self) -> StoreResult<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events WHERE processed_at IS NULL")
            .fetch_one(&self.reader)
            .await?;
        Ok(count.max(0) as u64)
    }

    async fn create_link_nonce(
        &self,
        nonce: &str,
        member_id: &MemberId,
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO link_nonces (nonce, member_id, created_at, expires_at) VALUES (?, ?, ?, ?)")
            .bind(nonce)
            .bind(member_id.as_str())
            .bind(to_micros(created_at))
            .bind(to_micros(expires_at))
            .execute(&self.writer)
            .await
            .map_err(nonce_conflict)?;
        Ok(())
    }

    async fn consume_link_nonce(
        &self,
        nonce: &str,
        line_user_id: &LineUserId,
        consumer: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<NonceUse> {
        let mut tx = self.writer.begin().await?;
        let consumed: Option<String> = sqlx::query_scalar(
            "UPDATE link_nonces SET used_at = ?1, result = 'ok', line_user_id = ?2, consumed_by = ?3
             WHERE nonce = ?4 AND used_at IS NULL AND expires_at > ?1
             RETURNING member_id",
        )
        .bind(to_micros(now))
        .bind(line_user_id.as_str())
        .bind(consumer)
        .bind(nonce)
        .fetch_optional(&mut *tx)
        .await?;
        let outcome = match consumed {
            Some(member_id) => NonceUse::Consumed(member(member_id)?),
            None => {
                let row = sqlx::query("SELECT member_id, consumed_by, used_at FROM link_nonces WHERE nonce = ?")
                    .bind(nonce)
                    .fetch_optional(&mut *tx)
                    .await?;
                let row = row
                    .map(|r| -> StoreResult<_> {
                        Ok((
                            r.try_get("member_id")?,
                            r.try_get("consumed_by")?,
                            r.try_get::<Option<i64>, _>("used_at")?.is_some(),
                        ))
                    })
                    .transpose()?;
                refused_use(row, consumer)?
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    async fn fail_link_nonce(&self, nonce: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let result =
            sqlx::query("UPDATE link_nonces SET used_at = ?, result = 'failed' WHERE nonce = ? AND used_at IS NULL")
                .bind(to_micros(now))
                .bind(nonce)
                .execute(&self.writer)
                .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn set_link_nonce_result(&self, nonce: &str, result: &str) -> StoreResult<()> {
        sqlx::query("UPDATE link_nonces SET result = ? WHERE nonce = ?")
            .bind(result)
            .bind(nonce)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn get_link_nonce(&self, nonce: &str) -> StoreResult<Option<LinkNonce>> {
        let row = sqlx::query(
            "SELECT nonce, member_id, created_at, expires_at, used_at, result, line_user_id
             FROM link_nonces WHERE nonce = ?",
        )
        .bind(nonce)
        .fetch_optional(&self.reader)
        .await?;
        row.map(|row| {
            Ok(LinkNonce {
                nonce: row.try_get("nonce")?,
                member_id: member(row.try_get("member_id")?)?,
                created_at: from_micros(row.try_get("created_at")?)?,
                expires_at: from_micros(row.try_get("expires_at")?)?,
                used_at: row.try_get::<Option<i64>, _>("used_at")?.map(from_micros).transpose()?,
                result: row.try_get("result")?,
                line_user_id: row.try_get("line_user_id")?,
            })
        })
        .transpose()
    }
}

// ---------------------------------------------------------------- PostgreSQL

const PG_ROW: &str = "id, webhook_event_id, type, body, received_at, processed_at, attempts, last_error";

fn pg_row(row: &sqlx::postgres::PgRow) -> StoreResult<WebhookEventRow> {
    let body: Json<Value> = row.try_get("body")?;
    Ok(WebhookEventRow {
        id: row.try_get("id")?,
        webhook_event_id: row.try_get("webhook_event_id")?,
        event_type: row.try_get("type")?,
        body: body.0,
        received_at: row.try_get("received_at")?,
        processed_at: row.try_get("processed_at")?,
        attempts: attempts(i64::from(row.try_get::<i32, _>("attempts")?)),
        last_error: row.try_get("last_error")?,
    })
}

#[async_trait]
impl WebhookStore for PgStore {
    async fn insert_webhook_events(
        &self,
        events: &[NewWebhookEvent],
        received_at: DateTime<Utc>,
    ) -> StoreResult<Vec<Option<i64>>> {
        // Webhook bodies hold a handful of events: one statement each, in one
        // transaction, gives the per-event "new or redelivered" answer.
        let mut tx = self.pool.begin().await?;
        let mut ids = Vec::with_capacity(events.len());
        for event in events {
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO webhook_events (webhook_event_id, type, body, received_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (webhook_event_id) DO NOTHING RETURNING id",
            )
            .bind(event.webhook_event_id.as_deref())
            .bind(&event.event_type)
            .bind(Json(&event.body))
            .bind(received_at)
            .fetch_optional(&mut *tx)
            .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(ids)
    }

    async fn claim_webhook_events(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: u32,
    ) -> StoreResult<Vec<WebhookEventRow>> {
        // SKIP LOCKED: instances sharing the database claim disjoint rows.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE webhook_events SET claimed_until = $1, attempts = attempts + 1
             WHERE id IN (SELECT id FROM webhook_events
                          WHERE processed_at IS NULL AND (claimed_until IS NULL OR claimed_until <= $2)
                          ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING {PG_ROW}"
        )))
        .bind(lease_end(now, lease))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = rows.iter().map(pg_row).collect::<StoreResult<Vec<_>>>()?;
        claimed.sort_by_key(|row| row.id);
        Ok(claimed)
    }

    async fn finish_webhook_event(&self, id: i64, now: DateTime<Utc>, error: Option<&str>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_events SET processed_at = $1, claimed_until = NULL, last_error = COALESCE($2, last_error)
             WHERE id = $3",
        )
        .bind(now)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_webhook_error(&self, id: i64, error: &str) -> StoreResult<()> {
        sqlx::query("UPDATE webhook_events SET last_error = $1 WHERE id = $2")
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_webhook_event(&self, webhook_event_id: &str) -> StoreResult<Option<WebhookEventRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {PG_ROW} FROM webhook_events WHERE webhook_event_id = $1"
        )))
        .bind(webhook_event_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(pg_row).transpose()
    }

    async fn pending_webhook_events(&self) -> StoreResult<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_events WHERE processed_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(count.max(0) as u64)
    }

    async fn create_link_nonce(
        &self,
        nonce: &str,
        member_id: &MemberId,
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO link_nonces (nonce, member_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(nonce)
            .bind(member_id.as_str())
            .bind(created_at)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(nonce_conflict)?;
        Ok(())
    }

    async fn consume_link_nonce(
        &self,
        nonce: &str,
        line_user_id: &LineUserId,
        consumer: i64,
        now: DateTime<Utc>,
    ) -> StoreResult<NonceUse> {
        // The conditional UPDATE is atomic: of two concurrent uses, one wins.
        let consumed: Option<String> = sqlx::query_scalar(
            "UPDATE link_nonces SET used_at = $1, result = 'ok', line_user_id = $2, consumed_by = $3
             WHERE nonce = $4 AND used_at IS NULL AND expires_at > $1
             RETURNING member_id",
        )
        .bind(now)
        .bind(line_user_id.as_str())
        .bind(consumer)
        .bind(nonce)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(member_id) = consumed {
            return Ok(NonceUse::Consumed(member(member_id)?));
        }
        let row = sqlx::query("SELECT member_id, consumed_by, used_at FROM link_nonces WHERE nonce = $1")
            .bind(nonce)
            .fetch_optional(&self.pool)
            .await?;
        let row = row
            .map(|r| -> StoreResult<_> {
                Ok((
                    r.try_get("member_id")?,
                    r.try_get("consumed_by")?,
                    r.try_get::<Option<DateTime<Utc>>, _>("used_at")?.is_some(),
                ))
            })
            .transpose()?;
        refused_use(row, consumer)
    }

    async fn fail_link_nonce(&self, nonce: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let result =
            sqlx::query("UPDATE link_nonces SET used_at = $1, result = 'failed' WHERE nonce = $2 AND used_at IS NULL")
                .bind(now)
                .bind(nonce)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn set_link_nonce_result(&self, nonce: &str, result: &str) -> StoreResult<()> {
        sqlx::query("UPDATE link_nonces SET result = $1 WHERE nonce = $2")
            .bind(result)
            .bind(nonce)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_link_nonce(&self, nonce: &str) -> StoreResult<Option<LinkNonce>> {
        let row = sqlx::query(
            "SELECT nonce, member_id, created_at, expires_at, used_at, result, line_user_id
             FROM link_nonces WHERE nonce = $1",
        )
        .bind(nonce)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(LinkNonce {
                nonce: row.try_get("nonce")?,
                member_id: member(row.try_get("member_id")?)?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                used_at: row.try_get("used_at")?,
                result: row.try_get("result")?,
                line_user_id: row.try_get("line_user_id")?,
            })
        })
        .transpose()
    }
}
