//! `renkei demo`: the product tour, in under a minute, on a temporary SQLite
//! database and the built-in LINE simulator.
//!
//! It imports the bundled members and event history, starts the server with
//! every role (API, webhook, evaluator, scheduler, dispatcher), and then plays
//! the world around it in real time: a company's systems post events, LINE
//! users follow, tap "ID連携する" and link their member account through the
//! webhook flow, one blocks the account, a cart is abandoned, a reservation
//! comes close and a birthday arrives. At the end it prints, from the
//! simulator's record, what LINE was asked to deliver to whom, the rich menus
//! linked, and the campaigns' totals from the HTTP API; then a step sequence
//! and its lift, users asking for their points and member card, and a
//! restock and a shipment notified.
//!
//! Time is real, so the tour arranges for things to happen within seconds: the
//! abandoned cart is added almost an hour ago (the `older_than: 1h` passes a
//! few seconds later, by time alone), the reservation is a day and a few
//! seconds away (the reminder is due a day before), and the tour's copy of the
//! campaigns fires the birthday schedule a few seconds from now, for members
//! whose birthday the tour sets to today.

use crate::app::Application;
use crate::config::{Config, Secret};
use crate::progress::BarProgress;
use anyhow::Context;
use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Timelike, Utc};
use chrono_tz::Tz;
use renkei_campaigns::{CampaignSet, RichMenuRules, Trigger};
use renkei_core::{Clock, LineUserId, SystemClock};
use renkei_dispatcher::GlobalPolicy;
use renkei_line_sim::SimHandle;
use renkei_segments::SegmentSet;
use renkei_store::Store;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SAMPLE_MEMBERS: &str = include_str!("../config/sample/members.csv");
const SAMPLE_EVENTS: &str = include_str!("../config/sample/events.ndjson");

/// The cast (members of `config/sample/members.csv`).
const CART_ABANDONER: &str = "M00001";
const CART_BUYER: &str = "M00004";
const BIRTHDAY: &str = "M00002";
const BIRTHDAY_BLOCKED: &str = "M00003";
const RESERVATION: &str = "M00006";
const RESERVATION_CANCELLED: &str = "M00005";
/// A gold member not linked yet: the new friend links to it through the webhook flow.
const NEWCOMER_MEMBER: &str = "M00155";
const NEWCOMER: &str = "U0000000000000000000000000000f011";
const DIRECT_LINK_MEMBER: &str = "M00190";
const DIRECT_LINK_USER: &str = "U0123456789abcdef0123456789abcdef";

/// How far ahead the time-driven moments are placed.
const CART_LEAD: i64 = 12;
const RESERVATION_LEAD: i64 = 15;
const BIRTHDAY_LEAD: i64 = 24;
/// How long any one wait may take before the tour says it did not happen.
const WAIT: Duration = Duration::from_secs(10);

pub async fn run(keep: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut setup = configure()?;
    let now = setup.clock.now();
    introduce(&setup, now);
    let campaigns = tour_campaigns(&mut setup, now)?;
    let (sim, menu_names) = start_simulator(&mut setup.config, &campaigns.rich_menus).await?;
    let store = renkei_store::connect(&setup.config.database.url).await?;
    store.migrate().await?;
    let engine = import_history(&setup, &store, &campaigns).await?;
    let live = serve(&setup, store, sim, menu_names).await?;
    let gold_menu = list_campaigns_and_menus(&live, &campaigns.rich_menus).await?;
    live_api_traffic(&live.tour).await?;
    let moments = shop_events(&live).await?;
    block_account(&live).await?;
    new_friend(&live, &gold_menu).await?;
    time_passes(&live, &moments, campaigns.birthday_at).await?;
    settle_outbox(&live.tour).await?;
    // 7. What LINE was asked to deliver, to whom.
    report(&live.tour, &live.store, &live.sim, &live.menu_names, &campaigns.real).await?;
    // 8. A step sequence measured against its goal and its holdout.
    crate::demo_sequence::play(&live.tour, live.clock.now()).await?;
    // 9. Conversations: the reply rules.
    crate::demo_replies::play(&live.sim, &live.tour.http, &live.tour.base, NEWCOMER).await?;
    // 10. Product notices: a restock fan-out and a shipping notice.
    crate::demo_notices::play(&live.tour, &live.sim, live.clock.now()).await?;
    quiet_hours_as_written(&setup, &campaigns, &engine, &live).await?;
    finish(keep, started, live).await
}

/// The demo's configuration and scratch directory, before anything runs.
struct Setup {
    dir: tempfile::TempDir,
    db: PathBuf,
    api_key: String,
    config: Config,
    /// The campaigns as written (`config.paths.campaigns` becomes the tour's copy).
    campaigns_dir: PathBuf,
    tz: Tz,
    clock: Arc<dyn Clock>,
}

/// The tour's copy of the campaigns, and what it changed.
struct TourCampaigns {
    segments: Arc<SegmentSet>,
    real: CampaignSet,
    rich_menus: RichMenuRules,
    birthday_at: DateTime<Utc>,
    /// Quiet hours the tour lifted: (campaign or `[policy]`, "from–to").
    lifted: Vec<(String, String)>,
    written_policy: GlobalPolicy,
}

