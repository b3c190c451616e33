//! A fan-out campaign (再入荷) end to end over real HTTP with the LINE
//! simulator, on both backends: a restock reaches every user who favourited
//! the SKU within the window, once each, by multicast (500 a request); a
//! repeat restock of the SKU inside the window sends nothing, also after a
//! restart.

use crate::common::{Backend, TestApp, spawn_app_with};
use chrono::{Duration, Utc};
use renkei_core::{LineUserId, MemberId, MemberPatch};
use renkei_line_sim::{Endpoint, LineSim, SimConfig, SimHandle};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;
use tempfile::TempDir;

renkei_test_support::on_both_backends!(
    renkei_test_support::available =>
    a_restock_reaches_each_favouriter_once_by_multicast_and_a_repeat_sends_nothing,
);

const FAVOURITERS: u32 = 1_234;
/// Favourited the SKU 100 days ago: outside the 90-day window.
const LONG_AGO: u32 = 5_000;
/// Favourited another SKU only.
const OTHER_SKU: u32 = 5_001;
/// Favourites the other SKU after its first restock.
const LATER: u32 = 5_002;

const CAMPAIGN: &str = "id: restock\nname: 再入荷\ntrigger:\n  fanout:\n    event: restock\n    where: { stock: { gte: 1 } }\n    to: { event: favorite, match: [sku], within: 90d }\nmessages:\n  - template: restock_notice\n    alt_text: \"再入荷のお知らせ: {{event.properties.product_name}}\"\n";

struct Files {
    campaigns: TempDir,
    templates: TempDir,
}

fn files() -> Files {
    let files =
        Files { campaigns: tempfile::tempdir().expect("tempdir"), templates: tempfile::tempdir().expect("tempdir") };
    std::fs::write(files.campaigns.path().join("restock.yaml"), CAMPAIGN).expect("campaign");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/restock_notice.json.hbs");
    std::fs::copy(shipped, files.templates.path().join("restock_notice.json.hbs")).expect("template");
    files
}

fn configure(files: &Files, sim: &SimHandle) -> impl FnOnce(&mut renkei::config::Config) {
    let (campaigns, templates) = (files.campaigns.path().to_path_buf(), files.templates.path().to_path_buf());
    let (secret, token, base) = (sim.channel_secret().to_string(), sim.access_token().to_string(), sim.base_url());
    move |c| {
        c.paths.campaigns = campaigns;
        c.paths.templates = templates;
        c.line.channel_secret = secret.as_str().into();
        c.line.channel_access_token = token.as_str().into();
        c.line.api_base_url = base;
        // One planner: several (PostgreSQL's default is 3) claim at the same
        // time with SKIP LOCKED and may split a batch of identical messages
        // between them, into more, smaller multicasts.
        c.dispatch.planners = 1;
    }
}

fn user(n: u32) -> String {
    format!("U{n:032x}")
}

/// Polls `check` every 25 ms until it returns `Some`, failing after 60 s.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// The event trigger starts at the newest event: wait until it has.
async fn scheduler_started(app: &TestApp) {
    eventually("the event trigger to start", async || app.store.get_cursor("campaigns.events").await.ok().flatten())
        .await;
}

async fn post_events(app: &TestApp, events: Vec<Value>) {
    let n = events.len() as u64;
    let (status, body) = app.post("/v1/events", &json!({ "events": events })).await;
    assert_eq!((status, body), (200, json!({"accepted": n, "duplicates": 0})));
}

fn restock(id: &str, sku: &str, at: chrono::DateTime<Utc>) -> Value {
    json!({"event_id": id, "type": "restock", "line_user_id": user(9_999), "occurred_at": at.to_rfc3339(),
           "properties": {"sku": sku, "product_name": "リネンシャツ 白 M", "price": 6980, "stock": 5}})
}

/// Linked members (so following) for the favouriters and the two who must not be reached.
async fn members(app: &TestApp) {
    let patches: Vec<MemberPatch> = (1..=FAVOURITERS)
        .chain([LONG_AGO, OTHER_SKU, LATER])
        .map(|n| MemberPatch {
            member_id: MemberId::parse(&format!("M{n:05}")).expect("member"),
            attributes: json!({"name": format!("会員{n}")}).as_object().cloned().unwrap_or_default(),
            line_user_id: Some(LineUserId::parse(&user(n)).expect("user")),
        })
        .collect();
    app.store.upsert_members(&patches, Utc::now()).await.expect("members");
}

/// Favourites: half by member (reached through the link), half by LINE
/// user, a hundred favourited twice; one too long ago; one of another SKU.
fn favourites() -> Vec<Value> {
    let now = Utc::now();
    let favourite = |n: u32, sku: &str, ago: Duration| {
        let mut event =
            json!({"type": "favorite", "occurred_at": (now - ago).to_rfc3339(), "properties": {"sku": sku}});
        if n % 2 == 0 {
            event["member_id"] = json!(format!("M{n:05}"));
        } else {
            event["line_user_id"] = json!(user(n));
        }
        event
    };
    let mut events: Vec<Value> = (1..=FAVOURITERS).map(|n| favourite(n, "TS-001", Duration::days(1))).collect();
    events.extend((1..=100).map(|n| favourite(n, "TS-001", Duration::days(2))));
    events.push(favourite(LONG_AGO, "TS-001", Duration::days(100)));
    events.push(favourite(OTHER_SKU, "TS-002", Duration::days(1)));
    events
}

