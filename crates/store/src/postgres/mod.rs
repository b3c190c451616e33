//! PostgreSQL: the production backend. Batches go in as one `UNNEST` insert
//! per batch, so ingest cost is one round trip per batch, not per event.

use crate::{
    Backend, ImportReceiver, IngestOutcome, Link, LinkOutcome, Member, MembersOutcome, Store, StoreCounts, StoreError,
    StoreResult, StoredEvent, line_user_claimed, member_already_linked, merged, parse_link, parse_object,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{LineUserId, LinkMethod, MemberId, MemberPatch, NewEvent};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};
use std::str::FromStr;
use std::time::Duration;

mod events;
mod membership;
mod outbox;
mod requests;
mod rich_menus;
mod webhook;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

pub struct PgStore {
    pub(crate) pool: PgPool,
}

impl crate::sql::Sql for PgStore {
    type Db = sqlx::Postgres;

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }
}

impl PgStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        // No JIT: every query here is short, and PostgreSQL compiles a
        // query's JIT code again on every execution, prepared or not. Plans
        // near its cost threshold spent more time compiling than running
        // (a third of the database's CPU in a recompute's first seconds).
        let options = PgConnectOptions::from_str(url)?.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Unique violations that races between instances can still produce.
fn conflict_on_unique(error: sqlx::Error, member_id: &str, line_user_id: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            if db.constraint() == Some("links_line_user_id_key") {
                line_user_claimed(line_user_id, "concurrent link")
            } else {
                member_already_linked(member_id, "another LINE user (concurrent link)")
            }
        }
        _ => StoreError::Database(error),
    }
}

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

async fn link_tx(
    conn: &mut PgConnection,
    member_id: &MemberId,
    line_user_id: &LineUserId,
    method: LinkMethod,
    at: DateTime<Utc>,
) -> StoreResult<LinkOutcome> {
    let by_member = sqlx::query("SELECT line_user_id, method, linked_at FROM links WHERE member_id = $1")
        .bind(member_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = by_member {
        let current: String = row.try_get("line_user_id")?;
        if current == line_user_id.as_str() {
            let link = parse_link(member_id.to_string(), current, row.try_get("method")?, row.try_get("linked_at")?)?;
            return Ok(LinkOutcome::AlreadyLinked(link));
        }
        return Err(member_already_linked(member_id.as_str(), &current));
    }
    let by_user: Option<String> = sqlx::query_scalar("SELECT member_id FROM links WHERE line_user_id = $1")
        .bind(line_user_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(other) = by_user {
        return Err(line_user_claimed(line_user_id.as_str(), &other));
    }
    sqlx::query(
        "INSERT INTO members (member_id, attributes, created_at, updated_at) VALUES ($1, '{}'::jsonb, $2, $2)
         ON CONFLICT (member_id) DO NOTHING",
    )
    .bind(member_id.as_str())
    .bind(at)
    .execute(&mut *conn)
    .await?;
    let linked_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO links (member_id, line_user_id, method, linked_at) VALUES ($1, $2, $3, $4) RETURNING linked_at",
    )
    .bind(member_id.as_str())
    .bind(line_user_id.as_str())
    .bind(method.as_str())
    .bind(at)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| conflict_on_unique(e, member_id.as_str(), line_user_id.as_str()))?;
    Ok(LinkOutcome::Created(Link {
        member_id: member_id.clone(),
        line_user_id: line_user_id.clone(),
        method,
        linked_at,
    }))
}

async fn upsert_members_tx(
    conn: &mut PgConnection,
    patches: &[MemberPatch],
    now: DateTime<Utc>,
) -> StoreResult<MembersOutcome> {
    let mut outcome = MembersOutcome::default();
    for patch in patches {
        // FOR UPDATE: two instances merging into one member must not lose a key.
        let current: Option<Json<Value>> =
            sqlx::query_scalar("SELECT attributes FROM members WHERE member_id = $1 FOR UPDATE")
                .bind(patch.member_id.as_str())
                .fetch_optional(&mut *conn)
                .await?;
        let current = current.map(|Json(value)| parse_object(value, "member attributes")).transpose()?;
        let (next, changed) = merged(current.as_ref(), &patch.attributes);
        match (&current, changed) {
            (None, _) => {
                sqlx::query(
                    "INSERT INTO members (member_id, attributes, created_at, updated_at) VALUES ($1, $2, $3, $3)
                     ON CONFLICT (member_id) DO UPDATE SET attributes = members.attributes || excluded.attributes,
                     updated_at = excluded.updated_at",
                )
                .bind(patch.member_id.as_str())
                .bind(Json(&next))
                .bind(now)
                .execute(&mut *conn)
                .await?;
                outcome.created += 1;
            }
            (Some(_), true) => {
                sqlx::query("UPDATE members SET attributes = $1, updated_at = $2 WHERE member_id = $3")
                    .bind(Json(&next))
                    .bind(now)
                    .bind(patch.member_id.as_str())
                    .execute(&mut *conn)
                    .await?;
                outcome.updated += 1;
            }
            (Some(_), false) => outcome.unchanged += 1,
        }
        if let Some(line_user_id) = &patch.line_user_id
            && let LinkOutcome::Created(_) =
                link_tx(conn, &patch.member_id, line_user_id, LinkMethod::Import, now).await?
        {
            outcome.linked += 1;
        }
    }
    Ok(outcome)
}

fn link_from_row(row: &PgRow) -> StoreResult<Link> {
    parse_link(
        row.try_get("member_id")?,
        row.try_get("line_user_id")?,
        row.try_get("method")?,
        row.try_get("linked_at")?,
    )
}

