//! The renkei-line client against the simulator over real HTTP.
#![allow(clippy::unwrap_used)]

use axum::body::Bytes;
use axum::http::HeaderMap;
use renkei_core::ids::LineUserId;
use renkei_line::client::{
    ClientOptions, LineClient, LineError, Message, MulticastRequest, PushRequest, Quota, ReplyRequest,
};
use renkei_line::webhook::{EventKind, LinkResult, parse_webhook, verify_signature};
use renkei_line_sim::{Endpoint, Faults, LineSim, RateLimits, SimConfig, SimHandle};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const USER: &str = "U4af4980629a0b7a1fd4a3c1bb0d7d9c0";
const MENU: &str = "richmenu-0123456789abcdef0123456789abcdef";

fn user(n: usize) -> String {
    format!("U{n:032x}")
}

fn uid(text: &str) -> LineUserId {
    LineUserId::parse(text).unwrap()
}

async fn sim_with(config: SimConfig) -> (SimHandle, LineClient) {
    let sim = LineSim::spawn(config).await.unwrap();
    let client = LineClient::with_options(
        &sim.base_url(),
        sim.access_token(),
        ClientOptions { login_base_url: sim.base_url(), ..ClientOptions::default() },
    )
    .unwrap();
    (sim, client)
}

async fn sim() -> (SimHandle, LineClient) {
    sim_with(SimConfig { rich_menus: vec![MENU.to_string()], ..SimConfig::default() }).await
}

fn push_to(to: &str) -> PushRequest {
    PushRequest {
        to: to.to_string(),
        messages: vec![Message::text("hello")],
        notification_disabled: None,
        custom_aggregation_units: None,
    }
}

fn multicast_to(to: Vec<String>) -> MulticastRequest {
    MulticastRequest {
        to,
        messages: vec![Message::text("hello")],
        notification_disabled: None,
        custom_aggregation_units: None,
    }
}

#[tokio::test]
async fn push_succeeds_with_request_id_and_is_recorded() {
    let (sim, client) = sim().await;
    let key = Uuid::new_v4();
    let sent = client.push(&push_to(USER), Some(key)).await.unwrap();
    assert!(!sent.request_id.is_empty());
    assert_eq!(sent.accepted_request_id, None);
    assert_eq!(sent.sent_messages.len(), 1);
    let requests = sim.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].endpoint, Endpoint::Push);
    assert_eq!(requests[0].retry_key.as_deref(), Some(key.to_string().as_str()));
    assert_eq!(requests[0].recipients, vec![USER.to_string()]);
    assert_eq!(requests[0].messages[0]["text"], "hello");
    assert_eq!(requests[0].request_id, sent.request_id);
    assert_eq!(sim.messages_to(USER).len(), 1);
}

