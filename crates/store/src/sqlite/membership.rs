//! SQLite's side of memberships: id lists travel as JSON arrays
//! (`json_each`), and a page of updates is one transaction on the single writer.

use super::{from_micros, to_micros};
use crate::membership::{
    AllProperties, AudiencePage, Cause, EventMaker, EventSelection, FactEventRecord, MembershipStore, MembershipUpdate,
    PageBuilder, REBUILD_EVENT_TOTALS, TotalsRecord, Transition, UserRecord, diff, transitions_of,
};
use crate::{SqliteStore, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{EventTallier, LineUserId};
use serde_json::Value;
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

fn ids_json(users: &[LineUserId]) -> String {
    Value::Array(users.iter().map(|u| Value::String(u.as_str().to_string())).collect()).to_string()
}

/// A user's events of every type: those with its line_user_id, and those of
/// the member it is linked to that do not name it already (?1 the users).
const SQLITE_EVENTS_ALL: &str = "SELECT u.key AS position, e.type, e.occurred_at, e.properties
     FROM json_each(?1) u JOIN events e ON e.line_user_id = u.value
     UNION ALL
     SELECT u.key AS position, e.type, e.occurred_at, e.properties
     FROM json_each(?1) u
     JOIN links l ON l.line_user_id = u.value
     JOIN events e ON e.member_id = l.member_id
     WHERE e.line_user_id IS NOT l.line_user_id";

/// A user's events of the types in ?2, each type only after its bound in ?4
/// (a JSON object; none: all), as above. Per user and type one range of the
/// `(…, type, occurred_at)` indexes (migration 0010): a user's history
/// outside the windows is not visited. `CROSS JOIN` fixes the loop order
/// (SQLite's planner would otherwise read all of a user's events and then
/// match the types). Properties only for the types in ?3 (all when NULL).
const SQLITE_EVENTS_TYPED: &str = "SELECT u.key AS position, e.type, e.occurred_at,
            CASE WHEN ?3 IS NULL OR e.type IN (SELECT value FROM json_each(?3)) THEN e.properties END AS properties
     FROM json_each(?1) u CROSS JOIN json_each(?2) t CROSS JOIN events e
     WHERE e.line_user_id = u.value AND e.type = t.value
       AND e.occurred_at > COALESCE(?4 ->> t.value, -9223372036854775808)
     UNION ALL
     SELECT u.key AS position, e.type, e.occurred_at,
            CASE WHEN ?3 IS NULL OR e.type IN (SELECT value FROM json_each(?3)) THEN e.properties END AS properties
     FROM json_each(?1) u CROSS JOIN links l CROSS JOIN json_each(?2) t CROSS JOIN events e
     WHERE l.line_user_id = u.value AND e.member_id = l.member_id AND e.type = t.value
       AND e.line_user_id IS NOT l.line_user_id
       AND e.occurred_at > COALESCE(?4 ->> t.value, -9223372036854775808)";

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
        let query = match types {
            Some(types) => {
                sqlx::query(SQLITE_EVENTS_TYPED).bind(ids.clone()).bind(types).bind(with_properties).bind(since)
            }
            None => sqlx::query(SQLITE_EVENTS_ALL).bind(ids.clone()),
        };
        let rows = query.fetch_all(&mut *conn).await?;
        for row in rows {
            let position: i64 = row.try_get("position")?;
            let event_type: String = row.try_get("type")?;
            let properties: Option<&str> = row.try_get("properties")?;
            let event = maker.make(event_type, from_micros(row.try_get("occurred_at")?)?, properties);
            page.push_event(position, event);
        }
        if let Some(selection) = selection.filter(|s| !s.totals.is_empty()) {
            read_totals(&mut conn, &ids, selection, maker, &mut page).await?;
        }
        Ok(page.finish())
    }
}

