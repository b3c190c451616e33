//! SQLite's side of the LINE requests.

use crate::SqliteStore;
use crate::StoreResult;
use crate::requests::{COMPLETE_REQUEST, RequestsSql, request_columns};
use crate::sql::{Ts, stmt};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[async_trait]
impl RequestsSql for SqliteStore {
    // The single writer serialises claims: no row locks to skip.
    const CLAIM_REQUESTS: &'static str = concat!(
        "UPDATE send_requests SET lease_owner = $1, lease_until = $2, attempts = attempts + 1
         WHERE id IN (SELECT id FROM send_requests
                      WHERE status = 'pending' AND next_attempt_at <= $3
                        AND (lease_until IS NULL OR lease_until <= $3)
                      ORDER BY next_attempt_at, id LIMIT $4)
         RETURNING ",
        request_columns!()
    );
    // SQLite's two-argument MAX is PostgreSQL's GREATEST (which skips NULLs).
    const NEXT_REQUEST_DUE: &'static str =
        "SELECT MIN(MAX(next_attempt_at, COALESCE(lease_until, next_attempt_at))) AS due FROM send_requests
         WHERE status = 'pending'";

    // No array parameters: one statement per request, in one transaction.
    async fn complete_requests(&self, done: &[(i64, Option<String>)], at: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.writer.begin().await?;
        for (id, accepted_request_id) in done {
            let complete = stmt::<sqlx::Sqlite>(COMPLETE_REQUEST).bind(accepted_request_id.as_deref());
            complete.bind(Ts(at)).bind(*id).execute_in(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
