//! `/v1` ingestion routes: events, members and links (ID連携 by the company's
//! own IDs). Bearer auth is [`crate::router`]'s layer.

use crate::error::{ApiError, ErrorCode};
use crate::merger::EventMerger;
use crate::metrics::IngestMetrics;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use renkei_core::{
    ChangeListener, Clock, FieldError, ItemError, LineUserId, LinkMethod, MemberId, MemberPatch, UserRef,
    parse_event_batch,
};
use renkei_store::{Link, LinkOutcome};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Most events or members one request may carry.
pub const MAX_BATCH_ITEMS: usize = 10_000;
/// Largest body of a batch route.
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
/// Largest body of any other route.
pub const MAX_SMALL_BYTES: usize = 64 * 1024;

renkei_store::store_view! {
    /// What ingest writes: events, members and their links.
    pub struct IngestStore { events: EventStore, members: MemberStore }
}

#[derive(Clone)]
pub struct IngestState {
    pub store: IngestStore,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<IngestMetrics>,
    /// Told about every user whose data a request changed, after it is durable.
    pub changes: Arc<dyn ChangeListener>,
    /// Moves appended events into `events` (and then tells `changes`).
    pub merger: Arc<EventMerger>,
}

/// The `/v1` ingestion routes (the caller adds bearer-key auth).
pub fn router(state: IngestState) -> Router {
    let batches = Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/members", post(post_members))
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES));
    let small = Router::new()
        .route("/v1/links", post(post_link))
        .route("/v1/links/{member_id}", get(get_link).delete(delete_link))
        .layer(DefaultBodyLimit::max(MAX_SMALL_BYTES));
    batches.merge(small).with_state(state)
}

/// Parses a JSON object body, naming where it is malformed.
pub fn json_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    let body = body.map_err(ApiError::from_body_rejection)?;
    let value = serde_json::from_slice::<Value>(&body);
    if let (Ok(_), Some(path)) = (&value, renkei_core::json::wide_integer(&body)) {
        return Err(ApiError::bad_json(format!("{path}: {}", renkei_core::json::WIDE_INTEGER)));
    }
    match value {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_json("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_json(format!("malformed JSON: {e}"))),
    }
}

/// Takes the one array field a batch body must consist of.
fn batch_items(mut body: Map<String, Value>, field: &'static str) -> Result<Vec<Value>, ApiError> {
    if let Some(other) = body.keys().find(|k| k.as_str() != field) {
        return Err(ApiError::invalid(format!("unknown field {other:?}; the body is {{\"{field}\": [...]}}")));
    }
    match body.remove(field) {
        Some(Value::Array(items)) if items.len() <= MAX_BATCH_ITEMS => Ok(items),
        Some(Value::Array(items)) => Err(ApiError::new(
            ErrorCode::BatchTooLarge,
            format!("{} {field} in one request; at most {MAX_BATCH_ITEMS}", items.len()),
        )),
        Some(_) => Err(ApiError::invalid(format!("{field:?} must be an array"))),
        None => Err(ApiError::invalid(format!("missing field {field:?}"))),
    }
}

/// Runs a batch's parsing and validation (CPU work, up to 5 MB of JSON) on
/// the blocking pool: on the async workers it would hold up every other
/// request (`/healthz` too) until it finished.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|error| {
        tracing::error!(%error, "parsing a batch failed");
        Err(ApiError::new(ErrorCode::Unavailable, "the batch could not be parsed; retry later"))
    })
}

async fn post_events(
    State(state): State<IngestState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let metrics = state.metrics.clone();
    let events = off_the_runtime(move || {
        let items = batch_items(json_object(body)?, "events")?;
        parse_event_batch(&items).map_err(|errors| {
            IngestMetrics::add(&metrics.batches_rejected, 1);
            ApiError::invalid_items("events", errors)
        })
    })
    .await?;
    let appended = state.store.events.append_events(&events, state.clock.now()).await?;
    let outcome = appended.outcome;
    if outcome.accepted > 0 {
        match appended.merged_later {
            true => state.merger.appended(),
            false => state.changes.users_changed(&users_of(&events)),
        }
    }
    IngestMetrics::add(&state.metrics.events_accepted, outcome.accepted);
    IngestMetrics::add(&state.metrics.events_duplicate, outcome.duplicates);
    Ok(Json(json!({"accepted": outcome.accepted, "duplicates": outcome.duplicates})))
}

