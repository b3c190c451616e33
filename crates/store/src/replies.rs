//! The reply log: what renkei answered to each message or postback it
//! replied to (or chose not to), one row per webhook event. The row's key is
//! the webhook event's renkei event id, so a webhook event handled again
//! (after a crash, by a second worker) finds its reply done. The same SQL on
//! both backends.

use crate::StoreResult;
use crate::sql::{Sql, Ts, stmt};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::LineUserId;

/// One reply decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRecord {
    /// The webhook event's renkei event id (`line:<webhookEventId>`).
    pub event_key: String,
    pub line_user_id: LineUserId,
    pub rule_id: String,
    /// `reply`, `unlinked_reply` or `link_prompt`.
    pub answer: String,
    /// `sent`, `failed`, `expired` or `not_owner`.
    pub outcome: String,
    /// LINE's message when it refused the reply.
    pub detail: Option<String>,
    pub replied_at: DateTime<Utc>,
}

/// Replies per rule, answer and outcome since some instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyCount {
    pub rule_id: String,
    pub answer: String,
    pub outcome: String,
    pub count: i64,
}

#[async_trait]
pub trait ReplyStore: Send + Sync + 'static {
    /// The outcome recorded for a webhook event, if any.
    async fn reply_outcome(&self, event_key: &str) -> StoreResult<Option<String>>;

    /// Records a reply decision; false when the event already had one (the
    /// first one stays).
    async fn record_reply(&self, record: &ReplyRecord) -> StoreResult<bool>;

    /// Replies since `since`, counted per rule, answer and outcome (sorted).
    async fn reply_counts(&self, since: DateTime<Utc>) -> StoreResult<Vec<ReplyCount>>;
}

#[async_trait]
impl<S: Sql> ReplyStore for S {
    async fn reply_outcome(&self, event_key: &str) -> StoreResult<Option<String>> {
        stmt::<S::Db>("SELECT outcome FROM reply_log WHERE event_key = $1")
            .bind(event_key)
            .optional(self.reader(), |row| row.string("outcome"))
            .await
    }

    async fn record_reply(&self, record: &ReplyRecord) -> StoreResult<bool> {
        let inserted = stmt::<S::Db>(
            "INSERT INTO reply_log (event_key, line_user_id, rule_id, answer, outcome, detail, replied_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_key) DO NOTHING",
        )
        .bind(record.event_key.as_str())
        .bind(record.line_user_id.as_str())
        .bind(record.rule_id.as_str())
        .bind(record.answer.as_str())
        .bind(record.outcome.as_str())
        .bind(record.detail.as_deref())
        .bind(Ts(record.replied_at))
        .execute(self.writer())
        .await?;
        Ok(inserted > 0)
    }

    async fn reply_counts(&self, since: DateTime<Utc>) -> StoreResult<Vec<ReplyCount>> {
        stmt::<S::Db>(
            "SELECT rule_id, answer, outcome, COUNT(*) AS n FROM reply_log WHERE replied_at >= $1
             GROUP BY rule_id, answer, outcome ORDER BY rule_id, answer, outcome",
        )
        .bind(Ts(since))
        .all(self.reader(), |row| {
            Ok(ReplyCount {
                rule_id: row.string("rule_id")?,
                answer: row.string("answer")?,
                outcome: row.string("outcome")?,
                count: row.int("n")?,
            })
        })
        .await
    }
}
