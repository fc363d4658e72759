//! The admin's view of sagas: `GET /sagas/{id}` (state, what it waits on, and its timeline) and
//! `GET /sagas?state=&olderThan=`.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
    Json, Router,
};
use chrono::{DateTime, Utc};
use platform::{
    clock::Clock,
    consumer::HandleError,
    db::Db,
    http::{parse_choice, ApiQuery, Identity, Paging, Problem},
    outbox::OutboxSignal,
    time::parse_client_time,
    trace::TraceParent,
};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi as _;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    handler::{self, Schedule},
    saga::{self, BookingInfo, NotApplicable, Policy, Saga, SagaState, Transition},
    store::{self, SagaFilter, Step, StoredSaga},
};

/// The schemas of these routes' documentation; the paths come from `router`.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(SagaView, SagaState, BookingInfo, Step)))]
struct ApiDoc;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub outbox: OutboxSignal,
    pub clock: Arc<dyn Clock>,
    pub policy: Policy,
}

/// The routes and their OpenAPI description, both made from the handlers' `#[utoipa::path]`:
/// nothing is served undocumented, and nothing is documented at a path it is not served at.
fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list))
        .routes(routes!(get_one))
        .routes(routes!(retry))
        .routes(routes!(compensate))
}

pub fn routes(state: AppState) -> Router {
    let (routes, _) = router().split_for_parts();
    routes.with_state(state)
}

/// The OpenAPI description of [`routes`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    router().split_for_parts().1
}

/// A booking's saga: where it stands, what it waits for, and (for one saga) its timeline.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Saga)]
struct SagaView {
    saga_id: Uuid,
    booking_id: Uuid,
    state: SagaState,
    settled: bool,
    /// What the saga waits for next, e.g. an admin's decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
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
    /// The command whose reply the saga waits for, how often it was sent and when it is next.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pending_command: Option<&'static str>,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_retry_at: Option<String>,
    /// Gave up retrying: an admin must retry or compensate it.
    stuck: bool,
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
            pending_command: s.saga.pending.as_ref().map(|b| b.type_name()),
            attempts: s.saga.attempts,
            next_retry_at: s.next_retry_at.map(platform::time::format_utc),
            stuck: s.saga.stuck,
            booking: s.saga.booking,
            created_at: s.created_at,
            updated_at: s.updated_at,
            timeline,
        }
    }
}

/// One saga with its timeline (admin).
#[utoipa::path(
    get,
    operation_id = "getSaga",
    path = "/sagas/{id}",
    tag = "sagas",
    params(("id" = Uuid, Path, description = "The saga's id or its booking's id")),
    responses(
        (status = 200, description = "The saga and its timeline of every message in and out", body = SagaView),
        (status = 403, description = "The caller is not an admin"),
        (status = 404, description = "No saga for this id"),
    )
)]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// e.g. `AWAITING_APPROVAL`, `COMPLETED`, `COMPENSATED`.
    state: Option<String>,
    /// Only sagas not updated since this time (RFC 3339), e.g. to find those waiting too long.
    older_than: Option<String>,
    /// Only sagas that gave up retrying (`true`) or did not (`false`).
    stuck: Option<bool>,
    /// 1..=1000, default 100.
    limit: Option<i64>,
    /// Default 0.
    offset: Option<i64>,
}

