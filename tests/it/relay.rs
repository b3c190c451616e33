//! The webhook relay over real HTTP (issue 16 item 4): relay targets are
//! small HTTP servers here that accept, answer 503, refuse connections
//! (nothing listens on their port) or hang. Every accepted webhook body
//! reaches every target byte for byte, in order, once, with LINE's
//! signature or one made with the target's secret, across a target's
//! outage and a restart of renkei; a hanging target delays neither LINE's
//! 200 nor another target; with `reply_owner` naming a target, renkei does
//! not reply.

use crate::common::{Backend, TestApp, spawn_app_on, spawn_app_with, test_config};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use renkei::app::Application;
use renkei::config::{Config, RelayTargetConfig, Secret};
use renkei_core::{LineUserId, SpanDuration};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

const SECRET: &str = "relay-test-channel-secret";
const TARGET_SECRET: &str = "relay-test-target-secret";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    Unavailable,
    /// Takes the request and never answers.
    Hang,
}

/// What a target was sent and accepted: body, `x-line-signature`, `content-type`.
type Received = (Vec<u8>, String, String);

#[derive(Default)]
struct Shared {
    mode: Mutex<Option<Mode>>,
    received: Mutex<Vec<Received>>,
    hanging: AtomicUsize,
}

/// A relay target: an HTTP server on a port of its own, or, while down,
/// nothing on that port (connections are refused).
struct Target {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mode = *shared.mode.lock().expect("mode");
    match mode {
        Some(Mode::Accept) => {
            let received = (body.to_vec(), header("x-line-signature"), header("content-type"));
            shared.received.lock().expect("received").push(received);
            StatusCode::OK
        }
        Some(Mode::Hang) => {
            shared.hanging.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<StatusCode>().await
        }
        Some(Mode::Unavailable) | None => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl Target {
    /// A target that is down: its port is free, so connections are refused.
    fn down() -> Target {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("reserve a port");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        Target { addr, shared: Arc::default(), server: None }
    }

    async fn up(mode: Mode) -> Target {
        let mut target = Target::down();
        target.come_up(mode).await;
        target
    }

    /// Starts listening on the target's port, answering as `mode` says.
    async fn come_up(&mut self, mode: Mode) {
        self.set_mode(mode);
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("bind the target's port");
        let router = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(self.shared.clone());
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }));
    }

    fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().expect("mode") = Some(mode);
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("received").clone()
    }

    fn count(&self) -> usize {
        self.shared.received.lock().expect("received").len()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

fn target_config(name: &str, target: &Target, secret: &str, timeout_seconds: i64) -> RelayTargetConfig {
    RelayTargetConfig {
        name: name.into(),
        url: target.url(),
        secret: Secret::from(secret),
        timeout: SpanDuration::from_seconds(timeout_seconds),
    }
}

/// The channel secret, `targets`, and quick retries (20 ms doubling to 1 s).
fn relay_config(config: &mut Config, targets: Vec<RelayTargetConfig>) {
    config.line.channel_secret = SECRET.into();
    config.webhook.relay = targets;
    config.webhook.relay_retry_base_ms = 20;
    config.webhook.relay_retry_max = SpanDuration::from_seconds(1);
}

fn user(n: usize) -> LineUserId {
    LineUserId::parse(&format!("U{n:032x}")).expect("user id")
}

/// A webhook body as LINE might format it: spacing, a trailing newline and
/// non-ASCII text, which a byte-for-byte relay keeps.
fn webhook_body(n: usize) -> Vec<u8> {
    format!(
        "{{\"destination\":\"Ubot\", \"events\":[{{\"type\":\"postback\",\"mode\":\"active\",\
         \"timestamp\":{ts},\"webhookEventId\":\"R{n:04}\",\"deliveryContext\":{{\"isRedelivery\":false}},\
         \"source\":{{\"type\":\"user\",\"userId\":\"{user}\"}},  \"postback\":{{\"data\":\"item=在庫{n}\"}}}}]}}\n",
        ts = 1_764_000_000_000_i64 + n as i64,
        user = user(n).as_str(),
    )
    .into_bytes()
}

/// Posts `body` signed with the channel secret; the status and how long the answer took.
async fn post_webhook(app: &TestApp, body: &[u8]) -> (u16, Duration) {
    let request = app
        .http
        .post(format!("{}/webhook/line", app.base))
        .header("x-line-signature", renkei_line::sign(SECRET, body))
        .header("content-type", "application/json")
        .body(body.to_vec());
    let started = Instant::now();
    let (status, answer) = app.send(request).await;
    assert!(status != 200 || answer["received"] == 1, "{answer}");
    (status, started.elapsed())
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One relay series of `/metrics`, for `target` (0 when absent).
async fn metric(app: &TestApp, name: &str, target: &str) -> u64 {
    let text = app.http.get(format!("{}/metrics", app.base)).send().await.expect("metrics").text().await.expect("text");
    let series = format!("{name}{{target=\"{target}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Waits until `target` has taken `n` bodies and renkei holds none for it,
/// then checks that no more came: each body once.
async fn delivered_all(app: &TestApp, name: &str, target: &Target, n: usize) {
    eventually(&format!("{n} bodies at {name}"), Duration::from_secs(30), || async { target.count() >= n }).await;
    eventually(&format!("{name}'s queue empty"), Duration::from_secs(10), || async {
        metric(app, "renkei_relay_delivered_total", name).await >= n as u64
            && metric(app, "renkei_relay_queue_depth", name).await == 0
    })
    .await;
    assert_eq!(target.count(), n, "{name} got a body twice");
}

fn assert_bodies(target: &Target, sent: &[Vec<u8>], sign_with: &str) {
    let received = target.received();
    let bodies: Vec<&[u8]> = received.iter().map(|(body, _, _)| body.as_slice()).collect();
    let expected: Vec<&[u8]> = sent.iter().map(Vec::as_slice).collect();
    assert!(bodies == expected, "bodies differ from what LINE sent, or came out of order");
    for (body, signature, content_type) in &received {
        assert_eq!(content_type, "application/json");
        assert!(renkei_line::verify_signature(sign_with, body, signature), "bad signature {signature}");
    }
}

async fn a_target_down_for_a_while_then_gets_every_body_in_order_exactly_once(backend: Backend) {
    let mut forward = Target::down();
    let resign = Target::up(Mode::Unavailable).await;
    let targets = vec![target_config("forward", &forward, "", 5), target_config("resign", &resign, TARGET_SECRET, 5)];
    let Some(app) = spawn_app_with(backend, |config| relay_config(config, targets)).await else { return };
    let sent: Vec<Vec<u8>> = (0..20).map(webhook_body).collect();
    for body in &sent {
        let (status, _) = post_webhook(&app, body).await;
        assert_eq!(status, 200);
    }
    // The outage: one target refuses connections, the other answers 503; both keep retrying.
    eventually("retries at both targets", Duration::from_secs(10), || async {
        metric(&app, "renkei_relay_retried_total", "forward").await >= 3
            && metric(&app, "renkei_relay_retried_total", "resign").await >= 3
    })
    .await;
    assert_eq!((forward.count(), resign.count()), (0, 0));
    eventually("20 bodies queued for each", Duration::from_secs(5), || async {
        metric(&app, "renkei_relay_queue_depth", "forward").await == 20
            && metric(&app, "renkei_relay_queue_depth", "resign").await == 20
    })
    .await;

    forward.come_up(Mode::Accept).await;
    resign.set_mode(Mode::Accept);
    delivered_all(&app, "forward", &forward, 20).await;
    delivered_all(&app, "resign", &resign, 20).await;
    // LINE's own signature, forwarded; the other target's made with its secret.
    assert_bodies(&forward, &sent, SECRET);
    assert_bodies(&resign, &sent, TARGET_SECRET);
    assert!(!renkei_line::verify_signature(SECRET, &sent[0], &resign.received()[0].1));
    assert_eq!(metric(&app, "renkei_relay_dead_lettered_total", "forward").await, 0);
}

async fn a_hanging_target_delays_neither_lines_200_nor_another_target(backend: Backend) {
    let hang = Target::up(Mode::Hang).await;
    let ok = Target::up(Mode::Accept).await;
    let targets = vec![target_config("hang", &hang, "", 30), target_config("ok", &ok, "", 5)];
    let Some(app) = spawn_app_with(backend, |config| relay_config(config, targets)).await else { return };
    let sent: Vec<Vec<u8>> = (0..10).map(webhook_body).collect();
    for body in &sent {
        let (status, took) = post_webhook(&app, body).await;
        assert_eq!(status, 200);
        assert!(took < Duration::from_secs(1), "LINE's 200 took {took:?} while a relay target hangs");
    }
    delivered_all(&app, "ok", &ok, 10).await;
    assert_bodies(&ok, &sent, SECRET);
    // Meanwhile the hanging target holds its first body's request open, and got nothing.
    assert!(hang.shared.hanging.load(Ordering::SeqCst) >= 1, "the hanging target was never tried");
    assert_eq!(hang.count(), 0);
    eventually("10 bodies queued for the hanging target", Duration::from_secs(5), || async {
        metric(&app, "renkei_relay_queue_depth", "hang").await == 10
    })
    .await;
    // LINE's 200 still comes at once.
    let (status, took) = post_webhook(&app, &webhook_body(10)).await;
    assert!(status == 200 && took < Duration::from_secs(1), "{status} after {took:?}");
}

async fn a_queued_body_survives_a_restart(backend: Backend) {
    let mut target = Target::down();
    let targets = vec![target_config("crm", &target, TARGET_SECRET, 5)];
    let configure = {
        let targets = targets.clone();
        move |config: &mut Config| relay_config(config, targets)
    };
    let Some(app) = spawn_app_with(backend, configure.clone()).await else { return };
    let sent: Vec<Vec<u8>> = (0..3).map(webhook_body).collect();
    for body in &sent {
        assert_eq!(post_webhook(&app, body).await.0, 200);
    }
    eventually("a failed attempt", Duration::from_secs(10), || async {
        metric(&app, "renkei_relay_retried_total", "crm").await >= 1
    })
    .await;
    // Stopped before any delivery; the next instance delivers what was queued.
    let app = app.restart(configure).await;
    target.come_up(Mode::Accept).await;
    delivered_all(&app, "crm", &target, 3).await;
    assert_bodies(&target, &sent, TARGET_SECRET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_owns_replies_when_reply_owner_names_it() {
    use renkei_line_sim::{LineSim, SimConfig};
    let sim = LineSim::spawn(SimConfig::default()).await.expect("simulator");
    let target = Target::up(Mode::Accept).await;
    // A linked-account request gets renkei's reply only when renkei owns replies.
    for (owner, replied) in [("crm", false), ("renkei", true)] {
        let targets = vec![target_config("crm", &target, "", 5)];
        let app = spawn_app_with(Backend::Sqlite, |config| {
            relay_config(config, targets);
            config.webhook.reply_owner = owner.into();
            config.line.channel_secret = Secret::from(sim.channel_secret());
            config.line.channel_access_token = Secret::from(sim.access_token());
            config.line.api_base_url = sim.base_url();
        })
        .await
        .expect("sqlite app");
        sim.set_webhook_url(Some(format!("{}/webhook/line", app.base)));
        let before = target.count();
        let someone = user(if replied { 901 } else { 900 });
        assert_eq!(sim.send_postback(&someone, "action=link").await.expect("postback").status, 200);
        // The relay has the body, and the worker has handled the event.
        eventually("the relayed postback", Duration::from_secs(10), || async { target.count() > before }).await;
        eventually("the postback handled", Duration::from_secs(10), || async {
            app.store.pending_webhook_events().await.expect("pending") == 0
        })
        .await;
        let messages = sim.messages_to(someone.as_str());
        assert_eq!(!messages.is_empty(), replied, "reply_owner {owner}: {messages:?}");
    }
}

async fn a_body_out_of_attempts_is_dead_lettered_and_the_next_one_goes(backend: Backend) {
    let target = Target::up(Mode::Unavailable).await;
    let targets = vec![target_config("crm", &target, "", 5)];
    let Some(app) = spawn_app_with(backend, |config| {
        relay_config(config, targets);
        config.webhook.relay_max_attempts = 2;
    })
    .await
    else {
        return;
    };
    let sent: Vec<Vec<u8>> = (0..4).map(webhook_body).collect();
    for body in &sent[..2] {
        assert_eq!(post_webhook(&app, body).await.0, 200);
    }
    eventually("two dead letters", Duration::from_secs(10), || async {
        metric(&app, "renkei_relay_dead_lettered_total", "crm").await == 2
            && metric(&app, "renkei_relay_dead_letters", "crm").await == 2
            && metric(&app, "renkei_relay_queue_depth", "crm").await == 0
    })
    .await;
    assert_eq!(metric(&app, "renkei_relay_retried_total", "crm").await, 2, "one retry each, then given up");
    // The target is back: later bodies go; the dead ones stay dead (kept, not sent).
    target.set_mode(Mode::Accept);
    for body in &sent[2..] {
        assert_eq!(post_webhook(&app, body).await.0, 200);
    }
    delivered_all(&app, "crm", &target, 2).await;
    assert_bodies(&target, &sent[2..], SECRET);
    assert_eq!(app.store.relay_counts("crm").await.expect("counts"), renkei_store::RelayCounts { pending: 0, dead: 2 });
}

/// Another instance on `url`'s database, configured as `configure` says:
/// its base URL, and what stops it when dropped.
async fn another_instance(
    url: &str,
    configure: impl FnOnce(&mut Config),
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let store = renkei_store::connect(url).await.expect("the same database");
    let mut config = test_config(url);
    configure(&mut config);
    let app = Application::build(&config, store, Arc::new(renkei_core::SystemClock)).await.expect("build");
    let base = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    (base, stop)
}

/// Two instances on one PostgreSQL take webhooks in turn: the target gets
/// every body once, in the order they were accepted, also after the
/// instance that delivered stops and the other takes its lease over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_relay_each_body_once_in_order() {
    let Some(test_store) = renkei_test_support::postgres().await.expect("postgres") else { return };
    let target = Target::up(Mode::Accept).await;
    let targets = vec![target_config("crm", &target, "", 5)];
    let url = test_store.url.clone();
    let first = spawn_app_on(test_store, |config| relay_config(config, targets.clone())).await;
    let (second, stop_second) = another_instance(&url, |config| relay_config(config, targets)).await;
    let sent: Vec<Vec<u8>> = (0..30).map(webhook_body).collect();
    let post_to = |base: String, body: Vec<u8>| {
        let request = first
            .http
            .post(format!("{base}/webhook/line"))
            .header("x-line-signature", renkei_line::sign(SECRET, &body))
            .body(body);
        async move { request.send().await.expect("webhook").status().as_u16() }
    };
    for (n, body) in sent[..20].iter().enumerate() {
        let base = if n % 2 == 0 { first.base.clone() } else { second.clone() };
        assert_eq!(post_to(base, body.clone()).await, 200);
    }
    eventually("20 bodies relayed", Duration::from_secs(30), || async { target.count() >= 20 }).await;
    // One instance stops (releasing its lease, if it had it); the other goes on.
    drop(stop_second);
    for body in &sent[20..] {
        assert_eq!(post_to(first.base.clone(), body.clone()).await, 200);
    }
    eventually("30 bodies relayed", Duration::from_secs(30), || async { target.count() >= 30 }).await;
    eventually("the queue empty", Duration::from_secs(10), || async {
        first.store.relay_counts("crm").await.expect("counts").pending == 0
    })
    .await;
    assert_bodies(&target, &sent, SECRET);
}

renkei_test_support::on_both_backends!(
    multi_thread, renkei_test_support::available =>
    a_target_down_for_a_while_then_gets_every_body_in_order_exactly_once,
    a_hanging_target_delays_neither_lines_200_nor_another_target,
    a_queued_body_survives_a_restart,
    a_body_out_of_attempts_is_dead_lettered_and_the_next_one_goes,
);
