//! The sender: claims due requests and sends each at its endpoint's rate
//! with its fixed retry key ([`crate::attempt`]), handing outcomes to the
//! [`crate::recorder`].

use crate::attempt::{Outcome, attempt};
use crate::dispatcher::Dispatcher;
use crate::{DispatchError, DispatchResult};
use renkei_store::dispatch::SendRequest;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

impl Dispatcher {
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

    pub(crate) async fn claim_requests(&self) -> DispatchResult<Vec<SendRequest>> {
        let now = self.clock.now();
        let lease_until =
            now + chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::seconds(60));
        Ok(self.store.requests.claim_requests(now, self.settings.batch, &self.owner, lease_until).await?)
    }

    /// Claims batches ahead (one in reserve) so LINE is never kept waiting on the database.
    pub(crate) async fn sender(self: Arc<Self>, token: CancellationToken) {
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
}
