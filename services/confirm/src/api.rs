//! The HTTP API of the confirm service: the admin's approval queue and decisions.

use axum::{
    extract::{Path, Query, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use std::sync::Arc;

use platform::{
    clock::Clock,
    db::Db,
    http::{ApiJson, Identity, Problem},
    outbox::OutboxSignal,
    trace::{self, TraceParent},
};
use serde::Deserialize;
use uuid::Uuid;

use crate::confirms::{self, ConfirmFilter, ConfirmStatus, DecisionError};

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub outbox: OutboxSignal,
    pub clock: Arc<dyn Clock>,
}

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/confirms", get(list))
        .route("/confirms/{id}", get(get_one).patch(decide))
        .with_state(state)
}

impl From<DecisionError> for Problem {
    fn from(e: DecisionError) -> Self {
        let detail = e.to_string();
        match e {
            DecisionError::NotFound(_) => Problem::not_found(detail),
            DecisionError::NotADecision => Problem::bad_request(detail),
            DecisionError::Closed(_) => Problem::conflict("confirm-closed", detail),
            DecisionError::Expired(_) => Problem::conflict("confirm-expired", detail),
            DecisionError::AlreadyDecided { .. } => Problem::conflict("confirm-decided", detail),
            DecisionError::Database(e) => e.into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    status: Option<String>,
    booking_id: Option<String>,
    include_closed: Option<bool>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    who: Identity,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    who.require_admin()?;
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let status = q
        .status
        .map(|s| {
            ConfirmStatus::parse(&s).ok_or_else(|| {
                Problem::bad_request(format!(
                    "status `{s}` is not one of BOOKED, CONFIRMED, DENIED"
                ))
            })
        })
        .transpose()?;
    let booking_id = q
        .booking_id
        .map(|b| {
            Uuid::parse_str(&b)
                .map_err(|_| Problem::bad_request(format!("bookingId `{b}` is not a UUID")))
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) || q.offset.is_some_and(|o| o < 0) {
        return Err(Problem::bad_request(
            "limit must be 1..=1000 and offset >= 0",
        ));
    }
    let filter = ConfirmFilter {
        status,
        booking_id,
        include_closed: q.include_closed.unwrap_or(booking_id.is_some()),
        limit,
        offset: q.offset.unwrap_or(0),
    };
    Ok(Json(confirms::list(&state.db, &filter).await?).into_response())
}

async fn get_one(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    who.require_admin()?;
    let id = parse_id(&id)?;
    let confirm = confirms::get(&state.db.pool, id)
        .await?
        .filter(|c| c.room_id.is_some())
        .ok_or(DecisionError::NotFound(id))?;
    Ok(Json(confirm).into_response())
}

#[derive(Debug, Deserialize)]
struct Decision {
    status: String,
    reason: Option<String>,
}

async fn decide(
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Decision>,
) -> Result<Response, Problem> {
    who.require_admin()?;
    let id = parse_id(&id)?;
    let decision = match ConfirmStatus::parse(&body.status) {
        Some(s @ (ConfirmStatus::Confirmed | ConfirmStatus::Denied)) => s,
        _ => {
            return Err(Problem::bad_request(format!(
                "status `{}` must be CONFIRMED or DENIED",
                body.status
            )))
        }
    };
    if body.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(Problem::bad_request(
            "reason is longer than 1000 characters",
        ));
    }
    let trace =
        TraceParent::continue_or_start(headers.get(trace::HEADER).and_then(|v| v.to_str().ok()));
    let confirm = confirms::decide(
        &state.db,
        &state.outbox,
        state.clock.as_ref(),
        id,
        decision,
        &who.user_id,
        body.reason,
        &trace,
    )
    .await?;
    Ok(Json(confirm).into_response())
}

fn parse_id(s: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(s).map_err(|_| Problem::not_found(format!("confirm {s} not found")))
}
