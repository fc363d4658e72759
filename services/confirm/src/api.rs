//! The HTTP API of the confirm service: the admin's approval queue and decisions.

use axum::{
    extract::{Path, State},
    http::HeaderMap,
    response::{IntoResponse, Response},
    Json, Router,
};
use std::sync::Arc;

use platform::{
    clock::Clock,
    db::Db,
    http::{parse_choice, ApiJson, ApiQuery, Identity, Paging, Problem},
    outbox::OutboxSignal,
    trace::TraceParent,
};
use serde::Deserialize;
use utoipa::OpenApi as _;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::confirms::{self, Confirm, ConfirmFilter, ConfirmStatus, DecisionError};

/// The schemas of these routes' documentation; the paths come from `router`.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(Confirm, ConfirmStatus)))]
struct ApiDoc;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub outbox: OutboxSignal,
    pub clock: Arc<dyn Clock>,
}

/// The routes and their OpenAPI description, both made from the handlers' `#[utoipa::path]`:
/// nothing is served undocumented, and nothing is documented at a path it is not served at.
fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list))
        .routes(routes!(get_one, decide))
}

pub fn routes(state: AppState) -> Router {
    let (routes, _) = router().split_for_parts();
    routes.with_state(state)
}

/// The OpenAPI description of [`routes`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    router().split_for_parts().1
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `BOOKED` (waiting for a decision), `CONFIRMED` or `DENIED`.
    status: Option<String>,
    /// Only this booking's request (closed ones included unless `includeClosed=false`).
    #[param(value_type = Option<Uuid>)]
    booking_id: Option<String>,
    /// Also list requests closed because their booking was cancelled.
    include_closed: Option<bool>,
    /// 1..=1000, default 100.
    limit: Option<i64>,
    /// Default 0.
    offset: Option<i64>,
}

/// The approval queue (admin), oldest first.
#[utoipa::path(
    get,
    operation_id = "listConfirms",
    path = "/confirms",
    tag = "confirms",
    params(ListQuery),
    responses(
        (status = 200, description = "The approval requests", body = [Confirm]),
        (status = 400, description = "An unknown status, a bookingId that is not a UUID, or limit / offset out of range"),
        (status = 403, description = "The caller is not an admin"),
    )
)]
async fn list(
    State(state): State<AppState>,
    who: Identity,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, Problem> {
    who.require_admin()?;
    let status = parse_choice(
        "status",
        q.status.as_deref(),
        ConfirmStatus::parse,
        &["BOOKED", "CONFIRMED", "DENIED"],
    )?;
    let booking_id = q
        .booking_id
        .map(|b| {
            Uuid::parse_str(&b)
                .map_err(|_| Problem::bad_request(format!("bookingId `{b}` is not a UUID")))
        })
        .transpose()?;
    let paging = Paging::new(q.limit, q.offset)?;
    let filter = ConfirmFilter {
        status,
        booking_id,
        include_closed: q.include_closed.unwrap_or(booking_id.is_some()),
        limit: paging.limit,
        offset: paging.offset,
    };
    Ok(Json(confirms::list(&state.db, &filter).await?).into_response())
}

/// One approval request (admin).
#[utoipa::path(
    get,
    operation_id = "getConfirm",
    path = "/confirms/{id}",
    tag = "confirms",
    params(("id" = Uuid, Path, description = "The approval request's id")),
    responses(
        (status = 200, description = "The approval request", body = Confirm),
        (status = 403, description = "The caller is not an admin"),
        (status = 404, description = "No such approval request"),
    )
)]
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = ConfirmDecision)]
struct Decision {
    /// `CONFIRMED` (approve) or `DENIED` (deny: the booking is cancelled and its slot freed).
    #[schema(example = "CONFIRMED")]
    status: String,
    /// Why, shown to the booker; at most 1000 characters.
    reason: Option<String>,
}

/// Approves or denies an approval request (admin). Repeating the same decision answers 200
/// with the request unchanged.
#[utoipa::path(
    patch,
    operation_id = "decideConfirm",
    path = "/confirms/{id}",
    tag = "confirms",
    params(("id" = Uuid, Path, description = "The approval request's id")),
    request_body = Decision,
    responses(
        (status = 200, description = "The decided request", body = Confirm),
        (status = 400, description = "A status other than CONFIRMED or DENIED, or a reason over 1000 characters"),
        (status = 403, description = "The caller is not an admin"),
        (status = 404, description = "No such approval request"),
        (status = 409, description = "Closed because the booking was cancelled (`confirm-closed`), past its deadline (`confirm-expired`), or decided otherwise (`confirm-decided`)"),
    )
)]
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
    let trace = TraceParent::from_http(&headers);
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
