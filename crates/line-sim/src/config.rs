//! Simulator configuration.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An API endpoint of the simulator; rate limits and records are per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Push,
    Multicast,
    Reply,
    LinkToken,
    Profile,
    RichMenuLink,
    RichMenuUnlink,
    RichMenuBulkLink,
    RichMenuBulkUnlink,
    RichMenuOfUser,
    RichMenuList,
    /// Set, get or cancel the channel's default rich menu.
    DefaultRichMenu,
    Quota,
    QuotaConsumption,
    VerifyIdToken,
    /// `GET /v2/bot/insight/message/event/aggregation`.
    StatisticsPerUnit,
    /// `POST /v2/bot/chat/loading/start`.
    LoadingAnimation,
    /// `POST /v2/bot/chat/markAsRead`.
    MarkAsRead,
}

impl Endpoint {
    /// Only these accept `X-Line-Retry-Key` (narrowcast/broadcast too on
    /// LINE, which the simulator does not implement).
    pub fn accepts_retry_key(self) -> bool {
        matches!(self, Endpoint::Push | Endpoint::Multicast)
    }
}

/// Requests per second per endpoint; `None` = unlimited. Each endpoint has a
/// token bucket refilled at this rate whose burst is one second's worth, so
/// a client pacing itself at the rate never sees a 429.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimits {
    pub push: Option<u32>,
    pub multicast: Option<u32>,
    pub reply: Option<u32>,
    pub link_token: Option<u32>,
    pub profile: Option<u32>,
    pub rich_menu_link: Option<u32>,
    pub rich_menu_unlink: Option<u32>,
    pub rich_menu_bulk_link: Option<u32>,
    pub rich_menu_bulk_unlink: Option<u32>,
    /// Everything else (rich menu list, quota, ID token verify, …).
    pub other: Option<u32>,
    /// Statistics per unit, per hour (LINE allows 60).
    pub statistics_per_unit_per_hour: Option<u32>,
}

impl Default for RateLimits {
    /// LINE's published limits per channel.
    fn default() -> Self {
        Self {
            push: Some(2_000),
            multicast: Some(200),
            reply: Some(2_000),
            link_token: Some(2_000),
            profile: Some(2_000),
            rich_menu_link: Some(2_000),
            rich_menu_unlink: Some(2_000),
            rich_menu_bulk_link: Some(2_000),
            rich_menu_bulk_unlink: Some(2_000),
            other: Some(2_000),
            statistics_per_unit_per_hour: Some(60),
        }
    }
}

impl RateLimits {
    pub fn unlimited() -> Self {
        Self {
            push: None,
            multicast: None,
            reply: None,
            link_token: None,
            profile: None,
            rich_menu_link: None,
            rich_menu_unlink: None,
            rich_menu_bulk_link: None,
            rich_menu_bulk_unlink: None,
            other: None,
            statistics_per_unit_per_hour: None,
        }
    }

    pub fn for_endpoint(&self, endpoint: Endpoint) -> Option<u32> {
        match endpoint {
            Endpoint::Push => self.push,
            Endpoint::Multicast => self.multicast,
            Endpoint::Reply => self.reply,
            Endpoint::LinkToken => self.link_token,
            Endpoint::Profile => self.profile,
            Endpoint::RichMenuLink => self.rich_menu_link,
            Endpoint::RichMenuUnlink => self.rich_menu_unlink,
            Endpoint::RichMenuBulkLink => self.rich_menu_bulk_link,
            Endpoint::RichMenuBulkUnlink => self.rich_menu_bulk_unlink,
            Endpoint::RichMenuOfUser
            | Endpoint::RichMenuList
            | Endpoint::DefaultRichMenu
            | Endpoint::Quota
            | Endpoint::QuotaConsumption
            | Endpoint::VerifyIdToken
            | Endpoint::LoadingAnimation
            | Endpoint::MarkAsRead => self.other,
            // Per hour: see `Inner::take_rate`.
            Endpoint::StatisticsPerUnit => self.statistics_per_unit_per_hour,
        }
    }
}

/// Injected failures, applied to every API endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Share of requests answered 500 (0.0–1.0); such a request is not
    /// accepted and not recorded.
    pub error_rate: f64,
    /// Added before every response.
    pub latency: Duration,
    /// Share of send requests (push/multicast/reply) accepted and recorded,
    /// then answered by closing the connection, as a lost response would be.
    pub drop_rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Tokens accepted in `Authorization: Bearer …`.
    pub channel_access_tokens: Vec<String>,
    /// Signs webhooks (`x-line-signature`) and the simulator's ID tokens.
    pub channel_secret: String,
    /// The bot's user ID, sent as `destination` in webhooks.
    pub bot_user_id: String,
    /// Where the webhook sender posts; `None` until set.
    pub webhook_url: Option<String>,
    pub rate_limits: RateLimits,
    /// Messages allowed per month; `None` = no target limit.
    pub monthly_quota: Option<u64>,
    pub faults: Faults,
    /// Rich menu IDs that exist from the start.
    pub rich_menus: Vec<String>,
    /// Keep every accepted request for [`requests`](crate::SimHandle::requests).
    /// Turn off for long benchmarks so memory stays flat; counters, retry
    /// keys and quota still work.
    pub record_requests: bool,
    /// Statistics per unit: the share of a unit's recipients who open its
    /// messages, and who open a URL in them (LINE says null below 20 users).
    pub unit_impression_share: f64,
    pub unit_click_share: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            channel_access_tokens: vec!["sim-channel-access-token".to_string()],
            channel_secret: "sim-channel-secret".to_string(),
            bot_user_id: "U00000000000000000000000000000000".to_string(),
            webhook_url: None,
            rate_limits: RateLimits::default(),
            monthly_quota: None,
            faults: Faults::default(),
            rich_menus: Vec::new(),
            record_requests: true,
            unit_impression_share: 0.6,
            unit_click_share: 0.25,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn partial_config_fills_in_line_defaults() {
        let config: SimConfig =
            serde_json::from_str(r#"{"monthly_quota": 10, "rate_limits": {"push": 5}, "faults": {"error_rate": 0.1}}"#)
                .unwrap();
        assert_eq!(config.monthly_quota, Some(10));
        assert_eq!(config.rate_limits.push, Some(5));
        assert_eq!(config.rate_limits.multicast, Some(200));
        assert_eq!(config.faults.error_rate, 0.1);
        assert!(config.record_requests);
        assert_eq!(RateLimits::unlimited().for_endpoint(Endpoint::Push), None);
        assert!(Endpoint::Push.accepts_retry_key() && !Endpoint::Reply.accepts_retry_key());
    }
}
