//! PostgreSQL's side of memberships: the recompute's page reads and writes
//! (by key range, with advisory locks per bucket of users) and set
//! parameters as arrays.

use crate::membership::{
    AllProperties, AudiencePage, Cause, Diff, EventMaker, EventSelection, FactEventRecord, MembershipStore,
    MembershipUpdate, PageBuilder, REBUILD_EVENT_TOTALS, TotalsRecord, Transition, UserRecord, diff, transitions_of,
};
use crate::{PgStore, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use renkei_core::{EventTallier, LineUserId};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

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

/// A listed user's events of the types in $2, each type only after its bound
/// in $5 (aligned with $2), from both sources as above: per user and type one
/// range of the `(…, type, occurred_at)` indexes (migration 0010), so a
/// user's history outside the windows is not visited. (`OFFSET 0` keeps
/// each lateral read a probe of its own: flattened, the planner reads all of
/// a user's events and hashes on type.) Re-evaluating a few users reads this
/// way; a recompute page reads by key range instead.
const PG_EVENTS_TYPED: &str = r#"SELECT u.i, NULL::text, e.type, e.occurred_at,
        CASE WHEN $3::text[] IS NULL OR e.type COLLATE "C" = ANY($3::text[]) THEN e.properties::text END
     FROM UNNEST($1::text[]) WITH ORDINALITY AS u (id, i)
     CROSS JOIN UNNEST($2::text[], $5::timestamptz[]) AS t (type, since)
     CROSS JOIN LATERAL (SELECT e.type, e.occurred_at, e.properties FROM events e
                         WHERE e.line_user_id = u.id AND e.type = t.type
                           AND e.occurred_at > COALESCE(t.since, '-infinity') OFFSET 0) e
     UNION ALL
     SELECT u.i, NULL::text, e.type, e.occurred_at,
        CASE WHEN $3::text[] IS NULL OR e.type COLLATE "C" = ANY($3::text[]) THEN e.properties::text END
     FROM UNNEST($1::text[], $4::text[]) WITH ORDINALITY AS u (id, member_id, i)
     CROSS JOIN UNNEST($2::text[], $5::timestamptz[]) AS t (type, since)
     CROSS JOIN LATERAL (SELECT e.type, e.occurred_at, e.properties FROM events e
                         WHERE e.member_id = u.member_id AND e.type = t.type
                           AND e.occurred_at > COALESCE(t.since, '-infinity')
                           AND e.line_user_id IS DISTINCT FROM u.id OFFSET 0) e"#;

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
        // Owned: the page is added to while they are bound.
        let members: Vec<Option<String>> = page.member_ids().into_iter().map(|m| m.map(str::to_string)).collect();
        {
            let query = match users {
                PgUsers::Listed(_) if event_types.is_some() => sqlx::query(PG_EVENTS_TYPED),
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
        if let Some(selection) = selection.filter(|s| !s.totals.is_empty()) {
            read_totals(&mut tx, &ids, &members, selection, maker, &mut page).await?;
        }
        tx.commit().await?;
        Ok(page.finish())
    }

    /// `apply_memberships`; with `page`, the stored state is read as key
    /// ranges rather than user by user; with `scope`, among those segments
    /// only (see `MembershipStore::apply_page_memberships`).
    async fn apply_memberships_to(
        &self,
        page: Option<&AudiencePage>,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
        scope: Option<&BTreeSet<String>>,
    ) -> StoreResult<Vec<Transition>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let users: Vec<&str> = updates.iter().map(|u| u.line_user_id.as_str()).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(PG_LOCK_BUCKETS).bind(&users).execute(&mut *tx).await?;
        let stored = stored_state(&mut tx, page, updates, &users, scope).await?;
        let diffs: Vec<Diff<'_>> = updates
            .iter()
            .enumerate()
            .filter_map(|(i, u)| stored.get(&i).map(|(current, _)| diff(u, current, scope)))
            .collect();
        write_memberships(&mut tx, &diffs, at).await?;
        let transitions = transitions_of(&diffs, at, cause);
        write_transitions(&mut tx, &transitions, at, cause).await?;
        write_due(&mut tx, updates, &stored, scope.is_some()).await?;
        tx.commit().await?;
        Ok(transitions)
    }
}

