//! The dispatcher: turns due deliveries into LINE requests and sends them.
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
use crate::policy::{CampaignRules, Decision, GlobalPolicy, SendFacts, SkipReason, decide};
use crate::quota::QuotaGuard;
use crate::{DispatchError, DispatchResult};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use renkei_campaigns::{Campaign, CampaignSet, Trigger};
use renkei_core::{Clock, LineUserId, MemberId};
use renkei_line::{LineClient, LineError, Message, MulticastRequest, PushRequest};
use renkei_store::dispatch::{
    ClaimOutcome, NewRequest, PendingDelivery, QueueKey, RequestKind, SendRequest, UserSendFacts,
};
use renkei_store::membership::UserRecord;
use renkei_store::{Store, StoreError};
use serde_json::Value;
// foldhash: the planner hashes every user id of a batch several times; SipHash was a tenth of its CPU.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How the dispatcher works; `[dispatch]` in the configuration.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    pub timezone: Tz,
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
            batch: 500,
            max_in_flight: 64,
            planners: 3,
            retry: RetrySchedule::default(),
            global: GlobalPolicy::default(),
            poll: Duration::from_millis(200),
        }
    }
}

/// How soon a planner looks again for due deliveries that another claim holds.
const HELD_ELSEWHERE: Duration = Duration::from_millis(20);

/// Planners look past what they took (see `claim_deliveries_after`), and
/// from the start of the queue again at least this often: a claim that
/// another instance rolled back, or a delivery enqueued with an earlier due
/// time, waits at most this long more.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(1);

/// Where this process's planners start looking in the queue.
struct ScanHint {
    after: Option<QueueKey>,
    last_full: std::time::Instant,
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    line: LineClient,
    campaigns: Arc<CampaignSet>,
    clock: Arc<dyn Clock>,
    settings: DispatchSettings,
    owner: String,
    limiters: Arc<Limiters>,
    metrics: Arc<DispatchMetrics>,
    quota: Arc<QuotaGuard>,
    wake: Arc<Notify>,
    scan: std::sync::Mutex<ScanHint>,
}

