//! The evaluator role: the segment engine running inside `renkei serve`
//! (the role's handle; [`MembershipEngine`] is the engine).
//!
//! [`Evaluator`] is what the rest of the process holds: it is the
//! [`ChangeListener`] the ingestion API and the webhook worker report to
//! (a report wakes it), it follows the change feed every process writes to
//! (`feed.rs`), runs the recompute at start of the segments that changed,
//! counts what it does for `/metrics`, and lets callers wait until recorded
//! changes are processed.
//!
//! A start recomputes only what differs from the last finished recompute
//! (mark `segments_recomputed`: the timezone and each segment's
//! fingerprint, `mark.rs`): nothing when nothing changed (changes made
//! meanwhile, even by a process that crashed, wait in the change feed), the
//! changed segments and those that reference them when some changed (the
//! memberships of removed ones end), every segment when the timezone
//! changed or the mark is missing or of an older format. Instances that
//! start together recompute once (lease `segment_recompute`). While that
//! runs, real-time changes are still processed; the users they name are
//! also re-evaluated once more after the recompute, so a page the
//! recompute read before a change cannot leave a stale answer behind.
//!
//! A stop ([`Evaluator::stop_by`]) gives the feed's rows it holds back and
//! saves the users still waiting in the change queue (and a batch the
//! deadline cut short) in the store's pending area; the next start queues
//! them again ([`Evaluator::resume_pending`]) and removes the saved row once
//! they are evaluated.

use crate::feed::Feed;
use crate::mark::{Plan, RecomputedFor, plan};
use crate::{Backlog, EngineHandle, Leftover, MembershipEngine, RecomputeReport};
use renkei_core::{Cause, ChangeListener, UserRef};
use renkei_store::{PendingEvaluations, PendingStore, UserChanges};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{RwLock, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Distinct users remembered during a recompute for the second pass; beyond
/// this the recompute simply runs again.
const MAX_REMEMBERED: usize = 1_000_000;
/// Recomputes in a row at start when changes keep overflowing the memory above.
const MAX_RECOMPUTE_ROUNDS: u32 = 3;
/// The lease of the start-up recompute: one instance recomputes at a time.
pub const RECOMPUTE_LEASE: &str = "segment_recompute";
/// The mark a finished recompute leaves, valued with what it was done for
/// (the timezone and each segment's fingerprint, as JSON).
pub const RECOMPUTED_MARK: &str = "segments_recomputed";
/// How long the recompute lease lasts unless renewed (every 5 polls).
const RECOMPUTE_LEASE_TERM: chrono::Duration = chrono::Duration::seconds(30);
/// How often a waiting instance looks at the lease and the mark.
const RECOMPUTE_POLL: Duration = Duration::from_secs(1);
/// Of a stop's time, what is kept back for saving what is left.
const SAVE_RESERVE: Duration = Duration::from_secs(1);

/// The running segment engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Evaluator {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<MembershipEngine>,
    /// Where a stop saves the users left waiting.
    pending: Arc<dyn PendingStore>,
    /// `None` once stopped. Readers report and wait; the writer stops it.
    handle: RwLock<Option<EngineHandle>>,
    /// Users reported while a recompute runs (`Some` only then).
    during_recompute: Mutex<Option<Remembered>>,
    /// True once the start-up recompute has finished (or failed).
    recomputed: watch::Sender<bool>,
    /// Following the change feed (`feed.rs`).
    feed: Feed,
    stats: Stats,
}

#[derive(Default)]
struct Remembered {
    users: HashSet<UserRef>,
    overflowed: bool,
}

#[derive(Default)]
struct Stats {
    changes_reported: AtomicU64,
    recompute_running: AtomicBool,
    recomputes: AtomicU64,
    recompute_failures: AtomicU64,
    recompute_users: AtomicU64,
    recompute_transitions: AtomicU64,
    last_recompute_millis: AtomicU64,
    restored_users: AtomicU64,
}

