//! Ingest benchmark: `POST /v1/events` in batches of 1,000 realistic events
//! into PostgreSQL and SQLite, against raw PostgreSQL `COPY`s of the same rows
//! as the baselines (into `events` with its indexes, and into the lean
//! `event_inbox` the API appends to). Prints events/s for each and the
//! ratios, and on PostgreSQL when the merger had moved every event into
//! `events` (the API replies before that: see `renkei_api::merger`).
//!
//!   RENKEI_BENCH_POSTGRES_URL=postgres://renkei@127.0.0.1:55432/postgres cargo bench --bench ingest
//!
//! (RENKEI_TEST_POSTGRES_URL works too; RENKEI_BENCH_EVENTS sets the count,
//! default 300,000; RENKEI_BENCH_CONCURRENCY the parallel requests, default 4.)
//!
//! While each backend ingests, a probe GETs `/healthz` and `/metrics` every
//! 20 ms and prints their latency (p50, p99, max; the target is ≤ 100 ms
//! under full ingest load).

use bytes::Bytes;
use renkei::app::Application;
use renkei::config::{Config, Secret};
use renkei_core::{Clock, SystemClock};
use renkei_store::Store;
use renkei_test_support as test_support;
use renkei_test_support::bench::{env_number, smoke_run};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;

const BATCH: usize = 1_000;
const KEY: &str = "bench-key";

/// Deterministic, realistic events: a retail mix with JSON properties.
fn make_events(count: usize) -> Vec<Value> {
    let stores = ["shibuya", "umeda", "sapporo", "fukuoka", "online"];
    let base = chrono::DateTime::parse_from_rfc3339("2026-06-01T00:00:00+09:00").expect("base time");
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|i| {
            let r = next();
            let member = format!("M{:07}", r % 1_000_000);
            let at = (base + chrono::Duration::seconds((r % (150 * 86_400)) as i64)).to_rfc3339();
            let cart = format!("C{:08}", (r >> 20) % 5_000_000);
            let (kind, properties) = match r % 10 {
                0..=2 => ("purchase", json!({"order_id": format!("O{i:09}"), "amount": 980 + (r % 40_000), "store": stores[(r % 5) as usize], "cart_id": cart, "items": 1 + r % 4})),
                3..=6 => ("cart_add", json!({"cart_id": cart, "sku": format!("SKU-{}", r % 9_000), "price": 500 + r % 9_500, "name": "オーガニックコットン タオル"})),
                7..=8 => ("store_visit", json!({"store": stores[(r % 5) as usize], "duration_min": r % 90})),
                _ => ("reservation_created", json!({"reservation_id": format!("R{i:09}"), "reserved_at": at, "store": stores[(r % 5) as usize]})),
            };
            json!({"event_id": format!("ev-{i:09}"), "type": kind, "member_id": member, "occurred_at": at, "properties": properties})
        })
        .collect()
}

async fn spawn(store: Arc<dyn Store>, url: &str) -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut config = Config::load_with_env(None, &[]).expect("config");
    config.server.bind = ([127, 0, 0, 1], 0).into();
    config.server.api_keys = vec![Secret::from(KEY)];
    // The shipped campaigns use `track`.
    config.server.link_keys = vec![Secret::from("bench-link-key-0123456789abcdef0123456")];
    config.database.url = url.to_string();
    // Full load from one key: no rate limit.
    config.server.rate_limit_per_second = 0;
    // RENKEI_BENCH_EVALUATOR=0: without the segment engine re-evaluating the
    // users the events touch (it shares the two cores otherwise).
    config.roles.evaluator = env_number("RENKEI_BENCH_EVALUATOR", 1) != 0;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let app = Application::build(&config, store, clock).await.expect("app");
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    (base, stop)
}

/// GETs `/healthz` and `/metrics` every 20 ms until `done`; prints their latency.
async fn probe(base: String, done: Arc<std::sync::atomic::AtomicBool>, label: &'static str) {
    let http = renkei::http_client();
    let mut latencies = Vec::new();
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        for path in ["/healthz", "/metrics"] {
            let sent = Instant::now();
            let response = http.get(format!("{base}{path}")).send().await.expect("probe");
            assert_eq!(response.status(), 200, "{path}");
            let _ = response.bytes().await.expect("probe body");
            latencies.push(sent.elapsed());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    latencies.sort();
    if let (Some(max), false) = (latencies.last(), latencies.is_empty()) {
        let at = |q: usize| latencies[(latencies.len() * q / 100).min(latencies.len() - 1)];
        println!(
            "{label} /healthz and /metrics under that load: {} probes, p50 {:.1?}, p99 {:.1?}, max {max:.1?} (target ≤ 100 ms)",
            latencies.len(),
            at(50),
            at(99)
        );
    }
}

/// As [`post_all`], with [`probe`] running meanwhile.
async fn post_all_probed(base: &str, bodies: &[Bytes], concurrency: usize, events: usize, label: &'static str) -> f64 {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = tokio::spawn(probe(base.to_string(), done.clone(), label));
    let rate = post_all(base, bodies, concurrency, events).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    prober.await.expect("prober");
    rate
}

/// Sends every body with `concurrency` requests in flight; returns events/s.
async fn post_all(base: &str, bodies: &[Bytes], concurrency: usize, events: usize) -> f64 {
    let http = renkei::http_client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bodies = Arc::new(bodies.to_vec());
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (http, next, bodies, url) = (http.clone(), next.clone(), bodies.clone(), format!("{base}/v1/events"));
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let response = http
                    .post(&url)
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("send");
                assert_eq!(response.status(), 200, "batch {i}: {}", response.text().await.unwrap_or_default());
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    events as f64 / started.elapsed().as_secs_f64()
}

fn copy_text(events: &[Value]) -> Vec<u8> {
    // COPY text format: tab-separated, \N for NULL; escape backslash, tab, newline.
    fn field(out: &mut Vec<u8>, text: &str) {
        for b in text.bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                _ => out.push(b),
            }
        }
    }
    let received = chrono::Utc::now().to_rfc3339();
    let mut out = Vec::with_capacity(events.len() * 300);
    for e in events {
        for (i, key) in ["event_id", "type", "member_id"].iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            field(&mut out, e[key].as_str().unwrap_or_default());
        }
        out.extend_from_slice(b"\t\\N\t");
        field(&mut out, e["occurred_at"].as_str().unwrap_or_default());
        out.push(b'\t');
        field(&mut out, &e["properties"].to_string());
        out.push(b'\t');
        field(&mut out, &received);
        out.push(b'\n');
    }
    out
}

