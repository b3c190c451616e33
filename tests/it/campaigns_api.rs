//! `/v1/campaigns…` over real HTTP on the in-process server, with a campaign
//! driven end to end (ingested event → segment entry → outbox → LINE
//! simulator): listing with state, stats after a send, pause and resume, 404
//! and 401; on SQLite and PostgreSQL.

use crate::common::{Backend, TestApp, spawn_app_with};
use renkei_campaigns::{LinkKeys, LinkPayload};
use renkei_line_sim::{LineSim, SimConfig, SimHandle};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub(crate) const USER_1: &str = "U00000000000000000000000000000001";
pub(crate) const USER_2: &str = "U00000000000000000000000000000002";
pub(crate) const USER_3: &str = "U00000000000000000000000000000003";

/// Linked members who bought within 30 days.
const BUYERS: &str =
    "id: buyers\nname: 購入者\nrule:\n  all:\n    - linked: true\n    - event: purchase\n      within: 30d\n";
const THANKS: &str = "id: thanks\nname: ご購入のお礼\ntrigger:\n  segment_entered: buyers\nmessages:\n  - template: thanks\n    alt_text: \"{{member.name}}さん、ご購入ありがとうございます\"\n";
const REVIEW: &str = "id: review_request\nname: レビューのお願い\ntrigger:\n  event: delivered\n  delay: 3d\naudience: buyers\nmessages:\n  - template: thanks\n    alt_text: レビューをお願いします\n";
const TEMPLATE: &str = r#"{"type": "bubble", "body": {"type": "box", "layout": "vertical", "contents": [
  {"type": "text", "text": "{{member.name}}さん、ありがとうございます", "wrap": true},
  {"type": "button", "action": {"type": "uri", "label": "カート", "uri": "{{track "https://shop.example/cart?id=1&x=%E3%81%82"}}"}}]}}"#;
/// The target of `TEMPLATE`'s tracked link.
const TARGET: &str = "https://shop.example/cart?id=1&x=%E3%81%82";
/// `server.link_keys`: the current key, then the previous one.
const LINK_KEY: &str = "campaigns-api-link-key-current-0123456789";
const OLD_LINK_KEY: &str = "campaigns-api-link-key-previous-012345678";
/// A key no longer configured.
const REMOVED_LINK_KEY: &str = "campaigns-api-link-key-removed-0123456789";

renkei_test_support::on_both_backends!(
    renkei_test_support::available =>
    campaigns_are_listed_with_their_state,
    stats_count_a_send_driven_end_to_end,
    a_paused_campaign_holds_new_triggers_until_resumed,
    unknown_campaigns_are_404_and_keys_are_required,
    tracked_links_redirect_to_the_rendered_target_once_per_recipient,
    links_of_the_previous_key_work_and_of_a_removed_key_are_404,
    goals_and_the_holdout_are_measured_end_to_end,
    a_sequence_sends_its_steps_skips_by_if_and_ends_on_exit,
    a_restart_between_steps_sends_each_step_once_and_skips_a_removed_one,
);

/// Segment, campaign and template directories, kept alive with the app.
pub(crate) struct Files {
    segments: TempDir,
    campaigns: TempDir,
    templates: TempDir,
}

pub(crate) fn files() -> Files {
    let files = Files {
        segments: tempfile::tempdir().expect("tempdir"),
        campaigns: tempfile::tempdir().expect("tempdir"),
        templates: tempfile::tempdir().expect("tempdir"),
    };
    std::fs::write(files.segments.path().join("buyers.yaml"), BUYERS).expect("segment");
    std::fs::write(files.campaigns.path().join("thanks.yaml"), THANKS).expect("campaign");
    std::fs::write(files.campaigns.path().join("review_request.yaml"), REVIEW).expect("campaign");
    std::fs::write(files.templates.path().join("thanks.json.hbs"), TEMPLATE).expect("template");
    files
}

/// The server with these campaigns, sending to a fresh LINE simulator.
pub(crate) async fn spawn(backend: Backend, files: &Files) -> Option<(TestApp, SimHandle)> {
    let sim = LineSim::spawn(SimConfig::default()).await.expect("simulator");
    let app = spawn_app_with(backend, |c| {
        c.paths.segments = files.segments.path().to_path_buf();
        c.paths.campaigns = files.campaigns.path().to_path_buf();
        c.paths.templates = files.templates.path().to_path_buf();
        c.paths.rich_menus = files.segments.path().join("no_rich_menus.yaml");
        c.line.channel_secret = sim.channel_secret().into();
        c.line.channel_access_token = sim.access_token().into();
        c.line.api_base_url = sim.base_url();
        c.server.link_keys = vec![LINK_KEY.into(), OLD_LINK_KEY.into()];
        c.dispatch.insight_refresh = "1s".parse().expect("duration");
    })
    .await?;
    Some((app, sim))
}

/// Polls `check` every 25 ms until it returns `Some`, failing after 20 s.
pub(crate) async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Segment-entry campaigns react to entries after their first start: wait
/// until the scheduler has recorded where that is.
pub(crate) async fn scheduler_started(app: &TestApp) {
    eventually("the segment-entry trigger to start", async || {
        app.store.get_cursor("campaigns.transitions").await.ok().flatten()
    })
    .await;
}

/// Links `member` to `user` and records a purchase 1 h ago: `buyers` entered.
pub(crate) async fn buy(app: &TestApp, member: &str, user: &str) {
    let (status, body) = app
        .post(
            "/v1/members",
            &json!({"members": [{"member_id": member, "attributes": {"name": format!("{member}様")}}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.post("/v1/links", &json!({"member_id": member, "line_user_id": user})).await;
    assert_eq!(status, 201, "{body}");
    let at = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let event =
        json!({"event_id": format!("order-{member}"), "type": "purchase", "member_id": member, "occurred_at": at});
    let (status, body) = app.post("/v1/events", &json!({"events": [event]})).await;
    assert_eq!((status, body), (200, json!({"accepted": 1, "duplicates": 0})));
}

/// The stats' `line` before LINE's statistics were ever fetched.
fn line_of(unit: &str, delivered: u64) -> Value {
    json!({"unit": unit, "delivered": delivered, "unique_impression": null, "unique_click": null, "updated_at": null})
}

pub(crate) async fn stats(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.get(&format!("/v1/campaigns/{id}/stats")).await;
    assert_eq!(status, 200, "{body}");
    body
}

pub(crate) async fn state_of(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.get("/v1/campaigns").await;
    assert_eq!(status, 200, "{body}");
    body["campaigns"].as_array().expect("campaigns").iter().find(|c| c["id"] == id).expect("listed")["state"].clone()
}

async fn campaigns_are_listed_with_their_state(backend: Backend) {
    let files = files();
    let Some((app, _sim)) = spawn(backend, &files).await else { return };
    let (status, body) = app.get("/v1/campaigns").await;
    assert_eq!(status, 200, "{body}");
    let mut listed = body["campaigns"].as_array().expect("campaigns array").clone();
    listed.sort_by_key(|c| c["id"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        listed,
        vec![
            json!({"id": "review_request", "name": "レビューのお願い", "trigger": {"event": "delivered"},
                   "audience": "buyers", "state": "active"}),
            json!({"id": "thanks", "name": "ご購入のお礼", "trigger": {"segment_entered": "buyers"},
                   "audience": null, "state": "active"}),
        ]
    );

    let (status, body) = app.post("/v1/campaigns/review_request/pause", &json!({})).await;
    assert_eq!((status, body), (200, json!({"campaign": "review_request", "state": "paused"})));
    assert_eq!(state_of(&app, "review_request").await, "paused");
    assert_eq!(state_of(&app, "thanks").await, "active", "only the paused campaign changes");
    assert_eq!(stats(&app, "review_request").await["state"], "paused");
    let (status, body) = app.post("/v1/campaigns/review_request/resume", &json!({})).await;
    assert_eq!((status, body), (200, json!({"campaign": "review_request", "state": "active"})));
    assert_eq!(state_of(&app, "review_request").await, "active");
}

async fn stats_count_a_send_driven_end_to_end(backend: Backend) {
    let files = files();
    let Some((app, sim)) = spawn(backend, &files).await else { return };
    scheduler_started(&app).await;
    assert_eq!(
        stats(&app, "thanks").await,
        json!({"campaign": "thanks", "state": "active", "sent": 0, "pending": 0, "failed": 0, "skipped": 0,
               "skipped_by_reason": {}, "clicked": 0, "clicked_users": 0,
               "exposed": null, "converted": null, "conversion_value": null, "holdout": null, "lift": null, "variants": null, "steps": null,
               "line": line_of("thanks", 0)})
    );

    buy(&app, "m1", USER_1).await;
    let messages = eventually("the thank-you push to reach LINE", async || {
        let messages = sim.messages_to(USER_1);
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["altText"], "m1様さん、ご購入ありがとうございます");
    assert_eq!(messages[0]["contents"]["body"]["contents"][0]["text"], "m1様さん、ありがとうございます");

    let body = eventually("the send to be recorded", async || {
        let body = stats(&app, "thanks").await;
        (body["sent"] == 1).then_some(body)
    })
    .await;
    assert_eq!(
        body,
        json!({"campaign": "thanks", "state": "active", "sent": 1, "pending": 0, "failed": 0, "skipped": 0,
               "skipped_by_reason": {}, "clicked": 0, "clicked_users": 0,
               "exposed": null, "converted": null, "conversion_value": null, "holdout": null, "lift": null, "variants": null, "steps": null,
               "line": line_of("thanks", 1)})
    );
    // The event campaign was not triggered by a purchase.
    assert_eq!(stats(&app, "review_request").await["sent"], 0);

    // A buyer who blocked the account enters the segment too, but is never messaged; the skip is counted.
    app.store
        .set_following(&renkei_core::LineUserId::parse(USER_3).expect("user"), false, chrono::Utc::now())
        .await
        .expect("unfollow");
    buy(&app, "m3", USER_3).await;
    let body = eventually("the skip to be recorded", async || {
        let body = stats(&app, "thanks").await;
        (body["skipped"] == 1).then_some(body)
    })
    .await;
    assert_eq!(
        body,
        json!({"campaign": "thanks", "state": "active", "sent": 1, "pending": 0, "failed": 0, "skipped": 1,
               "skipped_by_reason": {"unfollowed": 1}, "clicked": 0, "clicked_users": 0,
               "exposed": null, "converted": null, "conversion_value": null, "holdout": null, "lift": null, "variants": null, "steps": null,
               "line": line_of("thanks", 1)})
    );
    assert!(sim.messages_to(USER_3).is_empty());
    assert_eq!(sim.requests().iter().filter(|r| !r.recipients.is_empty()).count(), 1, "one request with a recipient");
}

async fn a_paused_campaign_holds_new_triggers_until_resumed(backend: Backend) {
    let files = files();
    let Some((app, sim)) = spawn(backend, &files).await else { return };
    scheduler_started(&app).await;

    let (status, body) = app.post("/v1/campaigns/thanks/pause", &json!({})).await;
    assert_eq!((status, body), (200, json!({"campaign": "thanks", "state": "paused"})));
    buy(&app, "m2", USER_2).await;
    // The trigger is queued…
    let body = eventually("the trigger to be queued", async || {
        let body = stats(&app, "thanks").await;
        (body["pending"] == 1).then_some(body)
    })
    .await;
    assert_eq!((body["state"].clone(), body["sent"].clone()), (json!("paused"), json!(0)), "{body}");
    // …and held: nothing reaches LINE for 2 s (ten dispatcher polls).
    let held_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < held_until {
        assert!(sim.messages_to(USER_2).is_empty(), "a paused campaign sent a message");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats(&app, "thanks").await["pending"], 1);

    let (status, body) = app.post("/v1/campaigns/thanks/resume", &json!({})).await;
    assert_eq!((status, body), (200, json!({"campaign": "thanks", "state": "active"})));
    eventually("the held push to be sent after resume", async || (sim.messages_to(USER_2).len() == 1).then_some(()))
        .await;
    let body = eventually("the send to be recorded", async || {
        let body = stats(&app, "thanks").await;
        (body["sent"] == 1).then_some(body)
    })
    .await;
    assert_eq!((body["state"].clone(), body["pending"].clone()), (json!("active"), json!(0)), "{body}");
    assert_eq!(sim.messages_to(USER_2).len(), 1, "sent once");
}

async fn unknown_campaigns_are_404_and_keys_are_required(backend: Backend) {
    let files = files();
    let Some((app, _sim)) = spawn(backend, &files).await else { return };
    let not_found = |(status, body): (u16, Value)| {
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
        let message = body["error"]["message"].as_str().expect("message").to_string();
        assert!(message.contains("nope"), "{message}");
    };
    not_found(app.get("/v1/campaigns/nope/stats").await);
    not_found(app.post("/v1/campaigns/nope/pause", &json!({})).await);
    not_found(app.post("/v1/campaigns/nope/resume", &json!({})).await);

    let anonymous = [
        app.http.get(format!("{}/v1/campaigns", app.base)),
        app.http.get(format!("{}/v1/campaigns/thanks/stats", app.base)),
        app.http.post(format!("{}/v1/campaigns/thanks/pause", app.base)),
        app.http.post(format!("{}/v1/campaigns/thanks/resume", app.base)),
        app.http.post(format!("{}/v1/campaigns/thanks/pause", app.base)).bearer_auth("wrong-key"),
    ];
    for request in anonymous {
        let (status, body) = app.send(request).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    }
    assert_eq!(state_of(&app, "thanks").await, "active", "refused requests changed nothing");
}

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// Every `link_click` event stored.
async fn link_clicks(app: &TestApp) -> usize {
    app.store.events_after(0, &["link_click".to_string()], 1_000).await.expect("events").len()
}

/// The tracked link in the one message sent to `user` (rendered on the
/// configured `public_base_url`), on the test server.
async fn sent_link(app: &TestApp, sim: &SimHandle, user: &str) -> String {
    let messages = eventually("the message with its link", async || {
        let messages = sim.messages_to(user);
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    let text = serde_json::to_string(&messages).expect("json");
    let rest = text.split("http://127.0.0.1:8080/t/").nth(1).unwrap_or_else(|| panic!("no tracked link in {text}"));
    format!("{}/t/{}", app.base, rest.split('"').next().unwrap_or_default())
}

/// `url` answers 404 with the JSON error.
async fn refused(client: &reqwest::Client, url: &str) {
    let response = client.get(url).send().await.expect("request");
    assert_eq!(response.status(), 404, "{url}");
    let body: Value = response.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "not_found", "{url}: {body}");
}

async fn tracked_links_redirect_to_the_rendered_target_once_per_recipient(backend: Backend) {
    let files = files();
    let Some((app, sim)) = spawn(backend, &files).await else { return };
    scheduler_started(&app).await;
    buy(&app, "m1", USER_1).await;
    let link = sent_link(&app, &sim, USER_1).await;
    assert!(!link.contains(USER_1) && !link.contains('?') && !link.contains("shop.example"), "opaque: {link}");
    let client = no_redirects();
    // HEAD (link previews, scanners) gets the redirect and counts nothing.
    let head = client.head(&link).send().await.expect("head");
    assert_eq!((head.status().as_u16(), head.headers()["location"].to_str().ok()), (302, Some(TARGET)));
    assert_eq!(link_clicks(&app).await, 0, "HEAD records nothing");
    for _ in 0..3 {
        let response = client.get(&link).send().await.expect("click");
        assert_eq!((response.status().as_u16(), response.headers()["location"].to_str().ok()), (302, Some(TARGET)));
    }
    assert_eq!(link_clicks(&app).await, 1, "one click per recipient and link");
    let body = stats(&app, "thanks").await;
    assert_eq!((body["clicked"].clone(), body["clicked_users"].clone()), (json!(1), json!(1)), "{body}");
    // A query cannot redirect a valid link elsewhere.
    let response = client.get(format!("{link}?to=https://evil.example/phish")).send().await.expect("click");
    assert_eq!(response.headers()["location"], TARGET);

    let token = link.rsplit('/').next().expect("token").to_string();
    let mut flipped = token.clone().into_bytes();
    let middle = flipped.len() / 2;
    flipped[middle] = if flipped[middle] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    let base = &app.base;
    for url in [
        format!("{base}/t/{flipped}"),
        format!("{base}/t/{}", &token[..token.len() - 1]),
        format!("{base}/t/thanks?to=https://evil.example/phish"),
        format!("{base}/t/thanks?u={USER_1}&to=https%3A%2F%2Fevil.example%2Fphish"),
        format!("{base}/t/thanks?u={USER_1}&to=https://shop.example@evil.example/"),
        format!("{base}/t/https%3A%2F%2Fevil.example%2Fphish"),
    ] {
        refused(&client, &url).await;
    }
    assert_eq!(link_clicks(&app).await, 1, "refused links record nothing");
    assert_eq!(stats(&app, "thanks").await["clicked"], 1);
}

async fn links_of_the_previous_key_work_and_of_a_removed_key_are_404(backend: Backend) {
    let files = files();
    let Some((app, _sim)) = spawn(backend, &files).await else { return };
    let payload = |campaign_id: &str| LinkPayload {
        campaign_id: campaign_id.into(),
        trigger_key: "entered:1".into(),
        line_user_id: USER_2.into(),
        target: TARGET.into(),
    };
    let sealed = |key: &str, campaign_id: &str| {
        let token = LinkKeys::new(&[key]).expect("key").seal(&payload(campaign_id));
        format!("{}/t/{token}", app.base)
    };
    let client = no_redirects();
    refused(&client, &sealed(REMOVED_LINK_KEY, "thanks")).await;
    refused(&client, &sealed(LINK_KEY, "nope")).await;
    assert_eq!(link_clicks(&app).await, 0, "refused links record nothing");
    let response = client.get(sealed(OLD_LINK_KEY, "thanks")).send().await.expect("click");
    assert_eq!((response.status().as_u16(), response.headers()["location"].to_str().ok()), (302, Some(TARGET)));
    assert_eq!(link_clicks(&app).await, 1, "the previous key still opens its links");
    let body = stats(&app, "thanks").await;
    assert_eq!((body["clicked"].clone(), body["clicked_users"].clone()), (json!(1), json!(1)), "{body}");
}

/// A thank-you with a goal (a later full-size purchase within 7 days, its
/// amount as value) and half its recipients held out.
const FOLLOWUP: &str = "id: followup\nname: フォロー\ntrigger:\n  segment_entered: buyers\nvariants:\n  - id: coupon\n    weight: 50\n    messages: [ { template: thanks, alt_text: クーポン } ]\n  - id: story\n    weight: 50\n    messages: [ { template: thanks, alt_text: ストーリー } ]\ngoal:\n  event: purchase\n  where: { product: { ne: trial } }\n  within: 7d\n  value: amount\nholdout: 50%\n";

fn user(i: usize) -> String {
    format!("U{i:032x}")
}

async fn goals_and_the_holdout_are_measured_end_to_end(backend: Backend) {
    let files = files();
    std::fs::remove_file(files.campaigns.path().join("thanks.yaml")).expect("only the follow-up");
    std::fs::remove_file(files.campaigns.path().join("review_request.yaml")).expect("only the follow-up");
    std::fs::write(files.campaigns.path().join("followup.yaml"), FOLLOWUP).expect("campaign");
    let Some((app, sim)) = spawn(backend, &files).await else { return };
    scheduler_started(&app).await;
    let users: Vec<String> = (1..=12).map(user).collect();
    for (i, u) in users.iter().enumerate() {
        buy(&app, &format!("m{i}"), u).await;
    }
    let holdout = renkei_campaigns::Holdout { basis_points: 5_000 };
    let held: Vec<bool> = users.iter().map(|u| holdout.holds_out("followup", u)).collect();
    let held_count = held.iter().filter(|h| **h).count() as u64;
    assert!(held_count > 0 && held_count < 12, "both groups have users: {held:?}");
    eventually("every recipient exposed", async || {
        let body = stats(&app, "followup").await;
        (body["sent"] == 12 - held_count && body["holdout"]["users"] == held_count).then_some(())
    })
    .await;
    let campaigns = renkei_campaigns::CampaignSet::from_sources(
        vec![("followup.yaml".into(), FOLLOWUP.to_string())],
        vec![("thanks".to_string(), "thanks.json.hbs".into(), TEMPLATE.to_string())],
        &renkei_segments::SegmentSet::parse_str("buyers.yaml", BUYERS).expect("segment"),
    )
    .expect("campaign");
    let followup = campaigns.get("followup").expect("followup");
    let variant_of = |u: &str| followup.variant_for(u).expect("a variant").id.clone();
    for (u, held) in users.iter().zip(&held) {
        let messages = sim.messages_to(u);
        assert_eq!(messages.is_empty(), *held, "{u}: LINE gets nothing for a holdout user");
        if !held {
            let expected = if variant_of(u) == "coupon" { "クーポン" } else { "ストーリー" };
            assert_eq!(messages[0]["altText"], expected, "{u} gets its variant's message");
        }
    }
    // After exposure: full-size purchases by the users with an odd index (the
    // last one twice: its first counts), a trial purchase by everyone (not a goal).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let now = chrono::Utc::now();
    let mut events = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let at = |s: i64| (now + chrono::Duration::seconds(s)).to_rfc3339();
        events.push(json!({"type": "purchase", "line_user_id": u, "occurred_at": at(0), "properties": {"product": "trial", "amount": 1}}));
        if i % 2 == 1 {
            events.push(json!({"type": "purchase", "line_user_id": u, "occurred_at": at(1), "properties": {"product": "full", "amount": 1000 * i}}));
        }
        if i == 11 {
            events.push(json!({"type": "purchase", "line_user_id": u, "occurred_at": at(2), "properties": {"product": "full", "amount": 5}}));
        }
    }
    let (status, body) = app.post("/v1/events", &json!({"events": events})).await;
    assert_eq!(status, 200, "{body}");
    let expect = |in_holdout: bool| {
        let converting: Vec<usize> = (0..12).filter(|i| i % 2 == 1 && held[*i] == in_holdout).collect();
        (converting.len() as u64, converting.iter().map(|i| 1000.0 * *i as f64).sum::<f64>())
    };
    let body = stats(&app, "followup").await;
    let ((treated, treated_value), (control, control_value)) = (expect(false), expect(true));
    assert_eq!(
        (body["converted"].as_u64(), body["conversion_value"].as_f64()),
        (Some(treated), Some(treated_value)),
        "{body}"
    );
    assert_eq!(body["holdout"], json!({"users": held_count, "converted": control, "conversion_value": control_value}));
    assert_eq!(body["skipped"], 0, "holdouts are not skips: {body}");
    let lift = &body["lift"];
    let (treated_rate, control_rate) = (treated as f64 / (12 - held_count) as f64, control as f64 / held_count as f64);
    assert!((lift["treated_rate"].as_f64().expect("rate") - treated_rate).abs() < 1e-9, "{lift}");
    assert!((lift["holdout_rate"].as_f64().expect("rate") - control_rate).abs() < 1e-9, "{lift}");
    for arm in ["coupon", "story"] {
        let members: Vec<usize> = (0..12).filter(|i| !held[*i] && variant_of(&users[*i]) == arm).collect();
        let converting: Vec<&usize> = members.iter().filter(|i| *i % 2 == 1).collect();
        let value: f64 = converting.iter().map(|i| 1000.0 * **i as f64).sum();
        let stats = &body["variants"][arm];
        assert_eq!(
            (
                stats["users"].as_u64(),
                stats["sent"].as_u64(),
                stats["converted"].as_u64(),
                stats["conversion_value"].as_f64()
            ),
            (Some(members.len() as u64), Some(members.len() as u64), Some(converting.len() as u64), Some(value)),
            "{arm}: {body}"
        );
        assert_eq!(stats["clicked"], 0, "{body}");
        assert_eq!(stats["lift"].is_null(), members.is_empty(), "{body}");
    }
    // Every request carried the campaign's aggregation unit; LINE's numbers, once fetched, say
    // "fewer than 20" as null (never 0), with when they were fetched.
    assert_eq!(sim.unit_reach("followup") as u64, 12 - held_count, "every send carried the unit");
    let line_stats = eventually("LINE's statistics to be fetched", async || {
        let line = stats(&app, "followup").await["line"].clone();
        line["updated_at"].is_string().then_some(line)
    })
    .await;
    assert_eq!(
        (line_stats["unit"].clone(), line_stats["delivered"].clone(), line_stats["unique_impression"].clone()),
        (json!("followup"), json!(12 - held_count), Value::Null),
        "{line_stats}"
    );
    // The server's poller holds the lease: another instance's round asks nothing.
    let line = renkei_line::LineClient::new(&sim.base_url(), sim.access_token()).expect("client");
    let other = renkei_dispatcher::InsightPoller::new(
        app.store.clone(),
        app.store.clone(),
        line,
        std::sync::Arc::new(renkei_core::SystemClock),
        "another-instance".to_string(),
    );
    assert_eq!(other.poll_once(Duration::from_secs(1)).await.expect("poll"), 0);
    let ci = lift["ci95"].as_array().expect("interval");
    let absolute = lift["absolute"].as_f64().expect("absolute");
    assert!(ci[0].as_f64().expect("low") <= absolute && absolute <= ci[1].as_f64().expect("high"), "{lift}");
    dashboard_shows_the_funnel_and_lift(&app, &stats(&app, "followup").await).await;
}

/// The campaign's dashboard page shows the API's eligible users, lift and
/// interval, overall and per variant.
async fn dashboard_shows_the_funnel_and_lift(app: &TestApp, stats: &Value) {
    crate::dashboard::add_operator(app, "analyst", renkei_store::OperatorRole::Viewer, "pw-analyst").await;
    let mut visitor = crate::dashboard::Visitor::new(app);
    visitor.sign_in("analyst", "pw-analyst").await;
    let page = visitor.get("/dashboard/campaigns/followup").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let attr = |id: &str, name: &str| -> Option<f64> {
        let at = page.body.find(&format!("id=\"{id}\""))?;
        let tag = &page.body[at..at + page.body[at..].find('>')?];
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        tag[start..].split('"').next()?.parse().ok()
    };
    let eligible = stats["exposed"].as_u64().expect("exposed") + stats["holdout"]["users"].as_u64().expect("holdout");
    assert_eq!(attr("eligible", "data-value"), Some(eligible as f64), "eligible = treated + holdout");
    let arms =
        stats["variants"].as_object().expect("variants").iter().map(|(id, v)| (format!("lift-{id}"), &v["lift"]));
    for (id, lift) in std::iter::once(("lift".to_string(), &stats["lift"])).chain(arms) {
        let Some(absolute) = lift["absolute"].as_f64() else {
            assert_eq!(attr(&id, "data-value"), None, "{id}: no lift, none shown");
            continue;
        };
        // serde_json reads floats to within an ulp or two, the page prints them exactly.
        let near = |shown: Option<f64>, want: Option<f64>| matches!((shown, want), (Some(a), Some(b)) if (a - b).abs() < 1e-12);
        assert!(near(attr(&id, "data-value"), Some(absolute)), "{id}: {absolute}");
        let interval = format!("{id}-interval");
        assert!(near(attr(&interval, "data-low"), lift["ci95"][0].as_f64()), "{id}: {lift}");
        assert!(near(attr(&interval, "data-high"), lift["ci95"][1].as_f64()), "{id}: {lift}");
    }
}

const VIP: &str = "id: vip\nname: VIP\nrule:\n  attribute: rank\n  eq: vip\n";
/// Three steps a second or two apart: the second only for VIPs, and an
/// unsubscribe request ends the sequence.
const SEQUENCE: &str = "id: welcome_steps\nname: ステップ\ntrigger:\n  segment_entered: buyers\nsteps:\n  - id: thanks\n    messages: [ { template: thanks, alt_text: 一通目 } ]\n  - id: vip_only\n    wait: 1s\n    if: { segment: vip }\n    messages: [ { template: thanks, alt_text: 二通目 } ]\n  - id: last\n    wait: 2s\n    messages: [ { template: thanks, alt_text: 三通目 } ]\nexit:\n  event: { event: unsubscribe_request }\n";

async fn a_sequence_sends_its_steps_skips_by_if_and_ends_on_exit(backend: Backend) {
    let files = files();
    for old in ["thanks.yaml", "review_request.yaml"] {
        std::fs::remove_file(files.campaigns.path().join(old)).expect("only the sequence");
    }
    std::fs::write(files.campaigns.path().join("welcome_steps.yaml"), SEQUENCE).expect("campaign");
    std::fs::write(files.segments.path().join("vip.yaml"), VIP).expect("segment");
    let Some((app, sim)) = spawn(backend, &files).await else { return };
    scheduler_started(&app).await;
    buy(&app, "m1", USER_1).await;
    let (status, body) =
        app.post("/v1/members", &json!({"members": [{"member_id": "m2", "attributes": {"rank": "vip"}}]})).await;
    assert_eq!(status, 200, "{body}");
    buy(&app, "m2", USER_2).await;
    let alts = |user: &str| -> Vec<String> {
        sim.messages_to(user).iter().map(|m| m["altText"].as_str().unwrap_or_default().to_string()).collect()
    };
    // The VIP gets the second step; then asks to stop before the last.
    eventually("the VIP's second step", async || (alts(USER_2).len() == 2).then_some(())).await;
    let now = chrono::Utc::now().to_rfc3339();
    let stop = json!({"type": "unsubscribe_request", "line_user_id": USER_2, "occurred_at": now});
    let (status, body) = app.post("/v1/events", &json!({"events": [stop]})).await;
    assert_eq!(status, 200, "{body}");
    let body = eventually("every step decided", async || {
        let body = stats(&app, "welcome_steps").await;
        let pending: u64 =
            ["thanks", "vip_only", "last"].iter().map(|s| body["steps"][s]["pending"].as_u64().unwrap_or(1)).sum();
        (pending == 0 && body["pending"] == 0).then_some(body)
    })
    .await;
    assert_eq!(alts(USER_1), ["一通目", "三通目"], "not a VIP: the second step is skipped, the sequence goes on");
    assert_eq!(alts(USER_2), ["一通目", "二通目"], "the VIP stopped the sequence before the last step");
    let step = |id: &str| {
        let s = &body["steps"][id];
        (s["sent"].as_u64(), s["skipped"].as_u64(), s["exited"].as_u64())
    };
    assert_eq!(step("thanks"), (Some(2), Some(0), Some(0)), "{body}");
    assert_eq!(step("vip_only"), (Some(1), Some(1), Some(0)), "{body}");
    assert_eq!(step("last"), (Some(1), Some(0), Some(1)), "{body}");
    assert_eq!(body["skipped_by_reason"], json!({"exited": 1, "step_condition": 1}), "{body}");
    assert_eq!(body["steps"]["vip_only"]["unit"], "welcome_steps_vip_only");
    assert_eq!(sim.unit_reach("welcome_steps_vip_only"), 1, "each step's requests carry its own unit");
}

/// Three steps two seconds apart.
const THREE_STEPS: &str = "id: three\nname: 三通\ntrigger:\n  segment_entered: buyers\nsteps:\n  - id: first\n    messages: [ { template: thanks, alt_text: 一 } ]\n  - id: second\n    wait: 2s\n    messages: [ { template: thanks, alt_text: 二 } ]\n  - id: third\n    wait: 2s\n    messages: [ { template: thanks, alt_text: 三 } ]\n";

async fn a_restart_between_steps_sends_each_step_once_and_skips_a_removed_one(backend: Backend) {
    let files = files();
    for old in ["thanks.yaml", "review_request.yaml"] {
        std::fs::remove_file(files.campaigns.path().join(old)).expect("only the sequence");
    }
    std::fs::write(files.campaigns.path().join("three.yaml"), THREE_STEPS).expect("campaign");
    let sim = LineSim::spawn(SimConfig::default()).await.expect("simulator");
    let configure = |c: &mut renkei::config::Config| {
        c.paths.segments = files.segments.path().to_path_buf();
        c.paths.campaigns = files.campaigns.path().to_path_buf();
        c.paths.templates = files.templates.path().to_path_buf();
        c.paths.rich_menus = files.segments.path().join("no_rich_menus.yaml");
        c.line.channel_access_token = sim.access_token().into();
        c.line.api_base_url = sim.base_url();
        c.server.link_keys = vec![LINK_KEY.into()];
    };
    let Some(app) = crate::common::spawn_app_with(backend, configure).await else { return };
    scheduler_started(&app).await;
    buy(&app, "m1", USER_1).await;
    let alts = || -> Vec<String> {
        sim.messages_to(USER_1).iter().map(|m| m["altText"].as_str().unwrap_or_default().to_string()).collect()
    };
    eventually("the first step", async || (!alts().is_empty()).then_some(())).await;
    // Restarted with the second step gone from the file, before it is due.
    let without_second =
        THREE_STEPS.replace("  - id: second\n    wait: 2s\n    messages: [ { template: thanks, alt_text: 二 } ]\n", "");
    std::fs::write(files.campaigns.path().join("three.yaml"), without_second).expect("edit");
    let app = app.restart(configure).await;
    let body = eventually("every step decided", async || {
        let body = stats(&app, "three").await;
        let pending: u64 = ["first", "third"].iter().map(|s| body["steps"][s]["pending"].as_u64().unwrap_or(1)).sum();
        (pending == 0 && body["pending"] == 0 && body["sent"] == 2).then_some(body)
    })
    .await;
    assert_eq!(alts(), ["一", "三"], "each step once; the removed one never");
    assert_eq!(body["skipped_by_reason"], json!({"step_removed": 1}), "{body}");
    assert!(body["steps"].get("second").is_none(), "a removed step is not listed: {body}");
}
