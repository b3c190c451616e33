//! The facts the policies judge by, loaded a few queries per batch, and
//! the decision for each delivery of a batch.

use crate::DispatchResult;
use crate::policy::{CampaignRules, Decision, GlobalPolicy, SendFacts, SkipReason, decide};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use renkei_campaigns::{Campaign, CampaignSet, Trigger};
use renkei_core::{LineUserId, MemberId};
use renkei_store::dispatch::{PendingDelivery, UserSendFacts};
use renkei_store::membership::UserRecord;
use renkei_store::{MembershipStore, OutboxStore};
use serde_json::Value;
// foldhash: the planner hashes every user id of a batch several times; SipHash was a tenth of its CPU.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::collections::{BTreeMap, BTreeSet};

/// What the policy layer needs to look at.
pub struct PolicyContext<'a> {
    pub outbox: &'a dyn OutboxStore,
    pub memberships: &'a dyn MembershipStore,
    pub campaigns: &'a CampaignSet,
    pub timezone: Tz,
    pub global: &'a GlobalPolicy,
}

/// The policy decision for each delivery at `now`, gathering the facts in a
/// few queries per batch (never one per delivery). Deliveries made for a
/// member whose LINE user was unknown are resolved through the link (in
/// place; nothing is written). Sends decided earlier in the batch count
/// towards caps.
pub async fn decide_deliveries(
    context: &PolicyContext<'_>,
    deliveries: &mut [PendingDelivery],
    now: DateTime<Utc>,
) -> DispatchResult<Vec<Decision>> {
    let unresolved: Vec<MemberId> = deliveries
        .iter()
        .filter(|d| d.line_user_id.is_none())
        .filter_map(|d| d.member_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let linked = context.outbox.member_line_users(&unresolved).await?;
    for delivery in deliveries.iter_mut().filter(|d| d.line_user_id.is_none()) {
        if let Some(user) = delivery.member_id.as_ref().and_then(|m| linked.get(m)) {
            delivery.line_user_id = Some(user.clone());
        }
    }
    let facts = BatchFacts::load(context, deliveries, now).await?;
    // Sends decided earlier in this batch, kept only when a cap will read them.
    let mut batch_by_campaign: HashMap<(&str, &LineUserId), u64> = HashMap::new();
    let mut batch_overall: HashMap<&LineUserId, u64> = HashMap::new();
    let mut decisions = Vec::with_capacity(deliveries.len());
    for delivery in deliveries.iter() {
        let Some(campaign) = context.campaigns.get(&delivery.campaign_id) else {
            decisions.push(Decision::Skip(SkipReason::CampaignRemoved));
            continue;
        };
        let mut send = SendFacts {
            invalid: delivery.context.get("error").is_some()
                || delivery.messages.as_array().is_none_or(|m| m.is_empty()),
            expired: delivery.context.get("expired").is_some(),
            has_line_user: delivery.line_user_id.is_some(),
            in_audience: true,
            ..SendFacts::default()
        };
        if let Some(user) = &delivery.line_user_id
            && !send.invalid
        {
            let user_facts = facts.users.get(user);
            send.following = user_facts.is_some_and(|f| f.following);
            let current_member = user_facts.and_then(|f| f.member_id.as_ref());
            send.link_lost = delivery.member_id.is_some() && current_member != delivery.member_id.as_ref();
            if let Some(audience) = &campaign.audience {
                send.in_audience = user_facts.is_some_and(|f| f.segments.contains(audience));
            }
            if let Trigger::Event { unless: Some(unless), .. } = &campaign.trigger {
                send.cancelled = cancelled_by(unless, &delivery.context, facts.events.get(user), now);
            }
            if let Some(step) = delivery.context.get("step").and_then(Value::as_str) {
                let record = facts.events.get(user);
                send.step = step_stop(campaign, step, &delivery.context, user_facts, record, now, context.timezone);
            }
            if campaign.frequency_cap.is_some() {
                let stored = facts.by_campaign.get(&(campaign.id.as_str(), user)).copied().unwrap_or(0);
                send.sent_by_campaign =
                    stored + batch_by_campaign.get(&(campaign.id.as_str(), user)).copied().unwrap_or(0);
            }
            if context.global.per_user_cap.is_some() {
                send.sent_overall =
                    facts.overall.get(user).copied().unwrap_or(0) + batch_overall.get(user).copied().unwrap_or(0);
            }
        }
        let rules = CampaignRules {
            frequency_cap: campaign.frequency_cap.as_ref(),
            quiet_hours: campaign.quiet_hours.as_ref(),
        };
        let decision = decide(&send, rules, context.global, now, context.timezone);
        if decision == Decision::Send
            && let Some(user) = &delivery.line_user_id
        {
            if campaign.frequency_cap.is_some() {
                *batch_by_campaign.entry((campaign.id.as_str(), user)).or_default() += 1;
            }
            if context.global.per_user_cap.is_some() {
                *batch_overall.entry(user).or_default() += 1;
            }
        }
        decisions.push(decision);
    }
    Ok(decisions)
}

/// The stored facts the policies need for one batch of deliveries.
struct BatchFacts<'a> {
    users: HashMap<LineUserId, UserSendFacts>,
    /// Users with a delivery of a campaign that has `unless`, and their events of those types.
    events: HashMap<LineUserId, UserRecord>,
    /// Stored sends within each capped campaign's window.
    by_campaign: HashMap<(&'a str, &'a LineUserId), u64>,
    /// Stored sends within the global cap's window.
    overall: HashMap<LineUserId, u64>,
}

