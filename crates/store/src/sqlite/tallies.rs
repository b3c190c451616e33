//! SQLite's side of building the tallies (see `tallies.rs`): the one
//! writer's transaction keeps inserts out meanwhile.

use super::{from_micros, json_text, to_micros};
use crate::events::EventsSql;
use crate::tallies::{Adder, BUILD_CHUNK, BuildPlan, StoredRow};
use crate::{SqliteStore, StoreResult};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::Row;

impl SqliteStore {
    /// Builds the tallies whose keys are new (`all`: every key) from the
    /// stored events, and deletes those of keys gone.
    pub(crate) async fn build_tallies(&self, all: bool, at: DateTime<Utc>) -> StoreResult<()> {
        let Some(tallier) = self.tallier.get_any() else { return Ok(()) };
        let mut tx = self.writer.begin().await?;
        let built: Vec<String> = sqlx::query_scalar("SELECT key FROM event_tally_keys").fetch_all(&mut *tx).await?;
        let plan = BuildPlan::new(tallier.as_ref(), &built, all);
        if plan.is_empty() {
            return Ok(());
        }
        let delete = json_text(&plan.delete, "tally keys")?;
        for table in ["event_tallies", "event_tally_keys"] {
            let sql = format!("DELETE FROM {table} WHERE key IN (SELECT value FROM json_each($1))");
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&delete).execute(&mut *tx).await?;
        }
        let mut adder = Adder::new(tallier.as_ref(), Some(plan.build.clone()));
        {
            let mut rows = sqlx::query(
                "SELECT line_user_id, member_id, type, occurred_at, received_at, properties FROM events
                 WHERE type IN (SELECT value FROM json_each($1)) AND occurred_at <= received_at",
            )
            .bind(json_text(&plan.types, "event types")?)
            .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                adder.add_stored(StoredRow {
                    line_user_id: row.try_get(0)?,
                    member_id: row.try_get(1)?,
                    event_type: row.try_get(2)?,
                    occurred_at: from_micros(row.try_get(3)?)?,
                    received_at: from_micros(row.try_get(4)?)?,
                    properties: row.try_get(5)?,
                });
            }
        }
        for chunk in adder.finish().chunks(BUILD_CHUNK) {
            <SqliteStore as EventsSql>::add_tallies_tx(&mut tx, chunk).await?;
        }
        let tallies = tallier.tallies();
        for &i in &plan.build {
            sqlx::query("INSERT INTO event_tally_keys (key, event_type, built_at) VALUES ($1, $2, $3)")
                .bind(&tallies[i].0)
                .bind(&tallies[i].1)
                .bind(to_micros(at))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
