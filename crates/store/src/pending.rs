//! Re-evaluations left waiting by a stop: the segment engine's change queue
//! lives in memory, so a graceful stop writes what still waits here and the
//! next start queues it again (then removes the row). The same SQL on both
//! backends; one row per stop, its users as one JSON document.

use crate::changes::{user_from_parts, user_to_json};
use crate::sql::{Sql, Ts, stmt};
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{Cause, UserRef};
use serde_json::{Value, json};

/// What one stop left waiting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PendingEvaluations {
    /// Users to re-evaluate, each with the cause it was reported with.
    pub users: Vec<(UserRef, Cause)>,
    /// A full recompute was due (the queue had overflowed).
    pub everyone: bool,
}

impl PendingEvaluations {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && !self.everyone
    }
}

/// A saved row: its id (to remove it once done) and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedPending {
    pub id: i64,
    pub saved_at: DateTime<Utc>,
    pub pending: PendingEvaluations,
}

#[async_trait]
pub trait PendingStore: Send + Sync + 'static {
    /// Saves what a stop left waiting (nothing when it is empty).
    async fn save_pending(&self, pending: &PendingEvaluations, at: DateTime<Utc>) -> StoreResult<()>;

    /// Every saved row, oldest first.
    async fn saved_pending(&self) -> StoreResult<Vec<SavedPending>>;

    /// Removes a row whose users have been re-evaluated.
    async fn remove_pending(&self, id: i64) -> StoreResult<()>;
}

#[async_trait]
impl<S: Sql> PendingStore for S {
    async fn save_pending(&self, pending: &PendingEvaluations, at: DateTime<Utc>) -> StoreResult<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let document = to_json(pending);
        stmt::<S::Db>("INSERT INTO pending_evaluations (users, saved_at) VALUES ($1, $2)")
            .bind(&document)
            .bind(Ts(at))
            .execute(self.writer())
            .await?;
        Ok(())
    }

    async fn saved_pending(&self) -> StoreResult<Vec<SavedPending>> {
        stmt::<S::Db>("SELECT id, users, saved_at FROM pending_evaluations ORDER BY id")
            .all(self.reader(), |row| {
                Ok(SavedPending {
                    id: row.int("id")?,
                    saved_at: row.ts("saved_at")?,
                    pending: from_json(&row.json("users")?)?,
                })
            })
            .await
    }

    async fn remove_pending(&self, id: i64) -> StoreResult<()> {
        stmt::<S::Db>("DELETE FROM pending_evaluations WHERE id = $1").bind(id).execute(self.writer()).await?;
        Ok(())
    }
}

fn to_json(pending: &PendingEvaluations) -> Value {
    let users: Vec<Value> = pending
        .users
        .iter()
        .map(|(user, cause)| {
            let mut entry = user_to_json(user);
            if let Value::Array(parts) = &mut entry {
                parts.push(json!(cause.as_str()));
            }
            entry
        })
        .collect();
    json!({"everyone": pending.everyone, "users": users})
}

fn from_json(document: &Value) -> StoreResult<PendingEvaluations> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("pending_evaluations.users: {what}"));
    let everyone = document["everyone"].as_bool().ok_or_else(|| corrupt("no `everyone`"))?;
    let entries = document["users"].as_array().ok_or_else(|| corrupt("no `users` array"))?;
    let mut users = Vec::with_capacity(entries.len());
    for entry in entries {
        let parts: Option<Vec<&str>> = entry.as_array().map(|a| a.iter().filter_map(Value::as_str).collect());
        let (kind, id, cause) = match parts.as_deref() {
            Some([kind, id, cause]) => (*kind, *id, *cause),
            _ => return Err(corrupt(&format!("entry {entry}"))),
        };
        let cause = Cause::parse(cause).ok_or_else(|| corrupt(&format!("cause {cause:?}")))?;
        users.push((user_from_parts(kind, id).map_err(|e| corrupt(&e))?, cause));
    }
    Ok(PendingEvaluations { users, everyone })
}
