//! The database check behind `/healthz` (and the pending webhook count on
//! `/metrics`): a background task pings every second and the routes answer
//! from its last result, so they never wait behind a busy database.

use renkei_store::Store;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the database is pinged (and pending webhook events counted) for
/// `/healthz` and `/metrics`, which answer from the last result.
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// A ping slower than this counts as a failure.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// `/healthz` reports unavailable when the last good ping is older than this.
const HEALTH_STALE: Duration = Duration::from_secs(5);

/// The last database check, kept by a background task ([`Health::probe`]).
pub(crate) struct Health {
    pub(crate) store: Arc<dyn Store>,
    started: Instant,
    /// Milliseconds after `started` of the last good ping (`-1`: none yet).
    last_ok: AtomicI64,
    ok: AtomicBool,
    /// Stored LINE webhook events not processed yet (`-1`: unknown, or no webhook role).
    pub(crate) webhook_pending: AtomicI64,
    webhook: bool,
}

impl Health {
    pub(crate) fn new(store: Arc<dyn Store>, webhook: bool) -> Self {
        Self {
            store,
            started: Instant::now(),
            last_ok: AtomicI64::new(-1),
            ok: AtomicBool::new(false),
            webhook_pending: AtomicI64::new(-1),
            webhook,
        }
    }

    /// One round: a ping, and the pending webhook count when the webhook role is on.
    pub(crate) async fn check(&self) {
        let ok = matches!(tokio::time::timeout(PING_TIMEOUT, self.store.ping()).await, Ok(Ok(())));
        if ok {
            self.last_ok.store(self.started.elapsed().as_millis() as i64, Ordering::Relaxed);
        } else if self.ok.load(Ordering::Relaxed) {
            tracing::warn!("health check: database unavailable");
        }
        self.ok.store(ok, Ordering::Relaxed);
        if self.webhook {
            let pending = match tokio::time::timeout(PING_TIMEOUT, self.store.pending_webhook_events()).await {
                Ok(Ok(pending)) => pending as i64,
                _ => -1,
            };
            self.webhook_pending.store(pending, Ordering::Relaxed);
        }
    }

    /// Checks every [`HEALTH_INTERVAL`] until `stop`.
    pub(crate) async fn probe(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(HEALTH_INTERVAL) => self.check().await,
                () = stop.cancelled() => return,
            }
        }
    }

    /// Healthy: the last ping succeeded, recently.
    pub(crate) fn healthy(&self) -> bool {
        let last = self.last_ok.load(Ordering::Relaxed);
        let age = self.started.elapsed().as_millis() as i64 - last;
        self.ok.load(Ordering::Relaxed) && last >= 0 && age <= HEALTH_STALE.as_millis() as i64
    }
}
