//! `renkei demo`: a tour on a temporary SQLite database. It starts the server,
//! imports bundled members, sends bundled events through the HTTP API the way
//! a company's systems would, links a member, shows how bad input is refused,
//! prints what is stored, and lets the LINE simulator send a follow webhook
//! that moves a new friend into a segment.

use crate::app::Application;
use crate::config::{Config, Secret};
use crate::progress::BarProgress;
use anyhow::Context;
use renkei_core::{Clock, SystemClock};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

const SAMPLE_MEMBERS: &str = include_str!("../config/sample/members.csv");
const SAMPLE_EVENTS: &str = include_str!("../config/sample/events.ndjson");

pub async fn run(keep: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let db = dir.path().join("demo.db");
    let api_key = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let mut config = Config::load_with_env(None, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.database.url = format!("sqlite://{}", db.display());
    config.server.bind = ([127, 0, 0, 1], 0).into();
    config.server.api_keys = vec![Secret::from(api_key.as_str())];

    if !config.paths.segments.is_dir() {
        // Run from outside the source tree: use the example segments it was built from.
        config.paths.segments = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/segments");
    }
    // The built-in LINE simulator plays LINE: it signs webhooks and answers the Messaging API.
    let sim = renkei_line_sim::LineSim::spawn(renkei_line_sim::SimConfig::default()).await?;
    config.line.channel_secret = Secret::from(sim.channel_secret());
    config.line.channel_access_token = Secret::from(sim.access_token());
    config.line.api_base_url = sim.base_url();

    println!("renkei demo: a temporary SQLite database at {}", db.display());
    let store = renkei_store::connect(&config.database.url).await?;
    store.migrate().await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    // 1. Members from the company's CRM export, with typed CSV columns.
    let members_file = dir.path().join("members.csv");
    std::fs::write(&members_file, SAMPLE_MEMBERS)?;
    let outcome =
        renkei_ingest::import::import_members(store.clone(), &members_file, Arc::new(BarProgress::new()), clock.now())
            .await?;
    println!(
        "1. imported members.csv: {} members created, {} of them linked to LINE users (ID連携)",
        outcome.created, outcome.linked
    );

    let app = Application::build(&config, store.clone(), clock.clone()).await?;
    let evaluator = app.evaluator().context("the demo runs the evaluator role")?;
    let base = format!("http://{}", app.local_addr());
    sim.set_webhook_url(Some(format!("{base}/webhook/line")));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stop_rx.await;
    }));
    println!("   server listening on {base} (API key {api_key}); LINE simulator on {}", sim.base_url());
    evaluator.recomputed().await;
    println!("   segments evaluated for every known LINE user at start ({})", config.paths.segments.display());

    // 2. Events through POST /v1/events in batches of 1,000.
    let http = crate::http_client();
    let events: Vec<Value> =
        SAMPLE_EVENTS.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?;
    let (mut accepted, mut duplicates) = (0, 0);
    for chunk in events.chunks(1_000) {
        let reply = post(&http, &base, &api_key, "/v1/events", json!({"events": chunk})).await?;
        accepted += reply.1["accepted"].as_u64().unwrap_or(0);
        duplicates += reply.1["duplicates"].as_u64().unwrap_or(0);
    }
    println!("2. POST /v1/events ×{}: {accepted} accepted, {duplicates} duplicates", events.len().div_ceil(1_000));
    let again = post(&http, &base, &api_key, "/v1/events", json!({"events": &events[..100]})).await?;
    println!("   the first 100 sent again (same event_id): {}", again.1);

    // 3. A member linked directly, then read back.
    let link = json!({"member_id": "M00190", "line_user_id": "U0123456789abcdef0123456789abcdef"});
    let created = post(&http, &base, &api_key, "/v1/links", link).await?;
    println!("3. POST /v1/links → {}: {}", created.0, created.1);
    let claimed = json!({"member_id": "M00191", "line_user_id": "U0123456789abcdef0123456789abcdef"});
    let conflict = post(&http, &base, &api_key, "/v1/links", claimed).await?;
    println!("   the same LINE user claimed by another member → {}: {}", conflict.0, conflict.1["error"]["message"]);

    // 4. Bad input is refused whole, with the index and field of each problem.
    let bad = json!({"events": [
        {"type": "purchase", "member_id": "M00001", "occurred_at": "2026-11-23T10:00:00+09:00"},
        {"type": "Purchase!", "member_id": "M00001", "occurred_at": "2026-11-23 10:00"}
    ]});
    let refused = post(&http, &base, &api_key, "/v1/events", bad).await?;
    println!("4. a batch with one bad event → {}:", refused.0);
    for error in refused.1["errors"].as_array().into_iter().flatten() {
        println!(
            "   events[{}].{}: {}",
            error["index"],
            error["field"].as_str().unwrap_or(""),
            error["message"].as_str().unwrap_or("")
        );
    }

    // 5. What is stored.
    let counts = store.counts().await?;
    println!(
        "5. stored: {} members, {} links, {} events (nothing from the refused batch)",
        counts.members, counts.links, counts.events
    );
    let user = renkei_core::LineUserId::parse("U7db3d96b0f76480d94a7ded5f234fb96").context("sample user id")?;
    let history = store.user_events(&user).await?;
    println!("   LINE user {user} (member M00001) has {} events; the latest:", history.len());
    for event in history.iter().rev().take(3) {
        println!(
            "     {} {} {}",
            event.occurred_at.to_rfc3339(),
            event.event_type,
            Value::Object(event.properties.clone())
        );
    }

    // 6. A new friend: the simulator sends a signed follow webhook; the segment engine reacts.
    let newcomer = renkei_core::LineUserId::parse("U0000000000000000000000000000f011").context("demo user id")?;
    let delivery = sim.send_follow(&newcomer).await?;
    println!("6. LINE sends a signed follow webhook for {newcomer} → {}", delivery.status);
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let members_path = "/v1/segments/unlinked_followers/members";
    loop {
        evaluator.idle().await;
        let members = get(&http, &base, &api_key, members_path).await?;
        let found =
            members.1["line_user_ids"].as_array().is_some_and(|ids| ids.iter().any(|id| id == newcomer.as_str()));
        if found || Instant::now() > deadline {
            println!("   GET {members_path} lists the newcomer: {found}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let segments = get(&http, &base, &api_key, "/v1/segments").await?;
    println!("   GET /v1/segments:");
    for segment in segments.1["segments"].as_array().into_iter().flatten() {
        println!(
            "     {:<24} {:>4}  {}",
            segment["id"].as_str().unwrap_or(""),
            segment["size"].as_u64().unwrap_or(0),
            segment["name"].as_str().unwrap_or("")
        );
    }
    println!("   try: renkei segments preview gold_members --format json (on your own database)");
    println!("\ndone in {:.1} s", started.elapsed().as_secs_f64());

    if keep {
        println!(
            "\nserving on {base} until Ctrl-C; try:\n  curl -H 'Authorization: Bearer {api_key}' {base}/v1/links/M00001\n  curl {base}/metrics"
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_tx.send(());
    server.await.context("server task")??;
    Ok(ExitCode::SUCCESS)
}

async fn get(http: &reqwest::Client, base: &str, key: &str, path: &str) -> anyhow::Result<(u16, Value)> {
    let response = http.get(format!("{base}{path}")).bearer_auth(key).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

async fn post(http: &reqwest::Client, base: &str, key: &str, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let response = http.post(format!("{base}{path}")).bearer_auth(key).json(&body).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}
