//! How long SQLite's writer has been held, found without taking it (for
//! `/healthz`): the writer pool's hooks note when its one connection is
//! handed out and given back. A lock held by another process (a
//! `renkei import` beside `renkei serve`) is found by a probe that tries the
//! file's write lock without waiting, and only while this process's writer
//! is free.

use crate::{StoreError, StoreResult, WriteState};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// When the writer was taken (µs after `base`, plus one; 0: free), and
/// since when another process has held the file's write lock.
pub(crate) struct WriterWatch {
    base: Instant,
    taken: AtomicU64,
    foreign: AtomicU64,
    /// Tries the write lock without waiting; `None` for an in-memory
    /// database, which no other process can open.
    probe: Option<Mutex<Option<SqliteConnection>>>,
    probe_options: SqliteConnectOptions,
}

impl WriterWatch {
    pub fn new(options: &SqliteConnectOptions, in_memory: bool) -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            taken: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            probe: (!in_memory).then(|| Mutex::new(None)),
            probe_options: options.clone().busy_timeout(Duration::ZERO),
        })
    }

    fn stamp(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1
    }

    fn since(&self, stamp: u64) -> Option<Duration> {
        (stamp != 0).then(|| self.base.elapsed().saturating_sub(Duration::from_micros(stamp - 1)))
    }

    /// `options` with hooks that keep the watch.
    pub fn hooks(self: &Arc<Self>, options: SqlitePoolOptions) -> SqlitePoolOptions {
        let (connected, acquired, released) = (self.clone(), self.clone(), self.clone());
        options
            .after_connect(move |_, _| {
                connected.taken.store(connected.stamp(), Ordering::Relaxed);
                Box::pin(async { Ok(()) })
            })
            .before_acquire(move |_, _| {
                acquired.taken.store(acquired.stamp(), Ordering::Relaxed);
                Box::pin(async { Ok(true) })
            })
            .after_release(move |_, _| {
                released.taken.store(0, Ordering::Relaxed);
                Box::pin(async { Ok(true) })
            })
    }

    /// Whether the writer is held, in this process (blocked once held for
    /// [`WriteState::BLOCKED_AFTER`]) or by another (blocked: this process
    /// cannot write at all meanwhile).
    pub async fn state(&self, writer: &SqlitePool) -> StoreResult<WriteState> {
        // A connection closed while held never comes back through `after_release`.
        let taken = self.taken.load(Ordering::Relaxed);
        if taken != 0 && writer.size() > 0 && writer.num_idle() == 0 {
            return Ok(WriteState::held(self.since(taken)));
        }
        Ok(match self.foreign_lock().await? {
            Some(held) => WriteState { blocked: true, ..WriteState::held(Some(held)) },
            None => WriteState::held(None),
        })
    }

    /// How long another process has held the write lock, as far as the
    /// probes saw; `None` when it is free (or this process took it).
    async fn foreign_lock(&self) -> StoreResult<Option<Duration>> {
        let Some(probe) = &self.probe else { return Ok(None) };
        let mut probe = probe.lock().await;
        if probe.is_none() {
            *probe = Some(SqliteConnection::connect_with(&self.probe_options).await?);
        }
        let Some(connection) = probe.as_mut() else { return Ok(None) };
        let locked = match sqlx::query("BEGIN IMMEDIATE").execute(&mut *connection).await {
            Ok(_) => {
                sqlx::query("ROLLBACK").execute(&mut *connection).await?;
                false
            }
            Err(error) => match StoreError::from(error) {
                StoreError::Busy(_) => true,
                other => return Err(other),
            },
        };
        // Our own writer may have taken the lock meanwhile: not another process's.
        if !locked || self.taken.load(Ordering::Relaxed) != 0 {
            self.foreign.store(0, Ordering::Relaxed);
            return Ok(None);
        }
        let since = match self.foreign.load(Ordering::Relaxed) {
            0 => {
                let now = self.stamp();
                self.foreign.store(now, Ordering::Relaxed);
                now
            }
            since => since,
        };
        Ok(self.since(since))
    }
}
