//! Members, their links to LINE users, and friendships (follow state).
//! Reads are written once; the writes that check and lock (link, merge
//! attributes) are per backend (`sqlite/members.rs`, `postgres/members.rs`).

use crate::changes::record_changes_tx;
use crate::sql::{Dialect, Row, Sql, Ts, stmt};
use crate::{ImportReceiver, StoreError, StoreResult, parse_object};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{Cause, LineUserId, LinkMethod, MemberId, MemberPatch, UserRef};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::Database;
use std::collections::HashMap;

/// How a batch of member updates went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MembersOutcome {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub linked: u64,
}

impl MembersOutcome {
    pub fn add(&mut self, other: MembersOutcome) {
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.linked += other.linked;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub member_id: MemberId,
    pub attributes: Map<String, Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub member_id: MemberId,
    pub line_user_id: LineUserId,
    pub method: LinkMethod,
    pub linked_at: DateTime<Utc>,
}

/// Result of a link request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    Created(Link),
    /// The same pair was already linked; nothing changed.
    AlreadyLinked(Link),
}

#[async_trait]
pub trait MemberStore: Send + Sync + 'static {
    /// Merges attributes into members (creating them), atomically. Patches
    /// carrying a `line_user_id` also link (method `import`).
    async fn upsert_members(&self, patches: &[MemberPatch], now: DateTime<Utc>) -> StoreResult<MembersOutcome>;

    /// Streams member batches into one transaction: all of them or none.
    async fn import_members(
        &self,
        batches: ImportReceiver<MemberPatch>,
        now: DateTime<Utc>,
    ) -> StoreResult<MembersOutcome>;

    async fn get_member(&self, member_id: &MemberId) -> StoreResult<Option<Member>>;

    /// Links a member (created if unknown) to a LINE user, one to one.
    /// A member or LINE user already linked elsewhere is a [`StoreError::Conflict`].
    async fn link(
        &self,
        member_id: &MemberId,
        line_user_id: &LineUserId,
        method: LinkMethod,
        at: DateTime<Utc>,
    ) -> StoreResult<LinkOutcome>;

    async fn get_link(&self, member_id: &MemberId) -> StoreResult<Option<Link>>;

    async fn get_link_by_line_user(&self, line_user_id: &LineUserId) -> StoreResult<Option<Link>>;

    /// Removes a member's link; returns what was removed.
    async fn unlink(&self, member_id: &MemberId, at: DateTime<Utc>) -> StoreResult<Option<Link>>;

    async fn set_following(&self, line_user_id: &LineUserId, following: bool, at: DateTime<Utc>) -> StoreResult<()>;
}

/// What differs per backend: the checked writes, inside a transaction.
#[async_trait]
pub trait MembersSql: Sql {
    async fn link_tx(
        conn: &mut <Self::Db as Database>::Connection,
        member_id: &MemberId,
        line_user_id: &LineUserId,
        method: LinkMethod,
        at: DateTime<Utc>,
    ) -> StoreResult<LinkOutcome>;

    async fn upsert_members_tx(
        conn: &mut <Self::Db as Database>::Connection,
        patches: &[MemberPatch],
        now: DateTime<Utc>,
    ) -> StoreResult<MembersOutcome>;
}

#[async_trait]
impl<S: MembersSql> MemberStore for S {
    async fn upsert_members(&self, patches: &[MemberPatch], now: DateTime<Utc>) -> StoreResult<MembersOutcome> {
        let mut tx = S::Db::begin(self.writer()).await?;
        let outcome = S::upsert_members_tx(&mut tx, patches, now).await?;
        record_member_changes::<S::Db>(&mut tx, patches, outcome, now).await?;
        S::Db::commit(tx).await?;
        Ok(outcome)
    }

    async fn import_members(
        &self,
        mut batches: ImportReceiver<MemberPatch>,
        now: DateTime<Utc>,
    ) -> StoreResult<MembersOutcome> {
        let mut tx = S::Db::begin(self.writer()).await?;
        let mut outcome = MembersOutcome::default();
        while let Some(batch) = batches.recv().await {
            let batch = batch.map_err(StoreError::ImportAborted)?;
            let done = S::upsert_members_tx(&mut tx, &batch, now)
                .await
                .map_err(|e| StoreError::ImportAborted(e.to_string()))?;
            record_member_changes::<S::Db>(&mut tx, &batch, done, now).await?;
            outcome.add(done);
        }
        S::Db::commit(tx).await?;
        Ok(outcome)
    }