impl Evaluator {
    /// Starts the engine's change worker and timer, and follows the change
    /// feed; a stop saves what is left waiting in `pending`.
    pub fn start(engine: Arc<MembershipEngine>, pending: Arc<dyn PendingStore>) -> Self {
        let handle = engine.clone().start();
        let (recomputed, _) = watch::channel(false);
        let evaluator = Self {
            inner: Arc::new(Inner {
                engine,
                pending,
                handle: RwLock::new(Some(handle)),
                during_recompute: Mutex::new(None),
                recomputed,
                feed: Feed::default(),
                stats: Stats::default(),
            }),
        };
        evaluator.follow_feed();
        evaluator
    }

    pub(crate) fn feed(&self) -> &Feed {
        &self.inner.feed
    }

    /// Whether the engine still runs (not stopped).
    pub(crate) async fn running(&self) -> bool {
        self.inner.handle.read().await.is_some()
    }

    /// Queues the users of rows taken from the change feed; what resolves
    /// once they are evaluated, or `None` once stopped.
    pub(crate) fn take_in(&self, rows: &[UserChanges]) -> Option<impl Future<Output = ()> + Send + use<>> {
        let guard = self.inner.handle.try_read().ok()?;
        let handle = guard.as_ref()?;
        for row in rows {
            self.remember(&row.users);
            handle.notify(&row.users, row.cause);
        }
        Some(handle.evaluated_through(handle.last_queued()))
    }

    pub fn engine(&self) -> &Arc<MembershipEngine> {
        &self.inner.engine
    }

    /// Waits until every change recorded so far (in the change feed, by any
    /// process) has been evaluated, and this engine's queue is empty.
    pub async fn idle(&self) {
        self.feed_evaluated().await;
        if let Some(handle) = self.inner.handle.read().await.as_ref() {
            handle.idle().await;
        }
    }

    /// Waits until the start-up recompute (and the re-evaluation of users
    /// changed meanwhile) is over.
    pub async fn recomputed(&self) {
        let mut done = self.inner.recomputed.subscribe();
        let _ = done.wait_for(|finished| *finished).await;
    }

    /// The recompute `renkei serve` runs at start, of what changed since the
    /// last one (see the module's documentation); stops early when `stop` is
    /// cancelled (each page is written atomically, so an interrupted
    /// recompute leaves nothing half-written).
    ///
    /// Instances that start together recompute once: the one holding lease
    /// [`RECOMPUTE_LEASE`] recomputes and marks it done with its timezone
    /// and segment fingerprints; the others wait for that mark (remembering
    /// the users changed meanwhile, re-evaluated after it) and take over if
    /// the holder dies first.
    pub async fn startup_recompute(self, stop: CancellationToken) {
        let segments = self.engine().segments().len();
        match self.plan().await {
            Plan::Nothing => {
                // Changes made since are in the change feed, which outlives every process.
                tracing::info!(segments, "segments unchanged since the last recompute: no recompute needed");
                self.inner.recomputed.send_replace(true);
                return;
            }
            Plan::All { reason } => tracing::info!(
                segments,
                reason,
                "recomputing every user's membership of every segment in the background"
            ),
            Plan::Some(changes) => tracing::info!(
                recompute = ?changes.recompute,
                removed = ?changes.removed,
                unchanged = segments - changes.recompute.len(),
                "segments changed since the last recompute: recomputing those (and their dependents) in the background"
            ),
        }
        tokio::select! {
            () = self.recompute_among_instances() => {}
            () = stop.cancelled() => {
                self.inner.stats.recompute_running.store(false, Ordering::Relaxed);
                *self.remembered() = None;
                tracing::info!("start-up recompute interrupted by shutdown; the next start runs it again");
            }
        }
        let leases = &self.engine().store().leases;
        if let Err(error) = leases.release_lease(RECOMPUTE_LEASE, self.engine().instance()).await {
            tracing::debug!(%error, "releasing the recompute lease failed; it expires by itself");
        }
        self.inner.recomputed.send_replace(true);
    }

