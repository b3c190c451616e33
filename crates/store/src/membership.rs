//! Storage for segment memberships, transitions and evaluation schedule.
//! Backend code is in `sqlite/membership.rs` and `postgres/membership.rs`;
//! the reads both say alike are here.
//!
//! The segment engine reads users' facts in pages (one query per page of
//! users, not one per user), diffs memberships and writes the new state,
//! its transitions and the next time-driven evaluation in one transaction.

use crate::sql::{Dialect, Row, Sql, Ts, stmt};
use crate::{OutboxStore, StoreResult, parse_member};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use foldhash::HashMap;
pub use renkei_core::{Cause, TransitionKind};
use renkei_core::{EventTallier, LineUserId, MemberId};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A user entering or leaving a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    pub segment_id: String,
    pub line_user_id: LineUserId,
    pub kind: TransitionKind,
    pub at: DateTime<Utc>,
    pub cause: Cause,
}

/// A transition as stored, with its row id (increasing in commit order per backend sequence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredTransition {
    pub id: i64,
    #[serde(flatten)]
    pub transition: Transition,
}

/// One event of a user, as the segment engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct UserEventRecord {
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub properties: Map<String, Value>,
}

/// One event of a user as segment evaluation reads it: only the properties
/// segments look at (see [`EventSelection`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FactEventRecord {
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    /// The top-level keys kept, each once.
    pub properties: Vec<(String, Value)>,
}

/// A user's running totals of one tally from one source of its events
/// (migrations 0010 and 0014): how many events, how many carry the
/// aggregated property as a number, their sum, min and max, and when the
/// latest occurred. Events stored ahead of their time are not in them (see
/// [`UserRecord::pending`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TotalsRecord {
    /// The tally's key: an event type for its plain count (`event_totals`),
    /// else a key of `event_tallies`.
    pub key: String,
    pub count: u64,
    pub numbers: u64,
    pub sum: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub last_at: DateTime<Utc>,
}

/// Events in a page, sorted by time when the page is assembled.
pub(crate) trait Timed {
    fn occurred_at(&self) -> DateTime<Utc>;
}

impl Timed for UserEventRecord {
    fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }
}

impl Timed for FactEventRecord {
    fn occurred_at(&self) -> DateTime<Utc> {
        self.occurred_at
    }
}

/// Everything stored about one LINE user that segments can look at.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord<E = UserEventRecord> {
    pub line_user_id: LineUserId,
    pub member_id: Option<MemberId>,
    /// The linked member's attributes; `None` when not linked.
    pub attributes: Option<Map<String, Value>>,
    /// A linked user counts as following until an unfollow is seen.
    pub following: bool,
    /// Oldest first.
    pub events: Vec<E>,
    /// The running totals of [`EventSelection::totals`]' types and
    /// [`EventSelection::tallies`]' keys, one record per key and source (on
    /// PostgreSQL, and slot; sum them).
    pub totals: Vec<TotalsRecord>,
    /// Events of [`EventSelection::totals`]' types left out of the totals,
    /// stored ahead of their time.
    pub pending: Vec<E>,
}

/// Which events [`MembershipStore::load_user_facts`] loads, and which of
/// their properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventSelection {
    /// Event types to load.
    pub types: Vec<String>,
    /// Per type, the top-level property keys to keep; the others are
    /// dropped. A type not listed (or with no keys) loads with empty
    /// properties, which the database then does not even send.
    pub keys: BTreeMap<String, BTreeSet<String>>,
    /// Per type, only events strictly after this instant are loaded (types
    /// not listed: all of them).
    pub since: BTreeMap<String, DateTime<Utc>>,
    /// Types whose running totals (and pending events) to load as well.
    pub totals: Vec<String>,
    /// Keys of `event_tallies` to load as well (their types among `totals`).
    pub tallies: Vec<String>,
}

impl EventSelection {
    /// Types whose properties are needed at all.
    pub(crate) fn types_with_properties(&self) -> Vec<&str> {
        self.keys.iter().filter(|(_, keys)| !keys.is_empty()).map(|(t, _)| t.as_str()).collect()
    }

