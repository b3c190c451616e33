//! What the scheduler keeps: campaign pause state and first-enabled times,
//! the cron fires of scheduled campaigns, and the cursors of the tables it
//! tails. The same SQL on both backends.

use crate::StoreResult;
use crate::sql::{Dialect, Row, Sql, Ts, stmt};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
pub use renkei_core::FireState;
use serde::Serialize;

/// A recorded cron fire of a scheduled campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CronFire {
    pub campaign_id: String,
    pub fire_at: DateTime<Utc>,
    pub state: FireState,
}

#[async_trait]
pub trait ScheduleStore: Send + Sync + 'static {
    async fn set_campaign_paused(&self, campaign_id: &str, paused: bool, at: DateTime<Utc>) -> StoreResult<()>;

    async fn paused_campaigns(&self) -> StoreResult<Vec<String>>;

    /// Records that a campaign was first seen enabled at `at` (kept if already
    /// recorded). Returns the stored instant: segment entries before it do not trigger.
    async fn campaign_enabled_at(&self, campaign_id: &str, at: DateTime<Utc>) -> StoreResult<DateTime<Utc>>;

    /// Records a fire in `state`. `true` when this call recorded it, `false`
    /// when it was recorded before (by this or another instance).
    async fn record_fire(&self, campaign_id: &str, fire_at: DateTime<Utc>, state: FireState) -> StoreResult<bool>;

    async fn set_fire_state(&self, campaign_id: &str, fire_at: DateTime<Utc>, state: FireState) -> StoreResult<()>;

    /// The latest recorded fire of a campaign.
    async fn last_fire(&self, campaign_id: &str) -> StoreResult<Option<CronFire>>;

    /// Fires left `started` (a crash while enqueueing), to finish.
    async fn unfinished_fires(&self) -> StoreResult<Vec<CronFire>>;

    async fn get_cursor(&self, name: &str) -> StoreResult<Option<i64>>;

    async fn set_cursor(&self, name: &str, value: i64) -> StoreResult<()>;

    /// The start of window `name` that `at` falls in: the stored start while
    /// `at` is before its end (start + `length`), else `at`, stored as the
    /// next window's start. One statement, so instances handling the same
    /// or concurrent instants agree on the window.
    async fn open_window(&self, name: &str, at: DateTime<Utc>, length: chrono::Duration) -> StoreResult<DateTime<Utc>>;

    /// The largest transition row id (0 when none).
    async fn max_transition_id(&self) -> StoreResult<i64>;
}

#[async_trait]
impl<S: Sql> ScheduleStore for S {
    async fn set_campaign_paused(&self, campaign_id: &str, paused: bool, at: DateTime<Utc>) -> StoreResult<()> {
        stmt::<S::Db>(
            "INSERT INTO campaign_state (campaign_id, paused, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (campaign_id) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
        )
        .bind(campaign_id)
        .bind(paused)
        .bind(Ts(at))
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn paused_campaigns(&self) -> StoreResult<Vec<String>> {
        stmt::<S::Db>("SELECT campaign_id FROM campaign_state WHERE paused ORDER BY campaign_id")
            .all(self.reader(), |row| row.string("campaign_id"))
            .await
    }

    async fn campaign_enabled_at(&self, campaign_id: &str, at: DateTime<Utc>) -> StoreResult<DateTime<Utc>> {
        stmt::<S::Db>(
            "INSERT INTO campaign_state (campaign_id, paused, enabled_at, updated_at) VALUES ($1, FALSE, $2, $2)
             ON CONFLICT (campaign_id) DO UPDATE SET enabled_at = COALESCE(campaign_state.enabled_at, excluded.enabled_at)
             RETURNING enabled_at",
        )
        .bind(campaign_id)
        .bind(Ts(at))
        .one(self.writer(), |row| row.ts("enabled_at"))
        .await
    }

    async fn record_fire(&self, campaign_id: &str, fire_at: DateTime<Utc>, state: FireState) -> StoreResult<bool> {
        let inserted = stmt::<S::Db>(
            "INSERT INTO cron_fires (campaign_id, fire_at, state) VALUES ($1, $2, $3)
             ON CONFLICT (campaign_id, fire_at) DO NOTHING",
        )
        .bind(campaign_id)
        .bind(Ts(fire_at))
        .bind(state.as_str())
        .execute(self.writer())
        .await?;
        Ok(inserted == 1)
    }

    async fn set_fire_state(&self, campaign_id: &str, fire_at: DateTime<Utc>, state: FireState) -> StoreResult<()> {
        stmt::<S::Db>(
            "INSERT INTO cron_fires (campaign_id, fire_at, state) VALUES ($1, $2, $3)
             ON CONFLICT (campaign_id, fire_at) DO UPDATE SET state = excluded.state",
        )
        .bind(campaign_id)
        .bind(Ts(fire_at))
        .bind(state.as_str())
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn last_fire(&self, campaign_id: &str) -> StoreResult<Option<CronFire>> {
        stmt::<S::Db>(
            "SELECT campaign_id, fire_at, state FROM cron_fires WHERE campaign_id = $1 ORDER BY fire_at DESC LIMIT 1",
        )
        .bind(campaign_id)
        .optional(self.reader(), fire_of)
        .await
    }

    async fn unfinished_fires(&self) -> StoreResult<Vec<CronFire>> {
        stmt::<S::Db>(
            "SELECT campaign_id, fire_at, state FROM cron_fires WHERE state = 'started' ORDER BY fire_at, campaign_id",
        )
        .all(self.reader(), fire_of)
        .await
    }

    async fn get_cursor(&self, name: &str) -> StoreResult<Option<i64>> {
        stmt::<S::Db>("SELECT value FROM cursors WHERE name = $1")
            .bind(name)
            .optional(self.reader(), |row| row.int("value"))
            .await
    }

    async fn set_cursor(&self, name: &str, value: i64) -> StoreResult<()> {
        stmt::<S::Db>(
            "INSERT INTO cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(name)
        .bind(value)
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn open_window(&self, name: &str, at: DateTime<Utc>, length: chrono::Duration) -> StoreResult<DateTime<Utc>> {
        let length = length.num_microseconds().unwrap_or(i64::MAX);
        let start = stmt::<S::Db>(
            "INSERT INTO cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE
             SET value = CASE WHEN excluded.value - cursors.value >= $3 THEN excluded.value ELSE cursors.value END
             RETURNING value",
        )
        .bind(name)
        .bind(at.timestamp_micros())
        .bind(length)
        .one(self.writer(), |row| row.int("value"))
        .await?;
        Ok(DateTime::from_timestamp_micros(start).unwrap_or(at))
    }

    async fn max_transition_id(&self) -> StoreResult<i64> {
        stmt::<S::Db>("SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) AS id FROM segment_transitions")
            .one(self.reader(), |row| row.int("id"))
            .await
    }
}

/// A `cron_fires` row.
fn fire_of<DB: Dialect>(row: Row<'_, DB>) -> StoreResult<CronFire> {
    Ok(CronFire {
        campaign_id: row.string("campaign_id")?,
        fire_at: row.ts("fire_at")?,
        state: row.parsed("state", "cron fire state", FireState::parse)?,
    })
}
