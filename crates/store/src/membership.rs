//! Storage for segment memberships, transitions and evaluation schedule.
//! Both backends' implementations live in this file.
//!
//! The segment engine reads users' facts in pages (one query per page of
//! users, not one per user), diffs memberships and writes the new state,
//! its transitions and the next time-driven evaluation in one transaction.

use crate::sqlite::{from_micros, to_micros};
use crate::{PgStore, SqliteStore, StoreError, StoreResult, parse_member, parse_user};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
pub use renkei_core::{Cause, TransitionKind};
use renkei_core::{LineUserId, MemberId};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::types::Json;
use std::collections::{BTreeMap, BTreeSet, HashMap};

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

/// Events in a page, sorted by time when the page is assembled.
trait Timed {
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
}

impl EventSelection {
    /// Types whose properties are needed at all.
    fn types_with_properties(&self) -> Vec<&str> {
        self.keys.iter().filter(|(_, keys)| !keys.is_empty()).map(|(t, _)| t.as_str()).collect()
    }

    /// `since` aligned with `types` (`None`: no bound).
    fn since_by_type(&self) -> Vec<Option<DateTime<Utc>>> {
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
    fn key_range(&self) -> Option<(&str, &str)> {
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
    /// `Store::user_events`: those with the user's `line_user_id` and those of
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

    /// The LINE user linked to a member, if any.
    async fn member_line_user(&self, member_id: &MemberId) -> StoreResult<Option<LineUserId>>;

    /// The audience universe (friendships, links, events' `line_user_id`),
    /// sorted, strictly after `after`, at most `limit`.
    async fn audience_page(&self, after: Option<&LineUserId>, limit: u32) -> StoreResult<AudiencePage>;

    /// Segment ids the user is currently in.
    async fn user_memberships(&self, line_user_id: &LineUserId) -> StoreResult<BTreeSet<String>>;

    /// Replaces each user's memberships with `segments`, recording a
    /// transition for every difference (at `at`, with `cause`), and sets or
    /// clears the user's next due time. Atomic for the whole batch.
    async fn apply_memberships(
        &self,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
    ) -> StoreResult<Vec<Transition>>;

    /// `apply_memberships` for users of an audience page (`updates` name no
    /// one outside it).
    async fn apply_page_memberships(
        &self,
        _page: &AudiencePage,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
    ) -> StoreResult<Vec<Transition>> {
        self.apply_memberships(updates, at, cause).await
    }

    /// Sets (`Some`) or clears (`None`) when the user must be re-evaluated.
    async fn set_due(&self, line_user_id: &LineUserId, due_at: Option<DateTime<Utc>>) -> StoreResult<()>;

    /// Users due at `now` (`due_at <= now`), earliest first.
    async fn due_users(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<LineUserId>>;

    /// The earliest scheduled due time.
    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>>;

    /// Sizes of segments that have members or a history, sorted by id.
    async fn segment_stats(&self) -> StoreResult<Vec<SegmentStats>>;

    /// Members of a segment sorted by `line_user_id`, strictly after `after`.
    async fn segment_members(&self, segment_id: &str, after: Option<&str>, limit: u32) -> StoreResult<Vec<LineUserId>>;

    /// Transitions with `id > after_id`, oldest first.
    async fn transitions_after(&self, after_id: i64, limit: u32) -> StoreResult<Vec<StoredTransition>>;
}

/// Event properties that are not an object (never written by renkei, but
/// possible in a hand-edited database) count as no properties.
fn properties_of(value: Value) -> Map<String, Value> {
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

fn attributes_of(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Event properties (JSON text) keeping only `keys`, parsed without building
/// the values of the other keys. Not an object (or not JSON): empty, as in
/// [`properties_of`].
fn thin_properties(text: &str, keys: &BTreeSet<String>) -> Vec<(String, Value)> {
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
trait EventMaker: Sync {
    type Event: Timed + Send;
    fn make(&self, event_type: String, occurred_at: DateTime<Utc>, properties: Option<&str>) -> Self::Event;
}

struct AllProperties;

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
struct PageBuilder<E> {
    records: Vec<UserRecord<E>>,
}

impl<E: Timed> PageBuilder<E> {
    fn new(users: &[LineUserId]) -> Self {
        let records = users
            .iter()
            .map(|u| UserRecord {
                line_user_id: u.clone(),
                member_id: None,
                attributes: None,
                following: false,
                events: Vec::new(),
            })
            .collect();
        Self { records }
    }

    /// The record at a position the database sent back, if it is one.
    fn record(&mut self, position: i64) -> Option<&mut UserRecord<E>> {
        usize::try_from(position).ok().and_then(|i| self.records.get_mut(i))
    }

    fn set_user(
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

    fn push_event(&mut self, position: i64, event: E) {
        if let Some(record) = self.record(position) {
            record.events.push(event);
        }
    }

    /// Each user's linked member, in page order.
    fn member_ids(&self) -> Vec<Option<&str>> {
        self.records.iter().map(|r| r.member_id.as_ref().map(|m| m.as_str())).collect()
    }

    fn finish(mut self) -> Vec<UserRecord<E>> {
        for record in &mut self.records {
            record.events.sort_by_key(Timed::occurred_at);
        }
        self.records
    }
}

/// What one user's update changes, given the current memberships.
struct Diff<'a> {
    user: &'a LineUserId,
    entered: Vec<&'a str>,
    exited: Vec<String>,
}

fn diff<'a>(update: &'a MembershipUpdate, current: &BTreeSet<String>) -> Diff<'a> {
    Diff {
        user: &update.line_user_id,
        entered: update.segments.iter().filter(|s| !current.contains(*s)).map(String::as_str).collect(),
        exited: current.iter().filter(|s| !update.segments.contains(*s)).cloned().collect(),
    }
}

fn transitions_of(diffs: &[Diff<'_>], at: DateTime<Utc>, cause: Cause) -> Vec<Transition> {
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

fn stored_transition(
    id: i64,
    segment_id: String,
    line_user_id: String,
    kind: String,
    at: DateTime<Utc>,
    cause: String,
) -> StoreResult<StoredTransition> {
    Ok(StoredTransition {
        id,
        transition: Transition {
            segment_id,
            line_user_id: parse_user(&line_user_id)?,
            kind: TransitionKind::parse(&kind)
                .ok_or_else(|| StoreError::Corrupt(format!("transition kind {kind:?}")))?,
            at,
            cause: Cause::parse(&cause).ok_or_else(|| StoreError::Corrupt(format!("transition cause {cause:?}")))?,
        },
    })
}

fn merge_stats(sizes: Vec<(String, i64)>, last: Vec<(String, DateTime<Utc>)>) -> Vec<SegmentStats> {
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

fn ids_json(users: &[LineUserId]) -> String {
    Value::Array(users.iter().map(|u| Value::String(u.as_str().to_string())).collect()).to_string()
}

// ---------------------------------------------------------------- SQLite

impl SqliteStore {
    /// `load_users` and `load_user_facts`: with a selection, properties are
    /// read only for the types that need them, and thinned to their keys.
    async fn load_records<M: EventMaker>(
        &self,
        users: &[LineUserId],
        event_types: Option<&[String]>,
        selection: Option<&EventSelection>,
        maker: &M,
    ) -> StoreResult<Vec<UserRecord<M::Event>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        // Id lists travel as JSON arrays: SQLite has no array parameters.
        let ids = ids_json(users);
        let types = event_types.map(|t| serde_json::to_string(t).unwrap_or_else(|_| "[]".to_string()));
        let with_properties =
            selection.map(|s| serde_json::to_string(&s.types_with_properties()).unwrap_or_else(|_| "[]".to_string()));
        let since = selection.map(|s| {
            let bounds: BTreeMap<&str, i64> = s.since.iter().map(|(t, at)| (t.as_str(), to_micros(*at))).collect();
            serde_json::to_string(&bounds).unwrap_or_else(|_| "{}".to_string())
        });
        let mut page = PageBuilder::new(users);
        let mut conn = self.reader.acquire().await?;
        let rows = sqlx::query(
            "SELECT u.key AS position, l.member_id, m.attributes, f.following
             FROM json_each(?1) u
             LEFT JOIN links l ON l.line_user_id = u.value
             LEFT JOIN members m ON m.member_id = l.member_id
             LEFT JOIN friendships f ON f.line_user_id = u.value",
        )
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let attributes: Option<String> = row.try_get("attributes")?;
            let attributes = attributes.map(|text| serde_json::from_str(&text).unwrap_or(Value::Null));
            page.set_user(row.try_get("position")?, row.try_get("member_id")?, attributes, row.try_get("following")?);
        }
        let rows = sqlx::query(
            "SELECT u.key AS position, e.type, e.occurred_at,
                    CASE WHEN ?3 IS NULL OR e.type IN (SELECT value FROM json_each(?3)) THEN e.properties END
                        AS properties
             FROM json_each(?1) u JOIN events e ON e.line_user_id = u.value
             WHERE (?2 IS NULL OR e.type IN (SELECT value FROM json_each(?2)))
               AND (?4 IS NULL OR e.occurred_at > COALESCE(?4 ->> e.type, -9223372036854775808))
             UNION ALL
             SELECT u.key AS position, e.type, e.occurred_at,
                    CASE WHEN ?3 IS NULL OR e.type IN (SELECT value FROM json_each(?3)) THEN e.properties END
                        AS properties
             FROM json_each(?1) u
             JOIN links l ON l.line_user_id = u.value
             JOIN events e ON e.member_id = l.member_id
             WHERE e.line_user_id IS NOT l.line_user_id
               AND (?2 IS NULL OR e.type IN (SELECT value FROM json_each(?2)))
               AND (?4 IS NULL OR e.occurred_at > COALESCE(?4 ->> e.type, -9223372036854775808))",
        )
        .bind(&ids)
        .bind(types)
        .bind(with_properties)
        .bind(since)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let position: i64 = row.try_get("position")?;
            let event_type: String = row.try_get("type")?;
            let properties: Option<&str> = row.try_get("properties")?;
            let event = maker.make(event_type, from_micros(row.try_get("occurred_at")?)?, properties);
            page.push_event(position, event);
        }
        Ok(page.finish())
    }
}

#[async_trait]
impl MembershipStore for SqliteStore {
    async fn load_users(&self, users: &[LineUserId], event_types: Option<&[String]>) -> StoreResult<Vec<UserRecord>> {
        self.load_records(users, event_types, None, &AllProperties).await
    }

    async fn load_user_facts(
        &self,
        users: &[LineUserId],
        selection: &EventSelection,
    ) -> StoreResult<Vec<UserRecord<FactEventRecord>>> {
        self.load_records(users, Some(&selection.types), Some(selection), selection).await
    }

    async fn member_line_user(&self, member_id: &MemberId) -> StoreResult<Option<LineUserId>> {
        let id: Option<String> = sqlx::query_scalar("SELECT line_user_id FROM links WHERE member_id = ?")
            .bind(member_id.as_str())
            .fetch_optional(&self.reader)
            .await?;
        id.map(|id| parse_user(&id)).transpose()
    }

    async fn audience_page(&self, after: Option<&LineUserId>, limit: u32) -> StoreResult<AudiencePage> {
        // Each source is cut at `limit` first, so a page costs O(limit), not O(universe).
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT u FROM (
                 SELECT u FROM (SELECT line_user_id AS u FROM friendships WHERE line_user_id > ?1
                                ORDER BY line_user_id LIMIT ?2)
                 UNION
                 SELECT u FROM (SELECT line_user_id AS u FROM links WHERE line_user_id > ?1
                                ORDER BY line_user_id LIMIT ?2)
                 UNION
                 SELECT u FROM (SELECT DISTINCT line_user_id AS u FROM events
                                WHERE line_user_id IS NOT NULL AND line_user_id > ?1
                                ORDER BY line_user_id LIMIT ?2)
             ) ORDER BY u LIMIT ?2",
        )
        .bind(after.map(|a| a.as_str()).unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        let users = ids.iter().map(|id| parse_user(id)).collect::<StoreResult<_>>()?;
        Ok(AudiencePage { after: after.cloned(), users })
    }

    async fn user_memberships(&self, line_user_id: &LineUserId) -> StoreResult<BTreeSet<String>> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT segment_id FROM segment_memberships WHERE line_user_id = ?")
            .bind(line_user_id.as_str())
            .fetch_all(&self.reader)
            .await?;
        Ok(ids.into_iter().collect())
    }

    async fn apply_memberships(
        &self,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
    ) -> StoreResult<Vec<Transition>> {
        let at_micros = to_micros(at);
        let mut tx = self.writer.begin().await?;
        let mut diffs = Vec::with_capacity(updates.len());
        for update in updates {
            let user = update.line_user_id.as_str();
            let current: Vec<String> =
                sqlx::query_scalar("SELECT segment_id FROM segment_memberships WHERE line_user_id = ?")
                    .bind(user)
                    .fetch_all(&mut *tx)
                    .await?;
            let current: BTreeSet<String> = current.into_iter().collect();
            let d = diff(update, &current);
            for segment in &d.exited {
                sqlx::query("DELETE FROM segment_memberships WHERE segment_id = ? AND line_user_id = ?")
                    .bind(segment)
                    .bind(user)
                    .execute(&mut *tx)
                    .await?;
            }
            for segment in &d.entered {
                sqlx::query("INSERT INTO segment_memberships (segment_id, line_user_id, entered_at) VALUES (?, ?, ?)")
                    .bind(*segment)
                    .bind(user)
                    .bind(at_micros)
                    .execute(&mut *tx)
                    .await?;
            }
            match update.next_due {
                Some(due) => {
                    sqlx::query(
                        "INSERT INTO evaluation_schedule (line_user_id, due_at) VALUES (?, ?)
                         ON CONFLICT (line_user_id) DO UPDATE SET due_at = excluded.due_at
                         WHERE evaluation_schedule.due_at IS NOT excluded.due_at",
                    )
                    .bind(user)
                    .bind(to_micros(due))
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM evaluation_schedule WHERE line_user_id = ?")
                        .bind(user)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            diffs.push(d);
        }
        let transitions = transitions_of(&diffs, at, cause);
        for t in &transitions {
            sqlx::query(
                "INSERT INTO segment_transitions (segment_id, line_user_id, kind, at, cause) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&t.segment_id)
            .bind(t.line_user_id.as_str())
            .bind(t.kind.as_str())
            .bind(at_micros)
            .bind(cause.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(transitions)
    }

    async fn set_due(&self, line_user_id: &LineUserId, due_at: Option<DateTime<Utc>>) -> StoreResult<()> {
        match due_at {
            Some(due) => {
                sqlx::query(
                    "INSERT INTO evaluation_schedule (line_user_id, due_at) VALUES (?, ?)
                     ON CONFLICT (line_user_id) DO UPDATE SET due_at = excluded.due_at",
                )
                .bind(line_user_id.as_str())
                .bind(to_micros(due))
                .execute(&self.writer)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM evaluation_schedule WHERE line_user_id = ?")
                    .bind(line_user_id.as_str())
                    .execute(&self.writer)
                    .await?;
            }
        }
        Ok(())
    }

    async fn due_users(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<LineUserId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT line_user_id FROM evaluation_schedule WHERE due_at <= ? ORDER BY due_at, line_user_id LIMIT ?",
        )
        .bind(to_micros(now))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        ids.iter().map(|id| parse_user(id)).collect()
    }

    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let due: Option<i64> =
            sqlx::query_scalar("SELECT MIN(due_at) FROM evaluation_schedule").fetch_one(&self.reader).await?;
        due.map(from_micros).transpose()
    }

    async fn segment_stats(&self) -> StoreResult<Vec<SegmentStats>> {
        let sizes = sqlx::query("SELECT segment_id, COUNT(*) AS size FROM segment_memberships GROUP BY segment_id")
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("segment_id")?, row.try_get("size")?)))
            .collect::<StoreResult<Vec<_>>>()?;
        let last = sqlx::query("SELECT segment_id, MAX(at) AS last FROM segment_transitions GROUP BY segment_id")
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("segment_id")?, from_micros(row.try_get("last")?)?)))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(merge_stats(sizes, last))
    }

