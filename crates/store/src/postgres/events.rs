//! PostgreSQL's side of the event reads.

use crate::events::{EventsSql, MergedEvent, event_of};
use crate::sql::Row;
use crate::tallies::{TallyAdd, stored_of};
use crate::{PgStore, StoreResult, StoredEvent};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{EventTallier, NewEvent};
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Row as _};
use std::sync::Arc;

#[async_trait]
impl EventsSql for PgStore {
    async fn insert_events_tx(
        conn: &mut PgConnection,
        events: &[NewEvent],
        received_at: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>> {
        if events.is_empty() {
            return Ok(Vec::new());
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
        // ON CONFLICT DO NOTHING also skips repeats inside the same statement
        // (the first is stored); RETURNING names the stored ids.
        let returned: Vec<Option<String>> = sqlx::query_scalar(
            "INSERT INTO events (event_id, type, member_id, line_user_id, occurred_at, properties, received_at)
             SELECT e.event_id, e.type, e.member_id, e.line_user_id, e.occurred_at, e.properties, $7
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::jsonb[])
                  AS e (event_id, type, member_id, line_user_id, occurred_at, properties)
             ON CONFLICT (event_id) DO NOTHING
             RETURNING event_id",
        )
        .bind(&event_ids)
        .bind(&types)
        .bind(&member_ids)
        .bind(&line_user_ids)
        .bind(&occurred)
        .bind(&properties)
        .bind(received_at)
        .fetch_all(&mut *conn)
        .await?;
        let returned: Vec<String> = returned.into_iter().flatten().collect();
        Ok(stored_of(events, &returned))
    }

    const INBOX: bool = true;

    // One statement: a key is kept if it is neither appended before
    // (event_keys) nor stored directly (events); the inbox takes the events
    // without a key and those whose key was kept.
    async fn append_tx(&self, events: &[&NewEvent], received_at: DateTime<Utc>) -> StoreResult<Vec<String>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let column = |f: fn(&NewEvent) -> Option<&str>| events.iter().map(|e| f(e)).collect::<Vec<_>>();
        let properties = events
            .iter()
            .map(|e| serde_json::to_string(&e.properties))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| crate::StoreError::Corrupt(format!("event properties: {e}")))?;
        let kept: Vec<String> = sqlx::query_scalar(
            "WITH batch AS (
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
                     AS e (event_id, type, member_id, line_user_id, occurred_at, properties)
             ), kept AS (
                 INSERT INTO event_keys (event_id)
                 SELECT b.event_id FROM batch b
                 WHERE b.event_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM events x WHERE x.event_id = b.event_id)
                 ON CONFLICT DO NOTHING
                 RETURNING event_id
             ), appended AS (
                 INSERT INTO event_inbox (event_id, type, member_id, line_user_id, occurred_at, properties, received_at)
                 SELECT b.event_id, b.type, b.member_id, b.line_user_id, b.occurred_at, b.properties, $7
                 FROM batch b WHERE b.event_id IS NULL OR b.event_id IN (SELECT event_id FROM kept)
             )
             SELECT event_id FROM kept",
        )
        .bind(column(|e| e.event_id.as_ref().map(|id| id.as_str())))
        .bind(column(|e| Some(e.event_type.as_str())))
        .bind(column(|e| e.member_id.as_ref().map(|id| id.as_str())))
        .bind(column(|e| e.line_user_id.as_ref().map(|id| id.as_str())))
        .bind(events.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
        .bind(&properties)
        .bind(received_at)
        .fetch_all(&self.pool)
        .await?;
        Ok(kept)
    }

    // Rows in heap order (about the order appended); a TID scan deletes
    // them. The properties go back to Rust only for tallied types. The join
    // gives one row when nothing was stored, to carry the count taken.
    async fn merge_tx(conn: &mut PgConnection, limit: u32, tallied: &[&str]) -> StoreResult<(u64, Vec<MergedEvent>)> {
        let rows = sqlx::query(
            "WITH moved AS (
                 DELETE FROM event_inbox
                 WHERE ctid = ANY (ARRAY(SELECT ctid FROM event_inbox LIMIT $1 FOR UPDATE SKIP LOCKED))
                 RETURNING *
             ), stored AS (
                 INSERT INTO events (event_id, type, member_id, line_user_id, occurred_at, properties, received_at)
                 SELECT event_id, type, member_id, line_user_id, occurred_at, properties::jsonb, received_at FROM moved
                 ON CONFLICT (event_id) DO NOTHING
                 RETURNING type, member_id, line_user_id, occurred_at, received_at,
                           CASE WHEN type = ANY($2) THEN properties END AS properties
             )
             SELECT t.taken, s.* FROM (SELECT COUNT(*) AS taken FROM moved) t LEFT JOIN stored s ON true",
        )
        .bind(i64::from(limit))
        .bind(tallied)
        .fetch_all(&mut *conn)
        .await?;
        let taken: i64 = match rows.first() {
            Some(row) => row.try_get("taken")?,
            None => 0,
        };
        let stored = rows.iter().filter(|row| row.try_get::<Option<String>, _>("type").ok().flatten().is_some());
        let stored = stored.map(merged_of).collect::<StoreResult<Vec<_>>>()?;
        Ok((u64::try_from(taken).unwrap_or(0), stored))
    }

    fn tallier(&self) -> Option<Arc<dyn EventTallier>> {
        self.tallier.get()
    }

    // In key order, into the writing transaction's slot, as 0010's trigger does.
    async fn add_tallies_tx(conn: &mut PgConnection, rows: &[TallyAdd]) -> StoreResult<()> {
        let column = |f: fn(&TallyAdd) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        sqlx::query(
            "INSERT INTO event_tallies AS t (line_user_id, member_id, key, count, numbers, sum, min, max, last_at, slot)
             SELECT a.*, (txid_current() % 8)::smallint
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::float8[], $7::float8[],
                         $8::float8[], $9::timestamptz[])
                  AS a (line_user_id, member_id, key, count, numbers, sum, min, max, last_at)
             ORDER BY 1, 2, 3
             ON CONFLICT (line_user_id, member_id, key, slot) DO UPDATE
             SET count = t.count + excluded.count, numbers = t.numbers + excluded.numbers, sum = t.sum + excluded.sum,
                 min = LEAST(t.min, excluded.min), max = GREATEST(t.max, excluded.max),
                 last_at = GREATEST(t.last_at, excluded.last_at)",
        )
        .bind(column(|r| &r.line_user_id))
        .bind(column(|r| &r.member_id))
        .bind(column(|r| &r.key))
        .bind(rows.iter().map(|r| r.count).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.numbers).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.sum).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.min).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.max).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.last_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    const CAMPAIGN_CLICKS: &'static str = "SELECT line_user_id, COUNT(*) AS clicks FROM events
         WHERE type = 'link_click' AND properties->>'campaign_id' = $1 GROUP BY line_user_id";
    // ->> (#>> when nested) gives any scalar as text: jsonb_typeof keeps
    // numbers and booleans out.
    fn property_equals(path: &str, param: usize) -> String {
        if path.contains('.') {
            let segments = path.replace('.', ",");
            format!(
                "e.properties #>> '{{{segments}}}' = ${param} AND jsonb_typeof(e.properties #> '{{{segments}}}') = 'string'"
            )
        } else {
            format!("e.properties ->> '{path}' = ${param} AND jsonb_typeof(e.properties -> '{path}') = 'string'")
        }
    }

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

/// A row of `merge_tx`'s `stored`.
fn merged_of(row: &PgRow) -> StoreResult<MergedEvent> {
    let properties: Option<Json<Map<String, Value>>> = row.try_get("properties")?;
    Ok(MergedEvent {
        event_type: row.try_get("type")?,
        member_id: row.try_get("member_id")?,
        line_user_id: row.try_get("line_user_id")?,
        occurred_at: row.try_get("occurred_at")?,
        received_at: row.try_get("received_at")?,
        properties: properties.map(|p| p.0).unwrap_or_default(),
    })
}
