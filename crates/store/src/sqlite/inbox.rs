//! The webhook inbox's own database file, beside the main one
//! (`renkei.db` → `renkei-webhook.db`; an in-memory database gets an
//! in-memory inbox), with its own writer, WAL, `synchronous = FULL` and
//! checkpointer. Storing a LINE webhook so never waits for the main
//! writer, whatever holds it (an import's transaction, a recompute, another
//! process); the webhook worker applies the events to the main database at
//! its own pace.

use super::wal;
use crate::StoreResult;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite-inbox");

/// The inbox's WAL bound: as the main one's, but a truncating checkpoint
/// holds the inbox writer back at most 100 ms.
const INBOX_WAL_BOUND: wal::WalBound = wal::WalBound { busy: Duration::from_millis(100), ..wal::WAL_BOUND };

pub(crate) struct Inbox {
    pub writer: SqlitePool,
    pub reader: SqlitePool,
    _checkpointer: Option<wal::Checkpointer>,
}

/// Whether `options` (made from `url`) name an in-memory database.
pub(crate) fn in_memory(url: &str, options: &SqliteConnectOptions) -> bool {
    url.contains(":memory:")
        || url.contains("mode=memory")
        || options.get_filename().to_string_lossy().starts_with("file:sqlx-in-memory-")
}

/// `renkei.db` → `renkei-webhook.db`, in the same directory.
pub(crate) fn inbox_path(database: &Path) -> PathBuf {
    let stem = database.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match database.extension() {
        Some(extension) => format!("{stem}-webhook.{}", extension.to_string_lossy()),
        None => format!("{stem}-webhook"),
    };
    database.with_file_name(name)
}

impl Inbox {
    /// Opens (creating) the inbox of the main database `main` opens,
    /// with the main one's durability settings (`main` is already set up).
    pub async fn open(main: &SqliteConnectOptions, memory: bool, wait: Duration) -> StoreResult<Self> {
        let options = if memory {
            // A fresh shared in-memory database of its own.
            let fresh = SqliteConnectOptions::from_str("sqlite::memory:")?;
            super::durable(fresh, INBOX_WAL_BOUND, wait)
        } else {
            main.clone().filename(inbox_path(main.get_filename()))
        };
        let writer =
            SqlitePoolOptions::new().max_connections(1).acquire_timeout(wait).connect_with(options.clone()).await?;
        let reader = SqlitePoolOptions::new().max_connections(2).connect_with(options.clone().read_only(true)).await?;
        let checkpointer = wal::start(&options, &writer, INBOX_WAL_BOUND, wait);
        Ok(Self { writer, reader, _checkpointer: checkpointer })
    }

    /// Applies the inbox's migrations, then moves the webhook events a
    /// database from before the inbox kept in its own `webhook_events`
    /// here, ids and all (an interrupted move is repeated: it skips the
    /// rows already moved).
    pub async fn migrate(&self, main: &SqliteConnectOptions, memory: bool) -> StoreResult<()> {
        MIGRATOR.run(&self.writer).await?;
        if memory {
            return Ok(());
        }
        let mut connection = self.writer.acquire().await?;
        let path = main.get_filename().to_string_lossy().into_owned();
        sqlx::query("ATTACH DATABASE $1 AS main_db").bind(path).execute(&mut *connection).await?;
        let moved = move_old_events(&mut connection).await;
        sqlx::query("DETACH DATABASE main_db").execute(&mut *connection).await?;
        let moved = moved?;
        if moved > 0 {
            tracing::info!(events = moved, "webhook events moved to the inbox database");
        }
        Ok(())
    }
}

async fn move_old_events(connection: &mut sqlx::SqliteConnection) -> StoreResult<u64> {
    let old: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM main_db.sqlite_master WHERE type = 'table' AND name = 'webhook_events'
         AND EXISTS (SELECT 1 FROM main_db.webhook_events)",
    )
    .fetch_optional(&mut *connection)
    .await?;
    if old.is_none() {
        return Ok(0);
    }
    let columns = "id, webhook_event_id, type, body, received_at, processed_at, claimed_until, attempts, last_error";
    // Fixed text: nothing from outside goes into this SQL.
    let copy = format!("INSERT OR IGNORE INTO webhook_events ({columns}) SELECT {columns} FROM main_db.webhook_events");
    let moved = sqlx::query(sqlx::AssertSqlSafe(copy)).execute(&mut *connection).await?.rows_affected();
    sqlx::query("DELETE FROM main_db.webhook_events").execute(&mut *connection).await?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::inbox_path;
    use std::path::Path;

    #[test]
    fn the_inbox_sits_beside_the_database() {
        assert_eq!(inbox_path(Path::new("/data/renkei.db")), Path::new("/data/renkei-webhook.db"));
        assert_eq!(inbox_path(Path::new("renkei")), Path::new("renkei-webhook"));
        assert_eq!(inbox_path(Path::new("./x.sqlite3")), Path::new("./x-webhook.sqlite3"));
    }
}
