//! The admin's view of sagas: `GET /sagas/{id}` (state, what it waits on, and its timeline) and
//! `GET /sagas?state=&olderThan=`.

use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use chrono::{DateTime, Utc};
use platform::{
    db::Db,
    http::{Identity, Problem},
    time::parse_client_time,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    saga::{BookingInfo, SagaState},
    store::{self, Step, StoredSaga},
};

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
}

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/sagas", get(list))
        .route("/sagas/{id}", get(get_one))
        .with_state(state)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SagaView {
    saga_id: Uuid,
    booking_id: Uuid,
    state: SagaState,
    settled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    awaiting: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    booking: Option<BookingInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    confirm_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_deadline: Option<String>,
    expiry_requested: bool,
    #[serde(with = "platform::contract::rfc3339_utc")]
    created_at: DateTime<Utc>,
    #[serde(with = "platform::contract::rfc3339_utc")]
    updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeline: Option<Vec<Step>>,
}

impl SagaView {
    fn new(s: StoredSaga, timeline: Option<Vec<Step>>) -> Self {
        SagaView {
            saga_id: s.saga.saga_id,
            booking_id: s.saga.booking_id,
            state: s.saga.state,
            settled: s.saga.state.is_settled(),
            awaiting: s.saga.awaiting(),
            confirm_id: s.saga.confirm_id,
            outcome: s.saga.outcome.clone(),
            approval_deadline: s.saga.approval_deadline.map(platform::time::format_utc),
            expiry_requested: s.saga.expiry_requested,
            booking: s.saga.booking,
            created_at: s.created_at,
            updated_at: s.updated_at,
            timeline,
        }
    }
}

async fn get_one(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    who.require_admin()?;
    let not_found = || Problem::not_found(format!("no saga for {id}"));
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let saga = store::find(&state.db, uuid).await?.ok_or_else(not_found)?;
    let timeline = store::timeline(&state.db, saga.saga.booking_id).await?;
    Ok(Json(SagaView::new(saga, Some(timeline))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    state: Option<String>,
    /// Only sagas not updated since this time (RFC 3339), e.g. to find those waiting too long.
    older_than: Option<String>,
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
    let saga_state = q
        .state
        .map(|s| {
            SagaState::parse(&s).ok_or_else(|| {
                let allowed: Vec<&str> = SagaState::ALL.iter().map(|s| s.as_str()).collect();
                Problem::bad_request(format!("state `{s}` is not one of {}", allowed.join(", ")))
            })
        })
        .transpose()?;
    let older_than = q
        .older_than
        .map(|t| parse_client_time(&t).map_err(|e| Problem::bad_request(format!("olderThan: {e}"))))
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) || q.offset.is_some_and(|o| o < 0) {
        return Err(Problem::bad_request(
            "limit must be 1..=1000 and offset >= 0",
        ));
    }
    let sagas = store::list(
        &state.db,
        saga_state,
        older_than,
        limit,
        q.offset.unwrap_or(0),
    )
    .await?;
    let views: Vec<SagaView> = sagas.into_iter().map(|s| SagaView::new(s, None)).collect();
    Ok(Json(views).into_response())
}
