//! SQLite's side of the event reads.

use super::json_text;
use crate::events::{EventsSql, event_of};
use crate::sql::stmt;
use crate::{SqliteStore, StoreResult, StoredEvent};
use async_trait::async_trait;

#[async_trait]
impl EventsSql for SqliteStore {
    const CAMPAIGN_CLICKS: &'static str = "SELECT COUNT(*) AS clicks, COUNT(DISTINCT line_user_id) AS users FROM events
         WHERE type = 'link_click' AND json_extract(properties, '$.campaign_id') = $1";

    // The types as a JSON array (json_each): SQLite has no array parameters.
    async fn events_after(&self, after_id: i64, types: &[String], limit: u32) -> StoreResult<Vec<StoredEvent>> {
        let types = json_text(types, "event types")?;
        stmt::<sqlx::Sqlite>(
            "SELECT id, event_id, type, member_id, line_user_id, occurred_at, properties FROM events
             WHERE id > $1 AND type IN (SELECT value FROM json_each($2)) ORDER BY id LIMIT $3",
        )
        .bind(after_id)
        .bind(&types)
        .bind(limit)
        .all(&self.reader, event_of)
        .await
    }
}
