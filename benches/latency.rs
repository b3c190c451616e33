//! Latency benchmark (a performance target: p99 ≤ 250 ms): event ingested → segment transition →
//! message accepted by the LINE simulator, p99 ≤ 250 ms; plus the per-event
//! re-evaluation cost with the example segments and the peak RSS.
//!
//! ```text
//! eval "$(bash .ci/pg-start)"; RENKEI_BENCH_POSTGRES_URL=$RENKEI_TEST_POSTGRES_URL cargo bench --bench latency
//! ```
//! Without `RENKEI_BENCH_POSTGRES_URL` (or `RENKEI_TEST_POSTGRES_URL`) only
//! SQLite runs. Env: `RENKEI_BENCH_LINKED` (linked members, default 2000),
//! `RENKEI_BENCH_SAMPLES` (measured events, default 500), `RENKEI_BENCH_RATE`
//! (events per second, default 25), `RENKEI_BENCH_EVAL_USERS` (users with 50
//! events each for the re-evaluation cost, default 2000), `RENKEI_BENCH_PARTS`
//! (default `latency,eval`).
//!
//! Part 1 runs the whole `renkei serve` (`Application::build`: API, segment
//! engine, campaign scheduler, dispatcher) against an in-process LINE
//! simulator, with one segment (`buyers`: a purchase within 30 d) and one
//! `segment_entered` campaign on it with a personalised template. Each sample
//! is one `POST /v1/events` carrying one purchase of a linked member not yet
//! in `buyers`, sent open-loop at a fixed rate (not back to back). Its latency
//! runs from just before the POST is sent to the simulator's record of the
//! push to that user. The stages come from the timestamps renkei stores with
//! the same wall clock: the transition's `at` (the engine's evaluation
//! instant, taken before its write commits), the delivery's `created_at` (the
//! campaign runner's round that enqueued it) and `requested_at` (the
//! dispatcher's planning round that turned it into a LINE request).

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use renkei::app::Application;
use renkei::config::{Config, Secret};
use renkei_core::{Clock, LineUserId, MemberId, MemberPatch, NewEvent, SystemClock, UserRef};
use renkei_evaluator::{Cause, MembershipEngine, TransitionKind};
use renkei_line_sim::{Endpoint, LineSim, SimConfig};
use renkei_segments::SegmentSet;
use renkei_store::{PgStore, Store};
use renkei_test_support as test_support;
use renkei_test_support::Rng;
use renkei_test_support::bench::{env_number, smoke_run};
use renkei_test_support::measure::peak_rss_mb;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const KEY: &str = "bench-latency-key";
const SEGMENT: &str = "buyers";
const CAMPAIGN: &str = "purchase_thanks";
/// Samples sent first and left out of the figures (connections, caches).
const WARM_UP: usize = 20;
const EVENTS_PER_USER: usize = 50;

fn line_user(i: usize) -> String {
    format!("U{i:032x}")
}

fn member(i: usize) -> String {
    format!("M{i:07}")
}

fn attributes(i: usize, rng: &mut Rng, now: DateTime<Utc>) -> Map<String, Value> {
    let rank = ["bronze", "silver", "gold", "platinum"][rng.below(4) as usize];
    let registered = now - ChronoDuration::days(rng.below(400) as i64);
    let birthday = format!("{:04}-{:02}-{:02}", 1950 + rng.below(55), 1 + rng.below(12), 1 + rng.below(28));
    let value = json!({"name": format!("会員{i}"), "rank": rank, "birthday": birthday, "registered_at": registered.to_rfc3339()});
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Creates `count` members linked to LINE users (the import path: a patch with `line_user_id`).
async fn link_members(store: &dyn Store, count: usize, now: DateTime<Utc>) -> Result<(), BoxError> {
    let mut rng = Rng(3);
    let patches: Vec<MemberPatch> = (0..count)
        .map(|i| {
            Ok(MemberPatch {
                member_id: MemberId::parse(&member(i))?,
                attributes: attributes(i, &mut rng, now),
                line_user_id: Some(LineUserId::parse(&line_user(i))?),
            })
        })
        .collect::<Result<_, renkei_core::IdError>>()?;
    for chunk in patches.chunks(1_000) {
        store.upsert_members(chunk, now).await?;
    }
    Ok(())
}

/// Writes the one segment, campaign and template of part 1 under `dir`.
fn write_config(dir: &Path) -> Result<(), BoxError> {
    for sub in ["segments", "campaigns", "templates"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::write(
        dir.join("segments/buyers.yaml"),
        "id: buyers\nname: 購入者 (30日以内)\nrule:\n  event: purchase\n  within: 30d\n  count: {gte: 1}\n",
    )?;
    std::fs::write(
        dir.join("campaigns/purchase_thanks.yaml"),
        "id: purchase_thanks\nname: ご購入お礼\ntrigger:\n  segment_entered: buyers\nmessages:\n  - template: purchase_thanks\n    alt_text: \"{{member.name}}さん、ご購入ありがとうございます\"\n",
    )?;
    std::fs::write(
        dir.join("templates/purchase_thanks.json.hbs"),
        r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [
  {"type": "text", "text": "{{member.name}}さん、ご購入ありがとうございます", "weight": "bold", "wrap": true},
  {"type": "text", "text": "会員番号 {{member.member_id}} / {{yen 1200}}", "size": "sm", "wrap": true}
]}}
"#,
    )?;
    Ok(())
}

