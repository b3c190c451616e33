//! PostgreSQL goes away for 20 s in the middle of a campaign (issue: scale,
//! item 7). The instance keeps answering `/healthz` with the database's
//! state, refuses writes with 503 (never a 500, never a hang), and once the
//! server is back it finishes the campaign: every recipient exactly once.
//!
//! The test runs its own PostgreSQL server (`.ci/pg-start` on another port
//! and data directory, stopped and started with `.ci/pg-ctl`), so the
//! server the other tests share never goes down.

use crate::common::{API_KEY, TestApp, spawn_app_on};
use renkei_line_sim::{LineSim, RateLimits, SimConfig};
use renkei_store::StoreOptions;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PORT: u16 = 55491;
const RECIPIENTS: usize = 300;
/// Push requests per second, LINE's and renkei's: the campaign takes ~10 s.
const PUSH_RATE: u32 = 30;
const OUTAGE: Duration = Duration::from_secs(20);

const BUYERS_CAMPAIGN: &str = "id: thanks\nname: お礼\ntrigger:\n  event: purchase\nmessages:\n  - template: thanks\n    alt_text: \"{{member.name}}さん、ありがとうございます\"\n";
const TEMPLATE: &str = r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [
  {"type": "text", "text": "{{member.name}}さん、ご購入ありがとうございます"}]}}"#;

/// The test's own PostgreSQL server; stopped when dropped.
struct OwnPostgres {
    data: PathBuf,
}

fn ci_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci").join(name)
}

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let data = std::env::temp_dir().join(format!("renkei-pg-outage-{PORT}"));
        let _ = Command::new("bash")
            .arg(ci_script("pg-ctl"))
            .args(["stop", &PORT.to_string()])
            .env("RENKEI_PGDATA", &data)
            .output();
        let out = Command::new("bash")
            .arg(ci_script("pg-start"))
            .env("RENKEI_PG_PORT", PORT.to_string())
            .env("RENKEI_PGDATA", &data)
            .env("RENKEI_PG_SHARED_BUFFERS", "64MB")
            .output()
            .expect("run .ci/pg-start");
        assert!(out.status.success(), "pg-start: {}", String::from_utf8_lossy(&out.stderr));
        OwnPostgres { data }
    }

    fn url(&self) -> String {
        format!("postgres://renkei@127.0.0.1:{PORT}/postgres")
    }

    fn ctl(&self, action: &str) {
        let out = Command::new("bash")
            .arg(ci_script("pg-ctl"))
            .args([action, &PORT.to_string()])
            .env("RENKEI_PGDATA", &self.data)
            .output()
            .expect("run .ci/pg-ctl");
        assert!(out.status.success(), "pg-ctl {action}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(ci_script("pg-ctl"))
            .args(["stop", &PORT.to_string()])
            .env("RENKEI_PGDATA", &self.data)
            .output();
    }
}

