//! PostgreSQL's side of members and links: row locks (`FOR UPDATE`) where
//! instances may race, and unique violations of such races as conflicts.

use crate::members::{
    Link, LinkOutcome, Links, MembersOutcome, MembersSql, RunPlan, line_user_claimed, member_already_linked,
    parse_link, plan_run, runs_of_distinct_members,
};
use crate::{PgStore, StoreError, StoreResult, parse_object};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{LineUserId, LinkMethod, MemberId, MemberPatch};
use serde_json::{Map, Value};
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use std::collections::HashMap;

/// Unique violations that races between instances can still produce.
fn conflict_on_unique(error: sqlx::Error, member_id: &str, line_user_id: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            if db.constraint() == Some("links_line_user_id_key") {
                line_user_claimed(line_user_id, "concurrent link")
            } else {
                member_already_linked(member_id, "another LINE user (concurrent link)")
            }
        }
        _ => error.into(),
    }
}

#[async_trait]
impl MembersSql for PgStore {
    async fn link_tx(
        conn: &mut PgConnection,
        member_id: &MemberId,
        line_user_id: &LineUserId,
        method: LinkMethod,
        at: DateTime<Utc>,
    ) -> StoreResult<LinkOutcome> {
        let by_member = sqlx::query("SELECT line_user_id, method, linked_at FROM links WHERE member_id = $1")
            .bind(member_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = by_member {
            let current: String = row.try_get("line_user_id")?;
            if current == line_user_id.as_str() {
                let link =
                    parse_link(member_id.to_string(), current, row.try_get("method")?, row.try_get("linked_at")?)?;
                return Ok(LinkOutcome::AlreadyLinked(link));
            }
            return Err(member_already_linked(member_id.as_str(), &current));
        }
        let by_user: Option<String> = sqlx::query_scalar("SELECT member_id FROM links WHERE line_user_id = $1")
            .bind(line_user_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(other) = by_user {
            return Err(line_user_claimed(line_user_id.as_str(), &other));
        }
        sqlx::query(
            "INSERT INTO members (member_id, attributes, created_at, updated_at) VALUES ($1, '{}'::jsonb, $2, $2)
             ON CONFLICT (member_id) DO NOTHING",
        )
        .bind(member_id.as_str())
        .bind(at)
        .execute(&mut *conn)
        .await?;
        let linked_at: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO links (member_id, line_user_id, method, linked_at) VALUES ($1, $2, $3, $4) RETURNING linked_at",
        )
        .bind(member_id.as_str())
        .bind(line_user_id.as_str())
        .bind(method.as_str())
        .bind(at)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| conflict_on_unique(e, member_id.as_str(), line_user_id.as_str()))?;
        Ok(LinkOutcome::Created(Link {
            member_id: member_id.clone(),
            line_user_id: line_user_id.clone(),
            method,
            linked_at,
        }))
    }

    async fn upsert_members_tx(
        conn: &mut PgConnection,
        patches: &[MemberPatch],
        now: DateTime<Utc>,
    ) -> StoreResult<MembersOutcome> {
        let mut outcome = MembersOutcome::default();
        for run in runs_of_distinct_members(patches) {
            outcome.add(upsert_distinct_members(conn, run, now).await?);
        }
        Ok(outcome)
    }
}

/// Merges a run of patches (each member once) set-based: one locking read
/// (the members, their links and the links of the run's LINE users), the
/// checks in memory, then one statement that inserts, updates and links. A
/// few statements per batch instead of several per member, so an import
/// stays linear.
async fn upsert_distinct_members(
    conn: &mut PgConnection,
    patches: &[MemberPatch],
    now: DateTime<Utc>,
) -> StoreResult<MembersOutcome> {
    let ids: Vec<&str> = patches.iter().map(|p| p.member_id.as_str()).collect();
    let users: Vec<&str> = patches.iter().filter_map(|p| p.line_user_id.as_ref().map(|u| u.as_str())).collect();
    // FOR UPDATE in key order: two instances merging into one member must not
    // lose a key, and must not deadlock on each other's batches. A member's
    // link needs the member (foreign key), so the join finds every link of
    // the run's members; rows of the second part have no attributes.
    let rows: Vec<(String, Option<Json<Value>>, Option<String>)> = sqlx::query_as(
        "WITH locked AS (
             SELECT m.member_id, m.attributes, l.line_user_id FROM members m
             LEFT JOIN links l ON l.member_id = m.member_id
             WHERE m.member_id = ANY($1) ORDER BY m.member_id FOR UPDATE OF m)
         SELECT member_id, attributes, line_user_id FROM locked
         UNION ALL SELECT member_id, NULL, line_user_id FROM links WHERE line_user_id = ANY($2)",
    )
    .bind(&ids)
    .bind(&users)
    .fetch_all(&mut *conn)
    .await?;
    let mut current: HashMap<String, Map<String, Value>> = HashMap::with_capacity(rows.len());
    let mut links = Links::default();
    for (id, attributes, line_user_id) in rows {
        if let Some(user) = line_user_id {
            links.insert(&id, &user);
        }
        if let Some(Json(value)) = attributes {
            current.insert(id, parse_object(value, "member attributes")?);
        }
    }
    let RunPlan { created, updated, new_links, outcome } = plan_run(patches, &current, &mut links)?;
    if created.is_empty() && updated.is_empty() && new_links.is_empty() {
        return Ok(outcome);
    }
    let (created_ids, created_attributes): (Vec<&str>, Vec<String>) = created.into_iter().unzip();
    let (updated_ids, updated_attributes): (Vec<&str>, Vec<String>) = updated.into_iter().unzip();
    let (link_members, link_users): (Vec<&str>, Vec<&str>) = new_links.into_iter().unzip();
    // One statement: the links' foreign key is checked at its end, when the
    // members it inserts are there. A member another instance created
    // meanwhile is merged into, not overwritten.
    sqlx::query(
        "WITH created AS (
             INSERT INTO members (member_id, attributes, created_at, updated_at)
             SELECT id, a::jsonb, $5, $5 FROM UNNEST($1::text[], $2::text[]) AS s (id, a)
             ON CONFLICT (member_id) DO UPDATE SET attributes = members.attributes || excluded.attributes,
             updated_at = excluded.updated_at),
         updated AS (
             UPDATE members m SET attributes = s.a::jsonb, updated_at = $5
             FROM UNNEST($3::text[], $4::text[]) AS s (id, a) WHERE m.member_id = s.id)
         INSERT INTO links (member_id, line_user_id, method, linked_at)
         SELECT m, u, $8, $5 FROM UNNEST($6::text[], $7::text[]) AS s (m, u)",
    )
    .bind(&created_ids)
    .bind(&created_attributes)
    .bind(&updated_ids)
    .bind(&updated_attributes)
    .bind(now)
    .bind(&link_members)
    .bind(&link_users)
    .bind(LinkMethod::Import.as_str())
    .execute(&mut *conn)
    .await
    .map_err(|e| conflict_on_unique(e, "of this batch", "of this batch"))?;
    Ok(outcome)
}
