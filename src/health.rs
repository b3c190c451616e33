//! The database check behind `/healthz` (reachability and whether writes are
//! blocked) and the pending webhook and unmerged event counts on `/metrics`: a background task pings every second and the routes answer
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
    /// Events `POST /v1/events` appended and no merger moved yet (`-1`:
    /// unknown, or a store without an inbox).
    pub(crate) events_unmerged: AtomicI64,
    /// How long the writer has been held (ms) when writes are blocked, `0`
    /// when they are not, `-1` when unknown.
    writer_held_ms: AtomicI64,
    writes_blocked: AtomicBool,
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
            events_unmerged: AtomicI64::new(-1),
            writer_held_ms: AtomicI64::new(-1),
            writes_blocked: AtomicBool::new(false),
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
        match tokio::time::timeout(PING_TIMEOUT, self.store.write_state()).await {
            Ok(Ok(writes)) => {
                self.writes_blocked.store(writes.blocked, Ordering::Relaxed);
                self.writer_held_ms.store(writes.held_ms as i64, Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "health check: cannot tell whether writes are blocked");
                self.writer_held_ms.store(-1, Ordering::Relaxed);
            }
            Err(_) => self.writer_held_ms.store(-1, Ordering::Relaxed),
        }
        if self.webhook {
            let pending = match tokio::time::timeout(PING_TIMEOUT, self.store.pending_webhook_events()).await {
                Ok(Ok(pending)) => pending as i64,
                _ => -1,
            };
            self.webhook_pending.store(pending, Ordering::Relaxed);
        }
        if self.store.keeps_inbox() {
            let unmerged = match tokio::time::timeout(PING_TIMEOUT, self.store.appended_waiting()).await {
                Ok(Ok(unmerged)) => unmerged as i64,
                _ => -1,
            };
            self.events_unmerged.store(unmerged, Ordering::Relaxed);
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

    /// Whether writes are `ok`, `blocked` or `unknown`, and for how long the
    /// writer has been held (ms), as of the last check.
    pub(crate) fn writes(&self) -> (&'static str, Option<u64>) {
        let held = self.writer_held_ms.load(Ordering::Relaxed);
        match u64::try_from(held) {
            Err(_) => ("unknown", None),
            Ok(ms) if self.writes_blocked.load(Ordering::Relaxed) => ("blocked", Some(ms)),
            Ok(ms) => ("ok", Some(ms)),
        }
    }

    /// Healthy: the last ping succeeded, recently.
    pub(crate) fn healthy(&self) -> bool {
        let last = self.last_ok.load(Ordering::Relaxed);
        let age = self.started.elapsed().as_millis() as i64 - last;
        self.ok.load(Ordering::Relaxed) && last >= 0 && age <= HEALTH_STALE.as_millis() as i64
    }
}
