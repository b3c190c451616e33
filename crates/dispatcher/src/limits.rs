//! LINE's per-endpoint rate limits, as one budget per channel, and the retry
//! schedule (`renkei_core::RetrySchedule`, shared with the webhook relay).
//!
//! The `[dispatch]` rates are the CHANNEL's limits. Each endpoint's time is
//! cut into slots of at most [`GRANT_SHARE`] of a second (a grant of rate /
//! 20 requests; fewer when fewer requests wait, so no instance holds time
//! it cannot use); an instance takes a slot, spends its requests one
//! interval apart from the slot's start ([`Held`]), and takes the next slot
//! when they run out. On PostgreSQL the slots come from one row per endpoint
//! (`renkei_store` `budget`), so instances sending on one channel share the
//! rate whatever their number, and a crashed instance loses only the slot
//! it held; on SQLite (one instance) from the same rule in memory
//! ([`LocalBucket`]), never waiting for the writer.
//!
//! LINE's buckets refill at the rate with about one second of burst. Slots
//! never overlap and an idle bucket's slot reaches back at most one grant,
//! and a request is never sent later than [`LATE`] after its time, so all
//! instances together send at most `rate × (t + LATE) + grant` requests in
//! any `t`: LINE's bucket never empties, zero 429s at nearly the full rate.

use crate::metrics::DispatchMetrics;
use renkei_store::{BudgetStore, BudgetTake};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Requests per second per endpoint: the channel's limits (defaults:
/// LINE's), the same in every instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rates {
    pub push: u32,
    pub multicast: u32,
    pub rich_menu_link: u32,
    pub rich_menu_bulk: u32,
}

impl Default for Rates {
    fn default() -> Self {
        Self { push: 2_000, multicast: 200, rich_menu_link: 2_000, rich_menu_bulk: 2_000 }
    }
}

/// A grant is this share of a second of the endpoint's rate (at least one request).
pub const GRANT_SHARE: u32 = 20;

/// How late a granted request may still go; older ones are dropped, so an
/// instance that sat idle on a grant cannot burst on top of the others.
pub const LATE: Duration = Duration::from_millis(100);

/// How long to wait before asking the store again after it failed.
const STORE_RETRY: Duration = Duration::from_millis(250);

/// How an endpoint's rate is cut into grants (times in µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub rate: u32,
    /// Between two requests, rounded up (never faster than the rate).
    pub interval_us: i64,
    /// Requests per grant.
    pub grant: u32,
}

impl Pace {
    pub fn new(rate: u32) -> Self {
        let rate = rate.max(1);
        Self { rate, interval_us: i64::from(1_000_000u32.div_ceil(rate)), grant: (rate / GRANT_SHARE).max(1) }
    }

    /// A full grant's length.
    pub fn cost_us(&self) -> i64 {
        self.interval_us * i64::from(self.grant)
    }

    /// The requests to ask for when `waiting` wait here: no more than wait
    /// (a slot another instance could have used is not held idle), at most a grant.
    pub fn tokens_for(&self, waiting: u32) -> u32 {
        waiting.clamp(1, self.grant)
    }

    /// How far back an idle bucket's slot may start: one grant.
    pub fn burst_us(&self) -> i64 {
        self.cost_us()
    }
}

/// The store's slot rule in memory, for one instance: the next slot starts
/// where the last ended, or a burst back from now when the bucket sat idle.
#[derive(Debug, Clone, Default)]
pub struct LocalBucket {
    end_us: Option<i64>,
}

impl LocalBucket {
    /// The next slot's start (µs of the caller's clock).
    pub fn take(&mut self, now_us: i64, burst_us: i64, cost_us: i64) -> i64 {
        let start = self.end_us.map_or(now_us - burst_us, |end| end.max(now_us - burst_us));
        self.end_us = Some(start + cost_us);
        start
    }
}

/// The requests of one slot an instance holds: one every `interval_us`
/// from the slot's start (µs of the instance's monotonic clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    next_at_us: i64,
    left: u32,
    interval_us: i64,
    /// Requests dropped as stale and not yet counted (see [`Held::take_stale`]).
    stale: u32,
}