    /// `since` aligned with `types` (`None`: no bound).
    pub(crate) fn since_by_type(&self) -> Vec<Option<DateTime<Utc>>> {
        self.types.iter().map(|t| self.since.get(t).copied()).collect()
    }
}

/// A page of the audience: every audience user strictly after `after` up to
/// and including the last of `users`, sorted in the store's order (what
/// [`MembershipStore::audience_page`] returns). Because a page is a whole key
/// range, a store may read it as ranges rather than user by user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AudiencePage {
    pub after: Option<LineUserId>,
    pub users: Vec<LineUserId>,
}

impl AudiencePage {
    /// Runs a backend's page query (`$1` the user to start after, `""` for
    /// the first page; `$2` the limit; the users as column `u`, sorted).
    pub(crate) async fn read<S: Sql>(
        store: &S,
        sql: &'static str,
        after: Option<&LineUserId>,
        limit: u32,
    ) -> StoreResult<Self> {
        let users = stmt::<S::Db>(sql)
            .bind(after.map(|a| a.as_str()).unwrap_or(""))
            .bind(limit)
            .all(store.reader(), |row| row.user("u"))
            .await?;
        Ok(AudiencePage { after: after.cloned(), users })
    }

    /// The last user, where the next page starts after.
    pub fn last(&self) -> Option<&LineUserId> {
        self.users.last()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// The page's key range `(after, last]`, `after` empty for the first
    /// page; `None` for an empty page.
    pub(crate) fn key_range(&self) -> Option<(&str, &str)> {
        let last = self.users.last()?;
        Some((self.after.as_ref().map_or("", |a| a.as_str()), last.as_str()))
    }
}

/// A user's complete new membership set and next time-driven evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipUpdate {
    pub line_user_id: LineUserId,
    pub segments: BTreeSet<String>,
    pub next_due: Option<DateTime<Utc>>,
}

/// Size of a segment and when its membership last changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentStats {
    pub segment_id: String,
    pub size: u64,
    pub updated_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait MembershipStore: Send + Sync + 'static {
    /// Facts of each given user, in the given order. Events resolve as in
    /// `TestReads::user_events`: those with the user's `line_user_id` and those of
    /// the member linked to it. `event_types: Some(..)` loads only those types.
    async fn load_users(&self, users: &[LineUserId], event_types: Option<&[String]>) -> StoreResult<Vec<UserRecord>>;

    /// Like `load_users` with `Some(&selection.types)`, except that each
    /// event keeps only the properties `selection` names: what segment
    /// evaluation reads, at a fraction of the decoding cost.
    async fn load_user_facts(
        &self,
        users: &[LineUserId],
        selection: &EventSelection,
    ) -> StoreResult<Vec<UserRecord<FactEventRecord>>>;

    /// `load_user_facts` for the users of an audience page.
    async fn load_page_facts(
        &self,
        page: &AudiencePage,
        selection: &EventSelection,
    ) -> StoreResult<Vec<UserRecord<FactEventRecord>>> {
        self.load_user_facts(&page.users, selection).await
    }

    /// The audience universe (friendships, links, events' `line_user_id`),
    /// sorted, strictly after `after`, at most `limit`.
    async fn audience_page(&self, after: Option<&LineUserId>, limit: u32) -> StoreResult<AudiencePage>;

    /// Replaces each user's memberships with `segments`, recording a
    /// transition for every difference (at `at`, with `cause`), and sets or
    /// clears the user's next due time. Atomic for the whole batch.
    async fn apply_memberships(
        &self,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
    ) -> StoreResult<Vec<Transition>>;

    /// Rebuilds every running total and tally of events from the events
    /// themselves (they are kept with each insert; this undoes any drift,
    /// e.g. from rows edited by hand). Inserts wait while it runs.
    async fn rebuild_event_totals(&self, at: DateTime<Utc>) -> StoreResult<()>;

    /// From now on, inserts add to `tallier`'s tallies; the tallies of keys
    /// not built yet are built from the stored events first, and those of
    /// keys gone are deleted (at `at`).
    async fn maintain_tallies(&self, tallier: Arc<dyn EventTallier>, at: DateTime<Utc>) -> StoreResult<()>;

    /// `apply_memberships` for users of an audience page (`updates` name no
    /// one outside it). With a `scope`, the updates speak for those segment
    /// ids only: only memberships of those segments are compared and
    /// written (the others are left as they are, with no transition), and a
    /// user's due time only moves earlier (each `next_due` covers the
    /// scope's segments; the stored one, the others). `None`: every segment,
    /// as `apply_memberships`.
    async fn apply_page_memberships(
        &self,
        page: &AudiencePage,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
        scope: Option<&BTreeSet<String>>,
    ) -> StoreResult<Vec<Transition>>;
}

