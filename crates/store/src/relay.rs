//! The webhook relay's durable queue: every webhook body renkei accepted,
//! byte for byte with LINE's signature, for each `[[webhook.relay]]` target
//! until that target has it. The same SQL on both backends.
//!
//! Bodies are queued by [`WebhookStore::accept_webhook`](crate::WebhookStore::accept_webhook),
//! in the transaction that stores the body's events, through the inbox's
//! own writer ([`Sql::inbox_writer`]): durable before LINE's 200, never
//! behind the main writer. One row per (target, body): a target is served
//! in body order by whoever holds its lease (`relay:<target>`, in the
//! inbox database's `leases`), so two instances never deliver to one target
//! at once; a delivered row is deleted (and the body with its last row), a
//! dead-lettered one is kept with `dead_at` and its last error.

use crate::leases::{acquire_on, release_on};
use crate::sql::{Dialect, Row, Sql, Ts, stmt};
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A webhook body to relay, as received.
#[derive(Debug, Clone, Copy)]
pub struct RelayBody<'a> {
    /// The raw request body, exactly as LINE sent it.
    pub body: &'a [u8],
    /// LINE's `x-line-signature` of it.
    pub signature: &'a str,
    /// The names of the targets that should get it.
    pub targets: &'a [String],
}

/// A queued body for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayItem {
    pub body_id: i64,
    pub body: Vec<u8>,
    pub signature: String,
    pub received_at: DateTime<Utc>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not to be tried before this.
    pub next_attempt_at: DateTime<Utc>,
}

/// A target's queue: bodies waiting, and bodies given up on (kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounts {
    pub pending: u64,
    pub dead: u64,
}

#[async_trait]
pub trait RelayStore: Send + Sync + 'static {
    /// Takes (or renews) the lease on delivering to `target`, as
    /// [`LeaseStore::acquire_lease`](crate::LeaseStore::acquire_lease) does,
    /// in the inbox's database.
    async fn acquire_relay_lease(
        &self,
        target: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Gives the lease on `target` up (only if `holder` has it).
    async fn release_relay_lease(&self, target: &str, holder: &str) -> StoreResult<()>;

    /// Up to `limit` of `target`'s bodies not delivered nor dead, oldest first.
    async fn next_relay_items(&self, target: &str, limit: u32) -> StoreResult<Vec<RelayItem>>;

    /// `target` has the body: its row goes, and the body once no target waits for it.
    async fn relay_delivered(&self, target: &str, body_id: i64) -> StoreResult<()>;

    /// A failed attempt: counted, with its error; tried again from `retry_at`,
    /// or, when `retry_at` is `None`, dead-lettered (kept, never tried again).
    async fn relay_failed(
        &self,
        target: &str,
        body_id: i64,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// How many of `target`'s bodies wait, and how many were dead-lettered.
    async fn relay_counts(&self, target: &str) -> StoreResult<RelayCounts>;
}

/// The lease name of a target.
fn lease_name(target: &str) -> String {
    format!("relay:{target}")
}

/// Queues `relay` for each of its targets inside the open transaction `tx`
/// (the one that stores the webhook's events).
pub(crate) async fn enqueue_in<DB: Dialect>(
    tx: &mut DB::Connection,
    relay: &RelayBody<'_>,
    received_at: DateTime<Utc>,
) -> StoreResult<()> {
    let body_id =
        stmt::<DB>("INSERT INTO relay_bodies (body, signature, received_at) VALUES ($1, $2, $3) RETURNING id")
            .bind(relay.body)
            .bind(relay.signature)
            .bind(Ts(received_at))
            .optional_in(tx, |row| row.int("id"))
            .await?
            .ok_or_else(|| StoreError::Corrupt("relay body insert returned no id".into()))?;
    for target in relay.targets {
        stmt::<DB>("INSERT INTO relay_deliveries (target, body_id, next_attempt_at) VALUES ($1, $2, $3)")
            .bind(target)
            .bind(body_id)
            .bind(Ts(received_at))
            .execute_in(tx)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl<S: Sql> RelayStore for S {
    async fn acquire_relay_lease(
        &self,
        target: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        acquire_on::<S::Db>(self.inbox_writer(), &lease_name(target), holder, now, until).await
    }

    async fn release_relay_lease(&self, target: &str, holder: &str) -> StoreResult<()> {
        release_on::<S::Db>(self.inbox_writer(), &lease_name(target), holder).await
    }

    async fn next_relay_items(&self, target: &str, limit: u32) -> StoreResult<Vec<RelayItem>> {
        stmt::<S::Db>(
            "SELECT d.body_id, b.body, b.signature, b.received_at, d.attempts, d.next_attempt_at
             FROM relay_deliveries d JOIN relay_bodies b ON b.id = d.body_id
             WHERE d.target = $1 AND d.dead_at IS NULL ORDER BY d.body_id LIMIT $2",
        )
        .bind(target)
        .bind(limit)
        .all(self.inbox_reader(), relay_item_of)
        .await
    }

    async fn relay_delivered(&self, target: &str, body_id: i64) -> StoreResult<()> {
        stmt::<S::Db>("DELETE FROM relay_deliveries WHERE target = $1 AND body_id = $2")
            .bind(target)
            .bind(body_id)
            .execute(self.inbox_writer())
            .await?;
        // A statement of its own, after the row's delete is committed: of
        // two targets finishing one body at once, the later check sees both
        // rows gone.
        stmt::<S::Db>(
            "DELETE FROM relay_bodies WHERE id = $1
             AND NOT EXISTS (SELECT 1 FROM relay_deliveries WHERE body_id = $1)",
        )
        .bind(body_id)
        .execute(self.inbox_writer())
        .await?;
        Ok(())
    }

    async fn relay_failed(
        &self,
        target: &str,
        body_id: i64,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let dead_at = retry_at.is_none().then_some(Ts(now));
        stmt::<S::Db>(
            "UPDATE relay_deliveries SET attempts = attempts + 1, last_error = $1,
                 next_attempt_at = COALESCE($2, next_attempt_at), dead_at = $3
             WHERE target = $4 AND body_id = $5",
        )
        .bind(error)
        .bind(retry_at.map(Ts))
        .bind(dead_at)
        .bind(target)
        .bind(body_id)
        .execute(self.inbox_writer())
        .await?;
        Ok(())
    }

    async fn relay_counts(&self, target: &str) -> StoreResult<RelayCounts> {
        stmt::<S::Db>(
            "SELECT COUNT(*) FILTER (WHERE dead_at IS NULL) AS pending,
                    COUNT(*) FILTER (WHERE dead_at IS NOT NULL) AS dead
             FROM relay_deliveries WHERE target = $1",
        )
        .bind(target)
        .one(self.inbox_reader(), |row| {
            Ok(RelayCounts { pending: row.int("pending")?.max(0) as u64, dead: row.int("dead")?.max(0) as u64 })
        })
        .await
    }
}

fn relay_item_of<DB: Dialect>(row: Row<'_, DB>) -> StoreResult<RelayItem> {
    Ok(RelayItem {
        body_id: row.int("body_id")?,
        body: row.bytes("body")?,
        signature: row.string("signature")?,
        received_at: row.ts("received_at")?,
        attempts: u32::try_from(row.int("attempts")?.max(0)).unwrap_or(u32::MAX),
        next_attempt_at: row.ts("next_attempt_at")?,
    })
}