/// What the steps share once the server runs.
struct Live {
    tour: Tour,
    sim: SimHandle,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    menu_names: HashMap<String, String>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// When the time-driven moments set up by the shop's events are due.
struct Moments {
    cart_due: DateTime<Utc>,
    reminder_due: DateTime<Utc>,
}

/// A temporary SQLite database, a fresh API key, every role, the examples.
fn configure() -> anyhow::Result<Setup> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let db = dir.path().join("demo.db");
    let api_key = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let mut config = Config::load_with_env(None, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    config.database.url = format!("sqlite://{}", db.display());
    config.server.bind = ([127, 0, 0, 1], 0).into();
    config.server.api_keys = vec![Secret::from(api_key.as_str())];
    // Tracked links need a key; a fresh one per run (the demo's links live as long as it does).
    if config.server.link_keys.is_empty() {
        let link_key = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        config.server.link_keys = vec![Secret::from(link_key.as_str())];
    }
    config.roles =
        crate::config::RolesConfig { api: true, webhook: true, evaluator: true, scheduler: true, dispatcher: true };
    // Run from outside the source tree: use the examples it was built from.
    let tree = Path::new(env!("CARGO_MANIFEST_DIR"));
    let or_tree = |path: &Path, exists: bool, rel: &str| if exists { path.to_path_buf() } else { tree.join(rel) };
    config.paths.segments = or_tree(&config.paths.segments, config.paths.segments.is_dir(), "config/segments");
    config.paths.templates = or_tree(&config.paths.templates, config.paths.templates.is_dir(), "templates");
    config.paths.rich_menus =
        or_tree(&config.paths.rich_menus, config.paths.rich_menus.is_file(), "config/rich_menus.yaml");
    config.paths.replies = or_tree(&config.paths.replies, config.paths.replies.is_dir(), "config/replies");
    let campaigns_dir = or_tree(&config.paths.campaigns, config.paths.campaigns.is_dir(), "config/campaigns");
    config.paths.campaigns = campaigns_dir.clone();
    let tz = config.timezone.0;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ok(Setup { dir, db, api_key, config, campaigns_dir, tz, clock })
}

fn introduce(setup: &Setup, now: DateTime<Utc>) {
    let Setup { db, config, campaigns_dir, tz, .. } = setup;
    let tz = *tz;
    println!("renkei demo: the whole product in one command (temporary SQLite at {})", db.display());
    println!(
        "   it is {} in {tz}; segments {}, campaigns {}, templates {}, rich menus {}",
        local(now, tz, "%Y-%m-%d %H:%M:%S"),
        config.paths.segments.display(),
        campaigns_dir.display(),
        config.paths.templates.display(),
        config.paths.rich_menus.display()
    );
}

/// 0. The tour's copy of the campaigns: the birthday schedule fires in a
///    few seconds, and quiet hours are explained (and lifted) when now is inside them.
fn tour_campaigns(setup: &mut Setup, now: DateTime<Utc>) -> anyhow::Result<TourCampaigns> {
    let (config, dir, tz) = (&mut setup.config, &setup.dir, setup.tz);
    let segments = Arc::new(crate::app::load_segments(&config.paths.segments)?);
    let (real_campaigns, rich_menus) = crate::campaigns::load_or_explain(config, &segments)?;
    let birthday_at = DateTime::from_timestamp(now.timestamp() + BIRTHDAY_LEAD, 0).unwrap_or(now);
    let tour_dir = dir.path().join("campaigns");
    let mut lifted = write_tour_campaigns(&real_campaigns, &tour_dir, birthday_at, now, tz)?;
    config.paths.campaigns = tour_dir;
    let written_policy = crate::campaigns::global_policy(config)?;
    if let Some(quiet) = written_policy.quiet_hours.filter(|q| q.contains(now, tz)) {
        // [policy] quiet hours (e.g. from ./renkei.toml) would hold every campaign back.
        lifted.push(("[policy]".to_string(), format!("{}–{}", quiet.from.format("%H:%M"), quiet.to.format("%H:%M"))));
        config.policy.quiet_hours_from.clear();
        config.policy.quiet_hours_to.clear();
    }
    if lifted.is_empty() {
        println!("   {} is outside every quiet hours: the tour runs the campaigns as written", local(now, tz, "%H:%M"));
    } else {
        println!(
            "   note: {} is inside the quiet hours of {}: as written, their sends would wait until the quiet hours end\n   (deferred, never dropped). So you can watch them now, the tour runs a copy without these quiet hours; the\n   end shows what the campaigns as written decide right now.",
            local(now, tz, "%H:%M"),
            lifted.iter().map(|(id, hours)| format!("{id} ({hours})")).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(TourCampaigns { segments, real: real_campaigns, rich_menus, birthday_at, lifted, written_policy })
}

/// The built-in LINE simulator plays LINE: it signs webhooks, answers the
/// Messaging API and records what it was asked to deliver.
async fn start_simulator(
    config: &mut Config,
    rich_menus: &RichMenuRules,
) -> anyhow::Result<(SimHandle, HashMap<String, String>)> {
    let sim = renkei_line_sim::LineSim::spawn(renkei_line_sim::SimConfig::default()).await?;
    config.line.channel_secret = Secret::from(sim.channel_secret());
    config.line.channel_access_token = Secret::from(sim.access_token());
    config.line.api_base_url = sim.base_url();
    // The rich menus the rules name exist on the channel (created in LINE's console).
    for rule in &rich_menus.rules {
        sim.add_rich_menu(&rule.rich_menu, &rule.segment);
    }
    if let Some(default) = &rich_menus.default {
        sim.add_rich_menu(default, "default");
    }
    let menu_names: HashMap<String, String> = rich_menus
        .rules
        .iter()
        .map(|r| (r.rich_menu.clone(), r.segment.clone()))
        .chain(rich_menus.default.iter().map(|d| (d.clone(), "default".to_string())))
        .collect();
    Ok((sim, menu_names))
}

/// 1. The company's CRM export and event history, imported before going live;
///    memberships as a running renkei would already have them.
async fn import_history(
    setup: &Setup,
    store: &Arc<dyn Store>,
    campaigns: &TourCampaigns,
) -> anyhow::Result<renkei_evaluator::MembershipEngine> {
    let (dir, tz, clock) = (&setup.dir, setup.tz, &setup.clock);
    let (segments, birthday_at) = (&campaigns.segments, campaigns.birthday_at);
    // The day of the birthday fire (the same as today unless the tour starts just before midnight).
    let today = birthday_at.with_timezone(&tz).date_naive();
    let members_file = dir.path().join("members.csv");
    std::fs::write(&members_file, sample_members(today)?)?;
    let members =
        renkei_ingest::import::import_members(store.clone(), &members_file, Arc::new(BarProgress::new()), clock.now())
            .await?;
    let events_file = dir.path().join("events.ndjson");
    std::fs::write(&events_file, SAMPLE_EVENTS)?;
    let history =
        renkei_ingest::import::import_events(store.clone(), &events_file, Arc::new(BarProgress::new()), clock.now())
            .await?;
    println!(
        "1. renkei import members: {} members, {} linked to LINE users (ID連携); {BIRTHDAY} and {BIRTHDAY_BLOCKED} have their birthday today",
        members.created, members.linked
    );
    println!(
        "   renkei import events: {} events of history (campaigns react to what happens from now on, not to history)",
        history.accepted
    );
    // Memberships as a running renkei would already have them. (On a first
    // start the server's own recompute would find them; computing them first
    // keeps the tour's story exact: entries happen live, below.)
    let engine = renkei_evaluator::MembershipEngine::new(
        renkei_evaluator::EngineStore::of(store),
        segments.clone(),
        clock.clone(),
        tz,
    );
    let computed = engine.recompute_all(|_| {}).await?;
    println!("   segment memberships computed: {} users, {} segment entries", computed.users, computed.transitions);
    Ok(engine)
}

/// `renkei serve` with every role, on the simulator.
async fn serve(
    setup: &Setup,
    store: Arc<dyn Store>,
    sim: SimHandle,
    menu_names: HashMap<String, String>,
) -> anyhow::Result<Live> {
    let (config, api_key, tz, clock) = (&setup.config, &setup.api_key, setup.tz, &setup.clock);
    let app = Application::build(config, store.clone(), clock.clone()).await?;
    let evaluator = app.evaluator().context("the demo runs the evaluator role")?;
    app.dispatcher().context("the demo runs the dispatcher role")?;
    let base = format!("http://{}", app.local_addr());
    sim.set_webhook_url(Some(format!("{base}/webhook/line")));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stop_rx.await;
    }));
    let http = crate::http_client();
    let tour = Tour { http: http.clone(), base: base.clone(), key: api_key.clone(), tz };
    println!("   renkei serve on {base} (API key {api_key}), every role; LINE simulator on {}", sim.base_url());
    evaluator.recomputed().await;
    Ok(Live { tour, sim, store, clock: clock.clone(), menu_names, stop: stop_tx, server })
}

