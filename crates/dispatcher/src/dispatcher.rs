//! The dispatcher: turns due deliveries into LINE requests and sends them.
//! This module holds its settings, its state and its tasks; each stage is
//! its own module: [`crate::planner`], [`crate::sender`] (with the HTTP
//! [`crate::attempt`]) and [`crate::recorder`].
//!
//! Two stages, both crash-safe because every step is a committed state change:
//! 1. planning: claim due deliveries (held by the planner's transaction),
//!    apply the policies, group identical messages into multicasts (≤ 500)
//!    and personalised ones into pushes, and commit the requests with their
//!    retry keys together with every skip and deferral;
//! 2. sending: claim due requests, send each at the endpoint's rate with its
//!    fixed retry key, and record the outcome. A crash between sending and
//!    recording means the lease expires and the same request (same key, same
//!    recipients) is sent again: LINE answers 409, which counts as sent.

use crate::limits::{Limiters, Rates, RetrySchedule};
use crate::metrics::DispatchMetrics;
use crate::planner::ScanHint;
use crate::policy::GlobalPolicy;
use crate::quota::QuotaGuard;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use renkei_campaigns::CampaignSet;
use renkei_core::Clock;
use renkei_line::LineClient;
use renkei_store::StoreError;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How the dispatcher works; `[dispatch]` in the configuration.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub timezone: Tz,
    /// The channel's limits per endpoint (the same in every instance: they share them).
    pub rates: Rates,
    /// How long a claimed request stays ours; after a crash, another
    /// instance (or the restarted one) takes it over after this.
    pub lease: Duration,
    /// Deliveries or requests claimed per round.
    pub batch: u32,
    /// Requests in flight to LINE at once.
    pub max_in_flight: usize,
    /// Planning tasks on PostgreSQL (SQLite plans with one).
    pub planners: usize,
    pub retry: RetrySchedule,
    pub global: GlobalPolicy,
    /// How often to look for due work when nothing wakes us.
    pub poll: Duration,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            timezone: chrono_tz::Asia::Tokyo,
            rates: Rates::default(),
            lease: Duration::from_secs(60),
            batch: 2_000,
            max_in_flight: 64,
            planners: 2,
            retry: RetrySchedule::default(),
            global: GlobalPolicy::default(),
            poll: Duration::from_millis(200),
        }
    }
}

/// How soon a planner looks again for due deliveries that another claim holds.
const HELD_ELSEWHERE: Duration = Duration::from_millis(20);

renkei_store::store_view! {
    /// What the dispatcher reads and writes: the outbox it plans from, the
    /// LINE requests it sends, the users its policies look at, and the
    /// channel's send budget it shares with other instances.
    pub struct DispatcherStore {
        outbox: OutboxStore,
        requests: RequestStore,
        memberships: MembershipStore,
        budget: BudgetStore,
    }
}

pub struct Dispatcher {
    pub(crate) store: DispatcherStore,
    pub(crate) line: LineClient,
    pub(crate) campaigns: Arc<CampaignSet>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) settings: DispatchSettings,
    pub(crate) owner: String,
    pub(crate) limiters: Arc<Limiters>,
    pub(crate) metrics: Arc<DispatchMetrics>,
    pub(crate) quota: Arc<QuotaGuard>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) scan: std::sync::Mutex<ScanHint>,
}

impl Dispatcher {
    pub fn new(
        store: DispatcherStore,
        line: LineClient,
        campaigns: Arc<CampaignSet>,
        clock: Arc<dyn Clock>,
        settings: DispatchSettings,
        metrics: Arc<DispatchMetrics>,
        quota: Arc<QuotaGuard>,
    ) -> Self {
        let limiters = Arc::new(Limiters::of_channel(settings.rates, store.budget.clone()).counted_in(&metrics));
        let owner = format!("dispatch-{}", Uuid::new_v4().simple());
        let scan =
            std::sync::Mutex::new(ScanHint { after: None, last_full: std::time::Instant::now(), claimed_untidied: 0 });
        Self {
            store,
            line,
            campaigns,
            clock,
            settings,
            owner,
            limiters,
            metrics,
            quota,
            wake: Arc::new(Notify::new()),
            scan,
        }
    }

    /// Wakes the planner and the sender (new deliveries were enqueued).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The channel's rate limits as this instance spends them (shared with
    /// the rich-menu linker).
    pub fn limiters(&self) -> Arc<Limiters> {
        self.limiters.clone()
    }

    /// The dispatcher's tasks: planning and a pipelined sender. Stops when `token` is cancelled.
    pub fn spawn(self: Arc<Self>, token: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let planners = if self.store.outbox.parallel_claims() { self.settings.planners.max(1) } else { 1 };
        let mut tasks: Vec<_> = (0..planners).map(|_| tokio::spawn(self.clone().planner(token.clone()))).collect();
        tasks.push(tokio::spawn(self.sender(token)));
        tasks
    }

    pub(crate) async fn idle_wait(&self, next: Result<Option<DateTime<Utc>>, StoreError>) -> Duration {
        match next {
            // Due yet not claimed: another planner holds it and commits or rolls back soon.
            Ok(Some(due)) if due < self.clock.now() => HELD_ELSEWHERE.min(self.settings.poll),
            Ok(Some(due)) => (due - self.clock.now()).to_std().unwrap_or(Duration::ZERO).min(self.settings.poll),
            _ => self.settings.poll,
        }
    }

    pub fn metrics(&self) -> &Arc<DispatchMetrics> {
        &self.metrics
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn quota_paused(&self) -> bool {
        self.metrics.quota_paused.load(Ordering::Relaxed) == 1
    }
}

pub(crate) fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}