#[async_trait]
impl MembershipStore for PgStore {
    async fn audience_page(&self, after: Option<&LineUserId>, limit: u32) -> StoreResult<AudiencePage> {
        // Each source is cut at `limit` first (index order), so a page costs
        // O(limit); `DISTINCT ON` merges the three sorted lists (plain
        // `DISTINCT` is planned as hashing and sorting again, 10x the cost).
        AudiencePage::read(
            self,
            "SELECT DISTINCT ON (u) u FROM (
                         (SELECT line_user_id AS u FROM friendships WHERE line_user_id > $1 ORDER BY line_user_id LIMIT $2)
                         UNION ALL
                         (SELECT line_user_id AS u FROM links WHERE line_user_id > $1 ORDER BY line_user_id LIMIT $2)
                         UNION ALL
                         (SELECT DISTINCT line_user_id AS u FROM events WHERE line_user_id IS NOT NULL AND line_user_id > $1
                          ORDER BY line_user_id LIMIT $2)
                     ) s ORDER BY u LIMIT $2",
            after,
            limit,
        )
        .await
    }

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

    async fn rebuild_event_totals(&self, at: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        // Inserts (whose trigger writes the totals) wait for the rebuild, and
        // the rebuild for the inserts already writing: it sees each batch
        // either whole, committed, or not at all, and a batch not seen adds
        // itself after.
        sqlx::query("LOCK TABLE event_totals IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
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
        self.apply_memberships_to(None, updates, at, cause, None).await
    }

    async fn apply_page_memberships(
        &self,
        page: &AudiencePage,
        updates: &[MembershipUpdate],
        at: DateTime<Utc>,
        cause: Cause,
        scope: Option<&BTreeSet<String>>,
    ) -> StoreResult<Vec<Transition>> {
        self.apply_memberships_to(Some(page), updates, at, cause, scope).await
    }
}

/// The running totals of `selection`'s totalled types and tallies, and the
/// pending events of those types, for the users in `ids` (linked to
/// `members`, aligned), from both sources of a user's events as the raw read
/// above. Rows name their user by position (1-based).
async fn read_totals<M: EventMaker>(
    tx: &mut PgConnection,
    ids: &[&str],
    members: &[Option<String>],
    selection: &EventSelection,
    maker: &M,
    page: &mut PageBuilder<M::Event>,
) -> StoreResult<()> {
    let rows = sqlx::query(
        r#"SELECT u.i, t.type, t.count, 0::int8, 0::float8, NULL::float8, NULL::float8, t.last_at
           FROM UNNEST($1::text[]) WITH ORDINALITY AS u (id, i) JOIN event_totals t ON t.line_user_id = u.id
           WHERE t.type = ANY($3::text[])
           UNION ALL
           SELECT u.i, t.type, t.count, 0::int8, 0::float8, NULL::float8, NULL::float8, t.last_at
           FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS u (id, member_id, i)
           JOIN event_totals t ON t.member_id = u.member_id AND t.member_id <> ''
           WHERE t.line_user_id <> u.id AND t.type = ANY($3::text[])
           UNION ALL
           SELECT u.i, t.key, t.count, t.numbers, t.sum, t.min, t.max, t.last_at
           FROM UNNEST($1::text[]) WITH ORDINALITY AS u (id, i) JOIN event_tallies t ON t.line_user_id = u.id
           WHERE t.key = ANY($4::text[])
           UNION ALL
           SELECT u.i, t.key, t.count, t.numbers, t.sum, t.min, t.max, t.last_at
           FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS u (id, member_id, i)
           JOIN event_tallies t ON t.member_id = u.member_id AND t.member_id <> ''
           WHERE t.line_user_id <> u.id AND t.key = ANY($4::text[])"#,
    )
    .bind(ids)
    .bind(members)
    .bind(&selection.totals)
    .bind(&selection.tallies)
    .fetch_all(&mut *tx)
    .await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    for row in rows {
        let position: i64 = row.try_get(0)?;
        let totals = TotalsRecord {
            key: row.try_get(1)?,
            count: count(row.try_get(2)?),
            numbers: count(row.try_get(3)?),
            sum: row.try_get(4)?,
            min: row.try_get(5)?,
            max: row.try_get(6)?,
            last_at: row.try_get(7)?,
        };
        page.push_totals(position - 1, totals);
    }
    // The partial `*_pending` indexes (migration 0010) hold exactly these events.
    let rows = sqlx::query(
        r#"SELECT u.i, e.type, e.occurred_at, e.properties::text
           FROM UNNEST($1::text[]) WITH ORDINALITY AS u (id, i) JOIN events e ON e.line_user_id = u.id
           WHERE e.line_user_id IS NOT NULL AND e.occurred_at > e.received_at AND e.type = ANY($3::text[])
           UNION ALL
           SELECT u.i, e.type, e.occurred_at, e.properties::text
           FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS u (id, member_id, i)
           JOIN events e ON e.member_id = u.member_id
           WHERE e.member_id IS NOT NULL AND e.occurred_at > e.received_at
             AND e.line_user_id IS DISTINCT FROM u.id AND e.type = ANY($3::text[])"#,
    )
    .bind(ids)
    .bind(members)
    .bind(&selection.totals)
    .fetch_all(&mut *tx)
    .await?;
    for row in rows {
        let position: i64 = row.try_get(0)?;
        let properties: Option<&str> = row.try_get(3)?;
        page.push_pending(position - 1, maker.make(row.try_get(1)?, row.try_get(2)?, properties));
    }
    Ok(())
}

