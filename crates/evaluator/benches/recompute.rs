//! Full segment recompute benchmark (a performance target: 1M linked users, 20M events,
//! the example segments, ≤ 20 s on PostgreSQL).
//!
//! ```text
//! RENKEI_TEST_POSTGRES_URL=postgres://renkei@127.0.0.1:55432/postgres \
//!   cargo bench -p renkei-evaluator --bench recompute
//! # the performance target's size (PostgreSQL only; loading takes a few minutes):
//! RENKEI_BENCH_USERS=1000000 RENKEI_BENCH_EVENTS=20000000 RENKEI_BENCH_BACKENDS=postgres \
//!   RENKEI_BENCH_POSTGRES_URL=postgres://renkei@127.0.0.1:55432/postgres \
//!   cargo bench -p renkei-evaluator --bench recompute
//! ```
//! Env: `RENKEI_BENCH_USERS` (default 100000), `RENKEI_BENCH_EVENTS` (default
//! 2000000), `RENKEI_BENCH_BACKENDS` (default `postgres,sqlite`),
//! `RENKEI_BENCH_PAGE` (users per page, default 5000), `RENKEI_BENCH_KEEP_DATABASE`
//! (a PostgreSQL database URL: loaded on the first run and kept, reused after),
//! `RENKEI_BENCH_POSTMASTER_PID` (a local server's postmaster: prints its CPU
//! too), `RENKEI_BENCH_PROGRESS` (prints time and CPU every 100,000 users).

use chrono::{DateTime, Duration, Utc};
use renkei_core::{LineUserId, SystemClock};
use renkei_evaluator::{Cause, EngineStore, Evaluator, MembershipEngine};
use renkei_segments::SegmentSet;
use renkei_store::{PendingStore, PgStore, SqliteStore, Store};
use renkei_test_support as test_support;
use renkei_test_support::Rng;
use renkei_test_support::measure::{cpu_seconds, peak_rss_mb, postgres_cpu_seconds};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

// The allocator the renkei binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Config {
    users: u64,
    events: u64,
    page: u32,
}

fn line_user(i: u64) -> String {
    format!("U{i:032x}")
}

fn member_attributes(rng: &mut Rng, now: DateTime<Utc>) -> String {
    let rank = ["bronze", "silver", "gold", "platinum"][rng.below(4) as usize];
    let registered = now - Duration::days(rng.below(400) as i64);
    format!(
        r#"{{"rank":"{rank}","birthday":"{:04}-{:02}-{:02}","registered_at":"{}"}}"#,
        1950 + rng.below(55),
        1 + rng.below(12),
        1 + rng.below(28),
        registered.to_rfc3339()
    )
}