    async fn segment_members(&self, segment_id: &str, after: Option<&str>, limit: u32) -> StoreResult<Vec<LineUserId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT line_user_id FROM segment_memberships WHERE segment_id = ? AND line_user_id > ?
             ORDER BY line_user_id LIMIT ?",
        )
        .bind(segment_id)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        ids.iter().map(|id| parse_user(id)).collect()
    }

    async fn transitions_after(&self, after_id: i64, limit: u32) -> StoreResult<Vec<StoredTransition>> {
        sqlx::query(
            "SELECT id, segment_id, line_user_id, kind, at, cause FROM segment_transitions WHERE id > ?
             ORDER BY id LIMIT ?",
        )
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?
        .into_iter()
        .map(|row| {
            stored_transition(
                row.try_get("id")?,
                row.try_get("segment_id")?,
                row.try_get("line_user_id")?,
                row.try_get("kind")?,
                from_micros(row.try_get("at")?)?,
                row.try_get("cause")?,
            )
        })
        .collect()
    }
}

// ------------------------------------------------------------ PostgreSQL

/// Users are locked in 256 buckets: enough to keep a real-time evaluation
/// and a recompute of the same user from interleaving their diffs, without
/// a page of thousands of users exhausting the shared lock table.
const PG_LOCK_BUCKETS: &str = "SELECT pg_advisory_xact_lock(4242, k)
     FROM (SELECT DISTINCT (hashtext(u) & 255) AS k FROM UNNEST($1::text[]) AS u) s ORDER BY k";

