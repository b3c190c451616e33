//! PostgreSQL's side of the change feed: claims skip rows another
//! evaluator holds, and `user_changes`' trigger notifies a channel that
//! wakes evaluators in every process.

use crate::PgStore;
use crate::StoreResult;
use crate::changes::{CHANGES_CHANNEL, ChangesSql};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

#[async_trait]
impl ChangesSql for PgStore {
    // SKIP LOCKED: evaluators of several instances claim disjoint rows.
    const CLAIM_CHANGES: &'static str = "UPDATE user_changes SET claimed_by = $1, claimed_until = $2
         WHERE id IN (SELECT id FROM user_changes
                      WHERE claimed_until IS NULL OR claimed_until <= $3
                      ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED)
         RETURNING id, users, cause, changed_at";

    async fn listen(&self, wake: Arc<Notify>) -> StoreResult<Option<JoinHandle<()>>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANGES_CHANNEL).await?;
        Ok(Some(tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(_) => wake.notify_one(),
                    Err(error) => {
                        // The listener reconnects at its next receive; polling covers the gap.
                        tracing::warn!(%error, "listening for changes failed; polling meanwhile");
                        wake.notify_one();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })))
    }
}
