//! `renkei campaigns dry-run`: who would get what at an instant, rendered,
//! with the policy decision for each, and nothing sent or stored.

use crate::runner::rfc3339;
use crate::{SchedulerError, SchedulerResult};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use renkei_campaigns::{CampaignSet, RenderContext, Trigger};
use renkei_dispatcher::policy::{Decision, GlobalPolicy};
use renkei_dispatcher::{PolicyContext, decide_deliveries};
use renkei_evaluator::MembershipEngine;
use renkei_store::dispatch::{DeliveryStatus, PendingDelivery};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// One recipient of a dry run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRunRow {
    pub line_user_id: Option<String>,
    pub member_id: Option<String>,
    /// `send`, `skip` or `defer`.
    pub decision: &'static str,
    /// The skip reason, or the instant a deferred send goes out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When the delivery is due (event triggers: the queued reminder's time).
    pub due_at: String,
    /// The step of a sequence the recipient gets (its first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The A/B variant the recipient gets, if the campaign has variants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The rendered LINE messages.
    pub messages: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

renkei_store::store_view! {
    /// What a dry run reads: the recipients, the queued deliveries and the
    /// facts the policies judge by.
    pub struct DryRunStore { memberships: MembershipStore, outbox: OutboxStore, outbox_reads: OutboxReads }
}

/// Segment-entry and scheduled campaigns: the members of their segment at
/// `at`, as if the trigger fired then. Event campaigns: their queued
/// (pending) deliveries. Each is judged by the policies at `at`.
pub async fn dry_run(
    store: &DryRunStore,
    engine: &MembershipEngine,
    campaigns: &CampaignSet,
    campaign_id: &str,
    at: DateTime<Utc>,
    global: &GlobalPolicy,
    public_base_url: &str,
) -> SchedulerResult<Vec<DryRunRow>> {
    let campaign =
        campaigns.get(campaign_id).ok_or_else(|| SchedulerError::UnknownCampaign(campaign_id.to_string()))?;
    let tz: Tz = engine.timezone();
    let mut deliveries: Vec<PendingDelivery> = Vec::new();
    match &campaign.trigger {
        Trigger::SegmentEntered { segment } | Trigger::Schedule { audience: segment, .. } => {
            let users = engine.preview(segment, at).await?;
            for page in users.chunks(1_000) {
                for record in store.memberships.load_users(page, Some(&[])).await? {
                    let ctx = RenderContext {
                        member_id: record.member_id.as_ref().map(|m| m.as_str()),
                        member: record.attributes.as_ref(),
                        line_user_id: Some(record.line_user_id.as_str()),
                        trigger_key: None,
                        event: None,
                        now: at,
                        timezone: tz,
                        public_base_url,
                    };
                    let (messages, context) = match campaigns.render(campaign, &ctx) {
                        Ok(messages) => (Value::Array(messages), json!({})),
                        Err(error) => (Value::Array(Vec::new()), json!({"error": error.to_string()})),
                    };
                    deliveries.push(PendingDelivery {
                        id: 0,
                        campaign_id: campaign.id.clone(),
                        line_user_id: Some(record.line_user_id.clone()),
                        member_id: record.member_id.clone(),
                        due_at: at,
                        messages: Arc::new(messages),
                        context: Arc::new(context),
                    });
                }
            }
        }
        // What their trigger events enqueued and is still pending.
        Trigger::Event { .. } | Trigger::Fanout { .. } => {
            let mut after = 0;
            loop {
                let page = store.outbox_reads.campaign_deliveries(&campaign.id, after, 1_000).await?;
                let Some(last) = page.last() else { break };
                after = last.id;
                deliveries.extend(
                    page.into_iter().filter(|d| d.status == DeliveryStatus::Pending).map(PendingDelivery::from),
                );
            }
        }
    }
    let context = PolicyContext {
        outbox: store.outbox.as_ref(),
        memberships: store.memberships.as_ref(),
        campaigns,
        timezone: tz,
        global,
    };
    let decisions = decide_deliveries(&context, &mut deliveries, at).await?;
    Ok(deliveries
        .into_iter()
        .zip(decisions)
        .map(|(delivery, decision)| {
            let held_out = |user: &renkei_core::LineUserId| {
                campaigns
                    .get(&delivery.campaign_id)
                    .and_then(|c| c.holdout)
                    .is_some_and(|h| h.holds_out(&delivery.campaign_id, user.as_str()))
            };
            let (decision, detail) = match decision {
                // As the planner does: a sendable user of the control group gets nothing.
                Decision::Send if delivery.line_user_id.as_ref().is_some_and(held_out) => {
                    ("skip", Some(renkei_core::SkipReason::Holdout.as_str().to_string()))
                }
                Decision::Send => ("send", None),
                Decision::Skip(reason) => ("skip", Some(reason.as_str().to_string())),
                Decision::Defer(until) => ("defer", Some(rfc3339(until))),
            };
            // A sequence's recipient would get its first step now.
            let campaign = campaigns.get(&delivery.campaign_id);
            let first_step = campaign.and_then(|c| c.steps.first()).map(|s| s.id.clone());
            let user = delivery.line_user_id.as_ref().map(|u| u.as_str());
            let step_index = first_step.as_ref().map(|_| 0);
            let variant =
                campaign.and_then(|c| user.and_then(|u| c.message_range(step_index, Some(u)).0)).map(|v| v.id.clone());
            DryRunRow {
                variant,
                step: first_step,
                line_user_id: delivery.line_user_id.map(|u| u.as_str().to_string()),
                member_id: delivery.member_id.map(|m| m.as_str().to_string()),
                decision,
                detail,
                due_at: rfc3339(delivery.due_at),
                error: delivery.context.get("error").and_then(Value::as_str).map(str::to_string),
                messages: Arc::unwrap_or_clone(delivery.messages),
            }
        })
        .collect())
}
