//! How long LINE's webhook waits for its 200 while a member import runs
//! (requirement: < 2 s, always), and what other writes get meanwhile
//! (200, or 503 `store_busy` within the write wait).
//!
//! ```text
//! RENKEI_BENCH_POSTGRES_URL=$RENKEI_TEST_POSTGRES_URL cargo bench --bench webhook_wait
//! ```
//! Without `RENKEI_BENCH_POSTGRES_URL` (or `RENKEI_TEST_POSTGRES_URL`) only
//! SQLite runs. Env: `RENKEI_BENCH_MEMBERS` (imported members, default
//! 100000), `RENKEI_BENCH_RATE` (webhooks per second, default 20).
//!
//! The whole `renkei serve` (`Application::build`, every role) runs on a
//! fresh store; `renkei import members` runs in the same process (the
//! import function the CLI calls, one transaction), its CSV carrying a
//! `line_user_id` per member. Meanwhile signed follow webhooks go to
//! `POST /webhook/line` open-loop at a fixed rate, and one `POST /v1/events`
//! a second. Figures are from the import's start (its validation pass
//! included) to its commit, and from 3 s of an idle server before it.

use renkei::app::Application;
use renkei::config::{Config, Secret};
use renkei_core::{Clock, SystemClock};
use renkei_ingest::import::{NoProgress, import_members};
use renkei_store::{PgStore, Store, StoreOptions};
use renkei_test_support as test_support;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const KEY: &str = "bench-webhook-key";
const SECRET: &str = "bench-webhook-channel-secret";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn members_csv(path: &Path, count: usize) -> Result<(), BoxError> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(file, "member_id,line_user_id,rank,points:number")?;
    for n in 0..count {
        writeln!(file, "m{n},U{:032x},{},{}", 1_000_000 + n, ["gold", "silver", "bronze"][n % 3], n % 1000)?;
    }
    file.flush()?;
    Ok(())
}

/// Nearest-rank percentiles, in milliseconds.
fn summary(label: &str, mut values: Vec<f64>) -> String {
    if values.is_empty() {
        return format!("  {label:<34} no samples");
    }
    values.sort_by(f64::total_cmp);
    let at = |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    format!(
        "  {label:<34} n={:<5} p50 {:>7.1}  p99 {:>7.1}  max {:>7.1} ms",
        values.len(),
        at(0.50),
        at(0.99),
        values[values.len() - 1]
    )
}