impl<'a> BatchFacts<'a> {
    async fn load(
        context: &PolicyContext<'_>,
        deliveries: &'a [PendingDelivery],
        now: DateTime<Utc>,
    ) -> DispatchResult<Self> {
        // Each (known) campaign of the batch with its distinct users.
        let mut users_of: BTreeMap<&'a str, Vec<&'a LineUserId>> = BTreeMap::new();
        let mut pairs = HashSet::new();
        for delivery in deliveries {
            if let Some(user) = &delivery.line_user_id
                && pairs.insert((delivery.campaign_id.as_str(), user))
            {
                users_of.entry(delivery.campaign_id.as_str()).or_default().push(user);
            }
        }
        let batch: Vec<(&'a str, &Campaign, &Vec<&'a LineUserId>)> =
            users_of.iter().filter_map(|(id, users)| Some((*id, context.campaigns.get(id)?, users))).collect();
        let mut distinct = HashSet::with_capacity(pairs.len());
        let all: Vec<LineUserId> =
            pairs.into_iter().filter(|(_, u)| distinct.insert(*u)).map(|(_, u)| u.clone()).collect();

        let mut segments: BTreeSet<String> = batch.iter().filter_map(|(_, c, _)| c.audience.clone()).collect();
        for (_, campaign, _) in &batch {
            segments.extend(campaign.steps.iter().filter_map(|s| s.if_segment.clone()));
            segments.extend(campaign.exit.as_ref().and_then(|e| e.segment_exited.clone()));
        }
        let users = context.outbox.send_facts(&all, &Vec::from_iter(segments)).await?;

        let mut unless_types = BTreeSet::new();
        let mut unless_users = HashSet::new();
        for (_, campaign, list) in &batch {
            if let Trigger::Event { unless: Some(unless), .. } = &campaign.trigger {
                unless_types.insert(unless.event.clone());
                unless_users.extend(list.iter().map(|u| (*u).clone()));
            }
            // A sequence's exit by event or by conversion reads the user's events too.
            let exit = campaign.exit.as_ref().filter(|_| !campaign.steps.is_empty());
            let exit_types = exit.map(|e| {
                let by_event = e.event.as_ref().map(|u| u.event.clone());
                let by_goal = campaign.goal.as_ref().filter(|_| e.goal).map(|g| g.event.clone());
                [by_event, by_goal]
            });
            for event_type in exit_types.into_iter().flatten().flatten() {
                unless_types.insert(event_type);
                unless_users.extend(list.iter().map(|u| (*u).clone()));
            }
        }
        let events = if unless_users.is_empty() {
            HashMap::new()
        } else {
            let records = context
                .memberships
                .load_users(&Vec::from_iter(unless_users), Some(&Vec::from_iter(unless_types)))
                .await?;
            records.into_iter().map(|r| (r.line_user_id.clone(), r)).collect()
        };

        let mut by_campaign = HashMap::new();
        for (id, campaign, list) in &batch {
            let Some(cap) = &campaign.frequency_cap else { continue };
            let users: Vec<LineUserId> = list.iter().map(|u| (*u).clone()).collect();
            let counts = context.outbox.sent_counts(&users, Some(id), now - cap.per).await?;
            for user in list.iter() {
                if let Some(n) = counts.get(*user) {
                    by_campaign.insert((*id, *user), *n);
                }
            }
        }
        let overall = match &context.global.per_user_cap {
            Some(cap) => context.outbox.sent_counts(&all, None, now - cap.per).await?,
            None => HashMap::new(),
        };
        Ok(Self { users, events, by_campaign, overall })
    }
}

