//! The planner: claims due deliveries, applies the policies
//! ([`crate::facts`]), groups them into requests ([`crate::grouping`]) within
//! the month's quota, and commits the requests with their retry keys together
//! with every skip and deferral. Nothing is sent before that commit.

use crate::DispatchResult;
use crate::dispatcher::{Dispatcher, micros};
use crate::facts::{PolicyContext, decide_deliveries};
use crate::grouping::Sends;
use crate::metrics::DispatchMetrics;
use crate::policy::Decision;
use chrono::{DateTime, Utc};
use foldhash::HashSet;
use renkei_core::{DeferReason, SkipReason};
use renkei_store::dispatch::{ClaimOutcome, PendingDelivery, QueueKey};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Planners look past what they took (see `claim_deliveries_after`), and
/// from the start of the queue again at least this often: a claim that
/// another instance rolled back, or a delivery enqueued with an earlier due
/// time, waits at most this long more.
const FULL_SCAN_EVERY: Duration = Duration::from_secs(1);

/// The queue is tidied (`OutboxStore::tidy_queue`) after this many claimed
/// queue rows: a vacuum of a million claimed rows takes ~0.2 s, a full look
/// past them 7 ms. (A fire's page of 1,000 deliveries is one row on
/// PostgreSQL; a deferred delivery comes back as a row of its own.)
const TIDY_EVERY: u64 = 100_000;

/// Where this process's planners start looking in the queue.
pub(crate) struct ScanHint {
    pub(crate) after: Option<QueueKey>,
    pub(crate) last_full: std::time::Instant,
    /// Queue rows claimed since the queue was last tidied.
    pub(crate) claimed_untidied: u64,
}

impl Dispatcher {
    /// One planning round: returns how many deliveries it claimed.
    pub async fn plan_once(&self) -> DispatchResult<usize> {
        let now = self.clock.now();
        let started = std::time::Instant::now();
        let mut after = self.scan_from();
        let mut claim = self.store.outbox.claim_deliveries_after(now, self.settings.batch, after).await?;
        if after.is_some() && claim.len() < self.settings.batch as usize {
            // The queue past the hint is running dry: what is left may be behind it.
            self.reset_scan();
            if claim.is_empty() {
                after = None;
                claim = self.store.outbox.claim_deliveries_after(now, self.settings.batch, None).await?;
            }
        }
        if claim.is_empty() {
            return Ok(0);
        }
        // Everything before a claim's last row is taken or held, unless a
        // hinted claim came up short (then the next one looks from the start).
        if after.is_none() || claim.len() == self.settings.batch as usize {
            self.advance_scan(claim.last_key());
        }
        let claimed = claim.len();
        self.count_for_tidy(claim.queue_rows());
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

    fn count_for_tidy(&self, queue_rows: usize) {
        let mut scan = self.scan.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        scan.claimed_untidied += queue_rows as u64;
    }

    /// Once [`TIDY_EVERY`] queue rows were claimed, tidies the queue beside
    /// the planners when a claim comes up short. Only then:
    /// a short claim sends the next one to the start of the queue (past what
    /// was claimed), and the queue is small, so its vacuum is quick; behind
    /// a long queue the claims go from their hint and a vacuum would read
    /// the whole queue (three instances sending 1M: 53–65 % of the multicast
    /// limit tidying as they claimed, 80 % without).
    fn tidy_now_and_then(self: &Arc<Self>, claimed: usize) {
        {
            let mut scan = self.scan.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if scan.claimed_untidied < TIDY_EVERY || claimed >= self.settings.batch as usize {
                return;
            }
            scan.claimed_untidied = 0;
        }
        let outbox = self.store.outbox.clone();
        tokio::spawn(async move {
            if let Err(error) = outbox.tidy_queue().await {
                tracing::warn!(%error, "tidying the delivery queue failed; vacuum will come");
            }
        });
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
            outcome.defers = deliveries.iter().map(|d| (d.id, until, DeferReason::Quota)).collect();
            return Ok((outcome, 0));
        }
        let context = PolicyContext {
            outbox: self.store.outbox.as_ref(),
            memberships: self.store.memberships.as_ref(),
            campaigns: &self.campaigns,
            timezone: self.settings.timezone,
            global: &self.settings.global,
        };
        let unresolved: HashSet<i64> = deliveries.iter().filter(|d| d.line_user_id.is_none()).map(|d| d.id).collect();
        let decisions = decide_deliveries(&context, &mut deliveries, now).await?;
        // Grouped by aggregation unit (campaign, or step) and payload (by the messages themselves, see `PayloadKey`).
        let mut sends = Sends::default();
        for (delivery, decision) in deliveries.into_iter().zip(decisions) {
            if unresolved.contains(&delivery.id)
                && let Some(user) = &delivery.line_user_id
            {
                outcome.resolved.push((delivery.id, user.clone()));
            }
            match decision {
                Decision::Skip(reason) => outcome.skips.push((delivery.id, reason)),
                Decision::Defer(until) => outcome.defers.push((delivery.id, until, DeferReason::QuietHours)),
                // `decide` sends only to a known user.
                Decision::Send => {
                    if let Some(user) = delivery.line_user_id {
                        // After the policies: a holdout user must have been sendable.
                        let held_out = self
                            .campaigns
                            .get(&delivery.campaign_id)
                            .and_then(|c| c.holdout)
                            .is_some_and(|holdout| holdout.holds_out(&delivery.campaign_id, user.as_str()));
                        if held_out {
                            outcome.skips.push((delivery.id, SkipReason::Holdout));
                        } else {
                            let step = delivery.context.get("step").and_then(serde_json::Value::as_str);
                            let unit = renkei_campaigns::aggregation_unit(&delivery.campaign_id, step);
                            sends.add(unit, delivery.messages, delivery.id, user);
                        }
                    }
                }
            }
        }
        outcome.requests.extend(sends.into_requests());
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
                outcome.defers.extend(held.into_iter().map(|id| (id, until, DeferReason::Quota)));
            }
        }
        let recipients: u64 = outcome.requests.iter().map(|r| r.recipients.len() as u64).sum();
        if recipients > 0 && !self.quota.reserve(recipients, now) {
            let until = self.quota.paused_until(now).unwrap_or(now + chrono::Duration::minutes(1));
            let requests = std::mem::take(&mut outcome.requests);
            let held = requests.iter().flat_map(|r| r.delivery_ids.iter().map(|id| (*id, until, DeferReason::Quota)));
            outcome.defers.extend(held);
            return Ok((outcome, 0));
        }
        Ok((outcome, recipients))
    }

    pub(crate) async fn planner(self: Arc<Self>, token: CancellationToken) {
        while !token.is_cancelled() {
            let claimed = match self.plan_once().await {
                Ok(n) => n,
                Err(error) => {
                    tracing::warn!(%error, "planning deliveries failed; retrying");
                    0
                }
            };
            self.tidy_now_and_then(claimed);
            if claimed > 0 {
                continue;
            }
            // Listen before looking, so a wake during the query is not lost.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let wait = self.idle_wait(self.store.outbox.next_delivery_due().await).await;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = woken => {}
                _ = token.cancelled() => {}
            }
        }
    }
}
