//! The operator dashboard's own data: operators and their roles (with an
//! argon2id hash of the password, made by the caller), sign-in sessions
//! (only a hash of each cookie token is stored, so a read of the table
//! signs no one in), failed sign-ins per subject (for the sign-in limit, so
//! every instance counts the same failures), and the audit log of every
//! change an operator makes. The same SQL on both backends.

use crate::StoreResult;
use crate::sql::{Dialect, Row, Sql, Ts, stmt};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// What an operator may do: viewers read; editors also pause and resume
/// campaigns; admins also manage operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorRole {
    Viewer,
    Editor,
    Admin,
}

impl OperatorRole {
    pub const ALL: [OperatorRole; 3] = [OperatorRole::Viewer, OperatorRole::Editor, OperatorRole::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Viewer => "viewer",
            OperatorRole::Editor => "editor",
            OperatorRole::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == text)
    }

    /// Whether this role may do what `needed` may (roles are ordered).
    pub fn allows(self, needed: OperatorRole) -> bool {
        self >= needed
    }
}

/// An operator as listed (without the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operator {
    pub name: String,
    pub role: OperatorRole,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A live session, with its operator's current role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSession {
    pub operator: String,
    pub role: OperatorRole,
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

/// One audit-log line: who did what, to what, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    /// The operator's name (`cli` for changes made with `renkei operators`).
    pub operator: String,
    /// What was done: `sign_in`, `sign_out`, `pause`, `resume`, `operator_add`, …
    pub action: String,
    /// What it was done to (a campaign id, an operator name), or empty.
    pub target: String,
    pub detail: String,
}