    async fn get_member(&self, member_id: &MemberId) -> StoreResult<Option<Member>> {
        stmt::<S::Db>("SELECT attributes, created_at, updated_at FROM members WHERE member_id = $1")
            .bind(member_id)
            .optional(self.reader(), |row| {
                Ok(Member {
                    member_id: member_id.clone(),
                    attributes: parse_object(row.json("attributes")?, "member attributes")?,
                    created_at: row.ts("created_at")?,
                    updated_at: row.ts("updated_at")?,
                })
            })
            .await
    }

    async fn link(
        &self,
        member_id: &MemberId,
        line_user_id: &LineUserId,
        method: LinkMethod,
        at: DateTime<Utc>,
    ) -> StoreResult<LinkOutcome> {
        let mut tx = S::Db::begin(self.writer()).await?;
        let outcome = S::link_tx(&mut tx, member_id, line_user_id, method, at).await?;
        if let LinkOutcome::Created(link) = &outcome {
            record_changes_tx::<S::Db>(&mut tx, &link_users(link), Cause::Link, at).await?;
        }
        S::Db::commit(tx).await?;
        Ok(outcome)
    }

    async fn get_link(&self, member_id: &MemberId) -> StoreResult<Option<Link>> {
        stmt::<S::Db>("SELECT member_id, line_user_id, method, linked_at FROM links WHERE member_id = $1")
            .bind(member_id)
            .optional(self.reader(), link_of)
            .await
    }

    async fn get_link_by_line_user(&self, line_user_id: &LineUserId) -> StoreResult<Option<Link>> {
        stmt::<S::Db>("SELECT member_id, line_user_id, method, linked_at FROM links WHERE line_user_id = $1")
            .bind(line_user_id)
            .optional(self.reader(), link_of)
            .await
    }

    async fn unlink(&self, member_id: &MemberId, at: DateTime<Utc>) -> StoreResult<Option<Link>> {
        let mut tx = S::Db::begin(self.writer()).await?;
        let removed = stmt::<S::Db>(
            "DELETE FROM links WHERE member_id = $1 RETURNING member_id, line_user_id, method, linked_at",
        )
        .bind(member_id)
        .optional_in(&mut tx, link_of)
        .await?;
        if let Some(link) = &removed {
            record_changes_tx::<S::Db>(&mut tx, &link_users(link), Cause::Link, at).await?;
        }
        S::Db::commit(tx).await?;
        Ok(removed)
    }

    async fn set_following(&self, line_user_id: &LineUserId, following: bool, at: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = S::Db::begin(self.writer()).await?;
        stmt::<S::Db>(
            "INSERT INTO friendships (line_user_id, following, changed_at) VALUES ($1, $2, $3)
             ON CONFLICT (line_user_id) DO UPDATE SET following = excluded.following, changed_at = excluded.changed_at",
        )
        .bind(line_user_id)
        .bind(following)
        .bind(Ts(at))
        .execute_in(&mut tx)
        .await?;
        record_changes_tx::<S::Db>(&mut tx, &[UserRef::LineUser(line_user_id.clone())], Cause::Follow, at).await?;
        S::Db::commit(tx).await
    }
}

/// Both keys of a link made or removed.
fn link_users(link: &Link) -> [UserRef; 2] {
    [UserRef::LineUser(link.line_user_id.clone()), UserRef::Member(link.member_id.clone())]
}

/// Records a member batch's users in the change feed, unless it changed nothing.
async fn record_member_changes<DB: Dialect>(
    conn: &mut <DB as Database>::Connection,
    patches: &[MemberPatch],
    outcome: MembersOutcome,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    if outcome.created + outcome.updated + outcome.linked == 0 {
        return Ok(());
    }
    let users = crate::changes::distinct(patches.iter().map(|p| UserRef::Member(p.member_id.clone())));
    record_changes_tx::<DB>(conn, &users, Cause::Member, at).await
}

/// A `links` row (`member_id, line_user_id, method, linked_at`).
fn link_of<DB: Dialect>(row: Row<'_, DB>) -> StoreResult<Link> {
    parse_link(row.string("member_id")?, row.string("line_user_id")?, row.string("method")?, row.ts("linked_at")?)
}

/// The conflict message when a LINE user is already claimed by another member.
pub(crate) fn line_user_claimed(line_user_id: &str, by: &str) -> StoreError {
    StoreError::Conflict(format!("line_user_id {line_user_id} is already linked to another member ({by})"))
}

pub(crate) fn member_already_linked(member_id: &str, to: &str) -> StoreError {
    StoreError::Conflict(format!(
        "member {member_id} is already linked to {to}; unlink it first (DELETE /v1/links/{{member_id}})"
    ))
}

