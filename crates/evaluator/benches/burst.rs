//! Lag after a burst (issue 17): a burst of events on a few members, as fast
//! as the store takes them, with the running engine re-evaluating the users
//! they name; when the burst ends, one member's rank changes to gold, and the
//! lag is the time from the burst's end to that member being seen in
//! `gold_members`.
//!
//! ```text
//! RENKEI_TEST_POSTGRES_URL=postgres://renkei@127.0.0.1:55432/postgres \
//!   cargo bench -p renkei-evaluator --bench burst
//! ```
//! Env: `RENKEI_BENCH_EVENTS` (default 400000), `RENKEI_BENCH_USERS`
//! (linked members, default 200), `RENKEI_BENCH_BACKENDS` (default
//! `postgres,sqlite`), `RENKEI_BENCH_CONCURRENCY` (parallel writers, default 4).
//! Events are spread over the past year, in batches of 1,000, each batch's
//! members reported to the engine once it is stored (as the API does).

use chrono::{DateTime, Duration, Utc};
use renkei_core::{LineUserId, MemberId, MemberPatch, NewEvent, SystemClock, UserRef};
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

const BATCH: usize = 1_000;

fn member(i: u64) -> Result<MemberId, BoxError> {
    Ok(MemberId::parse(&format!("burst-{i}"))?)
}

fn line_user(i: u64) -> Result<LineUserId, BoxError> {
    Ok(LineUserId::parse(&format!("U{i:032x}"))?)
}

fn batch(rng: &mut Rng, users: u64, now: DateTime<Utc>) -> Result<(Vec<NewEvent>, Vec<UserRef>), BoxError> {
    let mut events = Vec::with_capacity(BATCH);
    let mut named = Vec::new();
    for _ in 0..BATCH {
        let who = rng.below(users);
        let kind = ["purchase", "cart_add", "store_visit"][rng.below(3) as usize];
        let at = now - Duration::seconds(rng.below(365 * 86_400) as i64);
        let value = json!({"type": kind, "member_id": member(who)?.as_str(), "occurred_at": at.to_rfc3339(),
                           "properties": {"amount": 500 + rng.below(20_000), "cart_id": format!("C{}", rng.below(100))}});
        events.push(NewEvent::parse(&value).map_err(|e| format!("{e:?}"))?);
        named.push(UserRef::Member(member(who)?));
    }
    named.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    named.dedup();
    Ok((events, named))
}

async fn measure(name: &str, store: Arc<dyn Store>, users: u64, events: u64, writers: u64) -> Result<(), BoxError> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/segments");
    let segments = SegmentSet::load_dir(dir).map_err(|d| format!("{} segment problems in {dir}", d.len()))?;
    let now = Utc::now();
    for i in 0..users {
        let patch = MemberPatch {
            member_id: member(i)?,
            attributes: json!({"rank": "silver"}).as_object().cloned().unwrap_or_default(),
            line_user_id: None,
        };
        store.upsert_members(&[patch], now).await?;
        store.link(&member(i)?, &line_user(i)?, renkei_core::LinkMethod::Api, now).await?;
    }
    let engine = Arc::new(
        MembershipEngine::new(
            EngineStore::of(&store),
            Arc::new(segments),
            Arc::new(SystemClock),
            chrono_tz::Asia::Tokyo,
        )
        .with_tallies()
        .await?,
    );
    let handle = Arc::new(engine.clone().start());
    let started = Instant::now();
    let per_writer = events / BATCH as u64 / writers;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, handle) = (store.clone(), handle.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(w + 1);
            for _ in 0..per_writer {
                let (events, named) = batch(&mut rng, users, Utc::now())?;
                store.insert_events(&events, Utc::now()).await?;
                handle.notify(&named, Cause::Event);
            }
            Ok::<(), BoxError>(())
        }));
    }
    let mut max_backlog = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        max_backlog = max_backlog.max(handle.backlog().waiting);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for task in tasks {
        task.await??;
    }
    let burst = started.elapsed().as_secs_f64();
    let stored = per_writer * writers * BATCH as u64;
    // The burst has ended: one member turns gold.
    let ended = Instant::now();
    let backlog = handle.backlog().waiting;
    let gold = MemberPatch {
        member_id: member(0)?,
        attributes: json!({"rank": "gold"}).as_object().cloned().unwrap_or_default(),
        line_user_id: None,
    };
    store.upsert_members(&[gold], Utc::now()).await?;
    handle.notify(&[UserRef::Member(member(0)?)], Cause::Member);
    let user = line_user(0)?;
    while !engine.memberships(&user).await?.contains("gold_members") {
        if ended.elapsed().as_secs() > 600 {
            return Err("the change was not visible within 10 minutes".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let lag = ended.elapsed().as_secs_f64();
    handle.idle().await;
    let drained = ended.elapsed().as_secs_f64();
    println!(
        "{name}: burst of {stored} events on {users} members in {burst:.1} s ({:.0} events/s, {writers} writers); \
         backlog at most {max_backlog} users, {backlog} at the burst's end; change visible {:.0} ms after the burst's end; \
         queue drained after {:.0} ms",
        stored as f64 / burst,
        lag * 1000.0,
        drained * 1000.0,
    );
    if let Ok(handle) = Arc::try_unwrap(handle) {
        handle.shutdown().await;
    }
    Ok(())
}

/// A full run under `cargo bench`; a small smoke run under `cargo test` (CI).
fn smoke_run() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let env = |name: &str, default: u64| {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(default)
    };
    let (events, users) =
        if smoke_run() { (8_000, 20) } else { (env("RENKEI_BENCH_EVENTS", 400_000), env("RENKEI_BENCH_USERS", 200)) };
    let writers = env("RENKEI_BENCH_CONCURRENCY", 4);
    let backends = std::env::var("RENKEI_BENCH_BACKENDS").unwrap_or_else(|_| "postgres,sqlite".to_string());
    for (name, backend) in [("postgres", Backend::Postgres), ("sqlite", Backend::Sqlite)] {
        if !backends.contains(name) {
            continue;
        }
        match test_support::store(backend).await {
            Some(test) => measure(name, test.store.clone(), users, events, writers).await?,
            None => println!("{name}: skipped (set RENKEI_TEST_POSTGRES_URL)"),
        }
    }
    Ok(())
}
