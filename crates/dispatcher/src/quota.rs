//! The monthly-quota guard: pause sending before LINE refuses it.
//!
//! It reads LINE's quota and consumption, then counts every recipient it
//! lets through until the next refresh. When the next batch would pass the
//! limit, sending pauses (deliveries wait, nothing is dropped) and resumes
//! once a refresh shows room again (the limit was raised, or a new month).

use crate::metrics::DispatchMetrics;
use chrono::{DateTime, Utc};
use renkei_core::Clock;
use renkei_line::{LineClient, Quota};
use renkei_store::LeaseStore;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a pause lasts before the guard looks at the quota again.
const RECHECK: chrono::Duration = chrono::Duration::seconds(60);

#[derive(Debug, Default)]
struct State {
    /// `None`: unlimited, or not known yet.
    limit: Option<u64>,
    /// Consumption at the last refresh plus what was let through since.
    used: u64,
    paused_until: Option<DateTime<Utc>>,
}

pub struct QuotaGuard {
    enabled: bool,
    state: Mutex<State>,
    metrics: Arc<DispatchMetrics>,
    /// With several instances: the lease under which one of them asks LINE,
    /// and this instance as its holder; the others read what it found.
    shared: Option<(Arc<dyn LeaseStore>, String)>,
}

/// The lease of quota polling: one instance asks LINE at a time.
pub const QUOTA_LEASE: &str = "line_quota";
/// The mark the polling instance leaves: `<limit or "unlimited">/<consumption>`.
pub const QUOTA_MARK: &str = "line_quota";

impl QuotaGuard {
    pub fn new(enabled: bool, metrics: Arc<DispatchMetrics>) -> Self {
        Self { enabled, state: Mutex::new(State::default()), metrics, shared: None }
    }

    /// Polls LINE only while holding [`QUOTA_LEASE`] (as `holder`), and
    /// otherwise takes what the holder found ([`QUOTA_MARK`]).
    pub fn with_leases(mut self, leases: Arc<dyn LeaseStore>, holder: String) -> Self {
        self.shared = Some((leases, holder));
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_paused(&self, state: &mut State, until: Option<DateTime<Utc>>) {
        state.paused_until = until;
        self.metrics.quota_paused.store(u64::from(until.is_some()), Ordering::Relaxed);
    }

    /// Applies what LINE reported.
    pub fn observe(&self, limit: Option<u64>, consumption: u64) {
        let mut state = self.state();
        state.limit = limit;
        state.used = consumption;
        let room = limit.is_none_or(|l| consumption < l);
        if room && state.paused_until.is_some() {
            tracing::info!(?limit, consumption, "monthly quota has room again; sending resumes");
            self.set_paused(&mut state, None);
        }
    }

    /// While paused, the instant to look again.
    pub fn paused_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if !self.enabled {
            return None;
        }
        let mut state = self.state();
        match state.paused_until {
            Some(until) if until > now => Some(until),
            Some(_) => {
                // Time to look again: let one planning round find out.
                let room = state.limit.is_none_or(|l| state.used < l);
                if room {
                    self.set_paused(&mut state, None);
                    None
                } else {
                    let until = now + RECHECK;
                    state.paused_until = Some(until);
                    Some(until)
                }
            }
            None => None,
        }
    }

    /// Takes `recipients` from the quota; `false` (and a pause) when they do not fit.
    pub fn reserve(&self, recipients: u64, now: DateTime<Utc>) -> bool {
        if !self.enabled {
            return true;
        }
        let mut state = self.state();
        match state.limit {
            Some(limit) if state.used.saturating_add(recipients) > limit => {
                tracing::warn!(limit, used = state.used, recipients, "monthly quota would be exceeded; sending paused");
                self.set_paused(&mut state, Some(now + RECHECK));
                false
            }
            _ => {
                state.used = state.used.saturating_add(recipients);
                true
            }
        }
    }

    /// Recipients that still fit this month (`None`: no limit known, or the guard is off).
    pub fn room(&self) -> Option<u64> {
        if !self.enabled {
            return None;
        }
        let state = self.state();
        state.limit.map(|limit| limit.saturating_sub(state.used))
    }

    /// Gives back a reservation that was not sent.
    pub fn release(&self, recipients: u64) {
        let mut state = self.state();
        state.used = state.used.saturating_sub(recipients);
    }

    /// Pauses sending: the month's quota cannot take what is due. Returns when to look again.
    pub fn hold(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let mut state = self.state();
        let until = now + RECHECK;
        tracing::warn!(limit = ?state.limit, used = state.used, "monthly quota would be exceeded; sending paused");
        self.set_paused(&mut state, Some(until));
        until
    }

