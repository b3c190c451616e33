//! How long SQLite's writer has been held, found without taking it (for
//! `/healthz`): the writer pool's hooks note when its one connection is
//! handed out and given back. A lock held by another process (a
//! `renkei import` beside `renkei serve`) is found by a probe that tries the
//! file's write lock without waiting, and only while this process's writer
//! is free; while that lock stands, this process's writes queue up waiting
//! for it, so a writer taken again and again with no real pause counts as
//! held all along, and a lock another process was last seen holding still
//! counts while this process's writer is taken.

use crate::{StoreError, StoreResult, WriteState};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection, SqliteConnection, SqlitePool};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// A writer given back and taken again within this counts as held all along.
const PAUSE: Duration = Duration::from_millis(50);

/// Instants as µs after `base`, plus one (0: none).
pub(crate) struct WriterWatch {
    base: Instant,
    /// Since when the writer has been taken (0: free).
    taken: AtomicU64,
    /// When it was last given back.
    released: AtomicU64,
    /// Whether it is taken now.
    held: AtomicBool,
    /// Since when another process has held the file's write lock, as the
    /// probes last saw it (0: free).
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
            released: AtomicU64::new(0),
            held: AtomicBool::new(false),
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

    fn take(&self) {
        let now = self.stamp();
        let released = self.released.load(Ordering::Relaxed);
        let run = self.taken.load(Ordering::Relaxed);
        let paused = released == 0 || now.saturating_sub(released) > PAUSE.as_micros() as u64;
        if run == 0 || paused {
            self.taken.store(now, Ordering::Relaxed);
        }
        self.held.store(true, Ordering::Relaxed);
    }

    fn give_back(&self) {
        self.held.store(false, Ordering::Relaxed);
        self.released.store(self.stamp(), Ordering::Relaxed);
    }

    /// `options` with hooks that keep the watch.
    pub fn hooks(self: &Arc<Self>, options: SqlitePoolOptions) -> SqlitePoolOptions {
        let (connected, acquired, released) = (self.clone(), self.clone(), self.clone());
        options
            .after_connect(move |_, _| {
                connected.take();
                Box::pin(async { Ok(()) })
            })
            .before_acquire(move |_, _| {
                acquired.take();
                Box::pin(async { Ok(true) })
            })
            .after_release(move |_, _| {
                released.give_back();
                Box::pin(async { Ok(true) })
            })
    }

    /// Whether the writer is taken now, and since when (counting pauses
    /// shorter than [`PAUSE`] as held).
    fn taken_since(&self, writer: &SqlitePool) -> Option<u64> {
        let taken = self.taken.load(Ordering::Relaxed);
        // A connection closed while held never comes back through `after_release`.
        let in_use = writer.size() > 0 && writer.num_idle() == 0;
        (taken != 0 && in_use && self.held.load(Ordering::Relaxed)).then_some(taken)
    }

    /// Whether the writer is held, in this process (blocked once held for
    /// [`WriteState::BLOCKED_AFTER`]) or by another (blocked: this process
    /// cannot write at all meanwhile).
    pub async fn state(&self, writer: &SqlitePool) -> StoreResult<WriteState> {
        if let Some(taken) = self.taken_since(writer) {
            let held = WriteState::held(self.since(taken));
            let foreign = self.since(self.foreign.load(Ordering::Relaxed));
            return Ok(match foreign {
                // Another process's lock, as last seen: this writer waits for it.
                Some(foreign) if !held.blocked => WriteState { blocked: true, ..WriteState::held(Some(foreign)) },
                _ => held,
            });
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
        if !locked || self.held.load(Ordering::Relaxed) {
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