/// Which users a PostgreSQL read is for: a list, read user by user (one
/// index probe each), or a whole audience page, read as key ranges.
#[derive(Clone, Copy)]
enum PgUsers<'a> {
    Listed(&'a [LineUserId]),
    /// A page's users and its key range `(after, last]`.
    Page {
        users: &'a [LineUserId],
        after: &'a str,
        last: &'a str,
    },
}

impl<'a> PgUsers<'a> {
    fn of_page(page: &'a AudiencePage) -> Self {
        match page.key_range() {
            Some((after, last)) => PgUsers::Page { users: &page.users, after, last },
            None => PgUsers::Listed(&[]),
        }
    }

    fn users(self) -> &'a [LineUserId] {
        match self {
            PgUsers::Listed(users) | PgUsers::Page { users, .. } => users,
        }
    }
}

/// The columns every source of a user's events sends: properties as text,
/// and only for the types in $3 (all when NULL), since rendering JSON is most
/// of the database's work per event.
///
/// Text equality here is under `COLLATE "C"`: the same answer as any other
/// deterministic collation, without looking the database's collation up on
/// every comparison (which was ~5 % of a recompute's database work).
const PG_FACT_COLUMNS: &str = r#"e.type, e.occurred_at,
        CASE WHEN $3::text[] IS NULL OR e.type COLLATE "C" = ANY($3::text[]) THEN e.properties::text END"#;

