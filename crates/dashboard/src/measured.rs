//! A campaign page's measured numbers (conversions, the holdout's, the lift,
//! variants, steps: `renkei_api::campaigns::campaign_measured`) read every
//! exposure of the campaign and its users' goal events: milliseconds for a
//! small campaign, tens of seconds at a million. So a view:
//! - starts a fresh measurement, unless one is running for that campaign
//!   (it joins it) or the last one ended so recently that another would keep
//!   the database busy measuring ([`REST`] times its duration);
//! - waits for it [`WAIT`] if the last one took less than that, or
//!   [`FIRST_WAIT`] for a campaign not measured yet; past that it shows the
//!   last result with the time it was taken (or, before the first,
//!   that the numbers are being measured), and the measurement finishes in
//!   the background for the next view.
//!
//! Kept per instance, in memory: one measurement per campaign at a time.

use chrono::{DateTime, Utc};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a view waits for a fresh measurement when the last one was that quick.
pub const WAIT: Duration = Duration::from_millis(200);
/// How long the first view of a campaign waits for its first measurement.
pub const FIRST_WAIT: Duration = Duration::from_secs(5);
/// After a measurement, none starts again for this many times its duration.
pub const REST: u32 = 5;

/// A measurement: the instant it started from, and its numbers.
#[derive(Debug, Clone)]
pub struct Measured {
    pub at: DateTime<Utc>,
    pub value: Arc<Value>,
}

/// What a view shows: a measurement finished for it, the last one, or none yet.
#[derive(Debug, Clone)]
pub enum Reading {
    Fresh(Measured),
    Stale(Measured),
    /// The first measurement is still running.
    Pending,
}

/// A running measurement's outcome: `None` until done, then its result or error.
type Outcome = Option<Result<Measured, String>>;

/// The last measurement of a campaign, with when it ended and how long it took.
#[derive(Debug, Clone)]
struct Last {
    measured: Measured,
    ended: Instant,
    took: Duration,
}

#[derive(Default)]
struct Slot {
    last: Option<Last>,
    running: Option<watch::Receiver<Outcome>>,
}

/// Per campaign, the last measurement and the one running.
#[derive(Clone, Default)]
pub struct MeasuredCache {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl MeasuredCache {
    /// The campaign's measured numbers, as the module says; `measure` is
    /// started (at `at`) only when a new measurement is due. `Err` is the
    /// error of a first measurement (later failures are logged and the last
    /// result shown).
    pub async fn read<F, E>(&self, campaign: &str, at: DateTime<Utc>, measure: F) -> Result<Reading, String>
    where
        F: Future<Output = Result<Value, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let (running, last) = self.start(campaign, at, measure);
        let wait = match &last {
            None => FIRST_WAIT,
            Some(last) if last.took < WAIT => WAIT,
            Some(_) => Duration::ZERO,
        };
        let outcome = match running {
            Some(mut running) if !wait.is_zero() => {
                match tokio::time::timeout(wait, running.wait_for(Option::is_some)).await {
                    Ok(Ok(outcome)) => outcome.clone(),
                    // The measuring task is gone without a word (it panicked).
                    Ok(Err(_)) => Some(Err("the measurement stopped".to_string())),
                    Err(_) => None,
                }
            }
            _ => None,
        };
        let last = self.last(campaign).or(last.map(|l| l.measured));
        match (outcome, last) {
            (Some(Ok(measured)), _) => Ok(Reading::Fresh(measured)),
            (_, Some(last)) => Ok(Reading::Stale(last)),
            (Some(Err(error)), None) => Err(error),
            (None, None) => Ok(Reading::Pending),
        }
    }