/// Why a step of a sequence must not go now, if it must not: its id is gone
/// from the file, the sequence ended before this (later) step (`exit`: the
/// user is no longer in the segment, the exit event happened or the user
/// converted since the sequence started), or its `if` segment does not hold
/// the user.
fn step_stop(
    campaign: &Campaign,
    step: &str,
    context: &Value,
    user: Option<&UserSendFacts>,
    record: Option<&UserRecord>,
    now: DateTime<Utc>,
    tz: chrono_tz::Tz,
) -> Option<SkipReason> {
    let Some((index, step)) = campaign.step(step) else { return Some(SkipReason::StepRemoved) };
    let in_segment = |segment: &str| user.is_some_and(|u| u.segments.contains(segment));
    let started = context
        .get("started_at")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    // `exit` ends a sequence before a later step: the first always goes.
    if let (Some(exit), Some(started), true) = (&campaign.exit, started, index > 0) {
        let left = exit.segment_exited.as_deref().is_some_and(|s| !in_segment(s));
        let empty = serde_json::Map::new();
        let trigger_props =
            context.get("event").and_then(|e| e.get("properties")).and_then(Value::as_object).unwrap_or(&empty);
        let events = record.map(|r| r.events.as_slice()).unwrap_or_default();
        let by_event = exit.event.as_ref().is_some_and(|unless| {
            events
                .iter()
                .any(|e| unless.cancels(started, trigger_props, &e.event_type, e.occurred_at, &e.properties, now))
        });
        let converted = campaign.goal.as_ref().filter(|_| exit.goal).is_some_and(|goal| {
            let end = started.checked_add_signed(goal.within).unwrap_or(DateTime::<Utc>::MAX_UTC).min(now);
            events.iter().any(|e| {
                e.event_type == goal.event
                    && e.occurred_at > started
                    && e.occurred_at <= end
                    && goal.goal_event("", e.occurred_at, &e.properties, now, tz).is_some()
            })
        });
        if left || by_event || converted {
            return Some(SkipReason::Exited);
        }
    }
    match &step.if_segment {
        Some(segment) if !in_segment(segment) => Some(SkipReason::StepCondition),
        _ => None,
    }
}

