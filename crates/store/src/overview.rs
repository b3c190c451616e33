//! The dashboard's reads of other areas' tables: the overview's counts
//! "now" (friends following and blocked, links (ID連携) and linked friends
//! as the sums of `dashboard_counts`, the hourly changes migration 0023's
//! triggers keep; deliveries waiting and failed, each one count over a
//! table's key or a partial index), never over `events`; the series of
//! those hourly counts; and one user's friendship, for the
//! member look-up with the user's latest events (by the user's index range)
//! and deliveries; the ID連携 page's links by method and nonces by outcome;
//! the deliveries page's failed requests and waiting
//! deliveries (by partial index, and the queue of what waits). The same SQL
//! on both backends.

use crate::events::{StoredEvent, event_of};
use crate::sql::{Dialect, Sql, Ts, stmt};
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{DeferReason, LineUserId, MemberId};
use serde::Serialize;
use sqlx::Database;

/// The overview's counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OverviewCounts {
    /// LINE users who follow the account now: a follow seen last, or linked
    /// with no unfollow seen (the planner's rule).
    pub following: u64,
    /// LINE users who unfollowed (blocked) it.
    pub blocked: u64,
    /// Members linked to a LINE user (ID連携).
    pub linked: u64,
    /// Of those, LINE users who follow now.
    pub linked_following: u64,
    /// Deliveries not sent yet: waiting in the queue, or in a request LINE
    /// has not accepted yet.
    pub deliveries_pending: u64,
    /// Deliveries of requests that failed for good.
    pub deliveries_failed: u64,
}

/// A LINE request that failed for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedRequest {
    pub id: i64,
    /// The campaign of its deliveries (the first by id, when several).
    pub campaign_id: Option<String>,
    pub deliveries: u64,
    pub attempts: i64,
    /// LINE's answer, as the recorder kept it.
    pub error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One delivery to a user, for the member look-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserDelivery {
    pub campaign_id: String,
    pub created_at: DateTime<Utc>,
    /// `pending`, `requested`, `sent`, `skipped` or `failed`.
    pub status: String,
    pub skip_reason: Option<String>,
}

/// One hour's change of a dashboard metric (`dashboard_counts`, kept by
/// triggers on the tables it counts; migration 0023 lists the metrics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HourCount {
    /// The UTC hour's start.
    pub hour: DateTime<Utc>,
    pub key: String,
    /// Changes in that hour (negative for a level that fell).
    pub n: i64,
}

/// One campaign's deliveries waiting in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitingDeliveries {
    pub campaign_id: String,
    /// What the planner put them back to wait for (none: their own due time).
    pub waits_for: Option<DeferReason>,
    pub count: u64,
    /// The earliest due time among them (later than now: deferred or delayed).
    pub next_due: DateTime<Utc>,
}

/// `at` rounded down to its hour: `dashboard_counts` holds whole UTC hours.
fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at - chrono::Duration::seconds(at.timestamp().rem_euclid(3600))
        - chrono::Duration::nanoseconds(i64::from(at.timestamp_subsec_nanos()))
}

/// Dashboard counts of what no table keeps a row for (link tokens LINE
/// issued), added by the code that saw it happen; the others are kept by
/// triggers (migration 0023).
#[async_trait]
pub trait DashboardTally: Send + Sync + 'static {
    /// One more `metric` (with `key`) in the hour of `at`.
    async fn count_hour(&self, metric: &str, key: &str, at: DateTime<Utc>) -> StoreResult<()>;
}

#[async_trait]
impl<S: Sql> DashboardTally for S {
    async fn count_hour(&self, metric: &str, key: &str, at: DateTime<Utc>) -> StoreResult<()> {
        stmt::<S::Db>(
            "INSERT INTO dashboard_counts (metric, hour, key, slot, n) VALUES ($1, $2, $3, $4, 1)
             ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = dashboard_counts.n + 1",
        )
        .bind(metric)
        .bind(Ts(hour_of(at)))
        .bind(key)
        // Spread over the 8 slots, so concurrent writers rarely wait on one row.
        .bind(i64::from(at.timestamp_subsec_micros() % 8))
        .execute(self.writer())
        .await?;
        Ok(())
    }
}