/// The event filters every source shares: the types in $2 (all when NULL),
/// each bounded from below by $5 (aligned with $2).
const PG_FACT_FILTERS: &str = r#"($2::text[] IS NULL OR e.type COLLATE "C" = ANY($2::text[]))
        AND e.occurred_at > COALESCE(($5::timestamptz[])[array_position($2::text[], e.type COLLATE "C")], '-infinity')"#;

/// A user's events: those with its line_user_id, and those of the member it
/// is linked to (as just read: $4, aligned with $1) that do not name it
/// already. Each source twice: events whose properties fit in an index entry
/// come from the covering `*_facts` indexes (index-only: a user's events are
/// adjacent there, while in the heap each is on its own page), the rest
/// through the small `*_large` indexes. The size predicates must match the
/// indexes' (migration 0006) for the planner to use them. Rows name their
/// user by position in $1 (1-based) or, from a key range, by id.
///
/// `line_user` and `line_source` are how events with a line_user_id are
/// found: probing per listed user, or for a page one scan of its key range
/// ($6, $7].
fn pg_events_sql(line_user: &str, line_source: &str) -> String {
    let (member_user, member_source) = (
        "u.i, NULL::text",
        "FROM UNNEST($1::text[], $4::text[]) WITH ORDINALITY AS u (id, member_id, i)
         JOIN events e ON e.member_id = u.member_id
         WHERE e.line_user_id IS DISTINCT FROM u.id AND",
    );
    [(line_user, line_source), (member_user, member_source)]
        .iter()
        .flat_map(|source| [(source, "<="), (source, ">")])
        .map(|((user, source), size)| {
            format!(
                "SELECT {user}, {PG_FACT_COLUMNS} {source} {PG_FACT_FILTERS} AND octet_length(e.properties::text) {size} 2000"
            )
        })
        .collect::<Vec<_>>()
        .join("\nUNION ALL\n")
}