/// Position in `updates` → stored memberships and due time, of the users whose
/// stored state differs from the update (only those come back).
type StoredState = HashMap<usize, (BTreeSet<String>, Option<DateTime<Utc>>)>;

/// The stored state of a page's users, compared in the database.
async fn stored_state(
    tx: &mut PgConnection,
    page: Option<&AudiencePage>,
    updates: &[MembershipUpdate],
    users: &[&str],
    scope: Option<&BTreeSet<String>>,
) -> StoreResult<StoredState> {
    // The comparison with the stored state runs where that state is: a
    // user whose memberships and due time are as stored (every user of a
    // settled audience) sends back no row. Sets travel joined by `,`,
    // which segment ids ([a-z0-9_]) never contain.
    // Scoped, both sides keep the scope's segments only, and a due time
    // counts as changed only when the new one is earlier.
    let in_scope = |s: &&String| scope.is_none_or(|scope| scope.contains(*s));
    let new_sets: Vec<String> = updates
        .iter()
        .map(|u| u.segments.iter().filter(in_scope).map(String::as_str).collect::<Vec<_>>().join(","))
        .collect();
    let scope: Option<Vec<&str>> = scope.map(|scope| scope.iter().map(String::as_str).collect());
    let new_due: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.next_due).collect();
    // Both sides sorted bytewise (a BTreeSet's order is `COLLATE "C"`).
    let rows = match page.and_then(AudiencePage::key_range) {
        None => {
            sqlx::query(
                r#"SELECT p.i, ARRAY(SELECT m.segment_id FROM segment_memberships m WHERE m.line_user_id = p.id
                                       AND ($4::text[] IS NULL OR m.segment_id = ANY($4::text[]))),
                          (SELECT s.due_at FROM evaluation_schedule s WHERE s.line_user_id = p.id)
                   FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS p (id, segments, due_at, i)
                   WHERE COALESCE((SELECT string_agg(m.segment_id, ',' ORDER BY m.segment_id COLLATE "C")
                                   FROM segment_memberships m WHERE m.line_user_id = p.id
                                     AND ($4::text[] IS NULL OR m.segment_id = ANY($4::text[]))), '') <> p.segments
                      OR CASE WHEN $4::text[] IS NULL
                              THEN (SELECT s.due_at FROM evaluation_schedule s WHERE s.line_user_id = p.id)
                                   IS DISTINCT FROM p.due_at
                              ELSE p.due_at < COALESCE((SELECT s.due_at FROM evaluation_schedule s
                                                        WHERE s.line_user_id = p.id), 'infinity') END"#,
            )
            .bind(users)
            .bind(&new_sets)
            .bind(&new_due)
            .bind(&scope)
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
                r#"SELECT p.i, ARRAY(SELECT m.segment_id FROM segment_memberships m WHERE m.line_user_id = p.id
                                       AND ($6::text[] IS NULL OR m.segment_id = ANY($6::text[]))),
                          st.due_at
                   FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS p (id, segments, due_at, i)
                   LEFT JOIN (
                       SELECT COALESCE(s.line_user_id, d.line_user_id) AS line_user_id, s.segments, d.due_at
                       FROM (SELECT line_user_id, string_agg(segment_id, ',') AS segments
                             FROM (SELECT line_user_id, segment_id FROM segment_memberships
                                   WHERE line_user_id > $4 AND line_user_id <= $5
                                     AND ($6::text[] IS NULL OR segment_id = ANY($6::text[]))
                                   ORDER BY line_user_id, segment_id COLLATE "C") o
                             GROUP BY line_user_id) s
                       FULL JOIN (SELECT line_user_id, due_at FROM evaluation_schedule
                                  WHERE line_user_id > $4 AND line_user_id <= $5) d
                         ON d.line_user_id = s.line_user_id
                   ) st ON st.line_user_id = p.id
                   WHERE COALESCE(st.segments, '') <> p.segments
                      OR CASE WHEN $6::text[] IS NULL THEN st.due_at IS DISTINCT FROM p.due_at
                              ELSE p.due_at < COALESCE(st.due_at, 'infinity') END"#,
            )
            .bind(users)
            .bind(&new_sets)
            .bind(&new_due)
            .bind(after)
            .bind(last)
            .bind(&scope)
            .fetch_all(&mut *tx)
            .await?
        }
    };
    let mut stored = StoredState::new();
    for row in rows {
        let position: i64 = row.try_get(0)?;
        let segments: Vec<String> = row.try_get(1)?;
        if let Ok(i) = usize::try_from(position - 1) {
            stored.insert(i, (segments.into_iter().collect(), row.try_get(2)?));
        }
    }
    Ok(stored)
}

