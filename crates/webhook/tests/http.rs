//! The webhook and ID連携 routes over real HTTP, against the LINE simulator.
#![allow(clippy::unwrap_used)]

use chrono::Utc;
use renkei_core::{ChangeListener, LineUserId, LinkMethod, ManualClock, MemberId, UserRef};
use renkei_line::{ClientOptions, LineClient, LinkResult, sign};
use renkei_line_sim::{LineSim, SimConfig, SimHandle};
use renkei_store::{Store, StoreCounts};
use renkei_test_support::{self as test_support, TestStore};
use renkei_webhook::{
    WebhookConfig, WebhookState, WebhookStores, WorkerHandle, WorkerOptions, api_router, public_router, spawn_worker,
};
use serde_json::{Value, json};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LOGIN_CHANNEL: &str = "1656000000";
const LOGIN_URL: &str = "https://shop.example.com/line-link?linkToken={linkToken}";
const DIALOG: &str = "https://access.line.me/dialog/bot/accountLink";

#[derive(Default)]
struct Recorder(Mutex<Vec<UserRef>>);

impl ChangeListener for Recorder {
    fn users_changed(&self, users: &[UserRef]) {
        self.0.lock().unwrap().extend_from_slice(users);
    }
}

struct App {
    sim: SimHandle,
    _test: TestStore,
    store: Arc<dyn Store>,
    clock: ManualClock,
    base: String,
    http: reqwest::Client,
    changes: Arc<Recorder>,
    state: WebhookState,
    _worker: Option<WorkerHandle>,
}