/// A raw `COPY` of the events into `table` of a fresh database: rows/s.
async fn copy_baseline(server: &str, events: &[Value], table: &str) -> f64 {
    let url = test_support::create_database(server).await.expect("database");
    let store = renkei_store::PgStore::connect(&url).await.expect("connect");
    store.migrate().await.expect("migrate");
    let data = copy_text(events);
    let started = Instant::now();
    let mut conn = store.pool().acquire().await.expect("connection");
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} (event_id, type, member_id, line_user_id, occurred_at, properties, received_at) FROM STDIN"
        ))
        .await
        .expect("copy in");
    for chunk in data.chunks(1 << 20) {
        copy.send(chunk).await.expect("copy data");
    }
    let rows = copy.finish().await.expect("copy finish");
    assert_eq!(rows as usize, events.len());
    let rate = events.len() as f64 / started.elapsed().as_secs_f64();
    drop(conn);
    test_support::drop_database(server, &url).await.expect("drop the baseline's database");
    rate
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let smoke = smoke_run();
        if smoke {
            println!("smoke run (cargo test): tiny sizes; `cargo bench` runs the real sizes");
        }
        let count = if smoke { 5_000 } else { env_number("RENKEI_BENCH_EVENTS", 300_000) };
        let concurrency = env_number("RENKEI_BENCH_CONCURRENCY", 4);
        println!("ingest benchmark: {count} events, batches of {BATCH}, {concurrency} requests in flight");
        let events = make_events(count);
        let bodies: Vec<Bytes> = events
            .chunks(BATCH)
            .map(|chunk| Bytes::from(serde_json::to_vec(&json!({"events": chunk})).expect("json")))
            .collect();
        let mb = bodies.iter().map(|b| b.len()).sum::<usize>() as f64 / 1e6;
        println!("payload: {mb:.1} MB of JSON ({:.0} bytes/event)", mb * 1e6 / count as f64);

        let sqlite = test_support::sqlite().await.expect("sqlite");
        let (base, stop) = spawn(sqlite.store.clone(), &sqlite.url).await;
        let sqlite_rate = post_all_probed(&base, &bodies, concurrency, count, "SQLite").await;
        let _ = stop.send(());
        assert_eq!(sqlite.store.counts().await.expect("counts").events as usize, count);
        println!("SQLite     POST /v1/events: {sqlite_rate:>10.0} events/s");

        let server =
            std::env::var("RENKEI_BENCH_POSTGRES_URL").or_else(|_| std::env::var(test_support::POSTGRES_URL_VAR)).ok();
        let Some(server) = server else {
            println!("PostgreSQL: skipped (set RENKEI_BENCH_POSTGRES_URL)");
            return;
        };
        let copy_rate = copy_baseline(&server, &events, "events").await;
        println!("PostgreSQL raw COPY into events:      {copy_rate:>10.0} events/s (baseline)");
        let inbox_rate = copy_baseline(&server, &events, "event_inbox").await;
        println!("PostgreSQL raw COPY into event_inbox: {inbox_rate:>10.0} events/s (baseline)");
        let url = test_support::create_database(&server).await.expect("database");
        let pg = Arc::new(renkei_store::PgStore::connect(&url).await.expect("connect"));
        let store: Arc<dyn Store> = pg.clone();
        store.migrate().await.expect("migrate");
        let (base, stop) = spawn(store.clone(), &url).await;
        let started = Instant::now();
        let pg_rate = post_all_probed(&base, &bodies, concurrency, count, "PostgreSQL").await;
        let replied = started.elapsed();
        println!("PostgreSQL POST /v1/events: {pg_rate:>10.0} events/s (replied to all in {replied:.2?})");
        // A cheap look every 50 ms (counting `events` each time would load the database).
        while sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM event_inbox)")
            .fetch_one(pg.pool())
            .await
            .expect("inbox")
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let merged = started.elapsed();
        let _ = stop.send(());
        assert_eq!(store.counts().await.expect("counts").events as usize, count);
        println!(
            "PostgreSQL all merged into events {merged:.2?} after the first request: {:.0} events/s end to end",
            count as f64 / merged.as_secs_f64()
        );
        println!("ratio PostgreSQL API / COPY into events: {:.2}", pg_rate / copy_rate);
        println!("ratio SQLite API / PostgreSQL COPY: {:.2}", sqlite_rate / copy_rate);
        println!("target (the product's performance targets): ≥ 100,000 events/s into PostgreSQL");
        test_support::drop_database(&server, &url).await.expect("drop the benchmark's database");
    });
}
