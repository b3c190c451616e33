//! Campaigns in the binary: loading them with their templates and rich-menu
//! rules, and turning `[dispatch]` / `[policy]` into the dispatcher's settings.

use crate::config::Config;
use anyhow::anyhow;
use chrono::NaiveTime;
use renkei_campaigns::{CampaignSet, FrequencyCap, QuietHours, RichMenuRules};
use renkei_dispatcher::{DispatchSettings, GlobalPolicy, Rates, RetrySchedule};
use renkei_scheduler::RunnerSettings;
use renkei_segments::{Diagnostic, SegmentSet};
use std::fmt::Write as _;
use std::time::Duration;

/// Campaigns (validated against the segments and templates) and rich-menu rules.
pub fn load(config: &Config, segments: &SegmentSet) -> Result<(CampaignSet, RichMenuRules), Vec<Diagnostic>> {
    let campaigns = CampaignSet::load(&config.paths.campaigns, &config.paths.templates, segments);
    let rich_menus = RichMenuRules::load(&config.paths.rich_menus, segments);
    match (campaigns, rich_menus) {
        (Ok(c), Ok(r)) => Ok((c, r)),
        (c, r) => {
            let mut all = c.err().unwrap_or_default();
            all.extend(r.err().unwrap_or_default());
            Err(all)
        }
    }
}

/// As [`load`], as one error listing every `file:line:col: message`.
pub fn load_or_explain(config: &Config, segments: &SegmentSet) -> anyhow::Result<(CampaignSet, RichMenuRules)> {
    load(config, segments).map_err(|diagnostics| {
        let mut message = format!(
            "invalid campaigns, templates or rich menus ({}, {}, {}); nothing loaded:",
            config.paths.campaigns.display(),
            config.paths.templates.display(),
            config.paths.rich_menus.display()
        );
        for diagnostic in &diagnostics {
            let _ = write!(message, "\n{diagnostic}");
        }
        anyhow!(message)
    })
}

fn parse_hhmm(text: &str, key: &str) -> anyhow::Result<NaiveTime> {
    NaiveTime::parse_from_str(text.trim(), "%H:%M")
        .map_err(|_| anyhow!("config key policy.{key}: {text:?} is not a time; expected \"HH:MM\" like \"21:00\""))
}

pub fn global_policy(config: &Config) -> anyhow::Result<GlobalPolicy> {
    let policy = &config.policy;
    let per_user_cap = (policy.per_user_cap_max > 0)
        .then(|| FrequencyCap { max: policy.per_user_cap_max, per: policy.per_user_cap_per.to_chrono() });
    let quiet_hours = match (policy.quiet_hours_from.trim(), policy.quiet_hours_to.trim()) {
        ("", "") => None,
        ("", _) | (_, "") => {
            return Err(anyhow!("config keys policy.quiet_hours_from and policy.quiet_hours_to: set both or neither"));
        }
        (from, to) => {
            let from = parse_hhmm(from, "quiet_hours_from")?;
            let to = parse_hhmm(to, "quiet_hours_to")?;
            if from == to {
                return Err(anyhow!("config keys policy.quiet_hours_from/to: from and to are equal ({from})"));
            }
            Some(QuietHours { from, to })
        }
    };
    Ok(GlobalPolicy { per_user_cap, quiet_hours })
}

pub fn dispatch_settings(config: &Config) -> anyhow::Result<DispatchSettings> {
    let d = &config.dispatch;
    let seconds = |s: renkei_core::SpanDuration| Duration::from_secs(s.seconds().max(1) as u64);
    Ok(DispatchSettings {
        timezone: config.timezone.0,
        rates: Rates {
            push: d.push_per_second,
            multicast: d.multicast_per_second,
            rich_menu_link: d.rich_menu_link_per_second,
            rich_menu_bulk: d.rich_menu_bulk_per_second,
        },
        lease: seconds(d.lease),
        batch: d.batch.max(1),
        max_in_flight: d.max_in_flight.max(1),
        planners: d.planners.max(1),
        retry: RetrySchedule {
            base: Duration::from_millis(d.retry_base_ms.max(1)),
            max_delay: seconds(d.retry_max),
            max_attempts: d.max_attempts.max(1),
        },
        global: global_policy(config)?,
        ..DispatchSettings::default()
    })
}

pub fn runner_settings(config: &Config) -> RunnerSettings {
    RunnerSettings {
        timezone: config.timezone.0,
        public_base_url: config.server.public_base_url.clone(),
        misfire_grace: config.dispatch.misfire_grace.to_chrono(),
        ..RunnerSettings::default()
    }
}
