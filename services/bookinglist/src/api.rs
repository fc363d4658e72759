//! The HTTP API of the booking list (reached through the gateway, which sets the identity
//! headers). Users see their own rows, admins see all.
//!
//! | call | who | answer |
//! |---|---|---|
//! | `GET /bookingLists?bookingUserId&roomId&bookingStatus&confirmStatus&from&to&sort&page&size` | user / admin | `{items, page, size, total, totalPages, sort}` |
//! | `GET /bookingLists/{bookingId}` | owner / admin | the row |
//! | `GET /bookingLists/stream?bookingUserId&roomId&sagaState` | user / admin | SSE: `ready`, then `bookingList` events (a row each, `id` = change number) |
//! | `POST /bookingLists/rebuild` | admin | 202 and the rebuild's status; 409 while one runs |
//! | `GET /bookingLists/rebuild` | admin | the latest rebuild's status |
//! | `GET /bookingLists/lag` | anyone | the projection's position against the event streams |

use std::{convert::Infallible, time::Duration};

use async_nats::jetstream;
use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{
        sse::{Event, KeepAlive, Sse},
        IntoResponse, Response,
    },
    Json, Router,
};
use futures::StreamExt as _;
use platform::{
    db::Db,
    http::{Identity, Problem},
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi as _;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    feed::{Feed, FeedItem},
    lag,
    projection::BookingRow,
    query::{BadParameter, FeedFilter, ListQuery},
    rebuild::{self, BeginError, Rebuild, RebuildStatus},
    store,
};

/// The schemas of these routes' documentation; the paths come from `router`.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(BookingListPage, BookingRow, RebuildStatus)))]
struct ApiDoc;

/// One page of `GET /bookingLists`.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)] // Documents the JSON `list` builds.
struct BookingListPage {
    items: Vec<BookingRow>,
    /// From 1.
    page: u32,
    size: u32,
    /// Rows matching the filters, on all pages.
    total: i64,
    total_pages: i64,
    /// As given, e.g. `-bookingDtm`.
    sort: String,
}

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub js: jetstream::Context,
    pub feed: Feed,
    /// Hands begun rebuilds to the worker that replays them.
    pub rebuilds: mpsc::Sender<Rebuild>,
    /// Cancelled when the service stops: ends the live feeds, so shutdown need not wait on them.
    pub cancel: CancellationToken,
}

/// The routes and their OpenAPI description, both made from the handlers' `#[utoipa::path]`:
/// nothing is served undocumented, and nothing is documented at a path it is not served at.
fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list))
        .routes(routes!(stream))
        .routes(routes!(lag))
        .routes(routes!(rebuild_status, start_rebuild))
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

type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn pairs(query: Pairs) -> Result<Vec<(String, String)>, Problem> {
    query
        .map(|Query(p)| p)
        .map_err(|e| Problem::bad_request(e.body_text()))
}

impl From<BadParameter> for Problem {
    fn from(e: BadParameter) -> Self {
        Problem::bad_request(e.detail).with_extra(json!({
            "parameter": e.parameter,
            "allowed": e.allowed,
        }))
    }
}

/// Holds a non-admin to their own rows: no user filter means "mine", another user's is refused.
fn own_rows(who: &Identity, requested: Option<String>) -> Result<Option<String>, Problem> {
    if who.is_admin() {
        return Ok(requested);
    }
    match requested {
        Some(u) if u != who.user_id => Err(Problem::forbidden(
            "you can only see your own bookings; drop bookingUserId or use your own id",
        )),
        _ => Ok(Some(who.user_id.clone())),
    }
}

/// Bookings with their approval and saga status, filtered, sorted and paged (newest bookings
/// first). A user sees their own rows, an admin all.
#[utoipa::path(
    get,
    operation_id = "listBookingLists",
    path = "/bookingLists",
    tag = "bookingLists",
    params(
        ("bookingUserId" = Option<String>, Query, description = "Whose rows (a user may only give their own)"),
        ("roomId" = Option<i64>, Query),
        ("bookingStatus" = Option<String>, Query, description = "`BOOKED`, `CONFIRMED` or `CANCELLED`"),
        ("confirmStatus" = Option<String>, Query, description = "`BOOKED`, `CONFIRMED` or `DENIED`"),
        ("from" = Option<String>, Query, description = "Rows whose slot overlaps `[from, to)`: RFC 3339 or yyyyMMddHHmmss"),
        ("to" = Option<String>, Query, description = "End of that window"),
        ("sort" = Option<String>, Query, description = "`bookingDtm`, `useStartDtm`, `updatedAt` or `roomId`; a leading `-` sorts descending"),
        ("page" = Option<u32>, Query, description = "From 1"),
        ("size" = Option<u32>, Query, description = "Rows per page, 1..=200, default 20"),
    ),
    responses(
        (status = 200, description = "One page of rows", body = BookingListPage),
        (status = 400, description = "An unknown parameter or value (`parameter` and `allowed` say which)"),
        (status = 403, description = "A user asked for another user's rows"),
    )
)]
async fn list(
    State(state): State<AppState>,
    who: Identity,
    query: Pairs,
) -> Result<Response, Problem> {
    let mut q = ListQuery::parse(&pairs(query)?)?;
    q.filter.user = own_rows(&who, q.filter.user.take())?;
    let table = store::active_table(&state.db.pool).await?;
    let (items, total) = store::list(&state.db.pool, table, &q).await?;
    let size = i64::from(q.page.size);
    Ok(Json(json!({
        "items": items,
        "page": q.page.number,
        "size": q.page.size,
        "total": total,
        "totalPages": (total + size - 1) / size,
        "sort": q.sort.as_string(),
    }))
    .into_response())
}