/// Whether the campaign's `unless` event happened for this delivery's trigger event.
fn cancelled_by(
    unless: &renkei_campaigns::Unless,
    context: &Value,
    record: Option<&UserRecord>,
    now: DateTime<Utc>,
) -> bool {
    let Some(event) = context.get("event") else { return false };
    let Some(occurred_at) =
        event.get("occurred_at").and_then(Value::as_str).and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    else {
        return false;
    };
    let empty = serde_json::Map::new();
    let props = event.get("properties").and_then(Value::as_object).unwrap_or(&empty);
    record.is_some_and(|r| {
        r.events.iter().any(|e| {
            unless.cancels(occurred_at.with_timezone(&Utc), props, &e.event_type, e.occurred_at, &e.properties, now)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use renkei_campaigns::{Exit, Goal, Step, Unless};
    use renkei_store::membership::UserEventRecord;
    use serde_json::json;

    fn t(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).single().expect("time") + chrono::Duration::minutes(minutes)
    }

    fn step(id: &str, if_segment: Option<&str>) -> Step {
        Step {
            id: id.into(),
            wait: chrono::Duration::zero(),
            at: None,
            if_segment: if_segment.map(str::to_string),
            messages: 0..0,
            variants: Vec::new(),
        }
    }

    fn campaign(exit: Exit) -> Campaign {
        let goal = Some(Goal {
            event: "purchase".into(),
            filters: Vec::new(),
            within: chrono::Duration::days(14),
            value: None,
        });
        Campaign {
            id: "seq".into(),
            name: "seq".into(),
            description: None,
            file: "seq.yaml".into(),
            trigger: Trigger::SegmentEntered { segment: "buyers".into() },
            audience: None,
            messages: Vec::new(),
            variants: Vec::new(),
            frequency_cap: None,
            quiet_hours: None,
            goal,
            holdout: None,
            steps: vec![step("first", None), step("second", Some("vip")), step("third", None)],
            exit: Some(exit),
        }
    }

    fn user(segments: &[&str]) -> UserSendFacts {
        UserSendFacts { member_id: None, following: true, segments: segments.iter().map(|s| s.to_string()).collect() }
    }

    fn events(list: &[(&str, i64)]) -> UserRecord {
        UserRecord {
            line_user_id: LineUserId::parse("U00000000000000000000000000000001").expect("user"),
            member_id: None,
            attributes: None,
            following: true,
            events: list
                .iter()
                .map(|(kind, at)| UserEventRecord {
                    event_type: kind.to_string(),
                    occurred_at: t(*at),
                    properties: serde_json::Map::new(),
                })
                .collect(),
            totals: Vec::new(),
            pending: Vec::new(),
        }
    }

    #[test]
    fn steps_stop_for_a_removed_step_an_exit_or_their_if() {
        let context = json!({"step": "x", "started_at": t(0).to_rfc3339()});
        let stop = |c: &Campaign, step: &str, u: &UserSendFacts, r: &UserRecord| {
            step_stop(c, step, &context, Some(u), Some(r), t(100), chrono_tz::UTC)
        };
        let none = Exit::default();
        let (vip, plain) = (user(&["vip", "buyers"]), user(&["buyers"]));
        let quiet = events(&[]);
        assert_eq!(stop(&campaign(none.clone()), "gone", &vip, &quiet), Some(SkipReason::StepRemoved));
        assert_eq!(stop(&campaign(none.clone()), "second", &plain, &quiet), Some(SkipReason::StepCondition));
        assert_eq!(stop(&campaign(none.clone()), "second", &vip, &quiet), None);
        // Each exit ends the sequence before a later step, never before the first.
        let by_goal = Exit { goal: true, ..Exit::default() };
        let bought = events(&[("purchase", 50)]);
        assert_eq!(stop(&campaign(by_goal.clone()), "third", &plain, &bought), Some(SkipReason::Exited));
        assert_eq!(stop(&campaign(by_goal.clone()), "first", &plain, &bought), None);
        let before_start = events(&[("purchase", -5)]);
        assert_eq!(stop(&campaign(by_goal), "third", &plain, &before_start), None, "a purchase before the start");
        let by_segment = Exit { segment_exited: Some("buyers".into()), ..Exit::default() };
        assert_eq!(stop(&campaign(by_segment.clone()), "third", &user(&[]), &quiet), Some(SkipReason::Exited));
        assert_eq!(stop(&campaign(by_segment), "third", &plain, &quiet), None);
        let by_event =
            Exit { event: Some(Unless { event: "unsubscribe".into(), match_props: Vec::new() }), ..Exit::default() };
        let asked = events(&[("unsubscribe", 30)]);
        assert_eq!(stop(&campaign(by_event.clone()), "third", &plain, &asked), Some(SkipReason::Exited));
        assert_eq!(stop(&campaign(by_event), "third", &plain, &quiet), None);
    }
}