/// The memberships that end and begin.
async fn write_memberships(tx: &mut PgConnection, diffs: &[Diff<'_>], at: DateTime<Utc>) -> StoreResult<()> {
    let (mut out_users, mut out_segments) = (Vec::new(), Vec::new());
    let (mut in_users, mut in_segments) = (Vec::new(), Vec::new());
    for d in diffs {
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
    Ok(())
}

async fn write_transitions(
    tx: &mut PgConnection,
    transitions: &[Transition],
    at: DateTime<Utc>,
    cause: Cause,
) -> StoreResult<()> {
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
    Ok(())
}

/// The due times that change; `scoped`, only those that move earlier (see
/// `MembershipStore::apply_page_memberships`).
async fn write_due(
    tx: &mut PgConnection,
    updates: &[MembershipUpdate],
    stored: &StoredState,
    scoped: bool,
) -> StoreResult<()> {
    // Only due times that change are written: a recompute of a settled
    // audience then writes nothing at all. A batch may name a user twice;
    // the last update wins, as on SQLite.
    let last: HashMap<&str, usize> = updates.iter().enumerate().map(|(i, u)| (u.line_user_id.as_str(), i)).collect();
    let (mut due_users, mut due_at, mut clear) = (Vec::new(), Vec::new(), Vec::new());
    for (user, i) in last {
        // Not sent back: the same as stored.
        let Some((_, current)) = stored.get(&i) else { continue };
        // Compared at the column's precision (µs).
        let stored_micros = current.map(|c| c.timestamp_micros());
        match updates[i].next_due {
            Some(due) if scoped && stored_micros.is_some_and(|c| c <= due.timestamp_micros()) => {}
            Some(due) if stored_micros != Some(due.timestamp_micros()) => {
                due_users.push(user);
                due_at.push(due);
            }
            None if current.is_some() && !scoped => clear.push(user),
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
    Ok(())
}
