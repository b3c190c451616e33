//! PostgreSQL: the production backend. Batches go in as one `UNNEST` insert
//! per batch, so ingest cost is one round trip per batch, not per event.

use crate::{Backend, Store, StoreResult};
use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;

mod events;
mod members;
mod membership;
mod outbox;
mod requests;
mod rich_menus;
mod webhook;

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
        // No JIT: every query here is short, and PostgreSQL compiles a
        // query's JIT code again on every execution, prepared or not. Plans
        // near its cost threshold spent more time compiling than running
        // (a third of the database's CPU in a recompute's first seconds).
        let options = PgConnectOptions::from_str(url)?.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