static PG_EVENTS_LISTED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    pg_events_sql(
        "u.i, NULL::text",
        "FROM UNNEST($1::text[]) WITH ORDINALITY AS u (id, i) JOIN events e ON e.line_user_id = u.id WHERE",
    )
});

static PG_EVENTS_PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    pg_events_sql(
        "NULL::bigint, e.line_user_id",
        "FROM events e WHERE e.line_user_id > $6 AND e.line_user_id <= $7 AND",
    )
});

impl PgStore {
    /// `load_users`, `load_user_facts` and `load_page_facts`: with a
    /// selection, properties are sent only for the types that need them, and
    /// thinned to their keys.
    async fn load_records<M: EventMaker>(
        &self,
        users: PgUsers<'_>,
        event_types: Option<&[String]>,
        selection: Option<&EventSelection>,
        maker: &M,
    ) -> StoreResult<Vec<UserRecord<M::Event>>> {
        let listed = users.users();
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = listed.iter().map(|u| u.as_str()).collect();
        let with_properties = selection.map(EventSelection::types_with_properties);
        let since = selection.map(EventSelection::since_by_type);
        let mut page = PageBuilder::new(listed);
        // Rows read by key range name their user by id.
        let positions: HashMap<&str, i64> = match users {
            PgUsers::Page { .. } => ids.iter().enumerate().map(|(i, id)| (*id, i as i64)).collect(),
            PgUsers::Listed(_) => HashMap::new(),
        };
        let position_of = |position: Option<i64>, id: Option<&str>| match position {
            Some(position) => Some(position - 1),
            None => id.and_then(|id| positions.get(id).copied()),
        };
        // The queries are written to be one index probe per user or one scan
        // per range, which is the generic plan; a custom plan, made for a
        // page of known size, hashes whole tables and starts parallel workers
        // instead (2-3x the database's work). Hence generic plans, for this
        // transaction only.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan").execute(&mut *tx).await?;
        let rows = match users {
            // Rows name their user by position in the list (1-based ordinality).
            PgUsers::Listed(_) => {
                sqlx::query(
                    "SELECT u.i, NULL::text, l.member_id, m.attributes, f.following
                     FROM UNNEST($1::text[]) WITH ORDINALITY AS u (id, i)
                     LEFT JOIN links l ON l.line_user_id = u.id
                     LEFT JOIN members m ON m.member_id = l.member_id
                     LEFT JOIN friendships f ON f.line_user_id = u.id",
                )
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?
            }
            // A page's links and friendships are two range scans, merged.
            PgUsers::Page { after, last, .. } => {
                sqlx::query(
                    "SELECT NULL::bigint, COALESCE(l.line_user_id, f.line_user_id), l.member_id, m.attributes,
                            f.following
                     FROM (SELECT line_user_id, member_id FROM links WHERE line_user_id > $1 AND line_user_id <= $2) l
                     FULL JOIN (SELECT line_user_id, following FROM friendships
                                WHERE line_user_id > $1 AND line_user_id <= $2) f
                       ON f.line_user_id = l.line_user_id
                     LEFT JOIN members m ON m.member_id = l.member_id",
                )
                .bind(after)
                .bind(last)
                .fetch_all(&mut *tx)
                .await?
            }
        };
        for row in rows {
            let Some(position) = position_of(row.try_get(0)?, row.try_get(1)?) else { continue };
            let attributes: Option<Json<Value>> = row.try_get(3)?;
            page.set_user(position, row.try_get(2)?, attributes.map(|a| a.0), row.try_get(4)?);
        }
        let members = page.member_ids();
        {
            let query = match users {
                PgUsers::Listed(_) => sqlx::query(PG_EVENTS_LISTED.as_str()),
                PgUsers::Page { .. } => sqlx::query(PG_EVENTS_PAGE.as_str()),
            };
            let mut query = query.bind(&ids).bind(event_types).bind(with_properties).bind(&members).bind(since);
            if let PgUsers::Page { after, last, .. } = users {
                query = query.bind(after).bind(last);
            }
            let rows = query.fetch(&mut *tx);
            // Streamed and read by position: a recompute reads millions of rows here.
            futures::pin_mut!(rows);
            while let Some(row) = rows.try_next().await? {
                let Some(position) = position_of(row.try_get(0)?, row.try_get(1)?) else { continue };
                let event_type: String = row.try_get(2)?;
                let properties: Option<&str> = row.try_get(4)?;
                let event = maker.make(event_type, row.try_get(3)?, properties);
                page.push_event(position, event);
            }
        }
        tx.commit().await?;
        Ok(page.finish())
    }

