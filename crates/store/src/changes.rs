//! The change feed (`user_changes`, migration 0024): which users' data
//! changed, recorded in the same transaction as the change by every write
//! that can move a user between segments (events, members, links, follows),
//! whichever process makes it: an instance's API or webhook worker,
//! `renkei import`, a second server. Evaluators claim rows with a lease,
//! re-evaluate their users and delete the rows, so a change outlives the
//! process that made it, several evaluators share the work, and a crashed
//! evaluator's claim is taken over once its lease runs out.
//!
//! The SQL is written once; what differs is the claim (SKIP LOCKED on
//! PostgreSQL) and the wake-up: PostgreSQL's trigger notifies
//! `renkei_user_changes` (LISTEN), SQLite has nothing, and evaluators poll
//! on both, which also covers a missed notification.

use crate::sql::{Dialect, Sql, Ts, stmt};
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{Cause, LineUserId, MemberId, UserRef};
use serde_json::{Value, json};
use sqlx::Database;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The PostgreSQL channel `user_changes`' trigger notifies.
pub const CHANGES_CHANNEL: &str = "renkei_user_changes";

/// One recorded change: its row, its users and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserChanges {
    pub id: i64,
    pub users: Vec<UserRef>,
    pub cause: Cause,
    pub changed_at: DateTime<Utc>,
}

#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Claims up to `limit` rows nobody holds (or whose claim ran out),
    /// oldest first, for `owner` until `until`.
    async fn claim_changes(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<UserChanges>>;

    /// Deletes rows whose users are re-evaluated.
    async fn finish_changes(&self, ids: &[i64]) -> StoreResult<()>;

    /// Gives `owner`'s claimed rows back (a stop), for another evaluator to
    /// take at once.
    async fn release_changes(&self, owner: &str, ids: &[i64]) -> StoreResult<()>;

    /// Whether a row waits that nobody holds (or whose claim ran out): a
    /// read, so polling never takes SQLite's writer.
    async fn changes_claimable(&self, now: DateTime<Utc>) -> StoreResult<bool>;

    /// The newest row's id (0 when the feed is empty).
    async fn last_change_id(&self) -> StoreResult<i64>;

    /// Rows up to `through` not yet finished, claimed or not.
    async fn changes_left_through(&self, through: i64) -> StoreResult<u64>;

    /// Wakes `wake` whenever any process records a change, where the
    /// backend can tell (PostgreSQL's LISTEN, on its own connection, until
    /// the returned task is aborted); `None` where it cannot (SQLite).
    async fn listen_for_changes(&self, wake: Arc<Notify>) -> StoreResult<Option<JoinHandle<()>>>;
}

/// What differs per backend.
#[async_trait]
pub trait ChangesSql: Sql {
    /// `$1` owner, `$2` until, `$3` now, `$4` limit; returns `id, users, cause, changed_at`.
    const CLAIM_CHANGES: &'static str;

    async fn listen(&self, wake: Arc<Notify>) -> StoreResult<Option<JoinHandle<()>>>;
}

/// Records that `users` changed, inside the writer's transaction: one row
/// for the lot (nothing when there are none).
pub(crate) async fn record_changes_tx<DB: Dialect>(
    conn: &mut <DB as Database>::Connection,
    users: &[UserRef],
    cause: Cause,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    if users.is_empty() {
        return Ok(());
    }
    let encoded = Value::Array(users.iter().map(user_to_json).collect()).to_string();
    stmt::<DB>("INSERT INTO user_changes (users, cause, changed_at) VALUES ($1, $2, $3)")
        .bind(&encoded)
        .bind(cause.as_str())
        .bind(Ts(at))
        .execute_in(conn)
        .await?;
    Ok(())
}

