//! PostgreSQL: the production backend. Batches go in as one `UNNEST` insert
//! per batch, so ingest cost is one round trip per batch, not per event.

use crate::{Backend, Store, StoreError, StoreResult};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

mod events;
mod members;
mod membership;
mod outbox;
mod requests;
mod rich_menus;
mod webhook;

/// Why PostgreSQL could not be reached, with where it was looked for (user,
/// host, port, database; never the password). The pool's "timed out" hides
/// the cause, so one more attempt finds it.
async fn unreachable(options: &PgConnectOptions, error: sqlx::Error) -> StoreError {
    let cause = match error {
        sqlx::Error::PoolTimedOut => match tokio::time::timeout(Duration::from_secs(5), options.connect()).await {
            Ok(Err(error)) => format!("{error} (retried until the wait ran out)"),
            Ok(Ok(_)) => "it accepted a connection only after the wait ran out".to_string(),
            Err(_) => "no answer (timed out)".to_string(),
        },
        other => other.to_string(),
    };
    let database = options.get_database().unwrap_or(options.get_username());
    let target = format!("{}@{}:{}/{database}", options.get_username(), options.get_host(), options.get_port());
    StoreError::Unreachable { target, cause }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

pub struct PgStore {
    pub(crate) pool: PgPool,
}

impl crate::sql::Sql for PgStore {
    type Db = sqlx::Postgres;

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

impl PgStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_within(url, Duration::from_secs(30)).await
    }

    /// As [`PgStore::connect`], waiting at most `wait` for PostgreSQL to
    /// accept a connection (it retries a refused one until then).
    async fn connect_within(url: &str, wait: Duration) -> StoreResult<Self> {
        // No JIT: every query here is short, and PostgreSQL compiles a
        // query's JIT code again on every execution, prepared or not. Plans
        // near its cost threshold spent more time compiling than running
        // (a third of the database's CPU in a recompute's first seconds).
        let options = PgConnectOptions::from_str(url)?.options([("jit", "off")]);
        let pool = PgPoolOptions::new().max_connections(16).acquire_timeout(wait).connect_with(options.clone()).await;
        match pool {
            Ok(pool) => Ok(Self { pool }),
            Err(error) => Err(unreachable(&options, error).await),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::PgStore;
    use std::time::Duration;

    #[tokio::test]
    async fn an_unreachable_server_is_named_with_the_cause_and_without_the_password() {
        // Port 1 on the loopback refuses every connection at once.
        let url = "postgres://renkei:hunter2@127.0.0.1:1/renkei";
        let Err(error) = PgStore::connect_within(url, Duration::from_millis(300)).await else { panic!("connected") };
        let message = error.to_string();
        assert!(message.contains("renkei@127.0.0.1:1/renkei"), "{message}");
        assert!(message.to_lowercase().contains("refused"), "{message}");
        assert!(!message.contains("pool timed out") && !message.contains("hunter2"), "{message}");
    }
}
