//! SQLite's side of the outbox: claims hold the single writer in an
//! IMMEDIATE transaction; batches go in as chunked multi-row INSERTs; sets
//! are bound as JSON arrays (`json_each`), SQLite having no array parameters.

use super::{ids_json, json_text, to_micros, users_json};
use crate::outbox::{
    AlikeFire, Claim, ClaimLock, ClaimOutcome, CountMoves, NewDelivery, OutboxStore, PendingDelivery, QueueKey,
    SharedMessages, UserSendFacts, add_campaign_counts, claim_moves, counts_by_user, delivery_of, delivery_own_columns,
    dequeued, send_facts_of, sends_of, users_by_member,
};
use crate::requests::{recipients_json, retry_key_conflict};
use crate::sql::{Row, stmt};
use crate::{MembershipReads, SqliteStore, StoreError, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt};
use renkei_core::{LineUserId, MemberId};
use std::collections::BTreeMap;

/// Rows per INSERT statement: 10 parameters each, far below SQLite's limit.
const DELIVERY_ROWS_PER_STATEMENT: usize = 500;

/// SQLite's hold on claimed deliveries: an IMMEDIATE transaction on the single writer.
/// It also holds the store's claim slot, so a second claim waits for this
/// one to end (commit, release or drop) instead of timing out on the writer.
struct SqliteClaim {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    /// Dropped after `tx` (fields drop in order): the next claim starts once the writer is free.
    _slot: tokio::sync::OwnedMutexGuard<()>,
}

#[async_trait]
impl ClaimLock for SqliteClaim {
    async fn commit(self: Box<Self>) -> StoreResult<()> {
        Ok(self.tx.commit().await?)
    }

    async fn rollback(self: Box<Self>) -> StoreResult<()> {
        Ok(self.tx.rollback().await?)
    }