async fn get(app: &TestApp, path: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response = app.http.get(format!("{}{path}", app.base)).bearer_auth(API_KEY).send().await.expect("answered");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

async fn post(app: &TestApp, path: &str, body: &Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response =
        app.http.post(format!("{}{path}", app.base)).bearer_auth(API_KEY).json(body).send().await.expect("answered");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

async fn until<T>(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn user(i: usize) -> String {
    format!("U{:032x}", 0x0a7a_0000 + i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_survives_twenty_seconds_without_postgres() {
    if renkei_test_support::postgres_server_url().is_none() {
        return; // no PostgreSQL for tests here (refused in CI)
    }
    let server = OwnPostgres::start();
    let dirs = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dirs.path().join("campaigns")).expect("dir");
    std::fs::create_dir_all(dirs.path().join("templates")).expect("dir");
    std::fs::write(dirs.path().join("campaigns/thanks.yaml"), BUYERS_CAMPAIGN).expect("campaign");
    std::fs::write(dirs.path().join("templates/thanks.json.hbs"), TEMPLATE).expect("template");
    let limits = RateLimits { push: Some(PUSH_RATE), ..RateLimits::default() };
    let sim = LineSim::spawn(SimConfig { rate_limits: limits, ..SimConfig::default() }).await.expect("simulator");
    let store = renkei_test_support::postgres_on(&server.url(), StoreOptions { write_wait: Duration::from_secs(2) })
        .await
        .expect("a database on the test's own server");
    let app = spawn_app_on(store, |c| {
        c.paths.campaigns = dirs.path().join("campaigns");
        c.paths.templates = dirs.path().join("templates");
        c.line.channel_secret = sim.channel_secret().into();
        c.line.channel_access_token = sim.access_token().into();
        c.line.api_base_url = sim.base_url();
        c.dispatch.push_per_second = PUSH_RATE;
        c.dispatch.retry_base_ms = 200;
        c.dispatch.retry_max = "2s".parse().expect("duration");
        c.database.write_wait = "2s".parse().expect("duration");
    })
    .await;

    // Linked members, then one purchase each: one push each.
    let members: Vec<Value> = (0..RECIPIENTS)
        .map(|i| json!({"member_id": format!("O{i:04}"), "attributes": {"name": format!("客{i}")}}))
        .collect();
    assert_eq!(post(&app, "/v1/members", &json!({"members": members})).await.0, 200);
    for i in 0..RECIPIENTS {
        let (status, body, _) =
            post(&app, "/v1/links", &json!({"member_id": format!("O{i:04}"), "line_user_id": user(i)})).await;
        assert_eq!(status, 201, "{body}");
    }
    let now = chrono::Utc::now().to_rfc3339();
    let events: Vec<Value> = (0..RECIPIENTS)
        .map(|i| json!({"event_id": format!("order-{i}"), "type": "purchase", "member_id": format!("O{i:04}"), "occurred_at": now}))
        .collect();
    assert_eq!(post(&app, "/v1/events", &json!({"events": events})).await.0, 200);

    // A third of the way through, PostgreSQL goes away.
    until("a third of the pushes", Duration::from_secs(60), async || {
        (sim.requests_for(renkei_line_sim::Endpoint::Push).len() >= RECIPIENTS / 3).then_some(())
    })
    .await;
    server.ctl("stop");
    let down_at = Instant::now();

    // The instance says so, answers at once, and refuses writes with 503.
    let (status, body, _) = until("/healthz to report the database down", Duration::from_secs(10), async || {
        let answer = get(&app, "/healthz").await;
        (answer.0 == 503).then_some(answer)
    })
    .await;
    assert_eq!(body, json!({"status": "unavailable", "database": "postgres"}), "{status}");
    let mut writes = 0;
    while down_at.elapsed() < OUTAGE {
        let (status, body, took) = get(&app, "/healthz").await;
        assert_eq!(status, 503, "{body}");
        assert!(took < Duration::from_secs(1), "/healthz answers from memory ({took:?})");
        let event = json!({"events": [{"type": "visit", "member_id": "O0001", "occurred_at": chrono::Utc::now().to_rfc3339()}]});
        let (status, body, took) = post(&app, "/v1/events", &event).await;
        assert_eq!(status, 503, "a write while the database is down: {body}");
        assert!(
            ["store_unavailable", "store_busy"].contains(&body["error"]["code"].as_str().unwrap_or_default()),
            "{body}"
        );
        assert!(took < Duration::from_secs(5), "no hang: {took:?}");
        let (status, body, read_took) = get(&app, "/v1/campaigns/thanks/stats").await;
        assert_eq!(status, 503, "a read while the database is down: {body}");
        eprintln!("outage round {writes}: write {took:?}, read {read_took:?}");
        writes += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(writes >= 3, "{writes} rounds of requests in the outage");
    server.ctl("start");

    // Back: healthy again, and the campaign finishes with nothing lost or doubled.
    until("/healthz to recover", Duration::from_secs(15), async || {
        (get(&app, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    until("every recipient's push", Duration::from_secs(90), async || {
        (0..RECIPIENTS).all(|i| !sim.messages_to(&user(i)).is_empty()).then_some(())
    })
    .await;
    for i in 0..RECIPIENTS {
        assert_eq!(sim.messages_to(&user(i)).len(), 1, "{} got one message", user(i));
    }
    let (status, stats, _) = until("the stats to settle", Duration::from_secs(20), async || {
        let answer = get(&app, "/v1/campaigns/thanks/stats").await;
        (answer.0 == 200 && answer.1["sent"] == json!(RECIPIENTS)).then_some(answer)
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!((stats["failed"].clone(), stats["pending"].clone()), (json!(0), json!(0)), "{stats}");
}
