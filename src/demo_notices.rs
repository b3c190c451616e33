//! The tour's product notices: a restock fan-out (`restock_notice`: every
//! member who favourited the SKU within 90 days, once per SKU and window, by
//! multicast) and a shipping notice (`order_shipped`: the buyer).

use crate::demo_sequence::Api;
use renkei_line_sim::{Endpoint, SimHandle};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SKU: &str = "TEA-0420";
/// Bundled members (linked to LINE users) who favourite the SKU.
const FANS: std::ops::RangeInclusive<u32> = 30..=41;

/// Plays the notices and prints what LINE was asked to send.
pub(crate) async fn play(api: &impl Api, sim: &SimHandle, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<()> {
    println!("\n10. 再入荷・発送のお知らせ: a restock fans out to the SKU's fans; a shipment notifies its buyer");
    let at = |days: i64| (now - chrono::Duration::days(days)).to_rfc3339();
    let mut events: Vec<Value> = FANS
        .map(|n| {
            let days = i64::from(n % 60);
            json!({"event_id": format!("fav-{n}"), "type": "favorite", "member_id": format!("M{n:05}"),
                   "occurred_at": at(days), "properties": {"sku": SKU}})
        })
        .collect();
    // A fan of another product, and one whose favourite is older than 90 days: not reached.
    events.push(json!({"event_id": "fav-other", "type": "favorite", "member_id": "M00042", "occurred_at": at(3), "properties": {"sku": "TEA-9999"}}));
    events.push(json!({"event_id": "fav-old", "type": "favorite", "member_id": "M00043", "occurred_at": at(120), "properties": {"sku": SKU}}));
    let (status, body) = api.post("/v1/events", json!({"events": events})).await?;
    anyhow::ensure!(status == 200, "POST /v1/events (favourites): {status} {body}");
    println!("   {} members favourited {SKU} within 90 days (plus one of another SKU, one 120 days ago)", FANS.count());
    let before = sim.requests_for(Endpoint::Multicast).len();
    let restock = json!({"event_id": "restock-1", "type": "restock", "member_id": "inventory", "occurred_at": now.to_rfc3339(),
                         "properties": {"sku": SKU, "product_name": "有機ほうじ茶 100g", "stock": 40}});
    let (status, body) = api.post("/v1/events", json!({"events": [restock]})).await?;
    anyhow::ensure!(status == 200, "POST /v1/events (restock): {status} {body}");
    let multicasts = wait_for(|| {
        let sent = sim.requests_for(Endpoint::Multicast);
        (sent.len() > before).then(|| sent[before..].to_vec())
    })
    .await;
    match multicasts {
        Some(sent) => {
            let users: usize = sent.iter().map(|r| r.recipients.len()).sum();
            let alt = sent[0].messages.first().map(|m| m["altText"].clone()).unwrap_or_default();
            println!(
                "   restock ({SKU}, stock 40) → {} multicast request(s) to {users} users: 「{}」",
                sent.len(),
                alt.as_str().unwrap_or("")
            );
        }
        None => println!("   (!) no restock multicast within 10 s"),
    }
    let again = json!({"event_id": "restock-2", "type": "restock", "member_id": "inventory", "occurred_at": now.to_rfc3339(),
                       "properties": {"sku": SKU, "product_name": "有機ほうじ茶 100g", "stock": 12}});
    api.post("/v1/events", json!({"events": [again]})).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let total = sim.requests_for(Endpoint::Multicast).len() - before;
    println!("   a second restock within the window reaches nobody new: still {total} multicast request(s)");

    let pushes_before = sim.requests_for(Endpoint::Push).len();
    let shipped = json!({"event_id": "ship-A1001", "type": "order_shipped", "member_id": "M00031", "occurred_at": now.to_rfc3339(),
                         "properties": {"order_id": "A1001", "carrier": "ヤマト運輸", "tracking_number": "1234-5678-9012"}});
    api.post("/v1/events", json!({"events": [shipped]})).await?;
    let push = wait_for(|| sim.requests_for(Endpoint::Push).get(pushes_before).cloned()).await;
    if let Some(push) = push {
        let alt = push.messages.first().map(|m| m["altText"].clone()).unwrap_or_default();
        println!("   order_shipped (M00031, A1001) → push: 「{}」", alt.as_str().unwrap_or(""));
    }
    Ok(())
}

async fn wait_for<T>(mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(value) = check() {
            return Some(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}
