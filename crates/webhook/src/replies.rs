//! Answering users' messages and postbacks with the reply rules
//! (`renkei_campaigns::replies`), through LINE's reply API (free of charge,
//! within the reply token's life).
//!
//! A message no rule matches costs nothing: the rules' `match` is checked
//! before any lookup, and the message is left to others (a relay target).
//! Otherwise the worker looks the user up (link, member attributes, and
//! segments when a rule asks), starting LINE's loading animation when that
//! takes longer than `loading_after`, renders the chosen answer and replies.
//! Every decision is recorded once per webhook event ([`ReplyStore`]), so an
//! event handled again never replies twice, and counted for `/metrics`.

use crate::WebhookState;
use crate::process::{ProcessError, event_key};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use renkei_campaigns::replies::{Choice, Incoming, MEMBER_CODE_URL, ReplySet, UserFacts};
use renkei_campaigns::template::member_code_url;
use renkei_campaigns::{LinkKeys, MemberCode, RenderContext};
use renkei_core::LineUserId;
use renkei_line::{EventKind, Message, ReplyRequest, WebhookEvent};
use renkei_store::webhook::WebhookEventRow;
use renkei_store::{ReplyRecord, StoreResult};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long LINE's loading animation is asked to show (the reply ends it).
const LOADING_SECONDS: u32 = 20;

/// Everything replying needs besides the webhook's state.
#[derive(Debug)]
pub struct Replies {
    pub rules: Arc<ReplySet>,
    /// Sign member-code URLs (`server.link_keys`); without them a template's
    /// `member_code_url` is empty.
    pub link_keys: Option<Arc<LinkKeys>>,
    /// How users reach this server: member-code URLs start with it.
    pub public_base_url: String,
    pub timezone: Tz,
    /// How long a member-code URL works.
    pub member_code_ttl: chrono::Duration,
    /// Start LINE's loading animation when the lookups before a reply take longer.
    pub loading_after: Duration,
    /// A reply token older than this is not used (LINE refuses late ones).
    pub token_life: chrono::Duration,
    pub metrics: ReplyMetrics,
}

/// Replies per rule, answer and outcome since the start.
#[derive(Debug, Default)]
pub struct ReplyMetrics {
    counts: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
}

impl ReplyMetrics {
    fn add(&self, rule: &str, answer: &'static str, outcome: &'static str) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry((rule.to_string(), answer, outcome)).or_default() += 1;
    }

    /// Prometheus text: `renkei_replies_total{rule,answer,outcome}`.
    pub fn render(&self, out: &mut String) {
        let counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(
            out,
            "# HELP renkei_replies_total Replies to users' messages and postbacks, by rule, answer and outcome (sent, failed, expired, not_owner)."
        );
        let _ = writeln!(out, "# TYPE renkei_replies_total counter");
        for ((rule, answer, outcome), count) in counts.iter() {
            let _ = writeln!(
                out,
                "renkei_replies_total{{rule=\"{rule}\",answer=\"{answer}\",outcome=\"{outcome}\"}} {count}"
            );
        }
    }
}

/// What the lookups found about the user.
struct Facts {
    member_id: Option<String>,
    attributes: Option<Map<String, Value>>,
    segments: BTreeSet<String>,
}

/// Answers `input` of `user` if a rule matches it.
pub(crate) async fn respond(
    state: &WebhookState,
    row: &WebhookEventRow,
    event: &WebhookEvent,
    user: &LineUserId,
    input: Incoming<'_>,
) -> Result<(), ProcessError> {
    let Some(replies) = state.replies.as_deref() else { return Ok(()) };
    let candidates = replies.rules.candidates(&input);
    let (Some(first), Some(token)) = (candidates.first(), event.reply_token.as_deref()) else { return Ok(()) };
    if event.mode.as_deref() == Some("standby") {
        // Another channel (a module) has the chat; its replies, not ours.
        return Ok(());
    }
    let key = event_key(row, event);
    if state.store.replies.reply_outcome(&key).await?.is_some() {
        return Ok(()); // answered (or decided) when this event was handled before
    }
    let now = state.clock.now();
    let record = |rule: &str, answer: &'static str, outcome: &'static str, detail: Option<String>| ReplyRecord {
        event_key: key.clone(),
        line_user_id: user.clone(),
        rule_id: rule.to_string(),
        answer: answer.to_string(),
        outcome: outcome.to_string(),
        detail,
        replied_at: now,
    };
    if !state.config.replies_owned {
        tracing::debug!(rule = %first.id, "a reply rule matched, but another system owns reply tokens");
        return finish(state, replies, record(&first.id, "reply", "not_owner", None)).await;
    }
    if now - row.received_at > replies.token_life {
        tracing::warn!(rule = %first.id, line_user_id = %user, "reply token too old to use; not replied");
        return finish(state, replies, record(&first.id, "reply", "expired", None)).await;
    }
    let needs_segments = candidates.iter().any(|rule| rule.when.segment.is_some());
    let facts = lookup_showing_loading(state, replies, user, needs_segments).await?;
    let user_facts = UserFacts { linked: facts.member_id.is_some(), segments: &facts.segments };
    let Some(choice) = ReplySet::choose(&candidates, &user_facts) else { return Ok(()) };
    let answer = choice.answer.as_str();
    let messages = match render(replies, &choice, user, &facts, &input, now) {
        Ok(messages) => messages,
        Err(error) => {
            tracing::error!(rule = %choice.rule.id, error = %error, "reply does not render; not replied");
            return finish(state, replies, record(&choice.rule.id, answer, "failed", Some(error))).await;
        }
    };
    let Some(line) = &state.line else {
        tracing::warn!(rule = %choice.rule.id, "a reply rule matched but no LINE client is configured");
        return Ok(());
    };
    if let EventKind::Message(message) = &event.kind {
        if let Some(read_token) = &message.mark_as_read_token {
            // Best effort: the reply matters, the read mark is a courtesy.
            if let Err(error) = line.mark_as_read(read_token).await {
                tracing::info!(error = %error, "could not mark the message read");
            }
        }
    }
    let request = ReplyRequest { reply_token: token.to_string(), messages, notification_disabled: None };
    match line.reply(&request).await {
        Ok(_) => {
            tracing::info!(rule = %choice.rule.id, answer, line_user_id = %user, "replied");
            finish(state, replies, record(&choice.rule.id, answer, "sent", None)).await
        }
        Err(error) if error.is_retryable() => Err(error.into()),
        Err(error) => {
            tracing::warn!(rule = %choice.rule.id, error = %error, "LINE refused the reply");
            finish(state, replies, record(&choice.rule.id, answer, "failed", Some(error.to_string()))).await
        }
    }
}

