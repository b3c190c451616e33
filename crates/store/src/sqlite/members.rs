//! SQLite's side of members and links: the writes inside a transaction on
//! the single writer (timestamps as INTEGER microseconds, JSON as TEXT).

use super::{from_micros, json_object, to_micros};
use crate::members::{
    Link, LinkOutcome, Links, MembersOutcome, MembersSql, RunPlan, line_user_claimed, member_already_linked,
    parse_link, plan_run, runs_of_distinct_members,
};
use crate::{SqliteStore, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{LineUserId, LinkMethod, MemberId, MemberPatch};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use std::collections::HashMap;

#[async_trait]
impl MembersSql for SqliteStore {
    async fn link_tx(
        conn: &mut SqliteConnection,
        member_id: &MemberId,
        line_user_id: &LineUserId,
        method: LinkMethod,
        at: DateTime<Utc>,
    ) -> StoreResult<LinkOutcome> {
        let by_member = sqlx::query("SELECT line_user_id, method, linked_at FROM links WHERE member_id = ?")
            .bind(member_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = by_member {
            let current: String = row.try_get("line_user_id")?;
            if current == line_user_id.as_str() {
                let link = parse_link(
                    member_id.to_string(),
                    current,
                    row.try_get("method")?,
                    from_micros(row.try_get("linked_at")?)?,
                )?;
                return Ok(LinkOutcome::AlreadyLinked(link));
            }
            return Err(member_already_linked(member_id.as_str(), &current));
        }
        let by_user: Option<String> = sqlx::query_scalar("SELECT member_id FROM links WHERE line_user_id = ?")
            .bind(line_user_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(other) = by_user {
            return Err(line_user_claimed(line_user_id.as_str(), &other));
        }
        let now = to_micros(at);
        sqlx::query(
            "INSERT INTO members (member_id, attributes, created_at, updated_at) VALUES (?, '{}', ?, ?)
             ON CONFLICT (member_id) DO NOTHING",
        )
        .bind(member_id.as_str())
        .bind(now)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        sqlx::query("INSERT INTO links (member_id, line_user_id, method, linked_at) VALUES (?, ?, ?, ?)")
            .bind(member_id.as_str())
            .bind(line_user_id.as_str())
            .bind(method.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await?;
        Ok(LinkOutcome::Created(Link {
            member_id: member_id.clone(),
            line_user_id: line_user_id.clone(),
            method,
            linked_at: from_micros(now)?,
        }))
    }

    async fn upsert_members_tx(
        conn: &mut SqliteConnection,
        patches: &[MemberPatch],
        now: DateTime<Utc>,
    ) -> StoreResult<MembersOutcome> {
        let mut outcome = MembersOutcome::default();
        for run in runs_of_distinct_members(patches) {
            for chunk in run.chunks(IDS_PER_STATEMENT) {
                outcome.add(upsert_distinct_members(conn, chunk, now).await?);
            }
        }
        Ok(outcome)
    }
}

/// Ids bound per statement: a chunk's reads bind each member and LINE user
/// once, its writes four values a row; all far below SQLite's 32,766.
const IDS_PER_STATEMENT: usize = 1_000;

/// Merges patches (each member once) set-based, as PostgreSQL's store does:
/// two reads (the members, the links of the members and of the LINE users),
/// the checks in memory, then multi-row writes. Statement by statement per
/// member, each a round trip to SQLite's thread, a 1M-member import took
/// minutes.
async fn upsert_distinct_members(
    conn: &mut SqliteConnection,
    patches: &[MemberPatch],
    now: DateTime<Utc>,
) -> StoreResult<MembersOutcome> {
    let ids: Vec<&str> = patches.iter().map(|p| p.member_id.as_str()).collect();
    let users: Vec<&str> = patches.iter().filter_map(|p| p.line_user_id.as_ref().map(|u| u.as_str())).collect();
    let mut current = HashMap::with_capacity(ids.len());
    let mut read = QueryBuilder::<Sqlite>::new("SELECT member_id, attributes FROM members WHERE member_id IN (");
    push_in_list(&mut read, &ids);
    for row in read.build().fetch_all(&mut *conn).await? {
        let text: String = row.try_get("attributes")?;
        current.insert(row.try_get::<String, _>("member_id")?, json_object(&text, "member attributes")?);
    }
    let mut links = Links::default();
    let mut read = QueryBuilder::<Sqlite>::new("SELECT member_id, line_user_id FROM links WHERE member_id IN (");
    push_in_list(&mut read, &ids);
    read.push(" OR line_user_id IN (");
    push_in_list(&mut read, &users);
    for row in read.build().fetch_all(&mut *conn).await? {
        links.insert(&row.try_get::<String, _>("member_id")?, &row.try_get::<String, _>("line_user_id")?);
    }
    let RunPlan { created, updated, new_links, outcome } = plan_run(patches, &current, &mut links)?;
    let at = to_micros(now);
    let rows: Vec<&(&str, String)> = created.iter().chain(&updated).collect();
    if !rows.is_empty() {
        // Created and updated alike: the merged attributes are final.
        let mut write =
            QueryBuilder::<Sqlite>::new("INSERT INTO members (member_id, attributes, created_at, updated_at) ");
        write.push_values(rows, |mut row, (id, attributes)| {
            row.push_bind(*id).push_bind(attributes.as_str()).push_bind(at).push_bind(at);
        });
        write.push(
            " ON CONFLICT (member_id) DO UPDATE SET attributes = excluded.attributes, updated_at = excluded.updated_at",
        );
        write.build().execute(&mut *conn).await?;
    }
    if !new_links.is_empty() {
        let mut write = QueryBuilder::<Sqlite>::new("INSERT INTO links (member_id, line_user_id, method, linked_at) ");
        write.push_values(new_links, |mut row, (member, user)| {
            row.push_bind(member).push_bind(user).push_bind(LinkMethod::Import.as_str()).push_bind(at);
        });
        write.build().execute(&mut *conn).await?;
    }
    Ok(outcome)
}

/// `?, ?, …)` closing an `IN (` list; `NULL)` for none (matches nothing).
fn push_in_list(query: &mut QueryBuilder<Sqlite>, values: &[&str]) {
    if values.is_empty() {
        query.push("NULL");
    }
    let mut list = query.separated(", ");
    for value in values {
        list.push_bind(value.to_string());
    }
    query.push(")");
}