/// What happened to one request at LINE.
#[derive(Clone)]
enum Outcome {
    Sent { accepted: Option<String>, already: bool },
    Retry { error: String, rate_limited: bool },
    MonthlyLimit { error: String },
    Failed { error: String },
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        line: LineClient,
        campaigns: Arc<CampaignSet>,
        clock: Arc<dyn Clock>,
        settings: DispatchSettings,
        metrics: Arc<DispatchMetrics>,
        quota: Arc<QuotaGuard>,
    ) -> Self {
        let limiters = Arc::new(Limiters::new(settings.rates));
        let owner = format!("dispatch-{}", Uuid::new_v4().simple());
        let scan = std::sync::Mutex::new(ScanHint { after: None, last_full: std::time::Instant::now() });
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

    pub fn limiters(&self) -> Arc<Limiters> {
        self.limiters.clone()
    }

    /// One planning round: returns how many deliveries it claimed.
    pub async fn plan_once(&self) -> DispatchResult<usize> {
        let now = self.clock.now();
        let started = std::time::Instant::now();
        let mut after = self.scan_from();
        let mut claim = self.store.claim_deliveries_after(now, self.settings.batch, after).await?;
        if after.is_some() && claim.len() < self.settings.batch as usize {
            // The queue past the hint is running dry: what is left may be behind it.
            self.reset_scan();
            if claim.is_empty() {
                after = None;
                claim = self.store.claim_deliveries_after(now, self.settings.batch, None).await?;
            }
        }
        if claim.is_empty() {
            return Ok(0);
        }
        // Everything before a claim's last row is taken or held, unless a
        // hinted claim came up short (then the next one looks from the start).
        if after.is_none() || claim.len() == self.settings.batch as usize {
            self.advance_scan(claim.deliveries.last().map(|d| (d.due_at, d.id)));
        }
        let claimed = claim.len();
        let claimed_at = std::time::Instant::now();
        DispatchMetrics::add(&self.metrics.planning_claim_micros, micros(claimed_at - started));
        let (outcome, reserved) = match self.plan(std::mem::take(&mut claim.deliveries), now).await {
            Ok(planned) => planned,
            Err(error) => {
                // Give the deliveries back at once, not when the connection is next used.
                if let Err(release) = claim.release().await {
                    tracing::warn!(%release, "releasing a claim failed; its connection ends it");
                }
                return Err(error);
            }
        };
        let planned_at = std::time::Instant::now();
        DispatchMetrics::add(&self.metrics.planning_policy_micros, micros(planned_at - claimed_at));
        // Nothing is sent before this commit; if it fails, the claim rolls back.
        let committed = claim.commit(&outcome, now).await;
        DispatchMetrics::add(&self.metrics.planning_commit_micros, micros(planned_at.elapsed()));
        let ids = match committed {
            Ok(ids) => ids,
            Err(error) => {
                self.quota.release(reserved);
                // Its deliveries are back in the queue, behind the hint.
                self.reset_scan();
                return Err(error.into());
            }
        };
        DispatchMetrics::add(&self.metrics.deliveries_skipped, outcome.skips.len() as u64);
        DispatchMetrics::add(&self.metrics.deliveries_deferred, outcome.defers.len() as u64);
        if !ids.is_empty() {
            DispatchMetrics::add(&self.metrics.requests_created, ids.len() as u64);
            self.wake.notify_waiters();
        }
        Ok(claimed)
    }

    /// Where the next claim starts: past the hint, or from the start when a
    /// full look is due.
    fn scan_from(&self) -> Option<QueueKey> {
        let mut scan = self.scan.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if scan.last_full.elapsed() >= FULL_SCAN_EVERY {
            scan.last_full = std::time::Instant::now();
            return None;
        }
        scan.after
    }

    fn advance_scan(&self, last: Option<QueueKey>) {
        let mut scan = self.scan.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        scan.after = scan.after.max(last);
    }

    fn reset_scan(&self) {
        let mut scan = self.scan.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        scan.after = None;
    }

    /// What to do with each claimed delivery, and how many recipients were
    /// reserved in the month's quota for the requests.
    async fn plan(
        &self,
        mut deliveries: Vec<PendingDelivery>,
        now: DateTime<Utc>,
    ) -> DispatchResult<(ClaimOutcome, u64)> {
        let mut outcome = ClaimOutcome::default();
        if let Some(until) = self.quota.paused_until(now) {
            outcome.defers = deliveries.iter().map(|d| (d.id, until)).collect();
            return Ok((outcome, 0));
        }
        let context = PolicyContext {
            store: self.store.as_ref(),
            campaigns: &self.campaigns,
            timezone: self.settings.timezone,
            global: &self.settings.global,
        };
        let unresolved: HashSet<i64> = deliveries.iter().filter(|d| d.line_user_id.is_none()).map(|d| d.id).collect();
        let decisions = decide_deliveries(&context, &mut deliveries, now).await?;
        // Keyed by campaign and payload: the deliveries of one claim that carry
        // the same messages share one decoded payload (see `Delivery::messages`).
        let mut sends: BTreeMap<(String, usize), (Arc<Value>, Recipients)> = BTreeMap::new();
        for (delivery, decision) in deliveries.into_iter().zip(decisions) {
            if unresolved.contains(&delivery.id)
                && let Some(user) = &delivery.line_user_id
            {
                outcome.resolved.push((delivery.id, user.clone()));
            }
            match decision {
                Decision::Skip(reason) => outcome.skips.push((delivery.id, reason)),
                Decision::Defer(until) => outcome.defers.push((delivery.id, until)),
                // `decide` sends only to a known user.
                Decision::Send => {
                    if let Some(user) = delivery.line_user_id {
                        let key = (delivery.campaign_id, Arc::as_ptr(&delivery.messages) as usize);
                        let (_, recipients) = sends.entry(key).or_insert_with(|| (delivery.messages, Vec::new()));
                        recipients.push((delivery.id, user));
                    }
                }
            }
        }
        for (messages, recipients) in sends.into_values() {
            outcome.requests.extend(group_requests(&messages, recipients));
        }
        // Send what fits in the month's quota; hold the rest (nothing dropped).
        if let Some(room) = self.quota.room() {
            let mut fits = 0u64;
            let mut held = Vec::new();
            outcome.requests.retain(|r| {
                let n = r.recipients.len() as u64;
                if fits + n <= room {
                    fits += n;
                    true
                } else {
                    held.extend(r.delivery_ids.iter().copied());
                    false
                }
            });
            if !held.is_empty() {
                // Later rounds hold everything until a refresh shows room.
                let until = self.quota.hold(now);
                outcome.defers.extend(held.into_iter().map(|id| (id, until)));
            }
        }
        let recipients: u64 = outcome.requests.iter().map(|r| r.recipients.len() as u64).sum();
        if recipients > 0 && !self.quota.reserve(recipients, now) {
            let until = self.quota.paused_until(now).unwrap_or(now + chrono::Duration::minutes(1));
            let requests = std::mem::take(&mut outcome.requests);
            outcome.defers.extend(requests.iter().flat_map(|r| r.delivery_ids.iter().map(|id| (*id, until))));
            return Ok((outcome, 0));
        }
        Ok((outcome, recipients))
    }

    /// Claims due requests and sends them; returns how many were claimed.
    /// (The long-running loop pipelines this; tests and the demo can call it directly.)
    pub async fn send_once(&self) -> DispatchResult<usize> {
        let requests = self.claim_requests().await?;
        let n = requests.len();
        let mut handles = Vec::with_capacity(n);
        let semaphore = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        for request in requests {
            let permit = semaphore.clone().acquire_owned().await.map_err(|e| DispatchError::Task(e.to_string()))?;
            let line = self.line.clone();
            let limiters = self.limiters.clone();
            handles.push(tokio::spawn(async move {
                let outcome = attempt(&line, &limiters, &request).await;
                drop(permit);
                (request, outcome)
            }));
        }
        for handle in handles {
            let (request, outcome) = handle.await.map_err(|e| DispatchError::Task(e.to_string()))?;
            self.record(&request, outcome).await?;
        }
        Ok(n)
    }

    async fn claim_requests(&self) -> DispatchResult<Vec<SendRequest>> {
        let now = self.clock.now();
        let lease_until =
            now + chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::seconds(60));
        Ok(self.store.claim_requests(now, self.settings.batch, &self.owner, lease_until).await?)
    }

    async fn record(&self, request: &SendRequest, outcome: Outcome) -> DispatchResult<()> {
        let now = self.clock.now();
        match outcome {
            Outcome::Sent { accepted, already } => {
                if already {
                    DispatchMetrics::add(&self.metrics.requests_already_accepted, 1);
                }
                DispatchMetrics::add(&self.metrics.requests_sent, 1);
                DispatchMetrics::add(&self.metrics.recipients_sent, request.recipients.len() as u64);
                self.store.complete_request(request.id, accepted.as_deref(), now).await?;
            }
            Outcome::Retry { error, rate_limited } => {
                if rate_limited {
                    DispatchMetrics::add(&self.metrics.rate_limited, 1);
                }
                if self.settings.retry.exhausted(request.attempts) {
                    DispatchMetrics::add(&self.metrics.requests_failed, 1);
                    let error = format!("gave up after {} attempts: {error}", request.attempts);
                    tracing::error!(request = request.id, %error, "LINE request failed");
                    self.store.fail_request(request.id, &error, now).await?;
                } else {
                    DispatchMetrics::add(&self.metrics.requests_retried, 1);
                    let wait = self.settings.retry.delay(request.attempts, rand::random::<f64>());
                    let next = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(1));
                    tracing::debug!(request = request.id, attempts = request.attempts, %error, ?wait, "LINE request will be retried");
                    self.store.retry_request(request.id, next, &error).await?;
                }
            }
            Outcome::MonthlyLimit { error } => {
                // Not the request's fault: hold it (same key) until the quota allows again.
                let until = self.quota.exhausted(now);
                tracing::warn!(request = request.id, %error, resume_check = %until, "monthly message limit reached; sending paused");
                self.store.retry_request(request.id, until, &error).await?;
            }
            Outcome::Failed { error } => {
                DispatchMetrics::add(&self.metrics.requests_failed, 1);
                tracing::warn!(request = request.id, %error, "LINE refused the request; not retried");
                self.store.fail_request(request.id, &error, now).await?;
            }
        }
        Ok(())
    }

    /// The dispatcher's tasks: planning and a pipelined sender. Stops when `token` is cancelled.
    pub fn spawn(self: Arc<Self>, token: CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        // PostgreSQL claims with SKIP LOCKED, so planners work side by side;
        // SQLite has one writer, where a second planner would only wait.
        let planners = match self.store.backend() {
            renkei_store::Backend::Postgres => self.settings.planners.max(1),
            renkei_store::Backend::Sqlite => 1,
        };
        let mut tasks: Vec<_> = (0..planners).map(|_| tokio::spawn(self.clone().planner(token.clone()))).collect();
        tasks.push(tokio::spawn(self.sender(token)));
        tasks
    }

    async fn planner(self: Arc<Self>, token: CancellationToken) {
        while !token.is_cancelled() {
            let claimed = match self.plan_once().await {
                Ok(n) => n,
                Err(error) => {
                    tracing::warn!(%error, "planning deliveries failed; retrying");
                    0
                }
            };
            if claimed > 0 {
                continue;
            }
            // Listen before looking, so a wake during the query is not lost.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let wait = self.idle_wait(self.store.next_delivery_due().await).await;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = woken => {}
                _ = token.cancelled() => {}
            }
        }
    }

    async fn idle_wait(&self, next: Result<Option<DateTime<Utc>>, StoreError>) -> Duration {
        match next {
            // Due yet not claimed: another planner holds it and commits or rolls back soon.
            Ok(Some(due)) if due < self.clock.now() => HELD_ELSEWHERE.min(self.settings.poll),
            Ok(Some(due)) => (due - self.clock.now()).to_std().unwrap_or(Duration::ZERO).min(self.settings.poll),
            _ => self.settings.poll,
        }
    }

    /// Claims batches ahead (one in reserve) so LINE is never kept waiting on the database.
    async fn sender(self: Arc<Self>, token: CancellationToken) {
        let (batches, mut receiver) = mpsc::channel::<Vec<SendRequest>>(1);
        let (outcomes, outcome_receiver) = mpsc::channel::<(SendRequest, Outcome)>(self.settings.batch as usize * 2);
        let fetcher = {
            let this = self.clone();
            let token = token.clone();
            tokio::spawn(async move {
                while !token.is_cancelled() {
                    // Listen before looking, so a wake during the claim is not lost.
                    let woken = this.wake.notified();
                    tokio::pin!(woken);
                    woken.as_mut().enable();
                    match this.claim_requests().await {
                        Ok(batch) if !batch.is_empty() => {
                            if batches.send(batch).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {
                            let wait = this.idle_wait(this.store.next_request_due().await).await;
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = woken => {}
                                _ = token.cancelled() => {}
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "claiming LINE requests failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            })
        };
        let recorder = tokio::spawn(self.clone().recorder(outcome_receiver));
        let semaphore = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        while let Some(batch) = receiver.recv().await {
            for request in batch {
                let Ok(permit) = semaphore.clone().acquire_owned().await else { break };
                let line = self.line.clone();
                let limiters = self.limiters.clone();
                let outcomes = outcomes.clone();
                tokio::spawn(async move {
                    let outcome = attempt(&line, &limiters, &request).await;
                    drop(permit);
                    let _ = outcomes.send((request, outcome)).await;
                });
            }
        }
        let _ = fetcher.await;
        // Let requests in flight finish and be recorded before stopping.
        let _ = semaphore.acquire_many(self.settings.max_in_flight.max(1) as u32).await;
        drop(outcomes);
        let _ = recorder.await;
    }

    /// Records outcomes; accepted requests are written in batches (one
    /// transaction for up to a batch), so the database keeps up with LINE's rate.
    async fn recorder(self: Arc<Self>, mut outcomes: mpsc::Receiver<(SendRequest, Outcome)>) {
        let max = self.settings.batch.max(1) as usize;
        while let Some(first) = outcomes.recv().await {
            let mut batch = vec![first];
            while batch.len() < max {
                match outcomes.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let (sent, other): (Vec<_>, Vec<_>) =
                batch.into_iter().partition(|(_, outcome)| matches!(outcome, Outcome::Sent { .. }));
            self.with_retries("recording accepted LINE requests", || self.record_sent(&sent)).await;
            for (request, outcome) in other {
                self.with_retries("recording a LINE outcome", || self.record(&request, outcome.clone())).await;
            }
        }
    }

    async fn with_retries<F, Fut>(&self, what: &str, mut write: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = DispatchResult<()>>,
    {
        for attempt in 1..=6u64 {
            match write().await {
                Ok(()) => return,
                Err(error) if attempt < 6 => {
                    tracing::warn!(%error, attempt, "{what} failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(error) => {
                    // The lease expires and the request goes again with its key: LINE answers 409.
                    tracing::error!(%error, "{what} failed; the request will be re-sent with its retry key");
                }
            }
        }
    }

    async fn record_sent(&self, sent: &[(SendRequest, Outcome)]) -> DispatchResult<()> {
        if sent.is_empty() {
            return Ok(());
        }
        let mut done = Vec::with_capacity(sent.len());
        let mut recipients = 0u64;
        let mut already = 0u64;
        for (request, outcome) in sent {
            if let Outcome::Sent { accepted, already: was } = outcome {
                done.push((request.id, accepted.clone()));
                recipients += request.recipients.len() as u64;
                already += u64::from(*was);
            }
        }
        self.store.complete_requests(&done, self.clock.now()).await?;
        DispatchMetrics::add(&self.metrics.requests_sent, done.len() as u64);
        DispatchMetrics::add(&self.metrics.recipients_sent, recipients);
        DispatchMetrics::add(&self.metrics.requests_already_accepted, already);
        Ok(())
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

/// What the policy layer needs to look at.
pub struct PolicyContext<'a> {
    pub store: &'a dyn Store,
    pub campaigns: &'a CampaignSet,
    pub timezone: Tz,
    pub global: &'a GlobalPolicy,
}

/// The policy decision for each delivery at `now`, gathering the facts in a
/// few queries per batch (never one per delivery). Deliveries made for a
/// member whose LINE user was unknown are resolved through the link (in
/// place; nothing is written). Sends decided earlier in the batch count
/// towards caps.
pub async fn decide_deliveries(
    context: &PolicyContext<'_>,
    deliveries: &mut [PendingDelivery],
    now: DateTime<Utc>,
) -> DispatchResult<Vec<Decision>> {
    let store = context.store;
    let unresolved: Vec<MemberId> = deliveries
        .iter()
        .filter(|d| d.line_user_id.is_none())
        .filter_map(|d| d.member_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let linked = store.member_line_users(&unresolved).await?;
    for delivery in deliveries.iter_mut().filter(|d| d.line_user_id.is_none()) {
        if let Some(user) = delivery.member_id.as_ref().and_then(|m| linked.get(m)) {
            delivery.line_user_id = Some(user.clone());
        }
    }
    let facts = BatchFacts::load(context, deliveries, now).await?;
    // Sends decided earlier in this batch, kept only when a cap will read them.
    let mut batch_by_campaign: HashMap<(&str, &LineUserId), u64> = HashMap::new();
    let mut batch_overall: HashMap<&LineUserId, u64> = HashMap::new();
    let mut decisions = Vec::with_capacity(deliveries.len());
    for delivery in deliveries.iter() {
        let Some(campaign) = context.campaigns.get(&delivery.campaign_id) else {
            decisions.push(Decision::Skip(SkipReason::CampaignRemoved));
            continue;
        };
        let mut send = SendFacts {
            invalid: delivery.context.get("error").is_some()
                || delivery.messages.as_array().is_none_or(|m| m.is_empty()),
            expired: delivery.context.get("expired").is_some(),
            has_line_user: delivery.line_user_id.is_some(),
            in_audience: true,
            ..SendFacts::default()
        };
        if let Some(user) = &delivery.line_user_id
            && !send.invalid
        {
            let user_facts = facts.users.get(user);
            send.following = user_facts.is_some_and(|f| f.following);
            let current_member = user_facts.and_then(|f| f.member_id.as_ref());
            send.link_lost = delivery.member_id.is_some() && current_member != delivery.member_id.as_ref();
            if let Some(audience) = &campaign.audience {
                send.in_audience = user_facts.is_some_and(|f| f.segments.contains(audience));
            }
            if let Trigger::Event { unless: Some(unless), .. } = &campaign.trigger {
                send.cancelled = cancelled_by(unless, &delivery.context, facts.events.get(user), now);
            }
            if campaign.frequency_cap.is_some() {
                let stored = facts.by_campaign.get(&(campaign.id.as_str(), user)).copied().unwrap_or(0);
                send.sent_by_campaign =
                    stored + batch_by_campaign.get(&(campaign.id.as_str(), user)).copied().unwrap_or(0);
            }
            if context.global.per_user_cap.is_some() {
                send.sent_overall =
                    facts.overall.get(user).copied().unwrap_or(0) + batch_overall.get(user).copied().unwrap_or(0);
            }
        }
        let rules = CampaignRules {
            frequency_cap: campaign.frequency_cap.as_ref(),
            quiet_hours: campaign.quiet_hours.as_ref(),
        };
        let decision = decide(&send, rules, context.global, now, context.timezone);
        if decision == Decision::Send
            && let Some(user) = &delivery.line_user_id
        {
            if campaign.frequency_cap.is_some() {
                *batch_by_campaign.entry((campaign.id.as_str(), user)).or_default() += 1;
            }
            if context.global.per_user_cap.is_some() {
                *batch_overall.entry(user).or_default() += 1;
            }
        }
        decisions.push(decision);
    }
    Ok(decisions)
}

/// The stored facts the policies need for one batch of deliveries.
struct BatchFacts<'a> {
    users: HashMap<LineUserId, UserSendFacts>,
    /// Users with a delivery of a campaign that has `unless`, and their events of those types.
    events: HashMap<LineUserId, UserRecord>,
    /// Stored sends within each capped campaign's window.
    by_campaign: HashMap<(&'a str, &'a LineUserId), u64>,
    /// Stored sends within the global cap's window.
    overall: HashMap<LineUserId, u64>,
}

impl<'a> BatchFacts<'a> {
    async fn load(
        context: &PolicyContext<'_>,
        deliveries: &'a [PendingDelivery],
        now: DateTime<Utc>,
    ) -> DispatchResult<Self> {
        let store = context.store;
        // Each (known) campaign of the batch with its distinct users.
        let mut users_of: BTreeMap<&'a str, Vec<&'a LineUserId>> = BTreeMap::new();
        let mut pairs = HashSet::new();
        for delivery in deliveries {
            if let Some(user) = &delivery.line_user_id
                && pairs.insert((delivery.campaign_id.as_str(), user))
            {
                users_of.entry(delivery.campaign_id.as_str()).or_default().push(user);
            }
        }
        let batch: Vec<(&'a str, &Campaign, &Vec<&'a LineUserId>)> =
            users_of.iter().filter_map(|(id, users)| Some((*id, context.campaigns.get(id)?, users))).collect();
        let mut distinct = HashSet::with_capacity(pairs.len());
        let all: Vec<LineUserId> =
            pairs.into_iter().filter(|(_, u)| distinct.insert(*u)).map(|(_, u)| u.clone()).collect();

        let segments: BTreeSet<String> = batch.iter().filter_map(|(_, c, _)| c.audience.clone()).collect();
        let users = store.send_facts(&all, &Vec::from_iter(segments)).await?;

        let mut unless_types = BTreeSet::new();
        let mut unless_users = HashSet::new();
        for (_, campaign, list) in &batch {
            if let Trigger::Event { unless: Some(unless), .. } = &campaign.trigger {
                unless_types.insert(unless.event.clone());
                unless_users.extend(list.iter().map(|u| (*u).clone()));
            }
        }
        let events = if unless_users.is_empty() {
            HashMap::new()
        } else {
            let records = store.load_users(&Vec::from_iter(unless_users), Some(&Vec::from_iter(unless_types))).await?;
            records.into_iter().map(|r| (r.line_user_id.clone(), r)).collect()
        };

        let mut by_campaign = HashMap::new();
        for (id, campaign, list) in &batch {
            let Some(cap) = &campaign.frequency_cap else { continue };
            let users: Vec<LineUserId> = list.iter().map(|u| (*u).clone()).collect();
            let counts = store.sent_counts(&users, Some(id), now - cap.per).await?;
            for user in list.iter() {
                if let Some(n) = counts.get(*user) {
                    by_campaign.insert((*id, *user), *n);
                }
            }
        }
        let overall = match &context.global.per_user_cap {
            Some(cap) => store.sent_counts(&all, None, now - cap.per).await?,
            None => HashMap::new(),
        };
        Ok(Self { users, events, by_campaign, overall })
    }
}

/// Whether the campaign's `unless` event happened for this delivery's trigger event.
fn cancelled_by(
    unless: &renkei_campaigns::Unless,
    context: &Value,
    record: Option<&UserRecord>,
    now: DateTime<Utc>,
) -> bool {
    let Some(event) = context.get("event") else { return false };
    let Some(occurred_at) =
        event.get("occurred_at").and_then(Value::as_str).and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    else {
        return false;
    };
    let empty = serde_json::Map::new();
    let props = event.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    record.is_some_and(|r| {
        r.events.iter().any(|e| {
            unless.cancels(occurred_at.with_timezone(&Utc), props, &e.event_type, e.occurred_at, &e.properties, now)
        })
    })
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// Deliveries and their users, in the order they go out.
type Recipients = Vec<(i64, LineUserId)>;

/// Identical messages: one push for a single recipient, else multicasts of
/// ≤ 500 distinct users (a user twice goes in a later request).
fn group_requests(messages: &Value, recipients: Recipients) -> Vec<NewRequest> {
    let mut out = Vec::new();
    let mut remaining = recipients;
    while !remaining.is_empty() {
        let mut seen = HashSet::new();
        let goes_now: Vec<bool> = remaining
            .iter()
            .map(|(_, user)| seen.len() < renkei_line::limits::MAX_RECIPIENTS && seen.insert(user.as_str()))
            .collect();
        let (mut delivery_ids, mut users, mut later) = (Vec::new(), Vec::new(), Vec::new());
        for ((id, user), now) in remaining.into_iter().zip(goes_now) {
            if now {
                delivery_ids.push(id);
                users.push(user);
            } else {
                later.push((id, user));
            }
        }
        let kind = if users.len() == 1 { RequestKind::Push } else { RequestKind::Multicast };
        out.push(NewRequest {
            kind,
            retry_key: Uuid::new_v4(),
            messages: messages.clone(),
            recipients: users,
            delivery_ids,
        });
        remaining = later;
    }
    out
}

/// One attempt at LINE, waiting for the endpoint's rate limiter first.
async fn attempt(line: &LineClient, limiters: &Limiters, request: &SendRequest) -> Outcome {
    let messages: Vec<Message> = match &request.messages {
        Value::Array(items) => items.iter().cloned().map(Message).collect(),
        _ => return Outcome::Failed { error: "stored messages are not a JSON array".to_string() },
    };
    let result = match request.kind {
        RequestKind::Push => {
            let Some(to) = request.recipients.first() else {
                return Outcome::Failed { error: "push request without a recipient".to_string() };
            };
            limiters.push.until_ready().await;
            let body = PushRequest {
                to: to.as_str().to_string(),
                messages,
                notification_disabled: None,
                custom_aggregation_units: None,
            };
            line.push(&body, Some(request.retry_key)).await
        }
        RequestKind::Multicast => {
            limiters.multicast.until_ready().await;
            let body = MulticastRequest {
                to: request.recipients.iter().map(|u| u.as_str().to_string()).collect(),
                messages,
                notification_disabled: None,
                custom_aggregation_units: None,
            };
            line.multicast(&body, Some(request.retry_key)).await
        }
    };
    match result {
        Ok(sent) => {
            let already = sent.accepted_request_id.is_some();
            let accepted =
                sent.accepted_request_id.or_else(|| (!sent.request_id.is_empty()).then_some(sent.request_id));
            Outcome::Sent { accepted, already }
        }
        Err(error @ LineError::RateLimited { .. }) => Outcome::Retry { error: error.to_string(), rate_limited: true },
        Err(error @ LineError::Transient { .. }) => Outcome::Retry { error: error.to_string(), rate_limited: false },
        Err(error @ LineError::MonthlyLimit { .. }) => Outcome::MonthlyLimit { error: error.to_string() },
        // A 2xx we could not read: LINE took it. Recording it as sent is what
        // keeps it from going twice.
        Err(LineError::InvalidResponse(error)) => {
            tracing::warn!(%error, "LINE accepted a request with an unreadable answer; counted as sent");
            Outcome::Sent { accepted: None, already: false }
        }
        Err(error @ (LineError::Rejected { .. } | LineError::InvalidRequest(_))) => {
            Outcome::Failed { error: error.to_string() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u32) -> LineUserId {
        LineUserId::parse(&format!("U{n:032x}")).expect("valid id")
    }

    #[test]
    fn one_recipient_is_a_push_and_many_are_multicasts_of_at_most_500_distinct_users() {
        let messages = serde_json::json!([{"type": "text", "text": "hi"}]);
        let single = group_requests(&messages, vec![(1, user(1))]);
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].kind, RequestKind::Push);

        let many: Vec<(i64, LineUserId)> = (0..1_201).map(|i| (i64::from(i), user(i))).collect();
        let requests = group_requests(&messages, many);
        assert_eq!(requests.iter().map(|r| r.recipients.len()).collect::<Vec<_>>(), vec![500, 500, 201]);
        assert!(requests.iter().all(|r| r.kind == RequestKind::Multicast));
        let keys: HashSet<Uuid> = requests.iter().map(|r| r.retry_key).collect();
        assert_eq!(keys.len(), 3, "each request has its own retry key");

        let twice = vec![(1, user(7)), (2, user(7)), (3, user(8))];
        let requests = group_requests(&messages, twice);
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].recipients, vec![user(7), user(8)]);
        assert_eq!(requests[1].recipients, vec![user(7)]);
        assert_eq!(requests[1].kind, RequestKind::Push);
    }
}
