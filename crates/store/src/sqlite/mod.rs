//! SQLite: the embedded default. WAL journal, `synchronous = FULL` so that a
//! committed write survives a crash, one writer connection (SQLite allows one
//! writer at a time; a single connection avoids busy upgrades), a small
//! pool of readers, and a checkpointer that keeps the WAL within 64 MiB
//! (`wal.rs`). The webhook inbox is a database file of its own with its own
//! writer (`inbox.rs`). A write waits at most the write wait for the writer
//! (the pool's acquire timeout, and `busy_timeout` for another process's
//! lock), then fails [`StoreError::Busy`]; `watch.rs` tells how long the
//! writer has been held.

use crate::{Backend, Store, StoreError, StoreOptions, StoreResult, WriteState};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use renkei_core::LineUserId;
use serde_json::{Map, Value};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

mod changes;
mod events;
mod inbox;
mod members;
mod membership;
mod outbox;
mod requests;
mod rich_menus;
mod tallies;
mod wal;
mod watch;
mod webhook;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

pub struct SqliteStore {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
    /// The one delivery claim that may be open at a time (it holds the
    /// writer); see [`Claim`](crate::Claim).
    pub(crate) claims: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The webhook inbox's own database (see `inbox.rs`).
    inbox: inbox::Inbox,
    /// How long the writer has been held (see `watch.rs`).
    watch: Arc<watch::WriterWatch>,
    /// The main database's options (the inbox's migration attaches it).
    options: SqliteConnectOptions,
    in_memory: bool,
    /// Keeps the WAL within its bound (see `wal.rs`).
    _checkpointer: Option<wal::Checkpointer>,
    /// The tallies inserts add to (see `tallies.rs`).
    pub(crate) tallier: crate::tallies::TallierSlot,
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

    fn inbox_writer(&self) -> &SqlitePool {
        &self.inbox.writer
    }

    fn inbox_reader(&self) -> &SqlitePool {
        &self.inbox.reader
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.writer).await?;
        self.inbox.migrate(&self.options, self.in_memory).await
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn write_state(&self) -> StoreResult<WriteState> {
        self.watch.state(&self.writer).await
    }
}

/// `options` as every connection of the store has them: WAL, `synchronous =
/// FULL`, foreign keys, the WAL's bound, and `busy_timeout` = the write wait.
fn durable(options: SqliteConnectOptions, bound: wal::WalBound, wait: Duration) -> SqliteConnectOptions {
    wal::with_pragmas(options, bound)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(wait)
}

impl SqliteStore {
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, StoreOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: StoreOptions) -> StoreResult<Self> {
        Self::connect_bounded(url, options, wal::WAL_BOUND).await
    }

    pub(crate) async fn connect_bounded(url: &str, store: StoreOptions, bound: wal::WalBound) -> StoreResult<Self> {
        let wait = store.write_wait;
        let parsed = SqliteConnectOptions::from_str(url)?;
        let in_memory = inbox::in_memory(url, &parsed);
        let options = durable(parsed, bound, wait);
        let watch = watch::WriterWatch::new(&options, in_memory);
        let writer = watch
            .hooks(SqlitePoolOptions::new().max_connections(1).acquire_timeout(wait))
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new().max_connections(4).connect_with(options.clone().read_only(true)).await?;
        let inbox = inbox::Inbox::open(&options, in_memory, wait).await?;
        let checkpointer = wal::start(&options, &writer, bound, wait);
        Ok(Self {
            writer,
            reader,
            claims: Default::default(),
            inbox,
            watch,
            options,
            in_memory,
            _checkpointer: checkpointer,
            tallier: Default::default(),
        })
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
