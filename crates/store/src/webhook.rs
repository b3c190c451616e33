//! Storage for the LINE webhook inbox (dedupe on webhookEventId, processing
//! leases) and the account-link nonces. The same SQL on both backends, but
//! for the claim (`sqlite/webhook.rs`, `postgres/webhook.rs`).
//!
//! The inbox (`webhook_events`) is written through the store's inbox pool
//! ([`Sql::inbox_writer`]), which no other write waits in front of: on
//! SQLite a database file of its own, so LINE's 200 never waits for an
//! import or a recompute holding the main writer. The nonces live with the
//! members they link, in the main database.
//!
//! Friendships are written through [`MemberStore::set_following`](crate::MemberStore::set_following).

use crate::relay::RelayBody;
use crate::sql::{Dialect, Row, Sql, Ts, stmt};
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{LineUserId, MemberId};
use serde::Serialize;
use serde_json::Value;

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

    /// As [`WebhookStore::insert_webhook_events`], and, in the same
    /// transaction, queues `relay` (the whole body) for the webhook relay's
    /// targets when at least one of the events is new (a redelivery of
    /// events all stored already was relayed with its first delivery).
    async fn accept_webhook(
        &self,
        events: &[NewWebhookEvent],
        relay: Option<RelayBody<'_>>,
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

    /// Gives a claimed event back untried (its effects could not be
    /// written: the main store was busy): the lease ends now and the claim
    /// does not count as an attempt.
    async fn release_webhook_event(&self, id: i64) -> StoreResult<()>;

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

fn nonce_conflict(error: StoreError) -> StoreError {
    match &error {
        StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            StoreError::Conflict("nonce already exists".into())
        }
        _ => error,
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

/// What differs per backend (`sqlite/webhook.rs`, `postgres/webhook.rs`).
pub trait WebhookSql: Sql {
    /// Leases unprocessed events (`$1` lease end, `$2` now, `$3` limit), `RETURNING` the webhook columns.
    const CLAIM_EVENTS: &'static str;
}

/// A webhook event's columns, as `webhook_event_of` reads them.
macro_rules! webhook_columns {
    () => {
        "id, webhook_event_id, type, body, received_at, processed_at, attempts, last_error"
    };
}
pub(crate) use webhook_columns;

#[async_trait]
impl<S: WebhookSql> WebhookStore for S {
    async fn insert_webhook_events(
        &self,
        events: &[NewWebhookEvent],
        received_at: DateTime<Utc>,
    ) -> StoreResult<Vec<Option<i64>>> {
        self.accept_webhook(events, None, received_at).await
    }

    async fn accept_webhook(
        &self,
        events: &[NewWebhookEvent],
        relay: Option<RelayBody<'_>>,
        received_at: DateTime<Utc>,
    ) -> StoreResult<Vec<Option<i64>>> {
        // Webhook bodies hold a handful of events: one statement each, in one
        // transaction, gives the per-event "new or redelivered" answer.
        let mut tx = S::Db::begin(self.inbox_writer()).await?;
        let mut ids = Vec::with_capacity(events.len());
        for event in events {
            let id = stmt::<S::Db>(
                "INSERT INTO webhook_events (webhook_event_id, type, body, received_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (webhook_event_id) DO NOTHING RETURNING id",
            )
            .bind(event.webhook_event_id.as_deref())
            .bind(&event.event_type)
            .bind(&event.body)
            .bind(Ts(received_at))
            .optional_in(&mut tx, |row| row.int("id"))
            .await?;
            ids.push(id);
        }
        if let Some(relay) = relay.filter(|r| !r.targets.is_empty() && ids.iter().any(Option::is_some)) {
            crate::relay::enqueue_in::<S::Db>(&mut tx, &relay, received_at).await?;
        }
        S::Db::commit(tx).await?;
        Ok(ids)
    }

    async fn claim_webhook_events(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
        limit: u32,
    ) -> StoreResult<Vec<WebhookEventRow>> {
        let mut claimed = stmt::<S::Db>(S::CLAIM_EVENTS)
            .bind(Ts(lease_end(now, lease)))
            .bind(Ts(now))
            .bind(limit)
            .all(self.inbox_writer(), webhook_event_of)
            .await?;
        claimed.sort_by_key(|row| row.id);
        Ok(claimed)
    }

    async fn finish_webhook_event(&self, id: i64, now: DateTime<Utc>, error: Option<&str>) -> StoreResult<()> {
        stmt::<S::Db>(
            "UPDATE webhook_events SET processed_at = $1, claimed_until = NULL, last_error = COALESCE($2, last_error)
             WHERE id = $3",
        )
        .bind(Ts(now))
        .bind(error)
        .bind(id)
        .execute(self.inbox_writer())
        .await?;
        Ok(())
    }

    async fn record_webhook_error(&self, id: i64, error: &str) -> StoreResult<()> {
        stmt::<S::Db>("UPDATE webhook_events SET last_error = $1 WHERE id = $2")
            .bind(error)
            .bind(id)
            .execute(self.inbox_writer())
            .await?;
        Ok(())
    }

    async fn release_webhook_event(&self, id: i64) -> StoreResult<()> {
        stmt::<S::Db>(
            "UPDATE webhook_events SET claimed_until = NULL, attempts = attempts - 1
             WHERE id = $1 AND processed_at IS NULL AND attempts > 0",
        )
        .bind(id)
        .execute(self.inbox_writer())
        .await?;
        Ok(())
    }

    async fn pending_webhook_events(&self) -> StoreResult<u64> {
        let count = stmt::<S::Db>("SELECT COUNT(*) AS n FROM webhook_events WHERE processed_at IS NULL")
            .one(self.inbox_reader(), |row| row.int("n"))
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
        let insert =
            stmt::<S::Db>("INSERT INTO link_nonces (nonce, member_id, created_at, expires_at) VALUES ($1, $2, $3, $4)");
        let inserted = insert.bind(nonce).bind(member_id).bind(Ts(created_at)).bind(Ts(expires_at));
        inserted.execute(self.writer()).await.map_err(nonce_conflict)?;
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
        let mut tx = S::Db::begin(self.writer()).await?;
        let consumed = stmt::<S::Db>(
            "UPDATE link_nonces SET used_at = $1, result = 'ok', line_user_id = $2, consumed_by = $3
             WHERE nonce = $4 AND used_at IS NULL AND expires_at > $1
             RETURNING member_id",
        )
        .bind(Ts(now))
        .bind(line_user_id)
        .bind(consumer)
        .bind(nonce)
        .optional_in(&mut tx, |row| row.string("member_id"))
        .await?;
        let outcome = match consumed {
            Some(member_id) => NonceUse::Consumed(member(member_id)?),
            None => {
                let row = stmt::<S::Db>("SELECT member_id, consumed_by, used_at FROM link_nonces WHERE nonce = $1")
                    .bind(nonce)
                    .optional_in(&mut tx, |r| {
                        Ok((r.string("member_id")?, r.opt_int("consumed_by")?, r.opt_ts("used_at")?.is_some()))
                    })
                    .await?;
                refused_use(row, consumer)?
            }
        };
        S::Db::commit(tx).await?;
        Ok(outcome)
    }

    async fn fail_link_nonce(&self, nonce: &str, now: DateTime<Utc>) -> StoreResult<bool> {
        let failed = stmt::<S::Db>(
            "UPDATE link_nonces SET used_at = $1, result = 'failed' WHERE nonce = $2 AND used_at IS NULL",
        )
        .bind(Ts(now))
        .bind(nonce)
        .execute(self.writer())
        .await?;
        Ok(failed == 1)
    }

    async fn set_link_nonce_result(&self, nonce: &str, result: &str) -> StoreResult<()> {
        stmt::<S::Db>("UPDATE link_nonces SET result = $1 WHERE nonce = $2")
            .bind(result)
            .bind(nonce)
            .execute(self.writer())
            .await?;
        Ok(())
    }
}

/// A `webhook_events` row (`webhook_columns!()`).
pub(crate) fn webhook_event_of<DB: Dialect>(row: Row<'_, DB>) -> StoreResult<WebhookEventRow> {
    Ok(WebhookEventRow {
        id: row.int("id")?,
        webhook_event_id: row.opt_string("webhook_event_id")?,
        event_type: row.string("type")?,
        body: row.json("body")?,
        received_at: row.ts("received_at")?,
        processed_at: row.opt_ts("processed_at")?,
        attempts: attempts(row.int("attempts")?),
        last_error: row.opt_string("last_error")?,
    })
}

/// A `link_nonces` row.
#[cfg(feature = "test-support")]
pub(crate) fn link_nonce_of<DB: Dialect>(row: Row<'_, DB>) -> StoreResult<LinkNonce> {
    Ok(LinkNonce {
        nonce: row.string("nonce")?,
        member_id: member(row.string("member_id")?)?,
        created_at: row.ts("created_at")?,
        expires_at: row.ts("expires_at")?,
        used_at: row.opt_ts("used_at")?,
        result: row.opt_string("result")?,
        line_user_id: row.opt_string("line_user_id")?,
    })
}
