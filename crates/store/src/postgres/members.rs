//! PostgreSQL's side of members and links: row locks (`FOR UPDATE`) where
//! instances may race, and unique violations of such races as conflicts.

use crate::members::{
    Link, LinkOutcome, MembersOutcome, MembersSql, line_user_claimed, member_already_linked, merged, parse_link,
};
use crate::{PgStore, StoreError, StoreResult, parse_object};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::{LineUserId, LinkMethod, MemberId, MemberPatch};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};

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
        for patch in patches {
            // FOR UPDATE: two instances merging into one member must not lose a key.
            let current: Option<Json<Value>> =
                sqlx::query_scalar("SELECT attributes FROM members WHERE member_id = $1 FOR UPDATE")
                    .bind(patch.member_id.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
            let current = current.map(|Json(value)| parse_object(value, "member attributes")).transpose()?;
            let (next, changed) = merged(current.as_ref(), &patch.attributes);
            match (&current, changed) {
                (None, _) => {
                    sqlx::query(
                        "INSERT INTO members (member_id, attributes, created_at, updated_at) VALUES ($1, $2, $3, $3)
                         ON CONFLICT (member_id) DO UPDATE SET attributes = members.attributes || excluded.attributes,
                         updated_at = excluded.updated_at",
                    )
                    .bind(patch.member_id.as_str())
                    .bind(Json(&next))
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    outcome.created += 1;
                }
                (Some(_), true) => {
                    sqlx::query("UPDATE members SET attributes = $1, updated_at = $2 WHERE member_id = $3")
                        .bind(Json(&next))
                        .bind(now)
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