    /// What a recompute is done for: the mark's value once it is done.
    fn recomputed_for(&self) -> String {
        RecomputedFor::of(self.engine().segments(), self.engine().timezone()).value()
    }

    /// What to recompute against the last finished recompute's mark.
    async fn plan(&self) -> Plan {
        let previous = self.recompute_mark().await.map(|(value, _)| value);
        plan(previous.as_deref(), self.engine().segments(), self.engine().timezone())
    }

    async fn recompute_among_instances(&self) {
        let engine = self.engine();
        let (fingerprint, started) = (self.recomputed_for(), engine.clock.now());
        let mut waiting = false;
        loop {
            let now = engine.clock.now();
            let until = now + RECOMPUTE_LEASE_TERM;
            match engine.store().leases.acquire_lease(RECOMPUTE_LEASE, engine.instance(), now, until).await {
                Ok(true) => {
                    let waited = self.remembered().take().unwrap_or_default();
                    let done = self.done_since(&fingerprint, started).await;
                    self.forward(&waited.users.into_iter().collect::<Vec<_>>());
                    if !done {
                        // Planned again: an instance with other segments may have recomputed since the start.
                        match self.plan().await {
                            Plan::Nothing => {}
                            plan => self.recompute_holding_lease(&fingerprint, &plan).await,
                        }
                    }
                    return;
                }
                Ok(false) if self.done_since(&fingerprint, started).await => {
                    tracing::info!(
                        "another instance recomputed the segments; re-evaluating the users changed meanwhile"
                    );
                    let waited = self.remembered().take().unwrap_or_default();
                    self.forward(&waited.users.into_iter().collect::<Vec<_>>());
                    return;
                }
                Ok(false) if !waiting => {
                    tracing::info!("another instance is recomputing the segments; waiting for it");
                    *self.remembered() = Some(Remembered::default());
                    waiting = true;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "taking the recompute lease failed; trying again"),
            }
            tokio::time::sleep(RECOMPUTE_POLL).await;
        }
    }

    /// Whether an instance finished a recompute for `fingerprint` (the whole
    /// mark's value) at or after `since`.
    async fn done_since(&self, fingerprint: &str, since: chrono::DateTime<chrono::Utc>) -> bool {
        matches!(self.recompute_mark().await, Some((value, at)) if value == fingerprint && at >= since)
    }

    async fn recompute_mark(&self) -> Option<(String, chrono::DateTime<chrono::Utc>)> {
        match self.engine().store().leases.mark(RECOMPUTED_MARK).await {
            Ok(mark) => mark,
            Err(error) => {
                tracing::warn!(%error, "reading the recompute mark failed");
                None
            }
        }
    }

