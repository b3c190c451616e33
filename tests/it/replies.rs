//! Reply rules over real HTTP: the LINE simulator sends signed message and
//! postback webhooks to the in-process server, which replies through the
//! simulator's reply API. The shipped rules (会員証, ポイント) and a test set
//! (equals, postback, segment, loading animation), on SQLite and PostgreSQL.

use crate::common::{Backend, TestApp, spawn_app_with};
use renkei_campaigns::{LinkKeys, MemberCode};
use renkei_core::LineUserId;
use renkei_line_sim::{Endpoint, LineSim, SimConfig, SimHandle};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const LINK_KEY: &str = "replies-test-link-key-0123456789abcdef0123";
const LINKED: &str = "U00000000000000000000000000000a01";
const UNLINKED: &str = "U00000000000000000000000000000a02";

renkei_test_support::on_both_backends!(
    renkei_test_support::available =>
    shipped_rules_answer_linked_and_unlinked_users_alike_in_any_width,
    the_member_card_code_reads_back_as_the_member_id,
    equals_postback_and_segment_rules_with_the_loading_animation,
    a_token_past_its_life_is_not_used,
);

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The server with `replies` (a folder) and the shipped templates, its
/// webhook fed by a fresh simulator.
async fn spawn(
    backend: Backend,
    replies: PathBuf,
    segments: Option<&TempDir>,
    loading_after: &str,
) -> Option<(TestApp, SimHandle)> {
    spawn_with(backend, replies, segments, loading_after, "50s").await
}

/// As [`spawn`], with `[replies] token_life`.
async fn spawn_with(
    backend: Backend,
    replies: PathBuf,
    segments: Option<&TempDir>,
    loading_after: &str,
    token_life: &str,
) -> Option<(TestApp, SimHandle)> {
    let sim = LineSim::spawn(SimConfig::default()).await.expect("simulator");
    let app = spawn_app_with(backend, |c| {
        c.paths.replies = replies;
        c.paths.templates = repo("templates");
        if let Some(segments) = segments {
            c.paths.segments = segments.path().to_path_buf();
        }
        c.line.channel_secret = sim.channel_secret().into();
        c.line.channel_access_token = sim.access_token().into();
        c.line.api_base_url = sim.base_url();
        c.server.link_keys = vec![LINK_KEY.into()];
        c.replies.loading_after = loading_after.parse().expect("duration");
        c.replies.token_life = token_life.parse().expect("duration");
    })
    .await?;
    sim.set_webhook_url(Some(format!("{}/webhook/line", app.base)));
    Some((app, sim))
}

/// Polls `check` every 20 ms until it returns `Some`, failing after 10 s.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn user(id: &str) -> LineUserId {
    LineUserId::parse(id).expect("user id")
}

