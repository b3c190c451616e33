//! The engine's background tasks: a worker draining reported changes and a
//! timer for time-driven changes.

use crate::MembershipEngine;
use renkei_core::{ChangeListener, UserRef};
use renkei_store::membership::Cause;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Changes coalesced into one evaluation batch at most.
const MAX_BATCH: usize = 1_000;
/// The timer re-reads the schedule at least this often (other instances may add to it).
const MAX_SLEEP: Duration = Duration::from_secs(60);
const RETRY_DELAYS: [Duration; 3] = [Duration::from_millis(100), Duration::from_secs(1), Duration::from_secs(5)];

/// Queued changes not processed yet, so callers (and tests) can wait for quiet.
#[derive(Default)]
struct Pending {
    count: AtomicUsize,
    idle: Notify,
}

/// The running engine. Reports changes as a [`ChangeListener`]; stop it with
/// [`EngineHandle::shutdown`].
pub struct EngineHandle {
    engine: Arc<MembershipEngine>,
    queue: mpsc::UnboundedSender<(UserRef, Cause)>,
    pending: Arc<Pending>,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl MembershipEngine {
    /// Spawns the change worker and the timer on the current runtime.
    pub fn start(self: Arc<Self>) -> EngineHandle {
        let (queue, receiver) = mpsc::unbounded_channel();
        let pending = Arc::new(Pending::default());
        let token = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(worker(self.clone(), receiver, pending.clone(), token.clone())),
            tokio::spawn(timer(self.clone(), token.clone())),
        ];
        tracing::info!("segment engine started");
        EngineHandle { engine: self, queue, pending, token, tasks }
    }
}

impl EngineHandle {
    pub fn engine(&self) -> &Arc<MembershipEngine> {
        &self.engine
    }

    /// Queues users for re-evaluation with a known cause; never blocks.
    pub fn notify(&self, users: &[UserRef], cause: Cause) {
        for user in users {
            self.pending.count.fetch_add(1, Ordering::SeqCst);
            if self.queue.send((user.clone(), cause)).is_err() {
                // The worker is gone (shut down): nothing will process it.
                self.done(1);
            }
        }
    }

    fn done(&self, n: usize) {
        finish(&self.pending, n);
    }

    /// Waits until every change queued so far has been processed.
    pub async fn idle(&self) {
        loop {
            let notified = self.pending.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Stops both tasks; changes already queued are processed first.
    pub async fn shutdown(self) {
        self.token.cancel();
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "segment engine task failed");
            }
        }
        tracing::info!("segment engine stopped");
    }
}

impl ChangeListener for EngineHandle {
    fn users_changed(&self, users: &[UserRef]) {
        self.notify(users, Cause::Change);
    }
}

fn finish(pending: &Pending, n: usize) {
    if pending.count.fetch_sub(n, Ordering::SeqCst) == n {
        pending.idle.notify_waiters();
    }
}

async fn worker(
    engine: Arc<MembershipEngine>,
    mut receiver: mpsc::UnboundedReceiver<(UserRef, Cause)>,
    pending: Arc<Pending>,
    token: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            biased;
            next = receiver.recv() => next,
            _ = token.cancelled() => None,
        };
        let Some(first) = first else {
            // Shutting down: process what was queued before the stop.
            let mut rest = Vec::new();
            while let Ok(item) = receiver.try_recv() {
                rest.push(item);
            }
            if !rest.is_empty() {
                let n = rest.len();
                process(&engine, rest).await;
                finish(&pending, n);
            }
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let n = batch.len();
        process(&engine, batch).await;
        finish(&pending, n);
    }
}

/// Evaluates a batch, each user once per cause, retrying store errors a few times.
async fn process(engine: &MembershipEngine, batch: Vec<(UserRef, Cause)>) {
    let mut by_cause: HashMap<Cause, Vec<UserRef>> = HashMap::new();
    let mut seen = HashSet::new();
    for (user, cause) in batch {
        if seen.insert((user.clone(), cause)) {
            by_cause.entry(cause).or_default().push(user);
        }
    }
    for (cause, users) in by_cause {
        let mut attempt = 0;
        loop {
            match engine.process_changes(&users, cause).await {
                Ok(transitions) => {
                    tracing::debug!(users = users.len(), transitions = transitions.len(), "changes processed");
                    break;
                }
                Err(error) if attempt < RETRY_DELAYS.len() => {
                    tracing::warn!(%error, attempt, "re-evaluation failed; retrying");
                    tokio::time::sleep(RETRY_DELAYS[attempt]).await;
                    attempt += 1;
                }
                Err(error) => {
                    // A later change or a recompute will evaluate these users again.
                    tracing::error!(%error, users = users.len(), "re-evaluation failed; giving up on this batch");
                    break;
                }
            }
        }
    }
}

async fn timer(engine: Arc<MembershipEngine>, token: CancellationToken) {
    while !token.is_cancelled() {
        if let Err(error) = engine.run_due().await {
            tracing::warn!(%error, "time-driven evaluation failed");
        }
        let now = engine.clock.now();
        let wait = match engine.store.reads.next_due().await {
            Ok(Some(due)) => (due - now).to_std().unwrap_or(Duration::ZERO).min(MAX_SLEEP),
            Ok(None) => MAX_SLEEP,
            Err(error) => {
                tracing::warn!(%error, "reading the evaluation schedule failed");
                Duration::from_secs(5)
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
}