    async fn write(
        &mut self,
        held: &BTreeMap<i64, String>,
        outcome: &ClaimOutcome,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<i64>> {
        let tx: &mut sqlx::SqliteConnection = &mut self.tx;
        let now = to_micros(now);
        let mut ids = Vec::with_capacity(outcome.requests.len());
        for request in &outcome.requests {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO send_requests (kind, retry_key, messages, recipients, status, attempts, next_attempt_at,
                 created_at, aggregation_unit) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?) RETURNING id",
            )
            .bind(request.kind.as_str())
            .bind(request.retry_key.to_string())
            .bind(request.messages.to_string())
            .bind(recipients_json(&request.recipients).to_string())
            .bind(now)
            .bind(now)
            .bind(request.aggregation_unit.as_deref())
            .fetch_one(&mut *tx)
            .await
            .map_err(retry_key_conflict)?;
            ids.push(id);
        }
        let sends: Vec<_> = sends_of(held, &outcome.requests, &ids).collect();
        for chunk in sends.chunks(DELIVERY_ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO delivery_sends (delivery_id, request_id, campaign_id, line_user_id, requested_at) ",
            );
            insert.push_values(chunk, |mut row, (delivery, request, campaign, user)| {
                row.push_bind(*delivery).push_bind(*request).push_bind(*campaign).push_bind(*user).push_bind(now);
            });
            insert.build().execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM delivery_queue WHERE delivery_id IN (SELECT value FROM json_each(?))")
            .bind(ids_json(&dequeued(outcome)))
            .execute(&mut *tx)
            .await?;
        for (id, reason) in &outcome.skips {
            sqlx::query("UPDATE deliveries SET status = 'skipped', skip_reason = ?, finished_at = ? WHERE id = ?")
                .bind(reason.as_str())
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        for (id, until, reason) in &outcome.defers {
            sqlx::query("UPDATE delivery_queue SET due_at = ?, waits_for = ? WHERE delivery_id = ?")
                .bind(to_micros(*until))
                .bind(reason.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE deliveries SET due_at = ? WHERE id = ?")
                .bind(to_micros(*until))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        for (id, user) in &outcome.resolved {
            sqlx::query("UPDATE deliveries SET line_user_id = ? WHERE id = ?")
                .bind(user.as_str())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        add_campaign_counts::<sqlx::Sqlite>(&mut *tx, &claim_moves(held, outcome), 0).await?;
        Ok(ids)
    }
}

#[async_trait]
impl OutboxStore for SqliteStore {
    fn parallel_claims(&self) -> bool {
        false
    }

    async fn insert_audience_range(
        &self,
        fire: &AlikeFire<'_>,
        after: Option<&str>,
        through: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let recipients = MembershipReads::segment_range_linked(self, fire.audience, after, through).await?;
        self.insert_deliveries(&fire.deliveries(recipients), now).await
    }

    async fn insert_deliveries(&self, deliveries: &[NewDelivery], now: DateTime<Utc>) -> StoreResult<u64> {
        let created = to_micros(now);
        let mut tx = self.writer.begin().await?;
        let mut inserted = 0;
        let mut per_campaign: BTreeMap<String, i64> = BTreeMap::new();
        for chunk in deliveries.chunks(DELIVERY_ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO deliveries (campaign_id, trigger_key, recipient_key, line_user_id, member_id, due_at, \
                 messages, context, status, created_at) ",
            );
            insert.push_values(chunk, |mut row, d| {
                row.push_bind(d.campaign_id.as_str())
                    .push_bind(d.trigger_key.as_str())
                    .push_bind(d.recipient_key.as_str())
                    .push_bind(d.line_user_id.as_ref().map(|u| u.as_str()))
                    .push_bind(d.member_id.as_ref().map(|m| m.as_str()))
                    .push_bind(to_micros(d.due_at))
                    .push_bind(d.messages.to_string())
                    .push_bind(d.context.to_string())
                    .push_bind("pending")
                    .push_bind(created);
            });
            // DO NOTHING also skips repeats inside the same statement; RETURNING names the new rows only.
            insert.push(
                " ON CONFLICT (campaign_id, trigger_key, recipient_key) DO NOTHING RETURNING id, campaign_id, due_at",
            );
            let new: Vec<(i64, String, i64)> = insert.build_query_as().fetch_all(&mut *tx).await?;
            if new.is_empty() {
                continue;
            }
            inserted += new.len() as u64;
            for (_, campaign, _) in &new {
                *per_campaign.entry(campaign.clone()).or_default() += 1;
            }
            let mut queue = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO delivery_queue (delivery_id, campaign_id, due_at) ",
            );
            queue.push_values(&new, |mut row, (id, campaign, due)| {
                row.push_bind(*id).push_bind(campaign.as_str()).push_bind(*due);
            });
            queue.build().execute(&mut *tx).await?;
        }
        let moves: CountMoves =
            per_campaign.iter().map(|(campaign, n)| ((campaign.as_str(), "created", ""), *n)).collect();
        add_campaign_counts::<sqlx::Sqlite>(&mut *tx, &moves, 0).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    async fn claim_deliveries_after(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        after: Option<QueueKey>,
    ) -> StoreResult<Claim> {
        // One claim at a time: a second one waits here for as long as the first is open.
        let slot = self.claims.clone().lock_owned().await;
        // IMMEDIATE: the single writer is the claim's until it ends, so nothing can interleave.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            delivery_own_columns!(),
            ", d.status, NULL AS request_id, NULL AS requested_at FROM deliveries d
             WHERE d.id IN (SELECT q.delivery_id FROM delivery_queue q
                            WHERE q.due_at <= ?1
                              AND (?3 IS NULL OR q.due_at > ?3 OR (q.due_at = ?3 AND q.delivery_id > ?4))
                              AND q.campaign_id NOT IN (SELECT campaign_id FROM campaign_state WHERE paused)
                            ORDER BY q.due_at, q.delivery_id LIMIT ?2)"
        ))
        .bind(to_micros(now))
        .bind(i64::from(limit))
        .bind(after.map(|(due, _)| to_micros(due)))
        .bind(after.map(|(_, id)| id))
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(Claim::empty());
        }
        let mut shared = SharedMessages::default();
        let deliveries = rows
            .iter()
            .map(|row| delivery_of(Row::<sqlx::Sqlite>(row), &mut shared).map(PendingDelivery::from))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(Claim::new(deliveries, Box::new(SqliteClaim { tx, _slot: slot })))
    }

    async fn sent_counts(
        &self,
        users: &[LineUserId],
        campaign_id: Option<&str>,
        since: DateTime<Utc>,
    ) -> StoreResult<HashMap<LineUserId, u64>> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT u.value, (SELECT COUNT(*) FROM delivery_sends s JOIN send_requests r ON r.id = s.request_id
                              WHERE s.line_user_id = u.value AND s.requested_at >= ?2 AND r.status <> 'failed'
                                AND (?3 IS NULL OR s.campaign_id = ?3))
             FROM json_each(?1) u",
        )
        .bind(users_json(users))
        .bind(to_micros(since))
        .bind(campaign_id)
        .fetch_all(&self.reader)
        .await?;
        counts_by_user(rows)
    }

    async fn member_line_users(&self, members: &[MemberId]) -> StoreResult<HashMap<MemberId, LineUserId>> {
        if members.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT m.value, (SELECT l.line_user_id FROM links l WHERE l.member_id = m.value) FROM json_each(?) m",
        )
        .bind(json_text(members, "member ids")?)
        .fetch_all(&self.reader)
        .await?;
        users_by_member(rows)
    }

    async fn send_facts(
        &self,
        users: &[LineUserId],
        segments: &[String],
    ) -> StoreResult<HashMap<LineUserId, UserSendFacts>> {
        if users.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, Option<String>, Option<bool>, String)> = sqlx::query_as(
            "SELECT u.value,
                    (SELECT l.member_id FROM links l WHERE l.line_user_id = u.value),
                    (SELECT f.following FROM friendships f WHERE f.line_user_id = u.value),
                    (SELECT json_group_array(m.segment_id) FROM segment_memberships m
                     WHERE m.line_user_id = u.value AND m.segment_id IN (SELECT value FROM json_each(?2)))
             FROM json_each(?1) u",
        )
        .bind(users_json(users))
        .bind(json_text(segments, "segment ids")?)
        .fetch_all(&self.reader)
        .await?;
        let rows = rows
            .into_iter()
            .map(|(user, member, following, segments)| {
                let segments =
                    serde_json::from_str(&segments).map_err(|e| StoreError::Corrupt(format!("segments: {e}")))?;
                Ok((user, member, following, segments))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(send_facts_of(users, rows))
    }

    async fn next_delivery_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        stmt::<sqlx::Sqlite>(
            "SELECT due_at FROM delivery_queue
             WHERE campaign_id NOT IN (SELECT campaign_id FROM campaign_state WHERE paused)
             ORDER BY due_at LIMIT 1",
        )
        .optional(&self.reader, |row| row.ts("due_at"))
        .await
    }
}
