//! One channel, one budget (issue 13, item 1): three dispatcher instances on
//! one PostgreSQL, each in a runtime of its own, all configured with the
//! channel's limits, send a personalised campaign; one is killed a third of
//! the way through (its runtime dropped: no graceful stop, its connections
//! cut, its claims and leases left behind). The simulator enforces LINE's
//! limits scaled to a tenth: not one 429, each recipient exactly once, and
//! together the instances use nearly the whole push limit, the killed
//! one's share taken over by the other two at once.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Backend, GOLD, Spec, harness, personal_attrs};
use renkei_campaigns::CampaignSet;
use renkei_core::{Clock, SystemClock};
use renkei_dispatcher::{DispatchMetrics, DispatchSettings, Dispatcher, DispatcherStore, QuotaGuard, Rates};
use renkei_line::LineClient;
use renkei_line_sim::{Endpoint, RateLimits, SimConfig};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Push requests per second: LINE's 2,000 scaled to a tenth, in the simulator and in every instance.
const PUSH_RATE: u32 = 200;
const USERS: u32 = 3_000;
const CAMPAIGN: &str = "id: gold_hello\nname: Gold hello\ntrigger:\n  schedule: \"0 0 9 * * *\"\n  audience: gold\nmessages:\n  - template: personal\n    alt_text: \"{{member.name}}さんへ\"\n";

/// A dispatcher instance with a runtime of its own, so that killing it
/// stops every task it has, as SIGKILL would.
struct Instance {
    runtime: tokio::runtime::Runtime,
    limiters: Arc<renkei_dispatcher::limits::Limiters>,
    token: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Instance {
    async fn start(url: &str, sim_url: &str, sim_token: &str, campaigns: Arc<CampaignSet>) -> Instance {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let url = url.to_string();
        // Its own pool, opened on its own runtime: killed with it.
        let store = runtime.spawn(async move { renkei_store::connect(&url).await }).await.unwrap().unwrap();
        let line = LineClient::new(sim_url, sim_token).unwrap();
        let metrics = Arc::new(DispatchMetrics::default());
        let settings = DispatchSettings {
            rates: Rates { push: PUSH_RATE, multicast: 20, rich_menu_link: PUSH_RATE, rich_menu_bulk: PUSH_RATE },
            // Small batches and a short lease: a killed instance's requests come back within seconds.
            batch: 50,
            lease: Duration::from_secs(5),
            poll: Duration::from_millis(50),
            ..DispatchSettings::default()
        };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let dispatcher = Arc::new(Dispatcher::new(
            DispatcherStore::of(&store),
            line,
            campaigns,
            clock,
            settings,
            metrics.clone(),
            Arc::new(QuotaGuard::new(false, metrics)),
        ));
        assert!(dispatcher.limiters().push.shared(), "on PostgreSQL the budget is the channel's");
        let token = CancellationToken::new();
        let tasks = {
            let _entered = runtime.enter();
            dispatcher.clone().spawn(token.clone())
        };
        Instance { runtime, limiters: dispatcher.limiters(), token, tasks }
    }

    /// Gone at once: every task dropped at its next await, connections cut.
    fn kill(self) {
        self.runtime.shutdown_background();
    }

    async fn stop(self) {
        self.token.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.runtime.shutdown_background();
    }
}

fn seconds_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).unwrap_or_default().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_channel_budget_and_survive_a_kill() {
    let limits = RateLimits { push: Some(PUSH_RATE), multicast: Some(20), ..RateLimits::default() };
    let spec = Spec {
        segments: &[GOLD],
        campaigns: &[CAMPAIGN],
        sim: SimConfig { rate_limits: limits, ..SimConfig::default() },
        ..Spec::default()
    };
    let Some(h) = harness(Backend::Postgres, spec).await else { return };
    let members: Vec<(u32, serde_json::Value)> = (1..=USERS).map(|n| (n, personal_attrs(n, "gold"))).collect();
    h.add_members(&members).await;
    let campaign = h.campaigns.get("gold_hello").unwrap();
    let now = chrono::Utc::now();
    assert!(h.test.store.record_fire(&campaign.id, now, renkei_store::FireState::Started).await.unwrap());
    assert_eq!(h.runner.fire(campaign, now).await.unwrap(), u64::from(USERS));

    let (sim_url, sim_token) = (h.sim.base_url(), h.sim.access_token().to_string());
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Instance::start(&h.test.url, &sim_url, &sim_token, h.campaigns.clone()).await);
    }
    let pushes = || h.sim.requests_for(Endpoint::Push);
    let started = Instant::now();
    while pushes().len() < (USERS / 3) as usize {
        assert!(started.elapsed() < Duration::from_secs(60), "a third sent within a minute");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = SystemTime::now();
    let limiters: Vec<_> = instances.iter().map(|i| i.limiters.clone()).collect();
    instances.remove(0).kill();

    loop {
        let counts = h.test.store.campaign_counts("gold_hello").await.unwrap();
        if counts.pending == 0 && counts.requested == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the survivors finished the campaign: {counts:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for instance in instances {
        instance.stop().await;
    }

    assert_eq!(h.sim.counters().rate_limited, 0, "LINE never answered 429");
    let accepted = h.accepted_per_user();
    assert_eq!(accepted.len(), USERS as usize, "every recipient");
    assert!(accepted.values().all(|n| *n == 1), "each exactly once");

    // The combined rate, from LINE's side: the accepted pushes over the run,
    // and over the three seconds after the kill (the survivors take its share at once).
    let times: Vec<SystemTime> = pushes().iter().map(|r| r.at).collect();
    let (first, last) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    let overall = (times.len() - 1) as f64 / seconds_between(first, last) / f64::from(PUSH_RATE);
    let after_kill = times
        .iter()
        .filter(|t| seconds_between(killed_at, **t) > 0.0 && seconds_between(killed_at, **t) <= 3.0)
        .count() as f64
        / 3.0
        / f64::from(PUSH_RATE);
    println!(
        "combined push rate: {:.1} % over the run, {:.1} % in the 3 s after the kill",
        overall * 100.0,
        after_kill * 100.0
    );
    assert!(overall >= 0.85, "together ≥ 85 % of the limit over the run: {:.1} %", overall * 100.0);
    assert!(after_kill >= 0.85, "the survivors took the killed one's share: {:.1} %", after_kill * 100.0);
    // A round trip to the budget per grant of 10 pushes, not one per push.
    let takes: u64 = limiters.iter().map(|l| l.push.takes()).sum();
    assert!(takes > 0 && takes <= times.len() as u64 / 5, "{takes} budget takes for {} pushes", times.len());
}
