//! Member import benchmark: `renkei import members` (the same function the
//! CLI runs: validate the whole file, then stream it into one transaction) of
//! a CSV of linked members, into SQLite and PostgreSQL. Prints members/s,
//! the time and the peak RSS. Target: 1,000,000 linked members into
//! PostgreSQL in ≤ 20 s. Then a running evaluator re-evaluates the
//! imported users from the change feed (issue 13 item 3): how long that takes.
//!
//!   RENKEI_BENCH_POSTGRES_URL=postgres://renkei@127.0.0.1:55432/postgres cargo bench --bench import
//!
//! (RENKEI_TEST_POSTGRES_URL works too; RENKEI_BENCH_MEMBERS sets the count,
//! default 1,000,000; RENKEI_BENCH_BACKENDS=sqlite,postgres picks backends.)

use chrono::Utc;
use renkei_ingest::import::NoProgress;
use renkei_store::Store;
use renkei_test_support as test_support;
use renkei_test_support::bench::{env_number, postgres_server, smoke_run};
use renkei_test_support::measure::peak_rss_mb;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// A CSV of `count` members, each linked to its own LINE user, with typed attributes.
fn write_csv(path: &Path, count: usize) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("csv"));
    writeln!(out, "member_id,line_user_id,name,rank,points:number,birthday:date").expect("write");
    let ranks = ["bronze", "silver", "gold", "platinum"];
    for i in 0..count {
        writeln!(
            out,
            "m{i},U{i:032x},会員{i},{},{},19{:02}-{:02}-{:02}",
            ranks[i % 4],
            i % 5_000,
            50 + i % 50,
            1 + i % 12,
            1 + i % 28
        )
        .expect("write");
    }
    out.flush().expect("flush");
}

async fn import(store: Arc<dyn Store>, csv: &Path, count: usize, backend: &str) {
    let started = Instant::now();
    let outcome = renkei_ingest::import::import_members(store.clone(), csv, Arc::new(NoProgress), Utc::now())
        .await
        .expect("import");
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!((outcome.created as usize, outcome.linked as usize), (count, count), "{outcome:?}");
    let counts = store.counts().await.expect("counts");
    assert_eq!((counts.members as usize, counts.links as usize), (count, count));
    println!(
        "{backend:<10} import members: {count} linked members in {seconds:.2} s = {:.0} members/s; peak RSS so far {:.0} MB",
        count as f64 / seconds,
        peak_rss_mb()
    );
    reevaluate(store, count, backend).await;
}

/// A running evaluator (the shipped segments) takes the import's users from
/// the change feed and re-evaluates them: how long until the feed is empty.
async fn reevaluate(store: Arc<dyn Store>, count: usize, backend: &str) {
    let segments = renkei::app::load_segments(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/segments")))
        .expect("shipped segments");
    let engine = renkei_evaluator::MembershipEngine::new(
        renkei_evaluator::EngineStore::of(&store),
        Arc::new(segments),
        Arc::new(renkei_core::SystemClock),
        chrono_tz::Asia::Tokyo,
    );
    let pending: Arc<dyn renkei_store::PendingStore> = store.clone();
    let started = Instant::now();
    let evaluator = renkei_evaluator::Evaluator::start(Arc::new(engine), pending);
    evaluator.idle().await;
    let seconds = started.elapsed().as_secs_f64();
    let gold = renkei_evaluator::EngineStore::of(&store)
        .reads
        .segment_stats()
        .await
        .expect("stats")
        .into_iter()
        .find(|s| s.segment_id == "gold_members")
        .map_or(0, |s| s.size);
    assert_eq!(gold as usize, count / 2, "ranks cycle bronze, silver, gold, platinum");
    println!(
        "{backend:<10} re-evaluation of the import from the change feed by a running evaluator: {count} users in {seconds:.2} s = {:.0} users/s ({gold} gold_members); peak RSS so far {:.0} MB",
        count as f64 / seconds,
        peak_rss_mb()
    );
    evaluator.stop().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let smoke = smoke_run();
        if smoke {
            println!("smoke run (cargo test): tiny sizes; `cargo bench` runs the real sizes");
        }
        let count = if smoke { 3_000 } else { env_number("RENKEI_BENCH_MEMBERS", 1_000_000) };
        let backends = std::env::var("RENKEI_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".to_string());
        let dir = tempfile::tempdir().expect("temp dir");
        let csv = dir.path().join("members.csv");
        write_csv(&csv, count);
        println!(
            "member import benchmark: {count} linked members, {:.1} MB of CSV",
            std::fs::metadata(&csv).expect("csv").len() as f64 / 1e6
        );
        if backends.contains("sqlite") {
            let sqlite = test_support::sqlite().await.expect("sqlite");
            import(sqlite.store.clone(), &csv, count, "SQLite").await;
        }
        if backends.contains("postgres") {
            let Some(server) = postgres_server() else {
                println!("PostgreSQL: skipped (set RENKEI_BENCH_POSTGRES_URL)");
                return;
            };
            let url = test_support::create_database(&server).await.expect("database");
            let store = renkei_store::connect(&url).await.expect("connect");
            store.migrate().await.expect("migrate");
            import(store, &csv, count, "PostgreSQL").await;
            test_support::drop_database(&server, &url).await.expect("drop the benchmark's database");
        }
        println!("target (the product's performance targets): 1,000,000 linked members into PostgreSQL in ≤ 20 s");
    });
}