#[tokio::test]
async fn wrong_or_missing_token_is_401() {
    let (sim, _) = sim().await;
    let bad = LineClient::new(&sim.base_url(), "wrong").unwrap();
    match bad.push(&push_to(USER), None).await {
        Err(LineError::Rejected { status: 401, message, .. }) => {
            assert!(message.contains("invalid token"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let response = reqwest::Client::new()
        .post(format!("{}/v2/bot/message/push", sim.base_url()))
        .json(&json!({"to": USER, "messages": [{"type":"text","text":"x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("no token"));
    assert_eq!(sim.counters().unauthorized, 2);
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn validation_errors_are_400_with_details() {
    let (sim, client) = sim().await;
    let mut request = push_to("not-a-user");
    request.messages.push(Message::flex("x".repeat(1_501), json!({"type": "bubble"})));
    match client.push(&request, None).await {
        Err(LineError::Rejected { status: 400, message, details }) => {
            assert_eq!(message, "The request body has 2 error(s)");
            let properties: Vec<_> = details.iter().map(|d| d.property.clone().unwrap()).collect();
            assert_eq!(properties, vec!["to", "messages[1].altText"]);
        }
        other => panic!("{other:?}"),
    }
    // Multicast: bad recipient, and too many recipients (raw, the client
    // refuses those itself).
    match client.multicast(&multicast_to(vec![user(1), "u123".into()]), None).await {
        Err(LineError::Rejected { status: 400, details, .. }) => {
            assert_eq!(details[0].property.as_deref(), Some("to[1]"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.multicast(&multicast_to((0..501).map(user).collect()), None).await,
        Err(LineError::InvalidRequest(_))
    ));
    let raw = reqwest::Client::new()
        .post(format!("{}/v2/bot/message/multicast", sim.base_url()))
        .bearer_auth(sim.access_token())
        .json(&json!({"to": (0..501).map(user).collect::<Vec<_>>(), "messages": [{"type":"text","text":"x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let body: Value = raw.json().await.unwrap();
    assert_eq!(body["details"][0]["property"], "to");
    // 500 recipients and 5 messages are fine.
    let mut ok = multicast_to((0..500).map(user).collect());
    ok.messages = vec![Message::text("a"); 5];
    client.multicast(&ok, None).await.unwrap();
    // Six messages, raw.
    let raw = reqwest::Client::new()
        .post(format!("{}/v2/bot/message/push", sim.base_url()))
        .bearer_auth(sim.access_token())
        .json(&json!({"to": USER, "messages": vec![json!({"type":"text","text":"x"}); 6]}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    // Broken JSON.
    let raw = reqwest::Client::new()
        .post(format!("{}/v2/bot/message/push", sim.base_url()))
        .bearer_auth(sim.access_token())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert_eq!(sim.requests().len(), 1);
}

#[tokio::test]
async fn flex_limits() {
    let (_sim, client) = sim().await;
    let bubble = |text_len: usize| json!({"type":"bubble","body":{"type":"box","layout":"vertical","contents":[{"type":"text","text":"x".repeat(text_len)}]}});
    let send = |contents: Value| {
        let client = client.clone();
        async move {
            let request = PushRequest {
                to: USER.into(),
                messages: vec![Message::flex("alt", contents)],
                notification_disabled: None,
                custom_aggregation_units: None,
            };
            client.push(&request, None).await
        }
    };
    send(bubble(20_000)).await.unwrap();
    assert!(matches!(send(bubble(31_000)).await, Err(LineError::Rejected { status: 400, .. })));
    let twelve: Vec<Value> = (0..12).map(|_| bubble(100)).collect();
    send(json!({"type":"carousel","contents": twelve})).await.unwrap();
    let thirteen: Vec<Value> = (0..13).map(|_| bubble(100)).collect();
    assert!(matches!(
        send(json!({"type":"carousel","contents": thirteen})).await,
        Err(LineError::Rejected { status: 400, .. })
    ));
    let heavy: Vec<Value> = (0..11).map(|_| bubble(5_000)).collect();
    assert!(matches!(
        send(json!({"type":"carousel","contents": heavy})).await,
        Err(LineError::Rejected { status: 400, .. })
    ));
    // The official samples pass.
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/line-fixtures/flex");
    for name in ["java-sdk-Shopping.json", "java-sdk-Receipt.json", "java-sdk-Hotel.json"] {
        let contents: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap();
        send(contents).await.unwrap();
    }
}

#[tokio::test]
async fn retry_key_conflict_is_success_and_not_recorded_twice() {
    let (sim, client) = sim().await;
    let key = Uuid::new_v4();
    let first = client.push(&push_to(USER), Some(key)).await.unwrap();
    let second = client.push(&push_to(USER), Some(key)).await.unwrap();
    assert_eq!(second.accepted_request_id.as_deref(), Some(first.request_id.as_str()));
    assert_ne!(second.request_id, first.request_id);
    assert_eq!(sim.requests().len(), 1);
    assert_eq!(sim.counters().conflicts, 1);
    // Multicast too.
    let mkey = Uuid::new_v4();
    let m1 = client.multicast(&multicast_to(vec![user(1), user(2)]), Some(mkey)).await.unwrap();
    let m2 = client.multicast(&multicast_to(vec![user(1), user(2)]), Some(mkey)).await.unwrap();
    assert_eq!(m2.accepted_request_id, Some(m1.request_id));
    assert_eq!(sim.requests().len(), 2);
    // The raw 409 is exactly LINE's.
    let raw = reqwest::Client::new()
        .post(format!("{}/v2/bot/message/push", sim.base_url()))
        .bearer_auth(sim.access_token())
        .header("X-Line-Retry-Key", key.to_string())
        .json(&json!({"to": USER, "messages": [{"type":"text","text":"x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 409);
    assert_eq!(raw.headers()["x-line-accepted-request-id"], first.request_id.as_str());
    assert!(raw.headers().contains_key("x-line-request-id"));
    assert_eq!(raw.json::<Value>().await.unwrap(), json!({"message": "The retry key is already accepted"}));
}

#[tokio::test]
async fn retry_key_rules() {
    let (sim, client) = sim().await;
    let http = reqwest::Client::new();
    // Malformed key.
    let raw = http
        .post(format!("{}/v2/bot/message/push", sim.base_url()))
        .bearer_auth(sim.access_token())
        .header("X-Line-Retry-Key", "not-a-uuid")
        .json(&json!({"to": USER, "messages": [{"type":"text","text":"x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    // A key on an endpoint that does not take one.
    let raw = http
        .post(format!("{}/v2/bot/message/reply", sim.base_url()))
        .bearer_auth(sim.access_token())
        .header("X-Line-Retry-Key", Uuid::new_v4().to_string())
        .json(&json!({"replyToken": "abc", "messages": [{"type":"text","text":"x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert!(sim.requests().is_empty());
    // Reply works without one and its token is single-use.
    let reply =
        ReplyRequest { reply_token: "abc".into(), messages: vec![Message::text("hi")], notification_disabled: None };
    client.reply(&reply).await.unwrap();
    assert!(matches!(client.reply(&reply).await, Err(LineError::Rejected { status: 400, .. })));
}

#[tokio::test]
async fn rate_limit_429_over_the_bucket_none_at_the_rate() {
    let limits = RateLimits { push: Some(20), ..RateLimits::default() };
    let (sim, client) = sim_with(SimConfig { rate_limits: limits, ..SimConfig::default() }).await;
    // Exactly one second's worth at once: all accepted.
    let results = futures_join(&client, 20).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(sim.counters().rate_limited, 0);
    // A burst over the bucket: the excess gets LINE's 429, typed RateLimited.
    let results = futures_join(&client, 40).await;
    let limited = results.iter().filter(|r| matches!(r, Err(LineError::RateLimited { .. }))).count();
    // Some tokens refill while the burst is in flight on a slow machine.
    assert!(limited >= 15, "{limited}");
    assert!(results.iter().all(|r| r.is_ok() || matches!(r, Err(LineError::RateLimited { .. }))));
    let err = results.into_iter().find_map(Result::err).unwrap();
    assert!(err.is_retryable());
    assert!(err.to_string().contains("The API rate limit has been exceeded. Try again later."));
    // Paced at the rate: no 429.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sim.counters().rate_limited;
    for _ in 0..30 {
        client.push(&push_to(USER), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sim.counters().rate_limited, before);
}

async fn futures_join(client: &LineClient, n: usize) -> Vec<Result<renkei_line::client::Sent, LineError>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = client.clone();
        tasks.push(tokio::spawn(async move { client.push(&push_to(USER), None).await }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test]
async fn monthly_quota() {
    let (sim, client) = sim_with(SimConfig { monthly_quota: Some(3), ..SimConfig::default() }).await;
    assert_eq!(client.quota().await.unwrap(), Quota::Limited(3));
    client.multicast(&multicast_to(vec![user(1), user(2)]), None).await.unwrap();
    assert_eq!(client.quota_consumption().await.unwrap(), 2);
    // Two more recipients would exceed 3: refused whole.
    match client.multicast(&multicast_to(vec![user(3), user(4)]), None).await {
        Err(e @ LineError::MonthlyLimit { .. }) => {
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("You have reached your monthly limit."));
        }
        other => panic!("{other:?}"),
    }
    client.push(&push_to(USER), None).await.unwrap();
    assert!(matches!(client.push(&push_to(USER), None).await, Err(LineError::MonthlyLimit { .. })));
    assert_eq!(client.quota_consumption().await.unwrap(), 3);
    assert_eq!(sim.counters().monthly_limited, 2);
    sim.set_quota(None);
    assert_eq!(client.quota().await.unwrap(), Quota::Unlimited);
    client.push(&push_to(USER), None).await.unwrap();
}

#[tokio::test]
async fn injected_5xx_is_transient_and_not_recorded() {
    let (sim, client) = sim().await;
    sim.set_faults(Faults { error_rate: 1.0, ..Faults::default() });
    let err = client.push(&push_to(USER), Some(Uuid::new_v4())).await.unwrap_err();
    assert!(matches!(err, LineError::Transient { status: Some(500), .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(sim.requests().is_empty());
    assert_eq!(sim.counters().injected_errors, 1);
}

#[tokio::test]
async fn dropped_connection_is_transient_then_409_on_retry() {
    let (sim, client) = sim().await;
    sim.set_faults(Faults { drop_rate: 1.0, ..Faults::default() });
    let key = Uuid::new_v4();
    let err = client.push(&push_to(USER), Some(key)).await.unwrap_err();
    assert!(matches!(err, LineError::Transient { status: None, .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(sim.requests().len(), 1);
    assert!(sim.requests()[0].dropped);
    sim.set_faults(Faults::default());
    let retried = client.push(&push_to(USER), Some(key)).await.unwrap();
    assert_eq!(retried.accepted_request_id.as_deref(), Some(sim.requests()[0].request_id.as_str()));
    assert_eq!(sim.requests().len(), 1);
    assert_eq!(sim.messages_to(USER).len(), 1);
}

#[tokio::test]
async fn timeout_is_transient() {
    let (sim, _) = sim().await;
    sim.set_faults(Faults { latency: Duration::from_millis(500), ..Faults::default() });
    let client = LineClient::with_options(
        &sim.base_url(),
        sim.access_token(),
        ClientOptions { timeout: Duration::from_millis(100), ..ClientOptions::default() },
    )
    .unwrap();
    let err = client.push(&push_to(USER), None).await.unwrap_err();
    assert!(matches!(err, LineError::Transient { .. }), "{err:?}");
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = LineClient::new(&format!("http://127.0.0.1:{port}"), "t").unwrap();
    let err = client.push(&push_to(USER), None).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn the_channel_default_rich_menu_shows_to_users_without_their_own() {
    let (sim, client) = sim().await;
    assert_eq!(client.default_rich_menu().await.unwrap(), None, "none set: LINE's 404 reads as none");
    match client.set_default_rich_menu("richmenu-ffffffffffffffffffffffffffffffff").await {
        Err(LineError::Rejected { status: 404, .. }) => {}
        other => panic!("an unknown menu is refused: {other:?}"),
    }
    client.set_default_rich_menu(MENU).await.unwrap();
    assert_eq!(client.default_rich_menu().await.unwrap().as_deref(), Some(MENU));
    assert_eq!(sim.user_rich_menu(USER), None);
    assert_eq!(sim.shown_rich_menu(USER).as_deref(), Some(MENU));
    assert!(matches!(client.set_default_rich_menu("../quota").await, Err(LineError::InvalidRequest(_))));
}

#[tokio::test]
async fn link_token_profile_and_rich_menus() {
    let (sim, client) = sim().await;
    let u = uid(USER);
    let token = client.issue_link_token(&u).await.unwrap();
    assert!(token.len() >= 20);
    assert_eq!(sim.link_tokens().get(&token).map(String::as_str), Some(USER));
    let profile = client.get_profile(&u).await.unwrap();
    assert_eq!(profile.user_id, USER);

    let menus = client.list_rich_menus().await.unwrap();
    assert_eq!(menus.len(), 1);
    assert_eq!(menus[0].rich_menu_id, MENU);
    client.link_rich_menu(&u, MENU).await.unwrap();
    assert_eq!(sim.user_rich_menu(USER).as_deref(), Some(MENU));
    match client.link_rich_menu(&u, "richmenu-ffffffffffffffffffffffffffffffff").await {
        Err(LineError::Rejected { status: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    client.unlink_rich_menu(&u).await.unwrap();
    assert_eq!(sim.user_rich_menu(USER), None);

    let users: Vec<LineUserId> = (1..=3).map(|n| uid(&user(n))).collect();
    client.bulk_link_rich_menu(MENU, &users).await.unwrap();
    assert_eq!(sim.user_rich_menus().len(), 3);
    assert!(matches!(
        client.bulk_link_rich_menu("richmenu-nope", &users).await,
        Err(LineError::Rejected { status: 400, .. })
    ));
    client.bulk_unlink_rich_menu(&users[..2]).await.unwrap();
    assert_eq!(sim.user_rich_menus().len(), 1);
    let recorded = sim.requests_for(Endpoint::RichMenuBulkLink);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].recipients.len(), 3);
    assert_eq!(recorded[0].rich_menu_id.as_deref(), Some(MENU));
}

#[tokio::test]
async fn id_token_verify() {
    let (sim, client) = sim().await;
    let u = uid(USER);
    let token = sim.issue_id_token(&u, "1234567890", Duration::from_secs(600));
    let claims = client.verify_id_token(&token, "1234567890").await.unwrap();
    assert_eq!(claims.sub, USER);
    assert_eq!(claims.aud, "1234567890");
    assert!(claims.exp > 0);
    match client.verify_id_token(&token, "999").await {
        Err(LineError::Rejected { status: 400, message, .. }) => assert_eq!(message, "Invalid IdToken Audience."),
        other => panic!("{other:?}"),
    }
    let expired = sim.issue_expired_id_token(&u, "1234567890");
    match client.verify_id_token(&expired, "1234567890").await {
        Err(LineError::Rejected { status: 400, message, .. }) => assert_eq!(message, "IdToken expired."),
        other => panic!("{other:?}"),
    }
    let raw = reqwest::Client::new()
        .post(format!("{}/oauth2/v2.1/verify", sim.base_url()))
        .body("id_token=garbage&client_id=1")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert_eq!(raw.json::<Value>().await.unwrap()["error"], "invalid_request");
}

/// A tiny webhook receiver recording (signature header, body).
async fn receiver() -> (String, Arc<Mutex<Vec<(String, Bytes)>>>) {
    let calls: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
    let recorded = calls.clone();
    let app = axum::Router::new().route(
        "/webhook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let recorded = recorded.clone();
            async move {
                let signature =
                    headers.get("x-line-signature").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                recorded.lock().unwrap().push((signature, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/webhook"), calls)
}

#[tokio::test]
async fn webhook_sender_signs_bodies_renkei_accepts() {
    let (url, calls) = receiver().await;
    let (sim, client) = sim().await;
    sim.set_webhook_url(Some(url));
    let u = uid(USER);
    let follow = sim.send_follow(&u).await.unwrap();
    assert_eq!(follow.status, 200);
    sim.send_unfollow(&u).await.unwrap();
    sim.send_postback(&u, "action=link").await.unwrap();
    sim.send_message(&u, "こんにちは").await.unwrap();
    sim.send_account_link(&u, LinkResult::Failed, "nonce-123").await.unwrap();
    sim.redeliver(&follow).await.unwrap();
    sim.send_verify().await.unwrap();
    let link_token = client.issue_link_token(&u).await.unwrap();
    sim.complete_account_link(&link_token, "nonce-456").await.unwrap();
    assert!(sim.complete_account_link(&link_token, "nonce-456").await.is_err(), "single use");

    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 8);
    let mut ids = Vec::new();
    let mut kinds = Vec::new();
    for (signature, body) in &calls {
        assert!(verify_signature(sim.channel_secret(), body, signature));
        assert!(!verify_signature("other-secret", body, signature));
        let parsed = parse_webhook(body).unwrap();
        assert_eq!(parsed.destination, SimConfig::default().bot_user_id);
        for event in parsed.events {
            ids.push((event.webhook_event_id.clone().unwrap(), event.is_redelivery.unwrap()));
            kinds.push(event.kind.clone());
            if !matches!(event.kind, EventKind::AccountLink { result: LinkResult::Failed, .. }) {
                assert_eq!(event.line_user_id(), Some(u.clone()));
            } else {
                assert_eq!(event.source, None);
                assert_eq!(event.reply_token, None);
            }
        }
    }
    assert_eq!(kinds[0], EventKind::Follow { is_unblocked: Some(false) });
    assert_eq!(kinds[1], EventKind::Unfollow);
    assert!(matches!(&kinds[2], EventKind::Postback { data, .. } if data == "action=link"));
    assert!(matches!(&kinds[3], EventKind::Message(m) if m.text.as_deref() == Some("こんにちは")));
    assert_eq!(kinds[6], EventKind::AccountLink { result: LinkResult::Ok, nonce: Some("nonce-456".into()) });
    // Unique IDs, except the redelivery which repeats the follow's.
    assert_eq!(ids[5], (ids[0].0.clone(), true));
    let mut unique: Vec<_> = ids.iter().map(|(id, _)| id.clone()).collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len() - 1);
    assert!(ids.iter().all(|(id, _)| id.len() == 26));

    // A reply with the follow's token reaches that user.
    let reply_token = follow.events[0]["replyToken"].as_str().unwrap().to_string();
    client
        .reply(&ReplyRequest { reply_token, messages: vec![Message::text("welcome")], notification_disabled: None })
        .await
        .unwrap();
    assert_eq!(sim.messages_to(USER).len(), 1);
}

#[tokio::test]
async fn webhook_without_target_is_an_error() {
    let (sim, _) = sim().await;
    assert!(sim.send_follow(&uid(USER)).await.is_err());
}

#[tokio::test]
async fn statistics_per_unit_follow_the_units_sent_with_null_below_20() {
    let (_sim, line) = sim_with(SimConfig {
        rate_limits: RateLimits { statistics_per_unit_per_hour: Some(5), ..RateLimits::default() },
        unit_impression_share: 0.5,
        unit_click_share: 0.1,
        ..SimConfig::default()
    })
    .await;
    let with_unit = |mut request: MulticastRequest, unit: &str| {
        request.custom_aggregation_units = Some(vec![unit.to_string()]);
        request
    };
    line.multicast(&with_unit(multicast_to((0..60).map(user).collect()), "spring_sale"), None).await.unwrap();
    line.multicast(&with_unit(multicast_to((40..100).map(user).collect()), "spring_sale"), None).await.unwrap();
    let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
    let stats = line.statistics_per_unit("spring_sale", day(1), day(5)).await.unwrap();
    // 100 distinct users: 50 opened, 10 clicked (fewer than 20: null, never 0).
    assert_eq!((stats.unique_impression, stats.unique_click), (Some(50), None));
    let none = line.statistics_per_unit("other_unit", day(1), day(1)).await.unwrap();
    assert_eq!((none.unique_impression, none.unique_click), (None, None));

    // Invalid names and periods are 400s naming the parameter.
    let mut bad = push_to(USER);
    bad.custom_aggregation_units = Some(vec!["spring-sale".into()]);
    match line.push(&bad, None).await {
        Err(LineError::Rejected { status: 400, details, .. }) => {
            assert_eq!(details[0].property.as_deref(), Some("customAggregationUnits[0]"), "{details:?}");
        }
        other => panic!("expected 400, got {other:?}"),
    }
    let mut two = push_to(USER);
    two.custom_aggregation_units = Some(vec!["a".into(), "b".into()]);
    assert!(matches!(line.push(&two, None).await, Err(LineError::Rejected { status: 400, .. })));
    match line.statistics_per_unit("spring_sale", day(1), day(1) + chrono::Duration::days(31)).await {
        Err(LineError::Rejected { status: 400, details, .. }) => assert_eq!(details[0].property.as_deref(), Some("to")),
        other => panic!("expected 400, got {other:?}"),
    }
    // Five calls an hour here (LINE: 60), the refused one included: the sixth is a 429.
    for _ in 0..2 {
        line.statistics_per_unit("spring_sale", day(1), day(2)).await.unwrap();
    }
    let limited = line.statistics_per_unit("spring_sale", day(1), day(2)).await;
    assert!(matches!(limited, Err(LineError::RateLimited { .. })), "{limited:?}");
}

/// The request schema's bounds of `loadingSeconds` in LINE's spec.
fn loading_seconds_bounds() -> (u64, u64) {
    let spec = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/line-openapi/messaging-api.yml"),
    )
    .unwrap();
    assert!(spec.contains("\"/v2/bot/chat/loading/start\":\n    post:"), "the spec has the endpoint");
    assert!(spec.contains("\"/v2/bot/chat/markAsRead\":\n    post:"), "the spec has the endpoint");
    let schema = &spec[spec.find("    ShowLoadingAnimationRequest:").unwrap()..];
    let seconds = &schema[schema.find("loadingSeconds:").unwrap()..];
    let bound = |key: &str| -> u64 {
        let at = seconds.find(key).unwrap() + key.len();
        seconds[at..].lines().next().unwrap().trim().parse().unwrap()
    };
    (bound("minimum:"), bound("maximum:"))
}

#[tokio::test]
async fn loading_animation_and_read_marks_follow_the_spec() {
    let (min, max) = loading_seconds_bounds();
    assert_eq!((min, max), (5, 60));
    let (url, _calls) = receiver().await;
    let (sim, client) = sim().await;
    sim.set_webhook_url(Some(url));
    let u = uid(USER);
    // The client rounds to the spec's steps of 5 within its bounds.
    client.show_loading_animation(&u, 7).await.unwrap();
    client.show_loading_animation(&u, 600).await.unwrap();
    let loading = sim.requests_for(Endpoint::LoadingAnimation);
    assert_eq!(loading.len(), 2);
    assert_eq!(loading[0].recipients, vec![USER.to_string()]);

    // The simulator refuses what LINE refuses.
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{}{path}", sim.base_url())).bearer_auth(sim.access_token()).json(&body).send()
    };
    for body in [
        json!({"chatId": USER, "loadingSeconds": 7}),
        json!({"chatId": USER, "loadingSeconds": min - 5}),
        json!({"chatId": USER, "loadingSeconds": max + 5}),
        json!({"chatId": "not-a-user", "loadingSeconds": 20}),
        json!({"loadingSeconds": 20}),
    ] {
        assert_eq!(post("/v2/bot/chat/loading/start", body.clone()).await.unwrap().status(), 400, "{body}");
    }
    assert_eq!(post("/v2/bot/chat/loading/start", json!({"chatId": USER})).await.unwrap().status(), 202);

    // Read marks take the token of a message webhook, and no other.
    let message = sim.send_message(&u, "ポイント").await.unwrap();
    let token = message.events[0]["message"]["markAsReadToken"].as_str().unwrap().to_string();
    let parsed = parse_webhook(message.body.as_bytes()).unwrap();
    assert!(
        matches!(&parsed.events[0].kind, EventKind::Message(m) if m.mark_as_read_token.as_deref() == Some(token.as_str()))
    );
    client.mark_as_read(&token).await.unwrap();
    assert!(matches!(client.mark_as_read("forged").await, Err(LineError::Rejected { status: 400, .. })));
    assert_eq!(sim.requests_for(Endpoint::MarkAsRead).len(), 1);
    assert_eq!(sim.requests_for(Endpoint::MarkAsRead)[0].recipients, vec![USER.to_string()]);
}
