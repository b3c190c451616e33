//! PostgreSQL's side of the rich-menu state.

use crate::rich_menus::{RichMenusSql, last_per_user};
use crate::{PgStore, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::LineUserId;

/// Per-user values deduplicated (last wins) and sorted, so concurrent
/// batches lock rows in the same order.
fn pg_user_values(items: &[(LineUserId, Option<String>)]) -> (Vec<&str>, Vec<Option<&str>>) {
    let mut values = last_per_user(items);
    values.sort_by(|a, b| a.0.cmp(b.0));
    values.into_iter().unzip()
}

#[async_trait]
impl RichMenusSql for PgStore {
    // SKIP LOCKED: instances lease disjoint users.
    const CLAIM_CHANGES: &'static str = "UPDATE rich_menu_state SET lease_owner = $1, lease_until = $2
             WHERE line_user_id IN (SELECT line_user_id FROM rich_menu_state
                                    WHERE desired IS DISTINCT FROM linked
                                      AND (lease_until IS NULL OR lease_until <= $3)
                                      AND (retry_at IS NULL OR retry_at <= $3)
                                    ORDER BY line_user_id LIMIT $4
                                    FOR UPDATE SKIP LOCKED)
             RETURNING line_user_id, desired, linked";

    // A new wish clears the back-off of the previous one.
    const SET_DESIRED: &'static str = "INSERT INTO rich_menu_state (line_user_id, desired, linked, updated_at)
             SELECT u, m, NULL, $3 FROM UNNEST($1::text[], $2::text[]) AS s (u, m)
             ON CONFLICT (line_user_id) DO UPDATE SET desired = excluded.desired, retry_at = NULL,
                 updated_at = excluded.updated_at
             WHERE rich_menu_state.desired IS DISTINCT FROM excluded.desired";

    // A user never given a wish is taken to want what it has.
    const MARK_LINKED: &'static str = "INSERT INTO rich_menu_state (line_user_id, desired, linked, updated_at)
             SELECT u, m, m, $3 FROM UNNEST($1::text[], $2::text[]) AS s (u, m)
             ON CONFLICT (line_user_id) DO UPDATE SET linked = excluded.linked, lease_owner = NULL,
                 lease_until = NULL, retry_at = NULL, last_error = NULL, updated_at = excluded.updated_at";

    // One UNNEST upsert per batch.
    async fn upsert_per_user(
        &self,
        upsert: &'static str,
        items: &[(LineUserId, Option<String>)],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (users, menus) = pg_user_values(items);
        sqlx::query(upsert).bind(&users).bind(&menus).bind(now).execute(&self.pool).await?;
        Ok(())
    }

    async fn release(&self, users: &[LineUserId], retry_at: DateTime<Utc>, error: &str) -> StoreResult<()> {
        let ids: Vec<&str> = users.iter().map(|u| u.as_str()).collect();
        sqlx::query(
            "UPDATE rich_menu_state SET lease_owner = NULL, lease_until = NULL, retry_at = $1, last_error = $2
             WHERE line_user_id = ANY($3)",
        )
        .bind(retry_at)
        .bind(error)
        .bind(&ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
