//! `GET /v1/segments` and `GET /v1/segments/{id}/members`. No auth here: the
//! application wraps the router in its bearer-key layer.

use crate::error::{ApiError, ErrorCode};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use renkei_evaluator::{MembershipEngine, MembershipError};
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;

pub fn router(engine: Arc<MembershipEngine>) -> Router {
    Router::new()
        .route("/v1/segments", get(list_segments))
        .route("/v1/segments/{id}/members", get(segment_members))
        .with_state(engine)
}

impl From<MembershipError> for ApiError {
    fn from(error: MembershipError) -> Self {
        match error {
            MembershipError::UnknownSegment(id) => ApiError::not_found(format!("unknown segment `{id}`")),
            MembershipError::Store(error) => ApiError::store_unavailable(&error),
            other => {
                tracing::error!(error = %other, "segment API failed");
                ApiError::new(ErrorCode::StoreUnavailable, "the segment store is unavailable")
            }
        }
    }
}

#[derive(Serialize)]
struct SegmentSummary {
    id: String,
    name: String,
    size: u64,
    updated_at: Option<DateTime<Utc>>,
}

async fn list_segments(State(engine): State<Arc<MembershipEngine>>) -> Result<Json<serde_json::Value>, ApiError> {
    let stats = engine.segment_stats().await?;
    let segments: Vec<SegmentSummary> = stats
        .into_iter()
        .map(|s| SegmentSummary {
            name: engine.segments().segment(&s.segment_id).map(|seg| seg.name.clone()).unwrap_or_default(),
            id: s.segment_id,
            size: s.size,
            updated_at: s.updated_at,
        })
        .collect();
    Ok(Json(json!({ "segments": segments })))
}

async fn segment_members(
    State(engine): State<Arc<MembershipEngine>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if engine.segments().segment(&id).is_none() {
        return Err(MembershipError::UnknownSegment(id).into());
    }
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                ));
            }
        },
    };
    let after = query.get("after").map(String::as_str).filter(|a| !a.is_empty());
    let members =
        engine.store().reads.segment_members(&id, after, limit).await.map_err(|e| ApiError::store_unavailable(&e))?;
    let next_after = if members.len() == limit as usize { members.last().map(|m| m.to_string()) } else { None };
    Ok(Json(json!({ "segment": id, "line_user_ids": members, "next_after": next_after })))
}
