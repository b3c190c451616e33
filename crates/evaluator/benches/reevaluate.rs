//! Re-evaluation after one event, for users with short and very long
//! histories (issue 17: the cost must not grow with the history).
//!
//! ```text
//! RENKEI_TEST_POSTGRES_URL=postgres://renkei@127.0.0.1:55432/postgres \
//!   cargo bench -p renkei-evaluator --bench reevaluate
//! ```
//! Env: `RENKEI_BENCH_HISTORIES` (default `10,10000,1000000`: one linked
//! user per size), `RENKEI_BENCH_BACKENDS` (default `postgres,sqlite`),
//! `RENKEI_BENCH_SAMPLES` (re-evaluations measured per user, default 200),
//! `RENKEI_BENCH_RECENT` (how many of each history fall in the last 30 days,
//! default 10; the rest lie 1 to 5 years back).
//!
//! Each user's history mixes the shipped segments' event types
//! (`store_visit`, `purchase`, `cart_add`); the shipped segments are
//! evaluated, with three more whose conditions have no window but a filter
//! or a sum/max ([`EXTRA_SEGMENTS`]), all kept as running tallies. One
//! sample: a `store_visit` event is stored, then the user is re-evaluated on
//! the real-time path (`evaluate_user`); the re-evaluation alone is timed
//! (with its commit), after PostgreSQL has vacuumed, analysed and
//! checkpointed the loaded history.

use chrono::{DateTime, Duration, Utc};
use renkei_core::{LineUserId, MemberId, NewEvent, SystemClock};
use renkei_evaluator::{Cause, EngineStore, MembershipEngine};
use renkei_segments::SegmentSet;
use renkei_store::Store;
use renkei_test_support as test_support;
use renkei_test_support::{Backend, Rng};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const TYPES: [&str; 3] = ["store_visit", "purchase", "cart_add"];

/// Whole-history conditions with a filter or an aggregate of a property.
const EXTRA_SEGMENTS: [(&str, &str); 3] = [
    (
        "lifetime_value.yaml",
        "id: lifetime_value\nname: l\nrule:\n  event: purchase\n  sum: {property: amount, gte: 1000000}\n",
    ),
    (
        "shibuya_regulars.yaml",
        "id: shibuya_regulars\nname: s\nrule:\n  event: store_visit\n  where: {store: shibuya}\n  count: {gte: 50}\n",
    ),
    (
        "big_ticket.yaml",
        "id: big_ticket\nname: b\nrule:\n  event: purchase\n  where: {store: {ne: online}}\n  max: {property: amount, gt: 20000}\n",
    ),
];

/// The shipped segments and [`EXTRA_SEGMENTS`].
fn segments() -> Result<SegmentSet, BoxError> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/segments");
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            sources.push((path.clone(), std::fs::read_to_string(&path)?));
        }
    }
    sources.extend(EXTRA_SEGMENTS.iter().map(|(file, text)| (file.into(), text.to_string())));
    SegmentSet::from_sources(sources).map_err(|d| format!("{} segment problems in {dir}", d.len()).into())
}
const STORES: [&str; 3] = ["shibuya", "umeda", "online"];

fn ids(size: u64) -> Result<(MemberId, LineUserId), BoxError> {
    Ok((MemberId::parse(&format!("bench-{size}"))?, LineUserId::parse(&format!("U{size:032x}"))?))
}

/// One event of the member, with properties as ingest stores them.
fn event(rng: &mut Rng, member: &MemberId, at: DateTime<Utc>, kind: &str) -> Result<NewEvent, BoxError> {
    let value = json!({
        "type": kind,
        "member_id": member.as_str(),
        "occurred_at": at.to_rfc3339(),
        "properties": {"amount": 500 + rng.below(20_000), "cart_id": format!("C{}", rng.below(1_000)),
                       "store": STORES[rng.below(3) as usize]},
    });
    NewEvent::parse(&value).map_err(|e| format!("{e:?}").into())
}

