//! Client-side rate limits per LINE endpoint (governor), and the retry schedule.
//!
//! LINE's buckets refill at the documented rate with about one second of
//! burst. Ours refill at the configured rate with a burst of a twentieth of a
//! second, so LINE's bucket never empties in steady state: zero 429s at
//! nearly the full rate.

use governor::clock::DefaultClock;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use serde::Deserialize;
use std::num::NonZeroU32;
use std::time::Duration;

/// Requests per second per endpoint (defaults: LINE's limits per channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rates {
    pub push: u32,
    pub multicast: u32,
    pub rich_menu_link: u32,
    pub rich_menu_bulk: u32,
}

impl Default for Rates {
    fn default() -> Self {
        Self { push: 2_000, multicast: 200, rich_menu_link: 2_000, rich_menu_bulk: 2_000 }
    }
}

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock>;

/// One limiter per endpoint of the channel.
pub struct Limiters {
    pub push: Direct,
    pub multicast: Direct,
    pub rich_menu_link: Direct,
    pub rich_menu_bulk: Direct,
}

fn limiter(per_second: u32) -> Direct {
    let rate = NonZeroU32::new(per_second.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new((per_second / 20).max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

impl Limiters {
    pub fn new(rates: Rates) -> Self {
        Self {
            push: limiter(rates.push),
            multicast: limiter(rates.multicast),
            rich_menu_link: limiter(rates.rich_menu_link),
            rich_menu_bulk: limiter(rates.rich_menu_bulk),
        }
    }
}

/// Exponential backoff with jitter, capped; after `max_attempts` a request fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySchedule {
    pub base: Duration,
    pub max_delay: Duration,
    pub max_attempts: u32,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        // 20 attempts reach the 10-minute cap after ~10 tries: ~2 hours in all,
        // well inside the 24 hours LINE remembers a retry key.
        Self { base: Duration::from_millis(500), max_delay: Duration::from_secs(600), max_attempts: 20 }
    }
}

impl RetrySchedule {
    /// The wait before attempt `attempt + 1` after `attempt` failed (1-based);
    /// `jitter` in [0, 1) spreads it over [50 %, 100 %] of the exponential step.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let step = self.base.saturating_mul(1u32 << exponent.min(20)).min(self.max_delay);
        step.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    pub fn exhausted(&self, attempts: u32) -> bool {
        attempts >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_is_capped() {
        let s = RetrySchedule::default();
        assert_eq!(s.delay(1, 1.0), Duration::from_millis(500));
        assert_eq!(s.delay(2, 1.0), Duration::from_secs(1));
        assert_eq!(s.delay(3, 0.0), Duration::from_secs(1));
        assert_eq!(s.delay(25, 1.0), Duration::from_secs(600));
        assert!(s.delay(4, 0.3) < s.delay(4, 0.9));
        assert!(!s.exhausted(19));
        assert!(s.exhausted(20));
    }

    #[tokio::test]
    async fn limiter_spaces_requests_at_the_rate() {
        let limiters = Limiters::new(Rates { push: 100, ..Rates::default() });
        let start = std::time::Instant::now();
        for _ in 0..30 {
            limiters.push.until_ready().await;
        }
        // 5 go at once (burst = rate / 20), the other 25 at 10 ms each.
        assert!(start.elapsed() >= Duration::from_millis(230), "{:?}", start.elapsed());
    }
}
