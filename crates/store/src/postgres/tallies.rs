//! PostgreSQL's side of building the tallies (see `tallies.rs`).

use crate::events::EventsSql;
use crate::tallies::{Adder, BUILD_CHUNK, BuildPlan, StoredRow};
use crate::{PgStore, StoreResult};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::Row;

impl PgStore {
    /// Builds the tallies whose keys are new (`all`: every key) from the
    /// stored events, and deletes those of keys gone. Inserts that add to
    /// tallies wait meanwhile, and the build waits for those already adding:
    /// it sees each batch either whole, committed, or not at all, and a
    /// batch not seen adds itself after.
    pub(crate) async fn build_tallies(&self, all: bool, at: DateTime<Utc>) -> StoreResult<()> {
        let Some(tallier) = self.tallier.get_any() else { return Ok(()) };
        let built: Vec<String> = sqlx::query_scalar("SELECT key FROM event_tally_keys").fetch_all(&self.pool).await?;
        if BuildPlan::new(tallier.as_ref(), &built, all).is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE event_tallies IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
        let built: Vec<String> = sqlx::query_scalar("SELECT key FROM event_tally_keys").fetch_all(&mut *tx).await?;
        let plan = BuildPlan::new(tallier.as_ref(), &built, all);
        sqlx::query("DELETE FROM event_tallies WHERE key = ANY($1)").bind(&plan.delete).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM event_tally_keys WHERE key = ANY($1)").bind(&plan.delete).execute(&mut *tx).await?;
        if plan.build.is_empty() {
            tx.commit().await?;
            return Ok(());
        }
        let mut adder = Adder::new(tallier.as_ref(), Some(plan.build.clone()));
        {
            let mut rows = sqlx::query(
                "SELECT line_user_id, member_id, type, occurred_at, received_at, properties::text FROM events
                 WHERE type = ANY($1) AND occurred_at <= received_at",
            )
            .bind(&plan.types)
            .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                adder.add_stored(StoredRow {
                    line_user_id: row.try_get(0)?,
                    member_id: row.try_get(1)?,
                    event_type: row.try_get(2)?,
                    occurred_at: row.try_get(3)?,
                    received_at: row.try_get(4)?,
                    properties: row.try_get(5)?,
                });
            }
        }
        for chunk in adder.finish().chunks(BUILD_CHUNK) {
            <PgStore as EventsSql>::add_tallies_tx(&mut tx, chunk).await?;
        }
        let tallies = tallier.tallies();
        let (keys, types): (Vec<&str>, Vec<&str>) =
            plan.build.iter().map(|&i| (tallies[i].0.as_str(), tallies[i].1.as_str())).unzip();
        sqlx::query(
            "INSERT INTO event_tally_keys (key, event_type, built_at) SELECT k, t, $3 FROM UNNEST($1::text[], $2::text[]) AS u (k, t)",
        )
        .bind(&keys)
        .bind(&types)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