    /// LINE said the monthly limit is reached: pause; returns when to look again.
    pub fn exhausted(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let mut state = self.state();
        if let Some(limit) = state.limit {
            state.used = state.used.max(limit);
        } else {
            state.limit = Some(state.used);
        }
        let until = now + RECHECK;
        self.set_paused(&mut state, Some(until));
        until
    }

    /// Reads LINE's quota and consumption now.
    pub async fn refresh(&self, line: &LineClient) -> Result<(), renkei_line::LineError> {
        let limit = match line.quota().await? {
            Quota::Unlimited => None,
            Quota::Limited(n) => Some(n),
        };
        let consumption = line.quota_consumption().await?;
        self.observe(limit, consumption);
        Ok(())
    }

    /// One refresh at `now`: from LINE (alone, or holding the lease, which
    /// lasts `every` and 10 s more), else from the holder's mark.
    pub async fn refresh_round(&self, line: &LineClient, now: DateTime<Utc>, every: Duration) {
        let Some((leases, holder)) = &self.shared else {
            if let Err(error) = self.refresh(line).await {
                tracing::warn!(%error, "reading the LINE message quota failed");
            }
            return;
        };
        let term = chrono::Duration::from_std(every).unwrap_or(RECHECK) + chrono::Duration::seconds(10);
        match leases.acquire_lease(QUOTA_LEASE, holder, now, now + term).await {
            Ok(true) => match self.refresh(line).await {
                Ok(()) => {
                    let value = {
                        let state = self.state();
                        format!("{}/{}", state.limit.map_or("unlimited".into(), |l| l.to_string()), state.used)
                    };
                    if let Err(error) = leases.set_mark(QUOTA_MARK, &value, now).await {
                        tracing::warn!(%error, "sharing the LINE message quota failed");
                    }
                }
                Err(error) => tracing::warn!(%error, "reading the LINE message quota failed"),
            },
            Ok(false) => match leases.mark(QUOTA_MARK).await {
                Ok(Some((value, _))) => match parse_mark(&value) {
                    Some((limit, consumption)) => self.observe(limit, consumption),
                    None => tracing::warn!(value, "unreadable quota mark; ignored"),
                },
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "reading the shared LINE message quota failed"),
            },
            Err(error) => tracing::warn!(%error, "taking the quota-polling lease failed"),
        }
    }

    /// Refreshes every `every` (and soon after a pause) until cancelled.
    pub fn spawn_refresh(
        self: Arc<Self>,
        line: LineClient,
        clock: Arc<dyn Clock>,
        every: Duration,
        token: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if !self.enabled {
                return;
            }
            while !token.is_cancelled() {
                self.refresh_round(&line, clock.now(), every).await;
                let paused = self.state().paused_until;
                let wait = match paused {
                    Some(until) => (until - clock.now()).to_std().unwrap_or(Duration::ZERO).min(every),
                    None => every,
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait.max(Duration::from_millis(100))) => {}
                    _ = token.cancelled() => {}
                }
            }
        })
    }
}

/// `<limit or "unlimited">/<consumption>` (the dashboard reads it too).
pub fn parse_mark(value: &str) -> Option<(Option<u64>, u64)> {
    let (limit, consumption) = value.split_once('/')?;
    let limit = if limit == "unlimited" { None } else { Some(limit.parse().ok()?) };
    Some((limit, consumption.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 0).single().expect("valid")
    }

    #[test]
    fn pauses_before_the_limit_and_resumes_when_raised() {
        let guard = QuotaGuard::new(true, Arc::new(DispatchMetrics::default()));
        guard.observe(Some(1_000), 900);
        assert!(guard.reserve(100, t0()), "exactly the limit fits");
        assert!(!guard.reserve(1, t0()), "one more does not");
        assert_eq!(guard.paused_until(t0()), Some(t0() + RECHECK));
        // Still full at the recheck: stays paused.
        let later = t0() + RECHECK;
        assert!(guard.paused_until(later).is_some());
        guard.observe(Some(5_000), 1_000);
        assert_eq!(guard.paused_until(later), None);
        assert!(guard.reserve(10, later));
    }

    #[test]
    fn unlimited_or_disabled_never_pauses_and_a_refusal_pauses() {
        let metrics = Arc::new(DispatchMetrics::default());
        let guard = QuotaGuard::new(true, metrics.clone());
        guard.observe(None, 10_000_000);
        assert!(guard.reserve(1_000_000, t0()));
        let until = guard.exhausted(t0());
        assert_eq!(guard.paused_until(t0()), Some(until));
        assert_eq!(metrics.quota_paused.load(Ordering::Relaxed), 1);
        let off = QuotaGuard::new(false, Arc::new(DispatchMetrics::default()));
        off.observe(Some(1), 1);
        assert!(off.reserve(100, t0()));
        assert_eq!(off.paused_until(t0()), None);
    }
}