/// Nearest-rank percentiles of a sample, in milliseconds.
fn summary(label: &str, mut values: Vec<f64>) -> String {
    if values.is_empty() {
        return format!("  {label:<42} no samples");
    }
    values.sort_by(f64::total_cmp);
    let at = |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    format!(
        "  {label:<42} n={:<4} p50 {:>7.1}  p90 {:>7.1}  p99 {:>7.1}  max {:>7.1}  mean {:>7.1} ms",
        values.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        values[values.len() - 1],
        mean
    )
}

fn millis(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -(e.duration().as_secs_f64() * 1000.0),
    }
}

fn system_time(at: DateTime<Utc>) -> SystemTime {
    SystemTime::from(at)
}

/// When each sample's POST was sent and answered.
#[derive(Clone, Copy)]
struct Sent {
    at: SystemTime,
    answered: SystemTime,
}

async fn post_purchase(http: &reqwest::Client, base: &str, i: usize) -> Result<Sent, BoxError> {
    let at = SystemTime::now();
    let body = json!({"events": [{
        "event_id": format!("latency-{i}"),
        "type": "purchase",
        "member_id": member(i),
        "occurred_at": DateTime::<Utc>::from(at).to_rfc3339(),
        "properties": {"order_id": format!("O{i:09}"), "amount": 1200 + i % 5000, "store": "online"},
    }]});
    let response = http.post(format!("{base}/v1/events")).bearer_auth(KEY).json(&body).send().await?;
    let answered = SystemTime::now();
    if response.status() != 200 {
        return Err(
            format!("POST /v1/events: {} {}", response.status(), response.text().await.unwrap_or_default()).into()
        );
    }
    Ok(Sent { at, answered })
}

/// The first push or multicast the simulator recorded for each user.
fn pushes_by_user(sim: &renkei_line_sim::SimHandle) -> HashMap<String, SystemTime> {
    let mut first: HashMap<String, SystemTime> = HashMap::new();
    for request in sim.requests() {
        if !matches!(request.endpoint, Endpoint::Push | Endpoint::Multicast) {
            continue;
        }
        for user in request.recipients {
            first.entry(user).and_modify(|at| *at = (*at).min(request.at)).or_insert(request.at);
        }
    }
    first
}

