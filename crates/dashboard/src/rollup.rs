//! The dashboard's roll-up: once an hour, one instance (lease
//! `dashboard_rollup`) folds the hourly counts older than
//! [`FOLD_AFTER_DAYS`] into one row per metric and key
//! (`OverviewReads::fold_hours_before`), so the sums the pages read (the
//! overview's levels, segment sizes) stay a few thousand rows however long
//! renkei runs. The series shown (30 days) never reach the folded hours.

use crate::DashboardStore;
use renkei_core::Clock;
use renkei_store::StoreResult;
use std::sync::Arc;
use std::time::Duration;

/// Hours older than this are folded: more than the 30 days shown, with a
/// margin for any timezone.
pub const FOLD_AFTER_DAYS: i64 = 40;
const LEASE: &str = "dashboard_rollup";
/// How long a fold may hold the lease.
const LEASE_FOR: chrono::Duration = chrono::Duration::minutes(10);
const EVERY: Duration = Duration::from_secs(3600);

pub struct Rollup {
    store: DashboardStore,
    clock: Arc<dyn Clock>,
    holder: String,
}

impl Rollup {
    pub fn new(store: DashboardStore, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock, holder: format!("rollup-{}", crate::auth::random_token()) }
    }

    /// One fold, if this instance gets the lease: the rows folded, `None` when another holds it.
    pub async fn fold_once(&self) -> StoreResult<Option<u64>> {
        let now = self.clock.now();
        if !self.store.leases.acquire_lease(LEASE, &self.holder, now, now + LEASE_FOR).await? {
            return Ok(None);
        }
        let folded = self.store.overview.fold_hours_before(now - chrono::Duration::days(FOLD_AFTER_DAYS)).await;
        self.store.leases.release_lease(LEASE, &self.holder).await?;
        folded.map(Some)
    }

    /// Folds once an hour until `stop` completes.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        loop {
            match self.fold_once().await {
                Ok(Some(rows)) if rows > 0 => tracing::info!(rows, "dashboard counts: old hours folded"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "dashboard counts: folding old hours failed; retried in an hour"),
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    }
}
