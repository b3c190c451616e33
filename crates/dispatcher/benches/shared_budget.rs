//! One channel, one budget, at LINE's real limits (SPEC §9: three
//! instances on one channel, push and multicast: together ≥ 97 % of each
//! limit, zero 429s). Three dispatcher instances, each a process of its own
//! (this binary again, so each one's peak RSS is its own), send on one
//! PostgreSQL to the simulator at LINE's limits, every instance configured
//! with the channel's rates: a personalised push to 100,000 users (2,000
//! req/s) and a multicast to 1,000,000 (200 req/s × 500). Prints the
//! combined rate as a share of each limit (from the simulator's side), the
//! 429s, and each instance's requests, CPU and peak RSS.
//!
//! ```text
//! RENKEI_BENCH_POSTGRES_URL=$RENKEI_TEST_POSTGRES_URL cargo bench -p renkei-dispatcher --bench shared_budget
//! ```
//! Env: `RENKEI_BENCH_INSTANCES` (default 3), `RENKEI_BENCH_PUSH_USERS`
//! (default 100000), `RENKEI_BENCH_MULTICAST_USERS` (default 1000000),
//! `RENKEI_BENCH_BATCH` (deliveries and requests claimed per round, default the dispatcher's),
//! `RENKEI_BENCH_PLANNERS` (planning tasks per instance, default the dispatcher's).

use renkei_core::{Clock, SystemClock};
use renkei_dispatcher::{DispatchMetrics, DispatchSettings, Dispatcher, DispatcherStore, QuotaGuard};
use renkei_line::LineClient;
use renkei_line_sim::{LineSim, SimConfig};
use renkei_scheduler::{CampaignRunner, RunnerSettings, RunnerStore};
use renkei_store::Store;
use renkei_test_support::bench::{env_number, postgres_server, smoke_run};
use renkei_test_support::measure::{cpu_seconds_of, peak_rss_mb};
use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

// The allocator the renkei binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;
use common::{BoxError, MULTICAST_CAMPAIGN, PERSONAL, PUSH_CAMPAIGN, SAME, campaign_set, load_users};

/// Set in an instance's environment: which campaign it sends (`push` or `multicast`).
const INSTANCE_VAR: &str = "RENKEI_BENCH_INSTANCE_OF";

fn campaign_of(kind: &str) -> (&'static str, &'static str) {
    if kind == "push" { (PUSH_CAMPAIGN, PERSONAL) } else { (MULTICAST_CAMPAIGN, SAME) }
}

fn settings() -> DispatchSettings {
    let defaults = DispatchSettings::default();
    DispatchSettings {
        batch: env_number("RENKEI_BENCH_BATCH", defaults.batch),
        planners: env_number("RENKEI_BENCH_PLANNERS", defaults.planners),
        ..defaults
    }
}

/// An instance: dispatches from the database to the simulator until its
/// stdin closes, then stops gracefully and reports on stdout.
async fn run_instance(kind: &str) -> Result<(), BoxError> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let store = renkei_store::connect(&var("RENKEI_BENCH_DATABASE")?).await?;
    let line = LineClient::new(&var("RENKEI_BENCH_SIM_URL")?, &var("RENKEI_BENCH_SIM_TOKEN")?)?;
    let (yaml, template) = campaign_of(kind);
    let metrics = Arc::new(DispatchMetrics::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let dispatcher = Arc::new(Dispatcher::new(
        DispatcherStore::of(&store),
        line,
        campaign_set(yaml, template)?,
        clock,
        settings(),
        metrics.clone(),
        Arc::new(QuotaGuard::new(false, metrics.clone())),
    ));
    let token = CancellationToken::new();
    let tasks = dispatcher.clone().spawn(token.clone());
    // Ready; the parent closes stdin when the campaign is done.
    println!("ready");
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
    token.cancel();
    for task in tasks {
        task.await?;
    }
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let limiters = dispatcher.limiters();
    println!(
        "{} requests ({} recipients), {} + {} budget takes (push + multicast), {} + {} granted requests unused (late), CPU {:.1} s, peak RSS {:.0} MB",
        load(&metrics.requests_sent),
        load(&metrics.recipients_sent),
        limiters.push.takes(),
        limiters.multicast.takes(),
        limiters.push.dropped(),
        limiters.multicast.dropped(),
        cpu_seconds_of("self", false),
        peak_rss_mb()
    );
    Ok(())
}

/// Starts an instance process.
fn spawn_instance(kind: &str, database: &str, sim: &renkei_line_sim::SimHandle) -> Result<Child, BoxError> {
    Ok(Command::new(std::env::current_exe()?)
        .env(INSTANCE_VAR, kind)
        .env("RENKEI_BENCH_DATABASE", database)
        .env("RENKEI_BENCH_SIM_URL", sim.base_url())
        .env("RENKEI_BENCH_SIM_TOKEN", sim.access_token())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?)
}

/// Waits until an instance is dispatching.
fn wait_ready(child: &mut Child) -> Result<(), BoxError> {
    let stdout = child.stdout.as_mut().ok_or("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "ready" {
        return Err(format!("instance did not start: {line:?}").into());
    }
    Ok(())
}

