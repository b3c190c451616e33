//! The sender: claims due requests and sends each at its endpoint's rate
//! with its fixed retry key ([`crate::attempt`]), handing outcomes to the
//! [`crate::recorder`].

use crate::attempt::{Outcome, attempt};
use crate::dispatcher::Dispatcher;
use crate::{DispatchError, DispatchResult};
use renkei_store::dispatch::SendRequest;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

impl Dispatcher {
    /// Claims due requests and sends them; returns how many were claimed.
    /// (The long-running loop pipelines this; tests and the demo can call it directly.)
    pub async fn send_once(&self) -> DispatchResult<usize> {
        let deadline = self.send_deadline(tokio::time::Instant::now());
        let requests = self.claim_requests(self.settings.batch).await?;
        let n = requests.len();
        let mut handles = Vec::with_capacity(n);
        let semaphore = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        for request in requests {
            let permit = semaphore.clone().acquire_owned().await.map_err(|e| DispatchError::Task(e.to_string()))?;
            let line = self.line.clone();
            let limiters = self.limiters.clone();
            handles.push(tokio::spawn(async move {
                let outcome = attempt(&line, &limiters, &request, deadline).await;
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

    pub(crate) async fn claim_requests(&self, limit: u32) -> DispatchResult<Vec<SendRequest>> {
        let now = self.clock.now();
        let lease_until =
            now + chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::seconds(60));
        Ok(self.store.requests.claim_requests(now, limit, &self.owner, lease_until).await?)
    }

    /// Until when requests claimed at `claimed` may still be sent: three
    /// quarters into their lease, leaving the rest for the answer.
    fn send_deadline(&self, claimed: tokio::time::Instant) -> tokio::time::Instant {
        claimed + self.settings.lease.mul_f64(0.75)
    }

    /// Claims batches ahead (one in reserve) so LINE is never kept waiting on the database.
    pub(crate) async fn sender(self: Arc<Self>, token: CancellationToken) {
        let (batches, mut receiver) = mpsc::channel::<(tokio::time::Instant, Vec<SendRequest>)>(1);
        // Requests handed to LINE so far: the pace that sizes the next claim.
        let started = Arc::new(AtomicU64::new(0));
        let (outcomes, outcome_receiver) = mpsc::channel::<(SendRequest, Outcome)>(self.settings.batch as usize * 2);
        let fetcher = {
            let this = self.clone();
            let token = token.clone();
            let started = started.clone();
            tokio::spawn(async move {
                let mut pace = (0, Instant::now());
                while !token.is_cancelled() {
                    // Listen before looking, so a wake during the claim is not lost.
                    let woken = this.wake.notified();
                    tokio::pin!(woken);
                    woken.as_mut().enable();
                    let now_started = started.load(Ordering::Relaxed);
                    let limit =
                        claim_size(this.settings.batch, this.settings.lease, now_started - pace.0, pace.1.elapsed());
                    pace = (now_started, Instant::now());
                    let deadline = this.send_deadline(tokio::time::Instant::now());
                    match this.claim_requests(limit).await {
                        Ok(batch) if !batch.is_empty() => {
                            if batches.send((deadline, batch)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {
                            let wait = this.idle_wait(this.store.requests.next_request_due().await).await;
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
        while let Some((deadline, batch)) = receiver.recv().await {
            for request in batch {
                let Ok(permit) = semaphore.clone().acquire_owned().await else { break };
                started.fetch_add(1, Ordering::Relaxed);
                let line = self.line.clone();
                let limiters = self.limiters.clone();
                let outcomes = outcomes.clone();
                tokio::spawn(async move {
                    let outcome = attempt(&line, &limiters, &request, deadline).await;
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
}

/// The fewest requests a claim asks for.
const MIN_CLAIM: u32 = 16;

/// How many requests to claim next: what this instance handed to LINE in a
/// twelfth of the lease at its recent pace (`sent` in `elapsed`), between
/// [`MIN_CLAIM`] and `batch`. An instance holds up to three claims (one
/// sending, one queued, one being claimed), so all it holds goes within a
/// quarter of its lease, with room for its share of the channel's rate to
/// shrink when more instances get busy: requests rarely wait here until
/// their lease nears its end (then they are given back untried, see
/// [`crate::attempt::Outcome::LeaseEnding`]) and are never sent twice by two
/// instances (a 409 that spends LINE's rate).
pub(crate) fn claim_size(batch: u32, lease: Duration, sent: u64, elapsed: Duration) -> u32 {
    let floor = MIN_CLAIM.min(batch).max(1);
    if elapsed.is_zero() {
        return floor;
    }
    let per_second = sent as f64 / elapsed.as_secs_f64();
    let fits = (per_second * lease.as_secs_f64() / 12.0).min(f64::from(u32::MAX)) as u32;
    fits.clamp(floor, batch.max(floor))
}

#[cfg(test)]
mod tests {
    use super::claim_size;
    use std::time::Duration;

    #[test]
    fn claims_are_sized_to_go_within_a_quarter_of_the_lease_at_the_recent_pace() {
        let lease = Duration::from_secs(60);
        // Alone at LINE's push rate: the whole batch.
        assert_eq!(claim_size(500, lease, 2_000, Duration::from_secs(1)), 500);
        // One of ten instances sharing 200 multicasts/s: 20/s × 5 s.
        assert_eq!(claim_size(500, lease, 20, Duration::from_secs(1)), 100);
        // A 6 s lease at 67/s: 33, so three claims go in 1.5 s.
        assert_eq!(claim_size(500, Duration::from_secs(6), 67, Duration::from_secs(1)), 33);
        // Idle, or just started: a small claim first, grown once it is sent.
        assert_eq!(claim_size(500, lease, 0, Duration::from_secs(5)), 16);
        assert_eq!(claim_size(500, lease, 0, Duration::ZERO), 16);
        assert_eq!(claim_size(8, lease, 0, Duration::ZERO), 8);
    }
}