async fn finish(state: &WebhookState, replies: &Replies, record: ReplyRecord) -> Result<(), ProcessError> {
    if state.store.replies.record_reply(&record).await? {
        let answer = answer_name(&record.answer);
        replies.metrics.add(&record.rule_id, answer, outcome_name(&record.outcome));
    }
    Ok(())
}

fn answer_name(answer: &str) -> &'static str {
    match answer {
        "unlinked_reply" => "unlinked_reply",
        "link_prompt" => "link_prompt",
        _ => "reply",
    }
}

fn outcome_name(outcome: &str) -> &'static str {
    match outcome {
        "sent" => "sent",
        "expired" => "expired",
        "not_owner" => "not_owner",
        _ => "failed",
    }
}

/// The lookups, with LINE's loading animation started once they have taken
/// `loading_after` (at once when it is zero).
async fn lookup_showing_loading(
    state: &WebhookState,
    replies: &Replies,
    user: &LineUserId,
    needs_segments: bool,
) -> StoreResult<Facts> {
    let lookup = lookup(state, user, needs_segments);
    tokio::pin!(lookup);
    if !replies.loading_after.is_zero() {
        tokio::select! {
            facts = &mut lookup => return facts,
            () = tokio::time::sleep(replies.loading_after) => {}
        }
    }
    if let Some(line) = &state.line {
        if let Err(error) = line.show_loading_animation(user, LOADING_SECONDS).await {
            tracing::info!(error = %error, "could not start LINE's loading animation");
        }
    }
    lookup.await
}

async fn lookup(state: &WebhookState, user: &LineUserId, needs_segments: bool) -> StoreResult<Facts> {
    let link = state.store.members.get_link_by_line_user(user).await?;
    let member = match &link {
        Some(link) => state.store.members.get_member(&link.member_id).await?,
        None => None,
    };
    let segments = if needs_segments { state.store.memberships.user_memberships(user).await? } else { BTreeSet::new() };
    Ok(Facts {
        member_id: link.map(|l| l.member_id.as_str().to_string()),
        attributes: member.map(|m| m.attributes),
        segments,
    })
}

fn render(
    replies: &Replies,
    choice: &Choice<'_>,
    user: &LineUserId,
    facts: &Facts,
    input: &Incoming<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<Message>, String> {
    let mut extras = Map::new();
    if let (Some(member_id), Some(keys)) = (&facts.member_id, &replies.link_keys) {
        let code = MemberCode { member_id: member_id.clone(), expires_at: (now + replies.member_code_ttl).timestamp() };
        let url = member_code_url(&replies.public_base_url, &keys.seal_member_code(&code));
        extras.insert(MEMBER_CODE_URL.into(), json!(url));
    }
    let event = match input {
        Incoming::Text(text) => {
            json!({"type": "line_message", "occurred_at": now.to_rfc3339(), "properties": {"message_type": "text", "text": text}})
        }
        Incoming::Postback(data) => {
            json!({"type": "line_postback", "occurred_at": now.to_rfc3339(), "properties": {"data": data}})
        }
    };
    let ctx = RenderContext {
        member_id: facts.member_id.as_deref(),
        member: facts.attributes.as_ref(),
        line_user_id: Some(user.as_str()),
        trigger_key: None,
        event: Some(&event),
        now,
        timezone: replies.timezone,
        public_base_url: &replies.public_base_url,
    };
    let rendered = replies.rules.render(choice, &ctx, &extras).map_err(|e| e.to_string())?;
    Ok(rendered.into_iter().map(Message).collect())
}
