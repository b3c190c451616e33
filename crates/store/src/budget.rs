//! The channel's send budget: LINE's per-endpoint rate limits shared by
//! every instance that sends on the channel. One row per endpoint holds the
//! end of the last slot of time granted (GCRA's "theoretical arrival time");
//! a take is ONE statement that grants the next slot, `cost` long, starting
//! at that end or at `now - burst`, whichever is later, and moves the end
//! past it. Slots never overlap, so whatever the number of instances the
//! tokens granted up to any time `t` are at most `rate × (t - first take) +
//! burst + one slot`; an instance that crashes loses only the slots it held.
//! The time is the database's on PostgreSQL (instances' clocks may differ),
//! renkei's on SQLite (one instance). The same SQL on both backends.

use crate::StoreResult;
use crate::sql::{Sql, stmt};
use async_trait::async_trait;

/// A request for the next slot of an endpoint's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetTake<'a> {
    /// The endpoint's bucket (`push`, `multicast`, …).
    pub bucket: &'a str,
    /// Requests per second: the channel's limit for the endpoint.
    pub rate: u32,
    /// How far back an idle bucket's slot may start (µs): the burst allowed.
    pub burst_us: i64,
    /// How long the slot is (µs): the tokens wanted × the interval between two.
    pub cost_us: i64,
}

/// A slot granted, in the store's clock (µs since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSlot {
    pub start_us: i64,
    pub end_us: i64,
    /// The store's time at the take: `start_us - now_us` is how long from
    /// now the slot starts (negative: it started already).
    pub now_us: i64,
}

#[async_trait]
pub trait BudgetStore: Send + Sync + 'static {
    /// Whether other instances may send on this store's channel, so the
    /// budget must be taken from the store (PostgreSQL). On SQLite one
    /// instance sends, and keeps its budget in memory rather than waiting
    /// for the single writer.
    fn budget_shared(&self) -> bool;

    /// Grants the next slot of `take.bucket` (creating the bucket at its first take).
    async fn take_budget(&self, take: BudgetTake<'_>) -> StoreResult<BudgetSlot>;
}

/// What differs per backend: where the time comes from.
pub trait BudgetSql: Sql {
    /// Takes a slot: `$1` bucket, `$2` rate, `$3` burst µs, `$4` cost µs
    /// (and `$5` now µs where [`BudgetSql::bound_now`] gives one);
    /// `RETURNING tat_us, taken_at_us`.
    const TAKE_SLOT: &'static str;
    const SHARED: bool;

    /// The time to bind as `$5`, if the statement does not read the database's clock.
    fn bound_now() -> Option<i64>;
}

/// The take, with `$now` the backend's clock in µs. One statement: the row
/// lock (PostgreSQL) or the single writer (SQLite) makes concurrent takes
/// queue, so their slots follow one another.
macro_rules! take_slot {
    ($now:literal) => {
        concat!(
            "INSERT INTO send_budget (bucket, rate, tat_us, taken_at_us) VALUES ($1, $2, ",
            $now,
            " - $3 + $4, ",
            $now,
            ")
             ON CONFLICT (bucket) DO UPDATE SET rate = excluded.rate, taken_at_us = excluded.taken_at_us,
                 tat_us = CASE WHEN send_budget.tat_us > excluded.taken_at_us - $3 THEN send_budget.tat_us
                               ELSE excluded.taken_at_us - $3 END + $4
             RETURNING tat_us, taken_at_us"
        )
    };
}

// `statement_timestamp()`: one value for the whole statement, the time it arrived.
pub(crate) const TAKE_SLOT_POSTGRES: &str =
    take_slot!("CAST(EXTRACT(EPOCH FROM statement_timestamp()) * 1000000 AS BIGINT)");
pub(crate) const TAKE_SLOT_SQLITE: &str = take_slot!("$5");

#[async_trait]
impl<S: BudgetSql> BudgetStore for S {
    fn budget_shared(&self) -> bool {
        S::SHARED
    }

    async fn take_budget(&self, take: BudgetTake<'_>) -> StoreResult<BudgetSlot> {
        let mut query = stmt::<S::Db>(S::TAKE_SLOT)
            .bind(take.bucket)
            .bind(take.rate)
            .bind(take.burst_us.max(0))
            .bind(take.cost_us.max(0));
        if let Some(now) = S::bound_now() {
            query = query.bind(now);
        }
        let (end_us, now_us) =
            query.one(self.writer(), |row| Ok((row.int("tat_us")?, row.int("taken_at_us")?))).await?;
        Ok(BudgetSlot { start_us: end_us - take.cost_us.max(0), end_us, now_us })
    }
}

impl BudgetSql for crate::PgStore {
    const TAKE_SLOT: &'static str = TAKE_SLOT_POSTGRES;
    const SHARED: bool = true;

    fn bound_now() -> Option<i64> {
        None
    }
}

impl BudgetSql for crate::SqliteStore {
    const TAKE_SLOT: &'static str = TAKE_SLOT_SQLITE;
    const SHARED: bool = false;

    fn bound_now() -> Option<i64> {
        Some(chrono::Utc::now().timestamp_micros())
    }
}
