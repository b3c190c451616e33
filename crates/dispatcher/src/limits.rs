//! Client-side rate limits per LINE endpoint (governor), and the retry
//! schedule (`renkei_core::RetrySchedule`, shared with the webhook relay).
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

pub use renkei_core::RetrySchedule;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