/// One booking's row (another user's: 404).
#[utoipa::path(
    get,
    operation_id = "getBookingList",
    path = "/bookingLists/{bookingId}",
    tag = "bookingLists",
    params(("bookingId" = Uuid, Path, description = "The booking's id")),
    responses(
        (status = 200, description = "The row", body = BookingRow),
        (status = 404, description = "Not in the list (yet), or not the caller's"),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found(format!("booking {id} is not in the list"));
    let booking_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let table = store::active_table(&state.db.pool).await?;
    let row = store::get(&state.db.pool, table, booking_id)
        .await?
        .filter(|r| who.is_admin() || r.booking_user_id.as_deref() == Some(who.user_id.as_str()))
        .ok_or_else(not_found)?;
    Ok(Json(row).into_response())
}

/// Live changes as server-sent events: `ready`, then a `bookingList` event per changed row
/// (`id` is the change number; send it back as `Last-Event-ID` to resume after it).
#[utoipa::path(
    get,
    operation_id = "streamBookingLists",
    path = "/bookingLists/stream",
    tag = "bookingLists",
    params(
        ("bookingUserId" = Option<String>, Query, description = "Whose rows (a user may only give their own)"),
        ("roomId" = Option<i64>, Query),
        ("sagaState" = Option<String>, Query, description = "Only rows whose saga is in one of these states, comma-separated (e.g. `AWAITING_APPROVAL,COMPLETED`)"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this change"),
    ),
    responses(
        (status = 200, description = "An event stream; each `bookingList` event's data is a row", body = String, content_type = "text/event-stream"),
        (status = 400, description = "An unknown parameter or saga state, or a Last-Event-ID this feed did not send"),
        (status = 403, description = "A user asked for another user's rows"),
    )
)]
async fn stream(
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
    query: Pairs,
) -> Result<Response, Problem> {
    let mut filter = FeedFilter::parse(&pairs(query)?)?;
    filter.user = own_rows(&who, filter.user.take())?;
    let resume_after = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| Problem::bad_request("Last-Event-ID must be an id this feed sent"))
        })
        .transpose()?;
    let events = state
        .feed
        .subscribe(filter, resume_after, state.cancel.clone())
        .map(|item| {
            let event = match item {
                FeedItem::Ready { position } => Event::default()
                    .event("ready")
                    .id(position.to_string())
                    .retry(Duration::from_secs(3))
                    .data(json!({ "position": position }).to_string()),
                FeedItem::Change(change) => Event::default()
                    .event("bookingList")
                    .id(change.seq.to_string())
                    .data(serde_json::to_string(&change.row).expect("a row serialises")),
            };
            Ok::<_, Infallible>(event)
        });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// How far the list is behind the event streams.
#[utoipa::path(
    get,
    operation_id = "getBookingListLag",
    path = "/bookingLists/lag",
    tag = "bookingLists",
    responses(
        (status = 200, description = "`pending` (over all event streams), `caughtUp`, `streams` (per stream: `stream`, `consumer`, `streamLastSequence`, `appliedSequence`, `pending`), `rebuilding` and `generation`", body = Object),
        (status = 503, description = "The event stream cannot be reached"),
    )
)]
async fn lag(State(state): State<AppState>) -> Result<Response, Problem> {
    let lag = lag::measure(&state.js).await.map_err(|e| {
        tracing::warn!(error = %format!("{e:#}"), "cannot measure the projection lag");
        Problem::unavailable("the event stream cannot be reached; try again shortly", 2)
    })?;
    let rebuild = rebuild::status(&state.db).await?;
    let mut body = serde_json::to_value(lag).expect("lag serialises");
    body["rebuilding"] = json!(rebuild.is_running());
    body["generation"] = json!(rebuild.generation);
    Ok(Json(body).into_response())
}

/// The latest rebuild (admin).
#[utoipa::path(
    get,
    operation_id = "getBookingListRebuild",
    path = "/bookingLists/rebuild",
    tag = "bookingLists",
    responses(
        (status = 200, description = "The latest rebuild", body = RebuildStatus),
        (status = 403, description = "The caller is not an admin"),
    )
)]
async fn rebuild_status(State(state): State<AppState>, who: Identity) -> Result<Response, Problem> {
    who.require_admin()?;
    Ok(Json(rebuild::status(&state.db).await?).into_response())
}

/// Rebuilds the list from the start of the event stream into a new table that replaces the
/// current one when complete (admin).
#[utoipa::path(
    post,
    operation_id = "startBookingListRebuild",
    path = "/bookingLists/rebuild",
    tag = "bookingLists",
    responses(
        (status = 202, description = "Begun; its status", body = RebuildStatus),
        (status = 403, description = "The caller is not an admin"),
        (status = 409, description = "A rebuild is already running (`rebuild-running`)"),
    )
)]
async fn start_rebuild(State(state): State<AppState>, who: Identity) -> Result<Response, Problem> {
    who.require_admin()?;
    let (rebuild, status) = match rebuild::begin(&state.db).await {
        Ok(begun) => begun,
        Err(BeginError::AlreadyRunning(status)) => {
            return Err(Problem::conflict(
                "rebuild-running",
                "a rebuild is already running; its status is at GET /bookingLists/rebuild",
            )
            .with_extra(json!({ "rebuild": status })));
        }
        Err(BeginError::Database(e)) => return Err(e.into()),
    };
    tracing::info!(rebuild_id = %rebuild.id, by = %who.user_id, "rebuild requested");
    if state.rebuilds.send(rebuild.clone()).await.is_err() {
        rebuild::fail(&state.db, &rebuild, "the service is stopping").await?;
        return Err(Problem::unavailable("the service is stopping", 5));
    }
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}
