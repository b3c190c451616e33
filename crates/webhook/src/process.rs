//! Processing stored webhook events, outside the request.
//!
//! A worker claims unprocessed rows with a lease, handles them in order and
//! marks them processed. While the main store is busy (a write waited the
//! write wait: an import, a recompute) the claimed rows go back untried and
//! the worker tries again later; the inbox keeps taking webhooks meanwhile. Every step is idempotent (friendship upserts,
//! events keyed `line:<webhookEventId>`, nonces remembering which row used
//! them), so a row handled again after a crash does no harm.

use crate::{LINK_TOKEN_PLACEHOLDER, WebhookState, url_encode};
use chrono::{DateTime, Utc};
use renkei_campaigns::replies::{Incoming, postback_action};
use renkei_core::{EventId, EventType, LineUserId, LinkMethod, NewEvent, UserRef};
use renkei_line::{EventKind, LineError, LinkResult, Message, ReplyRequest, WebhookEvent, parse_webhook};
use renkei_store::webhook::{NonceUse, WebhookEventRow};
use renkei_store::{LinkOutcome, StoreError};
use serde_json::{Map, Value, json};
use std::time::Duration;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("LINE API: {0}")]
    Line(#[from] LineError),
}

impl ProcessError {
    /// Whether handling the event again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProcessError::Store(StoreError::Conflict(_)) => false,
            ProcessError::Store(_) => true,
            ProcessError::Line(e) => e.is_retryable(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// How long a claimed row is reserved; a crashed worker's rows come back after it.
    pub lease: chrono::Duration,
    /// Rows claimed per round trip.
    pub batch: u32,
    /// Also look for work this often (rows from other instances, expired leases).
    pub poll_interval: Duration,
    /// Attempts after which a failing row is given up on (kept, with its error).
    pub max_attempts: u32,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            lease: chrono::Duration::seconds(30),
            batch: 100,
            poll_interval: Duration::from_secs(1),
            max_attempts: 5,
        }
    }
}

/// The running worker; dropping it stops the worker (unfinished rows are
/// picked up again after their lease).
pub struct WorkerHandle(JoinHandle<()>);