    /// Recomputes, renewing the lease meanwhile, then marks it done.
    async fn recompute_holding_lease(&self, fingerprint: &str, plan: &Plan) {
        let engine = self.engine().clone();
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECOMPUTE_POLL * 5).await;
                let now = engine.clock.now();
                let until = now + RECOMPUTE_LEASE_TERM;
                match engine.store().leases.acquire_lease(RECOMPUTE_LEASE, engine.instance(), now, until).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!("the recompute lease was taken over; another instance may recompute too")
                    }
                    Err(error) => tracing::warn!(%error, "renewing the recompute lease failed"),
                }
            }
        });
        let completed = self.recompute_rounds(plan).await;
        renewal.abort();
        if completed {
            let now = self.engine().clock.now();
            if let Err(error) = self.engine().store().leases.set_mark(RECOMPUTED_MARK, fingerprint, now).await {
                tracing::warn!(%error, "recording the finished recompute failed; instances waiting for it recompute again");
            }
        }
    }

    /// Recomputes until no change during it was too many to remember; true
    /// when the last recompute completed.
    async fn recompute_rounds(&self, plan: &Plan) -> bool {
        for round in 1..=MAX_RECOMPUTE_ROUNDS {
            *self.remembered() = Some(Remembered::default());
            let report = self.recompute_once(plan).await;
            let remembered = self.remembered().take().unwrap_or_default();
            if report.is_none() {
                // Failed: the users changed meanwhile still deserve their evaluation.
                self.forward(&remembered.users.into_iter().collect::<Vec<_>>());
                return false;
            }
            if remembered.overflowed && round < MAX_RECOMPUTE_ROUNDS {
                tracing::warn!(round, "too many users changed during the recompute to remember; recomputing again");
                continue;
            }
            if !remembered.users.is_empty() {
                tracing::info!(users = remembered.users.len(), "re-evaluating users changed during the recompute");
                self.forward(&remembered.users.into_iter().collect::<Vec<_>>());
            }
            return true;
        }
        true
    }

    /// Start-up recomputes this instance ran, whole or of some segments (not
    /// those it waited for).
    pub fn recomputes(&self) -> u64 {
        self.inner.stats.recomputes.load(Ordering::Relaxed)
    }

    async fn recompute_once(&self, plan: &Plan) -> Option<RecomputeReport> {
        let stats = &self.inner.stats;
        stats.recompute_running.store(true, Ordering::Relaxed);
        let mut counted = 0u64;
        let progress = |progress: &crate::RecomputeProgress| {
            stats.recompute_users.fetch_add(progress.users - counted, Ordering::Relaxed);
            counted = progress.users;
        };
        let result = match plan {
            Plan::Some(changes) => {
                // The totals are left as kept: a recompute reads raw events,
                // `with_tallies` has built the tallies of keys seen for the
                // first time (new or edited segments) before the start, and
                // rebuilding a million users' totals would cost more than
                // recomputing a few segments. A full recompute rebuilds them.
                self.engine().recompute_segments(changes, progress).await
            }
            Plan::Nothing => Ok(RecomputeReport { users: 0, events: 0, transitions: 0, elapsed: Duration::ZERO }),
            Plan::All { .. } => {
                // Totals are kept with each insert; rebuilding them here bounds any drift to one run.
                if let Err(error) = self.engine().rebuild_totals().await {
                    tracing::error!(%error, "rebuilding the running totals of events failed; they stay as kept");
                }
                self.engine().recompute_all(progress).await
            }
        };
        stats.recompute_running.store(false, Ordering::Relaxed);
        match result {
            Ok(report) => {
                stats.recomputes.fetch_add(1, Ordering::Relaxed);
                stats.recompute_transitions.fetch_add(report.transitions, Ordering::Relaxed);
                stats.last_recompute_millis.store(report.elapsed.as_millis() as u64, Ordering::Relaxed);
                Some(report)
            }
            Err(error) => {
                stats.recompute_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "start-up recompute failed; real-time and time-driven evaluation go on");
                None
            }
        }
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Option<Remembered>> {
        self.inner.during_recompute.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn forward(&self, users: &[UserRef]) {
        if users.is_empty() {
            return;
        }
        match self.inner.handle.try_read() {
            Ok(guard) => match guard.as_ref() {
                Some(handle) => handle.users_changed(users),
                None => tracing::debug!(users = users.len(), "segment engine stopped; change left to the next start"),
            },
            Err(_) => tracing::debug!(users = users.len(), "segment engine stopping; change left to the next start"),
        }
    }

    /// Queues again what earlier stops saved (see [`Evaluator::stop_by`]),
    /// and removes each saved row once its users are evaluated. A row stays
    /// saved if this is stopped first.
    pub async fn resume_pending(self, stop: CancellationToken) {
        let saved = match self.inner.pending.saved_pending().await {
            Ok(saved) => saved,
            Err(error) => {
                tracing::error!(%error, "cannot read the re-evaluations saved by the last stop; the start-up recompute covers them");
                return;
            }
        };
        for row in saved {
            let Some(through) = self.requeue(&row.pending) else { return };
            tracing::info!(
                users = row.pending.users.len(),
                saved_at = %row.saved_at,
                "re-evaluating users left waiting by the last stop"
            );
            tokio::select! {
                () = self.evaluated_through(through) => {}
                () = stop.cancelled() => return,
            }
            if let Err(error) = self.inner.pending.remove_pending(row.id).await {
                tracing::warn!(%error, row = row.id, "cannot remove saved re-evaluations; they run again at the next start");
            }
        }
    }

    /// Queues saved users (by cause); the sequence number to wait for, or
    /// `None` when the engine is stopped.
    fn requeue(&self, pending: &PendingEvaluations) -> Option<u64> {
        let guard = self.inner.handle.try_read().ok()?;
        let handle = guard.as_ref()?;
        let mut by_cause: HashMap<Cause, Vec<UserRef>> = HashMap::new();
        for (user, cause) in &pending.users {
            by_cause.entry(*cause).or_default().push(user.clone());
        }
        for (cause, users) in by_cause {
            handle.notify(&users, cause);
        }
        if pending.everyone {
            // The start-up recompute is running too; a second one makes sure
            // nothing depends on how that one was started.
            handle.recompute_everyone();
        }
        self.inner.stats.restored_users.fetch_add(pending.users.len() as u64, Ordering::Relaxed);
        Some(handle.last_queued())
    }

    async fn evaluated_through(&self, seq: u64) {
        let waiting = self.inner.handle.read().await.as_ref().map(|handle| handle.evaluated_through(seq));
        if let Some(waiting) = waiting {
            waiting.await;
        }
    }

    /// Stops the worker and the timer after the batch in hand, with no
    /// deadline, and saves what is left waiting.
    pub async fn stop(&self) {
        self.stop_inner(None).await;
    }

    /// Stops the worker and the timer by `deadline`: the batch in hand is
    /// finished if there is time, else cut short; what is left waiting is
    /// saved (in the time kept back for it) and queued again at the next
    /// start.
    pub async fn stop_by(&self, deadline: Instant) {
        self.stop_inner(Some(deadline)).await;
    }

    async fn stop_inner(&self, deadline: Option<Instant>) {
        self.stop_following().await;
        let worker_deadline = deadline.map(|d| {
            let now = Instant::now();
            let reserve = SAVE_RESERVE.min(d.saturating_duration_since(now) / 3);
            d.checked_sub(reserve).unwrap_or(now)
        });
        let lock = self.inner.handle.write();
        let handle = match worker_deadline {
            Some(at) => match tokio::time::timeout_at(at, lock).await {
                Ok(mut guard) => guard.take(),
                Err(_) => {
                    tracing::warn!(
                        "segment engine still in use at the stop deadline; its queue is left to the next start's recompute"
                    );
                    return;
                }
            },
            None => lock.await.take(),
        };
        let Some(handle) = handle else { return };
        let (_, left) = handle.stop_by(worker_deadline).await;
        self.save(left, deadline).await;
    }

    async fn save(&self, left: Leftover, deadline: Option<Instant>) {
        let pending = PendingEvaluations { users: left.users, everyone: left.everyone };
        if pending.is_empty() {
            return;
        }
        let users = pending.users.len();
        let at = self.engine().clock.now();
        let saving = self.inner.pending.save_pending(&pending, at);
        let saved = match deadline {
            // However late, the save gets a moment: it is one insert.
            Some(deadline) => {
                tokio::time::timeout_at(deadline.max(Instant::now() + Duration::from_millis(100)), saving)
                    .await
                    .map_err(|_| "timed out".to_string())
                    .and_then(|saved| saved.map_err(|e| e.to_string()))
            }
            None => saving.await.map_err(|e| e.to_string()),
        };
        match saved {
            Ok(()) => tracing::info!(
                users,
                recompute = pending.everyone,
                "saved the re-evaluations left waiting; the next start queues them again"
            ),
            Err(error) => tracing::error!(
                %error,
                users,
                "cannot save the re-evaluations left waiting; the next start's full recompute covers them"
            ),
        }
    }

    /// Appends the evaluator's series to a Prometheus text exposition.
    pub fn render_metrics(&self, out: &mut String) {
        let s = &self.inner.stats;
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let running = u64::from(s.recompute_running.load(Ordering::Relaxed));
        let rows: [(&str, &str, &str, String); 8] = [
            (
                "renkei_segment_feed_rows_total",
                "counter",
                "Rows taken from the change feed (changes recorded by any process).",
                self.feed().rows.load(Ordering::Relaxed).to_string(),
            ),
            (
                "renkei_segment_changes_reported_total",
                "counter",
                "Users this process reported changed (their changes are in the change feed).",
                load(&s.changes_reported).to_string(),
            ),
            ("renkei_segment_recompute_running", "gauge", "1 while a start-up recompute runs.", running.to_string()),
            (
                "renkei_segment_recomputes_total",
                "counter",
                "Start-up recomputes finished (of every segment, or of those that changed).",
                load(&s.recomputes).to_string(),
            ),
            (
                "renkei_segment_recompute_failures_total",
                "counter",
                "Start-up recomputes that failed.",
                load(&s.recompute_failures).to_string(),
            ),
            (
                "renkei_segment_recompute_users_total",
                "counter",
                "Users evaluated by start-up recomputes.",
                load(&s.recompute_users).to_string(),
            ),
            (
                "renkei_segment_recompute_transitions_total",
                "counter",
                "Segment transitions recorded by start-up recomputes.",
                load(&s.recompute_transitions).to_string(),
            ),
            (
                "renkei_segment_recompute_last_duration_seconds",
                "gauge",
                "How long the last finished start-up recompute took.",
                format!("{:.3}", load(&s.last_recompute_millis) as f64 / 1000.0),
            ),
        ];
        for (name, kind, help, value) in rows.into_iter().chain(self.backlog_rows()) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
    }

    /// The change queue's series; none while the engine is stopping.
    fn backlog_rows(&self) -> Vec<(&'static str, &'static str, &'static str, String)> {
        let Some(backlog) = self.backlog() else { return Vec::new() };
        vec![
            (
                "renkei_segment_queue_users",
                "gauge",
                "Users waiting for re-evaluation (each once, however many changes).",
                backlog.waiting.to_string(),
            ),
            (
                "renkei_segment_queue_lag_seconds",
                "gauge",
                "How long the oldest waiting user has waited.",
                format!("{:.3}", backlog.oldest.as_secs_f64()),
            ),
            (
                "renkei_segment_queue_overflows_total",
                "counter",
                "Times the change queue was full and a full recompute ran instead.",
                backlog.overflows.to_string(),
            ),
            (
                "renkei_segment_queue_evaluated_total",
                "counter",
                "Users re-evaluated from the change queue.",
                backlog.evaluated.to_string(),
            ),
            (
                "renkei_segment_queue_restored_total",
                "counter",
                "Users queued again at start because the last stop left them waiting.",
                self.inner.stats.restored_users.load(Ordering::Relaxed).to_string(),
            ),
        ]
    }

    /// What waits for re-evaluation now (`None` once stopped).
    pub fn backlog(&self) -> Option<Backlog> {
        self.inner.handle.try_read().ok()?.as_ref().map(EngineHandle::backlog)
    }
}

/// The store records every change in the change feed, in the writer's
/// transaction; a report only wakes the feed's follower (the users come
/// from the feed, so nothing is evaluated twice).
impl ChangeListener for Evaluator {
    fn users_changed(&self, users: &[UserRef]) {
        self.inner.stats.changes_reported.fetch_add(users.len() as u64, Ordering::Relaxed);
        self.feed().wake.notify_one();
    }
}

impl Evaluator {
    /// Notes users changed while a recompute runs, for its second pass.
    fn remember(&self, users: &[UserRef]) {
        if let Some(remembered) = self.remembered().as_mut() {
            if !remembered.overflowed {
                remembered.users.extend(users.iter().cloned());
                if remembered.users.len() > MAX_REMEMBERED {
                    remembered.users.clear();
                    remembered.overflowed = true;
                }
            }
        }
    }
}
