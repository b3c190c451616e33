//! The tour's step sequence (`config/campaigns/trial_followup.yaml`, with its
//! waits shortened to seconds): trial buyers get the steps, some buy the full
//! size and leave the sequence, a tenth are held out; then the funnel and
//! the lift, from `GET /v1/campaigns/trial_followup/stats`.

use anyhow::Context;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The campaign played.
pub const CAMPAIGN: &str = "trial_followup";
/// Trial buyers added for it (the bundled members are too few for a holdout).
const BUYERS: usize = 60;

/// A line of the tour's campaign copy, with a step's wait in days shortened
/// to as many seconds and its `at` left out (so it plays in seconds).
pub fn quicken(line: &str) -> Option<String> {
    let trimmed = line.trim_start();
    let indent = &line[..line.len() - trimmed.len()];
    if let Some(days) = trimmed.strip_prefix("wait: ").and_then(|w| w.strip_suffix('d')) {
        return Some(format!("{indent}wait: {days}s   # the tour: {days}d as seconds"));
    }
    trimmed.starts_with("at: \"").then(|| format!("{indent}# at: left out for the tour"))
}

/// A request to the tour's server: (status, body).
pub(crate) trait Api {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)>;
    async fn get(&self, path: &str) -> anyhow::Result<Value>;
}

/// Plays the sequence and prints its funnel; `false` when it did not finish in time.
pub(crate) async fn play(api: &impl Api, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<bool> {
    println!(
        "\n8. ステップ配信 `{CAMPAIGN}` (waits of 3 d and 4 d played as 3 s and 4 s): {BUYERS} members buy the trial set"
    );
    let member = |i: usize| format!("T{i:04}");
    let user = |i: usize| format!("U{:032x}", 0x7e1a_0000_u64 + i as u64);
    let members: Vec<Value> =
        (0..BUYERS).map(|i| json!({"member_id": member(i), "attributes": {"name": format!("お試し{i}")}})).collect();
    api.post("/v1/members", json!({"members": members})).await?;
    for i in 0..BUYERS {
        api.post("/v1/links", json!({"member_id": member(i), "line_user_id": user(i)})).await?;
    }
    let at = |seconds: i64| (now + chrono::Duration::seconds(seconds)).to_rfc3339();
    let trials: Vec<Value> = (0..BUYERS)
        .map(|i| {
            json!({"event_id": format!("trial-{i}"), "type": "purchase", "member_id": member(i),
                        "occurred_at": at(0), "properties": {"product": "trial_set", "amount": 1980}})
        })
        .collect();
    let (status, _) = api.post("/v1/events", json!({"events": trials})).await?;
    anyhow::ensure!(status == 200, "posting the trial purchases: {status}");
    // A third buy the full size after the first message: their sequence ends there.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = chrono::Utc::now();
    let full: Vec<Value> = (0..BUYERS)
        .filter(|i| i % 3 == 0)
        .map(|i| {
            json!({"event_id": format!("full-{i}"), "type": "purchase", "member_id": member(i),
                        "occurred_at": later.to_rfc3339(), "properties": {"product": "full_size", "amount": 6600}})
        })
        .collect();
    let bought = full.len();
    api.post("/v1/events", json!({"events": full})).await?;
    println!("   a second later {bought} of them buy the full size (the goal: a purchase other than the trial set)");
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats = api.get(&format!("/v1/campaigns/{CAMPAIGN}/stats")).await?;
        let pending: u64 =
            ["thanks", "day3", "day7"].iter().map(|s| stats["steps"][s]["pending"].as_u64().unwrap_or(1)).sum();
        let decided = ["thanks", "day3", "day7"].iter().all(|s| !stats["steps"][s].is_null());
        if decided && pending == 0 && stats["exposed"].as_u64().unwrap_or(0) > 0 {
            break stats;
        }
        if Instant::now() >= deadline {
            println!("   (!) the sequence did not finish within 30 s");
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    print_funnel(&stats).context("printing the funnel")?;
    Ok(true)
}

fn print_funnel(stats: &Value) -> anyhow::Result<()> {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    for step in ["thanks", "day3", "day7"] {
        let s = &stats["steps"][step];
        println!(
            "   step {step:<6} sent {:>2}, ended before it (exit) {:>2}, skipped {:>2}",
            n(&s["sent"]),
            n(&s["exited"]),
            n(&s["skipped"])
        );
    }
    let holdout = &stats["holdout"];
    println!(
        "   exposed {} (held out as the control group: {}); converted {} (value ¥{:.0}), control {} of {}",
        n(&stats["exposed"]),
        n(&holdout["users"]),
        n(&stats["converted"]),
        stats["conversion_value"].as_f64().unwrap_or(0.0),
        n(&holdout["converted"]),
        n(&holdout["users"])
    );
    for (arm, s) in stats["variants"].as_object().into_iter().flatten() {
        println!("   variant {arm}: {} users, {} converted", n(&s["users"]), n(&s["converted"]));
    }
    match stats["lift"].as_object() {
        Some(lift) => println!(
            "   lift {:+.1} points (95 % CI {:+.1} to {:+.1}, Newcombe)",
            lift["absolute"].as_f64().unwrap_or(0.0) * 100.0,
            lift["ci95"][0].as_f64().unwrap_or(0.0) * 100.0,
            lift["ci95"][1].as_f64().unwrap_or(0.0) * 100.0
        ),
        None => println!("   lift: none yet (the control group is empty)"),
    }
    println!(
        "   (in this tour buying does not depend on the messages, so the lift is near zero and its interval wide)"
    );
    println!("   (the same in the terminal: renkei campaigns report {CAMPAIGN})");
    Ok(())
}