struct Server {
    base: String,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(store: Arc<dyn Store>, url: &str) -> Result<Server, BoxError> {
    let mut config = Config::load_with_env(None, &[])?;
    config.server.bind = ([127, 0, 0, 1], 0).into();
    config.server.api_keys = vec![Secret::from(KEY)];
    config.database.url = url.to_string();
    config.line.channel_secret = Secret::from(SECRET);
    let nowhere = std::env::temp_dir().join(format!("renkei-bench-none-{}", uuid::Uuid::new_v4().simple()));
    config.paths.campaigns = nowhere.join("campaigns");
    config.paths.rich_menus = nowhere.join("rich_menus.yaml");
    config.paths.replies = nowhere.join("replies");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let app = Application::build(&config, store, clock).await.map_err(|e| format!("{e:#}"))?;
    let base = format!("http://{}", app.local_addr());
    if let Some(evaluator) = app.evaluator() {
        tokio::spawn(async move { evaluator.recomputed().await });
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    Ok(Server { base, http: renkei::http_client(), _stop: stop })
}

/// One signed follow webhook; its answer's status and latency (ms).
async fn webhook(base: String, http: reqwest::Client, n: usize) -> (u16, f64) {
    let body = json!({"destination": "Ubot", "events": [{
        "type": "follow", "mode": "active", "timestamp": 1_764_000_000_000_i64, "webhookEventId": format!("W{n}"),
        "replyToken": format!("r{n}"), "source": {"type": "user", "userId": format!("U{n:032x}")},
        "deliveryContext": {"isRedelivery": false}}]})
    .to_string();
    let signature = renkei_line::sign(SECRET, body.as_bytes());
    let started = Instant::now();
    let sent = http.post(format!("{base}/webhook/line")).header("x-line-signature", signature);
    let status = match sent.header("content-type", "application/json").body(body).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    };
    (status, started.elapsed().as_secs_f64() * 1000.0)
}

async fn event(base: String, http: reqwest::Client, n: usize) -> (u16, f64) {
    let body = json!({"events": [{"event_id": format!("bench-{n}"), "type": "purchase", "member_id": "m1",
        "occurred_at": "2026-11-23T10:00:00Z"}]});
    let started = Instant::now();
    let sent = http.post(format!("{base}/v1/events")).bearer_auth(KEY).json(&body).send().await;
    (sent.map_or(0, |r| r.status().as_u16()), started.elapsed().as_secs_f64() * 1000.0)
}

/// Webhooks at `rate`/s (and an event a second) until `done` says stop.
async fn load(server: &Server, rate: f64, first: usize, done: impl Fn() -> bool) -> (Vec<(u16, f64)>, Vec<(u16, f64)>) {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = tokio::time::Instant::now();
    let (mut hooks, mut events) = (Vec::new(), Vec::new());
    let per_event = rate.round().max(1.0) as usize;
    let mut n = 0;
    while !done() {
        tokio::time::sleep_until(started + interval * n as u32).await;
        hooks.push(tokio::spawn(webhook(server.base.clone(), server.http.clone(), first + n)));
        if n % per_event == 0 {
            events.push(tokio::spawn(event(server.base.clone(), server.http.clone(), first + n)));
        }
        n += 1;
    }
    let mut out = (Vec::new(), Vec::new());
    for task in hooks {
        out.0.push(task.await.unwrap_or((0, f64::NAN)));
    }
    for task in events {
        out.1.push(task.await.unwrap_or((0, f64::NAN)));
    }
    out
}

fn report(label: &str, samples: &[(u16, f64)]) -> String {
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for (status, _) in samples {
        *by_status.entry(*status).or_default() += 1;
    }
    let statuses = by_status.iter().map(|(s, n)| format!("{s}×{n}")).collect::<Vec<_>>().join(" ");
    format!("{}  [{statuses}]", summary(label, samples.iter().map(|s| s.1).collect()))
}

async fn run(name: &str, store: Arc<dyn Store>, url: &str, members: usize, rate: f64) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("members.csv");
    members_csv(&file, members)?;
    let server = serve(store.clone(), url).await?;

    let idle_until = Instant::now() + Duration::from_secs(if smoke_run() { 1 } else { 3 });
    let (idle, _) = load(&server, rate, 0, || Instant::now() >= idle_until).await;

    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let import = {
        let (store, file, finished) = (store.clone(), file.clone(), finished.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = import_members(store, &file, Arc::new(NoProgress), chrono::Utc::now()).await;
            finished.store(true, std::sync::atomic::Ordering::Relaxed);
            (outcome, started.elapsed())
        })
    };
    let (hooks, events) = load(&server, rate, 1_000_000, || finished.load(std::sync::atomic::Ordering::Relaxed)).await;
    let (outcome, took) = import.await?;
    let outcome = outcome.map_err(|e| format!("import: {e}"))?;
    println!(
        "{name}: import of {members} members ({} created, {} linked) took {:.1} s",
        outcome.created,
        outcome.linked,
        took.as_secs_f64()
    );
    println!("{}", report("webhook, idle server", &idle));
    println!("{}", report("webhook, during the import", &hooks));
    println!("{}", report("POST /v1/events, during the import", &events));
    Ok(())
}

/// `cargo test --all-targets` runs this without `--bench`: a small smoke
/// run that proves it works, not a measurement.
fn smoke_run() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let members = if smoke_run() { 500 } else { env_number("RENKEI_BENCH_MEMBERS", 100_000) };
    let rate = env_number("RENKEI_BENCH_RATE", 20) as f64;
    let sqlite = test_support::sqlite().await?;
    run("sqlite", sqlite.store.clone(), &sqlite.url, members, rate).await?;
    let pg_server = std::env::var("RENKEI_BENCH_POSTGRES_URL").or_else(|_| std::env::var("RENKEI_TEST_POSTGRES_URL"));
    match pg_server {
        Ok(server) if !server.is_empty() => {
            let url = test_support::create_database(&server).await?;
            let store: Arc<dyn Store> = Arc::new(PgStore::connect_with(&url, StoreOptions::default()).await?);
            store.migrate().await?;
            run("postgres", store, &url, members, rate).await?;
            test_support::drop_database(&server, &url).await?;
        }
        _ => println!("postgres: skipped (set RENKEI_BENCH_POSTGRES_URL)"),
    }
    Ok(())
}
