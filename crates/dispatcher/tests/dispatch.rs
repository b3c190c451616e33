//! Campaigns end to end against the LINE simulator over HTTP, on SQLite and
//! PostgreSQL: exactly once under faults, blocked users never, the send-time
//! audience and lost links skip, quiet hours defer, caps hold, `unless`
//! cancels, the quota guard pauses, rich menus
//! follow segments, and two dispatchers share one outbox without doubles.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, GOLD, Harness, LINKED, Spec, harness, member, personal_attrs, t0, user};
use renkei_core::{Clock, NewEvent, SkipReason};
use renkei_dispatcher::{DispatchSettings, Dispatcher, DispatcherStore, GlobalPolicy};
use renkei_line_sim::{Faults, SimConfig};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

const GOLD_PERSONAL_9AM: &str = "id: gold_hello\nname: Gold hello\ntrigger:\n  schedule: \"0 0 9 * * *\"\n  audience: gold\nmessages:\n  - template: personal\n    alt_text: \"{{member.name}}さんへ\"\n";
const GOLD_SAME_9AM: &str = "id: gold_sale\nname: Gold sale\ntrigger:\n  schedule: \"0 0 9 * * *\"\n  audience: gold\nmessages:\n  - template: same\n    alt_text: セールのお知らせ\n";

fn faulty() -> SimConfig {
    SimConfig {
        faults: Faults { error_rate: 0.2, latency: Duration::from_millis(2), drop_rate: 0.2 },
        ..SimConfig::default()
    }
}

async fn fire(h: &Harness, campaign: &str, at: chrono::DateTime<chrono::Utc>) -> u64 {
    let campaign = h.campaigns.get(campaign).unwrap();
    assert!(h.test.store.record_fire(&campaign.id, at, renkei_store::FireState::Started).await.unwrap());
    h.runner.fire(campaign, at).await.unwrap()
}

