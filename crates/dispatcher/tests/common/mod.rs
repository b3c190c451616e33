//! A campaign harness: a real store (SQLite or PostgreSQL), the real segment
//! engine, campaigns from YAML, and the LINE simulator over HTTP. Time is a
//! ManualClock the tests move.
#![allow(dead_code, clippy::unwrap_used)]

use chrono::{DateTime, TimeZone, Utc};
use renkei_campaigns::{CampaignSet, RichMenuRules};
use renkei_core::{Clock, LineUserId, ManualClock, MemberId, MemberPatch};
use renkei_dispatcher::{DispatchMetrics, DispatchSettings, Dispatcher, DispatcherStore, QuotaGuard, RichMenuLinker};
use renkei_evaluator::{Cause, EngineStore, MembershipEngine};
use renkei_line::LineClient;
use renkei_line_sim::{LineSim, SimConfig, SimHandle};
use renkei_scheduler::{CampaignRunner, RunnerSettings, RunnerStore};
use renkei_segments::SegmentSet;
use renkei_test_support::{self as test_support, TestStore};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Notify;

pub const TEMPLATE_PERSONAL: &str = r#"{"type":"bubble","body":{"type":"box","layout":"vertical","contents":[{"type":"text","text":"{{member.name}}さん、こんにちは"}]}}"#;
pub const TEMPLATE_SAME: &str =
    r#"{"type":"bubble","body":{"type":"box","layout":"vertical","contents":[{"type":"text","text":"セール開催中"}]}}"#;

pub const GOLD: &str = "id: gold\nname: Gold\nrule:\n  attribute: rank\n  eq: gold\n";
pub const LINKED: &str = "id: linked\nname: Linked\nrule:\n  linked: true\n";

pub fn t0() -> DateTime<Utc> {
    // Tuesday 2026-11-24 12:00 in Tokyo.
    Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 0).single().unwrap()
}

pub fn user(n: u32) -> LineUserId {
    LineUserId::parse(&format!("U{n:032x}")).unwrap()
}

pub fn member(n: u32) -> MemberId {
    MemberId::parse(&format!("m{n}")).unwrap()
}

pub use renkei_test_support::Backend;

pub struct Harness {
    pub test: TestStore,
    pub sim: SimHandle,
    pub clock: ManualClock,
    pub engine: Arc<MembershipEngine>,
    pub campaigns: Arc<CampaignSet>,
    pub runner: Arc<CampaignRunner>,
    pub dispatcher: Arc<Dispatcher>,
    pub linker: Arc<RichMenuLinker>,
    pub metrics: Arc<DispatchMetrics>,
    pub quota: Arc<QuotaGuard>,
    pub line: LineClient,
}

pub struct Spec<'a> {
    pub segments: &'a [&'a str],
    pub campaigns: &'a [&'a str],
    pub templates: &'a [(&'a str, &'a str)],
    pub rich_menus: Option<&'a str>,
    pub sim: SimConfig,
    pub settings: DispatchSettings,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Self {
            segments: &[],
            campaigns: &[],
            templates: &[("personal", TEMPLATE_PERSONAL), ("same", TEMPLATE_SAME)],
            rich_menus: None,
            sim: SimConfig::default(),
            settings: DispatchSettings {
                poll: std::time::Duration::from_millis(20),
                lease: std::time::Duration::from_secs(30),
                ..DispatchSettings::default()
            },
        }
    }
}

