//! Campaigns in the binary: loading them with their templates and rich-menu
//! rules, the reply rules and `[replies]`, and turning `[dispatch]` /
//! `[policy]` into the dispatcher's settings.

use crate::config::Config;
use anyhow::anyhow;
use chrono::NaiveTime;
use renkei_campaigns::link::MIN_KEY_LEN;
use renkei_campaigns::replies::LinkPrompt;
use renkei_campaigns::{CampaignSet, FrequencyCap, LinkKeys, QuietHours, ReplySet, RichMenuRules};
use renkei_dispatcher::{DispatchSettings, GlobalPolicy, Rates, RetrySchedule};
use renkei_scheduler::RunnerSettings;
use renkei_segments::{Diagnostic, SegmentSet};
use renkei_webhook::{Replies, ReplyMetrics};
use std::fmt::Write as _;
use std::sync::Arc;
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

/// As [`load`], as one error listing every `file:line:col: message`, with
/// `track` sealing links with `server.link_keys` (see [`link_keys`]).
pub fn load_or_explain(config: &Config, segments: &SegmentSet) -> anyhow::Result<(CampaignSet, RichMenuRules)> {
    let (campaigns, rich_menus) = load_explained(config, segments)?;
    let campaigns = match link_keys(config, &campaigns)? {
        Some(keys) => campaigns.with_link_keys(keys),
        None => campaigns,
    };
    Ok((campaigns, rich_menus))
}

/// The tracked-link keys of `server.link_keys`; none configured is an error
/// when a campaign uses `track` (its links could be neither sealed nor
/// opened), and `None` otherwise.
pub fn link_keys(config: &Config, campaigns: &CampaignSet) -> anyhow::Result<Option<Arc<LinkKeys>>> {
    let secrets: Vec<&[u8]> = config.server.link_keys.iter().map(|k| k.expose().as_bytes()).collect();
    if secrets.is_empty() {
        let tracking: Vec<&str> = campaigns.tracking_campaigns().collect();
        if tracking.is_empty() {
            return Ok(None);
        }
        return Err(anyhow!(
            "config key server.link_keys is empty, but campaigns {} use `track`: set it (or RENKEI_SERVER__LINK_KEYS) \
             to a list of secrets of at least {MIN_KEY_LEN} bytes, e.g. from `openssl rand -hex 32`",
            tracking.join(", ")
        ));
    }
    LinkKeys::new(&secrets).map(|keys| Some(Arc::new(keys))).map_err(|e| anyhow!("config key server.link_keys: {e}"))
}

fn load_explained(config: &Config, segments: &SegmentSet) -> anyhow::Result<(CampaignSet, RichMenuRules)> {
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

/// The reply rules (validated against the segments and templates), with
/// the configured link prompt.
pub fn load_replies(config: &Config, segments: &SegmentSet) -> Result<ReplySet, Vec<Diagnostic>> {
    let prompt =
        LinkPrompt { text: config.replies.link_prompt.clone(), button: config.replies.link_prompt_button.clone() };
    ReplySet::load(&config.paths.replies, &config.paths.templates, segments).map(|set| set.with_link_prompt(prompt))
}

/// As [`load_replies`], as one error listing every `file:line:col: message`.
pub fn load_replies_or_explain(config: &Config, segments: &SegmentSet) -> anyhow::Result<ReplySet> {
    load_replies(config, segments).map_err(|diagnostics| {
        let mut message =
            format!("invalid reply rules or their templates ({}); nothing loaded:", config.paths.replies.display());
        for diagnostic in &diagnostics {
            let _ = write!(message, "\n{diagnostic}");
        }
        anyhow!(message)
    })
}

/// LINE's longest quick-reply button label.
const MAX_BUTTON_CHARS: usize = 20;

/// What the webhook worker needs to reply: the rules, the keys that sign
/// member-code URLs (required when a reply shows `member_code_url`), and
/// `[replies]`.
pub fn replies(config: &Config, rules: ReplySet, link_keys: Option<Arc<LinkKeys>>) -> anyhow::Result<Replies> {
    let r = &config.replies;
    if r.link_prompt.trim().is_empty() || r.link_prompt.chars().count() > 5_000 {
        return Err(anyhow!("config key replies.link_prompt: must have 1 to 5,000 characters (a LINE text message)"));
    }
    let button = r.link_prompt_button.chars().count();
    if button == 0 || button > MAX_BUTTON_CHARS {
        return Err(anyhow!(
            "config key replies.link_prompt_button: must have 1 to {MAX_BUTTON_CHARS} characters (LINE's quick-reply label)"
        ));
    }
    if rules.uses_member_code() && link_keys.is_none() {
        return Err(anyhow!(
            "config key server.link_keys is empty, but reply templates in {} show `member_code_url`: set it (or \
             RENKEI_SERVER__LINK_KEYS) to a list of secrets of at least {MIN_KEY_LEN} bytes; they sign the code's URL",
            config.paths.templates.display()
        ));
    }
    if r.member_code_ttl.seconds() < 60 {
        return Err(anyhow!(
            "config key replies.member_code_ttl: at least 1m (LINE fetches the image when it shows it)"
        ));
    }
    Ok(Replies {
        rules: Arc::new(rules),
        link_keys,
        public_base_url: config.server.public_base_url.clone(),
        timezone: config.timezone.0,
        member_code_ttl: r.member_code_ttl.to_chrono(),
        loading_after: Duration::from_secs(r.loading_after.seconds().max(0) as u64),
        token_life: r.token_life.to_chrono(),
        metrics: ReplyMetrics::default(),
    })
}
