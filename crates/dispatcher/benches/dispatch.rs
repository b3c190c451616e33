//! Dispatch throughput against the LINE simulator at LINE's real limits
//! (a performance target: ≥ 97 % of each limit): personalised pushes (2,000 req/s) and multicast (200 req/s ×
//! 500 recipients). Prints the achieved rate as a share of the limit, the
//! 429 count and the process's peak RSS.
//!
//! ```text
//! eval "$(bash .ci/pg-start)"
//! RENKEI_BENCH_POSTGRES_URL=$RENKEI_TEST_POSTGRES_URL cargo bench -p renkei-dispatcher --bench dispatch
//! ```
//! Env: `RENKEI_BENCH_PUSH_USERS` (default 100000), `RENKEI_BENCH_MULTICAST_USERS`
//! (default 1000000), `RENKEI_BENCH_POSTGRES_URL` (else SQLite in a temp dir),
//! `RENKEI_BENCH_BATCH` (deliveries per planning round, default the dispatcher's),
//! `RENKEI_BENCH_PLANNERS` (default: the dispatcher's), `RENKEI_BENCH_PIPELINED=1` (the
//! dispatcher runs while the fire enqueues; prints fire to last accepted), `RENKEI_BENCH_KEEP_DATABASE` (a database name on that server: users loaded
//! once and reused; each run adds its deliveries), `RENKEI_BENCH_POSTMASTER_PID` (a local server's postmaster: prints its CPU too).

use chrono::Utc;
use renkei_campaigns::RichMenuRules;
use renkei_core::{Clock, SystemClock};
use renkei_dispatcher::{DispatchMetrics, DispatchSettings, Dispatcher, DispatcherStore, QuotaGuard};
use renkei_line::LineClient;
use renkei_line_sim::{LineSim, SimConfig};
use renkei_scheduler::{CampaignRunner, RunnerSettings, RunnerStore};
use renkei_store::Store;
use renkei_test_support::bench::{env_number as env_u64, smoke_run};
use renkei_test_support::measure::{cpu_seconds_of, current_rss_mb, peak_rss_mb, postgres_cpu_seconds};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

// The allocator the renkei binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{BoxError, MULTICAST_CAMPAIGN, PERSONAL, PUSH_CAMPAIGN, SAME, campaign_set, load_users};

/// What a run leaves to clean up: SQLite's directory (gone when dropped),
/// the PostgreSQL database made for it, or a kept one.
enum Scratch {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Database { server: String, url: String },
    Kept,
}

impl Scratch {
    async fn clean(self) -> Result<(), BoxError> {
        if let Scratch::Database { server, url } = self {
            renkei_test_support::drop_database(&server, &url).await?;
        }
        Ok(())
    }
}

/// The store to send from, and whether its users are already loaded.
async fn open_store(users: u64) -> Result<(Arc<dyn Store>, Scratch, &'static str, bool), BoxError> {
    match std::env::var("RENKEI_BENCH_POSTGRES_URL") {
        Ok(server) if !server.is_empty() => {
            // RENKEI_BENCH_KEEP_DATABASE=NAME: load the users into that database once and reuse them.
            let kept = std::env::var("RENKEI_BENCH_KEEP_DATABASE").ok().filter(|n| !n.is_empty());
            let url = match kept.clone() {
                Some(name) => {
                    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&server).await?;
                    let exists: bool =
                        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                            .bind(&name)
                            .fetch_one(&mut conn)
                            .await?;
                    if !exists {
                        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                            .execute(&mut conn)
                            .await?;
                    }
                    let (base, _) = server.rsplit_once('/').ok_or("RENKEI_BENCH_POSTGRES_URL has no database")?;
                    format!("{base}/{name}")
                }
                None => renkei_test_support::create_database(&server).await?,
            };
            let store = renkei_store::connect(&url).await?;
            store.migrate().await?;
            let pg = renkei_store::PgStore::connect(&url).await?;
            let linked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM links").fetch_one(pg.pool()).await?;
            pg.pool().close().await;
            let scratch = if kept.is_some() { Scratch::Kept } else { Scratch::Database { server, url } };
            Ok((store, scratch, "postgres", linked >= i64::try_from(users)?))
        }
        _ => {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            let store = renkei_store::connect(&url).await?;
            store.migrate().await?;
            Ok((store, Scratch::Dir(dir), "sqlite", false))
        }
    }
}