/// The campaigns the server loaded, and the gold members' rich menus; the gold menu.
async fn list_campaigns_and_menus(live: &Live, rich_menus: &RichMenuRules) -> anyhow::Result<Option<String>> {
    let (tour, sim) = (&live.tour, &live.sim);
    let campaigns = tour.get("/v1/campaigns").await?;
    println!(
        "   its start-up recompute finds nothing new; {} campaigns loaded:",
        campaigns["campaigns"].as_array().map_or(0, Vec::len)
    );
    for campaign in campaigns["campaigns"].as_array().into_iter().flatten() {
        println!(
            "     {:<22} {:<40} {}",
            text(&campaign["id"]),
            trigger_text(&campaign["trigger"]),
            text(&campaign["name"])
        );
    }
    let gold_menu = rich_menus.rules.iter().find(|r| r.segment == "gold_members").map(|r| r.rich_menu.clone());
    if let Some(gold) = &gold_menu {
        let linked = wait_until("gold members' rich menus linked", WAIT, async || {
            let n = sim.user_rich_menus().values().filter(|m| *m == gold).count();
            let expected = segment_size(tour, "gold_members").await?;
            Ok((n > 0 && n as u64 >= expected).then_some(n))
        })
        .await?;
        if let Some(n) = linked {
            println!("   rich menus: the {n} linked gold members got the gold menu ({gold}), by bulk link");
        }
    }
    Ok(gold_menu)
}

