//! Connection and request limits (issue 17 item 5) over raw TCP and HTTP:
//! header, body and idle deadlines, the connection cap, the per-key rate
//! limit, and `/healthz` / `/metrics` staying quick under full ingest load.

use crate::common::{API_KEY, Backend, TestApp, spawn_app_with};
use renkei::config::Config;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn seconds(n: i64) -> renkei_core::SpanDuration {
    renkei_core::SpanDuration::from_seconds(n)
}

async fn app(configure: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(Backend::Sqlite, configure).await.expect("a SQLite app")
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://")).await.expect("connect")
}

/// Reads until the server closes the connection (or `limit` passes: a
/// failure); returns what it sent and how long the close took.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into_owned(), started.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => panic!(
                "the connection is still open after {limit:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
}

#[tokio::test]
async fn slow_or_missing_headers_are_cut_at_the_header_read_timeout() {
    let app = app(|c| {
        c.server.header_read_timeout = seconds(1);
        c.server.idle_timeout = seconds(60);
    })
    .await;
    let mut silent = connect(&app).await;
    let mut slow = connect(&app).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: renkei\r\n").await.expect("write");
    // More header bytes keep trickling in: they do not move the deadline.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = slow.write_all(b"X-Slow: 1\r\n").await;
    }
    let (_, slow_took) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    let (sent, _) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    assert!(sent.is_empty(), "nothing is answered to a connection that sent nothing: {sent:?}");
    println!("slow headers closed {slow_took:?} after the last trickle");

    // A prompt request is unaffected.
    let (status, body) = app.send(app.http.get(format!("{}/healthz", app.base))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_at_the_idle_timeout() {
    let app = app(|c| {
        c.server.header_read_timeout = seconds(30);
        c.server.idle_timeout = seconds(1);
    })
    .await;
    let mut stream = connect(&app).await;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: renkei\r\n\r\n").await.expect("write");
    // Closed well before the 30 s header deadline: by the 1 s idle timeout.
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(!received.to_ascii_lowercase().contains("connection: close"), "kept alive at first: {received}");
    println!("idle connection closed after {took:?}");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    let app = app(|c| c.server.body_read_timeout = seconds(1)).await;
    let mut stream = connect(&app).await;
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: renkei\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"events\": ["
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let (received, took) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(received.starts_with("HTTP/1.1 408"), "{received}");
    assert!(received.contains("\"body_timeout\""), "{received}");
    println!("the unfinished body was refused after {took:?}");
    assert_eq!(app.store.counts().await.expect("counts").events, 0);
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let app = app(|c| {
        c.server.max_connections = 2;
        c.server.header_read_timeout = seconds(60);
    })
    .await;
    let first = connect(&app).await;
    let _second = connect(&app).await;
    let quick = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().expect("client");
    let refused = quick.get(format!("{}/healthz", app.base)).send().await;
    assert!(refused.is_err(), "a third connection is not served while two are open: {refused:?}");

    drop(first);
    let patient = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let response = patient.get(format!("{}/metrics", app.base)).send().await.expect("served once a slot is free");
    assert_eq!(response.status(), 200);
    let metrics = response.text().await.expect("text");
    assert!(metrics.contains("renkei_http_connections_max 2"), "{metrics}");
    assert!(metrics.contains("renkei_http_connections_open 2"), "{metrics}");
}

#[tokio::test]
async fn each_api_key_is_rate_limited_with_retry_after() {
    let app = app(|c| {
        c.server.rate_limit_per_second = 1;
        c.server.rate_limit_burst = 2;
    })
    .await;
    for _ in 0..2 {
        assert_eq!(app.get("/v1/segments").await.0, 200);
    }
    let response = app.http.get(format!("{}/v1/segments", app.base)).bearer_auth(API_KEY).send().await.expect("send");
    assert_eq!(response.status(), 429);
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(retry_after.as_deref(), Some("1"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    // Not /healthz: it takes no key.
    let (status, _) = app.send(app.http.get(format!("{}/healthz", app.base))).await;
    assert_eq!(status, 200);
}

fn batch(start: usize) -> Value {
    let events: Vec<Value> = (start..start + 1_000)
        .map(|i| {
            json!({"event_id": format!("e-{i}"), "type": "purchase", "member_id": format!("m{}", i % 5_000),
                   "occurred_at": "2026-11-23T10:00:00+09:00", "properties": {"amount": 1200, "sku": "A-1"}})
        })
        .collect();
    json!({"events": events})
}

/// `/healthz` and `/metrics` while 4 clients post 1,000-event batches back
/// to back. The requirement is ≤ 100 ms; this debug build on a shared
/// machine asserts a generous 1 s (the ingest bench measures the release
/// build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_answer_at_once_under_full_ingest_load() {
    let app = Arc::new(app(|c| c.server.rate_limit_per_second = 0).await);
    let body = Arc::new(batch(0));
    let load_for = Duration::from_secs(4);
    let started = Instant::now();
    let mut posters = Vec::new();
    for worker in 0..4 {
        let (app, body) = (app.clone(), body.clone());
        posters.push(tokio::spawn(async move {
            let mut batches = 0;
            while started.elapsed() < load_for && batches < 200 {
                let mut body = (*body).clone();
                for (i, event) in body["events"].as_array_mut().expect("events").iter_mut().enumerate() {
                    event["event_id"] = json!(format!("w{worker}-b{batches}-{i}"));
                }
                let (status, answer) = app.post("/v1/events", &body).await;
                assert_eq!(status, 200, "{answer}");
                batches += 1;
            }
            batches
        }));
    }
    let mut latencies = Vec::new();
    while started.elapsed() < load_for {
        for path in ["/healthz", "/metrics"] {
            let sent = Instant::now();
            let response = app.http.get(format!("{}{path}", app.base)).send().await.expect("answered");
            assert_eq!(response.status(), 200, "{path}");
            let _ = response.bytes().await.expect("body");
            latencies.push(sent.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut batches = 0;
    for poster in posters {
        batches += poster.await.expect("poster");
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = latencies[latencies.len() - 1];
    println!(
        "{} probes during {batches} ingest batches of 1,000 events: p50 {:?}, p99 {p99:?}, max {max:?}",
        latencies.len(),
        latencies[latencies.len() / 2]
    );
    assert!(batches >= 4, "the load ran");
    assert!(max <= Duration::from_secs(1), "a probe took {max:?} under ingest load");
}