struct Outcome {
    requests: u64,
    recipients: u64,
    seconds: f64,
    rate_limited: u64,
}

async fn run_campaign(
    store: Arc<dyn Store>,
    campaign_yaml: &str,
    template: &str,
    users: u64,
) -> Result<(Outcome, f64), BoxError> {
    let campaigns = campaign_set(campaign_yaml, template)?;
    let rules = Arc::new(RichMenuRules::default());
    // LINE's real limits; no request log so the simulator's memory stays flat.
    let sim = LineSim::spawn(SimConfig { record_requests: false, ..SimConfig::default() }).await?;
    let line = LineClient::new(&sim.base_url(), sim.access_token())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let metrics = Arc::new(DispatchMetrics::default());
    let quota = Arc::new(QuotaGuard::new(false, metrics.clone()));
    let defaults = DispatchSettings::default();
    let settings = DispatchSettings {
        batch: env_u64("RENKEI_BENCH_BATCH", u64::from(defaults.batch)) as u32,
        planners: env_u64("RENKEI_BENCH_PLANNERS", defaults.planners as u64) as usize,
        ..defaults
    };
    let dispatcher = Arc::new(Dispatcher::new(
        DispatcherStore::of(&store),
        line,
        campaigns.clone(),
        clock.clone(),
        settings,
        metrics.clone(),
        quota,
    ));
    let runner = CampaignRunner::new(
        RunnerStore::of(&store),
        campaigns.clone(),
        rules,
        clock,
        RunnerSettings::default(),
        metrics.clone(),
        dispatcher.waker(),
    )
    .await?;
    let campaign = campaigns.get("bench").ok_or("no campaign")?;
    // Pipelined: the dispatcher runs while the fire enqueues, as in `renkei serve`.
    let pipelined = std::env::var("RENKEI_BENCH_PIPELINED").is_ok_and(|v| v == "1");
    let token = CancellationToken::new();
    let early = pipelined.then(|| dispatcher.clone().spawn(token.clone()));
    // Pipelined, the first request is made while the fire still enqueues.
    let first_made = pipelined.then(|| {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            while metrics.requests_created.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Instant::now()
        })
    });
    let fire_at = Utc::now();
    let start = Instant::now();
    let (cpu_before, pg_before) = (cpu_seconds_of("self", false), postgres_cpu_seconds());
    store.record_fire("bench", fire_at, renkei_store::FireState::Started).await?;
    let enqueued = runner.fire(campaign, fire_at).await?;
    let enqueue_seconds = start.elapsed().as_secs_f64();
    println!("  enqueued {enqueued} deliveries in {enqueue_seconds:.1} s ({:.0}/s)", enqueued as f64 / enqueue_seconds);
    let cpu = cpu_seconds_of("self", false) - cpu_before;
    if let (Some(before), Some(after)) = (pg_before, postgres_cpu_seconds()) {
        let pg = (after.0 - before.0) + (after.1 - before.1);
        println!("  CPU while enqueueing: renkei {cpu:.1} s, PostgreSQL {pg:.1} s");
    }
    assert_eq!(enqueued, users);

    let tasks = early.unwrap_or_else(|| dispatcher.clone().spawn(token.clone()));
    let fire_started = start;
    let start = Instant::now();
    let (cpu_before, pg_before) = (cpu_seconds_of("self", false), postgres_cpu_seconds());
    let mut first_request: Option<Instant> = match first_made {
        Some(task) => Some(task.await?),
        None => None,
    };
    // When planning stopped adding requests: well before the last send means LINE's rate set the pace.
    let (mut created, mut last_created) = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sent = metrics.recipients_sent.load(std::sync::atomic::Ordering::Relaxed);
        let now_created = metrics.requests_created.load(std::sync::atomic::Ordering::Relaxed);
        if first_request.is_none() && now_created > 0 {
            first_request = Some(Instant::now());
        }
        if now_created > created {
            (created, last_created) = (now_created, Instant::now());
        }
        if sent >= users {
            break;
        }
        if start.elapsed() > Duration::from_secs(1_800) {
            return Err("dispatch did not finish in 30 minutes".into());
        }
    }
    let seconds = first_request.map(|f| f.elapsed()).unwrap_or_else(|| start.elapsed()).as_secs_f64();
    let planning = first_request.map(|f| last_created.saturating_duration_since(f)).unwrap_or_default();
    println!("  planning created the last request {:.2} s after the first", planning.as_secs_f64());
    if pipelined {
        let total = fire_started.elapsed().as_secs_f64();
        println!("  fire to last accepted: {total:.2} s (target ≤ 15 s at 1,000,000)");
    }
    let rss_while_sending = current_rss_mb();
    let cpu = cpu_seconds_of("self", false) - cpu_before;
    match (pg_before, postgres_cpu_seconds()) {
        (Some(before), Some(after)) => println!(
            "  CPU while dispatching: renkei (with the simulator) {cpu:.1} s, PostgreSQL {:.1} s in the bench's connections + {:.1} s in its other processes",
            after.0 - before.0,
            after.1 - before.1
        ),
        _ => println!("  CPU while dispatching: renkei (with the simulator) {cpu:.1} s"),
    }
    token.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let counters = sim.counters();
    let seconds_of = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
    println!(
        "  planner time (summed over planners): claim {:.2} s, policy {:.2} s, commit {:.2} s",
        seconds_of(&metrics.planning_claim_micros),
        seconds_of(&metrics.planning_policy_micros),
        seconds_of(&metrics.planning_commit_micros)
    );
    Ok((
        Outcome {
            requests: metrics.requests_sent.load(std::sync::atomic::Ordering::Relaxed),
            recipients: metrics.recipients_sent.load(std::sync::atomic::Ordering::Relaxed),
            seconds,
            rate_limited: counters.rate_limited,
        },
        rss_while_sending,
    ))
}

