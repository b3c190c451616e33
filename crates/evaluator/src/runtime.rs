//! The engine's background tasks: a worker draining the change queue
//! ([`crate::queue`]) and a timer for time-driven changes.

use crate::MembershipEngine;
use crate::queue::{Backlog, ChangeQueue, DEFAULT_CAPACITY, Leftover, Work};
use renkei_core::{ChangeListener, UserRef};
use renkei_store::membership::Cause;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Changes coalesced into one evaluation batch at most.
const MAX_BATCH: usize = 1_000;
/// The timer re-reads the schedule at least this often (other instances may add to it).
const MAX_SLEEP: Duration = Duration::from_secs(60);
const RETRY_DELAYS: [Duration; 3] = [Duration::from_millis(100), Duration::from_secs(1), Duration::from_secs(5)];

/// The running engine. Reports changes as a [`ChangeListener`]; stop it with
/// [`EngineHandle::shutdown`].
pub struct EngineHandle {
    engine: Arc<MembershipEngine>,
    queue: Arc<ChangeQueue>,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl MembershipEngine {
    /// Spawns the change worker and the timer on the current runtime.
    pub fn start(self: Arc<Self>) -> EngineHandle {
        self.start_with_queue(DEFAULT_CAPACITY)
    }

    /// As [`MembershipEngine::start`], with at most `capacity` users waiting.
    pub fn start_with_queue(self: Arc<Self>, capacity: usize) -> EngineHandle {
        let queue = Arc::new(ChangeQueue::new(capacity));
        let token = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(worker(self.clone(), queue.clone(), token.clone())),
            tokio::spawn(timer(self.clone(), token.clone())),
        ];
        tracing::info!(queue_capacity = capacity, "segment engine started");
        EngineHandle { engine: self, queue, token, tasks }
    }
}

impl EngineHandle {
    pub fn engine(&self) -> &Arc<MembershipEngine> {
        &self.engine
    }

    /// Queues users for re-evaluation with a known cause; never blocks.
    pub fn notify(&self, users: &[UserRef], cause: Cause) {
        self.queue.push(users, cause);
    }

    /// Waits until every change queued so far has been processed.
    pub async fn idle(&self) {
        self.queue.idle().await;
    }

    /// What waits for re-evaluation now.
    pub fn backlog(&self) -> Backlog {
        self.queue.backlog()
    }

    /// The sequence number of the last user queued so far.
    pub fn last_queued(&self) -> u64 {
        self.queue.last_queued()
    }

    /// Resolves once every user queued up to `seq` ([`EngineHandle::last_queued`])
    /// is evaluated; it does not borrow the handle, so a stop is not held up.
    pub fn evaluated_through(&self, seq: u64) -> impl Future<Output = ()> + Send + use<> {
        let queue = self.queue.clone();
        async move { queue.evaluated_through(seq).await }
    }

    /// Schedules one full recompute by the worker.
    pub fn recompute_everyone(&self) {
        self.queue.push_everyone();
    }

    /// Stops both tasks after the batch in hand; users still waiting are
    /// left to the full recompute of the next start (their data is stored).
    /// Returns what was left waiting.
    pub async fn shutdown(self) -> Backlog {
        self.stop_by(None).await.0
    }

    /// Stops both tasks: the worker finishes the batch in hand, unless
    /// `deadline` passes first; then it is aborted (an evaluation cut short
    /// rolls back, and evaluating a user again is harmless) and its batch
    /// counts as left. Returns the backlog at the stop and everything left,
    /// for the caller to save.
    pub async fn stop_by(self, deadline: Option<Instant>) -> (Backlog, Leftover) {
        self.token.cancel();
        for mut task in self.tasks {
            let joined = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, &mut task).await,
                None => Ok((&mut task).await),
            };
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(%error, "segment engine task failed"),
                Err(_) => {
                    tracing::warn!("segment engine task still busy at the stop deadline; aborted");
                    task.abort();
                    // An aborted task is dropped at its next poll: soon.
                    let _ = tokio::time::timeout(Duration::from_millis(200), task).await;
                }
            }
        }
        let backlog = self.queue.backlog();
        let left = self.queue.leftover();
        tracing::info!(users_left = left.users.len(), recompute_left = left.everyone, "segment engine stopped");
        (backlog, left)
    }
}

impl ChangeListener for EngineHandle {
    fn users_changed(&self, users: &[UserRef]) {
        self.notify(users, Cause::Change);
    }
}

