//! SQLite: the embedded default. WAL journal, `synchronous = FULL` so that a
//! committed write survives a crash, one writer connection (SQLite allows one
//! writer at a time; a single connection avoids busy upgrades), a small
//! pool of readers, and a checkpointer that keeps the WAL within 64 MiB
//! (`wal.rs`).

use crate::{Backend, Store, StoreError, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::LineUserId;
use serde_json::{Map, Value};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::time::Duration;

mod events;
mod members;
mod membership;
mod outbox;
mod requests;
mod rich_menus;
mod wal;
mod webhook;

/// How long a connection waits for SQLite's locks.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

pub struct SqliteStore {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
    /// The one delivery claim that may be open at a time (it holds the
    /// writer); see [`Claim`](crate::Claim).
    pub(crate) claims: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Keeps the WAL within its bound (see `wal.rs`).
    _checkpointer: Option<wal::Checkpointer>,
}

pub(crate) fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(micros: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt(format!("timestamp {micros}")))
}

pub(crate) fn json_object(text: &str, what: &str) -> StoreResult<Map<String, Value>> {
    let value: Value = serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    crate::parse_object(value, what)
}

impl crate::sql::Sql for SqliteStore {
    type Db = sqlx::Sqlite;

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}

impl SqliteStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_bounded(url, wal::WAL_BOUND).await
    }

    pub(crate) async fn connect_bounded(url: &str, bound: wal::WalBound) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?;
        let options = wal::with_pragmas(options, bound)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        let reader = SqlitePoolOptions::new().max_connections(4).connect_with(options.clone().read_only(true)).await?;
        let checkpointer = wal::start(&options, &writer, bound, BUSY_TIMEOUT);
        Ok(Self { writer, reader, claims: Default::default(), _checkpointer: checkpointer })
    }

    pub fn writer_pool(&self) -> &SqlitePool {
        &self.writer
    }
}

/// A JSON array parameter (SQLite has no array parameters).
pub(crate) fn json_text<T: serde::Serialize>(items: &[T], what: &str) -> StoreResult<String> {
    serde_json::to_string(items).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn ids_json(ids: &[i64]) -> String {
    Value::Array(ids.iter().map(|id| Value::from(*id)).collect()).to_string()
}

pub(crate) fn users_json(users: &[LineUserId]) -> String {
    crate::requests::recipients_json(users).to_string()
}