/// 2. Live traffic through POST /v1/events, duplicates and bad input.
async fn live_api_traffic(tour: &Tour) -> anyhow::Result<()> {
    let sample: Vec<Value> =
        SAMPLE_EVENTS.lines().take(100).map(serde_json::from_str).collect::<Result<_, _>>().context("sample events")?;
    let again = tour.post("/v1/events", json!({"events": sample})).await?;
    println!("2. POST /v1/events with 100 events of the history again (same event_id) → {}: {}", again.0, again.1);
    let bad = json!({"events": [
        {"type": "purchase", "member_id": "M00001", "occurred_at": "2026-11-23T10:00:00+09:00"},
        {"type": "Purchase!", "member_id": "M00001", "occurred_at": "2026-11-23 10:00"}
    ]});
    let refused = tour.post("/v1/events", bad).await?;
    println!("   a batch with one bad event → {}, nothing stored:", refused.0);
    for error in refused.1["errors"].as_array().into_iter().flatten() {
        println!("     events[{}].{}: {}", error["index"], text(&error["field"]), text(&error["message"]));
    }
    let link = json!({"member_id": DIRECT_LINK_MEMBER, "line_user_id": DIRECT_LINK_USER});
    let created = tour.post("/v1/links", link).await?;
    println!("   POST /v1/links {DIRECT_LINK_MEMBER} → {DIRECT_LINK_USER}: {}", created.0);
    let claimed = json!({"member_id": "M00191", "line_user_id": DIRECT_LINK_USER});
    let conflict = tour.post("/v1/links", claimed).await?;
    println!("   the same LINE user claimed by M00191 → {}: {}", conflict.0, text(&conflict.1["error"]["message"]));
    Ok(())
}

/// 3. Carts, reservations: events from the shop's systems.
async fn shop_events(live: &Live) -> anyhow::Result<Moments> {
    let (tour, clock, tz) = (&live.tour, &live.clock, live.tour.tz);
    let now = clock.now();
    let cart_at = now + chrono::Duration::seconds(CART_LEAD) - chrono::Duration::hours(1);
    let reserved_at = now + chrono::Duration::seconds(RESERVATION_LEAD) + chrono::Duration::days(1);
    let live = json!({"events": [
        {"event_id": "tour-cart-1", "type": "cart_add", "member_id": CART_ABANDONER, "occurred_at": rfc3339(cart_at),
         "properties": {"cart_id": "C-TOUR-1", "sku": "JK-001", "amount": 12800}},
        {"event_id": "tour-cart-2", "type": "cart_add", "member_id": CART_BUYER, "occurred_at": rfc3339(cart_at),
         "properties": {"cart_id": "C-TOUR-2", "sku": "TS-014", "amount": 3900}},
        {"event_id": "tour-order-2", "type": "purchase", "member_id": CART_BUYER, "occurred_at": rfc3339(now),
         "properties": {"cart_id": "C-TOUR-2", "order_id": "O-TOUR-2", "amount": 3900}},
        {"event_id": "tour-rsv-1", "type": "reservation_created", "member_id": RESERVATION, "occurred_at": rfc3339(now),
         "properties": {"reservation_id": "R-TOUR-1", "reserved_at": rfc3339(reserved_at), "store": "shibuya"}},
        {"event_id": "tour-rsv-2", "type": "reservation_created", "member_id": RESERVATION_CANCELLED, "occurred_at": rfc3339(now),
         "properties": {"reservation_id": "R-TOUR-2", "reserved_at": rfc3339(reserved_at), "store": "umeda"}},
        {"event_id": "tour-rsv-2-cancel", "type": "reservation_cancelled", "member_id": RESERVATION_CANCELLED, "occurred_at": rfc3339(now),
         "properties": {"reservation_id": "R-TOUR-2"}}
    ]});
    let posted = tour.post("/v1/events", live).await?;
    let cart_due = cart_at + chrono::Duration::hours(1);
    let reminder_due = reserved_at - chrono::Duration::days(1);
    println!("3. the shop posts 6 live events → {}: {}", posted.0, posted.1);
    println!(
        "   {CART_ABANDONER} added cart C-TOUR-1 at {} and did not buy: enters cart_abandoners (older_than: 1h) at {}, by time alone",
        tour.hms(cart_at),
        tour.hms(cart_due)
    );
    println!("   {CART_BUYER} added cart C-TOUR-2 at the same time and bought it: never a カゴ落ち");
    println!(
        "   {RESERVATION} and {RESERVATION_CANCELLED} reserved for {}; the reminder is due a day before: today at {}; {RESERVATION_CANCELLED} cancelled",
        local(reserved_at, tz, "%m-%d %H:%M:%S"),
        tour.hms(reminder_due)
    );
    Ok(Moments { cart_due, reminder_due })
}

/// 4. A member blocks the account: renkei must never message them again.
async fn block_account(live: &Live) -> anyhow::Result<()> {
    let (store, sim) = (&live.store, &live.sim);
    let blocked = member_user(store, BIRTHDAY_BLOCKED).await?;
    if let Some(user) = &blocked {
        let delivery = sim.send_unfollow(user).await?;
        println!(
            "4. {BIRTHDAY_BLOCKED} ({user}) blocks the account: LINE sends an unfollow webhook → {}",
            delivery.status
        );
    }
    Ok(())
}

