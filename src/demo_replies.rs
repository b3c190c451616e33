//! The tour's conversations (`config/replies/`): the member linked earlier
//! asks for their points and member card in LINE, and a friend who never
//! linked asks for a card; renkei answers each through the reply API.

use anyhow::Context;
use renkei_core::LineUserId;
use renkei_line_sim::{Endpoint, SimHandle};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A friend who follows but never links.
const STRANGER: &str = "U0000000000000000000000000000f012";

/// Plays the conversations; `linked` is a LINE user linked to a member,
/// `base` the server's address (the member code's URL names
/// `server.public_base_url`, which the tour's random port is not).
pub(crate) async fn play(sim: &SimHandle, http: &reqwest::Client, base: &str, linked: &str) -> anyhow::Result<()> {
    println!("\n9. 会話: reply rules (config/replies/) answer users who write to the account");
    let linked = LineUserId::parse(linked).context("demo user id")?;
    let reply = ask(sim, &linked, "ﾎﾟｲﾝﾄ").await?;
    println!("   {linked} writes 「ﾎﾟｲﾝﾄ」 (half-width): renkei replies 「{}」", summary(&reply));
    let card = ask(sim, &linked, "会員証").await?;
    println!("   they write 「会員証」: the Flex member card 「{}」", summary(&card));
    if let Some(url) = card.first().and_then(|m| m["contents"]["hero"]["url"].as_str()) {
        let token = url.rsplit('/').next().unwrap_or_default();
        let response = http.get(format!("{base}/member-code/{token}")).send().await?;
        let status = response.status();
        let png = response.bytes().await?;
        println!(
            "   its image, GET /member-code/<signed token> → {status}: a {} byte PNG QR code of the member id, valid 24 h",
            png.len()
        );
    }
    let stranger = LineUserId::parse(STRANGER).context("demo user id")?;
    sim.send_follow(&stranger).await?;
    let prompt = ask(sim, &stranger, "会員証を見せて").await?;
    let button = prompt.first().map(|m| m["quickReply"]["items"][0]["action"]["label"].clone()).unwrap_or_default();
    println!(
        "   a friend who never linked asks the same: 「{}」 [{}]",
        summary(&prompt),
        button.as_str().unwrap_or("")
    );
    Ok(())
}

/// Sends `text` from `user`; the messages of the reply it got.
async fn ask(sim: &SimHandle, user: &LineUserId, text: &str) -> anyhow::Result<Vec<Value>> {
    let before = sim.requests_for(Endpoint::Reply).len();
    sim.send_message(user, text).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(reply) = sim.requests_for(Endpoint::Reply).get(before) {
            return Ok(reply.messages.clone());
        }
        if Instant::now() > deadline {
            anyhow::bail!("no reply to 「{text}」 within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A reply's first message as a line: its text or its alt text.
fn summary(messages: &[Value]) -> String {
    let first = messages.first().cloned().unwrap_or_default();
    let text = first["text"].as_str().or(first["altText"].as_str()).unwrap_or_default();
    text.replace('\n', " ")
}
