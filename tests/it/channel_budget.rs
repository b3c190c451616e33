//! One channel, one budget (issue 13, item 1), as operators run it: three
//! `renkei serve` processes with the default roles on one PostgreSQL, every
//! one with the same `[dispatch]` rates (LINE's limits scaled to a tenth, as
//! in the simulator), a personalised campaign to 3,000 members, and one
//! instance SIGKILLed a third of the way through. LINE answers no 429, each
//! recipient gets exactly one message, and the instances together use nearly
//! the whole push limit, before the kill and after it.

use crate::crash::{
    SERIAL, Server, distinct_recipients, free_port, get_json, import_members, post_promo_events, wait_for, write_config,
};
use renkei_line_sim::{Endpoint, LineSim, RateLimits, SimConfig};
use renkei_test_support as test_support;
use serde_json::json;
use std::time::{Duration, SystemTime};

const RECIPIENTS: usize = 3_000;
/// Push requests per second: LINE's 2,000 scaled to a tenth, in the simulator and in each instance.
const PUSH_RATE: u32 = 200;

fn seconds_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).unwrap_or_default().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_channels_limits_and_a_killed_ones_part() {
    let Some(server) = test_support::postgres_server_url() else { return };
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db_url = test_support::create_database(&server).await.expect("create a PostgreSQL database");
    let limits = RateLimits { push: Some(PUSH_RATE), multicast: Some(PUSH_RATE / 10), ..RateLimits::default() };
    let sim = LineSim::spawn(SimConfig { rate_limits: limits, ..SimConfig::default() }).await.expect("simulator");
    let binds: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let config = write_config(dir.path(), &db_url, &binds[0], &sim);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");

    import_members(&config, dir.path(), RECIPIENTS);

    // The same rates in every instance: the channel's.
    let (push, multicast) = (PUSH_RATE.to_string(), (PUSH_RATE / 10).to_string());
    let mut servers: Vec<Server> = binds
        .iter()
        .enumerate()
        .map(|(i, bind)| {
            let env = [
                ("RENKEI_SERVER__BIND", bind.as_str()),
                // A killed instance's requests come back after this (60 s by default).
                ("RENKEI_DISPATCH__LEASE", "8s"),
                ("RENKEI_DISPATCH__PUSH_PER_SECOND", push.as_str()),
                ("RENKEI_DISPATCH__MULTICAST_PER_SECOND", multicast.as_str()),
            ];
            Server::start_with(&config, dir.path().join(format!("serve-{i}.log")), &env)
        })
        .collect();
    for (server, bind) in servers.iter_mut().zip(&binds) {
        wait_for("an instance to be healthy", Duration::from_secs(60), server, async || {
            let (status, _) = get_json(&http, &format!("http://{bind}/healthz")).await?;
            (status == 200).then_some(())
        })
        .await;
    }
    let store = renkei_store::connect(&db_url).await.expect("open the instances' database");
    wait_for("the event trigger to start", Duration::from_secs(30), &mut servers[1], async || {
        store.get_cursor("campaigns.events").await.ok().flatten().map(|_| ())
    })
    .await;

    // One `promo_requested` event per member, each batch to another instance.
    let bases: Vec<String> = binds.iter().map(|bind| format!("http://{bind}")).collect();
    post_promo_events(&http, &bases, RECIPIENTS).await;

    let pushes = || sim.requests_for(Endpoint::Push);
    wait_for("a third of the pushes", Duration::from_secs(60), &mut servers[1], async || {
        (pushes().len() >= RECIPIENTS / 3).then_some(())
    })
    .await;
    let killed_at = SystemTime::now();
    servers[0].kill();

    wait_for("every recipient", Duration::from_secs(120), &mut servers[1], async || {
        (distinct_recipients(&sim).len() >= RECIPIENTS).then_some(())
    })
    .await;
    let stats_url = format!("http://{}/v1/campaigns/promo/stats", binds[1]);
    let stats = wait_for("stats to show every send", Duration::from_secs(60), &mut servers[1], async || {
        let (status, body) = get_json(&http, &stats_url).await?;
        (status == 200 && body["pending"] == 0 && body["sent"] == RECIPIENTS).then_some(body)
    })
    .await;

    let counters = sim.counters();
    assert_eq!(counters.rate_limited, 0, "LINE never answered 429");
    let per_user = distinct_recipients(&sim);
    assert_eq!(per_user.len(), RECIPIENTS, "every recipient");
    assert!(per_user.values().all(|n| *n == 1), "each exactly once");
    assert_eq!((stats["failed"].clone(), stats["skipped"].clone()), (json!(0), json!(0)), "{stats}");

    // The combined rate, from LINE's side: over the run, and over the three
    // seconds after the kill (the others take the killed one's part at once).
    let times: Vec<SystemTime> = pushes().iter().map(|r| r.at).collect();
    let (first, last) = (*times.iter().min().expect("pushes"), *times.iter().max().expect("pushes"));
    let overall = (times.len() - 1) as f64 / seconds_between(first, last) / f64::from(PUSH_RATE);
    let in_window = |t: &&SystemTime| (0.0..=3.0).contains(&seconds_between(killed_at, **t)) && **t > killed_at;
    let after_kill = times.iter().filter(in_window).count() as f64 / 3.0 / f64::from(PUSH_RATE);
    println!(
        "three instances, one SIGKILLed: {} pushes, {:.1} % of the limit over the run, {:.1} % in the 3 s after the kill, {} 409s, 0 × 429",
        times.len(),
        overall * 100.0,
        after_kill * 100.0,
        counters.conflicts
    );
    assert!(overall >= 0.85, "together ≥ 85 % of the push limit over the run: {:.1} %", overall * 100.0);
    assert!(after_kill >= 0.85, "the others took the killed one's part: {:.1} %", after_kill * 100.0);
    for server in &mut servers {
        server.kill();
    }
    test_support::drop_database(&server, &db_url).await.expect("drop the test's database");
}