/// 5. A new friend, through the webhook flow to an account link.
async fn new_friend(live: &Live, gold_menu: &Option<String>) -> anyhow::Result<()> {
    let (sim, menu_names) = (&live.sim, &live.menu_names);
    let newcomer = LineUserId::parse(NEWCOMER).context("demo user id")?;
    let delivery = sim.send_follow(&newcomer).await?;
    println!("5. {newcomer} adds the account as a friend: LINE sends a signed follow webhook → {}", delivery.status);
    let promotion = wait_until("link_promotion to the new friend", WAIT, async || {
        Ok(sim.messages_to(NEWCOMER).into_iter().find(|m| m["type"] == "flex"))
    })
    .await?;
    if let Some(message) = promotion {
        println!(
            "   they enter unlinked_followers; link_promotion pushes a Flex message: 「{}」",
            text(&message["altText"])
        );
    }
    if let Some(menu) =
        wait_until("the unlinked friends' rich menu", WAIT, async || Ok(sim.user_rich_menu(NEWCOMER))).await?
    {
        println!("   and links their rich menu {menu} ({})", menu_names.get(&menu).map_or("?", String::as_str));
    }
    let delivery = sim.send_postback(&newcomer, "action=link").await?;
    println!("   they tap 「ID連携する」: a postback action=link webhook → {}", delivery.status);
    let reply = wait_until("the link reply", WAIT, async || {
        Ok(sim
            .messages_to(NEWCOMER)
            .into_iter()
            .filter_map(|m| m["text"].as_str().map(str::to_string))
            .find(|t| t.contains("linkToken=")))
    })
    .await?;
    let link_token = reply.as_deref().and_then(|t| {
        let url = t.lines().last()?;
        reqwest::Url::parse(url).ok()?.query_pairs().find(|(k, _)| k == "linkToken").map(|(_, v)| v.into_owned())
    });
    account_link(live, reply.as_deref(), link_token.as_deref(), gold_menu).await
}

/// The account link itself: the shop's login page, LINE's dialog, the accountLink webhook.
async fn account_link(
    live: &Live,
    reply: Option<&str>,
    link_token: Option<&str>,
    gold_menu: &Option<String>,
) -> anyhow::Result<()> {
    let (tour, sim) = (&live.tour, &live.sim);
    match (reply, link_token) {
        (Some(reply), Some(link_token)) => {
            println!("   renkei asks LINE for a link token and replies: 「{}」", reply.replace('\n', " "));
            let nonce = tour
                .post("/v1/account-link/nonce", json!({"member_id": NEWCOMER_MEMBER, "link_token": link_token}))
                .await?;
            let redirect = text(&nonce.1["redirect_url"]).to_string();
            println!(
                "   they log in as {NEWCOMER_MEMBER} on the shop's page, which calls POST /v1/account-link/nonce → {}",
                nonce.0
            );
            println!(
                "     and sends them to {}",
                redirect.split("nonce=").next().unwrap_or("").to_string() + "nonce=…"
            );
            let nonce_value = reqwest::Url::parse(&redirect)
                .ok()
                .and_then(|u| u.query_pairs().find(|(k, _)| k == "nonce").map(|(_, v)| v.into_owned()))
                .unwrap_or_default();
            let delivery = sim.complete_account_link(link_token, &nonce_value).await?;
            println!("   they confirm in LINE: an accountLink webhook (result ok, the nonce) → {}", delivery.status);
            let linked = wait_until("the account link", WAIT, async || {
                let (status, body) = tour.get_status(&format!("/v1/links/{NEWCOMER_MEMBER}")).await?;
                Ok((status == 200).then_some(body))
            })
            .await?;
            if let Some(body) = linked {
                println!(
                    "   GET /v1/links/{NEWCOMER_MEMBER}: {} (method {})",
                    text(&body["line_user_id"]),
                    text(&body["method"])
                );
                println!(
                    "   {NEWCOMER_MEMBER} is a gold member: the friend leaves unlinked_followers and enters gold_members"
                );
            }
            let welcome = wait_until("gold_welcome to the new member", WAIT, async || {
                Ok(sim.messages_to(NEWCOMER).into_iter().filter(|m| m["type"] == "flex").nth(1))
            })
            .await?;
            if let Some(message) = welcome {
                println!("   gold_welcome pushes: 「{}」", text(&message["altText"]));
            }
            if let Some(gold) = &gold_menu {
                let switched = wait_until("the gold rich menu for the new member", WAIT, async || {
                    Ok(sim.user_rich_menu(NEWCOMER).filter(|m| m == gold))
                })
                .await?;
                if let Some(menu) = switched {
                    println!("   and their rich menu switches to {menu} (gold_members)");
                }
            }
        }
        _ => println!("   (!) no link token came back; the account link part of the tour is skipped"),
    }
    Ok(())
}