/// Sagas, without their timelines (admin).
#[utoipa::path(
    get,
    operation_id = "listSagas",
    path = "/sagas",
    tag = "sagas",
    params(ListQuery),
    responses(
        (status = 200, description = "The sagas", body = [SagaView]),
        (status = 400, description = "An unknown state, a time that does not parse, or limit / offset out of range"),
        (status = 403, description = "The caller is not an admin"),
    )
)]
async fn list(
    State(state): State<AppState>,
    who: Identity,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, Problem> {
    who.require_admin()?;
    let allowed: Vec<&str> = SagaState::ALL.iter().map(|s| s.as_str()).collect();
    let saga_state = parse_choice("state", q.state.as_deref(), SagaState::parse, &allowed)?;
    let older_than = q
        .older_than
        .map(|t| parse_client_time(&t).map_err(|e| Problem::bad_request(format!("olderThan: {e}"))))
        .transpose()?;
    let paging = Paging::new(q.limit, q.offset)?;
    let filter = SagaFilter {
        state: saga_state,
        older_than,
        stuck: q.stuck,
    };
    let sagas = store::list(&state.db, &filter, paging.limit, paging.offset).await?;
    let views: Vec<SagaView> = sagas.into_iter().map(|s| SagaView::new(s, None)).collect();
    Ok(Json(views).into_response())
}

/// `POST /sagas/{id}/retry`: send the pending command again now, with a fresh round of attempts.
#[utoipa::path(
    post,
    operation_id = "retrySaga",
    path = "/sagas/{id}/retry",
    tag = "sagas",
    params(("id" = Uuid, Path, description = "The saga's id or its booking's id")),
    responses(
        (status = 200, description = "The saga after the retry was sent", body = SagaView),
        (status = 403, description = "The caller is not an admin"),
        (status = 404, description = "No saga for this id"),
        (status = 409, description = "Nothing to retry in this state (`saga-not-applicable`)"),
        (status = 503, description = "The saga changed meanwhile; try again"),
    )
)]
async fn retry(
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    admin_step(&state, &who, &headers, &id, "Retry", saga::retry).await
}

/// `POST /sagas/{id}/compensate`: give up on the booking and undo it like a denial.
#[utoipa::path(
    post,
    operation_id = "compensateSaga",
    path = "/sagas/{id}/compensate",
    tag = "sagas",
    params(("id" = Uuid, Path, description = "The saga's id or its booking's id")),
    responses(
        (status = 200, description = "The saga, now compensating", body = SagaView),
        (status = 403, description = "The caller is not an admin"),
        (status = 404, description = "No saga for this id"),
        (status = 409, description = "Already settled or compensating (`saga-not-applicable`)"),
        (status = 503, description = "The saga changed meanwhile; try again"),
    )
)]
async fn compensate(
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    admin_step(&state, &who, &headers, &id, "Compensate", saga::compensate).await
}

async fn admin_step(
    state: &AppState,
    who: &Identity,
    headers: &HeaderMap,
    id: &str,
    operation: &str,
    step: fn(&Saga) -> Result<Transition, NotApplicable>,
) -> Result<Response, Problem> {
    who.require_admin()?;
    let not_found = || Problem::not_found(format!("no saga for {id}"));
    let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
    let booking_id = store::find(&state.db, uuid)
        .await?
        .ok_or_else(not_found)?
        .saga
        .booking_id;
    let mut tx = state.db.begin().await?;
    let stored = store::load(&mut tx, booking_id)
        .await?
        .ok_or_else(not_found)?;
    let transition =
        step(&stored.saga).map_err(|e| Problem::conflict("saga-not-applicable", e.0))?;
    let now = state.clock.now();
    let cause = Step {
        // Timelines record when things happened; the saga clock only decides deadlines.
        at: platform::time::now(),
        direction: "admin".into(),
        message_type: operation.into(),
        message_id: "-".into(),
        state: transition.saga.state.as_str().into(),
        note: Some(format!("by {}", who.user_id)),
    };
    let trace = TraceParent::from_http(headers);
    let when = Schedule {
        now,
        policy: &state.policy,
    };
    match handler::persist(
        &mut tx,
        Some(&stored),
        transition,
        cause,
        stored.saga.saga_id,
        &trace,
        when,
    )
    .await
    {
        Ok(()) => {}
        Err(HandleError::Retry(_)) => {
            return Err(Problem::unavailable(
                "the saga changed meanwhile; try again",
                1,
            ))
        }
        Err(HandleError::Park(reason)) => return Err(Problem::internal(&anyhow::anyhow!(reason))),
    }
    tx.commit().await?;
    state.outbox.notify();
    let saga = store::find(&state.db, booking_id)
        .await?
        .ok_or_else(not_found)?;
    let timeline = store::timeline(&state.db, booking_id).await?;
    Ok(Json(SagaView::new(saga, Some(timeline))).into_response())
}
