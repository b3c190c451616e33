//! The simulator's in-memory state. One `std` mutex guards it; it is never
//! held across an await.

use crate::config::{Endpoint, Faults, RateLimits};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// How long LINE remembers an accepted retry key.
pub const RETRY_KEY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a link token is valid.
pub const LINK_TOKEN_TTL: Duration = Duration::from_secs(10 * 60);

/// A request the simulator accepted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedRequest {
    pub endpoint: Endpoint,
    /// The `x-line-request-id` it was answered with.
    pub request_id: String,
    pub retry_key: Option<String>,
    /// User/group/room IDs addressed (empty when none).
    pub recipients: Vec<String>,
    /// The `messages` array, for sends.
    pub messages: Vec<Value>,
    /// The rich menu involved, for rich-menu calls.
    pub rich_menu_id: Option<String>,
    pub at: SystemTime,
    /// True when the connection was dropped instead of answering.
    pub dropped: bool,
}

/// What the simulator answered, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SimCounters {
    pub accepted: u64,
    pub unauthorized: u64,
    pub bad_request: u64,
    pub not_found: u64,
    pub rate_limited: u64,
    pub monthly_limited: u64,
    pub conflicts: u64,
    pub injected_errors: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        Self { tokens: rate, rate, last: now }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        // Burst = one second's worth of requests.
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct LinkTokenInfo {
    pub user_id: String,
    pub issued: Instant,
    pub used: bool,
}

pub(crate) struct Inner {
    pub requests: Vec<RecordedRequest>,
    /// Accepted retry key → request ID; `Uuid`s keep a million keys small.
    pub retry_keys: HashMap<uuid::Uuid, (uuid::Uuid, Instant)>,
    pub buckets: HashMap<Endpoint, Bucket>,
    pub rate_limits: RateLimits,
    pub counters: SimCounters,
    pub faults: Faults,
    pub quota: Option<u64>,
    pub usage: u64,
    pub rich_menus: BTreeMap<String, String>,
    pub user_menus: HashMap<String, String>,
    /// The channel's default rich menu (shown to users without a menu of their own).
    pub default_rich_menu: Option<String>,
    pub link_tokens: HashMap<String, LinkTokenInfo>,
    /// Reply tokens the webhook sender issued → the user they reply to.
    pub reply_tokens: HashMap<String, Option<String>>,
    /// `markAsReadToken`s of message webhooks → the user who sent the message.
    pub read_tokens: HashMap<String, String>,
    pub webhook_url: Option<String>,
    pub record_requests: bool,
    /// Per `customAggregationUnits` name, the users its accepted sends
    /// reached (foldhash: a 1M-recipient multicast adds each under the lock).
    pub unit_users: HashMap<String, foldhash::HashSet<String>>,
    pub unit_shares: (f64, f64),
    /// The hour window of statistics-per-unit calls: its start and count.
    pub hourly: Option<(Instant, u32)>,
}

impl Inner {
    pub fn new(config: &crate::config::SimConfig) -> Self {
        Self {
            requests: Vec::new(),
            retry_keys: HashMap::new(),
            buckets: HashMap::new(),
            rate_limits: config.rate_limits.clone(),
            counters: SimCounters::default(),
            faults: config.faults.clone(),
            quota: config.monthly_quota,
            usage: 0,
            rich_menus: config.rich_menus.iter().map(|id| (id.clone(), id.clone())).collect(),
            user_menus: HashMap::new(),
            default_rich_menu: None,
            link_tokens: HashMap::new(),
            reply_tokens: HashMap::new(),
            read_tokens: HashMap::new(),
            webhook_url: config.webhook_url.clone(),
            record_requests: config.record_requests,
            unit_users: HashMap::new(),
            unit_shares: (config.unit_impression_share, config.unit_click_share),
            hourly: None,
        }
    }

    /// Takes a token from the endpoint's bucket; false = answer 429.
    pub fn take_rate(&mut self, endpoint: Endpoint, now: Instant) -> bool {
        let Some(rate) = self.rate_limits.for_endpoint(endpoint) else {
            return true;
        };
        if endpoint == Endpoint::StatisticsPerUnit {
            // A fixed hour window, as LINE counts "per hour".
            let (start, count) = match self.hourly {
                Some((start, count)) if now.saturating_duration_since(start) < Duration::from_secs(3_600) => {
                    (start, count)
                }
                _ => (now, 0),
            };
            self.hourly = Some((start, count + u32::from(count < rate)));
            return count < rate;
        }
        self.buckets.entry(endpoint).or_insert_with(|| Bucket::new(rate, now)).take(now)
    }

    pub fn record(&mut self, request: RecordedRequest) {
        if self.record_requests {
            self.requests.push(request);
        }
    }

    /// The request ID that accepted `key`, if within 24 h.
    pub fn accepted_key(&mut self, key: &uuid::Uuid, now: Instant) -> Option<String> {
        match self.retry_keys.get(key) {
            Some((id, at)) if now.saturating_duration_since(*at) < RETRY_KEY_TTL => Some(id.to_string()),
            Some(_) => {
                self.retry_keys.remove(key);
                None
            }
            None => None,
        }
    }
}

pub(crate) struct Shared {
    pub tokens: Vec<String>,
    pub channel_secret: String,
    pub bot_user_id: String,
    pub inner: Mutex<Inner>,
    pub http: reqwest::Client,
}

impl Shared {
    /// Locks the state; a poisoned lock (a panic elsewhere) is recovered, as
    /// the data stays consistent between statements.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_one_second_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, t0);
        assert_eq!((0..10).filter(|_| b.take(t0)).count(), 10);
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // Refill is capped at one second's worth.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| b.take(later)).count(), 10);
    }
}