async fn worker(engine: Arc<MembershipEngine>, queue: Arc<ChangeQueue>, token: CancellationToken) {
    loop {
        let work = loop {
            if token.is_cancelled() {
                return;
            }
            if let Some(work) = queue.take(MAX_BATCH) {
                break work;
            }
            tokio::select! {
                () = queue.ready.notified() => {}
                () = token.cancelled() => return,
            }
        };
        match &work {
            Work::Users(users) => process(&engine, users, &token).await,
            Work::Everyone => match engine.recompute_all(|_| {}).await {
                Ok(report) => tracing::info!(
                    users = report.users,
                    transitions = report.transitions,
                    "recompute after a full change queue done"
                ),
                Err(error) => {
                    tracing::error!(%error, "recompute after a full change queue failed; the next start recomputes")
                }
            },
        }
        queue.finish(&work);
    }
}

/// Evaluates a batch, grouped by cause, retrying store errors a few times
/// (a stop cuts the retries short).
async fn process(engine: &MembershipEngine, batch: &[(UserRef, Cause)], token: &CancellationToken) {
    let mut by_cause: HashMap<Cause, Vec<UserRef>> = HashMap::new();
    for (user, cause) in batch {
        by_cause.entry(*cause).or_default().push(user.clone());
    }
    for (cause, users) in by_cause {
        let mut attempt = 0;
        loop {
            match engine.process_changes(&users, cause).await {
                Ok(transitions) => {
                    tracing::debug!(users = users.len(), transitions = transitions.len(), "changes processed");
                    break;
                }
                Err(error) if attempt < RETRY_DELAYS.len() && !token.is_cancelled() => {
                    tracing::warn!(%error, attempt, "re-evaluation failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_DELAYS[attempt]) => {}
                        () = token.cancelled() => {}
                    }
                    attempt += 1;
                }
                Err(error) => {
                    // The change feed keeps their rows (see `given_up`), so they come back.
                    engine.given_up.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, users = users.len(), "re-evaluation failed; giving up on this batch for now");
                    break;
                }
            }
        }
    }
}

/// The lease of the time-driven timer: one instance at a time evaluates
/// the users whose due time has come (the others would only repeat it).
pub const TIMER_LEASE: &str = "membership_timer";
/// How long the timer's lease lasts unless renewed: a crashed holder's
/// timer is taken over within this (plus [`TIMER_POLL`]).
const TIMER_LEASE_TERM: chrono::Duration = chrono::Duration::seconds(15);
/// How often an instance without the lease looks whether it may take it;
/// and the longest the holder sleeps, since due times that other instances
/// write do not wake it.
const TIMER_POLL: Duration = Duration::from_secs(2);

async fn timer(engine: Arc<MembershipEngine>, token: CancellationToken) {
    let holder = engine.instance.clone();
    while !token.is_cancelled() {
        let now = engine.clock.now();
        let wait = match engine.store.leases.acquire_lease(TIMER_LEASE, &holder, now, now + TIMER_LEASE_TERM).await {
            Ok(true) => timer_round(&engine).await.min(TIMER_POLL),
            Ok(false) => TIMER_POLL, // another instance runs the timer
            Err(error) => {
                tracing::warn!(%error, "taking the timer's lease failed");
                TIMER_POLL
            }
        };
        let target = chrono::Duration::from_std(wait).map(|w| now + w).unwrap_or(now);
        engine.timer_target.store(target.timestamp_micros(), Ordering::SeqCst);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = engine.schedule_changed.notified() => {}
            _ = token.cancelled() => {}
        }
        // While evaluating, every new due time must wake the next round.
        engine.timer_target.store(i64::MAX, Ordering::SeqCst);
    }
    // A stop hands the timer over at once.
    if let Err(error) = engine.store.leases.release_lease(TIMER_LEASE, &holder).await {
        tracing::debug!(%error, "releasing the timer's lease failed; it expires by itself");
    }
}

/// Evaluates the users due now; how long until the next due time.
async fn timer_round(engine: &MembershipEngine) -> Duration {
    if let Err(error) = engine.run_due().await {
        tracing::warn!(%error, "time-driven evaluation failed");
    }
    let now = engine.clock.now();
    match engine.store.reads.next_due().await {
        Ok(Some(due)) => (due - now).to_std().unwrap_or(Duration::ZERO).min(MAX_SLEEP),
        Ok(None) => MAX_SLEEP,
        Err(error) => {
            tracing::warn!(%error, "reading the evaluation schedule failed");
            Duration::from_secs(5)
        }
    }
}