/// A linked user with `size` events: `recent` in the last 30 days, the rest 1 to 5 years back.
async fn load_user(store: &dyn Store, size: u64, recent: u64, now: DateTime<Utc>) -> Result<(), BoxError> {
    let (member, user) = ids(size)?;
    store.link(&member, &user, renkei_core::LinkMethod::Api, now).await?;
    let mut rng = Rng(size);
    let mut batch = Vec::with_capacity(5_000);
    for i in 0..size {
        let ago = if i < recent.min(size) {
            Duration::seconds(rng.below(30 * 86_400) as i64 + 1)
        } else {
            Duration::days(365) + Duration::seconds(rng.below(4 * 365 * 86_400) as i64)
        };
        let kind = TYPES[rng.below(3) as usize];
        batch.push(event(&mut rng, &member, now - ago, kind)?);
        if batch.len() == 5_000 {
            store.insert_events(&batch, now).await?;
            batch.clear();
        }
    }
    store.insert_events(&batch, now).await?;
    Ok(())
}

/// After a large load, PostgreSQL's autovacuum, ANALYZE and checkpoint run
/// for a while and slow every commit; a user with a long history has had
/// them long since. Runs them now, before the timed samples.
async fn settle(url: &str) -> Result<(), BoxError> {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await?;
        for statement in ["VACUUM ANALYZE", "CHECKPOINT"] {
            sqlx::query(statement).execute(&pool).await?;
        }
        pool.close().await;
    }
    Ok(())
}

async fn measure(
    name: &str,
    url: &str,
    store: Arc<dyn Store>,
    sizes: &[u64],
    samples: usize,
    recent: u64,
) -> Result<(), BoxError> {
    let engine = MembershipEngine::new(
        EngineStore::of(&store),
        Arc::new(segments()?),
        Arc::new(SystemClock),
        chrono_tz::Asia::Tokyo,
    )
    .with_tallies()
    .await?;
    for &size in sizes {
        let started = Instant::now();
        load_user(store.as_ref(), size, recent, Utc::now()).await?;
        let loaded = started.elapsed().as_secs_f64();
        settle(url).await?;
        let (member, user) = ids(size)?;
        let mut rng = Rng(size + 1);
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            store.insert_events(&[event(&mut rng, &member, Utc::now(), "store_visit")?], Utc::now()).await?;
            let started = Instant::now();
            engine.evaluate_user(&user, Cause::Event).await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        let segments = engine.memberships(&user).await?;
        let started = Instant::now();
        engine.rebuild_totals().await?;
        let rebuilt = started.elapsed().as_secs_f64();
        println!(
            "{name}: user with {size} events (loaded in {loaded:.1} s): re-evaluation after one event \
             median {:.2} ms, p95 {:.2} ms, max {:.2} ms over {samples}; in {segments:?}; \
             rebuilding all totals afterwards {rebuilt:.2} s",
            at(0.5),
            at(0.95),
            at(1.0),
        );
    }
    Ok(())
}

/// A full run under `cargo bench`; a small smoke run under `cargo test` (CI).
fn smoke_run() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let sizes: Vec<u64> = match (smoke_run(), env("RENKEI_BENCH_HISTORIES")) {
        (true, _) => vec![10, 1_000],
        (false, Some(list)) => list.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        (false, None) => vec![10, 10_000, 1_000_000],
    };
    let samples = if smoke_run() { 5 } else { env("RENKEI_BENCH_SAMPLES").and_then(|s| s.parse().ok()).unwrap_or(200) };
    let recent = env("RENKEI_BENCH_RECENT").and_then(|s| s.parse().ok()).unwrap_or(10);
    let backends = env("RENKEI_BENCH_BACKENDS").unwrap_or_else(|| "postgres,sqlite".to_string());
    for (name, backend) in [("postgres", Backend::Postgres), ("sqlite", Backend::Sqlite)] {
        if !backends.contains(name) {
            continue;
        }
        match test_support::store(backend).await {
            Some(test) => measure(name, &test.url, test.store.clone(), &sizes, samples, recent).await?,
            None => println!("{name}: skipped (set RENKEI_TEST_POSTGRES_URL)"),
        }
    }
    Ok(())
}
