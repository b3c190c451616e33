//! Events as the scheduler tails them (by row id) and counts them (clicks).
//! Ingest writes (`insert_events`, `import_events`) stay with the core
//! [`Store`](crate::Store) for now.

use crate::sql::{Dialect, Row, Sql, stmt};
use crate::{StoreResult, StoredEvent, parse_object};
use async_trait::async_trait;

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Events with row id `> after_id` whose type is one of `types`, oldest first.
    async fn events_after(&self, after_id: i64, types: &[String], limit: u32) -> StoreResult<Vec<StoredEvent>>;

    /// The largest event row id (0 when none).
    async fn max_event_id(&self) -> StoreResult<i64>;

    /// `link_click` events of a campaign's tracked links: (clicks, distinct users).
    async fn campaign_clicks(&self, campaign_id: &str) -> StoreResult<(u64, u64)>;
}

/// What differs per backend (`sqlite/events.rs`, `postgres/events.rs`).
#[async_trait]
pub trait EventsSql: Sql {
    /// Counts `link_click`s of campaign `$1` (columns `clicks`, `users`): the JSON path syntax differs.
    const CAMPAIGN_CLICKS: &'static str;

    /// [`EventStore::events_after`] with at least one type (a set parameter).
    async fn events_after(&self, after_id: i64, types: &[String], limit: u32) -> StoreResult<Vec<StoredEvent>>;
}

#[async_trait]
impl<S: EventsSql> EventStore for S {
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

    async fn campaign_clicks(&self, campaign_id: &str) -> StoreResult<(u64, u64)> {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        stmt::<S::Db>(S::CAMPAIGN_CLICKS)
            .bind(campaign_id)
            .one(self.reader(), |row| Ok((count(row.int("clicks")?), count(row.int("users")?))))
            .await
    }
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