async fn personalised_pushes_reach_each_member_once_under_faults_and_never_blocked_users(backend: Backend) {
    let spec = Spec { segments: &[GOLD], campaigns: &[GOLD_PERSONAL_9AM], sim: faulty(), ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    let mut members: Vec<(u32, serde_json::Value)> = (1..=40).map(|n| (n, personal_attrs(n, "gold"))).collect();
    members.extend((41..=45).map(|n| (n, personal_attrs(n, "silver"))));
    h.add_members(&members).await;
    for n in 1..=3 {
        h.test.store.set_following(&user(n), false, t0()).await.unwrap();
    }
    assert_eq!(fire(&h, "gold_hello", t0()).await, 40);
    h.drain_until_done("gold_hello").await;

    let accepted = h.accepted_per_user();
    for n in 4..=40 {
        assert_eq!(accepted.get(user(n).as_str()), Some(&1), "member {n} gets exactly one message");
    }
    for n in (1..=3).chain(41..=45) {
        assert_eq!(accepted.get(user(n).as_str()), None, "user {n} gets nothing");
    }
    let counts = h.test.store.campaign_counts("gold_hello").await.unwrap();
    assert_eq!(counts.sent, 37);
    assert_eq!(counts.skipped.get(&SkipReason::Unfollowed), Some(&3));
    // Personalised: each went by push with the member's own name.
    let first = h.sim.messages_to(user(4).as_str());
    assert_eq!(first[0]["altText"], "会員4さんへ");
    assert!(first[0]["contents"].to_string().contains("会員4さん、こんにちは"));
    let faults = h.sim.counters();
    assert!(faults.injected_errors + faults.dropped > 0, "faults were injected: {faults:?}");
}

async fn identical_messages_go_by_multicast_once_per_member_under_faults(backend: Backend) {
    let spec = Spec { segments: &[GOLD], campaigns: &[GOLD_SAME_9AM], sim: faulty(), ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    let members: Vec<(u32, serde_json::Value)> = (1..=1_100).map(|n| (n, personal_attrs(n, "gold"))).collect();
    h.add_members(&members).await;
    assert_eq!(fire(&h, "gold_sale", t0()).await, 1_100);
    // Its messages read nothing of the recipient, so the fire rendered once
    // a page and its audience (two ranges) stayed in the store: each
    // delivery still names its user's member, and is queued once.
    let campaign = h.campaigns.get("gold_sale").unwrap();
    assert_eq!(h.runner.fire(campaign, t0()).await.unwrap(), 0, "a fire again adds nothing");
    assert_eq!(h.test.store.overview_counts().await.unwrap().deliveries_pending, 1_100);
    let deliveries = h.test.store.campaign_deliveries("gold_sale", 0, 2_000).await.unwrap();
    assert_eq!(deliveries.len(), 1_100);
    let number_of: std::collections::HashMap<_, _> = (1..=1_100).map(|n| (user(n), n)).collect();
    for d in &deliveries {
        let n = d.line_user_id.as_ref().and_then(|u| number_of.get(u)).copied();
        assert_eq!(d.member_id, n.map(member), "delivery {}", d.id);
    }
    h.drain_until_done("gold_sale").await;
    let accepted = h.accepted_per_user();
    assert_eq!(accepted.len(), 1_100);
    assert!(accepted.values().all(|n| *n == 1), "nobody twice");
    let multicasts: Vec<_> =
        h.sim.requests().into_iter().filter(|r| r.endpoint == renkei_line_sim::Endpoint::Multicast).collect();
    assert!(multicasts.iter().all(|r| r.recipients.len() <= 500));
    assert!(multicasts.len() >= 3, "1,100 recipients need at least 3 multicasts");
    assert_eq!(h.sim.requests_for(renkei_line_sim::Endpoint::Push).len(), 0);
}

async fn a_lost_response_is_retried_with_the_same_key_and_counted_once(backend: Backend) {
    let sim = SimConfig { faults: Faults { drop_rate: 1.0, ..Faults::default() }, ..SimConfig::default() };
    let spec = Spec { segments: &[GOLD], campaigns: &[GOLD_PERSONAL_9AM], sim, ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    h.add_members(&[(1, personal_attrs(1, "gold"))]).await;
    fire(&h, "gold_hello", t0()).await;
    h.drain().await;
    // LINE took it but the answer was lost: still pending here.
    assert_eq!(h.sim.requests().len(), 1);
    assert_eq!(h.test.store.campaign_counts("gold_hello").await.unwrap().requested, 1);
    h.sim.set_faults(Faults::default());
    h.drain_until_done("gold_hello").await;
    let requests = h.sim.requests();
    assert_eq!(requests.len(), 1, "the retry was answered 409, not accepted again");
    assert_eq!(h.sim.counters().conflicts, 1);
    assert_eq!(h.metrics.requests_already_accepted.load(Ordering::Relaxed), 1);
    assert_eq!(h.test.store.campaign_counts("gold_hello").await.unwrap().sent, 1);
}

async fn quiet_hours_defer_to_their_end_and_never_drop(backend: Backend) {
    let campaign = "id: welcome_gold\nname: Welcome\ntrigger:\n  segment_entered: gold\nmessages:\n  - template: personal\n    alt_text: ようこそ\nquiet_hours: { from: \"21:00\", to: \"09:00\" }\n";
    let spec = Spec { segments: &[GOLD], campaigns: &[campaign], ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    // 22:30 in Tokyo.
    h.clock.set(t0() + chrono::Duration::minutes(630));
    h.add_members(&[(1, personal_attrs(1, "gold"))]).await;
    let transitions = h.test.store.transitions_after(0, 100).await.unwrap();
    h.runner.on_transitions(&transitions).await.unwrap();
    h.drain().await;
    assert!(h.sim.requests().is_empty(), "nothing during quiet hours");
    let pending = h.test.store.campaign_deliveries("welcome_gold", 0, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    let nine_am = t0() + chrono::Duration::hours(21);
    assert_eq!(pending[0].due_at, nine_am, "deferred to 09:00 the next morning");
    let waiting = h.test.store.waiting_by_campaign().await.unwrap();
    let why: Vec<_> = waiting.iter().map(|w| (w.campaign_id.as_str(), w.waits_for, w.count)).collect();
    assert_eq!(why, [("welcome_gold", Some(renkei_core::DeferReason::QuietHours), 1)], "it waits for quiet hours");
    h.clock.set(nine_am);
    h.drain().await;
    assert_eq!(h.accepted_per_user().get(user(1).as_str()), Some(&1));
}

async fn frequency_and_global_caps_hold(backend: Backend) {
    let capped = "id: capped\nname: Capped\ntrigger:\n  schedule: \"0 0 9 * * *\"\n  audience: gold\nmessages:\n  - template: personal\n    alt_text: a\nfrequency_cap: { max: 1, per: 7d }\n";
    let other = "id: other\nname: Other\ntrigger:\n  schedule: \"0 0 10 * * *\"\n  audience: linked\nmessages:\n  - template: same\n    alt_text: b\n";
    let settings = DispatchSettings {
        global: GlobalPolicy {
            per_user_cap: Some(renkei_campaigns::FrequencyCap { max: 2, per: chrono::Duration::days(1) }),
            quiet_hours: None,
        },
        ..Spec::default().settings
    };
    let spec = Spec { segments: &[GOLD, LINKED], campaigns: &[capped, other], settings, ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    h.add_members(&[(1, personal_attrs(1, "gold")), (2, personal_attrs(2, "silver"))]).await;
    fire(&h, "capped", t0()).await;
    h.drain().await;
    h.clock.advance(chrono::Duration::hours(1));
    fire(&h, "capped", t0() + chrono::Duration::hours(1)).await;
    h.drain().await;
    let counts = h.test.store.campaign_counts("capped").await.unwrap();
    assert_eq!((counts.sent, counts.skipped.get(&SkipReason::FrequencyCap).copied()), (1, Some(1)));
    // Global cap 2/day: user 1 already had one; "other" may send one more, then no more.
    fire(&h, "other", t0() + chrono::Duration::hours(1)).await;
    h.drain().await;
    h.clock.advance(chrono::Duration::hours(1));
    fire(&h, "other", t0() + chrono::Duration::hours(2)).await;
    h.drain().await;
    let accepted = h.accepted_per_user();
    assert_eq!(accepted.get(user(1).as_str()), Some(&2), "two a day at most across campaigns");
    assert_eq!(accepted.get(user(2).as_str()), Some(&2));
    let other = h.test.store.campaign_counts("other").await.unwrap();
    assert_eq!(other.skipped.get(&SkipReason::GlobalCap), Some(&1));
}

async fn send_time_audience_and_lost_links_are_skipped_with_their_reason(backend: Backend) {
    let campaign = "id: gold_only\nname: Gold only\ntrigger:\n  schedule: \"0 0 9 * * *\"\n  audience: linked\naudience: gold\nmessages:\n  - template: same\n    alt_text: g\n";
    let spec = Spec { segments: &[GOLD, LINKED], campaigns: &[campaign], ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    let members: Vec<(u32, serde_json::Value)> =
        vec![(1, personal_attrs(1, "gold")), (2, personal_attrs(2, "gold")), (3, personal_attrs(3, "silver"))];
    h.add_members(&members).await;
    assert_eq!(fire(&h, "gold_only", t0()).await, 3);
    // Between enqueueing and sending, member 2's link goes.
    h.test.store.unlink(&common::member(2), chrono::Utc::now()).await.unwrap();
    h.drain().await;
    let counts = h.test.store.campaign_counts("gold_only").await.unwrap();
    assert_eq!(counts.sent, 1);
    assert_eq!(counts.skipped.get(&SkipReason::NotInAudience), Some(&1), "{counts:?}");
    assert_eq!(counts.skipped.get(&SkipReason::Unlinked), Some(&1), "{counts:?}");
    assert_eq!(h.accepted_per_user().keys().collect::<Vec<_>>(), vec![user(1).as_str()]);
}

async fn reminders_go_a_day_before_unless_cancelled(backend: Backend) {
    let campaign = "id: reservation_reminder\nname: 予約リマインド\ntrigger:\n  event: reservation_created\n  at: { property: reserved_at, offset: -1d }\n  unless: { event: reservation_cancelled, match: [reservation_id] }\nmessages:\n  - template: personal\n    alt_text: 明日はご予約日です\n";
    let spec = Spec { segments: &[GOLD], campaigns: &[campaign], ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    h.add_members(&[(1, personal_attrs(1, "gold")), (2, personal_attrs(2, "gold"))]).await;
    let reserved_at = (t0() + chrono::Duration::days(3)).to_rfc3339();
    let events = [
        json!({"event_id": "r1", "type": "reservation_created", "member_id": "m1", "occurred_at": t0().to_rfc3339(), "properties": {"reservation_id": "R-1", "reserved_at": reserved_at}}),
        json!({"event_id": "r2", "type": "reservation_created", "member_id": "m2", "occurred_at": t0().to_rfc3339(), "properties": {"reservation_id": "R-2", "reserved_at": reserved_at}}),
        // m1 cancels another reservation: does not cancel R-1.
        json!({"event_id": "c0", "type": "reservation_cancelled", "member_id": "m1", "occurred_at": t0().to_rfc3339(), "properties": {"reservation_id": "R-9"}}),
        json!({"event_id": "c2", "type": "reservation_cancelled", "member_id": "m2", "occurred_at": (t0() + chrono::Duration::hours(5)).to_rfc3339(), "properties": {"reservation_id": "R-2"}}),
    ];
    let events: Vec<NewEvent> = events.iter().map(|e| NewEvent::parse(e).unwrap()).collect();
    h.test.store.insert_events(&events, t0()).await.unwrap();
    let stored = h.test.store.events_after(0, &["reservation_created".to_string()], 100).await.unwrap();
    assert_eq!(stored.len(), 2);
    h.runner.on_events(&stored).await.unwrap();
    h.runner.on_events(&stored).await.unwrap(); // reprocessing makes no second delivery
    h.drain().await;
    assert!(h.sim.requests().is_empty(), "not due yet");
    h.clock.set(t0() + chrono::Duration::days(2));
    h.drain().await;
    let accepted = h.accepted_per_user();
    assert_eq!(accepted.get(user(1).as_str()), Some(&1));
    assert_eq!(accepted.get(user(2).as_str()), None);
    let counts = h.test.store.campaign_counts("reservation_reminder").await.unwrap();
    assert_eq!((counts.sent, counts.skipped.get(&SkipReason::Cancelled).copied()), (1, Some(1)));
}

async fn the_quota_guard_pauses_before_line_refuses_and_resumes_when_raised(backend: Backend) {
    let sim = SimConfig { monthly_quota: Some(5), ..SimConfig::default() };
    let spec = Spec { segments: &[GOLD], campaigns: &[GOLD_PERSONAL_9AM], sim, ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    let members: Vec<(u32, serde_json::Value)> = (1..=8).map(|n| (n, personal_attrs(n, "gold"))).collect();
    h.add_members(&members).await;
    h.quota.refresh(&h.line).await.unwrap();
    fire(&h, "gold_hello", t0()).await;
    h.drain().await;
    assert_eq!(h.accepted_per_user().len(), 5);
    assert_eq!(h.sim.counters().monthly_limited, 0, "paused before LINE refused");
    assert!(h.dispatcher.quota_paused());
    let counts = h.test.store.campaign_counts("gold_hello").await.unwrap();
    assert_eq!(counts.pending, 3, "held, not dropped");
    let waiting = h.test.store.waiting_by_campaign().await.unwrap();
    let why: Vec<_> = waiting.iter().map(|w| (w.waits_for, w.count)).collect();
    assert_eq!(why, [(Some(renkei_core::DeferReason::Quota), 3)], "they wait for the quota");
    h.sim.set_quota(Some(100));
    h.quota.refresh(&h.line).await.unwrap();
    h.drain_until_done("gold_hello").await;
    assert_eq!(h.accepted_per_user().len(), 8);
    assert!(!h.dispatcher.quota_paused());
}

/// Two instances' guards: one asks LINE (lease `line_quota`), the other
/// takes its numbers from the store; once the holder's lease has run out,
/// the other asks LINE itself.
async fn one_instance_polls_the_quota_and_the_others_share_it(backend: Backend) {
    use renkei_dispatcher::quota::QUOTA_LEASE;
    use renkei_line_sim::Endpoint;
    let sim = SimConfig { monthly_quota: Some(1_000), ..SimConfig::default() };
    let Some(h) = harness(backend, Spec { segments: &[GOLD], sim, ..Spec::default() }).await else { return };
    h.sim.set_usage(400);
    let guard = |holder: &str| {
        renkei_dispatcher::QuotaGuard::new(true, h.metrics.clone()).with_leases(h.test.store.clone(), holder.into())
    };
    let (a, b) = (guard("quota-a"), guard("quota-b"));
    let every = Duration::from_secs(60);
    a.refresh_round(&h.line, t0(), every).await;
    b.refresh_round(&h.line, t0() + chrono::Duration::seconds(1), every).await;
    assert_eq!(h.sim.requests_for(Endpoint::Quota).len(), 1, "only the lease holder asked LINE");
    assert_eq!((a.room(), b.room()), (Some(600), Some(600)), "the other took the holder's numbers");
    let leases = h.test.store.leases().await.unwrap();
    assert_eq!(leases.iter().find(|l| l.name == QUOTA_LEASE).map(|l| l.holder.as_str()), Some("quota-a"));
    // The holder is gone (its lease ran out): the other asks LINE itself.
    h.sim.set_usage(700);
    b.refresh_round(&h.line, t0() + chrono::Duration::seconds(75), every).await;
    assert_eq!(h.sim.requests_for(Endpoint::Quota).len(), 2);
    assert_eq!(b.room(), Some(300));
}

/// Rule segments get their menu per user; everyone else (never in a rule
/// segment, or out of one) has none of their own and sees the channel's
/// default, which the linker sets once.
async fn rich_menus_follow_segment_changes(backend: Backend) {
    let gold_menu = "richmenu-0123456789abcdef0123456789abcdef";
    let default_menu = "richmenu-fedcba9876543210fedcba9876543210";
    let rules = format!("rules:\n  - segment: gold\n    rich_menu: {gold_menu}\ndefault: {default_menu}\n");
    let sim = SimConfig { rich_menus: vec![gold_menu.to_string(), default_menu.to_string()], ..SimConfig::default() };
    let spec = Spec { segments: &[GOLD], rich_menus: Some(&rules), sim, ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    let mut members: Vec<(u32, serde_json::Value)> = (1..=3).map(|n| (n, personal_attrs(n, "gold"))).collect();
    members.push((4, personal_attrs(4, "silver")));
    h.add_members(&members).await;
    let transitions = h.test.store.transitions_after(0, 100).await.unwrap();
    h.runner.on_transitions(&transitions).await.unwrap();
    h.linker.ensure_channel_default().await.unwrap();
    while h.linker.link_once().await.unwrap() > 0 {}
    for n in 1..=3 {
        assert_eq!(h.sim.user_rich_menu(user(n).as_str()).as_deref(), Some(gold_menu));
    }
    assert_eq!(h.sim.default_rich_menu().as_deref(), Some(default_menu));
    assert_eq!(h.sim.user_rich_menu(user(4).as_str()), None, "no menu of their own");
    assert_eq!(
        h.sim.shown_rich_menu(user(4).as_str()).as_deref(),
        Some(default_menu),
        "a silver member sees the default"
    );
    h.linker.ensure_channel_default().await.unwrap();
    assert_eq!(
        h.sim.requests_for(renkei_line_sim::Endpoint::DefaultRichMenu).len(),
        1,
        "set once (the read found none, a 404); a second call asks LINE nothing"
    );
    assert_eq!(
        h.sim.requests_for(renkei_line_sim::Endpoint::RichMenuBulkLink).len(),
        1,
        "one bulk link for three users"
    );
    // Member 2 drops to silver: back to the default menu.
    let patch = renkei_core::MemberPatch {
        member_id: common::member(2),
        attributes: json!({"rank": "silver"}).as_object().cloned().unwrap(),
        line_user_id: None,
    };
    h.test.store.upsert_members(&[patch], h.clock.now()).await.unwrap();
    h.engine.evaluate_users(&[user(2)], renkei_evaluator::Cause::Member).await.unwrap();
    let last = transitions.last().map(|t| t.id).unwrap_or(0);
    let more = h.test.store.transitions_after(last, 100).await.unwrap();
    assert_eq!(more.len(), 1);
    h.runner.on_transitions(&more).await.unwrap();
    while h.linker.link_once().await.unwrap() > 0 {}
    assert_eq!(h.sim.user_rich_menu(user(2).as_str()), None, "unlinked from the gold menu");
    assert_eq!(h.sim.shown_rich_menu(user(2).as_str()).as_deref(), Some(default_menu));
    assert_eq!(h.sim.user_rich_menu(user(1).as_str()).as_deref(), Some(gold_menu));
}

/// The start-up sync of desired rich menus runs on one instance at a time:
/// while another holds its lease, it is skipped; once free, it runs; an
/// instance that died holding it is taken over when its lease expires.
async fn rich_menu_sync_runs_on_one_instance_at_a_time(backend: Backend) {
    let gold_menu = "richmenu-0123456789abcdef0123456789abcdef";
    let rules = format!("rules:\n  - segment: gold\n    rich_menu: {gold_menu}\n");
    let sim = SimConfig { rich_menus: vec![gold_menu.to_string()], ..SimConfig::default() };
    let spec = Spec { segments: &[GOLD], rich_menus: Some(&rules), sim, ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    h.add_members(&[(1, personal_attrs(1, "gold")), (2, personal_attrs(2, "gold"))]).await;
    h.engine.evaluate_users(&[user(1), user(2)], renkei_evaluator::Cause::Member).await.unwrap();
    let now = h.clock.now();
    let lease = renkei_scheduler::RICH_MENU_SYNC_LEASE;
    let store = &h.test.store;
    assert!(store.acquire_lease(lease, "another-instance", now, now + chrono::Duration::seconds(30)).await.unwrap());
    assert_eq!(h.runner.sync_rich_menus().await.unwrap(), None, "the other instance is syncing");
    while h.linker.link_once().await.unwrap() > 0 {}
    assert_eq!(h.sim.user_rich_menus().len(), 0, "nothing synced here");
    store.release_lease(lease, "another-instance").await.unwrap();
    assert_eq!(h.runner.sync_rich_menus().await.unwrap(), Some(2));
    while h.linker.link_once().await.unwrap() > 0 {}
    assert_eq!(h.sim.user_rich_menu(user(2).as_str()).as_deref(), Some(gold_menu));
    assert!(store.leases().await.unwrap().is_empty(), "released when done");

    // Another instance starts a sync and dies: this start waits, then takes over.
    let now = h.clock.now();
    assert!(store.acquire_lease(lease, "dead-instance", now, now + chrono::Duration::seconds(30)).await.unwrap());
    let runner = h.runner.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let waiting = tokio::spawn(async move { runner.sync_rich_menus_at_start(&stop).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "waits while the lease runs");
    h.clock.advance(chrono::Duration::seconds(31));
    let synced = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(synced, Some(2), "taken over after the lease expired");

    // A sync completed by another instance after this start is not repeated.
    let now = h.clock.now();
    assert!(store.acquire_lease(lease, "live-instance", now, now + chrono::Duration::seconds(30)).await.unwrap());
    let runner = h.runner.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let waiting = tokio::spawn(async move { runner.sync_rich_menus_at_start(&stop).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    h.clock.advance(chrono::Duration::seconds(1));
    store.set_cursor("rich_menu_sync_done", h.clock.now().timestamp_micros()).await.unwrap();
    store.release_lease(lease, "live-instance").await.unwrap();
    let synced = tokio::time::timeout(std::time::Duration::from_secs(10), waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(synced, None, "synced by the other instance");
}

async fn two_dispatchers_share_one_outbox_without_doubles(backend: Backend) {
    let spec = Spec { segments: &[GOLD], campaigns: &[GOLD_PERSONAL_9AM], ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    let members: Vec<(u32, serde_json::Value)> = (1..=300).map(|n| (n, personal_attrs(n, "gold"))).collect();
    h.add_members(&members).await;
    fire(&h, "gold_hello", t0()).await;
    let settings = DispatchSettings { batch: 50, ..Spec::default().settings };
    let clock: Arc<dyn Clock> = Arc::new(h.clock.clone());
    let second = Arc::new(Dispatcher::new(
        DispatcherStore::of(&h.test.store),
        h.line.clone(),
        h.campaigns.clone(),
        clock,
        settings,
        h.metrics.clone(),
        h.quota.clone(),
    ));
    let work = |d: Arc<Dispatcher>| async move {
        for _ in 0..100 {
            let planned = d.plan_once().await.unwrap();
            let sent = d.send_once().await.unwrap();
            if planned == 0 && sent == 0 {
                break;
            }
        }
    };
    tokio::join!(work(h.dispatcher.clone()), work(second.clone()));
    h.drain_until_done("gold_hello").await;
    let accepted = h.accepted_per_user();
    assert_eq!(accepted.len(), 300);
    assert!(accepted.values().all(|n| *n == 1));
    assert_eq!(h.sim.counters().conflicts, 0, "no request was even attempted twice");
}

async fn entries_found_by_a_full_recompute_do_not_trigger_and_late_reminders_expire(backend: Backend) {
    let welcome = "id: welcome_gold\nname: Welcome\ntrigger:\n  segment_entered: gold\nmessages:\n  - template: personal\n    alt_text: ようこそ\n";
    let reminder = "id: reminder\nname: Reminder\ntrigger:\n  event: reservation_created\n  at: { property: reserved_at, offset: -1d }\nmessages:\n  - template: personal\n    alt_text: 明日\n";
    let spec = Spec { segments: &[GOLD], campaigns: &[welcome, reminder], ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    // Members loaded before a recompute (e.g. a new segment): their entries establish membership.
    let patches = vec![renkei_core::MemberPatch {
        member_id: common::member(1),
        attributes: personal_attrs(1, "gold").as_object().cloned().unwrap(),
        line_user_id: Some(user(1)),
    }];
    h.test.store.upsert_members(&patches, t0()).await.unwrap();
    h.engine.evaluate_users(&[user(1)], renkei_evaluator::Cause::Recompute).await.unwrap();
    // A member who becomes gold through data: that entry triggers.
    h.add_members(&[(2, personal_attrs(2, "gold"))]).await;
    let transitions = h.test.store.transitions_after(0, 100).await.unwrap();
    assert_eq!(transitions.len(), 2);
    h.runner.on_transitions(&transitions).await.unwrap();
    // A reservation posted after its reminder time had long passed.
    let late = json!({"event_id": "r-late", "type": "reservation_created", "member_id": "m2", "occurred_at": t0().to_rfc3339(),
        "properties": {"reserved_at": (t0() - chrono::Duration::days(3)).to_rfc3339()}});
    h.test.store.insert_events(&[NewEvent::parse(&late).unwrap()], t0()).await.unwrap();
    let stored = h.test.store.events_after(0, &["reservation_created".to_string()], 10).await.unwrap();
    h.runner.on_events(&stored).await.unwrap();
    h.drain().await;
    let accepted = h.accepted_per_user();
    assert_eq!(accepted.get(user(1).as_str()), None, "found by a recompute: no welcome");
    assert_eq!(accepted.get(user(2).as_str()), Some(&1), "entered through data: welcomed once");
    let counts = h.test.store.campaign_counts("reminder").await.unwrap();
    assert_eq!((counts.sent, counts.skipped.get(&SkipReason::Expired).copied()), (0, Some(1)));
}

/// A fire of several pages (written by two writers on PostgreSQL) enqueues
/// every member once, again after a re-run, and each gets one message.
async fn a_fire_of_several_pages_enqueues_each_member_once(backend: Backend) {
    let spec = Spec { segments: &[GOLD], campaigns: &[GOLD_PERSONAL_9AM], ..Spec::default() };
    let Some(h) = harness(backend, spec).await else { return };
    let members: Vec<(u32, serde_json::Value)> = (1..=2_345).map(|n| (n, personal_attrs(n, "gold"))).collect();
    h.add_members(&members).await;
    assert_eq!(fire(&h, "gold_hello", t0()).await, 2_345);
    // A fire taken over after a crash writes nothing twice.
    let campaign = h.campaigns.get("gold_hello").unwrap();
    assert_eq!(h.runner.fire(campaign, t0()).await.unwrap(), 0, "no delivery is new");
    let counts = h.test.store.campaign_counts("gold_hello").await.unwrap();
    assert_eq!((counts.pending, counts.sent), (2_345, 0));
    assert_eq!(counts, h.test.store.counted_campaign_counts("gold_hello").await.unwrap());
    h.drain_until_done("gold_hello").await;
    let accepted = h.accepted_per_user();
    assert_eq!(accepted.len(), 2_345);
    assert!(accepted.values().all(|n| *n == 1), "one message each");
}

renkei_test_support::on_both_backends!(
    multi_thread, renkei_test_support::available =>
    a_fire_of_several_pages_enqueues_each_member_once,
    personalised_pushes_reach_each_member_once_under_faults_and_never_blocked_users,
    identical_messages_go_by_multicast_once_per_member_under_faults,
    a_lost_response_is_retried_with_the_same_key_and_counted_once,
    quiet_hours_defer_to_their_end_and_never_drop,
    frequency_and_global_caps_hold,
    send_time_audience_and_lost_links_are_skipped_with_their_reason,
    reminders_go_a_day_before_unless_cancelled,
    the_quota_guard_pauses_before_line_refuses_and_resumes_when_raised,
    rich_menus_follow_segment_changes,
    rich_menu_sync_runs_on_one_instance_at_a_time,
    two_dispatchers_share_one_outbox_without_doubles,
    entries_found_by_a_full_recompute_do_not_trigger_and_late_reminders_expire,
    one_instance_polls_the_quota_and_the_others_share_it,
);
