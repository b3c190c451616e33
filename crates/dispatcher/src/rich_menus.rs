//! Links each user's desired rich menu at LINE, at the endpoints' rates:
//! a single link for one user, bulk link (≤ 500) when many users move to
//! the same menu, unlink (single or bulk) when no per-user menu is wanted.
//! The configured default is the channel's default rich menu, set once
//! (and again whenever LINE shows another), so users no rule matches need
//! no request of their own.

use crate::DispatchResult;
use crate::limits::Limiters;
use crate::metrics::DispatchMetrics;
use chrono::{DateTime, Utc};
use renkei_core::{Clock, LineUserId};
use renkei_line::{LineClient, LineError};
use renkei_store::{RichMenuChange, RichMenuStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct RichMenuLinker {
    store: Arc<dyn RichMenuStore>,
    line: LineClient,
    clock: Arc<dyn Clock>,
    limiters: Arc<Limiters>,
    metrics: Arc<DispatchMetrics>,
    owner: String,
    lease: chrono::Duration,
    poll: Duration,
    /// The channel default to keep set, and whether LINE has it now.
    channel_default: Option<String>,
    default_set: std::sync::atomic::AtomicBool,
}

impl RichMenuLinker {
    pub fn new(
        store: Arc<dyn RichMenuStore>,
        line: LineClient,
        clock: Arc<dyn Clock>,
        limiters: Arc<Limiters>,
        metrics: Arc<DispatchMetrics>,
        lease: Duration,
        poll: Duration,
    ) -> Self {
        let owner = format!("rich-menus-{}", Uuid::new_v4().simple());
        let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
        Self {
            store,
            line,
            clock,
            limiters,
            metrics,
            owner,
            lease,
            poll,
            channel_default: None,
            default_set: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Keeps `default` set as the channel's default rich menu (`None`: leaves
    /// whatever the channel has alone).
    pub fn with_channel_default(mut self, default: Option<String>) -> Self {
        self.channel_default = default;
        self
    }

    /// Sets the channel's default rich menu unless LINE already shows it.
    /// Idempotent, so every instance may run it.
    pub async fn ensure_channel_default(&self) -> DispatchResult<()> {
        use std::sync::atomic::Ordering;
        let Some(wanted) = &self.channel_default else { return Ok(()) };
        if self.default_set.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.limiters.rich_menu_link.until_ready().await;
        let current = self.line.default_rich_menu().await?;
        if current.as_deref() != Some(wanted.as_str()) {
            self.limiters.rich_menu_link.until_ready().await;
            self.line.set_default_rich_menu(wanted).await?;
            tracing::info!(rich_menu = %wanted, previous = ?current, "channel default rich menu set");
        }
        self.default_set.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// One round; returns how many users were claimed.
    pub async fn link_once(&self) -> DispatchResult<usize> {
        let now = self.clock.now();
        let changes = self.store.claim_rich_menu_changes(now, 2_000, &self.owner, now + self.lease).await?;
        let n = changes.len();
        let mut by_menu: BTreeMap<Option<String>, Vec<LineUserId>> = BTreeMap::new();
        for RichMenuChange { line_user_id, desired, .. } in changes {
            by_menu.entry(desired).or_default().push(line_user_id);
        }
        for (menu, users) in by_menu {
            for chunk in users.chunks(renkei_line::limits::MAX_RECIPIENTS) {
                let result = self.apply(menu.as_deref(), chunk).await;
                let now = self.clock.now();
                self.record(menu.clone(), chunk, result, now).await?;
            }
        }
        Ok(n)
    }

    async fn apply(&self, menu: Option<&str>, users: &[LineUserId]) -> Result<(), LineError> {
        match (menu, users) {
            (Some(menu), [one]) => {
                self.limiters.rich_menu_link.until_ready().await;
                self.line.link_rich_menu(one, menu).await
            }
            (Some(menu), many) => {
                self.limiters.rich_menu_bulk.until_ready().await;
                self.line.bulk_link_rich_menu(menu, many).await
            }
            (None, [one]) => {
                self.limiters.rich_menu_link.until_ready().await;
                self.line.unlink_rich_menu(one).await
            }
            (None, many) => {
                self.limiters.rich_menu_bulk.until_ready().await;
                self.line.bulk_unlink_rich_menu(many).await
            }
        }
    }

    async fn record(
        &self,
        menu: Option<String>,
        users: &[LineUserId],
        result: Result<(), LineError>,
        now: DateTime<Utc>,
    ) -> DispatchResult<()> {
        match result {
            Ok(()) => {
                DispatchMetrics::add(&self.metrics.rich_menu_links, users.len() as u64);
                let done: Vec<(LineUserId, Option<String>)> = users.iter().map(|u| (u.clone(), menu.clone())).collect();
                self.store.mark_rich_menus_linked(&done, now).await?;
            }
            Err(error) => {
                if matches!(error, LineError::RateLimited { .. }) {
                    DispatchMetrics::add(&self.metrics.rate_limited, 1);
                }
                // Retryable errors come back soon; a refusal (e.g. the menu does
                // not exist) waits for someone to fix the configuration.
                let wait = if error.is_retryable() { chrono::Duration::seconds(5) } else { chrono::Duration::hours(1) };
                tracing::warn!(%error, menu = ?menu, users = users.len(), "linking rich menus failed");
                self.store.release_rich_menu_changes(users, now + wait, &error.to_string()).await?;
            }
        }
        Ok(())
    }

    pub fn spawn(self: Arc<Self>, wake: Arc<Notify>, token: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while !token.is_cancelled() {
                if let Err(error) = self.ensure_channel_default().await {
                    tracing::warn!(%error, "setting the channel's default rich menu failed; retrying");
                }
                match self.link_once().await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "rich menu round failed; retrying"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.poll) => {}
                    _ = wake.notified() => {}
                    _ = token.cancelled() => {}
                }
            }
        })
    }
}
