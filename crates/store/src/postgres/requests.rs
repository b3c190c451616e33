//! PostgreSQL's side of the LINE requests.

use crate::PgStore;
use crate::StoreResult;
use crate::requests::{RequestsSql, request_columns};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[async_trait]
impl RequestsSql for PgStore {
    // SKIP LOCKED: senders of several instances lease disjoint requests.
    // `= ANY(ARRAY(..))`: the claimed ids drive the update (`IN` lets the
    // planner scan every request ever sent to join them).
    const CLAIM_REQUESTS: &'static str = concat!(
        "UPDATE send_requests SET lease_owner = $1, lease_until = $2, attempts = attempts + 1
         WHERE id = ANY(ARRAY(SELECT id FROM send_requests
                              WHERE status = 'pending' AND next_attempt_at <= $3
                                AND (lease_until IS NULL OR lease_until <= $3)
                              ORDER BY next_attempt_at, id LIMIT $4
                              FOR UPDATE SKIP LOCKED))
         RETURNING ",
        request_columns!()
    );
    const NEXT_REQUEST_DUE: &'static str =
        "SELECT MIN(GREATEST(next_attempt_at, lease_until)) AS due FROM send_requests WHERE status = 'pending'";

    // One UNNEST statement for the batch.
    async fn complete_requests(&self, done: &[(i64, Option<String>)], at: DateTime<Utc>) -> StoreResult<()> {
        let ids: Vec<i64> = done.iter().map(|(id, _)| *id).collect();
        let accepted: Vec<Option<String>> = done.iter().map(|(_, a)| a.clone()).collect();
        // `r.id = ANY($1)` finds the requests by key, not by joining all of them.
        sqlx::query(
            "UPDATE send_requests r SET status = 'sent', accepted_request_id = COALESCE(d.accepted, r.accepted_request_id),
             sent_at = $3, finished_at = $3, lease_owner = NULL, lease_until = NULL
             FROM unnest($1::bigint[], $2::text[]) AS d(id, accepted) WHERE r.id = d.id AND r.id = ANY($1)",
        )
        .bind(&ids)
        .bind(&accepted)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
