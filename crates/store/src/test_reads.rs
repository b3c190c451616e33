//! Reads that only tests make (`test-support` feature): what was stored,
//! as the tests check it. Written once for both backends.

use crate::StoreResult;
use crate::events::{StoredEvent, event_of};
use crate::outbox::{
    CampaignCounts, Delivery, SharedMessages, count_deliveries, counts_of, delivery_of, select_deliveries,
};
use crate::sql::{Sql, Ts, stmt};
use crate::webhook::{LinkNonce, WebhookEventRow, link_nonce_of, webhook_columns, webhook_event_of};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::LineUserId;
use serde::Serialize;

/// `campaign_counts` recounted from the rows, as migration 0025 backfills
/// it: for benchmarks that fill the outbox by SQL, past the writers that
/// keep the counts. Standard SQL, both backends.
pub const RECOUNT_CAMPAIGN_COUNTS: [&str; 5] = [
    "DELETE FROM campaign_counts",
    "INSERT INTO campaign_counts (campaign_id, status, n)
     SELECT campaign_id, 'created', COUNT(*) FROM deliveries GROUP BY campaign_id",
    "INSERT INTO campaign_counts (campaign_id, status, skip_reason, n)
     SELECT campaign_id, 'skipped', COALESCE(skip_reason, ''), COUNT(*) FROM deliveries WHERE status = 'skipped'
     GROUP BY campaign_id, skip_reason",
    "INSERT INTO campaign_counts (campaign_id, status, n)
     SELECT s.campaign_id, r.status, COUNT(*) FROM delivery_sends s JOIN send_requests r ON r.id = s.request_id
     WHERE r.status IN ('sent', 'failed') GROUP BY s.campaign_id, r.status",
    "INSERT INTO campaign_counts (campaign_id, status, n)
     SELECT campaign_id, 'requested', COUNT(*) FROM delivery_sends GROUP BY campaign_id",
];

/// Row counts per table: what tests use to prove "nothing was written".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreCounts {
    pub members: u64,
    pub links: u64,
    pub friendships: u64,
    pub events: u64,
    pub webhook_events: u64,
    pub deliveries: u64,
    pub send_requests: u64,
}

#[async_trait]
pub trait TestReads: Send + Sync + 'static {
    /// `None` when no follow/unfollow was ever seen for the user.
    async fn get_following(&self, line_user_id: &LineUserId) -> StoreResult<Option<bool>>;

    /// A LINE user's events, oldest first: those sent with its `line_user_id`
    /// and those of the member linked to it (also sent before the link).
    async fn user_events(&self, line_user_id: &LineUserId) -> StoreResult<Vec<StoredEvent>>;

    async fn counts(&self) -> StoreResult<StoreCounts>;

    /// A campaign's deliveries counted from the rows, as `campaign_counts`
    /// keeps them by triggers (tests compare the two).
    async fn counted_campaign_counts(&self, campaign_id: &str) -> StoreResult<CampaignCounts>;

    async fn get_delivery(&self, id: i64) -> StoreResult<Option<Delivery>>;

    async fn get_webhook_event(&self, webhook_event_id: &str) -> StoreResult<Option<WebhookEventRow>>;

    async fn get_link_nonce(&self, nonce: &str) -> StoreResult<Option<LinkNonce>>;

    /// The menu LINE has for a user, as far as renkei knows.
    async fn linked_rich_menu(&self, line_user_id: &LineUserId) -> StoreResult<Option<String>>;

    /// Sets (or clears) when a user is next due for evaluation.
    async fn set_due(&self, line_user_id: &LineUserId, due_at: Option<DateTime<Utc>>) -> StoreResult<()>;
}

#[async_trait]
impl<S: Sql> TestReads for S {
    async fn get_following(&self, line_user_id: &LineUserId) -> StoreResult<Option<bool>> {
        stmt::<S::Db>("SELECT following FROM friendships WHERE line_user_id = $1")
            .bind(line_user_id)
            .optional(self.reader(), |row| row.boolean("following"))
            .await
    }

