//! SQLite: the embedded default. WAL journal, `synchronous = FULL` so that a
//! committed write survives a crash, one writer connection (SQLite allows one
//! writer at a time; a single connection avoids busy upgrades) and a small
//! pool of readers.

use crate::{
    Backend, ImportReceiver, IngestOutcome, Link, LinkOutcome, Member, MembersOutcome, Store, StoreCounts, StoreError,
    StoreResult, StoredEvent, line_user_claimed, member_already_linked, merged, parse_link, parse_object,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{LineUserId, LinkMethod, MemberId, MemberPatch, NewEvent};
use serde_json::{Map, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

mod events;
mod membership;
mod outbox;
mod requests;
mod rich_menus;
mod webhook;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

pub struct SqliteStore {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
}

pub(crate) fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(micros: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt(format!("timestamp {micros}")))
}

/// An `events` row (`id, event_id, type, member_id, line_user_id, occurred_at, properties`).
pub(crate) fn stored_event(row: &sqlx::sqlite::SqliteRow) -> StoreResult<StoredEvent> {
    Ok(StoredEvent {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("type")?,
        member_id: row.try_get("member_id")?,
        line_user_id: row.try_get("line_user_id")?,
        occurred_at: from_micros(row.try_get("occurred_at")?)?,
        properties: json_object(row.try_get("properties")?, "event properties")?,
    })
}

pub(crate) fn json_object(text: &str, what: &str) -> StoreResult<Map<String, Value>> {
    let value: Value = serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    parse_object(value, what)
}

impl crate::sql::Sql for SqliteStore {
    type Db = sqlx::Sqlite;

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }
}

impl SqliteStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let writer = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        let reader = SqlitePoolOptions::new().max_connections(4).connect_with(options.read_only(true)).await?;
        Ok(Self { writer, reader })
    }

    pub fn writer_pool(&self) -> &SqlitePool {
        &self.writer
    }
}

/// Rows per INSERT statement: 7 parameters each stays far below SQLite's
/// 32,766-parameter limit while saving most per-statement overhead.
const EVENT_ROWS_PER_STATEMENT: usize = 500;

async fn insert_events_tx(
    conn: &mut SqliteConnection,
    events: &[NewEvent],
    received_at: DateTime<Utc>,
) -> StoreResult<IngestOutcome> {
    let mut outcome = IngestOutcome::default();
    let received = to_micros(received_at);
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
        // DO NOTHING also skips repeats inside the same statement.
        insert.push(" ON CONFLICT (event_id) DO NOTHING");
        let accepted = insert.build().execute(&mut *conn).await?.rows_affected();
        outcome.accepted += accepted;
        outcome.duplicates += chunk.len() as u64 - accepted;
    }
    Ok(outcome)
}