/// The running totals of `selection`'s totalled types and tallies, and the
/// pending events of those types, for the users in `ids` (a JSON array), from
/// both sources of a user's events as the raw read above.
async fn read_totals<M: EventMaker>(
    conn: &mut sqlx::SqliteConnection,
    ids: &str,
    selection: &EventSelection,
    maker: &M,
    page: &mut PageBuilder<M::Event>,
) -> StoreResult<()> {
    let types = serde_json::to_string(&selection.totals).unwrap_or_else(|_| "[]".to_string());
    let keys = serde_json::to_string(&selection.tallies).unwrap_or_else(|_| "[]".to_string());
    let rows = sqlx::query(
        "SELECT u.key AS position, t.type AS key, t.count, 0 AS numbers, 0.0 AS sum, NULL AS min, NULL AS max, t.last_at
         FROM json_each(?1) u CROSS JOIN event_totals t
         WHERE t.line_user_id = u.value AND t.type IN (SELECT value FROM json_each(?2))
         UNION ALL
         SELECT u.key AS position, t.type AS key, t.count, 0, 0.0, NULL, NULL, t.last_at
         FROM json_each(?1) u
         JOIN links l ON l.line_user_id = u.value
         JOIN event_totals t INDEXED BY event_totals_member ON t.member_id = l.member_id AND t.member_id <> ''
         WHERE t.line_user_id <> l.line_user_id AND t.type IN (SELECT value FROM json_each(?2))
         UNION ALL
         SELECT u.key AS position, t.key, t.count, t.numbers, t.sum, t.min, t.max, t.last_at
         FROM json_each(?1) u CROSS JOIN event_tallies t
         WHERE t.line_user_id = u.value AND t.key IN (SELECT value FROM json_each(?3))
         UNION ALL
         SELECT u.key AS position, t.key, t.count, t.numbers, t.sum, t.min, t.max, t.last_at
         FROM json_each(?1) u
         JOIN links l ON l.line_user_id = u.value
         JOIN event_tallies t INDEXED BY event_tallies_member ON t.member_id = l.member_id AND t.member_id <> ''
         WHERE t.line_user_id <> l.line_user_id AND t.key IN (SELECT value FROM json_each(?3))",
    )
    .bind(ids)
    .bind(&types)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    for row in rows {
        let totals = TotalsRecord {
            key: row.try_get("key")?,
            count: count(row.try_get("count")?),
            numbers: count(row.try_get("numbers")?),
            sum: row.try_get("sum")?,
            min: row.try_get("min")?,
            max: row.try_get("max")?,
            last_at: from_micros(row.try_get("last_at")?)?,
        };
        page.push_totals(row.try_get("position")?, totals);
    }
    // The partial `*_pending` indexes (migration 0010) hold exactly these
    // events; named, as the planner may prefer the larger typed indexes.
    let rows = sqlx::query(
        "SELECT u.key AS position, e.type, e.occurred_at, e.properties
         FROM json_each(?1) u JOIN events e INDEXED BY events_line_user_pending ON e.line_user_id = u.value
         WHERE e.line_user_id IS NOT NULL AND e.occurred_at > e.received_at
           AND e.type IN (SELECT value FROM json_each(?2))
         UNION ALL
         SELECT u.key AS position, e.type, e.occurred_at, e.properties
         FROM json_each(?1) u
         JOIN links l ON l.line_user_id = u.value
         JOIN events e INDEXED BY events_member_pending ON e.member_id = l.member_id
         WHERE e.member_id IS NOT NULL AND e.occurred_at > e.received_at
           AND e.line_user_id IS NOT l.line_user_id AND e.type IN (SELECT value FROM json_each(?2))",
    )
    .bind(ids)
    .bind(&types)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let properties: Option<&str> = row.try_get("properties")?;
        let event = maker.make(row.try_get("type")?, from_micros(row.try_get("occurred_at")?)?, properties);
        page.push_pending(row.try_get("position")?, event);
    }
    Ok(())
}

#[async_trait]
impl MembershipStore for SqliteStore {
    async fn audience_page(&self, after: Option<&LineUserId>, limit: u32) -> StoreResult<AudiencePage> {
        // Plain UNION: SQLite merges the three sorted lists itself.
        AudiencePage::read(
            self,
            "SELECT u FROM (
                         SELECT u FROM (SELECT line_user_id AS u FROM friendships WHERE line_user_id > $1
                                        ORDER BY line_user_id LIMIT $2)
                         UNION
                         SELECT u FROM (SELECT line_user_id AS u FROM links WHERE line_user_id > $1
                                        ORDER BY line_user_id LIMIT $2)
                         UNION
                         SELECT u FROM (SELECT DISTINCT line_user_id AS u FROM events
                                        WHERE line_user_id IS NOT NULL AND line_user_id > $1
                                        ORDER BY line_user_id LIMIT $2)
                     ) ORDER BY u LIMIT $2",
            after,
            limit,
        )
        .await
    }

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

    async fn rebuild_event_totals(&self, at: DateTime<Utc>) -> StoreResult<()> {
        // The single writer: no insert can come between the two statements.
        let mut tx = self.writer.begin().await?;
        for statement in REBUILD_EVENT_TOTALS {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.build_tallies(true, at).await
    }

    async fn maintain_tallies(&self, tallier: Arc<dyn EventTallier>, at: DateTime<Utc>) -> StoreResult<()> {
        self.tallier.set(tallier);
        self.build_tallies(false, at).await
    }

    async fn apply_memberships(
        &self,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
    ) -> StoreResult<Vec<Transition>> {
        self.apply_scoped(updates, at, cause, None).await
    }

    async fn apply_page_memberships(
        &self,
        _page: &AudiencePage,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
        scope: Option<&BTreeSet<String>>,
    ) -> StoreResult<Vec<Transition>> {
        self.apply_scoped(updates, at, cause, scope).await
    }
}

impl SqliteStore {
    /// `apply_memberships`, among the segments of `scope` (see
    /// `MembershipStore::apply_page_memberships`).
    async fn apply_scoped(
        &self,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
        scope: Option<&BTreeSet<String>>,
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
            let d = diff(update, &current, scope);
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
                    // Scoped, the stored due time also speaks for the segments outside the scope.
                    let sql = match scope {
                        None => {
                            "INSERT INTO evaluation_schedule (line_user_id, due_at) VALUES (?, ?)
                             ON CONFLICT (line_user_id) DO UPDATE SET due_at = excluded.due_at
                             WHERE evaluation_schedule.due_at IS NOT excluded.due_at"
                        }
                        Some(_) => {
                            "INSERT INTO evaluation_schedule (line_user_id, due_at) VALUES (?, ?)
                             ON CONFLICT (line_user_id) DO UPDATE SET due_at = excluded.due_at
                             WHERE evaluation_schedule.due_at > excluded.due_at"
                        }
                    };
                    sqlx::query(sql).bind(user).bind(to_micros(due)).execute(&mut *tx).await?;
                }
                None if scope.is_some() => {}
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
}