#[async_trait]
pub trait OperatorStore: Send + Sync + 'static {
    /// Creates an operator; `false` when the name is taken (nothing changed).
    async fn create_operator(
        &self,
        name: &str,
        role: OperatorRole,
        password_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Every operator, by name.
    async fn operators(&self) -> StoreResult<Vec<Operator>>;

    /// An operator with its password hash, to check a sign-in.
    async fn operator_with_hash(&self, name: &str) -> StoreResult<Option<(Operator, String)>>;

    /// Removes an operator and ends its sessions; `false` when there was none.
    async fn remove_operator(&self, name: &str) -> StoreResult<bool>;

    /// `false` when there is no such operator.
    async fn set_operator_role(&self, name: &str, role: OperatorRole, now: DateTime<Utc>) -> StoreResult<bool>;

    async fn create_session(
        &self,
        token_hash: &str,
        operator: &str,
        csrf_token: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// The session with this token hash if it was seen at or after
    /// `seen_since` (older ones have expired) and its operator still exists.
    async fn session(&self, token_hash: &str, seen_since: DateTime<Utc>) -> StoreResult<Option<OperatorSession>>;

    /// Marks the session seen at `now` (keeps it from expiring).
    async fn touch_session(&self, token_hash: &str, now: DateTime<Utc>) -> StoreResult<()>;

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()>;

    /// Deletes sessions last seen before `before`.
    async fn delete_idle_sessions(&self, before: DateTime<Utc>) -> StoreResult<u64>;

    /// Records one failed sign-in for each subject, forgetting that
    /// subject's failures before `forget_before`.
    async fn record_sign_in_failure(
        &self,
        subjects: &[&str],
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// A subject's failed sign-ins at or after `since`.
    async fn sign_in_failures(&self, subject: &str, since: DateTime<Utc>) -> StoreResult<u64>;

    /// The latest failed sign-in of a subject at or after `since`.
    async fn last_sign_in_failure(&self, subject: &str, since: DateTime<Utc>) -> StoreResult<Option<DateTime<Utc>>>;

    async fn clear_sign_in_failures(&self, subject: &str) -> StoreResult<()>;

    async fn record_audit(&self, entry: &AuditEntry) -> StoreResult<()>;

    /// The latest `limit` audit entries, newest first.
    async fn audit_log(&self, limit: u32) -> StoreResult<Vec<AuditEntry>>;
}

#[async_trait]
impl<S: Sql> OperatorStore for S {
    async fn create_operator(
        &self,
        name: &str,
        role: OperatorRole,
        password_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let inserted = stmt::<S::Db>(
            "INSERT INTO operators (name, role, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(password_hash)
        .bind(Ts(now))
        .execute(self.writer())
        .await?;
        Ok(inserted == 1)
    }

    async fn operators(&self) -> StoreResult<Vec<Operator>> {
        stmt::<S::Db>("SELECT name, role, created_at, updated_at FROM operators ORDER BY name")
            .all(self.reader(), operator_of)
            .await
    }

    async fn operator_with_hash(&self, name: &str) -> StoreResult<Option<(Operator, String)>> {
        stmt::<S::Db>("SELECT name, role, created_at, updated_at, password_hash FROM operators WHERE name = $1")
            .bind(name)
            .optional(self.reader(), |row| {
                let hash = row.string("password_hash")?;
                Ok((operator_of(row)?, hash))
            })
            .await
    }

    async fn remove_operator(&self, name: &str) -> StoreResult<bool> {
        // Sessions first: a session whose operator is gone is refused anyway (the join).
        stmt::<S::Db>("DELETE FROM operator_sessions WHERE operator = $1").bind(name).execute(self.writer()).await?;
        let removed = stmt::<S::Db>("DELETE FROM operators WHERE name = $1").bind(name).execute(self.writer()).await?;
        Ok(removed == 1)
    }

    async fn set_operator_role(&self, name: &str, role: OperatorRole, now: DateTime<Utc>) -> StoreResult<bool> {
        let updated = stmt::<S::Db>("UPDATE operators SET role = $2, updated_at = $3 WHERE name = $1")
            .bind(name)
            .bind(role.as_str())
            .bind(Ts(now))
            .execute(self.writer())
            .await?;
        Ok(updated == 1)
    }

    async fn create_session(
        &self,
        token_hash: &str,
        operator: &str,
        csrf_token: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        stmt::<S::Db>(
            "INSERT INTO operator_sessions (token_hash, operator, csrf_token, created_at, last_seen_at)
             VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(token_hash)
        .bind(operator)
        .bind(csrf_token)
        .bind(Ts(now))
        .execute(self.writer())
        .await?;
        Ok(())
    }

    async fn session(&self, token_hash: &str, seen_since: DateTime<Utc>) -> StoreResult<Option<OperatorSession>> {
        stmt::<S::Db>(
            "SELECT s.operator, o.role, s.csrf_token, s.created_at, s.last_seen_at
             FROM operator_sessions s JOIN operators o ON o.name = s.operator
             WHERE s.token_hash = $1 AND s.last_seen_at >= $2",
        )
        .bind(token_hash)
        .bind(Ts(seen_since))
        .optional(self.reader(), |row| {
            Ok(OperatorSession {
                operator: row.string("operator")?,
                role: row.parsed("role", "operator role", OperatorRole::parse)?,
                csrf_token: row.string("csrf_token")?,
                created_at: row.ts("created_at")?,
                last_seen_at: row.ts("last_seen_at")?,
            })
        })
        .await
    }

    async fn touch_session(&self, token_hash: &str, now: DateTime<Utc>) -> StoreResult<()> {
        stmt::<S::Db>("UPDATE operator_sessions SET last_seen_at = $2 WHERE token_hash = $1 AND last_seen_at < $2")
            .bind(token_hash)
            .bind(Ts(now))
            .execute(self.writer())
            .await?;
        Ok(())
    }

    async fn delete_session(&self, token_hash: &str) -> StoreResult<()> {
        stmt::<S::Db>("DELETE FROM operator_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    async fn delete_idle_sessions(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        stmt::<S::Db>("DELETE FROM operator_sessions WHERE last_seen_at < $1")
            .bind(Ts(before))
            .execute(self.writer())
            .await
    }

    async fn record_sign_in_failure(
        &self,
        subjects: &[&str],
        now: DateTime<Utc>,
        forget_before: DateTime<Utc>,
    ) -> StoreResult<()> {
        for subject in subjects {
            stmt::<S::Db>("DELETE FROM sign_in_failures WHERE subject = $1 AND at < $2")
                .bind(*subject)
                .bind(Ts(forget_before))
                .execute(self.writer())
                .await?;
            stmt::<S::Db>("INSERT INTO sign_in_failures (subject, at) VALUES ($1, $2)")
                .bind(*subject)
                .bind(Ts(now))
                .execute(self.writer())
                .await?;
        }
        Ok(())
    }

    async fn sign_in_failures(&self, subject: &str, since: DateTime<Utc>) -> StoreResult<u64> {
        let n =
            stmt::<S::Db>("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM sign_in_failures WHERE subject = $1 AND at >= $2")
                .bind(subject)
                .bind(Ts(since))
                .one(self.reader(), |row| row.int("n"))
                .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn last_sign_in_failure(&self, subject: &str, since: DateTime<Utc>) -> StoreResult<Option<DateTime<Utc>>> {
        stmt::<S::Db>("SELECT at FROM sign_in_failures WHERE subject = $1 AND at >= $2 ORDER BY at DESC LIMIT 1")
            .bind(subject)
            .bind(Ts(since))
            .optional(self.reader(), |row| row.ts("at"))
            .await
    }

    async fn clear_sign_in_failures(&self, subject: &str) -> StoreResult<()> {
        stmt::<S::Db>("DELETE FROM sign_in_failures WHERE subject = $1").bind(subject).execute(self.writer()).await?;
        Ok(())
    }

    async fn record_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        stmt::<S::Db>("INSERT INTO operator_audit (at, operator, action, target, detail) VALUES ($1, $2, $3, $4, $5)")
            .bind(Ts(entry.at))
            .bind(&entry.operator)
            .bind(&entry.action)
            .bind(&entry.target)
            .bind(&entry.detail)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    async fn audit_log(&self, limit: u32) -> StoreResult<Vec<AuditEntry>> {
        stmt::<S::Db>("SELECT at, operator, action, target, detail FROM operator_audit ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .all(self.reader(), |row| {
                Ok(AuditEntry {
                    at: row.ts("at")?,
                    operator: row.string("operator")?,
                    action: row.string("action")?,
                    target: row.string("target")?,
                    detail: row.string("detail")?,
                })
            })
            .await
    }
}

/// An `operators` row (without the hash).
fn operator_of<DB: Dialect>(row: Row<'_, DB>) -> StoreResult<Operator> {
    Ok(Operator {
        name: row.string("name")?,
        role: row.parsed("role", "operator role", OperatorRole::parse)?,
        created_at: row.ts("created_at")?,
        updated_at: row.ts("updated_at")?,
    })
}
