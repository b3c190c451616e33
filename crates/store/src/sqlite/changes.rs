//! SQLite's side of the change feed: the single writer needs no SKIP
//! LOCKED, and nothing notifies other processes (evaluators poll).

use crate::SqliteStore;
use crate::StoreResult;
use crate::changes::ChangesSql;
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[async_trait]
impl ChangesSql for SqliteStore {
    const CLAIM_CHANGES: &'static str = "UPDATE user_changes SET claimed_by = $1, claimed_until = $2
         WHERE id IN (SELECT id FROM user_changes
                      WHERE claimed_until IS NULL OR claimed_until <= $3
                      ORDER BY id LIMIT $4)
         RETURNING id, users, cause, changed_at";

    async fn listen(&self, _wake: Arc<Notify>) -> StoreResult<Option<JoinHandle<()>>> {
        Ok(None)
    }
}