pub(crate) fn parse_link(
    member_id: String,
    line_user_id: String,
    method: String,
    linked_at: DateTime<Utc>,
) -> StoreResult<Link> {
    Ok(Link {
        member_id: MemberId::parse(&member_id).map_err(|e| StoreError::Corrupt(format!("member_id: {e}")))?,
        line_user_id: LineUserId::parse(&line_user_id)
            .map_err(|e| StoreError::Corrupt(format!("line_user_id: {e}")))?,
        method: LinkMethod::parse(&method).ok_or_else(|| StoreError::Corrupt(format!("link method {method:?}")))?,
        linked_at,
    })
}

/// What merging a patch into a member's current attributes amounts to.
pub(crate) fn merged(current: Option<&Map<String, Value>>, patch: &Map<String, Value>) -> (Map<String, Value>, bool) {
    let mut next = current.cloned().unwrap_or_default();
    renkei_core::merge_attributes(&mut next, patch);
    let changed = current != Some(&next);
    (next, changed)
}

/// Splits patches, in order, into runs in which no member id repeats, so a
/// run can be written set-based and a repeated member still merges in order.
pub(crate) fn runs_of_distinct_members(patches: &[MemberPatch]) -> Vec<&[MemberPatch]> {
    let mut runs = Vec::new();
    let (mut start, mut seen) = (0, std::collections::HashSet::new());
    for (i, patch) in patches.iter().enumerate() {
        if !seen.insert(patch.member_id.as_str()) {
            runs.push(&patches[start..i]);
            start = i;
            seen.clear();
            seen.insert(patch.member_id.as_str());
        }
    }
    if start < patches.len() {
        runs.push(&patches[start..]);
    }
    runs
}

/// What a run of patches (each member once) writes, decided in memory from
/// the members' current attributes and the links the run may touch.
pub(crate) struct RunPlan<'a> {
    /// (member id, merged attributes as JSON text) to insert.
    pub(crate) created: Rows<'a>,
    /// The same, to update.
    pub(crate) updated: Rows<'a>,
    /// (member id, LINE user id) links to create, method `import`.
    pub(crate) new_links: Vec<(&'a str, &'a str)>,
    pub(crate) outcome: MembersOutcome,
}

pub(crate) fn plan_run<'a>(
    patches: &'a [MemberPatch],
    current: &HashMap<String, Map<String, Value>>,
    links: &mut Links,
) -> StoreResult<RunPlan<'a>> {
    let mut outcome = MembersOutcome::default();
    let (mut created, mut updated): (Rows, Rows) = Default::default();
    for patch in patches {
        let now_current = current.get(patch.member_id.as_str());
        let (next, changed) = merged(now_current, &patch.attributes);
        let row = (patch.member_id.as_str(), Value::Object(next).to_string());
        match (now_current, changed) {
            (None, _) => created.push(row),
            (Some(_), true) => updated.push(row),
            (Some(_), false) => outcome.unchanged += 1,
        }
    }
    let new_links = links.check_run(patches)?;
    outcome.created = created.len() as u64;
    outcome.updated = updated.len() as u64;
    outcome.linked = new_links.len() as u64;
    Ok(RunPlan { created, updated, new_links, outcome })
}

/// (member id, attributes as JSON text) of members to write.
pub(crate) type Rows<'a> = Vec<(&'a str, String)>;

/// The links a run may touch, both ways: member → LINE user, LINE user → member.
#[derive(Default)]
pub(crate) struct Links {
    user_of: HashMap<String, String>,
    member_of: HashMap<String, String>,
}

impl Links {
    pub(crate) fn insert(&mut self, member: &str, user: &str) {
        self.member_of.insert(user.to_string(), member.to_string());
        self.user_of.insert(member.to_string(), user.to_string());
    }

    /// The run's patches that carry a LINE user (method `import`), with the
    /// checks of [`MembersSql::link_tx`] applied in order: the links to create.
    pub(crate) fn check_run<'a>(&mut self, patches: &'a [MemberPatch]) -> StoreResult<Vec<(&'a str, &'a str)>> {
        let mut new_links = Vec::new();
        for patch in patches {
            let Some(user) = &patch.line_user_id else { continue };
            let (member, user) = (patch.member_id.as_str(), user.as_str());
            if let Some(current) = self.user_of.get(member) {
                if current == user {
                    continue;
                }
                return Err(member_already_linked(member, current));
            }
            if let Some(other) = self.member_of.get(user) {
                return Err(line_user_claimed(user, other));
            }
            self.insert(member, user);
            new_links.push((member, user));
        }
        Ok(new_links)
    }
}
