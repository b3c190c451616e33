//! The one policy layer every send goes through (pure: facts in, decision out).
//!
//! Hard rules come first (never a blocked or unlinked user, never outside the
//! audience, never after an `unless`), then quiet hours (which defer, so the
//! caps are judged at the moment the message really goes out), then caps.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use renkei_campaigns::{FrequencyCap, QuietHours};

/// Policies from the configuration that apply across campaigns.
#[derive(Debug, Clone, Default)]
pub struct GlobalPolicy {
    /// At most this many messages per user across all campaigns.
    pub per_user_cap: Option<FrequencyCap>,
    /// No campaign sends inside these hours (in the configured timezone).
    pub quiet_hours: Option<QuietHours>,
}

pub use renkei_core::SkipReason;

/// What is known about one delivery at send time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendFacts {
    /// The trigger failed to produce a message.
    pub invalid: bool,
    /// The send time passed long before the trigger arrived.
    pub expired: bool,
    /// A LINE user is known for the delivery.
    pub has_line_user: bool,
    /// The user follows the account (a linked user counts as following until an unfollow).
    pub following: bool,
    /// The delivery was made for a member whose link is gone or now points elsewhere.
    pub link_lost: bool,
    /// In the campaign's audience segment (true when it has none).
    pub in_audience: bool,
    /// The `unless` event happened.
    pub cancelled: bool,
    /// A step of a sequence: why it must not go (removed, exited, its `if`).
    pub step: Option<SkipReason>,
    /// Messages this campaign sent the user within its cap window.
    pub sent_by_campaign: u64,
    /// Messages all campaigns sent the user within the global cap window.
    pub sent_overall: u64,
}

/// What to do with a delivery now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Send,
    Skip(SkipReason),
    /// Quiet hours: try again at this instant.
    Defer(DateTime<Utc>),
}

/// The campaign's own rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct CampaignRules<'a> {
    pub frequency_cap: Option<&'a FrequencyCap>,
    pub quiet_hours: Option<&'a QuietHours>,
}