fn main() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let smoke = smoke_run();
        if smoke {
            println!("smoke run (cargo test): tiny sizes; `cargo bench` runs the real sizes");
        }
        let push_users = if smoke { 200 } else { env_u64("RENKEI_BENCH_PUSH_USERS", 100_000) };
        let multicast_users = if smoke { 2_000 } else { env_u64("RENKEI_BENCH_MULTICAST_USERS", 1_000_000) };

        if push_users > 0 {
            let (store, scratch, backend, loaded) = open_store(push_users).await?;
            println!("personalised push to {push_users} users ({backend}, simulator at 2,000 req/s)");
            if !loaded {
                let t = Instant::now();
                load_users(&store, push_users).await?;
                println!("  loaded users in {:.1} s", t.elapsed().as_secs_f64());
            }
            let (o, rss) = run_campaign(store, PUSH_CAMPAIGN, PERSONAL, push_users).await?;
            let rate = o.requests as f64 / o.seconds;
            println!(
                "  push: {} requests in {:.2} s = {:.0} req/s = {:.1} % of 2,000; 429s: {}; RSS while sending {:.0} MB",
                o.requests,
                o.seconds,
                rate,
                rate / 20.0,
                o.rate_limited,
                rss
            );
            scratch.clean().await?;
        }
        if multicast_users > 0 {
            let (store, scratch, backend, loaded) = open_store(multicast_users).await?;
            println!("multicast to {multicast_users} users ({backend}, simulator at 200 req/s × 500)");
            if !loaded {
                let t = Instant::now();
                load_users(&store, multicast_users).await?;
                println!("  loaded users in {:.1} s", t.elapsed().as_secs_f64());
            }
            let (o, rss) = run_campaign(store, MULTICAST_CAMPAIGN, SAME, multicast_users).await?;
            let rate = o.requests as f64 / o.seconds;
            println!(
                "  multicast: {} requests ({} recipients) in {:.2} s = {:.1} req/s = {:.1} % of 200; 429s: {}; RSS while sending {:.0} MB",
                o.requests,
                o.recipients,
                o.seconds,
                rate,
                rate / 2.0,
                o.rate_limited,
                rss
            );
            scratch.clean().await?;
        }
        println!("peak RSS of the whole run (setup, simulator and dispatch in one process): {:.0} MB", peak_rss_mb());
        Ok(())
    })
}