impl Held {
    pub fn new(start_us: i64, tokens: u32, pace: &Pace) -> Self {
        Self { next_at_us: start_us, left: tokens, interval_us: pace.interval_us, stale: 0 }
    }

    /// How many requests were dropped as stale since the last call.
    pub fn take_stale(&mut self) -> u32 {
        std::mem::take(&mut self.stale)
    }

    /// Takes the next request: the time it may go (later than `now_us`:
    /// wait until then). Requests whose time is more than `late_us` before
    /// `now_us` are dropped; `None` when none are left.
    pub fn take(&mut self, now_us: i64, late_us: i64) -> Option<i64> {
        let stale_us = now_us - late_us - self.next_at_us;
        if stale_us > 0 {
            let stale = u32::try_from((stale_us + self.interval_us - 1) / self.interval_us).unwrap_or(u32::MAX);
            self.stale = self.stale.saturating_add(stale.min(self.left));
            self.left = self.left.saturating_sub(stale);
            self.next_at_us += i64::from(stale) * self.interval_us;
        }
        if self.left == 0 {
            return None;
        }
        let at = self.next_at_us;
        self.next_at_us += self.interval_us;
        self.left -= 1;
        Some(at)
    }
}

/// Where an endpoint's slots come from.
enum Source {
    /// One instance (SQLite): in memory.
    Local(std::sync::Mutex<LocalBucket>),
    /// Every instance on the channel (PostgreSQL): the store's row.
    Shared(Arc<dyn BudgetStore>),
}

/// One endpoint's share of the channel's budget in this instance.
pub struct Limiter {
    bucket: &'static str,
    pace: Pace,
    source: Source,
    held: tokio::sync::Mutex<Option<Held>>,
    epoch: Instant,
    /// Slots taken (on PostgreSQL: round trips to the budget).
    takes: std::sync::atomic::AtomicU64,
    /// Granted requests that went unused: their time passed by more than
    /// [`LATE`] before a request was ready to take them.
    dropped: std::sync::atomic::AtomicU64,
    /// Where the unused grants are counted for `/metrics`, too.
    metrics: Option<Arc<DispatchMetrics>>,
    /// Requests waiting in [`Limiter::until_ready`].
    waiting: std::sync::atomic::AtomicU32,
}

/// Counts a request waiting in [`Limiter::until_ready`] while it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicU32);

