//! The LINE side of renkei's HTTP surface: the webhook endpoint LINE posts
//! to, and the ID連携 flows (account link with nonces, LINE Login ID token).
//!
//! The webhook answers 200 only once the events are committed, and never
//! processes them inside the request: a background worker
//! ([`spawn_worker`]) drains unprocessed rows, so events that arrived just
//! before a crash are picked up again at the next start. Bodies for the
//! webhook relay's targets are queued in the same transaction and posted
//! by [`relay::Relay`].

pub mod process;
pub mod relay;
pub mod replies;
pub mod routes;

pub use process::{ProcessError, WorkerHandle, WorkerOptions, process_pending, spawn_worker};
pub use relay::{Relay, RelayMetrics, RelaySettings};
pub use renkei_api::ApiError;
pub use replies::{Replies, ReplyMetrics};
pub use routes::{api_router, public_router};

use renkei_core::{ChangeListener, Clock};
use renkei_line::LineClient;
use std::fmt;
use std::sync::Arc;
use tokio::sync::{Notify, watch};

/// Where LINE's account-link dialog lives; the nonce route redirects there.
pub const ACCOUNT_LINK_DIALOG_URL: &str = "https://access.line.me/dialog/bot/accountLink";
/// How long an account-link nonce may be used (LINE's link token lives as long).
pub const NONCE_TTL: chrono::Duration = chrono::Duration::minutes(10);
/// Largest webhook body accepted.
pub const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;
/// Largest body of the `/v1` routes here.
pub const MAX_API_BYTES: usize = 64 * 1024;
/// The placeholder in [`WebhookConfig::link_login_url`].
pub const LINK_TOKEN_PLACEHOLDER: &str = "{linkToken}";

/// Channel settings. `Debug` never shows the channel secret.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Signs the webhook (`x-line-signature`).
    pub channel_secret: String,
    /// The LINE Login channel ID: the audience of ID tokens.
    pub login_channel_id: String,
    /// The company's login page, with `{linkToken}` where the link token goes.
    pub link_login_url: String,
    /// LINE's account-link dialog ([`ACCOUNT_LINK_DIALOG_URL`]).
    pub account_link_url: String,
    /// The webhook relay's targets: every accepted body is queued for each.
    pub relay_targets: Vec<String>,
    /// Whether renkei may use reply tokens (`webhook.reply_owner = "renkei"`);
    /// when another system owns them, renkei never replies.
    pub replies_owned: bool,
}

impl WebhookConfig {
    pub fn new(
        channel_secret: impl Into<String>,
        login_channel_id: impl Into<String>,
        link_login_url: impl Into<String>,
    ) -> Self {
        Self {
            channel_secret: channel_secret.into(),
            login_channel_id: login_channel_id.into(),
            link_login_url: link_login_url.into(),
            account_link_url: ACCOUNT_LINK_DIALOG_URL.to_string(),
            relay_targets: Vec::new(),
            replies_owned: true,
        }
    }

    /// With the relay's targets and reply owner from `relay`.
    pub fn with_relay(self, relay: &RelaySettings) -> Self {
        Self { relay_targets: relay.target_names(), replies_owned: relay.replies_owned, ..self }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("channel_secret", &"***")
            .field("login_channel_id", &self.login_channel_id)
            .field("link_login_url", &self.link_login_url)
            .field("account_link_url", &self.account_link_url)
            .field("relay_targets", &self.relay_targets)
            .field("replies_owned", &self.replies_owned)
            .finish()
    }
}

renkei_store::store_view! {
    /// What the webhook role reads and writes: its inbox (and link nonces),
    /// the links and follow state it changes, the events it records, the
    /// segments reply rules ask about, the replies it made and the link
    /// tokens it asked LINE for (the dashboard's count).
    pub struct WebhookStores {
        inbox: WebhookStore,
        members: MemberStore,
        events: EventStore,
        memberships: MembershipReads,
        replies: ReplyStore,
        tally: DashboardTally,
    }
}

/// Everything the routes and the worker share. Cheap to clone.
#[derive(Clone)]
pub struct WebhookState {
    pub store: WebhookStores,
    pub clock: Arc<dyn Clock>,
    /// Told about every user a webhook or link changed, once it is durable.
    pub changes: Arc<dyn ChangeListener>,
    /// `None` when no channel access token is configured: events are still
    /// stored and processed, but nothing is sent to LINE.
    pub line: Option<LineClient>,
    pub config: Arc<WebhookConfig>,
    /// The reply rules and what replying needs; `None`: renkei replies only
    /// to ID連携 postbacks.
    pub replies: Option<Arc<Replies>>,
    /// Wakes the worker when new events are committed.
    wake: Arc<Notify>,
    /// Wakes the relay's tasks when a body is queued.
    relay_wake: Arc<watch::Sender<u64>>,
}

impl WebhookState {
    pub fn new(
        store: WebhookStores,
        clock: Arc<dyn Clock>,
        changes: Arc<dyn ChangeListener>,
        line: Option<LineClient>,
        config: WebhookConfig,
    ) -> Self {
        let relay_wake = Arc::new(watch::Sender::new(0));
        let wake = Arc::new(Notify::new());
        Self { store, clock, changes, line, config: Arc::new(config), replies: None, wake, relay_wake }
    }

    /// The state with reply rules.
    pub fn with_replies(mut self, replies: Arc<Replies>) -> Self {
        self.replies = Some(replies);
        self
    }

    /// Tells the worker there is work (the webhook route does this itself).
    pub fn wake_worker(&self) {
        self.wake.notify_one();
    }

    /// What wakes the relay's tasks ([`relay::Relay::spawn`]) when the route queues a body.
    pub fn relay_waker(&self) -> watch::Receiver<u64> {
        self.relay_wake.subscribe()
    }

    fn wake_relay(&self) {
        self.relay_wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for
/// query values.
pub fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_unreserved_only() {
        assert_eq!(url_encode("aZ09-._~"), "aZ09-._~");
        assert_eq!(url_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }

    #[test]
    fn debug_hides_the_secret() {
        let config = WebhookConfig::new("very-secret", "123", "https://x/?t={linkToken}");
        assert!(!format!("{config:?}").contains("very-secret"));
    }
}