fn worker_options() -> WorkerOptions {
    WorkerOptions { poll_interval: Duration::from_millis(50), ..WorkerOptions::default() }
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

async fn start_with(test: TestStore, worker: bool) -> App {
    let sim = LineSim::spawn(SimConfig::default()).await.unwrap();
    let options = ClientOptions { login_base_url: sim.base_url(), ..ClientOptions::default() };
    let line = LineClient::with_options(&sim.base_url(), sim.access_token(), options).unwrap();
    let clock = ManualClock::new(Utc::now());
    let changes = Arc::new(Recorder::default());
    let store = test.store.clone();
    let config = WebhookConfig::new(sim.channel_secret(), LOGIN_CHANNEL, LOGIN_URL);
    let state =
        WebhookState::new(WebhookStores::of(&store), Arc::new(clock.clone()), changes.clone(), Some(line), config);
    // The app puts its bearer-key layer around api_router; none is needed here.
    let base = serve(public_router(state.clone()).merge(api_router(state.clone()))).await;
    sim.set_webhook_url(Some(format!("{base}/webhook/line")));
    let worker = worker.then(|| spawn_worker(state.clone(), worker_options()));
    App { sim, _test: test, store, clock, base, http: reqwest::Client::new(), changes, state, _worker: worker }
}

async fn start() -> App {
    start_with(test_support::sqlite().await.unwrap(), true).await
}

/// The PostgreSQL store, or `None` to skip (never in CI).
async fn postgres() -> Option<TestStore> {
    test_support::postgres().await.unwrap()
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn user(n: u8) -> LineUserId {
    LineUserId::parse(&format!("U{:032x}", n)).unwrap()
}

fn member(id: &str) -> MemberId {
    MemberId::parse(id).unwrap()
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/line-fixtures")
}

impl App {
    async fn post_webhook(&self, body: &[u8], signature: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}/webhook/line", self.base)).body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("x-line-signature", signature);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post_api(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self.http.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn counts(&self) -> StoreCounts {
        self.store.counts().await.unwrap()
    }

    /// Waits until the worker has handled everything stored so far.
    async fn processed(&self) {
        let store = self.store.clone();
        eventually("webhook processing", || {
            let store = store.clone();
            async move { store.pending_webhook_events().await.unwrap() == 0 }
        })
        .await;
    }

    /// The link token the simulator issued to `user` after `action=link`.
    async fn request_link_token(&self, user: &LineUserId) -> String {
        let delivery = self.sim.send_postback(user, "action=link").await.unwrap();
        assert_eq!(delivery.status, 200);
        let sim = &self.sim;
        eventually("link token reply", || async move {
            sim.messages_to(user.as_str()).iter().any(|m| m["text"].as_str().unwrap_or("").contains("linkToken="))
        })
        .await;
        let tokens: Vec<String> =
            sim.link_tokens().into_iter().filter(|(_, u)| u == user.as_str()).map(|(t, _)| t).collect();
        assert_eq!(tokens.len(), 1, "one link token per request");
        tokens.into_iter().next().unwrap()
    }

    /// Calls the nonce route as the company's login page does; returns the nonce.
    async fn nonce_for(&self, member_id: &str, link_token: &str) -> String {
        let (status, body) =
            self.post_api("/v1/account-link/nonce", json!({"member_id": member_id, "link_token": link_token})).await;
        assert_eq!(status, 200, "{body}");
        let url = body["redirect_url"].as_str().unwrap();
        let query = url.strip_prefix(&format!("{DIALOG}?")).unwrap();
        let params: Vec<(&str, &str)> = query.split('&').filter_map(|p| p.split_once('=')).collect();
        assert_eq!(params[0], ("linkToken", link_token));
        assert_eq!(params[1].0, "nonce");
        params[1].1.to_string()
    }
}

#[tokio::test]
async fn every_fixture_is_accepted_and_stored() {
    let app = start().await;
    let mut expected_rows = 0;
    let mut seen_ids = std::collections::HashSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(fixtures().join("webhook")).unwrap() {
        let path = entry.unwrap().path();
        let raw = std::fs::read(&path).unwrap();
        let doc: Value = serde_json::from_slice(&raw).unwrap();
        let events = doc["events"].as_array().unwrap();
        for event in events {
            match event["webhookEventId"].as_str() {
                Some(id) if !seen_ids.insert(id.to_string()) => {}
                _ => expected_rows += 1,
            }
        }
        let (status, body) = app.post_webhook(&raw, Some(&sign(app.sim.channel_secret(), &raw))).await;
        assert_eq!(status, 200, "{}: {body}", path.display());
        let total = body["received"].as_u64().unwrap() + body["duplicates"].as_u64().unwrap();
        assert_eq!(total, events.len() as u64, "{}", path.display());
        files += 1;
    }
    assert!(files >= 7);
    assert_eq!(app.counts().await.webhook_events, expected_rows);
    // Unknown event types are stored as they came.
    let stored = app.store.get_webhook_event("testwebhookeventid").await.unwrap().unwrap();
    assert_eq!(stored.event_type, "message");
    app.processed().await;
    let redelivered = app.store.get_webhook_event("01G2KZKG2DS765NMRH3GZFD8AP").await.unwrap().unwrap();
    assert!(redelivered.processed_at.is_some());
    assert_eq!(redelivered.last_error, None);
    // The fixtures' unknown nonce links nobody.
    assert_eq!(app.counts().await.links, 0);
}

#[tokio::test]
async fn every_signature_vector_is_honoured() {
    let text = std::fs::read_to_string(fixtures().join("signature-vectors.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    for vector in doc["vectors"].as_array().unwrap() {
        let body = match (vector.get("body"), vector.get("body_file")) {
            (Some(Value::String(b)), _) => b.as_bytes().to_vec(),
            (_, Some(Value::String(f))) => std::fs::read(fixtures().join(f)).unwrap(),
            _ => panic!("vector without body: {vector}"),
        };
        let test = test_support::sqlite().await.unwrap();
        let config = WebhookConfig::new(vector["channel_secret"].as_str().unwrap(), LOGIN_CHANNEL, LOGIN_URL);
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let state =
            WebhookState::new(WebhookStores::of(&test.store), clock, Arc::new(Recorder::default()), None, config);
        let base = serve(public_router(state)).await;
        let response = reqwest::Client::new()
            .post(format!("{base}/webhook/line"))
            .header("x-line-signature", vector["x_line_signature"].as_str().unwrap())
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        if vector["valid"].as_bool().unwrap() {
            // A valid signature over a body that is not a webhook envelope is a 400.
            assert!(status == 200 || status == 400, "{}: {status}", vector["source"]);
        } else {
            assert_eq!(status, 401, "{}", vector["source"]);
            assert_eq!(test.store.counts().await.unwrap().webhook_events, 0);
        }
    }
}

#[tokio::test]
async fn bad_signatures_and_bad_bodies_store_nothing() {
    let app = start().await;
    let body = br#"{"destination":"U00000000000000000000000000000000","events":[{"type":"follow","webhookEventId":"X1","source":{"type":"user","userId":"U00000000000000000000000000000001"}}]}"#;
    let good = sign(app.sim.channel_secret(), body);
    let wrong = sign("another-secret", body);
    for signature in [None, Some(wrong.as_str()), Some(""), Some("not base64!"), Some(&good[..good.len() - 2])] {
        let (status, error) = app.post_webhook(body, signature).await;
        assert_eq!(status, 401, "{signature:?}");
        assert_eq!(error["error"]["code"], "unauthorized");
    }
    // Signed but malformed: 400.
    let bads: [&[u8]; 3] = [b"{not json", b"[]", br#"{"events":[]}"#];
    for bad in bads {
        let (status, error) = app.post_webhook(bad, Some(&sign(app.sim.channel_secret(), bad))).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
        assert_eq!(error["error"]["code"], "invalid_json");
    }
    // Too large: 413 JSON error.
    let huge = vec![b' '; renkei_webhook::MAX_WEBHOOK_BYTES + 1];
    let (status, error) = app.post_webhook(&huge, Some(&sign(app.sim.channel_secret(), &huge))).await;
    assert_eq!(status, 413);
    assert_eq!(error["error"]["code"], "body_too_large");
    assert_eq!(app.counts().await, StoreCounts::default());
    // LINE's verify call has no events.
    assert_eq!(app.sim.send_verify().await.unwrap().status, 200);
    let (status, _) = app.post_webhook(body, Some(&good)).await;
    assert_eq!(status, 200);
    assert_eq!(app.counts().await.webhook_events, 1);
}

async fn redelivery_is_deduped_and_processing_survives_a_crash(test: TestStore) {
    // No worker yet: the process "crashed" after answering LINE.
    let mut app = start_with(test, false).await;
    let alice = user(1);
    let delivery = app.sim.send_message(&alice, "こんにちは").await.unwrap();
    assert_eq!(delivery.status, 200);
    let again = app.sim.redeliver(&delivery).await.unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(app.counts().await.webhook_events, 1);
    assert_eq!(app.store.pending_webhook_events().await.unwrap(), 1, "stored before the 200, not processed yet");
    assert_eq!(app.counts().await.events, 0);
    // At start, the worker picks up what is left.
    app._worker = Some(spawn_worker(app.state.clone(), worker_options()));
    app.processed().await;
    let events = app.store.user_events(&alice).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "line_message");
    assert_eq!(events[0].event_id.as_deref(), Some(format!("line:{}", delivery.webhook_event_ids()[0]).as_str()));
    assert_eq!(events[0].properties["message_type"], "text");
    assert_eq!(events[0].properties["text"], "こんにちは");
    // A redelivery after processing is still a no-op.
    assert_eq!(app.sim.redeliver(&delivery).await.unwrap().status, 200);
    app.processed().await;
    assert_eq!(app.store.user_events(&alice).await.unwrap().len(), 1);
    assert_eq!(app.counts().await.webhook_events, 1);
    assert!(app.changes.0.lock().unwrap().contains(&UserRef::LineUser(alice.clone())));
}

#[tokio::test]
async fn redelivery_is_deduped_on_sqlite() {
    redelivery_is_deduped_and_processing_survives_a_crash(test_support::sqlite().await.unwrap()).await;
}

#[tokio::test]
async fn redelivery_is_deduped_on_postgres() {
    let Some(test) = postgres().await else { return };
    redelivery_is_deduped_and_processing_survives_a_crash(test).await;
}

#[tokio::test]
async fn follow_unfollow_and_postbacks() {
    let app = start().await;
    let bob = user(2);
    let store = app.store.clone();
    let following = |want: Option<bool>| {
        let store = store.clone();
        let bob = bob.clone();
        move || {
            let store = store.clone();
            let bob = bob.clone();
            async move { store.get_following(&bob).await.unwrap() == want }
        }
    };
    assert_eq!(app.sim.send_follow(&bob).await.unwrap().status, 200);
    eventually("follow", following(Some(true))).await;
    assert_eq!(app.sim.send_unfollow(&bob).await.unwrap().status, 200);
    eventually("unfollow", following(Some(false))).await;
    assert_eq!(app.sim.send_refollow(&bob).await.unwrap().status, 200);
    eventually("unblocked follow", following(Some(true))).await;
    assert_eq!(app.sim.send_postback(&bob, "action=buy&item=42").await.unwrap().status, 200);
    app.processed().await;
    let events = app.store.user_events(&bob).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "line_postback");
    assert_eq!(events[0].properties["data"], "action=buy&item=42");
    assert!(app.sim.messages_to(bob.as_str()).is_empty(), "ordinary postbacks get no reply");
}

#[tokio::test]
async fn account_link_end_to_end_with_single_use_expiring_nonces() {
    let app = start().await;
    let carol = user(3);
    // 1. The user taps "link": LINE issues a link token, the reply carries the login URL.
    let link_token = app.request_link_token(&carol).await;
    // The dashboard counts each link token LINE issued.
    let hours = app.store.hourly_counts("link_token", None, chrono::DateTime::UNIX_EPOCH).await.unwrap();
    assert_eq!(hours.iter().map(|h| h.n).sum::<i64>(), app.sim.link_tokens().len() as i64, "{hours:?}");
    assert_eq!(app.sim.link_tokens().len(), 1);
    let replies = app.sim.messages_to(carol.as_str());
    let expected_url = LOGIN_URL.replace("{linkToken}", &link_token);
    assert!(replies.iter().any(|m| m["text"].as_str().unwrap().contains(&expected_url)), "{replies:?}");
    // 2. The company's login page asks for a nonce and redirects to LINE.
    let nonce = app.nonce_for("m-100", &link_token).await;
    assert!(nonce.len() >= 22 && nonce.len() <= 255);
    let stored = app.store.get_link_nonce(&nonce).await.unwrap().unwrap();
    assert_eq!(stored.expires_at - stored.created_at, chrono::Duration::minutes(10));
    // 3. LINE sends accountLink ok with the nonce.
    assert_eq!(app.sim.complete_account_link(&link_token, &nonce).await.unwrap().status, 200);
    app.processed().await;
    let link = app.store.get_link(&member("m-100")).await.unwrap().expect("linked");
    assert_eq!((link.line_user_id.clone(), link.method), (carol.clone(), LinkMethod::AccountLink));
    assert_eq!(app.store.get_link_nonce(&nonce).await.unwrap().unwrap().result.as_deref(), Some("ok"));
    assert!(app.changes.0.lock().unwrap().contains(&UserRef::Member(member("m-100"))));

    // Reusing the nonce (another user, a fresh link token) links nothing.
    let dave = user(4);
    let token_dave = app.request_link_token(&dave).await;
    assert_eq!(app.sim.complete_account_link(&token_dave, &nonce).await.unwrap().status, 200);
    app.processed().await;
    assert!(app.store.get_link_by_line_user(&dave).await.unwrap().is_none());
    assert_eq!(app.store.get_link(&member("m-100")).await.unwrap().unwrap().line_user_id, carol);

    // An expired nonce links nothing.
    let erin = user(5);
    let token_erin = app.request_link_token(&erin).await;
    let late = app.nonce_for("m-200", &token_erin).await;
    app.clock.advance(chrono::Duration::minutes(10) + chrono::Duration::seconds(1));
    assert_eq!(app.sim.complete_account_link(&token_erin, &late).await.unwrap().status, 200);
    app.processed().await;
    assert!(app.store.get_link(&member("m-200")).await.unwrap().is_none());
    assert!(app.store.get_link_by_line_user(&erin).await.unwrap().is_none());
    assert_eq!(app.store.get_link_nonce(&late).await.unwrap().unwrap().used_at, None);

    // A failed link is recorded against its nonce.
    let frank = user(6);
    let failing = app.nonce_for("m-300", "some-link-token").await;
    assert_eq!(app.sim.send_account_link(&frank, LinkResult::Failed, &failing).await.unwrap().status, 200);
    app.processed().await;
    assert_eq!(app.store.get_link_nonce(&failing).await.unwrap().unwrap().result.as_deref(), Some("failed"));
    assert!(app.store.get_link(&member("m-300")).await.unwrap().is_none());

    // The user can always unlink, from the rich menu's postback.
    assert_eq!(app.sim.send_postback(&carol, "action=unlink").await.unwrap().status, 200);
    app.processed().await;
    assert!(app.store.get_link(&member("m-100")).await.unwrap().is_none());
    let last = app.sim.messages_to(carol.as_str()).pop().unwrap();
    assert!(last["text"].as_str().unwrap().contains("解除"), "{last}");
}

#[tokio::test]
async fn nonce_route_validates_its_input() {
    let app = start().await;
    let (status, body) = app.post_api("/v1/account-link/nonce", json!({"member_id": ""})).await;
    assert_eq!(status, 422, "{body}");
    let mut fields: Vec<&str> =
        body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    fields.sort_unstable();
    assert_eq!(fields, vec!["link_token", "member_id"]);
    let response = app.http.post(format!("{}/v1/account-link/nonce", app.base)).body("{oops").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // Values are URL-encoded into the redirect.
    let (status, body) =
        app.post_api("/v1/account-link/nonce", json!({"member_id": "m1", "link_token": "a/b+c"})).await;
    assert_eq!(status, 200);
    assert!(body["redirect_url"].as_str().unwrap().starts_with(&format!("{DIALOG}?linkToken=a%2Fb%2Bc&nonce=")));
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(app.counts().await.links, 0);
}

#[tokio::test]
async fn id_token_flow() {
    let app = start().await;
    let gina = user(7);
    let token = app.sim.issue_id_token(&gina, LOGIN_CHANNEL, Duration::from_secs(600));
    let (status, body) = app.post_api("/v1/links/id-token", json!({"member_id": "m-700", "id_token": token})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["method"], "id_token");
    assert_eq!(body["line_user_id"], gina.as_str());
    let link = app.store.get_link(&member("m-700")).await.unwrap().unwrap();
    assert_eq!(link.method, LinkMethod::IdToken);
    // The same again is fine.
    let (status, _) = app.post_api("/v1/links/id-token", json!({"member_id": "m-700", "id_token": token})).await;
    assert_eq!(status, 200);
    // The same LINE user for another member: 409.
    let (status, body) = app.post_api("/v1/links/id-token", json!({"member_id": "m-701", "id_token": token})).await;
    assert_eq!(status, 409, "{body}");

    let hana = user(8);
    let expired = app.sim.issue_expired_id_token(&hana, LOGIN_CHANNEL);
    let (status, body) = app.post_api("/v1/links/id-token", json!({"member_id": "m-800", "id_token": expired})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_id_token");
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"), "{body}");
    let other_channel = app.sim.issue_id_token(&hana, "999", Duration::from_secs(600));
    let (status, body) =
        app.post_api("/v1/links/id-token", json!({"member_id": "m-800", "id_token": other_channel})).await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = app.post_api("/v1/links/id-token", json!({"member_id": "m-800", "id_token": "garbage"})).await;
    assert_eq!(status, 422);
    let (status, _) = app.post_api("/v1/links/id-token", json!({"member_id": "m-800"})).await;
    assert_eq!(status, 422);
    assert!(app.store.get_link(&member("m-800")).await.unwrap().is_none());
    assert!(app.store.get_link_by_line_user(&hana).await.unwrap().is_none());
    assert_eq!(app.counts().await.links, 1);
}
