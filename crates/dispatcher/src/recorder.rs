//! The recorder: writes each request's outcome (sent, retry, failed, held
//! for the monthly limit); accepted requests in batches.

use crate::DispatchResult;
use crate::attempt::Outcome;
use crate::dispatcher::Dispatcher;
use crate::metrics::DispatchMetrics;
use renkei_store::dispatch::SendRequest;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

impl Dispatcher {
    pub(crate) async fn record(&self, request: &SendRequest, outcome: Outcome) -> DispatchResult<()> {
        let now = self.clock.now();
        match outcome {
            Outcome::Sent { accepted, already } => {
                if already {
                    DispatchMetrics::add(&self.metrics.requests_already_accepted, 1);
                }
                DispatchMetrics::add(&self.metrics.requests_sent, 1);
                DispatchMetrics::add(&self.metrics.recipients_sent, request.recipients.len() as u64);
                self.store.requests.complete_request(request.id, accepted.as_deref(), now).await?;
            }
            Outcome::Retry { error, rate_limited } => {
                if rate_limited {
                    DispatchMetrics::add(&self.metrics.rate_limited, 1);
                }
                if self.settings.retry.exhausted(request.attempts) {
                    DispatchMetrics::add(&self.metrics.requests_failed, 1);
                    let error = format!("gave up after {} attempts: {error}", request.attempts);
                    tracing::error!(request = request.id, %error, "LINE request failed");
                    self.store.requests.fail_request(request.id, &error, now).await?;
                } else {
                    DispatchMetrics::add(&self.metrics.requests_retried, 1);
                    let wait = self.settings.retry.delay(request.attempts, rand::random::<f64>());
                    let next = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(1));
                    tracing::debug!(request = request.id, attempts = request.attempts, %error, ?wait, "LINE request will be retried");
                    self.store.requests.retry_request(request.id, next, &error).await?;
                }
            }
            Outcome::MonthlyLimit { error } => {
                // Not the request's fault: hold it (same key) until the quota allows again.
                let until = self.quota.exhausted(now);
                tracing::warn!(request = request.id, %error, resume_check = %until, "monthly message limit reached; sending paused");
                self.store.requests.retry_request(request.id, until, &error).await?;
            }
            Outcome::LeaseEnding => {
                tracing::debug!(
                    request = request.id,
                    "lease nearly over before the budget allowed the request; given back"
                );
                self.store.requests.release_request(request.id, &self.owner).await?;
            }
            Outcome::Failed { error } => {
                DispatchMetrics::add(&self.metrics.requests_failed, 1);
                tracing::warn!(request = request.id, %error, "LINE refused the request; not retried");
                self.store.requests.fail_request(request.id, &error, now).await?;
            }
        }
        Ok(())
    }

    /// transaction for up to a batch), so the database keeps up with LINE's rate.
    pub(crate) async fn recorder(self: Arc<Self>, mut outcomes: mpsc::Receiver<(SendRequest, Outcome)>) {
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

    /// Writes an outcome, retrying while the request's lease lasts (the
    /// database may be away for a while: an outage, a failover); only then
    /// is it given up, and the request goes again with its retry key once
    /// the lease expires (LINE answers 409, counted as sent).
    async fn with_retries<F, Fut>(&self, what: &str, mut write: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = DispatchResult<()>>,
    {
        let deadline = tokio::time::Instant::now() + self.settings.lease;
        let mut pause = Duration::from_millis(200);
        for attempt in 1u64.. {
            match write().await {
                Ok(()) => return,
                Err(error) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!(%error, attempt, "{what} failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(error) => {
                    tracing::error!(%error, attempt, "{what} failed; the request will be re-sent with its retry key");
                    return;
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
        self.store.requests.complete_requests(&done, self.clock.now()).await?;
        DispatchMetrics::add(&self.metrics.requests_sent, done.len() as u64);
        DispatchMetrics::add(&self.metrics.recipients_sent, recipients);
        DispatchMetrics::add(&self.metrics.requests_already_accepted, already);
        Ok(())
    }
}
