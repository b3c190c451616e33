//! The event merger: `POST /v1/events` replies once a batch is durable in
//! the store's inbox (PostgreSQL, migration 0027), and this task moves it
//! into `events` behind the reply, then tells the segment engine whose data
//! changed. Every instance with the api role runs one; they take different
//! rows, and each also sweeps the inbox every [`SWEEP`] for the rows of an
//! instance that stopped before merging them. Where the store keeps no inbox
//! (SQLite) appends are stored at once and no merger runs.

use crate::metrics::IngestMetrics;
use futures::FutureExt;
use renkei_core::ChangeListener;
use renkei_store::EventStore;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Most rows one merge moves (one transaction).
pub const MERGE_ROWS: u32 = 10_000;
/// Merges one instance runs at once when no batch is arriving: one merge is
/// a serial pipeline (take, insert, commit) that leaves a core idle while it
/// waits on the database. While batches arrive, only the first worker merges,
/// and behind a burst at [`PACE`], so that replying keeps most of the machine.
pub const WORKERS: usize = 2;
/// How long after the last append the instance counts as receiving batches.
const QUIET: Duration = Duration::from_millis(200);
/// While batches arrive faster than one merge moves them, the first worker
/// merges one batch per this long (2 cores: replies at 100,000 events/s
/// need most of the machine; the inbox is drained once the burst ends).
const PACE: Duration = Duration::from_secs(1);
/// How often the merger looks at the inbox without being woken.
pub const SWEEP: Duration = Duration::from_secs(1);
/// How long the merger waits after a failed merge (the database is away).
const RETRY: Duration = Duration::from_millis(500);

pub struct EventMerger {
    events: Arc<dyn EventStore>,
    changes: Arc<dyn ChangeListener>,
    metrics: Arc<IngestMetrics>,
    /// One per worker: each keeps a wake-up that comes while it merges.
    wakes: Vec<Notify>,
    /// When the last batch was appended (as time since `started`, in ms).
    last_append_ms: AtomicU64,
    started: Instant,
}

impl EventMerger {
    pub fn new(events: Arc<dyn EventStore>, changes: Arc<dyn ChangeListener>, metrics: Arc<IngestMetrics>) -> Self {
        Self {
            events,
            changes,
            metrics,
            wakes: (0..WORKERS).map(|_| Notify::new()).collect(),
            last_append_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Whether the store leaves appended events for a merger.
    pub fn needed(&self) -> bool {
        self.events.keeps_inbox()
    }

    /// Says that a batch was appended: the workers start at once.
    pub fn appended(&self) {
        // At least 1: 0 stands for no append yet.
        self.last_append_ms.store(self.millis_since_start().max(1), Ordering::Relaxed);
        self.wakes.iter().for_each(Notify::notify_one);
    }

    fn millis_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a batch was appended within [`QUIET`].
    fn receiving(&self) -> bool {
        let last = self.last_append_ms.load(Ordering::Relaxed);
        last > 0 && self.millis_since_start().saturating_sub(last) < QUIET.as_millis() as u64
    }

    /// Merges until the inbox is empty (or another merger holds what is
    /// left): the events moved.
    pub async fn merge_all(&self) -> renkei_store::StoreResult<u64> {
        let mut moved = 0;
        loop {
            let merged = self.merge_once().await?;
            moved += merged.events;
            if merged.taken < u64::from(MERGE_ROWS) {
                return Ok(moved);
            }
        }
    }

    /// One merge of up to [`MERGE_ROWS`], counted and told to the segment engine.
    async fn merge_once(&self) -> renkei_store::StoreResult<renkei_store::Merged> {
        let merged = self.events.merge_appended(MERGE_ROWS).await?;
        IngestMetrics::add(&self.metrics.events_merged, merged.events);
        self.changes.users_changed(&merged.users);
        Ok(merged)
    }

    /// Whether `worker` merges now: the first always, the others while no batch arrives.
    fn may_merge(&self, worker: usize) -> bool {
        worker == 0 || !self.receiving()
    }

    /// Merges while `worker` may; returns how long to wait before the next
    /// round and whether an append may end that wait.
    async fn round(&self, worker: usize) -> (Duration, bool) {
        while self.may_merge(worker) {
            match self.merge_once().await {
                Err(error) => {
                    tracing::warn!(%error, "merging appended events failed; they stay in the inbox, retrying");
                    return (RETRY, false);
                }
                // Fewer than asked: the inbox was empty but for rows another merger holds.
                Ok(merged) if merged.taken < u64::from(MERGE_ROWS) => return (SWEEP, true),
                // A full batch while batches arrive: a burst faster than the
                // merge. Replies come first; one batch per PACE keeps readers moving.
                Ok(_) if self.receiving() => return (PACE, false),
                Ok(_) => {}
            }
        }
        (QUIET, false)
    }

    /// Runs [`WORKERS`] workers that merge whenever woken or every
    /// [`SWEEP`], until `stop` resolves. (The server merges once more after
    /// the requests in flight at a stop are answered.)
    pub async fn run(self: Arc<Self>, stop: impl Future<Output = ()> + Send + 'static) {
        let stop = stop.boxed().shared();
        futures::future::join_all((0..WORKERS).map(|worker| self.work(worker, stop.clone()))).await;
    }

    async fn work(&self, worker: usize, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let (wait, wakes) = self.round(worker).await;
            tokio::select! {
                _ = &mut stop => break,
                _ = self.wakes[worker].notified(), if wakes => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
