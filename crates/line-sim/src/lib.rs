//! A LINE platform simulator for renkei's demo and tests.
//!
//! It serves the Messaging API endpoints renkei uses (push, multicast,
//! reply, link token, profile, rich menus, quota) and LINE Login's ID token
//! verification with LINE's status codes, headers and bodies: bearer auth,
//! LINE-style 400 details, per-endpoint token-bucket rate limits with LINE's
//! exact 429 body, retry keys remembered 24 h (409 +
//! `x-line-accepted-request-id`), a monthly quota, and injectable faults
//! (5xx, latency, accept-then-drop-connection). It also sends signed
//! webhooks to a target URL.
//!
//! ```no_run
//! # async fn demo() -> Result<(), renkei_line_sim::SimError> {
//! let sim = renkei_line_sim::LineSim::spawn(renkei_line_sim::SimConfig::default()).await?;
//! println!("LINE simulator at {}", sim.base_url());
//! # Ok(()) }
//! ```

mod config;
mod id_token;
mod server;
mod state;
mod webhook;

pub use config::{Endpoint, Faults, RateLimits, SimConfig};
pub use server::RETRY_KEY_ACCEPTED_MESSAGE;
pub use state::{LINK_TOKEN_TTL, RETRY_KEY_TTL, RecordedRequest, SimCounters};
pub use webhook::{WebhookDelivery, ulid};

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use renkei_core::ids::LineUserId;
use renkei_line::webhook::LinkResult;
use serde_json::Value;
use server::DropConnection;
use state::{Inner, Shared};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot bind the simulator: {0}")]
    Bind(#[source] std::io::Error),
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
    #[error("no webhook URL is configured")]
    NoWebhookTarget,
    #[error("webhook delivery failed: {0}")]
    Webhook(String),
    /// The link token is unknown, expired or used: LINE sends no event.
    #[error("link token is unknown, expired or already used")]
    InvalidLinkToken,
}

pub struct LineSim;

impl LineSim {
    /// Starts the simulator on `127.0.0.1:0` (a free port).
    pub async fn spawn(config: SimConfig) -> Result<SimHandle, SimError> {
        Self::spawn_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts the simulator on `bind`.
    pub async fn spawn_on(bind: SocketAddr, config: SimConfig) -> Result<SimHandle, SimError> {
        let listener = TcpListener::bind(bind).await.map_err(SimError::Bind)?;
        let addr = listener.local_addr().map_err(SimError::Bind)?;
        let shared = Arc::new(shared(&config)?);
        let router = server::router(shared.clone());
        let task = tokio::spawn(serve(listener, router));
        Ok(SimHandle { addr, shared, task })
    }
}

/// Runs the simulator on `bind` until the future is dropped (for
/// `renkei line-sim`).
pub async fn run(bind: SocketAddr, config: SimConfig) -> Result<(), SimError> {
    let listener = TcpListener::bind(bind).await.map_err(SimError::Bind)?;
    let addr = listener.local_addr().map_err(SimError::Bind)?;
    let shared = Arc::new(shared(&config)?);
    tracing::info!(%addr, "LINE simulator listening on http://{addr}");
    serve(listener, server::router(shared)).await;
    Ok(())
}

fn shared(config: &SimConfig) -> Result<Shared, SimError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| SimError::Client(e.to_string()))?;
    Ok(Shared {
        tokens: config.channel_access_tokens.clone(),
        channel_secret: config.channel_secret.clone(),
        bot_user_id: config.bot_user_id.clone(),
        inner: Mutex::new(Inner::new(config)),
        http,
    })
}

/// Accept loop. Each connection is served by hyper directly (not
/// `axum::serve`) so a handler can make its connection close without a
/// response: that is how a lost response is simulated.
async fn serve(listener: TcpListener, router: Router) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Usually "too many open files": back off instead of spinning.
                tracing::warn!(error = %e, "line-sim accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let router = router.clone();
        tokio::spawn(async move {
            let signal = Arc::new(Notify::new());
            let conn_signal = DropConnection(signal.clone());
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(conn_signal.clone());
                router.clone().oneshot(request.map(Body::new))
            });
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                // Dropping the connection future closes the socket unanswered.
                () = signal.notified() => {}
            }
        });
    }
}