    async fn user_events(&self, line_user_id: &LineUserId) -> StoreResult<Vec<StoredEvent>> {
        stmt::<S::Db>(
            "SELECT id, event_id, type, member_id, line_user_id, occurred_at, properties FROM events
             WHERE line_user_id = $1
                OR member_id = (SELECT member_id FROM links WHERE line_user_id = $1)
             ORDER BY occurred_at, id",
        )
        .bind(line_user_id)
        .all(self.reader(), event_of)
        .await
    }

    async fn counted_campaign_counts(&self, campaign_id: &str) -> StoreResult<CampaignCounts> {
        let rows = stmt::<S::Db>(count_deliveries!("$1")).bind(campaign_id).fetch_all(self.reader()).await?;
        counts_of::<S::Db>(&rows)
    }

    async fn counts(&self) -> StoreResult<StoreCounts> {
        let webhook_events = stmt::<S::Db>("SELECT COUNT(*) AS n FROM webhook_events")
            .one(self.inbox_reader(), |row| Ok(row.int("n")?.max(0) as u64))
            .await?;
        stmt::<S::Db>(
            "SELECT (SELECT COUNT(*) FROM members) AS members, (SELECT COUNT(*) FROM links) AS links,
                    (SELECT COUNT(*) FROM friendships) AS friendships, (SELECT COUNT(*) FROM events) AS events,
                    (SELECT COUNT(*) FROM deliveries) AS deliveries, (SELECT COUNT(*) FROM send_requests) AS send_requests",
        )
        .one(self.reader(), |row| {
            let count = |name: &str| -> StoreResult<u64> { Ok(row.int(name)?.max(0) as u64) };
            Ok(StoreCounts {
                members: count("members")?,
                links: count("links")?,
                friendships: count("friendships")?,
                events: count("events")?,
                webhook_events,
                deliveries: count("deliveries")?,
                send_requests: count("send_requests")?,
            })
        })
        .await
    }

    async fn get_delivery(&self, id: i64) -> StoreResult<Option<Delivery>> {
        let mut shared = SharedMessages::default();
        stmt::<S::Db>(concat!(select_deliveries!(), " WHERE d.id = $1"))
            .bind(id)
            .optional(self.reader(), |row| delivery_of(row, &mut shared))
            .await
    }

    async fn get_webhook_event(&self, webhook_event_id: &str) -> StoreResult<Option<WebhookEventRow>> {
        stmt::<S::Db>(concat!("SELECT ", webhook_columns!(), " FROM webhook_events WHERE webhook_event_id = $1"))
            .bind(webhook_event_id)
            .optional(self.inbox_reader(), webhook_event_of)
            .await
    }

    async fn get_link_nonce(&self, nonce: &str) -> StoreResult<Option<LinkNonce>> {
        stmt::<S::Db>(
            "SELECT nonce, member_id, created_at, expires_at, used_at, result, line_user_id
             FROM link_nonces WHERE nonce = $1",
        )
        .bind(nonce)
        .optional(self.reader(), link_nonce_of)
        .await
    }

    async fn linked_rich_menu(&self, line_user_id: &LineUserId) -> StoreResult<Option<String>> {
        let linked = stmt::<S::Db>("SELECT linked FROM rich_menu_state WHERE line_user_id = $1")
            .bind(line_user_id)
            .optional(self.reader(), |row| row.opt_string("linked"))
            .await?;
        Ok(linked.flatten())
    }

    async fn set_due(&self, line_user_id: &LineUserId, due_at: Option<DateTime<Utc>>) -> StoreResult<()> {
        match due_at {
            Some(due) => {
                stmt::<S::Db>(
                    "INSERT INTO evaluation_schedule (line_user_id, due_at) VALUES ($1, $2)
                     ON CONFLICT (line_user_id) DO UPDATE SET due_at = excluded.due_at",
                )
                .bind(line_user_id)
                .bind(Ts(due))
                .execute(self.writer())
                .await?;
            }
            None => {
                stmt::<S::Db>("DELETE FROM evaluation_schedule WHERE line_user_id = $1")
                    .bind(line_user_id)
                    .execute(self.writer())
                    .await?;
            }
        }
        Ok(())
    }
}
