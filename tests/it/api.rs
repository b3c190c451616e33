//! The ingestion HTTP API over real HTTP, on SQLite and PostgreSQL.

use crate::common::{API_KEY, TestApp};
use renkei_core::LineUserId;
use serde_json::{Value, json};

const USER_1: &str = "U00000000000000000000000000000001";

fn purchase(id: &str, member: &str) -> Value {
    json!({"event_id": id, "type": "purchase", "member_id": member,
           "occurred_at": "2026-11-23T10:00:00+09:00", "properties": {"amount": 1200, "sku": "A-1"}})
}

async fn health_and_auth(app: TestApp) {
    let (status, body) = app.send(app.http.get(format!("{}/healthz", app.base))).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.send(app.http.post(format!("{}/v1/events", app.base)).json(&json!({"events": []}))).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let wrong = app
        .http
        .post(format!("{}/v1/events", app.base))
        .bearer_auth(format!("{API_KEY}x"))
        .json(&json!({"events": []}));
    assert_eq!(app.send(wrong).await.0, 401);
    let (status, body) = app.get("/v1/nothing-here").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
}

async fn events_are_accepted_and_repeats_counted(app: TestApp) {
    let (status, body) = app
        .post("/v1/events", &json!({"events": [purchase("o1", "m1"), purchase("o2", "m1"), purchase("o1", "m1")]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"accepted": 2, "duplicates": 1}));
    let (_, body) = app.post("/v1/events", &json!({"events": [purchase("o2", "m1")]})).await;
    assert_eq!(body, json!({"accepted": 0, "duplicates": 1}));
    assert_eq!(app.store.counts().await.expect("counts").events, 2);
    let metrics = app.send(app.http.get(format!("{}/metrics", app.base))).await.1;
    let metrics = metrics.as_str().expect("text").to_string();
    assert!(metrics.contains("renkei_events_accepted_total 2"), "{metrics}");
    assert!(metrics.contains("renkei_events_duplicate_total 2"), "{metrics}");
    // PostgreSQL's inbox: merged by this instance, and the gauge comes down
    // to 0 at the health prober's next count. SQLite has no inbox, no gauge.
    if app.store.keeps_inbox() {
        assert!(metrics.contains("renkei_events_merged_total 2"), "{metrics}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let metrics = app.send(app.http.get(format!("{}/metrics", app.base))).await.1;
            if metrics.as_str().is_some_and(|m| m.contains("renkei_events_unmerged 0")) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no renkei_events_unmerged 0: {metrics}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    } else {
        assert!(!metrics.contains("renkei_events_unmerged"), "{metrics}");
    }
}

/// Each bad batch gets its 4xx and leaves the store as it was.
async fn bad_input_is_refused_and_nothing_is_stored(app: TestApp) {
    app.post("/v1/events", &json!({"events": [purchase("seed", "m1")]})).await;
    let before = app.store.counts().await.expect("counts");
    let long_member = "m".repeat(10_000);
    let cases: Vec<(&str, Value, u16, usize, &str)> = vec![
        ("wrong type", json!({"type": 3, "member_id": "m1", "occurred_at": "2026-11-23T10:00:00Z"}), 422, 1, "type"),
        ("missing type", json!({"member_id": "m1", "occurred_at": "2026-11-23T10:00:00Z"}), 422, 1, "type"),
        ("missing occurred_at", json!({"type": "purchase", "member_id": "m1"}), 422, 1, "occurred_at"),
        (
            "no offset",
            json!({"type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T10:00:00"}),
            422,
            1,
            "occurred_at",
        ),
        (
            "unknown field",
            json!({"type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T10:00:00Z", "amount": 5}),
            422,
            1,
            "amount",
        ),
        (
            "bad line_user_id",
            json!({"type": "purchase", "line_user_id": "U123", "occurred_at": "2026-11-23T10:00:00Z"}),
            422,
            1,
            "line_user_id",
        ),
        (
            "long member_id",
            json!({"type": "purchase", "member_id": long_member, "occurred_at": "2026-11-23T10:00:00Z"}),
            422,
            1,
            "member_id",
        ),
    ];
    for (what, bad, status, index, field) in cases {
        let (got, body) = app.post("/v1/events", &json!({"events": [purchase("fine", "m2"), bad]})).await;
        assert_eq!(got, status, "{what}: {body}");
        let errors = body["errors"].as_array().unwrap_or_else(|| panic!("{what}: no errors in {body}"));
        assert!(
            errors.iter().any(|e| e["index"] == index
                && e["field"] == field
                && e["message"].as_str().is_some_and(|m| !m.is_empty())),
            "{what}: {body}"
        );
        assert_eq!(app.store.counts().await.expect("counts"), before, "{what}: nothing stored");
    }

    let (status, body) = app.post_raw("/v1/events", b"{\"events\": [ {\"type\": ".to_vec()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_json")), "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("line 1")), "{body}");

    let mut huge = b"{\"events\": [".to_vec();
    let one = serde_json::to_vec(&purchase("big", "m1")).expect("json");
    while huge.len() < 10 * 1024 * 1024 {
        huge.extend_from_slice(&one);
        huge.push(b',');
    }
    huge.extend_from_slice(&one);
    huge.extend_from_slice(b"]}");
    let (status, body) = app.post_raw("/v1/events", huge).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("body_too_large")), "{body}");

    let many: Vec<Value> = (0..10_001)
        .map(|i| json!({"type": "x", "member_id": "m", "occurred_at": format!("2026-11-23T10:00:{:02}Z", i % 60)}))
        .collect();
    let (status, body) = app.post("/v1/events", &json!({"events": many})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("batch_too_large")), "{body}");

    let (status, _) = app.post("/v1/events", &json!([purchase("x", "m")])).await;
    assert_eq!(status, 400, "the body must be an object");
    let (status, _) = app.post("/v1/events", &json!({"events": [], "extra": 1})).await;
    assert_eq!(status, 422);
    assert_eq!(app.store.counts().await.expect("counts"), before, "nothing stored by any bad request");
}

