//! Per-user rich menus: the menu each user should have and the one LINE
//! has, with leases so that several instances share the linking work.

use crate::StoreResult;
use crate::sql::{Dialect, Row, Sql, Ts, stmt};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
// foldhash: a batch names thousands of users.
use foldhash::{HashMap, HashMapExt};
use renkei_core::LineUserId;
use serde::Serialize;

/// A user whose rich menu must change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RichMenuChange {
    pub line_user_id: LineUserId,
    /// The menu to link; `None` means unlink.
    pub desired: Option<String>,
    /// The menu LINE has now (as far as renkei knows).
    pub linked: Option<String>,
}

#[async_trait]
pub trait RichMenuStore: Send + Sync + 'static {
    /// Sets each user's desired menu (`None` = no per-user menu).
    async fn set_desired_rich_menus(
        &self,
        desired: &[(LineUserId, Option<String>)],
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Leases up to `limit` users whose desired menu differs from the linked one.
    async fn claim_rich_menu_changes(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Vec<RichMenuChange>>;
    /// Records that LINE now has `linked` for these users and releases them.
    async fn mark_rich_menus_linked(
        &self,
        done: &[(LineUserId, Option<String>)],
        now: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// Releases users after a failed attempt, to retry at `retry_at`.
    async fn release_rich_menu_changes(
        &self,
        users: &[LineUserId],
        retry_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()>;
}

/// What differs per backend (`sqlite/rich_menus.rs`, `postgres/rich_menus.rs`).
#[async_trait]
pub trait RichMenusSql: Sql {
    /// Leases changes (`$1` owner, `$2` lease end, `$3` now, `$4` limit), `RETURNING line_user_id, desired, linked`.
    const CLAIM_CHANGES: &'static str;

    /// [`RichMenuStore::set_desired_rich_menus`]'s upsert of (user, menu, now).
    const SET_DESIRED: &'static str;

    /// [`RichMenuStore::mark_rich_menus_linked`]'s upsert of (user, menu, now).
    const MARK_LINKED: &'static str;

    /// Runs `upsert` ([`Self::SET_DESIRED`] or [`Self::MARK_LINKED`]) for
    /// the last item of each user of a non-empty batch.
    async fn upsert_per_user(
        &self,
        upsert: &'static str,
        items: &[(LineUserId, Option<String>)],
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// [`RichMenuStore::release_rich_menu_changes`] of a non-empty batch.
    async fn release(&self, users: &[LineUserId], retry_at: DateTime<Utc>, error: &str) -> StoreResult<()>;
}

#[async_trait]
impl<S: RichMenusSql> RichMenuStore for S {
    async fn set_desired_rich_menus(
        &self,
        desired: &[(LineUserId, Option<String>)],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        if desired.is_empty() {
            return Ok(());
        }
        self.upsert_per_user(S::SET_DESIRED, desired, now).await
    }

    async fn claim_rich_menu_changes(
        &self,
        now: DateTime<Utc>,
        limit: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Vec<RichMenuChange>> {
        let mut claimed = stmt::<S::Db>(S::CLAIM_CHANGES)
            .bind(owner)
            .bind(Ts(lease_until))
            .bind(Ts(now))
            .bind(limit)
            .all(self.writer(), change_of)
            .await?;
        claimed.sort_by(|a, b| a.line_user_id.as_str().cmp(b.line_user_id.as_str()));
        Ok(claimed)
    }

    async fn mark_rich_menus_linked(
        &self,
        done: &[(LineUserId, Option<String>)],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        if done.is_empty() {
            return Ok(());
        }
        self.upsert_per_user(S::MARK_LINKED, done, now).await
    }

    async fn release_rich_menu_changes(
        &self,
        users: &[LineUserId],
        retry_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        if users.is_empty() {
            return Ok(());
        }
        self.release(users, retry_at, error).await
    }
}

fn change_of<DB: Dialect>(row: Row<'_, DB>) -> StoreResult<RichMenuChange> {
    Ok(RichMenuChange {
        line_user_id: row.user("line_user_id")?,
        desired: row.opt_string("desired")?,
        linked: row.opt_string("linked")?,
    })
}

/// The last value given for each key, in first-seen order (a batch naming a
/// user twice behaves as two updates in a row).
pub(crate) fn last_per_user(items: &[(LineUserId, Option<String>)]) -> Vec<(&str, Option<&str>)> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<(&str, Option<&str>)> = Vec::new();
    for (user, value) in items {
        match index.get(user.as_str()) {
            Some(&i) => out[i].1 = value.as_deref(),
            None => {
                index.insert(user.as_str(), out.len());
                out.push((user.as_str(), value.as_deref()));
            }
        }
    }
    out
}