pub fn decide(
    facts: &SendFacts,
    campaign: CampaignRules<'_>,
    global: &GlobalPolicy,
    now: DateTime<Utc>,
    tz: Tz,
) -> Decision {
    if facts.invalid {
        return Decision::Skip(SkipReason::InvalidTrigger);
    }
    if facts.expired {
        return Decision::Skip(SkipReason::Expired);
    }
    if !facts.has_line_user || facts.link_lost {
        return Decision::Skip(SkipReason::Unlinked);
    }
    if !facts.following {
        return Decision::Skip(SkipReason::Unfollowed);
    }
    if !facts.in_audience {
        return Decision::Skip(SkipReason::NotInAudience);
    }
    if facts.cancelled {
        return Decision::Skip(SkipReason::Cancelled);
    }
    if let Some(reason) = facts.step {
        return Decision::Skip(reason);
    }
    let release = [campaign.quiet_hours, global.quiet_hours.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|quiet| quiet.release_at(now, tz))
        .max();
    if let Some(release) = release {
        return Decision::Defer(release);
    }
    if let Some(cap) = campaign.frequency_cap
        && facts.sent_by_campaign >= u64::from(cap.max)
    {
        return Decision::Skip(SkipReason::FrequencyCap);
    }
    if let Some(cap) = &global.per_user_cap
        && facts.sent_overall >= u64::from(cap.max)
    {
        return Decision::Skip(SkipReason::GlobalCap);
    }
    Decision::Send
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveTime, TimeZone};

    fn ok_facts() -> SendFacts {
        SendFacts { has_line_user: true, following: true, in_audience: true, ..SendFacts::default() }
    }

    fn noon_tokyo() -> DateTime<Utc> {
        // 12:00 JST
        Utc.with_ymd_and_hms(2026, 11, 24, 3, 0, 0).single().expect("valid time")
    }

    fn quiet(from: u32, to: u32) -> QuietHours {
        QuietHours {
            from: NaiveTime::from_hms_opt(from, 0, 0).expect("valid"),
            to: NaiveTime::from_hms_opt(to, 0, 0).expect("valid"),
        }
    }

    #[test]
    fn plain_delivery_is_sent() {
        let d = decide(
            &ok_facts(),
            CampaignRules::default(),
            &GlobalPolicy::default(),
            noon_tokyo(),
            chrono_tz::Asia::Tokyo,
        );
        assert_eq!(d, Decision::Send);
    }

    #[test]
    fn hard_rules_skip_in_order() {
        let tz = chrono_tz::Asia::Tokyo;
        let g = GlobalPolicy::default();
        let r = CampaignRules::default();
        let cases = [
            (SendFacts { invalid: true, ..ok_facts() }, SkipReason::InvalidTrigger),
            (SendFacts { expired: true, ..ok_facts() }, SkipReason::Expired),
            (SendFacts { has_line_user: false, ..ok_facts() }, SkipReason::Unlinked),
            (SendFacts { link_lost: true, ..ok_facts() }, SkipReason::Unlinked),
            (SendFacts { following: false, ..ok_facts() }, SkipReason::Unfollowed),
            (SendFacts { in_audience: false, ..ok_facts() }, SkipReason::NotInAudience),
            (SendFacts { cancelled: true, ..ok_facts() }, SkipReason::Cancelled),
            (SendFacts { following: false, cancelled: true, ..ok_facts() }, SkipReason::Unfollowed),
        ];
        for (facts, reason) in cases {
            assert_eq!(decide(&facts, r, &g, noon_tokyo(), tz), Decision::Skip(reason), "{facts:?}");
        }
    }

    #[test]
    fn quiet_hours_defer_to_their_end_and_blocked_users_are_still_skipped() {
        let tz = chrono_tz::Asia::Tokyo;
        let lunch = quiet(11, 13);
        let rules = CampaignRules { quiet_hours: Some(&lunch), ..CampaignRules::default() };
        let d = decide(&ok_facts(), rules, &GlobalPolicy::default(), noon_tokyo(), tz);
        let end = Utc.with_ymd_and_hms(2026, 11, 24, 4, 0, 0).single().expect("valid");
        assert_eq!(d, Decision::Defer(end));
        let blocked = SendFacts { following: false, ..ok_facts() };
        assert_eq!(
            decide(&blocked, rules, &GlobalPolicy::default(), noon_tokyo(), tz),
            Decision::Skip(SkipReason::Unfollowed)
        );
    }

    #[test]
    fn the_later_of_campaign_and_global_quiet_hours_wins() {
        let tz = chrono_tz::Asia::Tokyo;
        let campaign = quiet(11, 13);
        let global = GlobalPolicy { quiet_hours: Some(quiet(12, 15)), ..GlobalPolicy::default() };
        let rules = CampaignRules { quiet_hours: Some(&campaign), ..CampaignRules::default() };
        let end = Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).single().expect("valid");
        assert_eq!(decide(&ok_facts(), rules, &global, noon_tokyo(), tz), Decision::Defer(end));
    }

    #[test]
    fn caps_count_what_was_sent_in_the_window() {
        let tz = chrono_tz::Asia::Tokyo;
        let cap = FrequencyCap { max: 2, per: chrono::Duration::days(7) };
        let rules = CampaignRules { frequency_cap: Some(&cap), ..CampaignRules::default() };
        let g = GlobalPolicy::default();
        let under = SendFacts { sent_by_campaign: 1, ..ok_facts() };
        let at = SendFacts { sent_by_campaign: 2, ..ok_facts() };
        assert_eq!(decide(&under, rules, &g, noon_tokyo(), tz), Decision::Send);
        assert_eq!(decide(&at, rules, &g, noon_tokyo(), tz), Decision::Skip(SkipReason::FrequencyCap));
        let global = GlobalPolicy { per_user_cap: Some(FrequencyCap { max: 3, per: chrono::Duration::days(1) }), ..g };
        let busy = SendFacts { sent_overall: 3, ..ok_facts() };
        assert_eq!(
            decide(&busy, CampaignRules::default(), &global, noon_tokyo(), tz),
            Decision::Skip(SkipReason::GlobalCap)
        );
    }
}