async fn wait_for_pushes(sim: &renkei_line_sim::SimHandle, users: &[usize], limit: Duration) -> bool {
    let started = Instant::now();
    loop {
        let pushed = pushes_by_user(sim);
        if users.iter().all(|i| pushed.contains_key(&line_user(*i))) {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct LatencyParams {
    linked: usize,
    samples: usize,
    rate: f64,
}

/// Part 1 on one store: builds the application, sends the samples, prints the figures.
async fn latency(name: &str, store: Arc<dyn Store>, url: &str, params: &LatencyParams) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    write_config(dir.path())?;
    let now = Utc::now();
    link_members(store.as_ref(), params.linked, now).await?;

    let sim = LineSim::spawn(SimConfig { record_requests: true, ..SimConfig::default() }).await?;
    let mut config = Config::load_with_env(None, &[])?;
    config.server.bind = ([127, 0, 0, 1], 0).into();
    config.server.api_keys = vec![Secret::from(KEY)];
    config.database.url = url.to_string();
    config.line.channel_access_token = Secret::from(sim.access_token());
    config.line.channel_secret = Secret::from(sim.channel_secret());
    config.line.api_base_url = sim.base_url();
    config.paths.segments = dir.path().join("segments");
    config.paths.campaigns = dir.path().join("campaigns");
    config.paths.templates = dir.path().join("templates");
    config.paths.rich_menus = dir.path().join("rich_menus.yaml");
    // No reply rules: the shipped ones name templates this directory has not.
    config.paths.replies = dir.path().join("replies");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let app = Application::build(&config, store.clone(), clock).await.map_err(|e| format!("{e:#}"))?;
    let base = format!("http://{}", app.local_addr());
    let evaluator = app.evaluator().ok_or("the evaluator role is off")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    evaluator.recomputed().await;
    let transitions_before = store.max_transition_id().await?;

    let http = renkei::http_client();
    // Warm-up: not counted.
    let warm: Vec<usize> = (0..WARM_UP).collect();
    for &i in &warm {
        post_purchase(&http, &base, i).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !wait_for_pushes(&sim, &warm, Duration::from_secs(30)).await {
        return Err(format!("{name}: warm-up pushes did not arrive within 30 s").into());
    }

    // Measured samples, open loop at `rate` per second.
    let measured: Vec<usize> = (WARM_UP..WARM_UP + params.samples).collect();
    let interval = Duration::from_secs_f64(1.0 / params.rate);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(measured.len());
    for (n, &i) in measured.iter().enumerate() {
        tokio::time::sleep_until(started + interval * n as u32).await;
        let (http, base) = (http.clone(), base.clone());
        tasks.push(tokio::spawn(async move { post_purchase(&http, &base, i).await.map(|sent| (i, sent)) }));
    }
    let mut sent: HashMap<usize, Sent> = HashMap::new();
    for task in tasks {
        let (i, s) = task.await??;
        sent.insert(i, s);
    }
    let send_secs = started.elapsed().as_secs_f64();
    let complete = wait_for_pushes(&sim, &measured, Duration::from_secs(60)).await;

    // Gather the stored stage timestamps.
    let pushed = pushes_by_user(&sim);
    let mut entered: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut after = transitions_before;
    loop {
        let page = store.transitions_after(after, 1_000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for t in page {
            if t.transition.segment_id == SEGMENT && t.transition.kind == TransitionKind::Entered {
                entered.entry(t.transition.line_user_id.as_str().to_string()).or_insert(t.transition.at);
            }
        }
    }
    let mut deliveries: HashMap<String, (DateTime<Utc>, Option<DateTime<Utc>>)> = HashMap::new();
    let mut after = 0;
    loop {
        let page = store.campaign_deliveries(CAMPAIGN, after, 1_000).await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for d in page {
            if let Some(user) = &d.line_user_id {
                deliveries.insert(user.as_str().to_string(), (d.created_at, d.requested_at));
            }
        }
    }
    let _ = stop.send(());
    let _ = server.await;

    let mut end_to_end = Vec::new();
    let mut post = Vec::new();
    let (mut to_transition, mut to_enqueued, mut to_planned, mut to_sim) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut missing = 0;
    for &i in &measured {
        let user = line_user(i);
        let s = sent[&i];
        post.push(millis(s.at, s.answered));
        let Some(&arrived) = pushed.get(&user) else {
            missing += 1;
            continue;
        };
        end_to_end.push(millis(s.at, arrived));
        let transition = entered.get(&user).map(|at| system_time(*at));
        if let Some(t) = transition {
            to_transition.push(millis(s.at, t));
        }
        if let Some((created, requested)) = deliveries.get(&user) {
            let created = system_time(*created);
            if let Some(t) = transition {
                to_enqueued.push(millis(t, created));
            }
            if let Some(requested) = requested.map(system_time) {
                to_planned.push(millis(created, requested));
                to_sim.push(millis(requested, arrived));
            }
        }
    }
    let within = end_to_end.iter().filter(|ms| **ms <= 250.0).count();
    println!(
        "{name}: {} samples at {:.1}/s (sent over {send_secs:.1} s, {} warm-up samples not counted), {} linked members",
        measured.len(),
        measured.len() as f64 / send_secs,
        WARM_UP,
        params.linked
    );
    println!("{}", summary("event POST sent → push at the simulator", end_to_end.clone()));
    println!("{}", summary("  POST /v1/events answered (200)", post));
    println!("{}", summary("  POST sent → transition evaluated (at)", to_transition));
    println!("{}", summary("  transition → delivery enqueued (runner)", to_enqueued));
    println!("{}", summary("  enqueued → request planned (dispatcher)", to_planned));
    println!("{}", summary("  planned → push recorded by the simulator", to_sim));
    println!(
        "{name}: {within}/{} within 250 ms; {missing} never arrived{}; target: p99 ≤ 250 ms",
        end_to_end.len(),
        if complete { "" } else { " (gave up waiting after 60 s)" }
    );
    println!(
        "{name}: note: a transition's `at` is the engine's evaluation instant (taken before its write commits), \
         a delivery's created_at / requested_at the start of the runner's / planner's round that handled it"
    );
    Ok(())
}

/// Users with `EVENTS_PER_USER` events each over the last 120 days.
async fn load_histories(store: &dyn Store, users: usize, now: DateTime<Utc>) -> Result<u64, BoxError> {
    link_members(store, users, now).await?;
    let mut rng = Rng(11);
    let mut batch = Vec::with_capacity(5_000);
    let mut total = 0;
    for u in 0..users {
        for _ in 0..EVENTS_PER_USER {
            let occurred_at = now - ChronoDuration::seconds(rng.below(120 * 86_400) as i64);
            let (kind, properties) = match rng.below(10) {
                0..=2 => {
                    ("purchase", json!({"amount": 500 + rng.below(20_000), "cart_id": format!("c{}", rng.below(8))}))
                }
                3..=4 => (
                    "cart_add",
                    json!({"cart_id": format!("c{}", rng.below(8)), "sku": format!("s{}", rng.below(1000))}),
                ),
                5..=6 => ("store_visit", json!({"store": format!("st{}", rng.below(50))})),
                7 => ("campaign_entry", json!({"campaign_id": "spring_2026"})),
                _ => ("page_view", json!({"path": format!("/p/{}", rng.below(500))})),
            };
            let Value::Object(properties) = properties else { continue };
            batch.push(NewEvent {
                event_id: None,
                event_type: renkei_core::EventType::parse(kind)?,
                member_id: Some(MemberId::parse(&member(u))?),
                line_user_id: None,
                occurred_at,
                properties,
            });
            if batch.len() == 5_000 {
                total += store.insert_events(&batch, now).await?.accepted;
                batch.clear();
            }
        }
    }
    total += store.insert_events(&batch, now).await?.accepted;
    Ok(total)
}

/// Part 2 on one store: the cost of re-evaluating users with realistic histories.
async fn evaluation_cost(name: &str, store: Arc<dyn Store>, users: usize) -> Result<(), BoxError> {
    let now = Utc::now();
    let started = Instant::now();
    let events = load_histories(store.as_ref(), users, now).await?;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config/segments");
    let segments = SegmentSet::load_dir(dir).map_err(|d| format!("{} segment problems in {dir}", d.len()))?;
    let segment_count = segments.len();
    let segments = Arc::new(segments);
    let engine = MembershipEngine::new(
        renkei_evaluator::EngineStore::of(&store),
        segments.clone(),
        Arc::new(SystemClock),
        chrono_tz::Asia::Tokyo,
    )
    .with_tallies()
    .await?;
    let ids: Vec<LineUserId> = (0..users).map(|i| LineUserId::parse(&line_user(i))).collect::<Result<_, _>>()?;
    // First pass writes the initial memberships (not timed).
    for chunk in ids.chunks(500) {
        engine.evaluate_users(chunk, Cause::Recompute).await?;
    }
    println!(
        "{name}: {users} linked users, {events} events ({EVENTS_PER_USER} per user, 5 types), {segment_count} example \
         segments (config/segments); loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let per_user = |elapsed: Duration, n: usize| elapsed.as_secs_f64() * 1e6 / n as f64;

    let single = users.min(500);
    let t = Instant::now();
    for user in &ids[..single] {
        engine.evaluate_user(user, Cause::Event).await?;
    }
    println!(
        "{name}: evaluate_user, one user per call:            {:>8.0} µs/user ({single} calls)",
        per_user(t.elapsed(), single)
    );

    for batch in [10, 100, 1_000] {
        let t = Instant::now();
        for chunk in ids.chunks(batch) {
            engine.evaluate_users(chunk, Cause::Event).await?;
        }
        println!(
            "{name}: evaluate_users, batches of {batch:<5}              {:>8.0} µs/user",
            per_user(t.elapsed(), ids.len())
        );
    }

    // Where a store round goes: loading the facts alone.
    let types: Vec<String> = segments.referenced_event_types().into_iter().collect();
    for batch in [1, 10, 100] {
        let t = Instant::now();
        let mut n = 0;
        for chunk in ids.chunks(batch).take(200) {
            n += store.load_users(chunk, Some(&types)).await?.len();
        }
        println!(
            "{name}:   of which load_users alone, batches of {batch:<5}  {:>8.0} µs/user",
            per_user(t.elapsed(), n)
        );
    }

    let refs: Vec<UserRef> =
        (0..users).map(|i| MemberId::parse(&member(i)).map(UserRef::Member)).collect::<Result<_, _>>()?;
    let t = Instant::now();
    for chunk in refs.chunks(100) {
        engine.process_changes(chunk, Cause::Change).await?;
    }
    println!(
        "{name}: process_changes (by member_id), batches of 100: {:>8.0} µs/user (adds the member → LINE user lookup)",
        per_user(t.elapsed(), refs.len())
    );

    // The evaluation alone, without the store: load once, evaluate in memory.
    let mut records = Vec::with_capacity(users);
    for chunk in ids.chunks(1_000) {
        records.extend(store.load_users(chunk, Some(&types)).await?);
    }
    let facts: Vec<_> = records.into_iter().map(renkei_evaluator::facts_of).collect();
    let t = Instant::now();
    let mut inside = 0usize;
    for f in &facts {
        inside += segments.evaluate(f, now, chrono_tz::Asia::Tokyo).into_iter().filter(|(_, v)| *v).count();
        let _ = segments.next_change(f, now, chrono_tz::Asia::Tokyo);
    }
    println!(
        "{name}: segment evaluation alone (in memory, no store):  {:>8.1} µs/user ({:.1} segments matched per user)",
        per_user(t.elapsed(), facts.len()),
        inside as f64 / facts.len() as f64
    );
    println!("{name}: (memberships were already current: these rounds write no transitions)");
    Ok(())
}

async fn postgres_store(server: &str) -> Result<(Arc<dyn Store>, String), BoxError> {
    let url = test_support::create_database(server).await?;
    let store = PgStore::connect(&url).await?;
    store.migrate().await?;
    Ok((Arc::new(store), url))
}

fn main() -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let params = LatencyParams {
            linked: if smoke_run() { 50 } else { env_number("RENKEI_BENCH_LINKED", 2_000) },
            samples: if smoke_run() { 10 } else { env_number("RENKEI_BENCH_SAMPLES", 500).max(1) },
            rate: if smoke_run() { 50.0 } else { env_number("RENKEI_BENCH_RATE", 25).max(1) as f64 },
        };
        let eval_users = if smoke_run() { 50 } else { env_number("RENKEI_BENCH_EVAL_USERS", 2_000).max(1) };
        if params.linked < WARM_UP + params.samples {
            return Err(format!("RENKEI_BENCH_LINKED must be at least {}", WARM_UP + params.samples).into());
        }
        let server = std::env::var("RENKEI_BENCH_POSTGRES_URL")
            .or_else(|_| std::env::var(test_support::POSTGRES_URL_VAR))
            .ok()
            .filter(|u| !u.is_empty());
        println!(
            "latency benchmark (target p99 ≤ 250 ms): event ingested → segment transition → message accepted by the LINE simulator"
        );

        let parts = std::env::var("RENKEI_BENCH_PARTS").unwrap_or_else(|_| "latency,eval".to_string());
        if parts.contains("latency") {
            println!("\n== 1. end-to-end latency ==");
            let sqlite = test_support::sqlite().await?;
            latency("sqlite", sqlite.store.clone(), &sqlite.url, &params).await?;
            drop(sqlite);
            match &server {
                Some(server) => {
                    let (store, url) = postgres_store(server).await?;
                    latency("postgres", store, &url, &params).await?;
                    test_support::drop_database(server, &url).await?;
                }
                None => println!("postgres: skipped (set RENKEI_BENCH_POSTGRES_URL)"),
            }
            println!("peak RSS so far: {:.0} MB", peak_rss_mb());
        }

        if parts.contains("eval") {
            println!("\n== 2. per-event re-evaluation cost ==");
            let sqlite = test_support::sqlite().await?;
            evaluation_cost("sqlite", sqlite.store.clone(), eval_users).await?;
            drop(sqlite);
            if let Some(server) = &server {
                let (store, url) = postgres_store(server).await?;
                evaluation_cost("postgres", store, eval_users).await?;
                test_support::drop_database(server, &url).await?;
            }
        }

        println!("\n== 3. memory ==");
        println!("peak RSS (VmHWM) of the whole benchmark process: {:.0} MB", peak_rss_mb());
        Ok(())
    })
}