/// `None` when PostgreSQL is not configured (never in CI).
pub async fn harness(backend: Backend, spec: Spec<'_>) -> Option<Harness> {
    let test = match backend {
        Backend::Sqlite => test_support::sqlite().await.unwrap(),
        Backend::Postgres => test_support::postgres().await.unwrap()?,
    };
    let store = test.store.clone();
    let clock = ManualClock::new(t0());
    let clock_dyn: Arc<dyn Clock> = Arc::new(clock.clone());
    let tz = chrono_tz::Asia::Tokyo;
    let segment_sources: Vec<(PathBuf, String)> =
        spec.segments.iter().enumerate().map(|(i, s)| (PathBuf::from(format!("s{i}.yaml")), s.to_string())).collect();
    let segments = Arc::new(SegmentSet::from_sources(segment_sources).unwrap());
    let campaign_sources: Vec<(PathBuf, String)> =
        spec.campaigns.iter().enumerate().map(|(i, s)| (PathBuf::from(format!("c{i}.yaml")), s.to_string())).collect();
    let templates: Vec<(String, PathBuf, String)> = spec
        .templates
        .iter()
        .map(|(name, text)| (name.to_string(), PathBuf::from(format!("{name}.json.hbs")), text.to_string()))
        .collect();
    let campaigns = Arc::new(CampaignSet::from_sources(campaign_sources, templates, &segments).unwrap());
    let rich_menus = Arc::new(match spec.rich_menus {
        Some(text) => RichMenuRules::from_source(PathBuf::from("rich_menus.yaml"), text, &segments).unwrap(),
        None => RichMenuRules::from_source(PathBuf::from("rich_menus.yaml"), "rules: []\n", &segments).unwrap(),
    });
    let channel_default = rich_menus.default.clone();
    let engine = Arc::new(MembershipEngine::new(EngineStore::of(&store), segments, clock_dyn.clone(), tz));
    let sim = LineSim::spawn(spec.sim).await.unwrap();
    let line = LineClient::new(&sim.base_url(), sim.access_token()).unwrap();
    let metrics = Arc::new(DispatchMetrics::default());
    let quota = Arc::new(QuotaGuard::new(true, metrics.clone()));
    let settings = DispatchSettings { timezone: tz, ..spec.settings };
    let dispatcher = Arc::new(Dispatcher::new(
        DispatcherStore::of(&store),
        line.clone(),
        campaigns.clone(),
        clock_dyn.clone(),
        settings.clone(),
        metrics.clone(),
        quota.clone(),
    ));
    let wake: Arc<Notify> = dispatcher.waker();
    let runner = Arc::new(
        CampaignRunner::new(
            RunnerStore::of(&store),
            campaigns.clone(),
            rich_menus,
            clock_dyn.clone(),
            RunnerSettings { timezone: tz, ..RunnerSettings::default() },
            metrics.clone(),
            wake,
        )
        .await
        .unwrap(),
    );
    let linker = Arc::new(
        RichMenuLinker::new(
            store.clone(),
            line.clone(),
            clock_dyn,
            dispatcher.limiters(),
            metrics.clone(),
            std::time::Duration::from_secs(30),
            std::time::Duration::from_millis(20),
        )
        .with_channel_default(channel_default),
    );
    Some(Harness { test, sim, clock, engine, campaigns, runner, dispatcher, linker, metrics, quota, line })
}

impl Harness {
    /// Members m{n} linked to U{n}, with attributes, following.
    pub async fn add_members(&self, members: &[(u32, Value)]) {
        let patches: Vec<MemberPatch> = members
            .iter()
            .map(|(n, attributes)| MemberPatch {
                member_id: member(*n),
                attributes: attributes.as_object().cloned().unwrap_or_default(),
                line_user_id: Some(user(*n)),
            })
            .collect();
        self.test.store.upsert_members(&patches, self.clock.now()).await.unwrap();
        for (n, _) in members {
            self.test.store.set_following(&user(*n), true, self.clock.now()).await.unwrap();
        }
        let users: Vec<LineUserId> = members.iter().map(|(n, _)| user(*n)).collect();
        self.engine.evaluate_users(&users, Cause::Member).await.unwrap();
    }

    /// Plans and sends until nothing is due at the current (manual) time.
    pub async fn drain(&self) {
        for _ in 0..200 {
            let planned = self.dispatcher.plan_once().await.unwrap();
            let sent = self.dispatcher.send_once().await.unwrap();
            if planned == 0 && sent == 0 {
                return;
            }
        }
        panic!("dispatch did not settle");
    }

    /// Drains, moving time a minute at a time, until the campaign has nothing pending.
    pub async fn drain_until_done(&self, campaign: &str) {
        for _ in 0..600 {
            self.drain().await;
            let counts = self.test.store.campaign_counts(campaign).await.unwrap();
            // The counts kept by triggers (migration 0025) are the rows' counts at every step.
            assert_eq!(counts, self.test.store.counted_campaign_counts(campaign).await.unwrap(), "{campaign}");
            if counts.pending == 0 && counts.requested == 0 {
                return;
            }
            self.clock.advance(chrono::Duration::minutes(1));
        }
        let counts = self.test.store.campaign_counts(campaign).await.unwrap();
        panic!("campaign {campaign} still has work: {counts:?}");
    }

    /// Accepted requests per recipient (a 409 is not a new acceptance).
    pub fn accepted_per_user(&self) -> std::collections::HashMap<String, usize> {
        let mut out = std::collections::HashMap::new();
        for request in self.sim.requests() {
            if matches!(request.endpoint, renkei_line_sim::Endpoint::Push | renkei_line_sim::Endpoint::Multicast) {
                for to in request.recipients {
                    *out.entry(to).or_default() += 1;
                }
            }
        }
        out
    }
}

pub fn personal_attrs(n: u32, rank: &str) -> Value {
    json!({"name": format!("会員{n}"), "rank": rank})
}