    fn last(&self, campaign: &str) -> Option<Measured> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.get(campaign).and_then(|s| s.last.as_ref()).map(|l| l.measured.clone())
    }

    /// The campaign's running measurement (joined, or `measure` started now
    /// if one is due), and the last one.
    fn start<F, E>(
        &self,
        campaign: &str,
        at: DateTime<Utc>,
        measure: F,
    ) -> (Option<watch::Receiver<Outcome>>, Option<Last>)
    where
        F: Future<Output = Result<Value, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.entry(campaign.to_string()).or_default();
        // A closed channel with no outcome is a measurement that panicked: start anew.
        if let Some(running) = slot.running.as_ref().filter(|r| r.has_changed().is_ok()) {
            return (Some(running.clone()), slot.last.clone());
        }
        if let Some(last) = slot.last.as_ref().filter(|l| l.ended.elapsed() < l.took * REST) {
            return (None, Some(last.clone()));
        }
        let (done, running) = watch::channel(None);
        slot.running = Some(running.clone());
        let (slots_ref, key, started) = (self.slots.clone(), campaign.to_string(), Instant::now());
        tokio::spawn(async move {
            let result = measure.await.map(|value| Measured { at, value: Arc::new(value) });
            let mut slots = slots_ref.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = slots.entry(key.clone()).or_default();
            slot.running = None;
            let outcome = match result {
                Ok(measured) => {
                    let took = started.elapsed();
                    tracing::debug!(campaign = %key, seconds = took.as_secs_f64(), "campaign measured");
                    slot.last = Some(Last { measured: measured.clone(), ended: Instant::now(), took });
                    Ok(measured)
                }
                Err(error) => {
                    tracing::warn!(campaign = %key, %error, "measuring the campaign failed");
                    Err(error.to_string())
                }
            };
            done.send_replace(Some(outcome));
        });
        (Some(running), slot.last.clone())
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

    async fn measure_after(pause: Duration, n: i64) -> Result<Value, String> {
        tokio::time::sleep(pause).await;
        Ok(json!({"n": n}))
    }

    #[tokio::test(start_paused = true)]
    async fn quick_measurements_are_fresh_and_slow_ones_show_the_last() {
        let cache = MeasuredCache::default();
        let quick = Duration::from_millis(10);
        let first = cache.read("c", at(0), measure_after(quick, 1)).await.expect("read");
        assert!(matches!(&first, Reading::Fresh(m) if m.value["n"] == 1 && m.at == at(0)));
        // Right after a 10 ms measurement, none starts again (5 × 10 ms): the last is shown.
        let rested = cache.read("c", at(1), measure_after(quick, 99)).await.expect("read");
        assert!(matches!(&rested, Reading::Stale(m) if m.value["n"] == 1));
        tokio::time::sleep(Duration::from_millis(60)).await;
        // A slow one now: the view waits 200 ms (the last was quick), then shows the last.
        let slow = Duration::from_secs(30);
        let second = cache.read("c", at(10), measure_after(slow, 2)).await.expect("read");
        assert!(matches!(&second, Reading::Stale(m) if m.value["n"] == 1 && m.at == at(0)));
        // A view meanwhile joins the running measurement instead of starting another.
        let joined = cache.read("c", at(11), measure_after(quick, 99)).await.expect("read");
        assert!(matches!(&joined, Reading::Stale(m) if m.value["n"] == 1));
        tokio::time::sleep(slow).await;
        let third = cache.read("c", at(40), measure_after(quick, 99)).await.expect("read");
        assert!(matches!(&third, Reading::Stale(m) if m.value["n"] == 2 && m.at == at(10)), "{third:?}");
        // 5 × 30 s later a view starts one, and does not wait for it: the last took 30 s.
        tokio::time::sleep(slow * REST).await;
        let started = Instant::now();
        let fourth = cache.read("c", at(200), measure_after(quick, 4)).await.expect("read");
        assert!(matches!(&fourth, Reading::Stale(m) if m.value["n"] == 2), "{fourth:?}");
        assert!(started.elapsed() < WAIT, "no wait behind a slow last measurement");
        tokio::time::sleep(quick * 2).await;
        let fifth = cache.read("c", at(201), measure_after(quick, 99)).await.expect("read");
        assert!(matches!(&fifth, Reading::Stale(m) if m.value["n"] == 4), "{fifth:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_measurement_past_its_wait_is_pending() {
        let cache = MeasuredCache::default();
        let slow = FIRST_WAIT * 2;
        let first = cache.read("c", at(0), measure_after(slow, 1)).await.expect("read");
        assert!(matches!(first, Reading::Pending), "{first:?}");
        tokio::time::sleep(slow).await;
        let later = cache.read("c", at(1), measure_after(slow, 2)).await.expect("read");
        assert!(matches!(&later, Reading::Stale(m) if m.value["n"] == 1), "{later:?}");
    }

    #[tokio::test]
    async fn a_failed_first_measurement_is_an_error_and_a_later_one_keeps_the_last() {
        let cache = MeasuredCache::default();
        let failed = cache.read("c", at(0), async { Err::<Value, _>("database down".to_string()) }).await;
        assert_eq!(failed.expect_err("fails"), "database down");
        cache.read("c", at(1), async { Ok::<_, String>(json!(1)) }).await.expect("read");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let later = cache.read("c", at(2), async { Err::<Value, _>("down again".to_string()) }).await.expect("read");
        assert!(matches!(&later, Reading::Stale(m) if m.at == at(1)), "{later:?}");
        let other = cache.read("d", at(3), async { Ok::<_, String>(json!(3)) }).await.expect("read");
        assert!(matches!(&other, Reading::Fresh(m) if *m.value == json!(3)), "campaigns are measured apart");
    }
}
