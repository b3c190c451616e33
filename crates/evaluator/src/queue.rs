//! The change queue between reporters (ingest, webhook worker, links) and the
//! engine's worker: each user waits at most once, so a burst of events costs
//! one evaluation per user rather than one per event, and the queue is
//! bounded by users, not by events.
//!
//! When it is full, further changes are not queued one by one: the queue
//! remembers that it overflowed, and the worker runs a full recompute
//! instead, which re-evaluates everyone (what was stored is never lost, only
//! the hint of who changed). A graceful stop takes what still waits (and
//! the batch in hand, if the stop cut it short) with [`ChangeQueue::leftover`]
//! for the evaluator to save; after a crash, the change feed's rows, given
//! back when their lease runs out, cover them.

use renkei_core::UserRef;
use renkei_store::membership::Cause;
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// Distinct users waiting at most, by default (~150 bytes each).
pub const DEFAULT_CAPACITY: usize = 200_000;

/// What the worker takes next.
#[derive(Debug, PartialEq)]
pub(crate) enum Work {
    /// These users, each once (with the cause first reported for it).
    Users(Vec<(UserRef, Cause)>),
    /// The queue overflowed: everyone, by a full recompute.
    Everyone,
}

impl Work {
    fn units(&self) -> usize {
        match self {
            Work::Users(users) => users.len(),
            Work::Everyone => 1,
        }
    }
}

/// The queue's state as `/metrics` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Users waiting (not counting those being evaluated now).
    pub waiting: usize,
    /// How long the oldest waiting user has waited.
    pub oldest: Duration,
    /// Times the queue was full and a full recompute was scheduled instead.
    pub overflows: u64,
    /// Users re-evaluated from the queue so far.
    pub evaluated: u64,
}

#[derive(Default)]
struct State {
    /// Waiting users in order, each with its sequence number.
    order: VecDeque<(UserRef, Cause, Instant, u64)>,
    waiting: HashSet<(UserRef, Cause)>,
    /// Units taken by the worker and not finished yet.
    in_progress: usize,
    /// What the worker has taken and not finished (to save if a stop cuts it short).
    taken: Vec<(UserRef, Cause)>,
    /// The worker has taken a full recompute and not finished it.
    everyone_taken: bool,
    /// The newest sequence number the taken work covers.
    taken_through: u64,
    overflowed: bool,
    /// Sequence number of the next queued user (from 1).
    next_seq: u64,
}

/// What a stop leaves: users waiting or cut short, and whether a full
/// recompute was due.
#[derive(Debug, Default, PartialEq)]
pub struct Leftover {
    pub users: Vec<(UserRef, Cause)>,
    pub everyone: bool,
}

pub(crate) struct ChangeQueue {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes the worker when work arrives.
    pub(crate) ready: Notify,
    idle: Notify,
    overflows: AtomicU64,
    evaluated: AtomicU64,
    /// Every user queued with a sequence number up to this one is evaluated.
    done_through: watch::Sender<u64>,
}

