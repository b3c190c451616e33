//! SQLite's side of members and links: the writes inside a transaction on
//! the single writer (timestamps as INTEGER microseconds, JSON as TEXT).

use super::{from_micros, json_object, to_micros};
use crate::members::{
    Link, LinkOutcome, MembersOutcome, MembersSql, line_user_claimed, member_already_linked, merged, parse_link,
};
use crate::{SqliteStore, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{LineUserId, LinkMethod, MemberId, MemberPatch};
use serde_json::Value;
use sqlx::{Row, SqliteConnection};

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
        let at = to_micros(now);
        for patch in patches {
            let current: Option<String> = sqlx::query_scalar("SELECT attributes FROM members WHERE member_id = ?")
                .bind(patch.member_id.as_str())
                .fetch_optional(&mut *conn)
                .await?;
            let current = current.map(|text| json_object(&text, "member attributes")).transpose()?;
            let (next, changed) = merged(current.as_ref(), &patch.attributes);
            let next_text = Value::Object(next).to_string();
            match (&current, changed) {
                (None, _) => {
                    sqlx::query(
                        "INSERT INTO members (member_id, attributes, created_at, updated_at) VALUES (?, ?, ?, ?)",
                    )
                    .bind(patch.member_id.as_str())
                    .bind(next_text)
                    .bind(at)
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                    outcome.created += 1;
                }
                (Some(_), true) => {
                    sqlx::query("UPDATE members SET attributes = ?, updated_at = ? WHERE member_id = ?")
                        .bind(next_text)
                        .bind(at)
                        .bind(patch.member_id.as_str())
                        .execute(&mut *conn)
                        .await?;
                    outcome.updated += 1;
                }
                (Some(_), false) => outcome.unchanged += 1,
            }
            if let Some(line_user_id) = &patch.line_user_id
                && let LinkOutcome::Created(_) =
                    Self::link_tx(conn, &patch.member_id, line_user_id, LinkMethod::Import, now).await?
            {
                outcome.linked += 1;
            }
        }
        Ok(outcome)
    }
}