impl<'a> Waiting<'a> {
    fn new(count: &'a std::sync::atomic::AtomicU32) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Limiter {
    fn new(bucket: &'static str, rate: u32, budget: Option<Arc<dyn BudgetStore>>) -> Self {
        let source = match budget {
            Some(store) => Source::Shared(store),
            None => Source::Local(std::sync::Mutex::new(LocalBucket::default())),
        };
        Self {
            bucket,
            pace: Pace::new(rate),
            source,
            held: tokio::sync::Mutex::new(None),
            epoch: Instant::now(),
            takes: std::sync::atomic::AtomicU64::new(0),
            dropped: std::sync::atomic::AtomicU64::new(0),
            metrics: None,
            waiting: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// How many slots this instance has taken (on PostgreSQL, round trips to the store).
    pub fn takes(&self) -> u64 {
        self.takes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many granted requests went unused (late by more than [`LATE`]):
    /// the share of the channel's rate this instance let pass.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts granted requests that went unused, here and in the metrics.
    fn count_unused(&self, stale: u32) {
        self.dropped.fetch_add(u64::from(stale), std::sync::atomic::Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            DispatchMetrics::add(&metrics.budget_unused, u64::from(stale));
        }
    }

    /// Whether this endpoint's budget is shared with other instances (taken from the store).
    pub fn shared(&self) -> bool {
        matches!(self.source, Source::Shared(_))
    }

    fn now_us(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    /// Waits until this instance may send one request to the endpoint.
    /// Waiters queue in order (the lock is fair), so requests go one
    /// interval apart.
    pub async fn until_ready(&self) {
        let _waiting = Waiting::new(&self.waiting);
        let mut held = self.held.lock().await;
        loop {
            let now = self.now_us();
            let taken = held.as_mut().map(|h| (h.take(now, micros(LATE)), h.take_stale()));
            let (taken, stale) = taken.unwrap_or((None, 0));
            self.count_unused(stale);
            if let Some(at) = taken {
                if at > now {
                    tokio::time::sleep_until(self.epoch + Duration::from_micros(at.unsigned_abs())).await;
                }
                return;
            }
            let tokens = self.pace.tokens_for(self.waiting.load(std::sync::atomic::Ordering::Relaxed));
            *held = Some(Held::new(self.next_slot(tokens).await, tokens, &self.pace));
        }
    }

    /// The start of the next slot, `tokens` requests long, granted to this instance, in its clock.
    async fn next_slot(&self, tokens: u32) -> i64 {
        self.takes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (burst_us, cost_us) = (self.pace.burst_us(), self.pace.interval_us * i64::from(tokens));
        loop {
            match &self.source {
                Source::Local(bucket) => {
                    let now = self.now_us();
                    let mut bucket = bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    return bucket.take(now, burst_us, cost_us);
                }
                Source::Shared(store) => {
                    let take = BudgetTake { bucket: self.bucket, rate: self.pace.rate, burst_us, cost_us };
                    match store.take_budget(take).await {
                        // The slot's offset from the store's time, from when the answer
                        // arrived: never earlier than the store meant.
                        Ok(slot) => return self.now_us() + (slot.start_us - slot.now_us),
                        Err(error) => {
                            tracing::warn!(%error, bucket = self.bucket, "taking from the channel's send budget failed; retrying");
                            tokio::time::sleep(STORE_RETRY).await;
                        }
                    }
                }
            }
        }
    }
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// The channel's endpoints, as this instance spends them.
pub struct Limiters {
    pub push: Limiter,
    pub multicast: Limiter,
    pub rich_menu_link: Limiter,
    pub rich_menu_bulk: Limiter,
}

impl Limiters {
    /// Limits kept in memory: this instance is the only one on the channel.
    pub fn new(rates: Rates) -> Self {
        Self::with_budget(rates, None)
    }

    /// Limits shared through `budget` with every instance on the channel
    /// when the store is shared (PostgreSQL); in memory otherwise.
    pub fn of_channel(rates: Rates, budget: Arc<dyn BudgetStore>) -> Self {
        let shared = budget.budget_shared().then_some(budget);
        Self::with_budget(rates, shared)
    }

    /// These limits, counting their unused grants in `metrics` too.
    pub fn counted_in(mut self, metrics: &Arc<DispatchMetrics>) -> Self {
        for limiter in [&mut self.push, &mut self.multicast, &mut self.rich_menu_link, &mut self.rich_menu_bulk] {
            limiter.metrics = Some(metrics.clone());
        }
        self
    }

    fn with_budget(rates: Rates, budget: Option<Arc<dyn BudgetStore>>) -> Self {
        Self {
            push: Limiter::new("push", rates.push, budget.clone()),
            multicast: Limiter::new("multicast", rates.multicast, budget.clone()),
            rich_menu_link: Limiter::new("rich_menu_link", rates.rich_menu_link, budget.clone()),
            rich_menu_bulk: Limiter::new("rich_menu_bulk", rates.rich_menu_bulk, budget),
        }
    }
}

pub use renkei_core::RetrySchedule;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_a_twentieth_of_a_second_and_never_faster_than_the_rate() {
        assert_eq!(Pace::new(2_000), Pace { rate: 2_000, interval_us: 500, grant: 100 });
        assert_eq!(Pace::new(200).cost_us(), 50_000);
        // 3/s: 333,334 µs apart (rounded up), one request per grant.
        assert_eq!(Pace::new(3), Pace { rate: 3, interval_us: 333_334, grant: 1 });
        assert_eq!(Pace::new(0).rate, 1);
        // No more than wait, at most a grant.
        assert_eq!(
            (Pace::new(200).tokens_for(0), Pace::new(200).tokens_for(3), Pace::new(200).tokens_for(64)),
            (1, 3, 10)
        );
    }

    #[test]
    fn local_slots_follow_one_another_and_an_idle_bucket_reaches_back_one_burst() {
        let mut bucket = LocalBucket::default();
        assert_eq!(bucket.take(1_000_000, 50_000, 50_000), 950_000);
        assert_eq!(bucket.take(1_000_000, 50_000, 50_000), 1_000_000);
        assert_eq!(bucket.take(1_010_000, 50_000, 50_000), 1_050_000);
        // Idle for a second: the unused time is gone but for the burst.
        assert_eq!(bucket.take(2_100_000, 50_000, 50_000), 2_050_000);
    }

    #[test]
    fn held_requests_go_one_interval_apart_and_stale_ones_are_dropped() {
        let pace = Pace::new(200); // 5 ms apart, 10 a grant
        let mut held = Held::new(1_000_000, pace.grant, &pace);
        assert_eq!(held.take(990_000, 100_000), Some(1_000_000), "not yet: wait for it");
        assert_eq!(held.take(990_000, 100_000), Some(1_005_000));
        // At 1,130,000 requests older than 100 ms are gone: 1,010,000..1,025,000 (4 of them).
        assert_eq!(held.take(1_130_000, 100_000), Some(1_030_000));
        assert_eq!(held.take_stale(), 4, "the four dropped are counted");
        assert_eq!(held.take_stale(), 0, "once");
        assert_eq!(held.take(1_130_000, 100_000), Some(1_035_000), "late ones go at once");
        assert_eq!(held.take(1_130_000, 100_000), Some(1_040_000));
        assert_eq!(held.take(1_130_000, 100_000), Some(1_045_000));
        assert_eq!(held.take(1_130_000, 100_000), None, "the grant's ten are used or dropped");
        let mut idle = Held::new(0, pace.grant, &pace);
        assert_eq!(idle.take(10_000_000, 100_000), None);
        assert_eq!(idle.take_stale(), pace.grant, "a grant gone stale whole counts whole");
    }

    /// The sends a grant sequence allows in any window stay within the rate
    /// plus `LATE` and a grant, however late the instance spends them.
    #[test]
    fn spending_stays_within_rate_plus_late_and_a_grant() {
        let pace = Pace::new(2_000);
        let mut bucket = LocalBucket::default();
        let mut sends = Vec::new();
        let mut now = 0i64;
        // An instance that stalls now and then in the middle of a grant (a
        // slow LINE, a busy runtime) and then catches up.
        for _ in 0..400 {
            let mut held = Held::new(bucket.take(now, pace.burst_us(), pace.cost_us()), pace.grant, &pace);
            while let Some(at) = held.take(now, micros(LATE)) {
                now = now.max(at);
                sends.push(now);
                if sends.len() % 3_000 == 0 {
                    now += 90_000;
                }
            }
        }
        // Sends are in time order: the most in any one second, by a sliding window.
        let window = 1_000_000;
        let (mut first, mut most) = (0, 0);
        for (last, &t) in sends.iter().enumerate() {
            while sends[first] <= t - window {
                first += 1;
            }
            most = most.max(last + 1 - first);
        }
        let bound = usize::try_from(2_000 * (window + micros(LATE)) / 1_000_000 + 1).unwrap_or(usize::MAX);
        assert!(most <= bound, "{most} sends in a second > {bound}");
        assert!(most >= 2_000, "the full rate between stalls: {most}");
    }

    #[tokio::test]
    async fn a_local_limiter_spaces_requests_at_the_rate() {
        let limiters = Limiters::new(Rates { push: 100, ..Rates::default() });
        assert!(!limiters.push.shared());
        let start = Instant::now();
        for _ in 0..30 {
            limiters.push.until_ready().await;
        }
        // 5 go at once (a grant back from an idle bucket), the other 25 at 10 ms each.
        assert!(start.elapsed() >= Duration::from_millis(240), "{:?}", start.elapsed());
    }

    /// Unused grants (counted by `Held::take_stale`) are counted per
    /// limiter and, for limits `counted_in` an instance's metrics, there.
    #[test]
    fn unused_grants_are_counted_in_the_limiter_and_the_metrics() {
        let metrics = Arc::new(DispatchMetrics::default());
        let limiters = Limiters::new(Rates::default()).counted_in(&metrics);
        limiters.multicast.count_unused(4);
        limiters.push.count_unused(3);
        assert_eq!((limiters.multicast.dropped(), limiters.push.dropped()), (4, 3));
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains("renkei_line_budget_unused_total 7"), "{out}");
        let alone = Limiters::new(Rates::default());
        alone.push.count_unused(2);
        assert_eq!(alone.push.dropped(), 2, "counted without metrics too");
    }
}
