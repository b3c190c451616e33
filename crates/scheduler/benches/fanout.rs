//! A fan-out (再入荷) over a large events table: how long a restock takes to
//! find its users and enqueue their deliveries, for a SKU few users
//! favourited and for a hot one, and a repeat inside the window (nothing new).
//! Prints per backend: events in the table, users reached, seconds, users/s,
//! and the process's peak RSS.
//!
//! ```text
//! RENKEI_TEST_POSTGRES_URL=postgres://… cargo bench -p renkei-scheduler --bench fanout
//! ```
//! Env: `RENKEI_BENCH_FANOUT_EVENTS` (favourites in the table, default
//! 1,000,000), `RENKEI_BENCH_FANOUT_HOT` (users who favourited the hot SKU,
//! default 100,000), `RENKEI_BENCH_FANOUT_SKUS` (other SKUs, default 10,000);
//! PostgreSQL runs when `RENKEI_TEST_POSTGRES_URL` is set (a throwaway database).

use chrono::{Duration, Utc};
use renkei_campaigns::{CampaignSet, RichMenuRules};
use renkei_core::{Clock, NewEvent, SystemClock};
use renkei_dispatcher::DispatchMetrics;
use renkei_scheduler::{CampaignRunner, RunnerSettings, RunnerStore};
use renkei_segments::SegmentSet;
use renkei_store::Store;
use renkei_test_support::bench::{env_number, smoke_run};
use renkei_test_support::measure::peak_rss_mb;
use renkei_test_support::{Backend, Rng, TestStore};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CAMPAIGN: &str = "id: restock\nname: 再入荷\ntrigger:\n  fanout:\n    event: restock\n    to: { event: favorite, match: [sku], within: 90d }\nmessages:\n  - template: same\n    alt_text: 再入荷しました\n";
const SAME: &str = r#"{"type":"bubble","body":{"type":"box","layout":"vertical","contents":[{"type":"text","text":"{{event.properties.sku}}が再入荷しました"}]}}"#;

struct Sizes {
    events: u64,
    hot: u64,
    skus: u64,
}

fn user(n: u64) -> String {
    format!("U{n:032x}")
}

/// `hot` users favourited `HOT`; the rest of the events are favourites of
/// `skus` other SKUs by random users, all within the last 60 days.
async fn load(store: &Arc<dyn Store>, sizes: &Sizes) -> Result<(), BoxError> {
    let now = Utc::now();
    let mut rng = Rng(7);
    let users = sizes.hot.max(sizes.events / 10).max(1);
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..sizes.events.max(sizes.hot) {
        let (who, sku) = if i < sizes.hot {
            (i, "HOT".to_string())
        } else {
            (rng.below(users), format!("S{}", rng.below(sizes.skus)))
        };
        let at = now - Duration::seconds(i64::try_from(rng.below(60 * 86_400))? + 60);
        batch.push(
            NewEvent::parse(&json!({"type": "favorite", "line_user_id": user(who),
            "occurred_at": at.to_rfc3339(), "properties": {"sku": sku}}))
            .map_err(|e| format!("{e:?}"))?,
        );
        if batch.len() == 10_000 {
            store.insert_events(&batch, now).await?;
            batch.clear();
        }
    }
    store.insert_events(&batch, now).await?;
    Ok(())
}

async fn runner(store: &Arc<dyn Store>) -> Result<CampaignRunner, BoxError> {
    let segments = SegmentSet::from_sources(Vec::<(PathBuf, String)>::new()).map_err(|e| format!("{e:?}"))?;
    let templates = vec![("same".to_string(), PathBuf::from("same.json.hbs"), SAME.to_string())];
    let campaigns = Arc::new(
        CampaignSet::from_sources(vec![(PathBuf::from("c.yaml"), CAMPAIGN.to_string())], templates, &segments)
            .map_err(|e| format!("{e:?}"))?,
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ok(CampaignRunner::new(
        RunnerStore::of(store),
        campaigns,
        Arc::new(RichMenuRules::default()),
        clock,
        RunnerSettings::default(),
        Arc::new(DispatchMetrics::default()),
        Arc::new(tokio::sync::Notify::new()),
    )
    .await?)
}

/// Stores a restock of `sku` and fans it out: (users newly enqueued, seconds).
async fn restock(store: &Arc<dyn Store>, runner: &CampaignRunner, id: &str, sku: &str) -> Result<(u64, f64), BoxError> {
    let event = NewEvent::parse(&json!({"event_id": id, "type": "restock", "line_user_id": user(u64::MAX >> 1),
        "occurred_at": Utc::now().to_rfc3339(), "properties": {"sku": sku}}))
    .map_err(|e| format!("{e:?}"))?;
    store.insert_events(&[event], Utc::now()).await?;
    let stored = store.events_after(0, &["restock".to_string()], 1_000).await?;
    let event = stored.into_iter().find(|e| e.event_id.as_deref() == Some(id)).ok_or("restock not stored")?;
    let campaign = runner.campaigns().get("restock").ok_or("no campaign")?.clone();
    let started = Instant::now();
    let new = runner.fan_out(&campaign, &event).await?;
    Ok((new, started.elapsed().as_secs_f64()))
}

async fn run(backend: Backend, test: TestStore, sizes: &Sizes) -> Result<(), BoxError> {
    let store = test.store.clone();
    let loading = Instant::now();
    load(&store, sizes).await?;
    println!(
        "{backend:?}: {} favourites loaded in {:.1} s",
        sizes.events.max(sizes.hot),
        loading.elapsed().as_secs_f64()
    );
    let runner = runner(&store).await?;
    let (cold, cold_secs) = restock(&store, &runner, "cold", "S1").await?;
    println!("{backend:?}: restock of a SKU few favourited: {cold} users in {:.3} s", cold_secs);
    let (hot, hot_secs) = restock(&store, &runner, "hot", "HOT").await?;
    assert_eq!(hot, sizes.hot, "every favouriter of the hot SKU once");
    println!(
        "{backend:?}: restock of the hot SKU: {hot} users in {hot_secs:.2} s ({:.0} users/s), peak RSS {:.0} MB",
        hot as f64 / hot_secs.max(1e-9),
        peak_rss_mb()
    );
    let (again, again_secs) = restock(&store, &runner, "hot-again", "HOT").await?;
    assert_eq!(again, 0, "a repeat inside the window enqueues nothing");
    println!("{backend:?}: repeat restock of the hot SKU: {again} new in {again_secs:.2} s");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let sizes = if smoke_run() {
        Sizes { events: 3_000, hot: 1_234, skus: 20 }
    } else {
        Sizes {
            events: env_number("RENKEI_BENCH_FANOUT_EVENTS", 1_000_000),
            hot: env_number("RENKEI_BENCH_FANOUT_HOT", 100_000),
            skus: env_number("RENKEI_BENCH_FANOUT_SKUS", 10_000).max(1),
        }
    };
    run(Backend::Sqlite, renkei_test_support::sqlite().await?, &sizes).await?;
    // A throwaway database on the tests' server, dropped at the end.
    if let Some(test) = renkei_test_support::postgres().await? {
        run(Backend::Postgres, test, &sizes).await?;
    }
    Ok(())
}