#[async_trait]
pub trait OverviewReads: Send + Sync + 'static {
    async fn overview_counts(&self) -> StoreResult<OverviewCounts>;

    /// The latest `limit` failed LINE requests, newest first.
    async fn recent_failures(&self, limit: u32) -> StoreResult<Vec<FailedRequest>>;

    /// Deliveries waiting in the queue (not yet in a request), per campaign.
    async fn waiting_by_campaign(&self) -> StoreResult<Vec<WaitingDeliveries>>;

    /// Links by method (`account_link`, `id_token`, `api`, `import`).
    async fn links_by_method(&self) -> StoreResult<Vec<(String, u64)>>;

    /// Account-link nonces that expire at or after `since` (issued within
    /// their lifetime before it), by outcome: `ok`, `failed`, `conflict`, …,
    /// `expired` (never used) and `open` (not used yet).
    async fn link_nonces_by_result(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<Vec<(String, u64)>>;

    /// The latest `limit` events of a LINE user and of a member (either may
    /// be absent), newest first.
    async fn recent_events_of(
        &self,
        line_user_id: Option<&LineUserId>,
        member_id: Option<&MemberId>,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>>;

    /// The latest `limit` deliveries to a LINE user, newest first, each in
    /// the state the campaign stats count it in.
    async fn recent_deliveries_to(&self, line_user_id: &LineUserId, limit: u32) -> StoreResult<Vec<UserDelivery>>;

    /// Whether a LINE user follows now, and since when (`None`: never followed).
    async fn friendship(&self, line_user_id: &LineUserId) -> StoreResult<Option<(bool, DateTime<Utc>)>>;

    /// The sizes of `segments` (entries less exits, the sums of
    /// `dashboard_counts`) and each one's last change (its latest transition,
    /// by the `(segment_id, at)` index): `MembershipReads::segment_stats`
    /// without counting the memberships.
    async fn segment_sizes(&self, segments: &[&str]) -> StoreResult<Vec<crate::SegmentStats>>;

    /// Folds every hour of `dashboard_counts` before `before` into one row
    /// per metric and key at the Unix epoch (sums and levels stay the same;
    /// the pages' series read only recent hours), so the sums read stay
    /// short. The one write here, done by the dashboard's roll-up under a
    /// lease. Returns the rows folded.
    async fn fold_hours_before(&self, before: DateTime<Utc>) -> StoreResult<u64>;

    /// A metric's hourly changes from `since`'s hour on, per hour and key
    /// (only `key` when given), oldest first: a range of the
    /// `dashboard_counts` key, never the counted tables.
    async fn hourly_counts(&self, metric: &str, key: Option<&str>, since: DateTime<Utc>)
    -> StoreResult<Vec<HourCount>>;
}

#[async_trait]
impl<S: Sql> OverviewReads for S {
    async fn overview_counts(&self) -> StoreResult<OverviewCounts> {
        let count =
            |row: &crate::sql::Row<'_, S::Db>, column: &str| row.int(column).map(|n| u64::try_from(n).unwrap_or(0));
        // Friends, blocked and links: the sums of their changes, which the
        // triggers of migration 0023 keep (it started them at the counts then).
        let levels = stmt::<S::Db>(
            "SELECT metric, CAST(SUM(n) AS BIGINT) AS n FROM dashboard_counts
             WHERE metric IN ('friends', 'blocked', 'linked', 'linked_friends') GROUP BY metric",
        )
        .all(self.reader(), |row| Ok((row.string("metric")?, count(&row, "n")?)))
        .await?;
        let level = |metric: &str| levels.iter().find(|(m, _)| m == metric).map_or(0, |(_, n)| *n);
        let (following, blocked) = (level("friends"), level("blocked"));
        let (linked, linked_following) = (level("linked"), level("linked_friends"));
        // As the campaign stats count them: waiting in the queue, or in a request
        // LINE has not accepted yet; failed is a failed request's deliveries. A
        // queue row holds `size` deliveries (a page of them on PostgreSQL).
        let waiting = stmt::<S::Db>("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS n FROM delivery_queue")
            .one(self.reader(), |row| count(&row, "n"))
            .await?;
        // Literal statuses: the partial indexes match only a literal.
        let in_flight = stmt::<S::Db>(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM send_requests r
             JOIN delivery_sends s ON s.request_id = r.id WHERE r.status = 'pending'",
        )
        .one(self.reader(), |row| count(&row, "n"))
        .await?;
        let deliveries_failed = stmt::<S::Db>(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM send_requests r
             JOIN delivery_sends s ON s.request_id = r.id WHERE r.status = 'failed'",
        )
        .one(self.reader(), |row| count(&row, "n"))
        .await?;
        let deliveries_pending = waiting + in_flight;
        Ok(OverviewCounts { following, blocked, linked, linked_following, deliveries_pending, deliveries_failed })
    }

    async fn recent_failures(&self, limit: u32) -> StoreResult<Vec<FailedRequest>> {
        stmt::<S::Db>(
            "SELECT r.id, r.attempts, r.last_error, r.finished_at,
                    (SELECT MIN(s.campaign_id) FROM delivery_sends s WHERE s.request_id = r.id) AS campaign_id,
                    (SELECT CAST(COUNT(*) AS BIGINT) FROM delivery_sends s WHERE s.request_id = r.id) AS deliveries
             FROM send_requests r WHERE r.status = 'failed' ORDER BY r.id DESC LIMIT $1",
        )
        .bind(limit)
        .all(self.reader(), |row| {
            Ok(FailedRequest {
                id: row.int("id")?,
                campaign_id: row.opt_string("campaign_id")?,
                deliveries: u64::try_from(row.int("deliveries")?).unwrap_or(0),
                attempts: row.int("attempts")?,
                error: row.opt_string("last_error")?,
                finished_at: row.opt_ts("finished_at")?,
            })
        })
        .await
    }

    async fn waiting_by_campaign(&self) -> StoreResult<Vec<WaitingDeliveries>> {
        stmt::<S::Db>(
            "SELECT campaign_id, waits_for, CAST(SUM(size) AS BIGINT) AS n, MIN(due_at) AS next_due
             FROM delivery_queue GROUP BY campaign_id, waits_for ORDER BY campaign_id, COALESCE(waits_for, '')",
        )
        .all(self.reader(), |row| {
            Ok(WaitingDeliveries {
                campaign_id: row.string("campaign_id")?,
                waits_for: row
                    .opt_string("waits_for")?
                    .map(|w| DeferReason::parse(&w).ok_or_else(|| StoreError::Corrupt(format!("waits_for {w:?}"))))
                    .transpose()?,
                count: u64::try_from(row.int("n")?).unwrap_or(0),
                next_due: row.ts("next_due")?,
            })
        })
        .await
    }

    async fn links_by_method(&self) -> StoreResult<Vec<(String, u64)>> {
        stmt::<S::Db>("SELECT method, CAST(COUNT(*) AS BIGINT) AS n FROM links GROUP BY method ORDER BY method")
            .all(self.reader(), |row| Ok((row.string("method")?, u64::try_from(row.int("n")?).unwrap_or(0))))
            .await
    }

    async fn link_nonces_by_result(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> StoreResult<Vec<(String, u64)>> {
        // By `expires_at` (indexed): a nonce lives 10 minutes.
        stmt::<S::Db>(
            "SELECT COALESCE(result, CASE WHEN expires_at < $2 THEN 'expired' ELSE 'open' END) AS outcome,
                    CAST(COUNT(*) AS BIGINT) AS n
             FROM link_nonces WHERE expires_at >= $1 GROUP BY 1 ORDER BY 1",
        )
        .bind(Ts(since))
        .bind(Ts(now))
        .all(self.reader(), |row| Ok((row.string("outcome")?, u64::try_from(row.int("n")?).unwrap_or(0))))
        .await
    }

    async fn recent_events_of(
        &self,
        line_user_id: Option<&LineUserId>,
        member_id: Option<&MemberId>,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>> {
        // Each by its user's index range, never the whole table.
        let by_user = "SELECT id, event_id, type, member_id, line_user_id, occurred_at, properties FROM events
                       WHERE line_user_id = $1 ORDER BY occurred_at DESC, id DESC LIMIT $2";
        let by_member = "SELECT id, event_id, type, member_id, line_user_id, occurred_at, properties FROM events
                         WHERE member_id = $1 ORDER BY occurred_at DESC, id DESC LIMIT $2";
        let keys = [(by_user, line_user_id.map(LineUserId::as_str)), (by_member, member_id.map(MemberId::as_str))];
        let mut events = Vec::new();
        for (sql, key) in keys {
            if let Some(key) = key {
                events.extend(stmt::<S::Db>(sql).bind(key).bind(limit).all(self.reader(), event_of).await?);
            }
        }
        events.sort_by_key(|e| std::cmp::Reverse((e.occurred_at, e.id)));
        events.dedup_by_key(|e| e.id);
        events.truncate(limit as usize);
        Ok(events)
    }

    async fn recent_deliveries_to(&self, line_user_id: &LineUserId, limit: u32) -> StoreResult<Vec<UserDelivery>> {
        stmt::<S::Db>(concat!(
            "SELECT d.campaign_id, d.created_at, d.skip_reason, ",
            crate::outbox::delivery_status!(),
            " AS status FROM ",
            crate::outbox::deliveries_with_requests!(),
            " WHERE d.line_user_id = $1 ORDER BY d.id DESC LIMIT $2"
        ))
        .bind(line_user_id)
        .bind(limit)
        .all(self.reader(), |row| {
            Ok(UserDelivery {
                campaign_id: row.string("campaign_id")?,
                created_at: row.ts("created_at")?,
                status: row.string("status")?,
                skip_reason: row.opt_string("skip_reason")?,
            })
        })
        .await
    }

    async fn friendship(&self, line_user_id: &LineUserId) -> StoreResult<Option<(bool, DateTime<Utc>)>> {
        stmt::<S::Db>("SELECT following, changed_at FROM friendships WHERE line_user_id = $1")
            .bind(line_user_id)
            .optional(self.reader(), |row| Ok((row.boolean("following")?, row.ts("changed_at")?)))
            .await
    }

    async fn hourly_counts(
        &self,
        metric: &str,
        key: Option<&str>,
        since: DateTime<Utc>,
    ) -> StoreResult<Vec<HourCount>> {
        let since = hour_of(since);
        let sql = if key.is_some() {
            "SELECT hour, key, CAST(SUM(n) AS BIGINT) AS n FROM dashboard_counts
             WHERE metric = $1 AND hour >= $2 AND key = $3 GROUP BY hour, key ORDER BY hour, key"
        } else {
            "SELECT hour, key, CAST(SUM(n) AS BIGINT) AS n FROM dashboard_counts
             WHERE metric = $1 AND hour >= $2 AND $3 = '' GROUP BY hour, key ORDER BY hour, key"
        };
        stmt::<S::Db>(sql)
            .bind(metric)
            .bind(Ts(since))
            .bind(key.unwrap_or_default())
            .all(self.reader(), |row| {
                Ok(HourCount { hour: row.ts("hour")?, key: row.string("key")?, n: row.int("n")? })
            })
            .await
    }

    async fn segment_sizes(&self, segments: &[&str]) -> StoreResult<Vec<crate::SegmentStats>> {
        let sums = stmt::<S::Db>(
            "SELECT key, CAST(SUM(CASE WHEN metric = 'entered' THEN n ELSE -n END) AS BIGINT) AS size
             FROM dashboard_counts WHERE metric IN ('entered', 'exited') GROUP BY key",
        )
        .all(self.reader(), |row| Ok((row.string("key")?, row.int("size")?)))
        .await?;
        let mut stats = Vec::with_capacity(segments.len());
        for segment in segments {
            let updated_at = stmt::<S::Db>("SELECT MAX(at) AS last FROM segment_transitions WHERE segment_id = $1")
                .bind(*segment)
                .one(self.reader(), |row| row.opt_ts("last"))
                .await?;
            let size = sums.iter().find(|(key, _)| key == segment).map_or(0, |(_, n)| *n);
            stats.push(crate::SegmentStats {
                segment_id: segment.to_string(),
                size: u64::try_from(size).unwrap_or(0),
                updated_at,
            });
        }
        Ok(stats)
    }

    async fn fold_hours_before(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let epoch = DateTime::<Utc>::UNIX_EPOCH;
        let mut tx = S::Db::begin(self.writer()).await?;
        // On PostgreSQL both statements see one snapshot: a row committed
        // meanwhile is neither summed nor deleted, and a concurrent change of
        // a row being folded fails this fold (the next one folds it).
        // SQLite's writer is single.
        if S::Db::NAME == "PostgreSQL" {
            stmt::<S::Db>("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute_in(&mut tx).await?;
        }
        stmt::<S::Db>(
            "INSERT INTO dashboard_counts (metric, hour, key, slot, n)
             SELECT metric, $1, key, 0, SUM(n) FROM dashboard_counts WHERE hour > $1 AND hour < $2
             GROUP BY metric, key
             ON CONFLICT (metric, hour, key, slot) DO UPDATE SET n = dashboard_counts.n + excluded.n",
        )
        .bind(Ts(epoch))
        .bind(Ts(before))
        .execute_in(&mut tx)
        .await?;
        let folded = stmt::<S::Db>("DELETE FROM dashboard_counts WHERE hour > $1 AND hour < $2")
            .bind(Ts(epoch))
            .bind(Ts(before))
            .execute_in(&mut tx)
            .await?;
        S::Db::commit(tx).await?;
        Ok(folded)
    }
}