async fn members_merge_and_null_deletes(app: TestApp) {
    let (status, body) = app
        .post(
            "/v1/members",
            &json!({"members": [{"member_id": "m1", "attributes": {"rank": "silver", "name": "花子"}}]}),
        )
        .await;
    assert_eq!((status, body["created"].as_u64()), (200, Some(1)), "{body}");
    let (status, body) = app
        .post("/v1/members", &json!({"members": [{"member_id": "m1", "attributes": {"rank": "gold", "name": null}}]}))
        .await;
    assert_eq!((status, body["updated"].as_u64()), (200, Some(1)), "{body}");
    let member = app.store.get_member(&"m1".parse().expect("id")).await.expect("get").expect("exists");
    assert_eq!(Value::Object(member.attributes), json!({"rank": "gold"}));
    let before = app.store.counts().await.expect("counts");
    let (status, body) =
        app.post("/v1/members", &json!({"members": [{"member_id": "m2"}, {"member_id": "", "attributes": []}]})).await;
    assert_eq!(status, 422, "{body}");
    let fields: Vec<&str> =
        body["errors"].as_array().expect("errors").iter().filter_map(|e| e["field"].as_str()).collect();
    assert_eq!(fields, ["member_id", "attributes"]);
    assert_eq!(app.store.counts().await.expect("counts"), before);
}

