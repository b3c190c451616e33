//! PostgreSQL: the production backend. Batches go in as one `UNNEST` insert
//! per batch, so ingest cost is one round trip per batch, not per event.
//!
//! A write waits at most the write wait for a connection (the pool's
//! acquire timeout) and for a lock (`lock_timeout`), then fails
//! [`StoreError::Busy`]. The webhook inbox has connections of its own, so
//! a recompute or a burst that takes every pooled connection never holds
//! LINE's 200 back (an import's transaction takes no lock the inbox needs).

use crate::{Backend, Store, StoreError, StoreOptions, StoreResult, WriteState};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

mod changes;
mod events;
mod members;
mod membership;
mod outbox;
mod requests;
mod rich_menus;
mod tallies;
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

/// Connections the webhook inbox keeps to itself.
const INBOX_CONNECTIONS: u32 = 4;

pub struct PgStore {
    pub(crate) pool: PgPool,
    /// The webhook inbox's own connections (also `/healthz`'s look at lock waits).
    inbox: PgPool,
    /// The tallies inserts add to (see `tallies.rs`).
    pub(crate) tallier: crate::tallies::TallierSlot,
}

impl crate::sql::Sql for PgStore {
    type Db = sqlx::Postgres;

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn inbox_writer(&self) -> &PgPool {
        &self.inbox
    }

    fn inbox_reader(&self) -> &PgPool {
        &self.inbox
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> StoreResult<()> {
        // Migrations may wait for locks as long as they must (another
        // instance migrating, long transactions): a connection of their own,
        // without `lock_timeout`, closed afterwards.
        let migrator = PgPoolOptions::new()
            .max_connections(1)
            .after_connect(|connection, _| {
                Box::pin(async move { sqlx::query("SET lock_timeout = 0").execute(connection).await.map(|_| ()) })
            })
            .connect_with(self.pool.connect_options().as_ref().clone())
            .await?;
        let migrated = MIGRATOR.run(&migrator).await;
        migrator.close().await;
        Ok(migrated?)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn write_state(&self) -> StoreResult<WriteState> {
        // The longest lock wait of a session on this database, asked on the
        // inbox's connections so that it answers when the pool is taken.
        let waited: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(MAX(EXTRACT(EPOCH FROM clock_timestamp() - state_change) * 1000), 0) AS BIGINT)
             FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND state = 'active'",
        )
        .fetch_one(&self.inbox)
        .await?;
        let waited = Duration::from_millis(u64::try_from(waited).unwrap_or(0));
        Ok(WriteState::held((waited > Duration::ZERO).then_some(waited)))
    }
}

impl PgStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: StoreOptions) -> StoreResult<Self> {
        Self::connect_within(url, Duration::from_secs(30), options).await
    }

    /// As [`PgStore::connect_with`], waiting at most `wait` for PostgreSQL
    /// to accept a connection (it retries a refused one until then).
    async fn connect_within(url: &str, wait: Duration, store: StoreOptions) -> StoreResult<Self> {
        // No JIT: every query here is short, and PostgreSQL compiles a
        // query's JIT code again on every execution, prepared or not. Plans
        // near its cost threshold spent more time compiling than running
        // (a third of the database's CPU in a recompute's first seconds).
        let lock_timeout = store.write_wait.as_millis().to_string();
        let options = PgConnectOptions::from_str(url)?.options([("jit", "off"), ("lock_timeout", &lock_timeout)]);
        // First PostgreSQL must answer within `wait`; from then on a write
        // waits the write wait for a connection.
        match PgPoolOptions::new().max_connections(1).acquire_timeout(wait).connect_with(options.clone()).await {
            Ok(check) => check.close().await,
            Err(error) => return Err(unreachable(&options, error).await),
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(store.write_wait)
            .connect_lazy_with(options.clone());
        let inbox = PgPoolOptions::new()
            .max_connections(INBOX_CONNECTIONS)
            .acquire_timeout(store.write_wait)
            .connect_lazy_with(options);
        Ok(Self { pool, inbox, tallier: Default::default() })
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
        let options = crate::StoreOptions::default();
        let Err(error) = PgStore::connect_within(url, Duration::from_millis(300), options).await else {
            panic!("connected")
        };
        let message = error.to_string();
        assert!(message.contains("renkei@127.0.0.1:1/renkei"), "{message}");
        assert!(message.to_lowercase().contains("refused"), "{message}");
        assert!(!message.contains("pool timed out") && !message.contains("hunter2"), "{message}");
    }
}