async fn link_tx(
    conn: &mut SqliteConnection,
    member_id: &MemberId,
    line_user_id: &LineUserId,
    method: LinkMethod,
    at: DateTime<Utc>,
) -> StoreResult<LinkOutcome> {
    let by_member = sqlx::query("SELECT line_user_id, method, linked_at FROM links WHERE member_id = ?")
        .bind(member_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = by_member {
        let current: String = row.try_get("line_user_id")?;
        if current == line_user_id.as_str() {
            let link = parse_link(
                member_id.to_string(),
                current,
                row.try_get("method")?,
                from_micros(row.try_get("linked_at")?)?,
            )?;
            return Ok(LinkOutcome::AlreadyLinked(link));
        }
        return Err(member_already_linked(member_id.as_str(), &current));
    }
    let by_user: Option<String> = sqlx::query_scalar("SELECT member_id FROM links WHERE line_user_id = ?")
        .bind(line_user_id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(other) = by_user {
        return Err(line_user_claimed(line_user_id.as_str(), &other));
    }
    let now = to_micros(at);
    sqlx::query(
        "INSERT INTO members (member_id, attributes, created_at, updated_at) VALUES (?, '{}', ?, ?)
         ON CONFLICT (member_id) DO NOTHING",
    )
    .bind(member_id.as_str())
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO links (member_id, line_user_id, method, linked_at) VALUES (?, ?, ?, ?)")
        .bind(member_id.as_str())
        .bind(line_user_id.as_str())
        .bind(method.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(LinkOutcome::Created(Link {
        member_id: member_id.clone(),
        line_user_id: line_user_id.clone(),
        method,
        linked_at: from_micros(now)?,
    }))
}

async fn upsert_members_tx(
    conn: &mut SqliteConnection,
    patches: &[MemberPatch],
    now: DateTime<Utc>,
) -> StoreResult<MembersOutcome> {
    let mut outcome = MembersOutcome::default();
    let at = to_micros(now);
    for patch in patches {
        let current: Option<String> = sqlx::query_scalar("SELECT attributes FROM members WHERE member_id = ?")
            .bind(patch.member_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        let current = current.map(|text| json_object(&text, "member attributes")).transpose()?;
        let (next, changed) = merged(current.as_ref(), &patch.attributes);
        let next_text = Value::Object(next).to_string();
        match (&current, changed) {
            (None, _) => {
                sqlx::query("INSERT INTO members (member_id, attributes, created_at, updated_at) VALUES (?, ?, ?, ?)")
                    .bind(patch.member_id.as_str())
                    .bind(next_text)
                    .bind(at)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                outcome.created += 1;
            }
            (Some(_), true) => {
                sqlx::query("UPDATE members SET attributes = ?, updated_at = ? WHERE member_id = ?")
                    .bind(next_text)
                    .bind(at)
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

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn insert_events(&self, events: &[NewEvent], received_at: DateTime<Utc>) -> StoreResult<IngestOutcome> {
        let mut tx = self.writer.begin().await?;
        let outcome = insert_events_tx(&mut tx, events, received_at).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn upsert_members(&self, patches: &[MemberPatch], now: DateTime<Utc>) -> StoreResult<MembersOutcome> {
        let mut tx = self.writer.begin().await?;
        let outcome = upsert_members_tx(&mut tx, patches, now).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn get_member(&self, member_id: &MemberId) -> StoreResult<Option<Member>> {
        let row = sqlx::query("SELECT attributes, created_at, updated_at FROM members WHERE member_id = ?")
            .bind(member_id.as_str())
            .fetch_optional(&self.reader)
            .await?;
        row.map(|row| {
            Ok(Member {
                member_id: member_id.clone(),
                attributes: json_object(row.try_get("attributes")?, "member attributes")?,
                created_at: from_micros(row.try_get("created_at")?)?,
                updated_at: from_micros(row.try_get("updated_at")?)?,
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
        let mut tx = self.writer.begin().await?;
        let outcome = link_tx(&mut tx, member_id, line_user_id, method, at).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn get_link(&self, member_id: &MemberId) -> StoreResult<Option<Link>> {
        let row = sqlx::query("SELECT member_id, line_user_id, method, linked_at FROM links WHERE member_id = ?")
            .bind(member_id.as_str())
            .fetch_optional(&self.reader)
            .await?;
        row.map(|row| link_from_row(&row)).transpose()
    }

    async fn get_link_by_line_user(&self, line_user_id: &LineUserId) -> StoreResult<Option<Link>> {
        let row = sqlx::query("SELECT member_id, line_user_id, method, linked_at FROM links WHERE line_user_id = ?")
            .bind(line_user_id.as_str())
            .fetch_optional(&self.reader)
            .await?;
        row.map(|row| link_from_row(&row)).transpose()
    }

    async fn unlink(&self, member_id: &MemberId) -> StoreResult<Option<Link>> {
        let row =
            sqlx::query("DELETE FROM links WHERE member_id = ? RETURNING member_id, line_user_id, method, linked_at")
                .bind(member_id.as_str())
                .fetch_optional(&self.writer)
                .await?;
        row.map(|row| link_from_row(&row)).transpose()
    }

    async fn set_following(&self, line_user_id: &LineUserId, following: bool, at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO friendships (line_user_id, following, changed_at) VALUES (?, ?, ?)
             ON CONFLICT (line_user_id) DO UPDATE SET following = excluded.following, changed_at = excluded.changed_at",
        )
        .bind(line_user_id.as_str())
        .bind(following)
        .bind(to_micros(at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get_following(&self, line_user_id: &LineUserId) -> StoreResult<Option<bool>> {
        Ok(sqlx::query_scalar("SELECT following FROM friendships WHERE line_user_id = ?")
            .bind(line_user_id.as_str())
            .fetch_optional(&self.reader)
            .await?)
    }

    async fn user_events(&self, line_user_id: &LineUserId) -> StoreResult<Vec<StoredEvent>> {
        let rows = sqlx::query(
            "SELECT id, event_id, type, member_id, line_user_id, occurred_at, properties FROM events
             WHERE line_user_id = ?1
                OR member_id = (SELECT member_id FROM links WHERE line_user_id = ?1)
             ORDER BY occurred_at, id",
        )
        .bind(line_user_id.as_str())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(crate::sqlite::stored_event).collect()
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM members) AS members, (SELECT COUNT(*) FROM links) AS links,
                    (SELECT COUNT(*) FROM friendships) AS friendships, (SELECT COUNT(*) FROM events) AS events,
                    (SELECT COUNT(*) FROM webhook_events) AS webhook_events,
                    (SELECT COUNT(*) FROM deliveries) AS deliveries, (SELECT COUNT(*) FROM send_requests) AS send_requests",
        )
        .fetch_one(&self.reader)
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
        let mut tx = self.writer.begin().await?;
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
        let mut tx = self.writer.begin().await?;
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

fn link_from_row(row: &sqlx::sqlite::SqliteRow) -> StoreResult<Link> {
    parse_link(
        row.try_get("member_id")?,
        row.try_get("line_user_id")?,
        row.try_get("method")?,
        from_micros(row.try_get("linked_at")?)?,
    )
}

/// A JSON array parameter (SQLite has no array parameters).
pub(crate) fn json_text<T: serde::Serialize>(items: &[T], what: &str) -> StoreResult<String> {
    serde_json::to_string(items).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn ids_json(ids: &[i64]) -> String {
    Value::Array(ids.iter().map(|id| Value::from(*id)).collect()).to_string()
}

pub(crate) fn users_json(users: &[LineUserId]) -> String {
    crate::requests::recipients_json(users).to_string()
}