impl WorkerHandle {
    pub fn abort(&self) {
        self.0.abort();
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the background worker. It first drains what is left from before
/// (a crash, a restart), then wakes on every stored webhook and on a timer.
pub fn spawn_worker(state: WebhookState, options: WorkerOptions) -> WorkerHandle {
    WorkerHandle(tokio::spawn(async move {
        loop {
            match process_pending(&state, &options).await {
                Ok(_) => {}
                Err(e @ StoreError::Busy(_)) => tracing::info!(error = %e, "webhook worker waits for the store"),
                Err(e) => tracing::warn!(error = %e, "webhook worker cannot reach the store; retrying"),
            }
            tokio::select! {
                () = state.wake.notified() => {}
                () = tokio::time::sleep(options.poll_interval) => {}
            }
        }
    }))
}

/// Handles every claimable row now; returns how many were finished.
pub async fn process_pending(state: &WebhookState, options: &WorkerOptions) -> Result<usize, StoreError> {
    let mut finished = 0;
    loop {
        let rows =
            state.store.inbox.claim_webhook_events(state.clock.now(), options.lease, options.batch.max(1)).await?;
        if rows.is_empty() {
            return Ok(finished);
        }
        for (done, row) in rows.iter().enumerate() {
            match process_row(state, options, row).await {
                Ok(true) => finished += 1,
                Ok(false) => {}
                Err(StoreError::Busy(why)) => {
                    // The main store is held (an import, a recompute): this
                    // row and the rest go back untried, for a later round.
                    for row in &rows[done..] {
                        state.store.inbox.release_webhook_event(row.id).await?;
                    }
                    return Err(StoreError::Busy(why));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Handles one claimed row; true when it is done (processed or given up).
async fn process_row(state: &WebhookState, options: &WorkerOptions, row: &WebhookEventRow) -> Result<bool, StoreError> {
    match handle(state, row).await {
        Ok(()) => {
            state.store.inbox.finish_webhook_event(row.id, state.clock.now(), None).await?;
            Ok(true)
        }
        // Not the event's fault: not an attempt (the caller gives the row back).
        Err(ProcessError::Store(StoreError::Busy(why))) => Err(StoreError::Busy(why)),
        Err(e) if e.is_retryable() && row.attempts < options.max_attempts => {
            tracing::warn!(id = row.id, event_type = %row.event_type, attempt = row.attempts, error = %e, "webhook event will be retried");
            state.store.inbox.record_webhook_error(row.id, &e.to_string()).await?;
            Ok(false)
        }
        Err(e) => {
            tracing::error!(id = row.id, event_type = %row.event_type, attempt = row.attempts, error = %e, "webhook event given up");
            state.store.inbox.finish_webhook_event(row.id, state.clock.now(), Some(&e.to_string())).await?;
            Ok(true)
        }
    }
}

/// Re-reads a stored raw event with the same tolerant parser as the route.
fn parse_stored(body: &Value) -> Option<WebhookEvent> {
    let envelope = json!({"destination": "", "events": [body]});
    let bytes = serde_json::to_vec(&envelope).ok()?;
    parse_webhook(&bytes).ok()?.events.into_iter().next()
}

async fn handle(state: &WebhookState, row: &WebhookEventRow) -> Result<(), ProcessError> {
    let Some(event) = parse_stored(&row.body) else {
        tracing::warn!(id = row.id, "stored webhook event is unreadable; skipped");
        return Ok(());
    };
    // Times come from our clock at receipt: comparable with nonce expiry and
    // independent of how late processing runs.
    let at = row.received_at;
    let user = event.line_user_id();
    match (&event.kind, user) {
        (EventKind::Follow { .. }, Some(user)) => {
            state.store.members.set_following(&user, true, at).await?;
            state.changes.users_changed(&[UserRef::LineUser(user.clone())]);
            tracing::info!(line_user_id = %user, "follow");
        }
        (EventKind::Unfollow, Some(user)) => {
            state.store.members.set_following(&user, false, at).await?;
            state.changes.users_changed(&[UserRef::LineUser(user.clone())]);
            tracing::info!(line_user_id = %user, "unfollow: the user blocked the account");
        }
        (EventKind::Message(message), Some(user)) => {
            let mut properties = Map::new();
            properties.insert("message_type".into(), json!(message.message_type));
            if let Some(text) = &message.text {
                properties.insert("text".into(), json!(text));
            }
            record_event(state, row, &event, &user, "line_message", properties).await?;
            if let Some(text) = &message.text {
                crate::replies::respond(state, row, &event, &user, Incoming::Text(text)).await?;
            }
        }
        (EventKind::Postback { data, params }, Some(user)) => {
            let mut properties = Map::new();
            properties.insert("data".into(), json!(data));
            if let Some(params) = params {
                properties.insert("params".into(), Value::Object(params.clone()));
            }
            record_event(state, row, &event, &user, "line_postback", properties).await?;
            match postback_action(data) {
                Some("link") => start_account_link(state, &event, &user).await?,
                Some("unlink") => unlink(state, &event, &user).await?,
                _ => crate::replies::respond(state, row, &event, &user, Incoming::Postback(data)).await?,
            }
        }
        (EventKind::AccountLink { result, nonce }, user) => {
            account_link(state, row, &event, result, nonce.as_deref(), user).await?
        }
        (EventKind::Other, _) => {
            tracing::debug!(id = row.id, event_type = %event.event_type, "webhook event stored only")
        }
        (_, None) => {
            tracing::debug!(id = row.id, event_type = %event.event_type, "event without a LINE user; stored only")
        }
    }
    Ok(())
}

/// The renkei event id of a webhook event: `line:<webhookEventId>`, so a
/// redelivery or a re-run is the same event (older payloads without the id
/// use the inbox row's).
pub(crate) fn event_key(row: &WebhookEventRow, event: &WebhookEvent) -> String {
    match &event.webhook_event_id {
        Some(id) => format!("line:{id}"),
        None => format!("line:row-{}", row.id),
    }
}

/// Stores a message or postback as a renkei event, so segments can use it.
async fn record_event(
    state: &WebhookState,
    row: &WebhookEventRow,
    event: &WebhookEvent,
    user: &LineUserId,
    event_type: &str,
    properties: Map<String, Value>,
) -> Result<(), ProcessError> {
    // Keyed on webhookEventId so a redelivery or a re-run adds nothing.
    let key = event_key(row, event);
    let (Ok(event_type), Ok(event_id)) = (EventType::parse(event_type), EventId::parse(&key)) else {
        tracing::warn!(id = row.id, "webhook event cannot become a renkei event (id too long?); skipped");
        return Ok(());
    };
    let occurred_at = (event.timestamp > 0)
        .then(|| DateTime::<Utc>::from_timestamp_millis(event.timestamp))
        .flatten()
        .unwrap_or(row.received_at);
    let new = NewEvent {
        event_id: Some(event_id),
        event_type,
        member_id: None,
        line_user_id: Some(user.clone()),
        occurred_at,
        properties,
    };
    let outcome = state.store.events.insert_events(&[new], row.received_at).await?;
    if outcome.accepted > 0 {
        state.changes.users_changed(&[UserRef::LineUser(user.clone())]);
    }
    Ok(())
}

async fn reply(state: &WebhookState, event: &WebhookEvent, text: String) -> Result<(), ProcessError> {
    if !state.config.replies_owned {
        // webhook.reply_owner names a relay target: it answers, renkei must not.
        tracing::debug!("not replying: a relay target owns reply tokens (webhook.reply_owner)");
        return Ok(());
    }
    let (Some(line), Some(reply_token)) = (&state.line, &event.reply_token) else {
        tracing::warn!("cannot reply: no LINE client configured or no reply token");
        return Ok(());
    };
    let request = ReplyRequest {
        reply_token: reply_token.clone(),
        messages: vec![Message::text(text)],
        notification_disabled: None,
    };
    line.reply(&request).await?;
    Ok(())
}

/// `action=link`: a link token from LINE, sent back as the company's login URL.
async fn start_account_link(state: &WebhookState, event: &WebhookEvent, user: &LineUserId) -> Result<(), ProcessError> {
    if state.store.members.get_link_by_line_user(user).await?.is_some() {
        return reply(
            state,
            event,
            "ID連携は完了しています。解除するにはメニューの「連携解除」を押してください。".into(),
        )
        .await;
    }
    let Some(line) = &state.line else {
        tracing::warn!(line_user_id = %user, "account link requested but no LINE client is configured");
        return Ok(());
    };
    let link_token = line.issue_link_token(user).await?;
    // The ID連携 page's "link tokens issued"; a lost count must not stop the link.
    if let Err(error) = state.store.tally.count_hour("link_token", "", state.clock.now()).await {
        tracing::warn!(%error, "could not count the link token for the dashboard");
    }
    let url = state.config.link_login_url.replace(LINK_TOKEN_PLACEHOLDER, &url_encode(&link_token));
    tracing::info!(line_user_id = %user, "account link started");
    reply(state, event, format!("会員IDとLINEを連携するには、こちらからログインしてください。\n{url}")).await
}

/// `action=unlink`: users can always unlink themselves.
async fn unlink(state: &WebhookState, event: &WebhookEvent, user: &LineUserId) -> Result<(), ProcessError> {
    let Some(link) = state.store.members.get_link_by_line_user(user).await? else {
        return reply(state, event, "連携している会員IDはありません。".into()).await;
    };
    if let Some(removed) = state.store.members.unlink(&link.member_id, state.clock.now()).await? {
        state.changes.users_changed(&[
            UserRef::LineUser(removed.line_user_id.clone()),
            UserRef::Member(removed.member_id.clone()),
        ]);
        tracing::info!(member_id = %removed.member_id, line_user_id = %removed.line_user_id, "unlinked by the user");
    }
    reply(state, event, "ID連携を解除しました。".into()).await
}

async fn account_link(
    state: &WebhookState,
    row: &WebhookEventRow,
    event: &WebhookEvent,
    result: &LinkResult,
    nonce: Option<&str>,
    user: Option<LineUserId>,
) -> Result<(), ProcessError> {
    let Some(nonce) = nonce else {
        tracing::warn!(id = row.id, "accountLink event without a nonce; ignored");
        return Ok(());
    };
    match (result, user) {
        (LinkResult::Ok, Some(user)) => {
            let member_id = match state.store.inbox.consume_link_nonce(nonce, &user, row.id, row.received_at).await? {
                NonceUse::Consumed(member_id) => member_id,
                refused => {
                    // Never log the nonce itself: it is a credential until used.
                    tracing::warn!(line_user_id = %user, outcome = ?refused, "account link refused: nonce not usable; nothing linked");
                    return Ok(());
                }
            };
            match state.store.members.link(&member_id, &user, LinkMethod::AccountLink, row.received_at).await {
                Ok(LinkOutcome::Created(link)) => {
                    state.changes.users_changed(&[
                        UserRef::LineUser(link.line_user_id.clone()),
                        UserRef::Member(link.member_id.clone()),
                    ]);
                    tracing::info!(member_id = %link.member_id, line_user_id = %link.line_user_id, "linked by account link");
                    reply(state, event, "ID連携が完了しました。".into()).await
                }
                Ok(LinkOutcome::AlreadyLinked(_)) => Ok(()),
                Err(StoreError::Conflict(message)) => {
                    tracing::warn!(member_id = %member_id, line_user_id = %user, reason = %message, "account link refused: conflict");
                    state.store.inbox.set_link_nonce_result(nonce, "conflict").await?;
                    reply(state, event, "この会員IDまたはLINEアカウントは、すでに別の連携に使われています。".into())
                        .await
                }
                Err(e) => Err(e.into()),
            }
        }
        (LinkResult::Ok, None) => {
            tracing::warn!(id = row.id, "accountLink ok without a valid source user; nothing linked");
            Ok(())
        }
        (LinkResult::Failed, _) => {
            if !state.store.inbox.fail_link_nonce(nonce, row.received_at).await? {
                tracing::warn!(id = row.id, "accountLink failed for an unknown or used nonce");
            } else {
                tracing::info!(id = row.id, "account link failed on LINE's side; recorded");
            }
            Ok(())
        }
        (LinkResult::Other(result), _) => {
            tracing::warn!(id = row.id, result = %result, "accountLink with an unknown result; ignored");
            Ok(())
        }
    }
}
