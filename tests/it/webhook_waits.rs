//! Webhooks never wait (issue 17 item 4): while a real `renkei import`
//! process holds SQLite's writer with a 100,000-member import, LINE's
//! webhook is answered 200 within 2 s; other writes get 503 `store_busy`
//! with `Retry-After` within the write wait; `/healthz` says writes are
//! blocked; once the import is done the webhook's effects are applied.

use crate::common::{TestApp, spawn_app_on};
use renkei_core::LineUserId;
use renkei_store::StoreOptions;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "webhook-waits-channel-secret";
const MEMBERS: usize = 100_000;
/// The server's write wait (short, so the test is quick).
const WAIT: Duration = Duration::from_millis(500);

fn members_csv(path: &Path) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("members file"));
    writeln!(file, "member_id,line_user_id,rank,points:number,joined:date").expect("header");
    for n in 0..MEMBERS {
        let (rank, line_user) = (["gold", "silver", "bronze"][n % 3], user(1_000_000 + n));
        writeln!(file, "m{n},{line_user},{rank},{},2025-0{}-1{}", n % 1000, 1 + n % 9, n % 10).expect("line");
    }
    file.flush().expect("flush");
}

fn spawn_import(db_url: &str, file: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_renkei"))
        .args(["import", "members", file.to_str().expect("path")])
        .env("RENKEI_DATABASE__URL", db_url)
        .env("RENKEI_LOG__LEVEL", "warn")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run renkei import")
}

fn user(n: usize) -> LineUserId {
    LineUserId::parse(&format!("U{n:032x}")).expect("user id")
}

async fn post_webhook(app: &TestApp, n: usize) -> (u16, Value, Duration) {
    let body = json!({"destination": "Ubot", "events": [{
        "type": "follow", "mode": "active", "timestamp": 1_764_000_000_000_i64, "webhookEventId": format!("W{n}"),
        "deliveryContext": {"isRedelivery": false}, "replyToken": format!("r{n}"),
        "source": {"type": "user", "userId": user(n).as_str()}, "follow": {"isUnblocked": false}}]})
    .to_string();
    let request = app
        .http
        .post(format!("{}/webhook/line", app.base))
        .header("x-line-signature", renkei_line::sign(SECRET, body.as_bytes()))
        .header("content-type", "application/json")
        .body(body);
    let started = Instant::now();
    let (status, answer) = app.send(request).await;
    (status, answer, started.elapsed())
}

async fn healthz(app: &TestApp) -> Value {
    app.send(app.http.get(format!("{}/healthz", app.base))).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_answered_within_2s_while_renkei_import_holds_the_sqlite_writer() {
    let test_store = renkei_test_support::sqlite_with(StoreOptions { write_wait: WAIT }).await.expect("store");
    let db_url = test_store.url.clone();
    let app = spawn_app_on(test_store, |config| config.line.channel_secret = SECRET.into()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("members.csv");
    members_csv(&file);
    let mut import = spawn_import(&db_url, &file);
    let import_started = Instant::now();

    // The import has taken the writer once /healthz says so (it validates the file first).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let health = healthz(&app).await;
        if health["writes"] == "blocked" {
            assert_eq!(health["status"], "ok", "{health}");
            break;
        }
        assert!(import.try_wait().expect("import").is_none(), "the import ended before it was seen holding the writer");
        assert!(Instant::now() < deadline, "writes never reported blocked: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, body, took) = post_webhook(&app, 1).await;
    assert_eq!((status, body["received"].as_u64()), (200, Some(1)), "{body}");
    assert!(took < Duration::from_secs(2), "LINE's webhook waited {took:?}");
    assert!(import.try_wait().expect("import").is_none(), "the import finished before the webhook was answered");

    // Another write waits the write wait at most, then is refused with Retry-After.
    let event = json!({"type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T10:00:00Z"});
    let request = app.http.post(format!("{}/v1/events", app.base)).bearer_auth(crate::common::API_KEY);
    let started = Instant::now();
    let response = request.json(&json!({"events": [event]})).send().await.expect("events sent");
    let waited = started.elapsed();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_string());
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json body");
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("store_busy")), "{body}");
    assert!(retry_after.as_deref().and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s >= 1), "{retry_after:?}");
    assert!(waited < WAIT * 3, "the refused write took {waited:?} (write wait {WAIT:?})");
    assert!(import.try_wait().expect("import").is_none(), "the import finished before the write was refused");

    // More webhooks during the import, each within 2 s.
    let mut n = 2;
    while import.try_wait().expect("import").is_none() && n <= 20 {
        let (status, _, took) = post_webhook(&app, n).await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_secs(2), "webhook {n} waited {took:?}");
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = tokio::task::spawn_blocking(move || import.wait_with_output()).await.expect("join").expect("import");
    eprintln!("import of {MEMBERS} members: {:?}; {} webhooks answered meanwhile", import_started.elapsed(), n - 1);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("{MEMBERS} created, 0 updated, 0 unchanged, {MEMBERS} linked")), "{stdout}");

    // The worker applies what the inbox took once the writer is free.
    let deadline = Instant::now() + Duration::from_secs(60);
    for k in 1..n {
        while app.store.get_following(&user(k)).await.expect("following") != Some(true) {
            assert!(Instant::now() < deadline, "the follow of webhook {k} was never applied");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let health = healthz(&app).await;
    assert_eq!((health["status"].as_str(), health["database"].as_str()), (Some("ok"), Some("sqlite")), "{health}");
    assert_eq!(app.store.counts().await.expect("counts").members, MEMBERS as u64);
}