/// Rebuilds `event_totals` as migration 0010 first filled it (inside the
/// caller's transaction).
pub(crate) const REBUILD_EVENT_TOTALS: [&str; 2] = [
    "DELETE FROM event_totals",
    "INSERT INTO event_totals (line_user_id, member_id, type, count, last_at)
     SELECT COALESCE(line_user_id, ''), COALESCE(member_id, ''), type, COUNT(*), MAX(occurred_at)
     FROM events WHERE occurred_at <= received_at
     GROUP BY COALESCE(line_user_id, ''), COALESCE(member_id, ''), type",
];

/// Event properties that are not an object (never written by renkei, but
/// possible in a hand-edited database) count as no properties.
pub(crate) fn properties_of(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => {
            tracing::warn!(kind = %json_kind(&other), "event properties are not a JSON object; treated as empty");
            Map::new()
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

pub(crate) fn attributes_of(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Event properties (JSON text) keeping only `keys`, parsed without building
/// the values of the other keys. Not an object (or not JSON): empty, as in
/// [`properties_of`].
pub(crate) fn thin_properties(text: &str, keys: &BTreeSet<String>) -> Vec<(String, Value)> {
    use serde::de::DeserializeSeed;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    match Thin(keys).deserialize(&mut deserializer).and_then(|map| deserializer.end().map(|()| map)) {
        Ok(map) => map,
        Err(error) => {
            tracing::warn!(%error, "event properties are not a JSON object; treated as empty");
            Vec::new()
        }
    }
}

/// Deserializes a JSON object into a map of the listed keys only.
struct Thin<'k>(&'k BTreeSet<String>);

impl<'de> serde::de::DeserializeSeed<'de> for Thin<'_> {
    type Value = Vec<(String, Value)>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Thin<'_> {
    type Value = Vec<(String, Value)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(String, Value)> = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let key = key.0;
            if self.0.contains(key.as_ref()) {
                let value = map.next_value()?;
                // A key given twice keeps its last value, as in a JSON map.
                match out.iter_mut().find(|(k, _)| *k == key) {
                    Some(slot) => slot.1 = value,
                    None => out.push((key.into_owned(), value)),
                }
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(std::borrow::Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// How event rows become records: with all their properties (`load_users`)
/// or only those selected (`load_user_facts`).
pub(crate) trait EventMaker: Sync {
    type Event: Timed + Send;
    fn make(&self, event_type: String, occurred_at: DateTime<Utc>, properties: Option<&str>) -> Self::Event;
}

pub(crate) struct AllProperties;

impl EventMaker for AllProperties {
    type Event = UserEventRecord;

    fn make(&self, event_type: String, occurred_at: DateTime<Utc>, properties: Option<&str>) -> UserEventRecord {
        let properties =
            properties.map(|text| properties_of(serde_json::from_str(text).unwrap_or(Value::Null))).unwrap_or_default();
        UserEventRecord { event_type, occurred_at, properties }
    }
}

impl EventMaker for EventSelection {
    type Event = FactEventRecord;

    fn make(&self, event_type: String, occurred_at: DateTime<Utc>, properties: Option<&str>) -> FactEventRecord {
        let properties = match (properties, self.keys.get(&event_type)) {
            (Some(text), Some(keys)) => thin_properties(text, keys),
            _ => Vec::new(),
        };
        FactEventRecord { event_type, occurred_at, properties }
    }
}

/// Assembles records from the per-user rows and the event rows of one page;
/// rows name their user by position in the page.
pub(crate) struct PageBuilder<E> {
    records: Vec<UserRecord<E>>,
}

impl<E: Timed> PageBuilder<E> {
    pub(crate) fn new(users: &[LineUserId]) -> Self {
        let records = users
            .iter()
            .map(|u| UserRecord {
                line_user_id: u.clone(),
                member_id: None,
                attributes: None,
                following: false,
                events: Vec::new(),
                totals: Vec::new(),
                pending: Vec::new(),
            })
            .collect();
        Self { records }
    }

    /// The record at a position the database sent back, if it is one.
    pub(crate) fn record(&mut self, position: i64) -> Option<&mut UserRecord<E>> {
        usize::try_from(position).ok().and_then(|i| self.records.get_mut(i))
    }

    pub(crate) fn set_user(
        &mut self,
        position: i64,
        member_id: Option<String>,
        attributes: Option<Value>,
        following: Option<bool>,
    ) {
        let Some(record) = self.record(position) else { return };
        match member_id.map(|m| parse_member(&m)) {
            Some(Ok(member)) => {
                record.member_id = Some(member);
                record.attributes = Some(attributes.map(attributes_of).unwrap_or_default());
            }
            Some(Err(error)) => tracing::warn!(%error, "ignoring a link with a bad member_id"),
            None => {}
        }
        record.following = following.unwrap_or(record.member_id.is_some());
    }

    pub(crate) fn push_event(&mut self, position: i64, event: E) {
        if let Some(record) = self.record(position) {
            record.events.push(event);
        }
    }

    pub(crate) fn push_totals(&mut self, position: i64, totals: TotalsRecord) {
        if let Some(record) = self.record(position) {
            record.totals.push(totals);
        }
    }

    pub(crate) fn push_pending(&mut self, position: i64, event: E) {
        if let Some(record) = self.record(position) {
            record.pending.push(event);
        }
    }

    /// Each user's linked member, in page order.
    pub(crate) fn member_ids(&self) -> Vec<Option<&str>> {
        self.records.iter().map(|r| r.member_id.as_ref().map(|m| m.as_str())).collect()
    }

    pub(crate) fn finish(mut self) -> Vec<UserRecord<E>> {
        for record in &mut self.records {
            record.events.sort_by_key(Timed::occurred_at);
        }
        self.records
    }
}

/// What one user's update changes, given the current memberships.
pub(crate) struct Diff<'a> {
    pub(crate) user: &'a LineUserId,
    pub(crate) entered: Vec<&'a str>,
    pub(crate) exited: Vec<String>,
}

/// The diff of `update` against `current`, among the segments of `scope`
/// only (`None`: all).
pub(crate) fn diff<'a>(
    update: &'a MembershipUpdate,
    current: &BTreeSet<String>,
    scope: Option<&BTreeSet<String>>,
) -> Diff<'a> {
    let in_scope = |s: &String| scope.is_none_or(|scope| scope.contains(s));
    Diff {
        user: &update.line_user_id,
        entered: update.segments.iter().filter(|s| in_scope(s) && !current.contains(*s)).map(String::as_str).collect(),
        exited: current.iter().filter(|s| in_scope(s) && !update.segments.contains(*s)).cloned().collect(),
    }
}

pub(crate) fn transitions_of(diffs: &[Diff<'_>], at: DateTime<Utc>, cause: Cause) -> Vec<Transition> {
    let mut out = Vec::new();
    for d in diffs {
        for s in &d.exited {
            out.push(Transition {
                segment_id: s.clone(),
                line_user_id: d.user.clone(),
                kind: TransitionKind::Exited,
                at,
                cause,
            });
        }
        for s in &d.entered {
            out.push(Transition {
                segment_id: (*s).to_string(),
                line_user_id: d.user.clone(),
                kind: TransitionKind::Entered,
                at,
                cause,
            });
        }
    }
    out
}

pub(crate) fn merge_stats(sizes: Vec<(String, i64)>, last: Vec<(String, DateTime<Utc>)>) -> Vec<SegmentStats> {
    let mut stats: BTreeMap<String, SegmentStats> = BTreeMap::new();
    for (segment_id, size) in sizes {
        stats.insert(segment_id.clone(), SegmentStats { segment_id, size: size.max(0) as u64, updated_at: None });
    }
    for (segment_id, at) in last {
        stats.entry(segment_id.clone()).or_insert(SegmentStats { segment_id, size: 0, updated_at: None }).updated_at =
            Some(at);
    }
    stats.into_values().collect()
}

/// Memberships, due times and transitions as the engine, the API and the
/// scheduler read them: the same SQL on both backends. (The page reads and
/// writes of [`MembershipStore`] are per backend.)
#[async_trait]
pub trait MembershipReads: Send + Sync + 'static {
    /// The LINE user linked to a member, if any.
    async fn member_line_user(&self, member_id: &MemberId) -> StoreResult<Option<LineUserId>>;
    /// The LINE users of those `members` that are linked, in one read.
    async fn line_users_of_members(&self, members: &[MemberId]) -> StoreResult<HashMap<MemberId, LineUserId>>;
    /// Segment ids the user is currently in.
    async fn user_memberships(&self, line_user_id: &LineUserId) -> StoreResult<BTreeSet<String>>;
    /// Users due at `now` (`due_at <= now`), earliest first.
    async fn due_users(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<LineUserId>>;
    /// The earliest scheduled due time.
    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>>;
    /// Sizes of segments that have members or a history, sorted by id.
    async fn segment_stats(&self) -> StoreResult<Vec<SegmentStats>>;
    /// Members of a segment sorted by `line_user_id`, strictly after `after`.
    async fn segment_members(&self, segment_id: &str, after: Option<&str>, limit: u32) -> StoreResult<Vec<LineUserId>>;
    /// Where a page of `size` members of a segment past `after` (by
    /// `line_user_id`) ends: its last member, or `None` when fewer are left.
    async fn segment_page_end(
        &self,
        segment_id: &str,
        after: Option<&str>,
        size: u32,
    ) -> StoreResult<Option<LineUserId>>;
    /// The members of a segment in `(after, through]` by `line_user_id` (to
    /// the end without `through`), sorted, each with the member linked to it.
    async fn segment_range_linked(
        &self,
        segment_id: &str,
        after: Option<&str>,
        through: Option<&str>,
    ) -> StoreResult<Vec<(LineUserId, Option<MemberId>)>>;
    /// Transitions with `id > after_id`, oldest first.
    async fn transitions_after(&self, after_id: i64, limit: u32) -> StoreResult<Vec<StoredTransition>>;
}

/// Sorts after every LINE user id (each is `U` and 32 hex digits): the
/// upper bound of a range to the end of a segment.
pub(crate) const PAST_EVERY_USER: &str = "V";

#[async_trait]
impl<S: Sql + OutboxStore> MembershipReads for S {
    async fn member_line_user(&self, member_id: &MemberId) -> StoreResult<Option<LineUserId>> {
        stmt::<S::Db>("SELECT line_user_id FROM links WHERE member_id = $1")
            .bind(member_id)
            .optional(self.reader(), |row| row.user("line_user_id"))
            .await
    }

    async fn line_users_of_members(&self, members: &[MemberId]) -> StoreResult<HashMap<MemberId, LineUserId>> {
        // The set read is per dialect; the dispatcher's facts use the same one.
        <S as OutboxStore>::member_line_users(self, members).await
    }

    async fn user_memberships(&self, line_user_id: &LineUserId) -> StoreResult<BTreeSet<String>> {
        let ids = stmt::<S::Db>("SELECT segment_id FROM segment_memberships WHERE line_user_id = $1")
            .bind(line_user_id)
            .all(self.reader(), |row| row.string("segment_id"))
            .await?;
        Ok(ids.into_iter().collect())
    }

    async fn due_users(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<LineUserId>> {
        stmt::<S::Db>(
            "SELECT line_user_id FROM evaluation_schedule WHERE due_at <= $1 ORDER BY due_at, line_user_id LIMIT $2",
        )
        .bind(Ts(now))
        .bind(limit)
        .all(self.reader(), |row| row.user("line_user_id"))
        .await
    }

    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        stmt::<S::Db>("SELECT MIN(due_at) AS due FROM evaluation_schedule")
            .one(self.reader(), |row| row.opt_ts("due"))
            .await
    }

    async fn segment_stats(&self) -> StoreResult<Vec<SegmentStats>> {
        let sizes = stmt::<S::Db>("SELECT segment_id, COUNT(*) AS size FROM segment_memberships GROUP BY segment_id")
            .all(self.reader(), |row| Ok((row.string("segment_id")?, row.int("size")?)))
            .await?;
        let last = stmt::<S::Db>("SELECT segment_id, MAX(at) AS last FROM segment_transitions GROUP BY segment_id")
            .all(self.reader(), |row| Ok((row.string("segment_id")?, row.ts("last")?)))
            .await?;
        Ok(merge_stats(sizes, last))
    }

    async fn segment_members(&self, segment_id: &str, after: Option<&str>, limit: u32) -> StoreResult<Vec<LineUserId>> {
        stmt::<S::Db>(
            "SELECT line_user_id FROM segment_memberships WHERE segment_id = $1 AND line_user_id > $2
             ORDER BY line_user_id LIMIT $3",
        )
        .bind(segment_id)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .all(self.reader(), |row| row.user("line_user_id"))
        .await
    }

    async fn segment_page_end(
        &self,
        segment_id: &str,
        after: Option<&str>,
        size: u32,
    ) -> StoreResult<Option<LineUserId>> {
        stmt::<S::Db>(
            "SELECT line_user_id FROM segment_memberships WHERE segment_id = $1 AND line_user_id > $2
             ORDER BY line_user_id LIMIT 1 OFFSET $3",
        )
        .bind(segment_id)
        .bind(after.unwrap_or(""))
        .bind(size.saturating_sub(1))
        .optional(self.reader(), |row| row.user("line_user_id"))
        .await
    }

    async fn segment_range_linked(
        &self,
        segment_id: &str,
        after: Option<&str>,
        through: Option<&str>,
    ) -> StoreResult<Vec<(LineUserId, Option<MemberId>)>> {
        // A probe of `links` per member: a join would hash all of `links`.
        stmt::<S::Db>(
            "SELECT m.line_user_id, (SELECT l.member_id FROM links l WHERE l.line_user_id = m.line_user_id) AS member_id
             FROM segment_memberships m WHERE m.segment_id = $1 AND m.line_user_id > $2 AND m.line_user_id <= $3
             ORDER BY m.line_user_id",
        )
        .bind(segment_id)
        .bind(after.unwrap_or(""))
        .bind(through.unwrap_or(PAST_EVERY_USER))
        .all(self.reader(), |row| Ok((row.user("line_user_id")?, row.opt_member("member_id")?)))
        .await
    }

    async fn transitions_after(&self, after_id: i64, limit: u32) -> StoreResult<Vec<StoredTransition>> {
        stmt::<S::Db>(
            "SELECT id, segment_id, line_user_id, kind, at, cause FROM segment_transitions WHERE id > $1
             ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(limit)
        .all(self.reader(), transition_of)
        .await
    }
}

/// A `segment_transitions` row.
fn transition_of<DB: Dialect>(row: Row<'_, DB>) -> StoreResult<StoredTransition> {
    Ok(StoredTransition {
        id: row.int("id")?,
        transition: Transition {
            segment_id: row.string("segment_id")?,
            line_user_id: row.user("line_user_id")?,
            kind: row.parsed("kind", "transition kind", TransitionKind::parse)?,
            at: row.ts("at")?,
            cause: row.parsed("cause", "transition cause", Cause::parse)?,
        },
    })
}
