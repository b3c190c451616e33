//! Managing operators, from the CLI (`renkei operators`) and the
//! operators page alike: every change is checked the same way and recorded
//! in the audit log with who made it.

use crate::auth::{self, PASSWORD_MAX, PASSWORD_MIN};
use chrono::{DateTime, Utc};
use renkei_store::{AuditEntry, OperatorRole, OperatorStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("an operator name is 1 to 64 letters, digits and . _ - @")]
    InvalidName,
    #[error("a password has {PASSWORD_MIN} to {PASSWORD_MAX} characters")]
    WeakPassword,
    #[error("operator `{0}` exists already")]
    Exists(String),
    #[error("no operator `{0}`")]
    NoSuchOperator(String),
    #[error("{0}")]
    Hash(#[from] auth::HashError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Whether `name` may name an operator.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
}

/// Records a change made by `by` in the audit log.
pub async fn audit(
    store: &dyn OperatorStore,
    by: &str,
    action: &str,
    target: &str,
    detail: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let entry = AuditEntry {
        at,
        operator: by.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        detail: detail.to_string(),
    };
    store.record_audit(&entry).await
}

/// Adds operator `name` with `role` and `password` (hashed with argon2id
/// off the async threads).
pub async fn add(
    store: &dyn OperatorStore,
    by: &str,
    name: &str,
    role: OperatorRole,
    password: &str,
    now: DateTime<Utc>,
) -> Result<(), ManageError> {
    if !valid_name(name) {
        return Err(ManageError::InvalidName);
    }
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&password.chars().count()) {
        return Err(ManageError::WeakPassword);
    }
    let password = password.to_string();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|e| auth::HashError::from_join(&e))??;
    if !store.create_operator(name, role, &hash, now).await? {
        return Err(ManageError::Exists(name.to_string()));
    }
    audit(store, by, "operator_add", name, role.as_str(), now).await?;
    Ok(())
}

/// Removes operator `name` (its sessions end).
pub async fn remove(store: &dyn OperatorStore, by: &str, name: &str, now: DateTime<Utc>) -> Result<(), ManageError> {
    if !store.remove_operator(name).await? {
        return Err(ManageError::NoSuchOperator(name.to_string()));
    }
    audit(store, by, "operator_remove", name, "", now).await?;
    Ok(())
}

/// Gives operator `name` `role` (from its next request on).
pub async fn set_role(
    store: &dyn OperatorStore,
    by: &str,
    name: &str,
    role: OperatorRole,
    now: DateTime<Utc>,
) -> Result<(), ManageError> {
    if !store.set_operator_role(name, role, now).await? {
        return Err(ManageError::NoSuchOperator(name.to_string()));
    }
    audit(store, by, "operator_role", name, role.as_str(), now).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names() {
        assert!(valid_name("admin"));
        assert!(valid_name("sato.k@example.jp"));
        assert!(!valid_name(""));
        assert!(!valid_name("two words"));
        assert!(!valid_name("<script>"));
        assert!(!valid_name(&"a".repeat(65)));
    }
}