    /// `apply_memberships`; with `page`, the stored state is read as key
    /// ranges rather than user by user.
    async fn apply_memberships_to(
        &self,
        page: Option<&AudiencePage>,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
    ) -> StoreResult<Vec<Transition>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let users: Vec<&str> = updates.iter().map(|u| u.line_user_id.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(PG_LOCK_BUCKETS).bind(&users).execute(&mut *tx).await?;
        // The comparison with the stored state runs where that state is: a
        // user whose memberships and due time are as stored (every user of a
        // settled audience) sends back no row. Sets travel joined by `,`,
        // which segment ids ([a-z0-9_]) never contain.
        let new_sets: Vec<String> =
            updates.iter().map(|u| u.segments.iter().map(String::as_str).collect::<Vec<_>>().join(",")).collect();
        let new_due: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.next_due).collect();
        // Both sides sorted bytewise (a BTreeSet's order is `COLLATE "C"`).
        let rows = match page.and_then(AudiencePage::key_range) {
            None => {
                sqlx::query(
                    r#"SELECT p.i, ARRAY(SELECT m.segment_id FROM segment_memberships m WHERE m.line_user_id = p.id),
                              (SELECT s.due_at FROM evaluation_schedule s WHERE s.line_user_id = p.id)
                       FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS p (id, segments, due_at, i)
                       WHERE COALESCE((SELECT string_agg(m.segment_id, ',' ORDER BY m.segment_id COLLATE "C")
                                       FROM segment_memberships m WHERE m.line_user_id = p.id), '') <> p.segments
                          OR (SELECT s.due_at FROM evaluation_schedule s WHERE s.line_user_id = p.id)
                             IS DISTINCT FROM p.due_at"#,
                )
                .bind(&users)
                .bind(&new_sets)
                .bind(&new_due)
                .fetch_all(&mut *tx)
                .await?
            }
            // A page's stored state is two range scans, merged, and hashed
            // against the page. The memberships index (migration 0008) hands
            // each user's segments over in byte order: `string_agg` keeps
            // that order, with no sort per user. (Were the order ever
            // different, the sets would be compared again here, as sets.)
            Some((after, last)) => {
                sqlx::query(
                    r#"SELECT p.i, ARRAY(SELECT m.segment_id FROM segment_memberships m WHERE m.line_user_id = p.id),
                              st.due_at
                       FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS p (id, segments, due_at, i)
                       LEFT JOIN (
                           SELECT COALESCE(s.line_user_id, d.line_user_id) AS line_user_id, s.segments, d.due_at
                           FROM (SELECT line_user_id, string_agg(segment_id, ',') AS segments
                                 FROM (SELECT line_user_id, segment_id FROM segment_memberships
                                       WHERE line_user_id > $4 AND line_user_id <= $5
                                       ORDER BY line_user_id, segment_id COLLATE "C") o
                                 GROUP BY line_user_id) s
                           FULL JOIN (SELECT line_user_id, due_at FROM evaluation_schedule
                                      WHERE line_user_id > $4 AND line_user_id <= $5) d
                             ON d.line_user_id = s.line_user_id
                       ) st ON st.line_user_id = p.id
                       WHERE COALESCE(st.segments, '') <> p.segments OR st.due_at IS DISTINCT FROM p.due_at"#,
                )
                .bind(&users)
                .bind(&new_sets)
                .bind(&new_due)
                .bind(after)
                .bind(last)
                .fetch_all(&mut *tx)
                .await?
            }
        };
        // Position in `updates` → stored memberships and due time.
        let mut stored: HashMap<usize, (BTreeSet<String>, Option<DateTime<Utc>>)> = HashMap::new();
        for row in rows {
            let position: i64 = row.try_get(0)?;
            let segments: Vec<String> = row.try_get(1)?;
            if let Ok(i) = usize::try_from(position - 1) {
                stored.insert(i, (segments.into_iter().collect(), row.try_get(2)?));
            }
        }
        let diffs: Vec<Diff<'_>> = updates
            .iter()
            .enumerate()
            .filter_map(|(i, u)| stored.get(&i).map(|(current, _)| diff(u, current)))
            .collect();