/// 6. Time passes: the abandoned cart, the reservation reminder, the birthday.
async fn time_passes(live: &Live, moments: &Moments, birthday_at: DateTime<Utc>) -> anyhow::Result<()> {
    let (tour, store, sim, clock) = (&live.tour, &live.store, &live.sim, &live.clock);
    let Moments { cart_due, reminder_due } = *moments;
    let abandoner = member_user(store, CART_ABANDONER).await?;
    println!("6. waiting for the moments set up above (a few seconds each)…");
    if let Some(user) = &abandoner {
        let limit = until(cart_due, clock.now()) + WAIT;
        let reminder = wait_until("the cart reminder", limit, async || {
            Ok(sim.messages_to(user.as_str()).into_iter().find(|m| text(&m["altText"]).contains("カート")))
        })
        .await?;
        if let Some(message) = reminder {
            println!(
                "   {} {CART_ABANDONER} entered cart_abandoners; cart_reminder pushed 「{}」",
                tour.hms(clock.now()),
                text(&message["altText"])
            );
        }
    }
    let reserver = member_user(store, RESERVATION).await?;
    if let Some(user) = &reserver {
        let limit = until(reminder_due, clock.now()) + WAIT;
        let reminder = wait_until("the reservation reminder", limit, async || {
            Ok(sim.messages_to(user.as_str()).into_iter().find(|m| text(&m["altText"]).contains("ご予約")))
        })
        .await?;
        if let Some(message) = reminder {
            println!(
                "   {} reservation_reminder pushed to {RESERVATION}: 「{}」; {RESERVATION_CANCELLED}'s was cancelled (unless)",
                tour.hms(clock.now()),
                text(&message["altText"])
            );
        }
    }
    let birthday_user = member_user(store, BIRTHDAY).await?;
    if let Some(user) = &birthday_user {
        let limit = until(birthday_at, clock.now()) + WAIT;
        let coupon = wait_until("the birthday coupon", limit, async || {
            Ok(sim.messages_to(user.as_str()).into_iter().find(|m| text(&m["altText"]).contains("お誕生日")))
        })
        .await?;
        if let Some(message) = coupon {
            println!(
                "   {} birthday_coupon's schedule fired for birthday_today; pushed to {BIRTHDAY}: 「{}」",
                tour.hms(clock.now()),
                text(&message["altText"])
            );
        }
    }
    Ok(())
}

/// Lets the outbox settle (skips are decided by the dispatcher too).
async fn settle_outbox(tour: &Tour) -> anyhow::Result<()> {
    wait_until("the outbox to settle", WAIT, async || {
        let list = tour.get("/v1/campaigns").await?;
        let mut pending = 0;
        for campaign in list["campaigns"].as_array().into_iter().flatten() {
            let stats = tour.get(&format!("/v1/campaigns/{}/stats", text(&campaign["id"]))).await?;
            pending += stats["pending"].as_u64().unwrap_or(0);
        }
        Ok((pending == 0).then_some(()))
    })
    .await?;
    Ok(())
}

/// 8. Quiet hours, as written.
async fn quiet_hours_as_written(
    setup: &Setup,
    campaigns: &TourCampaigns,
    engine: &renkei_evaluator::MembershipEngine,
    live: &Live,
) -> anyhow::Result<()> {
    let (config, campaigns_dir, tz, clock, tour) =
        (&setup.config, &setup.campaigns_dir, setup.tz, &live.clock, &live.tour);
    let (lifted, real_campaigns, written_policy) = (&campaigns.lifted, &campaigns.real, &campaigns.written_policy);
    if !lifted.is_empty() {
        let at = clock.now();
        println!("\nquiet hours: the campaigns as written ({}) at {} {tz}:", campaigns_dir.display(), tour.hms(at));
        for (id, hours) in lifted {
            let Some(campaign) = real_campaigns.get(id) else {
                println!(
                    "   {id:<22} {hours}: every campaign's sends due now would wait until {}",
                    hours.split('–').nth(1).unwrap_or("?")
                );
                continue;
            };
            let release = campaign.quiet_hours.and_then(|q| q.release_at(at, tz));
            let rows = renkei_scheduler::dry_run(
                &renkei_scheduler::DryRunStore::of(&live.store),
                engine,
                real_campaigns,
                id,
                at,
                written_policy,
                &config.server.public_base_url,
            )
            .await?;
            let deferred = rows.iter().filter(|r| r.decision == "defer").count();
            println!(
                "   {id:<22} {hours}: sends due now wait until {} (renkei campaigns dry-run {id}: {deferred} of {} deferred)",
                release.map_or_else(|| "their end".to_string(), |r| local(r, tz, "%H:%M")),
                rows.len()
            );
        }
    }
    Ok(())
}