/// Every multicast's recipients, and every push's.
fn sends(sim: &SimHandle) -> (Vec<Vec<String>>, Vec<String>) {
    let multicasts = sim.requests_for(Endpoint::Multicast).into_iter().map(|r| r.recipients).collect();
    let pushes = sim.requests_for(Endpoint::Push).into_iter().flat_map(|r| r.recipients).collect();
    (multicasts, pushes)
}

async fn stats(app: &TestApp) -> Value {
    let (status, body) = app.get("/v1/campaigns/restock/stats").await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn a_restock_reaches_each_favouriter_once_by_multicast_and_a_repeat_sends_nothing(backend: Backend) {
    let files = files();
    let sim = LineSim::spawn(SimConfig::default()).await.expect("simulator");
    let Some(app) = spawn_app_with(backend, configure(&files, &sim)).await else { return };
    scheduler_started(&app).await;
    let (status, body) = app.get("/v1/campaigns").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["campaigns"][0]["trigger"],
        json!({"fanout": {"event": "restock", "to": {"event": ["favorite"], "match": ["sku"], "within": "90d"}}})
    );
    members(&app).await;
    post_events(&app, favourites()).await;
    // Restocks a few minutes ago (a restock's notices are due at its time).
    let now = Utc::now() - Duration::minutes(15);
    post_events(&app, vec![restock("restock-1", "TS-001", now)]).await;

    let multicasts = eventually("the restock's multicasts", async || {
        let (multicasts, _) = sends(&sim);
        (multicasts.iter().map(Vec::len).sum::<usize>() >= FAVOURITERS as usize).then_some(multicasts)
    })
    .await;
    let mut sizes: Vec<usize> = multicasts.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [234, 500, 500], "1,234 users in 3 multicasts");
    let mut times: BTreeMap<String, u32> = BTreeMap::new();
    for recipient in multicasts.iter().flatten() {
        *times.entry(recipient.clone()).or_default() += 1;
    }
    let expected: BTreeSet<String> = (1..=FAVOURITERS).map(user).collect();
    assert_eq!(times.keys().cloned().collect::<BTreeSet<_>>(), expected, "every favouriter, and nobody else");
    assert!(times.values().all(|n| *n == 1), "each once");
    let message = &sim.requests_for(Endpoint::Multicast)[0].messages[0];
    assert_eq!(message["altText"], "再入荷のお知らせ: リネンシャツ 白 M");

    // A repeat restock of the SKU (inside the window), then one of the other
    // SKU: once its one user has the notice, the repeat was handled before it.
    post_events(&app, vec![restock("restock-2", "TS-001", now + Duration::minutes(5))]).await;
    post_events(&app, vec![restock("restock-3", "TS-002", now + Duration::minutes(6))]).await;
    eventually("the other SKU's notice", async || (!sim.messages_to(&user(OTHER_SKU)).is_empty()).then_some(())).await;
    let body = eventually("every delivery recorded", async || {
        let body = stats(&app).await;
        (body["pending"] == 0).then_some(body)
    })
    .await;
    assert_eq!((body["sent"].clone(), body["skipped"].clone()), (json!(FAVOURITERS + 1), json!(0)), "{body}");
    let (multicasts, pushes) = sends(&sim);
    assert_eq!(multicasts.len(), 3, "the repeat sent nothing");
    assert_eq!(pushes, [user(OTHER_SKU)]);
    assert!(sim.messages_to(&user(LONG_AGO)).is_empty(), "a favourite outside the window");

    // The window outlives a restart: another repeat still sends nothing to
    // those already notified, and one of the other SKU reaches only the user
    // who favourited it since.
    let app = app.restart(configure(&files, &sim)).await;
    scheduler_started(&app).await;
    let favourite = json!({"type": "favorite", "line_user_id": user(LATER),
        "occurred_at": (now + Duration::minutes(7)).to_rfc3339(), "properties": {"sku": "TS-002"}});
    post_events(&app, vec![favourite]).await;
    post_events(&app, vec![restock("restock-4", "TS-001", now + Duration::minutes(10))]).await;
    post_events(&app, vec![restock("restock-5", "TS-002", now + Duration::minutes(11))]).await;
    eventually("the later favouriter's notice", async || (!sim.messages_to(&user(LATER)).is_empty()).then_some(()))
        .await;
    let body = eventually("every delivery recorded", async || {
        let body = stats(&app).await;
        (body["pending"] == 0).then_some(body)
    })
    .await;
    assert_eq!(body["sent"], json!(FAVOURITERS + 2), "{body}");
    let (multicasts, pushes) = sends(&sim);
    assert_eq!(multicasts.len(), 3, "no more multicasts");
    assert_eq!(pushes, [user(OTHER_SKU), user(LATER)], "the other SKU's first favouriter once");
}