/// The distinct users a batch of events touches, by every key it carries.
fn users_of(events: &[renkei_core::NewEvent]) -> Vec<UserRef> {
    let mut users: Vec<UserRef> = events
        .iter()
        .flat_map(|e| {
            let by_user = e.line_user_id.clone().map(UserRef::LineUser);
            let by_member = e.member_id.clone().map(UserRef::Member);
            by_user.into_iter().chain(by_member)
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    users.retain(|u| seen.insert(u.clone()));
    users
}

fn parse_member_batch(items: &[Value]) -> Result<Vec<MemberPatch>, Vec<ItemError>> {
    let mut patches = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match MemberPatch::parse(item, false) {
            Ok(patch) => patches.push(patch),
            Err(field_errors) => errors.extend(field_errors.into_iter().map(|e| e.at(index))),
        }
    }
    if errors.is_empty() { Ok(patches) } else { Err(errors) }
}

async fn post_members(
    State(state): State<IngestState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let metrics = state.metrics.clone();
    let patches = off_the_runtime(move || {
        let items = batch_items(json_object(body)?, "members")?;
        parse_member_batch(&items).map_err(|errors| {
            IngestMetrics::add(&metrics.batches_rejected, 1);
            ApiError::invalid_items("members", errors)
        })
    })
    .await?;
    let outcome = state.store.members.upsert_members(&patches, state.clock.now()).await?;
    if outcome.created + outcome.updated > 0 {
        let users: Vec<UserRef> = patches.iter().map(|p| UserRef::Member(p.member_id.clone())).collect();
        state.changes.users_changed(&users);
    }
    IngestMetrics::add(&state.metrics.members_upserted, outcome.created + outcome.updated);
    Ok(Json(json!({"created": outcome.created, "updated": outcome.updated, "unchanged": outcome.unchanged})))
}

pub fn link_json(link: &Link) -> Value {
    json!({
        "member_id": link.member_id,
        "line_user_id": link.line_user_id,
        "method": link.method,
        "linked_at": link.linked_at.to_rfc3339(),
    })
}

fn field_error_message(errors: Vec<FieldError>) -> ApiError {
    let message = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ");
    ApiError::invalid(message)
}

fn parse_link_body(body: &Map<String, Value>) -> Result<(MemberId, LineUserId), Vec<FieldError>> {
    let mut errors = Vec::new();
    for key in body.keys() {
        if key != "member_id" && key != "line_user_id" {
            errors.push(FieldError::new(key.clone(), "unknown field; expected member_id and line_user_id"));
        }
    }
    let text = |field: &str, errors: &mut Vec<FieldError>| renkei_core::required_string(body, field, errors);
    let member_id = text("member_id", &mut errors)
        .and_then(|t| MemberId::parse(&t).map_err(|e| errors.push(FieldError::new("member_id", e.to_string()))).ok());
    let line_user_id = text("line_user_id", &mut errors).and_then(|t| {
        LineUserId::parse(&t).map_err(|e| errors.push(FieldError::new("line_user_id", e.to_string()))).ok()
    });
    match (member_id, line_user_id) {
        (Some(m), Some(u)) if errors.is_empty() => Ok((m, u)),
        _ => Err(errors),
    }
}

async fn post_link(
    State(state): State<IngestState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (member_id, line_user_id) = parse_link_body(&json_object(body)?).map_err(field_error_message)?;
    match state.store.members.link(&member_id, &line_user_id, LinkMethod::Api, state.clock.now()).await? {
        LinkOutcome::Created(link) => {
            IngestMetrics::add(&state.metrics.links_created, 1);
            state.changes.users_changed(&[UserRef::LineUser(link.line_user_id.clone())]);
            tracing::info!(member_id = %link.member_id, line_user_id = %link.line_user_id, "linked");
            Ok((StatusCode::CREATED, Json(link_json(&link))).into_response())
        }
        LinkOutcome::AlreadyLinked(link) => Ok((StatusCode::OK, Json(link_json(&link))).into_response()),
    }
}

fn path_member_id(raw: &str) -> Result<MemberId, ApiError> {
    MemberId::parse(raw).map_err(|e| ApiError::new(ErrorCode::InvalidMemberId, format!("member_id {e}")))
}

async fn get_link(State(state): State<IngestState>, Path(member_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let member_id = path_member_id(&member_id)?;
    match state.store.members.get_link(&member_id).await? {
        Some(link) => Ok(Json(link_json(&link))),
        None => Err(ApiError::not_found(format!("member {member_id} is not linked"))),
    }
}

async fn delete_link(State(state): State<IngestState>, Path(member_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let member_id = path_member_id(&member_id)?;
    match state.store.members.unlink(&member_id, state.clock.now()).await? {
        Some(link) => {
            IngestMetrics::add(&state.metrics.links_removed, 1);
            state.changes.users_changed(&[UserRef::LineUser(link.line_user_id.clone())]);
            tracing::info!(member_id = %link.member_id, line_user_id = %link.line_user_id, "unlinked");
            Ok(Json(json!({"unlinked": link_json(&link)})))
        }
        None => Err(ApiError::not_found(format!("member {member_id} is not linked"))),
    }
}
