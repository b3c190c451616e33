//! Links each user's desired rich menu at LINE, at the endpoints' rates:
//! a single link for one user, bulk link (≤ 500) when many users move to
//! the same menu, unlink (single or bulk) when no per-user menu is wanted.

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
        Self { store, line, clock, limiters, metrics, owner, lease, poll }
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
