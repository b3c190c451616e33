//! SQLite's side of the rich-menu state.

use super::{to_micros, users_json};
use crate::rich_menus::{RichMenusSql, last_per_user};
use crate::{SqliteStore, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::LineUserId;

#[async_trait]
impl RichMenusSql for SqliteStore {
    // SQLite's IS NOT is PostgreSQL's IS DISTINCT FROM; the single writer needs no SKIP LOCKED.
    const CLAIM_CHANGES: &'static str = "UPDATE rich_menu_state SET lease_owner = $1, lease_until = $2
             WHERE line_user_id IN (SELECT line_user_id FROM rich_menu_state
                                    WHERE desired IS NOT linked
                                      AND (lease_until IS NULL OR lease_until <= $3)
                                      AND (retry_at IS NULL OR retry_at <= $3)
                                    ORDER BY line_user_id LIMIT $4)
             RETURNING line_user_id, desired, linked";

    // A new wish clears the back-off of the previous one.
    const SET_DESIRED: &'static str = "INSERT INTO rich_menu_state (line_user_id, desired, linked, updated_at)
             VALUES (?, ?, NULL, ?)
             ON CONFLICT (line_user_id) DO UPDATE SET desired = excluded.desired, retry_at = NULL,
                 updated_at = excluded.updated_at
             WHERE rich_menu_state.desired IS NOT excluded.desired";

    // A user never given a wish is taken to want what it has.
    const MARK_LINKED: &'static str = "INSERT INTO rich_menu_state (line_user_id, desired, linked, updated_at)
             VALUES (?1, ?2, ?2, ?3)
             ON CONFLICT (line_user_id) DO UPDATE SET linked = excluded.linked, lease_owner = NULL,
                 lease_until = NULL, retry_at = NULL, last_error = NULL, updated_at = excluded.updated_at";

    // No array parameters: one upsert per user, in one transaction.
    async fn upsert_per_user(
        &self,
        upsert: &'static str,
        items: &[(LineUserId, Option<String>)],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let now = to_micros(now);
        let mut tx = self.writer.begin().await?;
        for (user, menu) in last_per_user(items) {
            sqlx::query(upsert).bind(user).bind(menu).bind(now).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // The users as a JSON array (json_each): SQLite has no array parameters.
    async fn release(&self, users: &[LineUserId], retry_at: DateTime<Utc>, error: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE rich_menu_state SET lease_owner = NULL, lease_until = NULL, retry_at = ?, last_error = ?
             WHERE line_user_id IN (SELECT value FROM json_each(?))",
        )
        .bind(to_micros(retry_at))
        .bind(error)
        .bind(users_json(users))
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}