/// A running simulator. Dropping it stops accepting connections.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`: use as both Messaging API and Login base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The first configured channel access token.
    pub fn access_token(&self) -> &str {
        self.shared.tokens.first().map(String::as_str).unwrap_or_default()
    }

    pub fn channel_secret(&self) -> &str {
        &self.shared.channel_secret
    }

    /// Every accepted request, in order (including dropped-connection ones).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    pub fn requests_for(&self, endpoint: Endpoint) -> Vec<RecordedRequest> {
        self.shared.lock().requests.iter().filter(|r| r.endpoint == endpoint).cloned().collect()
    }

    /// The distinct users the accepted sends with `customAggregationUnits:
    /// [unit]` reached.
    pub fn unit_reach(&self, unit: &str) -> usize {
        self.shared.lock().unit_users.get(unit).map_or(0, |users| users.len())
    }

    /// Messages delivered to `user` by push, multicast or reply, in order.
    pub fn messages_to(&self, user: &str) -> Vec<Value> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| matches!(r.endpoint, Endpoint::Push | Endpoint::Multicast | Endpoint::Reply))
            .filter(|r| r.recipients.iter().any(|u| u == user))
            .flat_map(|r| r.messages.iter().cloned())
            .collect()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    pub fn counters(&self) -> SimCounters {
        self.shared.lock().counters
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    /// Changes rate limits; buckets start full again.
    pub fn set_rate_limits(&self, limits: RateLimits) {
        let mut inner = self.shared.lock();
        inner.rate_limits = limits;
        inner.buckets.clear();
    }

    /// Sets the monthly target limit (`None` = none).
    pub fn set_quota(&self, quota: Option<u64>) {
        self.shared.lock().quota = quota;
    }

    /// Sets this month's consumption (e.g. to 0 for a new month).
    pub fn set_usage(&self, usage: u64) {
        self.shared.lock().usage = usage;
    }

    pub fn usage(&self) -> u64 {
        self.shared.lock().usage
    }

    pub fn add_rich_menu(&self, rich_menu_id: &str, name: &str) {
        self.shared.lock().rich_menus.insert(rich_menu_id.to_string(), name.to_string());
    }

    /// The rich menu linked to `user`, if any.
    pub fn user_rich_menu(&self, user: &str) -> Option<String> {
        self.shared.lock().user_menus.get(user).cloned()
    }

    /// The channel's default rich menu, if one is set.
    pub fn default_rich_menu(&self) -> Option<String> {
        self.shared.lock().default_rich_menu.clone()
    }

    /// The menu `user` sees: their own, else the channel's default.
    pub fn shown_rich_menu(&self, user: &str) -> Option<String> {
        let inner = self.shared.lock();
        inner.user_menus.get(user).or(inner.default_rich_menu.as_ref()).cloned()
    }

    pub fn user_rich_menus(&self) -> HashMap<String, String> {
        self.shared.lock().user_menus.clone()
    }

    /// Turns request recording on or off (see [`SimConfig::record_requests`]).
    pub fn set_record_requests(&self, record: bool) {
        self.shared.lock().record_requests = record;
    }

    pub fn set_webhook_url(&self, url: Option<String>) {
        self.shared.lock().webhook_url = url;
    }

    /// A LINE Login ID token for `user` and the Login channel `channel_id`
    /// that this simulator's `/oauth2/v2.1/verify` accepts until it expires.
    pub fn issue_id_token(&self, user: &LineUserId, channel_id: &str, expires_in: Duration) -> String {
        let exp = id_token::now_secs().saturating_add(i64::try_from(expires_in.as_secs()).unwrap_or(i64::MAX / 2));
        id_token::issue(&self.shared.channel_secret, user.as_str(), channel_id, exp)
    }

    /// An ID token that expired a minute ago.
    pub fn issue_expired_id_token(&self, user: &LineUserId, channel_id: &str) -> String {
        id_token::issue(&self.shared.channel_secret, user.as_str(), channel_id, id_token::now_secs() - 60)
    }

    /// Link tokens issued so far and the user each belongs to.
    pub fn link_tokens(&self) -> HashMap<String, String> {
        self.shared.lock().link_tokens.iter().map(|(t, info)| (t.clone(), info.user_id.clone())).collect()
    }

    pub async fn send_follow(&self, user: &LineUserId) -> Result<WebhookDelivery, SimError> {
        let event = webhook::follow(&self.shared, user, false);
        webhook::deliver(&self.shared, vec![event]).await
    }

    /// A follow by a user who had blocked the account (`isUnblocked: true`).
    pub async fn send_refollow(&self, user: &LineUserId) -> Result<WebhookDelivery, SimError> {
        let event = webhook::follow(&self.shared, user, true);
        webhook::deliver(&self.shared, vec![event]).await
    }

    pub async fn send_unfollow(&self, user: &LineUserId) -> Result<WebhookDelivery, SimError> {
        let event = webhook::unfollow(&self.shared, user);
        webhook::deliver(&self.shared, vec![event]).await
    }

    pub async fn send_postback(&self, user: &LineUserId, data: &str) -> Result<WebhookDelivery, SimError> {
        let event = webhook::postback(&self.shared, user, data);
        webhook::deliver(&self.shared, vec![event]).await
    }

    pub async fn send_message(&self, user: &LineUserId, text: &str) -> Result<WebhookDelivery, SimError> {
        let event = webhook::message(&self.shared, user, text);
        webhook::deliver(&self.shared, vec![event]).await
    }

    /// An `accountLink` event; a failed one has no source and no reply token.
    pub async fn send_account_link(
        &self,
        user: &LineUserId,
        result: LinkResult,
        nonce: &str,
    ) -> Result<WebhookDelivery, SimError> {
        let event = webhook::account_link(&self.shared, user, &result, nonce);
        webhook::deliver(&self.shared, vec![event]).await
    }

    /// What LINE does when the user finishes the account-link dialog: if the
    /// link token is valid (issued here, < 10 min, unused) it is consumed and
    /// an `ok` event with `nonce` is sent; otherwise no event, as on LINE.
    pub async fn complete_account_link(&self, link_token: &str, nonce: &str) -> Result<WebhookDelivery, SimError> {
        let user = {
            let mut inner = self.shared.lock();
            match inner.link_tokens.get_mut(link_token) {
                Some(info) if !info.used && info.issued.elapsed() < LINK_TOKEN_TTL => {
                    info.used = true;
                    info.user_id.clone()
                }
                _ => return Err(SimError::InvalidLinkToken),
            }
        };
        let user = LineUserId::parse(&user).map_err(|_| SimError::InvalidLinkToken)?;
        self.send_account_link(&user, LinkResult::Ok, nonce).await
    }

    /// Posts arbitrary events (sent as given) in one signed body.
    pub async fn send_events(&self, events: Vec<Value>) -> Result<WebhookDelivery, SimError> {
        webhook::deliver(&self.shared, events).await
    }

    /// Sends a delivery's events again as LINE's redelivery does: same
    /// `webhookEventId`, `deliveryContext.isRedelivery: true`.
    pub async fn redeliver(&self, delivery: &WebhookDelivery) -> Result<WebhookDelivery, SimError> {
        webhook::deliver(&self.shared, webhook::as_redelivery(&delivery.events)).await
    }

    /// The verify call LINE makes when a webhook URL is saved: no events.
    pub async fn send_verify(&self) -> Result<WebhookDelivery, SimError> {
        webhook::deliver(&self.shared, Vec::new()).await
    }
}
