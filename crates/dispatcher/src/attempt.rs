//! One attempt at LINE for a request, and what came of it.

use crate::limits::Limiters;
use renkei_line::{LineClient, LineError, Message, MulticastRequest, PushRequest};
use renkei_store::dispatch::{RequestKind, SendRequest};
use serde_json::Value;

/// What happened to one request at LINE.
#[derive(Clone)]
pub(crate) enum Outcome {
    Sent {
        accepted: Option<String>,
        already: bool,
    },
    Retry {
        error: String,
        rate_limited: bool,
    },
    MonthlyLimit {
        error: String,
    },
    Failed {
        error: String,
    },
    /// Not sent: the request waited here until its lease was nearly over
    /// (the instance's share of the channel's budget was smaller than the
    /// work it had claimed); given back untried for any instance to send.
    LeaseEnding,
}

/// One attempt at LINE, waiting for the endpoint's rate limiter first;
/// not made when `deadline` (well before the request's lease ends) has
/// passed before that wait.
pub(crate) async fn attempt(
    line: &LineClient,
    limiters: &Limiters,
    request: &SendRequest,
    deadline: tokio::time::Instant,
) -> Outcome {
    let messages: Vec<Message> = match &request.messages {
        Value::Array(items) => items.iter().cloned().map(Message).collect(),
        _ => return Outcome::Failed { error: "stored messages are not a JSON array".to_string() },
    };
    // Checked before waiting for the budget, so a request given back spends none of it.
    if tokio::time::Instant::now() >= deadline {
        return Outcome::LeaseEnding;
    }
    let result = match request.kind {
        RequestKind::Push => {
            let Some(to) = request.recipients.first() else {
                return Outcome::Failed { error: "push request without a recipient".to_string() };
            };
            limiters.push.until_ready().await;
            let body = PushRequest {
                to: to.as_str().to_string(),
                messages,
                notification_disabled: None,
                custom_aggregation_units: request.aggregation_unit.clone().map(|u| vec![u]),
            };
            line.push(&body, Some(request.retry_key)).await
        }
        RequestKind::Multicast => {
            limiters.multicast.until_ready().await;
            let body = MulticastRequest {
                to: request.recipients.iter().map(|u| u.as_str().to_string()).collect(),
                messages,
                notification_disabled: None,
                custom_aggregation_units: request.aggregation_unit.clone().map(|u| vec![u]),
            };
            line.multicast(&body, Some(request.retry_key)).await
        }
    };
    match result {
        Ok(sent) => {
            let already = sent.accepted_request_id.is_some();
            let accepted =
                sent.accepted_request_id.or_else(|| (!sent.request_id.is_empty()).then_some(sent.request_id));
            Outcome::Sent { accepted, already }
        }
        Err(error @ LineError::RateLimited { .. }) => Outcome::Retry { error: error.to_string(), rate_limited: true },
        Err(error @ LineError::Transient { .. }) => Outcome::Retry { error: error.to_string(), rate_limited: false },
        Err(error @ LineError::MonthlyLimit { .. }) => Outcome::MonthlyLimit { error: error.to_string() },
        // A 2xx we could not read: LINE took it. Recording it as sent is what
        // keeps it from going twice.
        Err(LineError::InvalidResponse(error)) => {
            tracing::warn!(%error, "LINE accepted a request with an unreadable answer; counted as sent");
            Outcome::Sent { accepted: None, already: false }
        }
        Err(error @ (LineError::Rejected { .. } | LineError::InvalidRequest(_))) => {
            Outcome::Failed { error: error.to_string() }
        }
    }
}
