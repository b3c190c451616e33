//! Throwaway stores for tests: a temporary SQLite file, or a fresh database
//! on the PostgreSQL server named by `RENKEI_TEST_POSTGRES_URL`.
//!
//! Without that variable PostgreSQL tests are skipped with a message, except
//! when `CI=true`, where a missing server is a failure: CI must test both.

use renkei_store::{Backend, PgStore, SqliteStore, Store, StoreError, StoreOptions, StoreResult};
use sqlx::Connection;
use std::sync::Arc;

pub const POSTGRES_URL_VAR: &str = "RENKEI_TEST_POSTGRES_URL";

/// A store plus whatever keeps it alive (the temp dir for SQLite). A
/// PostgreSQL test database is dropped with it, so test runs do not pile
/// databases up on the server until its disk is full.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// The server to drop the database from (PostgreSQL only).
    server: Option<String>,
}

/// A test uses its store as the store itself.
impl std::ops::Deref for TestStore {
    type Target = Arc<dyn Store>;

    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let Some(server) = self.server.take() else { return };
        let Some(name) = database_name(&self.url) else { return };
        // Drop cannot await, and the test's runtime may be a single thread
        // that is busy right here: drop the database from a thread of its own.
        let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&server).await.ok()?;
                // FORCE: the store's own pool (and a test's server) may still hold connections.
                let dropped = sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await;
                let _ = conn.close().await;
                dropped.ok()
            })
        });
        if dropper.join().ok().flatten().is_none() {
            eprintln!("could not drop the test database {name}; drop it by hand");
        }
    }
}

/// The database a `create_database` URL names, if it is one of ours.
fn database_name(url: &str) -> Option<String> {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    let name = base.rsplit_once('/')?.1;
    let ours = name.starts_with("renkei_test_") && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    ours.then(|| name.to_string())
}

pub async fn sqlite() -> StoreResult<TestStore> {
    sqlite_with(StoreOptions::default()).await
}

/// As [`sqlite`], with `options` (e.g. a short write wait).
pub async fn sqlite_with(options: StoreOptions) -> StoreResult<TestStore> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Corrupt(format!("tempdir: {e}")))?;
    let url = format!("sqlite://{}", dir.path().join("renkei.db").display());
    let store = SqliteStore::connect_with(&url, options).await?;
    store.migrate().await?;
    Ok(TestStore { store: Arc::new(store), url, _dir: Some(dir), server: None })
}

/// The PostgreSQL server URL for tests, or `None` to skip (never in CI).
pub fn postgres_server_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let in_ci = std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false);
            assert!(!in_ci, "CI=true but {POSTGRES_URL_VAR} is not set: PostgreSQL tests must run in CI");
            eprintln!("skipping PostgreSQL test: set {POSTGRES_URL_VAR}=postgres://user:pass@host/db to run it");
            None
        }
    }
}

/// Creates a fresh, migrated database named `renkei_test_<uuid>` on the server.
pub async fn postgres() -> StoreResult<Option<TestStore>> {
    postgres_with(StoreOptions::default()).await
}

/// As [`postgres`], with `options` (e.g. a short write wait).
pub async fn postgres_with(options: StoreOptions) -> StoreResult<Option<TestStore>> {
    let Some(server) = postgres_server_url() else { return Ok(None) };
    postgres_on(&server, options).await.map(Some)
}

/// A fresh, migrated database on the PostgreSQL server at `server` (a test's
/// own server, e.g. one it stops and starts).
pub async fn postgres_on(server: &str, options: StoreOptions) -> StoreResult<TestStore> {
    let url = create_database(server).await?;
    let store = PgStore::connect_with(&url, options).await?;
    store.migrate().await?;
    Ok(TestStore { store: Arc::new(store), url, _dir: None, server: Some(server.to_string()) })
}

/// A fresh store on `backend`; `None` for PostgreSQL when no server is
/// configured (refused in CI, see [`postgres_server_url`]).
pub async fn store(backend: Backend) -> Option<TestStore> {
    match backend {
        Backend::Sqlite => Some(sqlite().await.expect("sqlite store")),
        Backend::Postgres => postgres().await.expect("postgres store"),
    }
}

/// `backend` itself when tests can run on it: for fixtures that build their
/// own store from the [`Backend`].
pub async fn available(backend: Backend) -> Option<Backend> {
    match backend {
        Backend::Sqlite => Some(backend),
        Backend::Postgres => postgres_server_url().map(|_| backend),
    }
}

/// Creates an empty database beside the one in `server_url` and returns its URL.
pub async fn create_database(server_url: &str) -> StoreResult<String> {
    let name = format!("renkei_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
    conn.close().await?;
    Ok(replace_database(server_url, &name))
}

/// Drops a database [`create_database`] made (any other name is left
/// alone), closing the connections still on it. Benchmarks call it when
/// done: a database left behind is vacuumed during the next benchmark.
pub async fn drop_database(server_url: &str, url: &str) -> StoreResult<()> {
    let Some(name) = database_name(url) else { return Ok(()) };
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{host_part}/{name}{query}")
}

#[cfg(test)]
mod tests {
    use super::{database_name, replace_database};

    #[test]
    fn replaces_the_database_name_only() {
        assert_eq!(replace_database("postgres://u:p@localhost:5432/postgres", "x"), "postgres://u:p@localhost:5432/x");
        assert_eq!(replace_database("postgres://u@h/db?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
        assert_eq!(replace_database("postgres://u@h", "x"), "postgres://u@h/x");
    }

    #[test]
    fn only_test_databases_are_dropped() {
        assert_eq!(database_name("postgres://u@h:5/renkei_test_ab12?x=y").as_deref(), Some("renkei_test_ab12"));
        assert_eq!(database_name("postgres://u@h:5/postgres"), None);
        assert_eq!(database_name("postgres://u@h:5/renkei_test_a;drop"), None);
    }
}
