//! A campaign page's measured numbers (conversions, the holdout's, the lift,
//! variants, steps: `renkei_api::campaigns::campaign_measured`) read every
//! exposure of the campaign, which takes seconds at a million. A page view
//! starts a fresh measurement (or joins the one running for that campaign)
//! and waits for it at most [`WAIT`]; past that it shows the last result
//! with the time it was taken, and the measurement finishes in the
//! background for the next view. The first view of a campaign waits for its
//! first result. Kept per instance, in memory: one measurement per campaign
//! at a time.

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// How long a view waits for a fresh measurement once it has an older one to show.
pub const WAIT: Duration = Duration::from_millis(200);

/// A measurement and the instant it started from.
#[derive(Debug, Clone)]
pub struct Measured {
    pub at: DateTime<Utc>,
    pub value: Arc<Value>,
}

/// What a view shows: a measurement finished within the wait, or the last one.
#[derive(Debug, Clone)]
pub enum Reading {
    Fresh(Measured),
    Stale(Measured),
}

/// A running measurement's outcome: `None` until done, then its result or error.
type Outcome = Option<Result<Measured, String>>;

#[derive(Default)]
struct Slot {
    last: Option<Measured>,
    running: Option<watch::Receiver<Outcome>>,
}

/// Per campaign, the last measurement and the one running.
#[derive(Clone, Default)]
pub struct MeasuredCache {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl MeasuredCache {
    /// The campaign's measured numbers: fresh if `measure` (started now, at
    /// `at`, unless one is running) ends within [`WAIT`] or nothing was
    /// measured before, else the last measurement. `Err` is the error of a
    /// first measurement (later failures are logged and the last result shown).
    pub async fn read<F, E>(&self, campaign: &str, at: DateTime<Utc>, measure: F) -> Result<Reading, String>
    where
        F: Future<Output = Result<Value, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (mut running, last) = self.start(campaign, at, measure);
        let done = match &last {
            Some(_) => tokio::time::timeout(WAIT, running.wait_for(Option::is_some)).await.ok(),
            None => Some(running.wait_for(Option::is_some).await),
        };
        let outcome = match done {
            Some(Ok(outcome)) => outcome.clone(),
            // The measuring task is gone without a word (it panicked).
            Some(Err(_)) => Some(Err("the measurement stopped".to_string())),
            None => None,
        };
        match (outcome, last.or_else(|| self.last(campaign))) {
            (Some(Ok(measured)), _) => Ok(Reading::Fresh(measured)),
            (_, Some(last)) => Ok(Reading::Stale(last)),
            (Some(Err(error)), None) => Err(error),
            (None, None) => Err("no measurement yet".to_string()),
        }
    }

    fn last(&self, campaign: &str) -> Option<Measured> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).get(campaign).and_then(|s| s.last.clone())
    }

    /// Joins the campaign's running measurement or starts `measure`; with the last result.
    fn start<F, E>(&self, campaign: &str, at: DateTime<Utc>, measure: F) -> (watch::Receiver<Outcome>, Option<Measured>)
    where
        F: Future<Output = Result<Value, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.entry(campaign.to_string()).or_default();
        // A closed channel with no outcome is a measurement that panicked: start anew.
        if let Some(running) = slot.running.as_ref().filter(|r| r.has_changed().is_ok()) {
            return (running.clone(), slot.last.clone());
        }
        let (done, running) = watch::channel(None);
        slot.running = Some(running.clone());
        let (slots_ref, key) = (self.slots.clone(), campaign.to_string());
        tokio::spawn(async move {
            let result = measure.await.map(|value| Measured { at, value: Arc::new(value) });
            let mut slots = slots_ref.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = slots.entry(key.clone()).or_default();
            slot.running = None;
            let outcome = match result {
                Ok(measured) => {
                    slot.last = Some(measured.clone());
                    Ok(measured)
                }
                Err(error) => {
                    tracing::warn!(campaign = %key, %error, "measuring the campaign failed");
                    Err(error.to_string())
                }
            };
            done.send_replace(Some(outcome));
        });
        (running, slot.last.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).single().expect("instant")
    }

    #[tokio::test]
    async fn a_first_view_waits_and_a_slow_measurement_shows_the_last_one() {
        let cache = MeasuredCache::default();
        let first = cache.read("c", at(0), async { Ok::<_, String>(json!({"n": 1})) }).await.expect("read");
        assert!(matches!(&first, Reading::Fresh(m) if m.value["n"] == 1 && m.at == at(0)));
        // A slow one: the view shows the last result, with its time.
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let slow = async move {
            wait.await.ok();
            Ok::<_, String>(json!({"n": 2}))
        };
        let second = cache.read("c", at(10), slow).await.expect("read");
        assert!(matches!(&second, Reading::Stale(m) if m.value["n"] == 1 && m.at == at(0)));
        // A view meanwhile joins the running measurement instead of starting another.
        let joined = cache.read("c", at(11), async { Ok::<_, String>(json!({"n": 99})) }).await.expect("read");
        assert!(matches!(&joined, Reading::Stale(m) if m.value["n"] == 1));
        release.send(()).expect("release");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let third = cache.read("c", at(20), std::future::pending::<Result<Value, String>>()).await.expect("read");
        assert!(matches!(&third, Reading::Stale(m) if m.value["n"] == 2 && m.at == at(10)), "{third:?}");
    }

    #[tokio::test]
    async fn a_failed_first_measurement_is_an_error_and_a_later_one_keeps_the_last() {
        let cache = MeasuredCache::default();
        let failed = cache.read("c", at(0), async { Err::<Value, _>("database down".to_string()) }).await;
        assert_eq!(failed.expect_err("fails"), "database down");
        cache.read("c", at(1), async { Ok::<_, String>(json!(1)) }).await.expect("read");
        let later = cache.read("c", at(2), async { Err::<Value, _>("down again".to_string()) }).await.expect("read");
        assert!(matches!(&later, Reading::Stale(m) if m.at == at(1)));
        let other = cache.read("d", at(3), async { Ok::<_, String>(json!(3)) }).await.expect("read");
        assert!(matches!(&other, Reading::Fresh(m) if *m.value == json!(3)), "campaigns are measured apart");
    }
}
