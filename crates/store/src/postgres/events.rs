//! PostgreSQL's side of the event reads.

use crate::events::{EventsSql, event_of};
use crate::sql::Row;
use crate::{PgStore, StoreResult, StoredEvent};
use async_trait::async_trait;

#[async_trait]
impl EventsSql for PgStore {
    const CAMPAIGN_CLICKS: &'static str = "SELECT COUNT(*) AS clicks, COUNT(DISTINCT line_user_id) AS users FROM events
         WHERE type = 'link_click' AND properties->>'campaign_id' = $1";

    // The types as a text[] parameter.
    async fn events_after(&self, after_id: i64, types: &[String], limit: u32) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT id, event_id, type, member_id, line_user_id, occurred_at, properties FROM events
             WHERE id > $1 AND type = ANY($2) ORDER BY id LIMIT $3",
        )
        .bind(after_id)
        .bind(types)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| event_of(Row::<sqlx::Postgres>(row))).collect()
    }
}
