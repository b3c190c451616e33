//! Keeps SQLite's WAL bounded. The automatic checkpoint (PASSIVE, every
//! `wal_autocheckpoint` pages, at commit) copies the WAL into the database
//! but cannot start the WAL over while readers keep using it, so under
//! sustained ingest with readers it grew without bound (696 MB beside a
//! 174 MB database). A checkpointer task truncates the WAL
//! whenever the file passes [`WalBound::truncate_at`]: `wal_checkpoint(TRUNCATE)`
//! on the writer connection waits at most [`WalBound::busy`] (holding back
//! writes meanwhile) for readers to move on to the database file, then
//! starts the WAL over at zero bytes (a busy attempt is tried again at the
//! next look). `journal_size_limit`
//! caps what a WAL that SQLite restarts by itself keeps on disk.

use crate::StoreResult;
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How large the WAL may grow, and how it is kept there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalBound {
    /// The checkpointer truncates the WAL once it is larger than this.
    pub truncate_at: u64,
    /// `journal_size_limit`: the WAL is never kept larger than this when
    /// SQLite starts it over; the bound the README states.
    pub limit: u64,
    /// How often the checkpointer looks at the WAL's size.
    pub every: Duration,
    /// How long a truncating checkpoint may wait for readers (and so hold
    /// back the writer).
    pub busy: Duration,
}

const MIB: u64 = 1024 * 1024;

/// The WAL stays within 64 MiB: truncated past 16 MiB, looked at 4 times a second.
pub(crate) const WAL_BOUND: WalBound = WalBound {
    truncate_at: 16 * MIB,
    limit: 64 * MIB,
    every: Duration::from_millis(250),
    busy: Duration::from_millis(500),
};

/// The pragmas every connection gets for `bound`.
pub(crate) fn with_pragmas(options: SqliteConnectOptions, bound: WalBound) -> SqliteConnectOptions {
    options.pragma("journal_size_limit", bound.limit.to_string()).pragma("wal_autocheckpoint", "1000")
}

/// The running checkpointer; stops when dropped (with its store).
pub(crate) struct Checkpointer(tokio::task::JoinHandle<()>);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the checkpointer for the database `writer` writes, when it is a
/// file (an in-memory database has no WAL). It checkpoints on the writer
/// connection, taking its turn there, with the writer's `busy_timeout`
/// (`writer_busy`) lowered to [`WalBound::busy`] meanwhile.
pub(crate) fn start(
    options: &SqliteConnectOptions,
    writer: &SqlitePool,
    bound: WalBound,
    writer_busy: Duration,
) -> Option<Checkpointer> {
    let database = options.get_filename();
    if !database.is_file() {
        return None;
    }
    let wal = wal_path(database);
    Some(Checkpointer(tokio::spawn(run(writer.clone(), wal, bound, writer_busy))))
}

fn wal_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

async fn run(writer: SqlitePool, wal: PathBuf, bound: WalBound, writer_busy: Duration) {
    let mut ticks = tokio::time::interval(bound.every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
        if size <= bound.truncate_at {
            continue;
        }
        match truncate(&writer, bound.busy, writer_busy).await {
            Ok(true) => tracing::debug!(bytes = size, "WAL truncated"),
            Ok(false) => tracing::debug!(bytes = size, "WAL checkpoint busy (readers); trying again"),
            Err(error) => tracing::warn!(%error, "WAL checkpoint failed; trying again"),
        }
    }
}

/// One `wal_checkpoint(TRUNCATE)` on the writer connection; false when
/// readers kept it from finishing within `busy`.
async fn truncate(writer: &SqlitePool, busy: Duration, writer_busy: Duration) -> StoreResult<bool> {
    let mut connection = writer.acquire().await?;
    // A number renkei formats: nothing from outside goes into this SQL.
    let set_busy = |timeout: Duration| sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {}", timeout.as_millis()));
    sqlx::query(set_busy(busy)).execute(&mut *connection).await?;
    let checkpoint =
        sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&mut *connection).await;
    sqlx::query(set_busy(writer_busy)).execute(&mut *connection).await?;
    Ok(checkpoint?.0 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventStore, SqliteStore, Store};
    use renkei_core::NewEvent;
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn batch(round: usize) -> Vec<NewEvent> {
        (0..200)
            .map(|i| {
                let value = json!({"event_id": format!("e-{round}-{i}"), "type": "purchase",
                    "member_id": format!("m{}", i % 50), "occurred_at": "2026-11-23T10:00:00Z",
                    "properties": {"sku": "x".repeat(200), "amount": i}});
                NewEvent::parse(&value).expect("a valid event")
            })
            .collect()
    }

    /// Read transactions that overlap (as a recompute's page reads do) keep
    /// the WAL in use, so SQLite's own checkpoint never starts it over:
    /// without the checkpointer the WAL holds every page written.
    async fn pin_the_wal(store: Arc<SqliteStore>, stop: Arc<AtomicBool>, offset: Duration) {
        tokio::time::sleep(offset).await;
        while !stop.load(Ordering::Relaxed) {
            let mut tx = store.reader.begin().await.expect("read transaction");
            sqlx::query("SELECT count(*) FROM events").fetch_one(&mut *tx).await.expect("read");
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.commit().await.expect("end read");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_sustained_ingest() {
        let dir = std::env::temp_dir().join(format!("renkei-wal-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let database = dir.join("renkei.db");
        let every = Duration::from_millis(10);
        // Headroom of 7 MiB over the truncation point, as production has 48 MiB over
        // 16 MiB: a loaded machine (CI runs many tests at once) may delay a look or two.
        let bound = WalBound { truncate_at: MIB, limit: 8 * MIB, every, busy: Duration::from_millis(200) };
        let url = format!("sqlite://{}", database.display());
        let options = crate::StoreOptions::default();
        let store = Arc::new(SqliteStore::connect_bounded(&url, options, bound).await.expect("store"));
        store.migrate().await.expect("migrate");
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> =
            [0, 10].map(|ms| tokio::spawn(pin_the_wal(store.clone(), stop.clone(), Duration::from_millis(ms)))).into();
        let (mut largest, mut written, mut round) = (0, 0, 0);
        // Written: the database's size, which the WAL would reach unchecked.
        while written < 4 * bound.limit && round < 2_000 {
            store.insert_events(&batch(round), chrono::Utc::now()).await.expect("insert");
            largest = largest.max(std::fs::metadata(wal_path(&database)).map_or(0, |m| m.len()));
            written = std::fs::metadata(&database).expect("database").len();
            round += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.await.expect("reader");
        }
        assert!(written >= 4 * bound.limit, "too little written to test the bound: {written} bytes");
        assert!(largest <= bound.limit, "WAL reached {largest} bytes (bound {}) in {round} batches", bound.limit);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