async fn links_lifecycle(app: TestApp) {
    let link = json!({"member_id": "m1", "line_user_id": USER_1});
    let (status, body) = app.post("/v1/links", &link).await;
    assert_eq!((status, body["method"].as_str()), (201, Some("api")), "{body}");
    let (status, _) = app.post("/v1/links", &link).await;
    assert_eq!(status, 200, "linking the same pair again is a no-op");
    let (status, body) = app.get("/v1/links/m1").await;
    assert_eq!((status, body["line_user_id"].as_str()), (200, Some(USER_1)));
    assert!(body["linked_at"].as_str().is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()), "{body}");

    let before = app.store.counts().await.expect("counts");
    let (status, body) = app.post("/v1/links", &json!({"member_id": "m2", "line_user_id": USER_1})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "a claimed LINE user: {body}");
    let (status, _) =
        app.post("/v1/links", &json!({"member_id": "m3", "line_user_id": "u00000000000000000000000000000001"})).await;
    assert_eq!(status, 422);
    let (status, _) = app.post("/v1/links", &json!({"member_id": "m3"})).await;
    assert_eq!(status, 422);
    assert_eq!(app.store.counts().await.expect("counts"), before);

    let (status, body) = app.delete("/v1/links/m1").await;
    assert_eq!((status, body["unlinked"]["line_user_id"].as_str()), (200, Some(USER_1)));
    assert_eq!(app.get("/v1/links/m1").await.0, 404);
    assert_eq!(app.delete("/v1/links/m1").await.0, 404);
    let long = "x".repeat(200);
    assert_eq!(app.get(&format!("/v1/links/{long}")).await.0, 400);
}

async fn events_resolve_through_links(app: TestApp) {
    let events = json!({"events": [
        purchase("before-link", "m1"),
        {"event_id": "by-user", "type": "message", "line_user_id": USER_1, "occurred_at": "2026-11-23T11:00:00+09:00"}
    ]});
    assert_eq!(app.post("/v1/events", &events).await.0, 200);
    let user = LineUserId::parse(USER_1).expect("id");
    assert_eq!(app.store.user_events(&user).await.expect("events").len(), 1);
    app.post("/v1/links", &json!({"member_id": "m1", "line_user_id": USER_1})).await;
    let ids: Vec<Option<String>> =
        app.store.user_events(&user).await.expect("events").into_iter().map(|e| e.event_id).collect();
    assert_eq!(ids, [Some("before-link".to_string()), Some("by-user".to_string())]);
}

/// Issue 17's smaller items over HTTP: each answered with the JSON error.
async fn the_request_line_headers_and_odd_input_get_json_errors(app: TestApp) {
    let url = format!("{}/v1/members", app.base);
    let lower = app.http.post(&url).header("authorization", format!("bearer {API_KEY}"));
    let (status, body) = app.send(lower.json(&json!({"members": [{"member_id": "m1"}]}))).await;
    assert_eq!(status, 200, "the scheme is case-insensitive: {body}");

    let response = app.http.put(format!("{}/v1/events", app.base)).bearer_auth(API_KEY).send().await.expect("put");
    assert_eq!(response.status().as_u16(), 405);
    assert!(response.headers().get("allow").is_some_and(|v| v.to_str().is_ok_and(|v| v.contains("POST"))));
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    let (status, body) = app.get(&format!("/v1/segments?x={}", "a".repeat(9_000))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (414, Some("uri_too_long")), "{body}");
    let huge = app.http.get(format!("{}/healthz", app.base)).header("x-filler", "b".repeat(40_000));
    let (status, body) = app.send(huge).await;
    assert_eq!((status, body["error"]["code"].as_str()), (431, Some("headers_too_large")), "{body}");

    let before = app.store.counts().await.expect("counts");
    let wide = br#"{"events": [{"type": "purchase", "member_id": "m1", "occurred_at": "2026-11-23T10:00:00Z",
        "properties": {"amount": 123456789012345678901234567890}}]}"#;
    let (status, body) = app.post_raw("/v1/events", wide.to_vec()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_json")), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("events[0].properties.amount") && message.contains("64 bits"), "{body}");
    let (status, body) = app.post("/v1/members", &json!({"members": [{"member_id": "   "}]})).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["errors"][0]["message"].as_str().is_some_and(|m| m.contains("only spaces")), "{body}");
    let (status, body) = app.get("/v1/links/%20%20").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_member_id")), "{body}");
    assert_eq!(app.store.counts().await.expect("counts"), before, "nothing stored");
}