/// One event row: (type, member_id, occurred_at, properties).
fn event_row(rng: &mut Rng, users: u64, now: DateTime<Utc>) -> (&'static str, String, DateTime<Utc>, String) {
    let user = rng.below(users);
    let occurred = now - Duration::seconds(rng.below(120 * 86_400) as i64);
    let (kind, props) = match rng.below(10) {
        0..=2 => ("purchase", format!(r#"{{"amount":{},"cart_id":"c{}"}}"#, 500 + rng.below(20_000), rng.below(8))),
        3..=4 => ("cart_add", format!(r#"{{"cart_id":"c{}","sku":"s{}"}}"#, rng.below(8), rng.below(1000))),
        5..=6 => ("store_visit", format!(r#"{{"store":"st{}"}}"#, rng.below(50))),
        7 => ("campaign_entry", r#"{"campaign_id":"spring_2026"}"#.to_string()),
        _ => ("page_view", format!(r#"{{"path":"/p/{}"}}"#, rng.below(500))),
    };
    (kind, format!("m{user}"), occurred, props)
}

async fn load_postgres(store: &PgStore, config: &Config, now: DateTime<Utc>) -> Result<(), BoxError> {
    let mut conn = store.pool().acquire().await?;
    let mut rng = Rng(1);
    let mut copy = conn.copy_in_raw("COPY members (member_id, attributes, created_at, updated_at) FROM STDIN").await?;
    let mut buf = String::new();
    for i in 0..config.users {
        buf.push_str(&format!("m{i}\t{}\t{now}\t{now}\n", member_attributes(&mut rng, now)));
        if buf.len() > 1 << 20 {
            copy.send(std::mem::take(&mut buf).into_bytes()).await?;
        }
    }
    copy.send(std::mem::take(&mut buf).into_bytes()).await?;
    copy.finish().await?;

    let mut copy = conn.copy_in_raw("COPY links (member_id, line_user_id, method, linked_at) FROM STDIN").await?;
    for i in 0..config.users {
        buf.push_str(&format!("m{i}\t{}\timport\t{now}\n", line_user(i)));
        if buf.len() > 1 << 20 {
            copy.send(std::mem::take(&mut buf).into_bytes()).await?;
        }
    }
    copy.send(std::mem::take(&mut buf).into_bytes()).await?;
    copy.finish().await?;

    // 5 % of users blocked the account.
    let mut copy = conn.copy_in_raw("COPY friendships (line_user_id, following, changed_at) FROM STDIN").await?;
    for i in (0..config.users).filter(|i| i % 20 == 0) {
        buf.push_str(&format!("{}\tf\t{now}\n", line_user(i)));
    }
    copy.send(std::mem::take(&mut buf).into_bytes()).await?;
    copy.finish().await?;

    let mut copy =
        conn.copy_in_raw("COPY events (type, member_id, occurred_at, properties, received_at) FROM STDIN").await?;
    for _ in 0..config.events {
        let (kind, member, occurred, props) = event_row(&mut rng, config.users, now);
        buf.push_str(&format!("{kind}\t{member}\t{occurred}\t{props}\t{now}\n"));
        if buf.len() > 1 << 22 {
            copy.send(std::mem::take(&mut buf).into_bytes()).await?;
        }
    }
    copy.send(std::mem::take(&mut buf).into_bytes()).await?;
    copy.finish().await?;
    sqlx::query("VACUUM ANALYZE").execute(&mut *conn).await?;
    Ok(())
}

async fn load_sqlite(store: &SqliteStore, config: &Config, now: DateTime<Utc>) -> Result<(), BoxError> {
    let at = now.timestamp_micros();
    let mut rng = Rng(1);
    let mut tx = store.writer_pool().begin().await?;
    for i in 0..config.users {
        let member = format!("m{i}");
        sqlx::query("INSERT INTO members (member_id, attributes, created_at, updated_at) VALUES (?, ?, ?, ?)")
            .bind(&member)
            .bind(member_attributes(&mut rng, now))
            .bind(at)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO links (member_id, line_user_id, method, linked_at) VALUES (?, ?, 'import', ?)")
            .bind(&member)
            .bind(line_user(i))
            .bind(at)
            .execute(&mut *tx)
            .await?;
        if i % 20 == 0 {
            sqlx::query("INSERT INTO friendships (line_user_id, following, changed_at) VALUES (?, 0, ?)")
                .bind(line_user(i))
                .bind(at)
                .execute(&mut *tx)
                .await?;
        }
    }
    for _ in 0..config.events {
        let (kind, member, occurred, props) = event_row(&mut rng, config.users, now);
        sqlx::query(
            "INSERT INTO events (type, member_id, occurred_at, properties, received_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(kind)
        .bind(member)
        .bind(occurred.timestamp_micros())
        .bind(props)
        .bind(at)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(store.writer_pool()).await?;
    Ok(())
}

const SHIPPED_SEGMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/segments");

fn shipped_engine(store: &Arc<dyn Store>, config: &Config) -> Result<MembershipEngine, BoxError> {
    let dir = SHIPPED_SEGMENTS;
    let segments = SegmentSet::load_dir(dir).map_err(|d| format!("{} segment problems in {dir}", d.len()))?;
    Ok(engine_of(store, config, segments))
}

fn engine_of(store: &Arc<dyn Store>, config: &Config, segments: SegmentSet) -> MembershipEngine {
    MembershipEngine::new(EngineStore::of(store), Arc::new(segments), Arc::new(SystemClock), chrono_tz::Asia::Tokyo)
        .with_page_size(config.page)
}

/// The shipped segments with `from` replaced by `to` in file `file`.
fn edited_engine(
    store: &Arc<dyn Store>,
    config: &Config,
    (file, from, to): (&str, &str, &str),
) -> Result<MembershipEngine, BoxError> {
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(SHIPPED_SEGMENTS)? {
        let path = entry?.path();
        let mut text = std::fs::read_to_string(&path)?;
        if path.file_name().is_some_and(|name| name == file) {
            assert!(text.contains(from), "{file} has no `{from}` to edit");
            text = text.replace(from, to);
        }
        sources.push((path, text));
    }
    let segments =
        SegmentSet::from_sources(sources).map_err(|d| format!("{} problems in the edited segments", d.len()))?;
    Ok(engine_of(store, config, segments))
}

async fn measure(name: &str, store: Arc<dyn Store>, config: &Config) -> Result<(), BoxError> {
    let engine = shipped_engine(&store, config)?;
    let rss_before = peak_rss_mb();
    let (cpu_before, pg_before) = (cpu_seconds(), postgres_cpu_seconds());
    let report = engine.recompute_all(progress_printer()).await?;
    let secs = report.elapsed.as_secs_f64();
    println!(
        "{name}: recompute {} users, {} events in {secs:.2} s = {:.0} users/s, {:.0} events/s; {} transitions; \
         peak RSS {:.0} MB (before recompute {:.0} MB); renkei CPU {:.1} s",
        report.users,
        report.events,
        report.users as f64 / secs,
        report.events as f64 / secs,
        report.transitions,
        peak_rss_mb(),
        rss_before,
        cpu_seconds() - cpu_before,
    );
    print_postgres_cpu(name, pg_before);
    // Again with nothing to change: the cost of reading and evaluating alone.
    let (cpu_before, pg_before) = (cpu_seconds(), postgres_cpu_seconds());
    let again = engine.recompute_all(progress_printer()).await?;
    let secs = again.elapsed.as_secs_f64();
    println!(
        "{name}: second recompute (no changes to write) {secs:.2} s = {:.0} users/s, {:.0} events/s; {} transitions; \
         renkei CPU {:.1} s",
        again.users as f64 / secs,
        again.events as f64 / secs,
        again.transitions,
        cpu_seconds() - cpu_before,
    );
    print_postgres_cpu(name, pg_before);
    // Per-event cost: one real-time re-evaluation of a random user.
    let mut rng = Rng(7);
    let samples = 500;
    let started = Instant::now();
    for _ in 0..samples {
        let user = LineUserId::parse(&line_user(rng.below(config.users)))?;
        engine.evaluate_user(&user, Cause::Event).await?;
    }
    let per = started.elapsed().as_secs_f64() / samples as f64;
    println!("{name}: evaluate_user (real-time path, one user) {:.3} ms average over {samples}", per * 1000.0);
    measure_restart(name, &store, config).await
}

/// A restart with unchanged segments (issue 13 item 4): a first start
/// recomputes and leaves its mark; the next start's evaluator is ready
/// once it has checked the tallies and read the mark. Then restarts with
/// one segment edited, which recompute that segment and its dependents.
async fn measure_restart(name: &str, store: &Arc<dyn Store>, config: &Config) -> Result<(), BoxError> {
    let pending: Arc<dyn PendingStore> = store.clone();
    let started = Instant::now();
    let first = Evaluator::start(Arc::new(shipped_engine(store, config)?.with_tallies().await?), pending.clone());
    first.clone().startup_recompute(CancellationToken::new()).await;
    first.stop().await;
    println!(
        "{name}: first start (no mark: totals rebuilt, every segment recomputed) done in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let engine = Arc::new(shipped_engine(store, config)?.with_tallies().await?);
    let second = Evaluator::start(engine, pending.clone());
    second.clone().startup_recompute(CancellationToken::new()).await;
    println!(
        "{name}: restart with unchanged segments: evaluator ready in {:.3} s ({} recomputes; the first start ran {})",
        started.elapsed().as_secs_f64(),
        second.recomputes(),
        first.recomputes(),
    );
    second.stop().await;
    // Restarts with one segment edited: a leaf, then a base another segment uses.
    let edits = [
        ("store_visitors.yaml", "within: 30d", "within: 14d"),
        ("gold_members.yaml", "in: [gold, platinum]", "in: [platinum]"),
    ];
    for edit in edits {
        let started = Instant::now();
        let engine = Arc::new(edited_engine(store, config, edit)?.with_tallies().await?);
        let edited = Evaluator::start(engine, pending.clone());
        edited.clone().startup_recompute(CancellationToken::new()).await;
        println!(
            "{name}: restart with {} edited: its recompute done in {:.3} s ({} recomputes)",
            edit.0,
            started.elapsed().as_secs_f64(),
            edited.recomputes(),
        );
        edited.stop().await;
    }
    Ok(())
}

/// The database's CPU since `before`, when `RENKEI_BENCH_POSTMASTER_PID`
/// names a local server's postmaster.
fn print_postgres_cpu(name: &str, before: Option<(f64, f64)>) {
    if let (Some((clients, other)), Some((clients_now, other_now))) = (before, postgres_cpu_seconds()) {
        println!(
            "{name}:   PostgreSQL CPU {:.1} s in the bench's connections, {:.1} s in its other processes",
            clients_now - clients,
            other_now - other
        );
    }
}

/// With `RENKEI_BENCH_PROGRESS` set, prints time and renkei CPU every 100,000 users.
fn progress_printer() -> impl FnMut(&renkei_evaluator::RecomputeProgress) + Send {
    let (verbose, started, cpu) = (std::env::var_os("RENKEI_BENCH_PROGRESS").is_some(), Instant::now(), cpu_seconds());
    let mut next = 100_000;
    move |done| {
        if verbose && done.users >= next {
            next += 100_000;
            let (secs, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
            println!("  {} users at {secs:.1} s, renkei CPU {cpu:.1} s", done.users);
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A full run under `cargo bench`; a small smoke run under `cargo test` (CI).
fn smoke_run() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let config = Config {
        users: if smoke_run() { 300 } else { env_u64("RENKEI_BENCH_USERS", 100_000).max(1) },
        events: if smoke_run() { 6_000 } else { env_u64("RENKEI_BENCH_EVENTS", 2_000_000) },
        page: env_u64("RENKEI_BENCH_PAGE", 5_000) as u32,
    };
    let backends = std::env::var("RENKEI_BENCH_BACKENDS").unwrap_or_else(|_| "postgres,sqlite".to_string());
    println!(
        "recompute bench: {} linked users, {} events, page {} (target size: RENKEI_BENCH_USERS=1000000 \
         RENKEI_BENCH_EVENTS=20000000 RENKEI_BENCH_BACKENDS=postgres)",
        config.users, config.events, config.page
    );
    let now = Utc::now();
    if backends.contains("postgres") {
        let server = std::env::var("RENKEI_BENCH_POSTGRES_URL")
            .or_else(|_| std::env::var(test_support::POSTGRES_URL_VAR))
            .ok()
            .filter(|u| !u.is_empty());
        match server {
            Some(server) => {
                // RENKEI_BENCH_KEEP_DATABASE=URL: load into that database once and
                // keep it, so later runs measure the recompute alone.
                let kept = std::env::var("RENKEI_BENCH_KEEP_DATABASE").ok().filter(|u| !u.is_empty());
                let url = match &kept {
                    Some(url) => url.clone(),
                    None => test_support::create_database(&server).await?,
                };
                let store = PgStore::connect(&url).await?;
                store.migrate().await?;
                let loaded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM links").fetch_one(store.pool()).await?;
                if loaded == 0 {
                    let started = Instant::now();
                    load_postgres(&store, &config, now).await?;
                    println!("postgres: loaded in {:.1} s (COPY)", started.elapsed().as_secs_f64());
                } else {
                    println!("postgres: reusing {loaded} linked users already in {url}");
                }
                measure("postgres", Arc::new(store), &config).await?;
                if kept.is_none() {
                    test_support::drop_database(&server, &url).await?;
                }
            }
            None => println!("postgres: skipped (set RENKEI_BENCH_POSTGRES_URL or RENKEI_TEST_POSTGRES_URL)"),
        }
    }
    if backends.contains("sqlite") {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let store = SqliteStore::connect(&url).await?;
        store.migrate().await?;
        let started = Instant::now();
        load_sqlite(&store, &config, now).await?;
        println!("sqlite: loaded in {:.1} s", started.elapsed().as_secs_f64());
        measure("sqlite", Arc::new(store), &config).await?;
    }
    Ok(())
}
