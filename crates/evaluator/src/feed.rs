//! Following the change feed (`renkei-store` `changes`): every write that
//! can change a user's segments, from any process, leaves a row there in
//! its own transaction. The evaluator claims rows (a lease, so evaluators
//! of several instances share them and a crashed one's rows come back),
//! queues their users, and deletes the rows once those users are
//! evaluated. Rows whose evaluation failed, or that a stop cut short, are
//! given back, never deleted.
//!
//! It wakes when this process reports a change ([`Evaluator`] is the
//! `ChangeListener` the API and the webhook report to), when PostgreSQL
//! notifies a change made elsewhere, and at least every [`POLL`] (a read
//! that never takes SQLite's writer), which covers a missed notification
//! and the processes that cannot notify.

use crate::Evaluator;
use renkei_store::UserChanges;
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Rows claimed at a time.
const CLAIM_ROWS: u32 = 16;
/// How long a claim lasts: a crashed evaluator's rows come back after this.
const CLAIM_TERM: chrono::Duration = chrono::Duration::seconds(30);
/// How often the feed is looked at when nothing woke the evaluator.
pub(crate) const POLL: Duration = Duration::from_millis(250);
/// Claims waiting for their users' evaluation at once (so a large import
/// keeps the queue fed while new changes still get in).
const CLAIMS_IN_FLIGHT: usize = 4;

/// The feed follower's state, part of the evaluator.
#[derive(Default)]
pub(crate) struct Feed {
    /// Wakes the follower: a change reported in this process, or notified.
    pub(crate) wake: Arc<Notify>,
    /// Rows this evaluator holds and has not finished.
    claimed: Mutex<HashSet<i64>>,
    /// Rows taken from the feed so far.
    pub(crate) rows: AtomicU64,
    /// The follower task and how to stop it.
    task: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

impl Feed {
    fn claimed(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.claimed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Evaluator {
    /// Starts following the feed (once).
    pub(crate) fn follow_feed(&self) {
        let token = CancellationToken::new();
        let task = tokio::spawn(self.clone().follow(token.clone()));
        *self.feed().task.lock().unwrap_or_else(|p| p.into_inner()) = Some((token, task));
    }

    /// Stops following and gives back the rows not finished.
    pub(crate) async fn stop_following(&self) {
        let stopping = self.feed().task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((token, task)) = stopping {
            token.cancel();
            // Giving rows back is one statement; a database that does not answer is left to the claims' term.
            if tokio::time::timeout(Duration::from_secs(2), task).await.is_err() {
                tracing::warn!("the change feed's follower did not stop in time; its claims run out by themselves");
            }
        }
    }

    async fn follow(self, token: CancellationToken) {
        let feed = self.engine().store().changes.clone();
        let listener = match feed.listen_for_changes(self.feed().wake.clone()).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for changes; polling the change feed instead");
                None
            }
        };
        let in_flight = Arc::new(Semaphore::new(CLAIMS_IN_FLIGHT));
        let mut finishing = JoinSet::new();
        while !token.is_cancelled() {
            while finishing.try_join_next().is_some() {}
            let permit = tokio::select! {
                permit = in_flight.clone().acquire_owned() => permit,
                () = token.cancelled() => break,
            };
            let Ok(permit) = permit else { break };
            match self.claim().await {
                Ok(rows) if !rows.is_empty() => {
                    let Some(evaluated) = self.take_in(&rows) else { break };
                    let this = self.clone();
                    finishing.spawn(async move {
                        this.finish_when(rows, evaluated).await;
                        drop(permit);
                    });
                }
                Ok(_) => {
                    drop(permit);
                    self.wait_for_changes(&token).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "claiming from the change feed failed; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = token.cancelled() => {}
                    }
                }
            }
        }
        finishing.shutdown().await;
        if let Some(listener) = listener {
            listener.abort();
        }
        self.give_back().await;
    }

    async fn claim(&self) -> renkei_store::StoreResult<Vec<UserChanges>> {
        let engine = self.engine();
        let now = engine.clock.now();
        let rows = engine.store().changes.claim_changes(engine.instance(), now, now + CLAIM_TERM, CLAIM_ROWS).await?;
        self.feed().claimed().extend(rows.iter().map(|row| row.id));
        self.feed().rows.fetch_add(rows.len() as u64, Ordering::Relaxed);
        if rows.len() as u32 == CLAIM_ROWS {
            // A run of changes (an import): say how far it has come.
            let users: usize = rows.iter().map(|row| row.users.len()).sum();
            let left = engine.store().changes.changes_left_through(i64::MAX).await.unwrap_or(0);
            tracing::info!(rows = rows.len(), users, rows_left = left, "re-evaluating the users of a run of changes");
        }
        Ok(rows)
    }

    /// Sleeps until woken, or until the feed has claimable rows (polled).
    async fn wait_for_changes(&self, token: &CancellationToken) {
        let feed = self.engine().store().changes.clone();
        loop {
            tokio::select! {
                () = self.feed().wake.notified() => return,
                () = tokio::time::sleep(POLL) => {}
                () = token.cancelled() => return,
            }
            match feed.changes_claimable(self.engine().clock.now()).await {
                Ok(false) => {}
                Ok(true) => return,
                Err(error) => {
                    tracing::debug!(%error, "looking at the change feed failed");
                    return;
                }
            }
        }
    }

    /// Waits for the users of `rows` to be evaluated, then deletes the rows,
    /// or gives them back when an evaluation was given up meanwhile.
    async fn finish_when(&self, rows: Vec<UserChanges>, evaluated: impl Future<Output = ()>) {
        let given_up = self.engine().given_up.load(Ordering::Relaxed);
        evaluated.await;
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        let feed = &self.engine().store().changes;
        if self.engine().given_up.load(Ordering::Relaxed) != given_up {
            tracing::warn!(
                rows = ids.len(),
                "an evaluation failed meanwhile; giving these changes back to be tried again"
            );
            self.give_back_rows(&ids).await;
            return;
        }
        let mut attempt = 0u32;
        while let Err(error) = feed.finish_changes(&ids).await {
            // Not finished means evaluated again later: harmless, so a few tries are enough.
            attempt += 1;
            if attempt >= 5 {
                tracing::warn!(%error, "cannot delete finished changes; their claim runs out and they are evaluated again");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        let mut claimed = self.feed().claimed();
        for id in &ids {
            claimed.remove(id);
        }
    }

    async fn give_back(&self) {
        let ids: Vec<i64> = self.feed().claimed().drain().collect();
        self.give_back_rows(&ids).await;
    }

    async fn give_back_rows(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        let engine = self.engine();
        match engine.store().changes.release_changes(engine.instance(), ids).await {
            Ok(()) => tracing::info!(rows = ids.len(), "gave claimed changes back to the feed"),
            Err(error) => {
                tracing::warn!(%error, rows = ids.len(), "cannot give claimed changes back; their claim runs out")
            }
        }
        let mut claimed = self.feed().claimed();
        for id in ids {
            claimed.remove(id);
        }
    }

    /// Waits until every change recorded in the feed so far (by any
    /// process) has been evaluated, by this evaluator or another one.
    pub(crate) async fn feed_evaluated(&self) {
        let feed = self.engine().store().changes.clone();
        let through = match feed.last_change_id().await {
            Ok(id) => id,
            Err(error) => {
                tracing::warn!(%error, "cannot read the change feed");
                return;
            }
        };
        loop {
            self.feed().wake.notify_one();
            match feed.changes_left_through(through).await {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "reading the change feed failed"),
            }
            if !self.running().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
