//! SQLite's side of the event reads.

use super::{json_text, to_micros};
use crate::events::{EventsSql, event_of};
use crate::sql::stmt;
use crate::tallies::{TallyAdd, stored_of};
use crate::{SqliteStore, StoreResult, StoredEvent};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{EventTallier, NewEvent};
use serde_json::Value;
use sqlx::SqliteConnection;
use std::sync::Arc;

/// Rows per INSERT statement: 7 parameters each stays far below SQLite's
/// 32,766-parameter limit while saving most per-statement overhead.
const EVENT_ROWS_PER_STATEMENT: usize = 500;

#[async_trait]
impl EventsSql for SqliteStore {
    async fn insert_events_tx(
        conn: &mut SqliteConnection,
        events: &[NewEvent],
        received_at: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>> {
        let received = to_micros(received_at);
        let mut returned: Vec<String> = Vec::new();
        for chunk in events.chunks(EVENT_ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO events (event_id, type, member_id, line_user_id, occurred_at, properties, received_at) ",
            );
            insert.push_values(chunk, |mut row, event| {
                row.push_bind(event.event_id.as_ref().map(|id| id.as_str()))
                    .push_bind(event.event_type.as_str())
                    .push_bind(event.member_id.as_ref().map(|id| id.as_str()))
                    .push_bind(event.line_user_id.as_ref().map(|id| id.as_str()))
                    .push_bind(to_micros(event.occurred_at))
                    .push_bind(Value::Object(event.properties.clone()).to_string())
                    .push_bind(received);
            });
            // DO NOTHING also skips repeats inside the same statement (the
            // first is stored); RETURNING names the stored ids.
            insert.push(" ON CONFLICT (event_id) DO NOTHING RETURNING event_id");
            let ids: Vec<Option<String>> = insert.build_query_scalar().fetch_all(&mut *conn).await?;
            returned.extend(ids.into_iter().flatten());
        }
        Ok(stored_of(events, &returned))
    }

    fn tallier(&self) -> Option<Arc<dyn EventTallier>> {
        self.tallier.get()
    }

    async fn add_tallies_tx(conn: &mut SqliteConnection, rows: &[TallyAdd]) -> StoreResult<()> {
        for chunk in rows.chunks(EVENT_ROWS_PER_STATEMENT) {
            let mut upsert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO event_tallies (line_user_id, member_id, key, count, numbers, sum, min, max, last_at) ",
            );
            upsert.push_values(chunk, |mut row, add| {
                row.push_bind(add.line_user_id.as_str())
                    .push_bind(add.member_id.as_str())
                    .push_bind(add.key.as_str())
                    .push_bind(add.count)
                    .push_bind(add.numbers)
                    .push_bind(add.sum)
                    .push_bind(add.min)
                    .push_bind(add.max)
                    .push_bind(to_micros(add.last_at));
            });
            // SQLite's two-argument MIN/MAX are NULL when either is.
            upsert.push(
                " ON CONFLICT (line_user_id, member_id, key) DO UPDATE
                 SET count = count + excluded.count, numbers = numbers + excluded.numbers, sum = sum + excluded.sum,
                     min = COALESCE(MIN(min, excluded.min), min, excluded.min),
                     max = COALESCE(MAX(max, excluded.max), max, excluded.max),
                     last_at = MAX(last_at, excluded.last_at)",
            );
            upsert.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    const CAMPAIGN_CLICKS: &'static str = "SELECT line_user_id, COUNT(*) AS clicks FROM events
         WHERE type = 'link_click' AND json_extract(properties, '$.campaign_id') = $1 GROUP BY line_user_id";
    // json_extract gives a JSON string as TEXT and a number as a number (which
    // never equals TEXT); json_type keeps out objects and arrays (JSON text).
    // Both only on valid JSON (json_extract fails on anything else), written
    // as migration 0018's index on `sku` is.
    fn property_equals(path: &str, param: usize) -> String {
        format!(
            "CASE WHEN json_valid(e.properties) THEN json_extract(e.properties, '$.{path}') END = ${param}
             AND CASE WHEN json_valid(e.properties) THEN json_type(e.properties, '$.{path}') END = 'text'"
        )
    }

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
