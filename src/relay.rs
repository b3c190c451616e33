//! `[webhook]` resolved: the relay's targets and retries, and who answers
//! reply tokens, validated (`renkei serve` and `renkei check`).

use crate::config::Config;
use renkei_core::RetrySchedule;
use renkei_webhook::RelaySettings;
use renkei_webhook::relay::TargetSpec;
use std::time::Duration;

/// The relay's settings, or every problem of `[webhook]`, one per line
/// (never a secret's value).
pub fn relay_settings(config: &Config) -> anyhow::Result<RelaySettings> {
    let webhook = &config.webhook;
    let specs: Vec<TargetSpec<'_>> = webhook
        .relay
        .iter()
        .map(|t| TargetSpec {
            name: &t.name,
            url: &t.url,
            secret: t.secret.expose(),
            timeout: Duration::from_secs(u64::try_from(t.timeout.seconds()).unwrap_or(0)),
        })
        .collect();
    let settings = RelaySettings::new(&specs, &webhook.reply_owner).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("invalid [webhook] settings:\n{}", lines.join("\n"))
    })?;
    let seconds = |s: renkei_core::SpanDuration| Duration::from_secs(s.seconds().max(1) as u64);
    Ok(RelaySettings {
        retry: RetrySchedule {
            base: Duration::from_millis(webhook.relay_retry_base_ms.max(1)),
            max_delay: seconds(webhook.relay_retry_max),
            max_attempts: webhook.relay_max_attempts.max(1),
        },
        max_age: webhook.relay_max_age.to_chrono().max(chrono::Duration::seconds(1)),
        ..settings
    })
}
