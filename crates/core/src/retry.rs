//! Exponential backoff with jitter (LINE requests, the webhook relay).

use std::time::Duration;

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
}