impl ChangeQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            idle: Notify::new(),
            overflows: AtomicU64::new(0),
            evaluated: AtomicU64::new(0),
            done_through: watch::channel(0).0,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues each user not already waiting with that cause; never blocks.
    pub(crate) fn push(&self, users: &[UserRef], cause: Cause) {
        let now = Instant::now();
        let mut state = self.state();
        for user in users {
            if state.overflowed || state.waiting.contains(&(user.clone(), cause)) {
                continue;
            }
            if state.order.len() >= self.capacity {
                state.overflowed = true;
                state.order.clear();
                state.waiting.clear();
                self.overflows.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    capacity = self.capacity,
                    "segment change queue full: scheduling a full recompute instead of queueing each user"
                );
                continue;
            }
            state.waiting.insert((user.clone(), cause));
            state.next_seq += 1;
            let seq = state.next_seq;
            state.order.push_back((user.clone(), cause, now, seq));
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Takes up to `max` waiting users (or the overflow's full recompute).
    pub(crate) fn take(&self, max: usize) -> Option<Work> {
        let mut state = self.state();
        let work = if state.overflowed {
            state.overflowed = false;
            // Everyone queued so far was dropped for this recompute.
            state.taken_through = state.next_seq;
            state.everyone_taken = true;
            Work::Everyone
        } else if state.order.is_empty() {
            return None;
        } else {
            let n = max.min(state.order.len());
            let mut users = Vec::with_capacity(n);
            for (user, cause, _, seq) in state.order.drain(..n).collect::<Vec<_>>() {
                state.waiting.remove(&(user.clone(), cause));
                state.taken_through = seq;
                users.push((user, cause));
            }
            state.taken.extend(users.iter().cloned());
            Work::Users(users)
        };
        state.in_progress += work.units();
        Some(work)
    }

    /// The worker is done with `work`.
    pub(crate) fn finish(&self, work: &Work) {
        if let Work::Users(users) = work {
            self.evaluated.fetch_add(users.len() as u64, Ordering::Relaxed);
        }
        let mut state = self.state();
        state.in_progress -= work.units();
        state.taken.clear();
        state.everyone_taken = false;
        let idle = state.in_progress == 0 && state.order.is_empty() && !state.overflowed;
        let through = state.taken_through;
        drop(state);
        self.done_through.send_if_modified(|done| {
            let newer = through > *done;
            *done = (*done).max(through);
            newer
        });
        if idle {
            self.idle.notify_waiters();
        }
    }

    fn is_idle(&self) -> bool {
        let state = self.state();
        state.in_progress == 0 && state.order.is_empty() && !state.overflowed
    }

    /// Waits until nothing waits and nothing is being evaluated.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_idle() {
                return;
            }
            notified.await;
        }
    }

    /// The sequence number of the last user queued so far (0 when none was).
    pub(crate) fn last_queued(&self) -> u64 {
        self.state().next_seq
    }

    /// Waits until every user queued up to sequence number `seq` has been
    /// evaluated (or covered by a full recompute).
    pub(crate) async fn evaluated_through(&self, seq: u64) {
        let mut done = self.done_through.subscribe();
        let _ = done.wait_for(|done| *done >= seq).await;
    }

    /// Schedules a full recompute, as an overflow does.
    pub(crate) fn push_everyone(&self) {
        let mut state = self.state();
        state.overflowed = true;
        state.order.clear();
        state.waiting.clear();
        drop(state);
        self.ready.notify_one();
    }

    /// Empties the queue for a stop: the waiting users, plus the work in hand
    /// when the worker did not finish it (call once the worker is stopped).
    pub(crate) fn leftover(&self) -> Leftover {
        let mut state = self.state();
        let mut users = std::mem::take(&mut state.taken);
        users.extend(state.order.drain(..).map(|(user, cause, _, _)| (user, cause)));
        state.waiting.clear();
        let everyone = std::mem::take(&mut state.overflowed) || std::mem::take(&mut state.everyone_taken);
        Leftover { users, everyone }
    }

    pub(crate) fn backlog(&self) -> Backlog {
        let state = self.state();
        Backlog {
            waiting: state.order.len(),
            oldest: state.order.front().map(|(_, _, at, _)| at.elapsed()).unwrap_or_default(),
            overflows: self.overflows.load(Ordering::Relaxed),
            evaluated: self.evaluated.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use renkei_core::LineUserId;

    fn user(n: u32) -> UserRef {
        UserRef::LineUser(LineUserId::parse(&format!("U{n:032x}")).expect("valid id"))
    }

    #[test]
    fn a_burst_for_one_user_waits_once() {
        let queue = ChangeQueue::new(10);
        for _ in 0..1_000 {
            queue.push(&[user(1), user(2)], Cause::Change);
        }
        assert_eq!(queue.backlog().waiting, 2);
        assert_eq!(queue.take(10), Some(Work::Users(vec![(user(1), Cause::Change), (user(2), Cause::Change)])));
        assert_eq!(queue.take(10), None);
    }

    #[test]
    fn a_user_reported_while_evaluated_waits_again() {
        let queue = ChangeQueue::new(10);
        queue.push(&[user(1)], Cause::Change);
        let work = queue.take(10).expect("work");
        queue.push(&[user(1)], Cause::Change);
        assert!(!queue.is_idle());
        queue.finish(&work);
        assert_eq!(queue.take(10), Some(Work::Users(vec![(user(1), Cause::Change)])));
    }

    #[test]
    fn a_full_queue_turns_into_one_full_recompute() {
        let queue = ChangeQueue::new(3);
        queue.push(&(0..10).map(user).collect::<Vec<_>>(), Cause::Change);
        let backlog = queue.backlog();
        assert_eq!((backlog.waiting, backlog.overflows), (0, 1));
        let work = queue.take(100).expect("work");
        assert_eq!(work, Work::Everyone);
        assert!(!queue.is_idle(), "the recompute is in progress");
        queue.finish(&work);
        assert!(queue.is_idle());
        queue.push(&[user(1)], Cause::Change);
        assert_eq!(queue.take(100), Some(Work::Users(vec![(user(1), Cause::Change)])));
    }

    #[test]
    fn takes_are_bounded_and_in_order() {
        let queue = ChangeQueue::new(100);
        queue.push(&(0..5).map(user).collect::<Vec<_>>(), Cause::Change);
        let Some(Work::Users(first)) = queue.take(2) else { panic!("users") };
        assert_eq!(first, vec![(user(0), Cause::Change), (user(1), Cause::Change)]);
        assert_eq!(queue.backlog().waiting, 3);
    }

    #[test]
    fn a_stop_leaves_the_waiting_users_and_the_batch_cut_short() {
        let queue = ChangeQueue::new(100);
        queue.push(&(0..5).map(user).collect::<Vec<_>>(), Cause::Change);
        let _in_hand = queue.take(2).expect("work");
        queue.push(&[user(9)], Cause::Time);
        let left = queue.leftover();
        let expected: Vec<(UserRef, Cause)> = [0, 1, 2, 3, 4].map(|n| (user(n), Cause::Change)).into_iter().collect();
        assert_eq!(left.users[..5], expected[..], "the batch in hand first, then the waiting users in order");
        assert_eq!(left.users[5], (user(9), Cause::Time));
        assert!(!left.everyone);
        assert_eq!(queue.backlog().waiting, 0);

        let queue = ChangeQueue::new(100);
        queue.push(&[user(1)], Cause::Change);
        let work = queue.take(10).expect("work");
        queue.finish(&work);
        queue.push_everyone();
        assert_eq!(queue.leftover(), Leftover { users: Vec::new(), everyone: true }, "a finished batch is not left");
    }

    #[tokio::test]
    async fn evaluated_through_waits_for_the_users_queued_before() {
        let queue = std::sync::Arc::new(ChangeQueue::new(100));
        queue.push(&[user(1), user(2)], Cause::Change);
        let through = queue.last_queued();
        queue.push(&[user(3)], Cause::Change);
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.evaluated_through(through).await }
        });
        let first = queue.take(1).expect("work");
        queue.finish(&first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "user 2 is not evaluated yet");
        let second = queue.take(1).expect("work");
        queue.finish(&second);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("resolves").expect("task");

        // A full recompute covers everyone queued before it was taken.
        let queue = ChangeQueue::new(2);
        queue.push(&(0..5).map(user).collect::<Vec<_>>(), Cause::Change);
        let through = queue.last_queued();
        let everyone = queue.take(10).expect("work");
        assert_eq!(everyone, Work::Everyone);
        queue.finish(&everyone);
        tokio::time::timeout(Duration::from_secs(5), queue.evaluated_through(through)).await.expect("resolves");
    }
}
