//! PostgreSQL's side of the event reads.

use crate::events::IngestOutcome;
use crate::events::{EventsSql, event_of};
use crate::sql::Row;
use crate::{PgStore, StoreResult, StoredEvent};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::NewEvent;
use sqlx::PgConnection;
use sqlx::types::Json;

#[async_trait]
impl EventsSql for PgStore {
    async fn insert_events_tx(
        conn: &mut PgConnection,
        events: &[NewEvent],
        received_at: DateTime<Utc>,
    ) -> StoreResult<IngestOutcome> {
        if events.is_empty() {
            return Ok(IngestOutcome::default());
        }
        let mut event_ids = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut member_ids = Vec::with_capacity(events.len());
        let mut line_user_ids = Vec::with_capacity(events.len());
        let mut occurred = Vec::with_capacity(events.len());
        let mut properties = Vec::with_capacity(events.len());
        for event in events {
            event_ids.push(event.event_id.as_ref().map(|id| id.as_str()));
            types.push(event.event_type.as_str());
            member_ids.push(event.member_id.as_ref().map(|id| id.as_str()));
            line_user_ids.push(event.line_user_id.as_ref().map(|id| id.as_str()));
            occurred.push(event.occurred_at);
            properties.push(Json(&event.properties));
        }
        // ON CONFLICT DO NOTHING also skips repeats inside the same statement.
        let result = sqlx::query(
            "INSERT INTO events (event_id, type, member_id, line_user_id, occurred_at, properties, received_at)
             SELECT e.event_id, e.type, e.member_id, e.line_user_id, e.occurred_at, e.properties, $7
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::jsonb[])
                  AS e (event_id, type, member_id, line_user_id, occurred_at, properties)
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(&event_ids)
        .bind(&types)
        .bind(&member_ids)
        .bind(&line_user_ids)
        .bind(&occurred)
        .bind(&properties)
        .bind(received_at)
        .execute(&mut *conn)
        .await?;
        let accepted = result.rows_affected();
        Ok(IngestOutcome { accepted, duplicates: events.len() as u64 - accepted })
    }

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
