//! `renkei serve` with the segment engine and the LINE webhook wired in:
//! ingested events and signed follow / unfollow webhooks move users in and
//! out of segments, visible on `GET /v1/segments…`; on SQLite and PostgreSQL.

use crate::common::{Backend, TestApp, spawn_app_with};
use renkei_core::LineUserId;
use renkei_line_sim::{LineSim, SimConfig, SimHandle};
use serde_json::{Value, json};
use std::future::Future;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const USER_1: &str = "U00000000000000000000000000000001";
const USER_2: &str = "U00000000000000000000000000000002";
const USER_3: &str = "U0000000000000000000000000000000a";

const RECENT_BUYERS: &str = "id: recent_buyers\nname: 最近の購入者\nrule:\n  all:\n    - linked: true\n    - event: purchase\n      within: 30d\n";
const FRIENDS: &str = "id: friends\nname: 友だち\nrule:\n  following: true\n";

renkei_test_support::on_both_backends!(
    renkei_test_support::available =>
    an_ingested_event_moves_a_user_into_a_segment,
    without_the_evaluator_role_nothing_is_evaluated,
    a_signed_follow_webhook_changes_following_segments,
);

/// A segments directory holding the given YAML files.
fn segments_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, yaml) in files {
        std::fs::write(dir.path().join(name), yaml).expect("write segment");
    }
    dir
}

fn purchase(id: &str, member: &str, hours_ago: i64) -> Value {
    let at = chrono::Utc::now() - chrono::Duration::hours(hours_ago);
    json!({"event_id": id, "type": "purchase", "member_id": member, "occurred_at": at.to_rfc3339(),
           "properties": {"amount": 3200}})
}

async fn members(app: &TestApp, segment: &str) -> Value {
    let (status, body) = app.get(&format!("/v1/segments/{segment}/members")).await;
    assert_eq!(status, 200, "{body}");
    body["line_user_ids"].clone()
}

async fn metrics(app: &TestApp) -> String {
    let (status, body) = app.send(app.http.get(format!("{}/metrics", app.base))).await;
    assert_eq!(status, 200);
    body.as_str().expect("text").to_string()
}