/// An `events` row (`id, event_id, type, member_id, line_user_id, occurred_at, properties`).
pub(crate) fn stored_event(row: &PgRow) -> StoreResult<StoredEvent> {
    let Json(properties): Json<Value> = row.try_get("properties")?;
    Ok(StoredEvent {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("type")?,
        member_id: row.try_get("member_id")?,
        line_user_id: row.try_get("line_user_id")?,
        occurred_at: row.try_get("occurred_at")?,
        properties: parse_object(properties, "event properties")?,
    })
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_events(&self, events: &[NewEvent], received_at: DateTime<Utc>) -> StoreResult<IngestOutcome> {
        let mut tx = self.pool.begin().await?;
        let outcome = insert_events_tx(&mut tx, events, received_at).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn upsert_members(&self, patches: &[MemberPatch], now: DateTime<Utc>) -> StoreResult<MembersOutcome> {
        let mut tx = self.pool.begin().await?;
        let outcome = upsert_members_tx(&mut tx, patches, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn get_member(&self, member_id: &MemberId) -> StoreResult<Option<Member>> {
        let row = sqlx::query("SELECT attributes, created_at, updated_at FROM members WHERE member_id = $1")
            .bind(member_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let Json(attributes): Json<Value> = row.try_get("attributes")?;
            Ok(Member {
                member_id: member_id.clone(),
                attributes: parse_object(attributes, "member attributes")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    async fn link(
        &self,
        member_id: &MemberId,
        line_user_id: &LineUserId,
        method: LinkMethod,
        at: DateTime<Utc>,
    ) -> StoreResult<LinkOutcome> {
        let mut tx = self.pool.begin().await?;
        let outcome = link_tx(&mut tx, member_id, line_user_id, method, at).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn get_link(&self, member_id: &MemberId) -> StoreResult<Option<Link>> {
        let row = sqlx::query("SELECT member_id, line_user_id, method, linked_at FROM links WHERE member_id = $1")
            .bind(member_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| link_from_row(&row)).transpose()
    }

    async fn get_link_by_line_user(&self, line_user_id: &LineUserId) -> StoreResult<Option<Link>> {
        let row = sqlx::query("SELECT member_id, line_user_id, method, linked_at FROM links WHERE line_user_id = $1")
            .bind(line_user_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| link_from_row(&row)).transpose()
    }

    async fn unlink(&self, member_id: &MemberId) -> StoreResult<Option<Link>> {
        let row =
            sqlx::query("DELETE FROM links WHERE member_id = $1 RETURNING member_id, line_user_id, method, linked_at")
                .bind(member_id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| link_from_row(&row)).transpose()
    }

    async fn set_following(&self, line_user_id: &LineUserId, following: bool, at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO friendships (line_user_id, following, changed_at) VALUES ($1, $2, $3)
             ON CONFLICT (line_user_id) DO UPDATE SET following = excluded.following, changed_at = excluded.changed_at",
        )
        .bind(line_user_id.as_str())
        .bind(following)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_following(&self, line_user_id: &LineUserId) -> StoreResult<Option<bool>> {
        Ok(sqlx::query_scalar("SELECT following FROM friendships WHERE line_user_id = $1")
            .bind(line_user_id.as_str())
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn user_events(&self, line_user_id: &LineUserId) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT id, event_id, type, member_id, line_user_id, occurred_at, properties FROM events
             WHERE line_user_id = $1
                OR member_id = (SELECT member_id FROM links WHERE line_user_id = $1)
             ORDER BY occurred_at, id",
        )
        .bind(line_user_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(crate::postgres::stored_event).collect()
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM members) AS members, (SELECT COUNT(*) FROM links) AS links,
                    (SELECT COUNT(*) FROM friendships) AS friendships, (SELECT COUNT(*) FROM events) AS events,
                    (SELECT COUNT(*) FROM webhook_events) AS webhook_events,
                    (SELECT COUNT(*) FROM deliveries) AS deliveries, (SELECT COUNT(*) FROM send_requests) AS send_requests",
        )
        .fetch_one(&self.pool)
        .await?;
        let count = |name: &str| -> StoreResult<u64> { Ok(row.try_get::<i64, _>(name)?.max(0) as u64) };
        Ok(StoreCounts {
            members: count("members")?,
            links: count("links")?,
            friendships: count("friendships")?,
            events: count("events")?,
            webhook_events: count("webhook_events")?,
            deliveries: count("deliveries")?,
            send_requests: count("send_requests")?,
        })
    }

    async fn import_events(
        &self,
        mut batches: ImportReceiver<NewEvent>,
        received_at: DateTime<Utc>,
    ) -> StoreResult<IngestOutcome> {
        let mut tx = self.pool.begin().await?;
        let mut outcome = IngestOutcome::default();
        while let Some(batch) = batches.recv().await {
            let batch = batch.map_err(StoreError::ImportAborted)?;
            outcome.add(insert_events_tx(&mut tx, &batch, received_at).await?);
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn import_members(
        &self,
        mut batches: ImportReceiver<MemberPatch>,
        now: DateTime<Utc>,
    ) -> StoreResult<MembersOutcome> {
        let mut tx = self.pool.begin().await?;
        let mut outcome = MembersOutcome::default();
        while let Some(batch) = batches.recv().await {
            let batch = batch.map_err(StoreError::ImportAborted)?;
            let done =
                upsert_members_tx(&mut tx, &batch, now).await.map_err(|e| StoreError::ImportAborted(e.to_string()))?;
            outcome.add(done);
        }
        tx.commit().await?;
        Ok(outcome)
    }
}