        let (mut out_users, mut out_segments) = (Vec::new(), Vec::new());
        let (mut in_users, mut in_segments) = (Vec::new(), Vec::new());
        for d in &diffs {
            for s in &d.exited {
                out_users.push(d.user.as_str());
                out_segments.push(s.as_str());
            }
            for s in &d.entered {
                in_users.push(d.user.as_str());
                in_segments.push(*s);
            }
        }
        if !out_users.is_empty() {
            sqlx::query(
                "DELETE FROM segment_memberships m USING UNNEST($1::text[], $2::text[]) AS d (u, s)
                 WHERE m.line_user_id = d.u AND m.segment_id = d.s",
            )
            .bind(&out_users)
            .bind(&out_segments)
            .execute(&mut *tx)
            .await?;
        }
        if !in_users.is_empty() {
            sqlx::query(
                "INSERT INTO segment_memberships (segment_id, line_user_id, entered_at)
                 SELECT s, u, $3 FROM UNNEST($1::text[], $2::text[]) AS d (u, s)",
            )
            .bind(&in_users)
            .bind(&in_segments)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        let transitions = transitions_of(&diffs, at, cause);
        if !transitions.is_empty() {
            let segments: Vec<&str> = transitions.iter().map(|t| t.segment_id.as_str()).collect();
            let t_users: Vec<&str> = transitions.iter().map(|t| t.line_user_id.as_str()).collect();
            let kinds: Vec<&str> = transitions.iter().map(|t| t.kind.as_str()).collect();
            sqlx::query(
                "INSERT INTO segment_transitions (segment_id, line_user_id, kind, at, cause)
                 SELECT s, u, k, $4, $5 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS t (s, u, k)",
            )
            .bind(&segments)
            .bind(&t_users)
            .bind(&kinds)
            .bind(at)
            .bind(cause.as_str())
            .execute(&mut *tx)
            .await?;
        }
        // Only due times that change are written: a recompute of a settled
        // audience then writes nothing at all. A batch may name a user twice;
        // the last update wins, as on SQLite.
        let last: HashMap<&str, usize> =
            updates.iter().enumerate().map(|(i, u)| (u.line_user_id.as_str(), i)).collect();
        let (mut due_users, mut due_at, mut clear) = (Vec::new(), Vec::new(), Vec::new());
        for (user, i) in last {
            // Not sent back: the same as stored.
            let Some((_, current)) = stored.get(&i) else { continue };
            match updates[i].next_due {
                // Compared at the column's precision (µs).
                Some(due) if current.map(|c| c.timestamp_micros()) != Some(due.timestamp_micros()) => {
                    due_users.push(user);
                    due_at.push(due);
                }
                None if current.is_some() => clear.push(user),
                _ => {}
            }
        }
        if !clear.is_empty() {
            sqlx::query("DELETE FROM evaluation_schedule WHERE line_user_id = ANY($1)")
                .bind(&clear)
                .execute(&mut *tx)
                .await?;
        }
        if !due_users.is_empty() {
            sqlx::query(
                "INSERT INTO evaluation_schedule (line_user_id, due_at)
                 SELECT u, d FROM UNNEST($1::text[], $2::timestamptz[]) AS s (u, d)
                 ON CONFLICT (line_user_id) DO UPDATE SET due_at = excluded.due_at",
            )
            .bind(&due_users)
            .bind(&due_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(transitions)
    }
}

#[async_trait]
impl MembershipStore for PgStore {
    async fn load_users(&self, users: &[LineUserId], event_types: Option<&[String]>) -> StoreResult<Vec<UserRecord>> {
        self.load_records(PgUsers::Listed(users), event_types, None, &AllProperties).await
    }

    async fn load_user_facts(
        &self,
        users: &[LineUserId],
        selection: &EventSelection,
    ) -> StoreResult<Vec<UserRecord<FactEventRecord>>> {
        self.load_records(PgUsers::Listed(users), Some(&selection.types), Some(selection), selection).await
    }

    async fn load_page_facts(
        &self,
        page: &AudiencePage,
        selection: &EventSelection,
    ) -> StoreResult<Vec<UserRecord<FactEventRecord>>> {
        self.load_records(PgUsers::of_page(page), Some(&selection.types), Some(selection), selection).await
    }

    async fn member_line_user(&self, member_id: &MemberId) -> StoreResult<Option<LineUserId>> {
        let id: Option<String> = sqlx::query_scalar("SELECT line_user_id FROM links WHERE member_id = $1")
            .bind(member_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        id.map(|id| parse_user(&id)).transpose()
    }

    async fn audience_page(&self, after: Option<&LineUserId>, limit: u32) -> StoreResult<AudiencePage> {
        // Each source is cut at `limit` first (index order), so a page costs
        // O(limit); `DISTINCT ON` merges the three sorted lists (plain
        // `DISTINCT` is planned as hashing and sorting again, 10x the cost).
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT ON (u) u FROM (
                 (SELECT line_user_id AS u FROM friendships WHERE line_user_id > $1 ORDER BY line_user_id LIMIT $2)
                 UNION ALL
                 (SELECT line_user_id AS u FROM links WHERE line_user_id > $1 ORDER BY line_user_id LIMIT $2)
                 UNION ALL
                 (SELECT DISTINCT line_user_id AS u FROM events WHERE line_user_id IS NOT NULL AND line_user_id > $1
                  ORDER BY line_user_id LIMIT $2)
             ) s ORDER BY u LIMIT $2",
        )
        .bind(after.map(|a| a.as_str()).unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let users = ids.iter().map(|id| parse_user(id)).collect::<StoreResult<_>>()?;
        Ok(AudiencePage { after: after.cloned(), users })
    }

    async fn user_memberships(&self, line_user_id: &LineUserId) -> StoreResult<BTreeSet<String>> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT segment_id FROM segment_memberships WHERE line_user_id = $1")
            .bind(line_user_id.as_str())
            .fetch_all(&self.pool)
            .await?;
        Ok(ids.into_iter().collect())
    }

    async fn apply_memberships(
        &self,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
    ) -> StoreResult<Vec<Transition>> {
        self.apply_memberships_to(None, updates, at, cause).await
    }

    async fn apply_page_memberships(
        &self,
        page: &AudiencePage,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
    ) -> StoreResult<Vec<Transition>> {
        self.apply_memberships_to(Some(page), updates, at, cause).await
    }

    async fn set_due(&self, line_user_id: &LineUserId, due_at: Option<DateTime<Utc>>) -> StoreResult<()> {
        match due_at {
            Some(due) => {
                sqlx::query(
                    "INSERT INTO evaluation_schedule (line_user_id, due_at) VALUES ($1, $2)
                     ON CONFLICT (line_user_id) DO UPDATE SET due_at = excluded.due_at",
                )
                .bind(line_user_id.as_str())
                .bind(due)
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM evaluation_schedule WHERE line_user_id = $1")
                    .bind(line_user_id.as_str())
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(())
    }

    async fn due_users(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<LineUserId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT line_user_id FROM evaluation_schedule WHERE due_at <= $1 ORDER BY due_at, line_user_id LIMIT $2",
        )
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        ids.iter().map(|id| parse_user(id)).collect()
    }

    async fn next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar("SELECT MIN(due_at) FROM evaluation_schedule").fetch_one(&self.pool).await?)
    }

    async fn segment_stats(&self) -> StoreResult<Vec<SegmentStats>> {
        let sizes = sqlx::query("SELECT segment_id, COUNT(*) AS size FROM segment_memberships GROUP BY segment_id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("segment_id")?, row.try_get("size")?)))
            .collect::<StoreResult<Vec<_>>>()?;
        let last = sqlx::query("SELECT segment_id, MAX(at) AS last FROM segment_transitions GROUP BY segment_id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("segment_id")?, row.try_get("last")?)))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(merge_stats(sizes, last))
    }

    async fn segment_members(&self, segment_id: &str, after: Option<&str>, limit: u32) -> StoreResult<Vec<LineUserId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT line_user_id FROM segment_memberships WHERE segment_id = $1 AND line_user_id > $2
             ORDER BY line_user_id LIMIT $3",
        )
        .bind(segment_id)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        ids.iter().map(|id| parse_user(id)).collect()
    }

    async fn transitions_after(&self, after_id: i64, limit: u32) -> StoreResult<Vec<StoredTransition>> {
        sqlx::query(
            "SELECT id, segment_id, line_user_id, kind, at, cause FROM segment_transitions WHERE id > $1
             ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|row| {
            stored_transition(
                row.try_get("id")?,
                row.try_get("segment_id")?,
                row.try_get("line_user_id")?,
                row.try_get("kind")?,
                row.try_get("at")?,
                row.try_get("cause")?,
            )
        })
        .collect()
    }
}