async fn link_member(app: &TestApp, member: &str, line_user: &str, attributes: Value) {
    let (status, body) =
        app.post("/v1/members", &json!({"members": [{"member_id": member, "attributes": attributes}]})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.post("/v1/links", &json!({"member_id": member, "line_user_id": line_user})).await;
    assert_eq!(status, 201, "{body}");
}

/// Sends `text` from `from` and returns the reply's messages (after
/// `replies_before` earlier replies).
async fn ask(sim: &SimHandle, from: &str, text: &str, replies_before: usize) -> Vec<Value> {
    let delivery = sim.send_message(&user(from), text).await.expect("webhook sent");
    assert_eq!(delivery.status, 200);
    eventually(&format!("the reply to {text:?}"), || {
        let replies = sim.requests_for(Endpoint::Reply);
        (replies.len() > replies_before).then(|| replies[replies_before].clone())
    })
    .await
    .messages
}

/// Waits until the worker has handled every stored webhook, so that "no
/// reply" is a fact and not a race.
async fn settled(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if app.store.pending_webhook_events().await.expect("pending") == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "webhook events still unprocessed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn shipped_rules_answer_linked_and_unlinked_users_alike_in_any_width(backend: Backend) {
    let Some((app, sim)) = spawn(backend, repo("config/replies"), None, "1s").await else { return };
    link_member(&app, "M-1", LINKED, json!({"name": "佐藤 花子", "rank": "gold", "points": 1250})).await;

    // Full-width Latin, prefix rule `point`: a text reply with the balance.
    let reply = ask(&sim, LINKED, "ｐｏｉｎｔ？", 0).await;
    assert_eq!(reply, vec![json!({"type": "text", "text": "佐藤 花子さんのポイント残高は 1250pt です。"})]);
    // Half-width katakana, contains rule ポイント: the Flex balance.
    let reply = ask(&sim, LINKED, "今のﾎﾟｲﾝﾄ教えて", 1).await;
    assert_eq!(reply[0]["type"], "flex");
    assert_eq!(reply[0]["altText"], "佐藤 花子さんのポイント残高: 1250pt");
    assert!(reply[0]["contents"].to_string().contains("1250 pt"), "{}", reply[0]);
    // The same in full-width katakana.
    let reply = ask(&sim, LINKED, "ポイント", 2).await;
    assert_eq!(reply[0]["altText"], "佐藤 花子さんのポイント残高: 1250pt");

    // Unlinked: the rule's own unlinked_reply, or the link prompt.
    let reply = ask(&sim, UNLINKED, "ポイント", 3).await;
    assert_eq!(reply[0]["type"], "text");
    assert!(reply[0]["text"].as_str().unwrap_or_default().contains("会員IDとLINEを連携すると"), "{reply:?}");
    let reply = ask(&sim, UNLINKED, "会員証", 4).await;
    assert_eq!(reply[0]["quickReply"]["items"][0]["action"]["data"], "action=link", "{reply:?}");

    // No rule matches: no reply (left to others).
    sim.send_message(&user(LINKED), "こんにちは").await.expect("webhook");
    settled(&app).await;
    assert_eq!(sim.requests_for(Endpoint::Reply).len(), 5);

    // A redelivered webhook is the same event: no second reply.
    let delivery = sim.send_message(&user(LINKED), "ポイント").await.expect("webhook");
    eventually("the sixth reply", || (sim.requests_for(Endpoint::Reply).len() == 6).then_some(())).await;
    sim.redeliver(&delivery).await.expect("redelivery");
    settled(&app).await;
    assert_eq!(sim.requests_for(Endpoint::Reply).len(), 6, "a reply token is used once");
    assert_eq!(sim.counters().bad_request, 0, "renkei never retried a used token");

    // Every reply is recorded and counted.
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    for line in [
        "renkei_replies_total{rule=\"points_english\",answer=\"reply\",outcome=\"sent\"} 1",
        "renkei_replies_total{rule=\"points\",answer=\"reply\",outcome=\"sent\"} 3",
        "renkei_replies_total{rule=\"points\",answer=\"unlinked_reply\",outcome=\"sent\"} 1",
        "renkei_replies_total{rule=\"member_card\",answer=\"link_prompt\",outcome=\"sent\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    let counts = app.store.reply_counts(chrono::Utc::now() - chrono::Duration::hours(1)).await.expect("counts");
    let total: i64 = counts.iter().map(|c| c.count).sum();
    assert_eq!(total, 6, "{counts:?}");

    // And shown on the dashboard's overview, the same numbers.
    use crate::dashboard::{VIEWER_PASSWORD, Visitor, add_operator};
    add_operator(&app, "viewer", renkei_store::OperatorRole::Viewer, VIEWER_PASSWORD).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("viewer", VIEWER_PASSWORD).await;
    let overview = visitor.get("/dashboard/").await;
    assert_eq!(overview.status, 200);
    for count in &counts {
        let id = format!(
            "id=\"replies-{}-{}-{}\" data-value=\"{}\"",
            count.rule_id, count.answer, count.outcome, count.count
        );
        assert!(overview.body.contains(&id), "missing {id} in the overview");
    }
}

async fn the_member_card_code_reads_back_as_the_member_id(backend: Backend) {
    let Some((app, sim)) = spawn(backend, repo("config/replies"), None, "1s").await else { return };
    link_member(&app, "M-00042", LINKED, json!({"name": "山田 太郎", "rank": "silver", "points": 80})).await;
    let reply = ask(&sim, LINKED, "会員証を表示", 0).await;
    assert_eq!(reply[0]["altText"], "山田 太郎さんの会員証");
    let sent_url = reply[0]["contents"]["hero"]["url"].as_str().expect("image url");
    // The URL is on `server.public_base_url` (the default here, not the test's port).
    let token = sent_url.strip_prefix("http://127.0.0.1:8080/member-code/").expect("member-code URL");
    assert!(!token.contains("M-00042"), "the member id is sealed, not in the URL");
    let url = format!("{}/member-code/{token}", app.base);

    let response = app.http.get(&url).send().await.expect("code");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    let png = response.bytes().await.expect("png");
    assert_eq!(decode_qr(&png), "M-00042");

    // Tampered, expired, and a tracked-link token: 404, no image.
    let mut tampered = url.clone().into_bytes();
    let at = tampered.len() - 3;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let keys = LinkKeys::new(&[LINK_KEY]).expect("keys");
    let expired = keys
        .seal_member_code(&MemberCode { member_id: "M-00042".into(), expires_at: chrono::Utc::now().timestamp() - 1 });
    for bad in [tampered, format!("{}/member-code/{expired}", app.base), format!("{}/member-code/nonsense", app.base)] {
        let response = app.http.get(&bad).send().await.expect("request");
        assert_eq!(response.status(), 404, "{bad}");
        assert_eq!(response.headers()["content-type"], "application/json");
    }
}

/// Decodes a QR code PNG, as a shop's scanner would.
fn decode_qr(png_bytes: &[u8]) -> String {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("png header");
    let mut buffer = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buffer).expect("png frame");
    let (width, height) = (info.width as usize, info.height as usize);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| buffer[y * width + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code");
    grids[0].decode().expect("decodes").1
}

const RULE_EQUALS: &str = "id: hours\nmatch: { text: { equals: 営業時間 } }\nreply:\n  - text: \"10:00〜20:00です\"\n";
const RULE_GOLD: &str = "id: gold_desk\nmatch: { text: { contains: 問い合わせ } }\nwhen: { segment: gold }\nreply:\n  - text: \"{{member.name}}様、ゴールド専用窓口です\"\n";
const RULE_ANYONE: &str = "id: desk\nmatch: { text: { contains: 問い合わせ } }\nreply:\n  - text: 窓口はこちらです\n";
const RULE_POSTBACK: &str = "id: coupon\nmatch: { postback: { action: coupon } }\nwhen: { linked: true }\nreply:\n  - text: \"{{member.name}}様のクーポン: {{event.properties.data}}\"\n";
const GOLD: &str = "id: gold\nname: ゴールド\nrule: { attribute: rank, eq: gold }\n";

async fn equals_postback_and_segment_rules_with_the_loading_animation(backend: Backend) {
    let rules = tempfile::tempdir().expect("tempdir");
    let segments = tempfile::tempdir().expect("tempdir");
    for (file, text) in [
        ("10_hours.yaml", RULE_EQUALS),
        ("20_gold.yaml", RULE_GOLD),
        ("30_desk.yaml", RULE_ANYONE),
        ("40_coupon.yaml", RULE_POSTBACK),
    ] {
        std::fs::write(rules.path().join(file), text).expect("rule");
    }
    std::fs::write(segments.path().join("gold.yaml"), GOLD).expect("segment");
    // "0s": the loading animation starts before every lookup.
    let Some((app, sim)) = spawn(backend, rules.path().to_path_buf(), Some(&segments), "0s").await else { return };
    link_member(&app, "M-7", LINKED, json!({"name": "鈴木", "rank": "gold"})).await;
    app.evaluator.as_ref().expect("evaluator role").idle().await;

    assert_eq!(ask(&sim, UNLINKED, "営業時間", 0).await[0]["text"], "10:00〜20:00です");
    sim.send_message(&user(UNLINKED), "営業時間は？").await.expect("webhook");
    settled(&app).await;
    assert_eq!(sim.requests_for(Endpoint::Reply).len(), 1, "equals is the whole message");

    // The segment rule answers the gold member; others fall through to the next rule.
    assert_eq!(ask(&sim, LINKED, "お問い合わせ", 1).await[0]["text"], "鈴木様、ゴールド専用窓口です");
    assert_eq!(ask(&sim, UNLINKED, "お問い合わせ", 2).await[0]["text"], "窓口はこちらです");

    let delivery = sim.send_postback(&user(LINKED), "action=coupon&id=7").await.expect("postback");
    assert_eq!(delivery.status, 200);
    let reply = eventually("the postback reply", || sim.requests_for(Endpoint::Reply).get(3).cloned()).await;
    assert_eq!(reply.messages[0]["text"], "鈴木様のクーポン: action=coupon&id=7");

    // The loading animation went to each user before their reply, and each
    // message was marked read.
    let loading = sim.requests_for(Endpoint::LoadingAnimation);
    assert_eq!(loading.len(), 4, "{loading:?}");
    assert_eq!(loading[1].recipients, vec![LINKED.to_string()]);
    let replies = sim.requests_for(Endpoint::Reply);
    assert!(loading.iter().zip(&replies).all(|(l, r)| l.at <= r.at && l.recipients == r.recipients));
    assert_eq!(sim.requests_for(Endpoint::MarkAsRead).len(), 3, "three messages, one postback");
}

async fn a_token_past_its_life_is_not_used(backend: Backend) {
    // A life of 0 s: every token is too old by the time the worker sees it.
    let Some((app, sim)) = spawn_with(backend, repo("config/replies"), None, "1s", "0s").await else { return };
    link_member(&app, "M-9", LINKED, json!({"name": "高橋", "points": 5})).await;
    sim.send_message(&user(LINKED), "ポイント").await.expect("webhook");
    settled(&app).await;
    assert!(sim.requests_for(Endpoint::Reply).is_empty());
    let counts = app.store.reply_counts(chrono::Utc::now() - chrono::Duration::hours(1)).await.expect("counts");
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!((counts[0].rule_id.as_str(), counts[0].outcome.as_str(), counts[0].count), ("points", "expired", 1));
}