renkei_test_support::on_both_backends!(
    crate::common::spawn_app =>
    health_and_auth,
    events_are_accepted_and_repeats_counted,
    bad_input_is_refused_and_nothing_is_stored,
    members_merge_and_null_deletes,
    links_lifecycle,
    events_resolve_through_links,
    the_request_line_headers_and_odd_input_get_json_errors,
);

/// `count` purchases with event ids `<prefix>-<i>`, spread over `members` members.
fn purchases(prefix: &str, count: u32, members: u32) -> Vec<renkei_core::NewEvent> {
    (0..count)
        .map(|i| {
            let event = json!({"event_id": format!("{prefix}-{i}"), "type": "purchase", "member_id": format!("m{}", i % members),
                               "occurred_at": "2026-11-23T10:00:00Z"});
            renkei_core::parse_event_batch(&[event]).expect("valid").remove(0)
        })
        .collect()
}

/// Events another instance appended to PostgreSQL's inbox and never merged
/// (it crashed after its 200s) are merged by a running instance's sweep,
/// without any request to this one.
#[tokio::test]
async fn an_instance_merges_what_another_appended_on_postgres() {
    let Some(app) = crate::common::spawn_app(crate::common::Backend::Postgres).await else { return };
    let events = purchases("left", 2_500, 50);
    let appended = app.store.append_events(&events, chrono::Utc::now()).await.expect("append");
    assert_eq!((appended.outcome.accepted, appended.merged_later), (2_500, true));
    let started = std::time::Instant::now();
    crate::common::events_merged(&app.store).await;
    let took = started.elapsed();
    assert_eq!(app.store.counts().await.expect("counts").events, 2_500);
    assert!(took < std::time::Duration::from_secs(3), "merged by the next sweep (every second): took {took:?}");
    let metrics = app.send(app.http.get(format!("{}/metrics", app.base))).await.1;
    assert!(metrics.as_str().is_some_and(|m| m.contains("renkei_events_merged_total 2500")), "{metrics}");
}

/// Behind a burst (batches still arriving, each merge coming back full) the
/// merger takes one batch per second so that replies keep the machine; once
/// the batches stop it drains the inbox at full speed (PostgreSQL's inbox).
#[tokio::test]
async fn a_burst_is_merged_one_batch_a_second_then_drained_on_postgres() {
    let Some(store) = renkei_test_support::store::postgres().await.expect("postgres") else { return };
    let events = purchases("burst", 35_000, 70);
    store.append_events(&events, chrono::Utc::now()).await.expect("append");
    let metrics = std::sync::Arc::new(renkei_api::IngestMetrics::default());
    let merger = std::sync::Arc::new(renkei_api::EventMerger::new(
        store.store.clone(),
        std::sync::Arc::new(renkei_core::NoChangeListener),
        metrics.clone(),
    ));
    let merged = || metrics.events_merged.load(std::sync::atomic::Ordering::Relaxed);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(merger.clone().run(async move {
        let _ = stopped.await;
    }));
    // Batches keep arriving for 2.5 s: one merge at once, then one a second
    // (at full speed all 35,000 would be merged well within it).
    let burst = std::time::Instant::now();
    while burst.elapsed() < std::time::Duration::from_millis(2_500) {
        merger.appended();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let during = merged();
    assert!(
        (u64::from(renkei_api::merger::MERGE_ROWS)..=3 * u64::from(renkei_api::merger::MERGE_ROWS)).contains(&during),
        "one to three batches merged during the burst, not {during}"
    );
    crate::common::events_merged(&store.store).await;
    assert_eq!((merged(), store.counts().await.expect("counts").events), (35_000, 35_000));
    let _ = stop.send(());
    running.await.expect("merger");
}