/// Polls `check` until it holds (webhooks are processed after the 200).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn an_ingested_event_moves_a_user_into_a_segment(backend: Backend) {
    let dir = segments_dir(&[("recent_buyers.yaml", RECENT_BUYERS), ("friends.yml", FRIENDS)]);
    let Some(app) = spawn_app_with(backend, |c| c.paths.segments = dir.path().to_path_buf()).await else { return };
    let evaluator = app.evaluator.clone().expect("evaluator role is on by default");
    evaluator.recomputed().await;

    // The segment routes sit behind the same bearer key as the rest of /v1.
    let anonymous = app.send(app.http.get(format!("{}/v1/segments", app.base))).await;
    assert_eq!((anonymous.0, anonymous.1["error"]["code"].as_str()), (401, Some("unauthorized")));
    let wrong_key = app.http.get(format!("{}/v1/segments/recent_buyers/members", app.base)).bearer_auth("nope");
    assert_eq!(app.send(wrong_key).await.0, 401);

    for (member, user) in [("m1", USER_1), ("m2", USER_2)] {
        let (status, body) = app.post("/v1/links", &json!({"member_id": member, "line_user_id": user})).await;
        assert_eq!(status, 201, "{body}");
    }
    evaluator.idle().await;
    assert_eq!(members(&app, "recent_buyers").await, json!([]), "linked, but no purchase yet");

    // A purchase 2 h ago for m1; one 40 days ago for m2 (outside `within: 30d`).
    let (status, body) =
        app.post("/v1/events", &json!({"events": [purchase("o1", "m1", 2), purchase("o2", "m2", 40 * 24)]})).await;
    assert_eq!((status, body), (200, json!({"accepted": 2, "duplicates": 0})));
    evaluator.idle().await;
    assert_eq!(members(&app, "recent_buyers").await, json!([USER_1]));

    let (status, body) = app.get("/v1/segments").await;
    assert_eq!(status, 200, "{body}");
    let sizes: Vec<(String, u64)> = body["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| (s["id"].as_str().unwrap_or("").to_string(), s["size"].as_u64().unwrap_or(99)))
        .collect();
    // Linked users count as friends until an unfollow is seen.
    assert_eq!(sizes, vec![("friends".to_string(), 2), ("recent_buyers".to_string(), 1)]);
    assert_eq!(body["segments"][1]["name"], "最近の購入者");

    let (status, body) = app.get("/v1/segments/no_such_segment/members").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));

    let text = metrics(&app).await;
    assert!(text.contains("renkei_segments_configured 2"), "{text}");
    assert!(text.contains("renkei_segment_recomputes_total 1"), "{text}");
    assert!(text.contains("renkei_segment_recompute_running 0"), "{text}");
    let reported = text
        .lines()
        .find_map(|l| l.strip_prefix("renkei_segment_changes_reported_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("changes counter");
    assert!(reported >= 4, "two links and two events were reported: {reported}");
    // The engine is idle: nothing waits, and what was reported was evaluated.
    assert!(text.contains("renkei_segment_queue_users 0"), "{text}");
    assert!(text.contains("renkei_segment_queue_lag_seconds 0.000"), "{text}");
    let evaluated = text
        .lines()
        .find_map(|l| l.strip_prefix("renkei_segment_queue_evaluated_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("evaluated counter");
    assert!(evaluated >= 2, "the two linked users were evaluated from the queue: {evaluated}");
}

async fn without_the_evaluator_role_nothing_is_evaluated(backend: Backend) {
    let dir = segments_dir(&[("recent_buyers.yaml", RECENT_BUYERS)]);
    let Some(app) = spawn_app_with(backend, |c| {
        c.paths.segments = dir.path().to_path_buf();
        c.roles.evaluator = false;
    })
    .await
    else {
        return;
    };
    assert!(app.evaluator.is_none());
    assert_eq!(app.post("/v1/links", &json!({"member_id": "m1", "line_user_id": USER_1})).await.0, 201);
    assert_eq!(app.post("/v1/events", &json!({"events": [purchase("o1", "m1", 2)]})).await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The API still answers from the stored memberships (kept by another instance).
    assert_eq!(members(&app, "recent_buyers").await, json!([]));
    let (status, body) = app.get("/v1/segments").await;
    assert_eq!((status, body["segments"][0]["size"].as_u64()), (200, Some(0)), "{body}");
    assert!(!metrics(&app).await.contains("renkei_segment_recompute"), "no engine, no engine metrics");
}

async fn spawn_with_sim(backend: Backend, dir: &TempDir) -> Option<(TestApp, SimHandle)> {
    let sim = LineSim::spawn(SimConfig::default()).await.expect("simulator");
    let app = spawn_app_with(backend, |c| {
        c.paths.segments = dir.path().to_path_buf();
        c.line.channel_secret = sim.channel_secret().into();
        c.line.channel_access_token = sim.access_token().into();
        c.line.api_base_url = sim.base_url();
    })
    .await?;
    sim.set_webhook_url(Some(format!("{}/webhook/line", app.base)));
    Some((app, sim))
}

async fn a_signed_follow_webhook_changes_following_segments(backend: Backend) {
    let dir = segments_dir(&[("friends.yaml", FRIENDS)]);
    let Some((app, sim)) = spawn_with_sim(backend, &dir).await else { return };
    let user = LineUserId::parse(USER_3).expect("user id");

    // Unsigned or wrongly signed deliveries are refused before anything is stored.
    let unsigned = app.http.post(format!("{}/webhook/line", app.base)).body(r#"{"destination":"x","events":[]}"#);
    assert_eq!(app.send(unsigned).await.0, 401);
    let forged = app
        .http
        .post(format!("{}/webhook/line", app.base))
        .header("x-line-signature", "AAAA")
        .body(r#"{"destination":"x","events":[]}"#);
    assert_eq!(app.send(forged).await.0, 401);
    assert_eq!(members(&app, "friends").await, json!([]));

    let delivery = sim.send_follow(&user).await.expect("follow delivered");
    assert_eq!(delivery.status, 200, "renkei accepted the simulator's signed follow");
    eventually("the follower to enter `friends`", || async { members(&app, "friends").await == json!([USER_3]) }).await;
    assert_eq!(app.store.get_following(&user).await.expect("following"), Some(true));

    let delivery = sim.send_unfollow(&user).await.expect("unfollow delivered");
    assert_eq!(delivery.status, 200);
    eventually("the blocker to leave `friends`", || async { members(&app, "friends").await == json!([]) }).await;

    let text = metrics(&app).await;
    assert!(text.contains("renkei_webhook_events_pending 0"), "{text}");
    let (status, body) = app.get("/v1/segments").await;
    assert_eq!(status, 200);
    assert_eq!(body["segments"][0]["size"], 0);
    assert!(body["segments"][0]["updated_at"].is_string(), "two transitions were recorded: {body}");
}

#[tokio::test]
async fn invalid_segments_stop_start_up_with_file_line_col() {
    let dir =
        segments_dir(&[("friends.yaml", FRIENDS), ("broken.yaml", "id: broken\nname: x\nrule:\n  folowing: true\n")]);
    let test = renkei_test_support::sqlite().await.expect("sqlite");
    let mut config = renkei::config::Config::load_with_env(None, &[]).expect("defaults");
    config.server.bind = ([127, 0, 0, 1], 0).into();
    config.paths.segments = dir.path().to_path_buf();
    let clock: std::sync::Arc<dyn renkei_core::Clock> = std::sync::Arc::new(renkei_core::SystemClock);
    let Err(error) = renkei::app::Application::build(&config, test.store.clone(), clock).await else {
        panic!("start-up must fail on an invalid segment file");
    };
    let message = format!("{error:#}");
    assert!(message.contains(&format!("{}:4:3:", dir.path().join("broken.yaml").display())), "{message}");
}