/// The time taken; with `--keep`, serving until Ctrl-C; then the server stops.
async fn finish(keep: bool, started: Instant, live: Live) -> anyhow::Result<ExitCode> {
    let Live { tour, stop: stop_tx, server, store, clock, .. } = live;
    let (base, api_key) = (&tour.base, &tour.key);
    println!("\ndone in {:.1} s", started.elapsed().as_secs_f64());
    if keep {
        // An operator for the dashboard, in the tour's temporary database.
        let password = renkei_dashboard::auth::generate_password();
        let operators: &dyn renkei_store::OperatorStore = store.as_ref();
        renkei_dashboard::manage::add(
            operators,
            "demo",
            "demo",
            renkei_store::OperatorRole::Admin,
            &password,
            clock.now(),
        )
        .await
        .context("adding the dashboard's demo operator")?;
        println!("\nthe dashboard: {base}/dashboard/login  (name: demo, password: {password})");
        println!(
            "\nserving on {base} until Ctrl-C; try:\n  curl -H 'Authorization: Bearer {api_key}' {base}/v1/campaigns\n  curl -H 'Authorization: Bearer {api_key}' {base}/v1/campaigns/birthday_coupon/stats\n  curl -H 'Authorization: Bearer {api_key}' {base}/v1/links/{NEWCOMER_MEMBER}\n  curl {base}/metrics"
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_tx.send(());
    server.await.context("server task")??;
    Ok(ExitCode::SUCCESS)
}

/// The end of the tour: every message the simulator accepted, by campaign
/// and recipient, the rich menus linked, and the campaigns' totals.
async fn report(
    tour: &Tour,
    store: &Arc<dyn Store>,
    sim: &SimHandle,
    menu_names: &HashMap<String, String>,
    campaigns: &CampaignSet,
) -> anyhow::Result<()> {
    // Which campaign each LINE request carried: deliveries → requests → X-Line-Retry-Key.
    let mut by_retry_key: HashMap<String, String> = HashMap::new();
    for campaign in campaigns.iter() {
        let mut requests = std::collections::BTreeSet::new();
        for delivery in store.campaign_deliveries(&campaign.id, 0, 10_000).await? {
            requests.extend(delivery.request_id);
        }
        for id in requests {
            if let Some(request) = store.get_request(id).await? {
                by_retry_key.insert(request.retry_key.to_string(), campaign.id.clone());
            }
        }
    }
    println!("\nwhat LINE was asked to deliver (the simulator's record):");
    println!("   {:<8}  {:<22} {:<9} to: altText (or text)", "time", "campaign", "endpoint");
    let (mut sends, mut messages) = (0, 0);
    let mut recipients = std::collections::BTreeSet::new();
    let requests = sim.requests();
    for request in &requests {
        use renkei_line_sim::Endpoint;
        let endpoint = match request.endpoint {
            Endpoint::Push => "push",
            Endpoint::Multicast => "multicast",
            Endpoint::Reply => "reply",
            _ => continue,
        };
        let campaign = match request.endpoint {
            Endpoint::Reply => "(webhook reply)".to_string(),
            _ => request
                .retry_key
                .as_deref()
                .and_then(|k| by_retry_key.get(&k.to_ascii_lowercase()))
                .cloned()
                .unwrap_or_else(|| "?".to_string()),
        };
        let to = match request.recipients.as_slice() {
            [one] => who(store, one).await?,
            // A reply goes to the user of the reply token.
            [] => "(the user who tapped)".to_string(),
            many => format!("{} users", many.len()),
        };
        let body =
            request.messages.first().map_or("", |m| m["altText"].as_str().or_else(|| m["text"].as_str()).unwrap_or(""));
        let at = DateTime::<Utc>::from(request.at);
        println!(
            "   {:<8}  {campaign:<22} {endpoint:<9} {to}: 「{}」",
            tour.hms(at),
            clip(&body.replace('\n', " "), 56)
        );
        sends += 1;
        messages += request.messages.len() * request.recipients.len().max(1);
        recipients.extend(request.recipients.iter().cloned());
    }
    println!("   {sends} LINE requests, {messages} messages to {} users", recipients.len());

    let menus = sim.user_rich_menus();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for menu in menus.values() {
        *counts.entry(menu.clone()).or_default() += 1;
    }
    let link_calls = sim
        .requests()
        .iter()
        .filter(|r| {
            use renkei_line_sim::Endpoint;
            matches!(r.endpoint, Endpoint::RichMenuLink | Endpoint::RichMenuBulkLink)
        })
        .count();
    println!("\nrich menus linked ({link_calls} link / bulk-link requests):");
    for (menu, n) in &counts {
        println!("   {menu} ({}): {n} users", menu_names.get(menu).map_or("?", String::as_str));
    }

    println!("\ncampaigns (GET /v1/campaigns, GET /v1/campaigns/{{id}}/stats):");
    println!("   {:<22} {:<7} {:>4} {:>7} {:>6}  skipped by reason", "campaign", "state", "sent", "pending", "failed");
    let list = tour.get("/v1/campaigns").await?;
    let (mut sent, mut skipped) = (0, 0);
    for campaign in list["campaigns"].as_array().into_iter().flatten() {
        let id = text(&campaign["id"]);
        let stats = tour.get(&format!("/v1/campaigns/{id}/stats")).await?;
        sent += stats["sent"].as_u64().unwrap_or(0);
        skipped += stats["skipped"].as_u64().unwrap_or(0);
        let reasons = stats["skipped_by_reason"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        println!(
            "   {id:<22} {:<7} {:>4} {:>7} {:>6}  {}",
            text(&stats["state"]),
            stats["sent"].as_u64().unwrap_or(0),
            stats["pending"].as_u64().unwrap_or(0),
            stats["failed"].as_u64().unwrap_or(0),
            if reasons.is_empty() { "-".to_string() } else { reasons }
        );
    }
    println!(
        "   total: {sent} sent, {skipped} skipped (a blocked user is never messaged: the skip is recorded with its reason)"
    );
    Ok(())
}

/// Copies the campaigns into `dir` for the tour: schedules whose audience is
/// `birthday_today` fire at `birthday_at`, and quiet hours that contain `now`
/// are left out (returned, to be explained).
fn write_tour_campaigns(
    campaigns: &CampaignSet,
    dir: &Path,
    birthday_at: DateTime<Utc>,
    now: DateTime<Utc>,
    tz: Tz,
) -> anyhow::Result<Vec<(String, String)>> {
    std::fs::create_dir_all(dir)?;
    let fire = birthday_at.with_timezone(&tz);
    let cron = format!("\"{} {} {} * * *\"", fire.second(), fire.minute(), fire.hour());
    let mut lifted = Vec::new();
    for campaign in campaigns.iter() {
        let source =
            std::fs::read_to_string(&campaign.file).with_context(|| format!("reading {}", campaign.file.display()))?;
        let birthday = matches!(&campaign.trigger, Trigger::Schedule { audience, .. } if audience == "birthday_today");
        let sequence = !campaign.steps.is_empty();
        let quiet = campaign.quiet_hours.filter(|q| q.contains(now, tz));
        if let Some(q) = &quiet {
            lifted.push((campaign.id.clone(), format!("{}–{}", q.from.format("%H:%M"), q.to.format("%H:%M"))));
        }
        let mut out = String::new();
        let mut skip_indent: Option<usize> = None;
        for line in source.lines() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            if let Some(level) = skip_indent {
                if !trimmed.is_empty() && indent > level {
                    continue; // the rest of a block-style quiet_hours
                }
                skip_indent = None;
            }
            if quiet.is_some() && trimmed.starts_with("quiet_hours:") {
                skip_indent = Some(indent);
                out.push_str(&format!("{}# quiet_hours lifted for the tour\n", &line[..indent]));
                continue;
            }
            if let Some(quick) = quicken_step(sequence, line) {
                out.push_str(&quick);
                out.push('\n');
                continue;
            }
            if birthday && trimmed.starts_with("schedule:") {
                out.push_str(&format!(
                    "{}schedule: {cron}   # the tour: today {} ({tz})\n",
                    &line[..indent],
                    fire.format("%H:%M:%S")
                ));
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        let name =
            campaign.file.file_name().map(PathBuf::from).unwrap_or_else(|| format!("{}.yaml", campaign.id).into());
        std::fs::write(dir.join(name), out)?;
    }
    Ok(lifted)
}

/// The bundled members, with the birthdays of the tour's birthday members set to today.
fn sample_members(today: NaiveDate) -> anyhow::Result<String> {
    let mut lines = SAMPLE_MEMBERS.lines();
    let header = lines.next().context("members.csv is empty")?;
    let column = header
        .split(',')
        .position(|c| c.split(':').next() == Some("birthday"))
        .context("members.csv has no birthday column")?;
    let mut out = format!("{header}\n");
    for line in lines {
        let mut cells: Vec<String> = line.split(',').map(str::to_string).collect();
        if matches!(cells.first().map(String::as_str), Some(BIRTHDAY | BIRTHDAY_BLOCKED))
            && let Some(cell) = cells.get_mut(column)
        {
            let year = cell.get(..4).and_then(|y| y.parse().ok()).unwrap_or(1990);
            // 29 Feb needs a leap year.
            let date = NaiveDate::from_ymd_opt(year, today.month(), today.day())
                .or_else(|| NaiveDate::from_ymd_opt(1992, today.month(), today.day()))
                .context("today's month-day")?;
            *cell = date.format("%Y-%m-%d").to_string();
        }
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// Polls `probe` every 50 ms until it yields a value or `limit` passes; then
/// says what did not happen.
async fn wait_until<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<Option<T>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await? {
            return Ok(Some(value));
        }
        if Instant::now() >= deadline {
            println!("   (!) {what} did not happen within {:.0} s", limit.as_secs_f64());
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn until(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (at - now).to_std().unwrap_or_default()
}

async fn member_user(store: &Arc<dyn Store>, member: &str) -> anyhow::Result<Option<LineUserId>> {
    let member = renkei_core::MemberId::parse(member).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(store.member_line_user(&member).await?)
}

/// `M00001 渡辺 美咲` for a linked user, else the LINE user ID.
async fn who(store: &Arc<dyn Store>, user: &str) -> anyhow::Result<String> {
    let Ok(id) = LineUserId::parse(user) else { return Ok(user.to_string()) };
    let record = store.load_users(std::slice::from_ref(&id), Some(&[])).await?.into_iter().next();
    Ok(match record.and_then(|r| r.member_id.map(|m| (m, r.attributes))) {
        Some((member, attributes)) => {
            let name = attributes.as_ref().and_then(|a| a.get("name")).and_then(Value::as_str).unwrap_or("");
            format!("{} {name}", member.as_str())
        }
        None => format!("{}…", &user[..12.min(user.len())]),
    })
}

async fn segment_size(tour: &Tour, id: &str) -> anyhow::Result<u64> {
    let segments = tour.get("/v1/segments").await?;
    Ok(segments["segments"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == id)
        .and_then(|s| s["size"].as_u64())
        .unwrap_or(0))
}

fn trigger_text(trigger: &Value) -> String {
    if let Some(segment) = trigger["segment_entered"].as_str() {
        format!("on entering {segment}")
    } else if let Some(schedule) = trigger["schedule"].as_str() {
        format!("cron {schedule} → {}", text(&trigger["audience"]))
    } else if let Some(event) = trigger["event"].as_str() {
        format!("on event {event}")
    } else {
        trigger.to_string()
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("")
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        text.chars().take(max - 1).chain(std::iter::once('…')).collect()
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn local(at: DateTime<Utc>, tz: Tz, format: &str) -> String {
    at.with_timezone(&tz).format(format).to_string()
}

/// The tour's HTTP calls to renkei, as a company's systems would make them.
struct Tour {
    http: reqwest::Client,
    base: String,
    key: String,
    tz: Tz,
}

/// A sequence's `wait`/`at` line, shortened for the tour.
fn quicken_step(sequence: bool, line: &str) -> Option<String> {
    if sequence { crate::demo_sequence::quicken(line) } else { None }
}

impl crate::demo_sequence::Api for Tour {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        Tour::post(self, path, body).await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Tour::get(self, path).await
    }
}

impl Tour {
    fn hms(&self, at: DateTime<Utc>) -> String {
        local(at, self.tz, "%H:%M:%S")
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.get_status(path).await?.1)
    }

    async fn get_status(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let response = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.key).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let response = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.key).json(&body).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }
}