/// Enqueues the campaign for `users`, runs `instances` processes until it
/// is done, and prints the combined rate against `limit`.
async fn run(server: &str, kind: &str, users: u64, instances: usize, limit: f64) -> Result<(), BoxError> {
    let database = renkei_test_support::create_database(server).await?;
    let store: Arc<dyn Store> = renkei_store::connect(&database).await?;
    store.migrate().await?;
    let started = Instant::now();
    load_users(&store, users).await?;
    println!(
        "{kind} to {users} users, {instances} instances: users loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Settled, as a campaign meets its database: the autovacuum of tables
    // loaded just now would run beside the sends (one multicast run of five
    // came out at 95.5 % with it).
    let pg = renkei_store::PgStore::connect(&database).await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(pg.pool()).await?;
    pg.pool().close().await;
    let (yaml, template) = campaign_of(kind);
    let campaigns = campaign_set(yaml, template)?;
    let metrics = Arc::new(DispatchMetrics::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let runner = CampaignRunner::new(
        RunnerStore::of(&store),
        campaigns.clone(),
        Arc::new(renkei_campaigns::RichMenuRules::default()),
        clock,
        RunnerSettings::default(),
        metrics,
        Arc::new(tokio::sync::Notify::new()),
    )
    .await?;
    let campaign = campaigns.get("bench").ok_or("no campaign")?;
    let fire_at = chrono::Utc::now();
    // Paused until every instance is up, so that all three start together.
    store.set_campaign_paused("bench", true, fire_at).await?;
    store.record_fire("bench", fire_at, renkei_store::FireState::Started).await?;
    let started = Instant::now();
    let enqueued = runner.fire(campaign, fire_at).await?;
    println!("  enqueued {enqueued} deliveries in {:.1} s", started.elapsed().as_secs_f64());

    // LINE's real limits; no request log so the simulator's memory stays flat.
    let sim = LineSim::spawn(SimConfig { record_requests: false, ..SimConfig::default() }).await?;
    let mut children = Vec::new();
    for _ in 0..instances {
        children.push(spawn_instance(kind, &database, &sim)?);
    }
    for child in &mut children {
        wait_ready(child)?;
    }
    store.set_campaign_paused("bench", false, chrono::Utc::now()).await?;
    let (mut first, mut last, mut accepted) = (None, Instant::now(), 0);
    // When every delivery had become a request: near the end means planning set the pace.
    let mut planned: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = sim.counters().accepted;
        if now > accepted {
            (accepted, last) = (now, Instant::now());
            first.get_or_insert(last);
        }
        if first.is_some() {
            let counts = store.campaign_counts("bench").await?;
            if counts.pending == 0 {
                planned.get_or_insert_with(Instant::now);
            }
            if counts.pending == 0 && counts.requested == 0 && sim.counters().accepted == accepted {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(1_800) {
            return Err("not done in 30 minutes".into());
        }
    }
    let seconds = first.map(|f| last.duration_since(f).as_secs_f64()).unwrap_or(f64::NAN);
    let counters = sim.counters();
    // The first acceptance starts the clock, so it is not counted in the rate.
    let rate = (counters.accepted - 1) as f64 / seconds;
    println!(
        "  combined: {} requests accepted in {seconds:.2} s = {rate:.1} req/s = {:.1} % of {limit}; 429s: {}; 409s: {}",
        counters.accepted,
        rate / limit * 100.0,
        counters.rate_limited,
        counters.conflicts
    );
    if let (Some(first), Some(planned)) = (first, planned) {
        println!("  planning done {:.2} s after the first acceptance", planned.duration_since(first).as_secs_f64());
    }
    for (i, mut child) in children.into_iter().enumerate() {
        drop(child.stdin.take());
        let mut report = String::new();
        child.stdout.take().ok_or("no stdout")?.read_to_string(&mut report)?;
        child.wait()?;
        println!("  instance {}: {}", i + 1, report.trim());
    }
    drop(store);
    renkei_test_support::drop_database(server, &database).await?;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Ok(kind) = std::env::var(INSTANCE_VAR) {
        return runtime.block_on(run_instance(&kind));
    }
    runtime.block_on(async {
        let smoke = smoke_run();
        let Some(server) = postgres_server() else {
            println!("PostgreSQL: skipped (set RENKEI_BENCH_POSTGRES_URL): instances share a channel through it");
            return Ok(());
        };
        if smoke {
            println!("smoke run (cargo test): tiny sizes; `cargo bench` runs the real sizes");
        }
        let instances = env_number("RENKEI_BENCH_INSTANCES", 3usize);
        let push_users = if smoke { 300 } else { env_number("RENKEI_BENCH_PUSH_USERS", 100_000u64) };
        let multicast_users = if smoke { 3_000 } else { env_number("RENKEI_BENCH_MULTICAST_USERS", 1_000_000u64) };
        if push_users > 0 {
            run(&server, "push", push_users, instances, 2_000.0).await?;
        }
        if multicast_users > 0 {
            run(&server, "multicast", multicast_users, instances, 200.0).await?;
        }
        println!("peak RSS of the parent (setup and the simulator): {:.0} MB", peak_rss_mb());
        Ok(())
    })
}