#[async_trait]
impl<S: ChangesSql> ChangeFeed for S {
    async fn claim_changes(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<UserChanges>> {
        let mut claimed = stmt::<S::Db>(S::CLAIM_CHANGES)
            .bind(owner)
            .bind(Ts(until))
            .bind(Ts(now))
            .bind(limit)
            .all(self.writer(), |row| {
                let cause = row.string("cause")?;
                Ok(UserChanges {
                    id: row.int("id")?,
                    users: users_from_json(&row.string("users")?)?,
                    cause: Cause::parse(&cause).ok_or_else(|| corrupt(&format!("cause {cause:?}")))?,
                    changed_at: row.ts("changed_at")?,
                })
            })
            .await?;
        // RETURNING's order is not the subquery's.
        claimed.sort_by_key(|change| change.id);
        Ok(claimed)
    }

    async fn finish_changes(&self, ids: &[i64]) -> StoreResult<()> {
        let mut tx = S::Db::begin(self.writer()).await?;
        for id in ids {
            stmt::<S::Db>("DELETE FROM user_changes WHERE id = $1").bind(*id).execute_in(&mut tx).await?;
        }
        S::Db::commit(tx).await
    }

    async fn release_changes(&self, owner: &str, ids: &[i64]) -> StoreResult<()> {
        let mut tx = S::Db::begin(self.writer()).await?;
        for id in ids {
            stmt::<S::Db>(
                "UPDATE user_changes SET claimed_by = NULL, claimed_until = NULL WHERE id = $1 AND claimed_by = $2",
            )
            .bind(*id)
            .bind(owner)
            .execute_in(&mut tx)
            .await?;
        }
        S::Db::commit(tx).await
    }

    async fn changes_claimable(&self, now: DateTime<Utc>) -> StoreResult<bool> {
        stmt::<S::Db>(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM (SELECT id FROM user_changes
             WHERE claimed_until IS NULL OR claimed_until <= $1 LIMIT 1) AS waiting",
        )
        .bind(Ts(now))
        .one(self.reader(), |row| row.int("n"))
        .await
        .map(|n| n > 0)
    }

    async fn last_change_id(&self) -> StoreResult<i64> {
        stmt::<S::Db>("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) AS id FROM user_changes")
            .one(self.reader(), |row| row.int("id"))
            .await
    }

    async fn changes_left_through(&self, through: i64) -> StoreResult<u64> {
        stmt::<S::Db>("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM user_changes WHERE id <= $1")
            .bind(through)
            .one(self.reader(), |row| row.int("n"))
            .await
            .map(|n| n.max(0) as u64)
    }

    async fn listen_for_changes(&self, wake: Arc<Notify>) -> StoreResult<Option<JoinHandle<()>>> {
        self.listen(wake).await
    }
}

/// The users a write touched, for its change row: each once, in order.
pub(crate) fn distinct(users: impl IntoIterator<Item = UserRef>) -> Vec<UserRef> {
    let mut seen = std::collections::HashSet::new();
    users.into_iter().filter(|user| seen.insert(user.clone())).collect()
}

/// `["line", id]` or `["member", id]` (also the pending area's form).
pub(crate) fn user_to_json(user: &UserRef) -> Value {
    match user {
        UserRef::LineUser(id) => json!(["line", id.as_str()]),
        UserRef::Member(id) => json!(["member", id.as_str()]),
    }
}

/// The inverse of [`user_to_json`], from `kind` and `id`.
pub(crate) fn user_from_parts(kind: &str, id: &str) -> Result<UserRef, String> {
    match kind {
        "line" => LineUserId::parse(id).map(UserRef::LineUser).map_err(|e| e.to_string()),
        "member" => MemberId::parse(id).map(UserRef::Member).map_err(|e| e.to_string()),
        other => Err(format!("kind {other:?}")),
    }
}

fn users_from_json(text: &str) -> StoreResult<Vec<UserRef>> {
    let value: Value = serde_json::from_str(text).map_err(|e| corrupt(&e.to_string()))?;
    let entries = value.as_array().ok_or_else(|| corrupt("not an array"))?;
    entries
        .iter()
        .map(|entry| match entry.as_array().map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>()) {
            Some(parts) if parts.len() == 2 => user_from_parts(parts[0], parts[1]).map_err(|e| corrupt(&e)),
            _ => Err(corrupt(&format!("entry {entry}"))),
        })
        .collect()
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("user_changes: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_round_trip_through_their_json() {
        let users = vec![
            UserRef::LineUser(LineUserId::parse(&format!("U{:032x}", 7)).expect("valid")),
            UserRef::Member(MemberId::parse("m-1").expect("valid")),
        ];
        let text = Value::Array(users.iter().map(user_to_json).collect()).to_string();
        assert_eq!(users_from_json(&text).expect("valid"), users);
        assert!(users_from_json("[[\"robot\", \"x\"]]").is_err());
        assert!(users_from_json("{}").is_err());
    }

    #[test]
    fn distinct_keeps_the_first_of_each() {
        let m = |s: &str| UserRef::Member(MemberId::parse(s).expect("valid"));
        assert_eq!(distinct([m("a"), m("b"), m("a")]), vec![m("a"), m("b")]);
    }
}
