//! The HTTP API (reached through the gateway, which sets the identity headers):
//!
//! - `GET /notifications?bookingId=&status=&kind=&limit=&offset=`: newest first. Users see the
//!   mails sent to them as bookers; admins see everything, the admins' own mails included.
//!   Unknown parameters and values are 400 problems.
//! - `GET /notifications/{id}`: one record (404 for another user's).

use axum::{
    extract::{Path, State},
    response::{IntoResponse, Response},
    Json, Router,
};
use platform::{
    db::Db,
    http::{parse_choice, ApiQuery, Identity, Paging, Problem},
};
use serde::Deserialize;
use utoipa::OpenApi as _;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    domain::{Kind, Notification, Role, Status},
    store::{self, Filter},
};

/// The schemas of these routes' documentation; the paths come from `router`.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(Notification, Kind, Role, Status)))]
struct ApiDoc;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
}

/// The routes and their OpenAPI description, both made from the handlers' `#[utoipa::path]`:
/// nothing is served undocumented, and nothing is documented at a path it is not served at.
fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list))
        .routes(routes!(get_one))
}

pub fn routes(state: AppState) -> Router {
    let (routes, _) = router().split_for_parts();
    routes.with_state(state)
}

/// The OpenAPI description of [`routes`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    router().split_for_parts().1
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

fn names<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str) -> Vec<&'static str> {
    all.iter().map(|t| name(*t)).collect()
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
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, Problem> {
    let booking = q
        .booking_id
        .as_deref()
        .map(|b| {
            Uuid::parse_str(b.trim())
                .map_err(|_| Problem::bad_request(format!("bookingId `{b}` is not a booking id")))
        })
        .transpose()?;
    // Matched case-insensitively.
    let status = parse_choice(
        "status",
        q.status.as_deref(),
        |s| Status::parse(&s.trim().to_ascii_uppercase()),
        &names(&Status::ALL, Status::as_str),
    )?;
    let kind = parse_choice(
        "kind",
        q.kind.as_deref(),
        |k| Kind::parse(&k.trim().to_ascii_uppercase()),
        &names(&Kind::ALL, Kind::as_str),
    )?;
    let Paging { limit, offset } = Paging::new(q.limit, q.offset)?;
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
