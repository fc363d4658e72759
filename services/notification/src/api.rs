//! The HTTP API (reached through the gateway, which sets the identity headers):
//!
//! - `GET /notifications?bookingId=&status=&kind=&limit=&offset=`: newest first. Users see the
//!   mails sent to them as bookers; admins see everything, the admins' own mails included.
//!   Unknown parameters and values are 400 problems.
//! - `GET /notifications/{id}`: one record (404 for another user's).

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use platform::{
    db::Db,
    http::{Identity, Problem},
};
use serde::Deserialize;
use uuid::Uuid;

use crate::{
    domain::{Kind, Notification, Role, Status},
    store::{self, Filter},
};

/// The OpenAPI description of these routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, get_one),
    components(schemas(Notification, Kind, Role, Status))
)]
pub struct ApiDoc;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
}

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/notifications", get(list))
        .route("/notifications/{id}", get(get_one))
        .with_state(state)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this booking's mail.
    #[param(value_type = Option<Uuid>)]
    booking_id: Option<String>,
    /// Where delivery stands: `WAITING`, `PENDING`, `SENT`, `FAILED` or `SKIPPED`.
    status: Option<String>,
    /// What the mail is about: `BOOKED`, `CONFIRMED`, `DENIED`, `CANCELLED`, `EXPIRED` or
    /// `APPROVAL_REQUESTED`.
    kind: Option<String>,
    /// 1..=1000, default 100.
    limit: Option<i64>,
    /// Default 0.
    offset: Option<i64>,
}

fn one_of<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str) -> String {
    all.iter().map(|t| name(*t)).collect::<Vec<_>>().join(", ")
}

/// The mail records, newest first: a user sees the mail sent to them as booker, an admin all.
#[utoipa::path(
    get,
    operation_id = "listNotifications",
    path = "/notifications",
    tag = "notifications",
    params(ListQuery),
    responses(
        (status = 200, description = "The records: recipient, subject, the booking, delivery state and attempts", body = [Notification]),
        (status = 400, description = "An unknown parameter or value, or limit / offset out of range"),
    )
)]
async fn list(
    State(state): State<AppState>,
    who: Identity,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let booking = q
        .booking_id
        .as_deref()
        .map(|b| {
            Uuid::parse_str(b.trim())
                .map_err(|_| Problem::bad_request(format!("bookingId `{b}` is not a booking id")))
        })
        .transpose()?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            Status::parse(&s.trim().to_ascii_uppercase()).ok_or_else(|| {
                Problem::bad_request(format!(
                    "status `{s}` is not one of {}",
                    one_of(&Status::ALL, Status::as_str)
                ))
            })
        })
        .transpose()?;
    let kind = q
        .kind
        .as_deref()
        .map(|k| {
            Kind::parse(&k.trim().to_ascii_uppercase()).ok_or_else(|| {
                Problem::bad_request(format!(
                    "kind `{k}` is not one of {}",
                    one_of(&Kind::ALL, Kind::as_str)
                ))
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    let offset = q.offset.unwrap_or(0);
    if !(1..=1000).contains(&limit) || offset < 0 {
        return Err(Problem::bad_request(
            "limit must be 1..=1000 and offset >= 0",
        ));
    }
    let filter = Filter {
        owner: (!who.is_admin()).then(|| who.user_id.clone()),
        booking,
        status,
        kind,
        limit,
        offset,
    };
    Ok(Json(store::list(&state.db.pool, &filter).await?).into_response())
}

/// One mail record (another user's: 404).
#[utoipa::path(
    get,
    operation_id = "getNotification",
    path = "/notifications/{id}",
    tag = "notifications",
    params(("id" = Uuid, Path, description = "The record's id")),
    responses(
        (status = 200, description = "The record", body = Notification),
        (status = 404, description = "No such record, or not the caller's"),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found(format!("notification {id} not found"));
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let n = store::get(&state.db.pool, uuid)
        .await?
        .filter(|n| {
            who.is_admin()
                || (n.recipient_role == Role::Booker
                    && n.booking_user_id.as_deref() == Some(who.user_id.as_str()))
        })
        .ok_or_else(not_found)?;
    Ok(Json(n).into_response())
}
