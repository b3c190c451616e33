//! Leases: named singleton work that one instance does at a time (the
//! start-up rich-menu sync, quota polling, …). A holder keeps its lease by
//! renewing it before it expires; when a holder dies, another instance
//! takes the lease over once it has expired. Marks record that such work was
//! done (and for what). The same SQL on both backends.

use crate::StoreResult;
use crate::sql::{Dialect, Sql, Ts, stmt};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Pool;

/// Who holds a lease, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseHolder {
    pub name: String,
    pub holder: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes lease `name` for `holder` until `until`, or renews it when
    /// `holder` has it already. `false` when another holder's lease is still
    /// running at `now`.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Gives the lease up (only if `holder` has it), so another instance can
    /// take over at once.
    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()>;

    /// Every lease, expired or not, by name.
    async fn leases(&self) -> StoreResult<Vec<LeaseHolder>>;

    /// Records that singleton work `name` was done, with `value` (e.g. what
    /// it was done for), at `at`; replaces the previous mark.
    async fn set_mark(&self, name: &str, value: &str, at: DateTime<Utc>) -> StoreResult<()>;

    /// The last mark of `name`: its value and when.
    async fn mark(&self, name: &str) -> StoreResult<Option<(String, DateTime<Utc>)>>;
}

#[async_trait]
impl<S: Sql> LeaseStore for S {
    async fn set_mark(&self, name: &str, value: &str, at: DateTime<Utc>) -> StoreResult<()> {
        stmt::<S::Db>(
            "INSERT INTO marks (name, value, at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, at = excluded.at",
        )
        .bind(name)
        .bind(value)
        .bind(Ts(at))
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn mark(&self, name: &str) -> StoreResult<Option<(String, DateTime<Utc>)>> {
        stmt::<S::Db>("SELECT value, at FROM marks WHERE name = $1")
            .bind(name)
            .optional(self.reader(), |row| Ok((row.string("value")?, row.ts("at")?)))
            .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        acquire_on::<S::Db>(self.writer(), name, holder, now, until).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        release_on::<S::Db>(self.writer(), name, holder).await
    }

    async fn leases(&self) -> StoreResult<Vec<LeaseHolder>> {
        stmt::<S::Db>("SELECT name, holder, acquired_at, expires_at FROM leases ORDER BY name")
            .all(self.reader(), |row| {
                Ok(LeaseHolder {
                    name: row.string("name")?,
                    holder: row.string("holder")?,
                    acquired_at: row.ts("acquired_at")?,
                    expires_at: row.ts("expires_at")?,
                })
            })
            .await
    }
}

/// [`LeaseStore::acquire_lease`] on the `leases` table `pool` reaches (the
/// main database's; SQLite's inbox file has a `leases` table of its own for
/// the webhook relay).
pub(crate) async fn acquire_on<DB: Dialect>(
    pool: &Pool<DB>,
    name: &str,
    holder: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> StoreResult<bool> {
    // One statement: the row lock (PostgreSQL) or the single writer
    // (SQLite) makes the check and the take atomic.
    let taken = stmt::<DB>(
        "INSERT INTO leases (name, holder, acquired_at, expires_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at,
             acquired_at = CASE WHEN leases.holder = excluded.holder THEN leases.acquired_at
                                ELSE excluded.acquired_at END
         WHERE leases.holder = excluded.holder OR leases.expires_at <= excluded.acquired_at
         RETURNING holder",
    )
    .bind(name)
    .bind(holder)
    .bind(Ts(now))
    .bind(Ts(until))
    .optional(pool, |row| row.string("holder"))
    .await?;
    Ok(taken.is_some())
}

/// [`LeaseStore::release_lease`] on the `leases` table `pool` reaches.
pub(crate) async fn release_on<DB: Dialect>(pool: &Pool<DB>, name: &str, holder: &str) -> StoreResult<()> {
    stmt::<DB>("DELETE FROM leases WHERE name = $1 AND holder = $2").bind(name).bind(holder).execute(pool).await?;
    Ok(())
}
