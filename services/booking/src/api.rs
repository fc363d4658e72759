//! The HTTP API of the booking service (reached through the gateway, which sets the identity
//! headers): bookings and rooms.

use axum::{
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json, Router,
};
use chrono::{DateTime, Duration, Utc};
use platform::{
    contract::RoomId,
    db::Db,
    http::{parse_choice, ApiJson, ApiQuery, Identity, Paging, Problem},
    outbox::OutboxSignal,
    time::parse_client_time,
    trace::TraceParent,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::OpenApi as _;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    bookings::{self, BookingError, NewBooking},
    domain::{Booking, BookingStatus, Room, TimeSlot},
    store::{self, BookingFilter},
};

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub outbox: OutboxSignal,
}

/// The schemas of these routes' documentation; the paths come from `router`.
#[derive(utoipa::OpenApi)]
#[openapi(components(schemas(Booking, Room, BookingStatus)))]
struct ApiDoc;

/// The routes and their OpenAPI description, both made from the handlers' `#[utoipa::path]`:
/// nothing is served undocumented, and nothing is documented at a path it is not served at.
fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_bookings, create_booking))
        .routes(routes!(get_booking, cancel_booking))
        .routes(routes!(list_rooms, create_room))
        .routes(routes!(get_room))
        .routes(routes!(availability))
}

pub fn routes(state: AppState) -> Router {
    let (routes, _) = router().split_for_parts();
    routes.with_state(state)
}

/// The OpenAPI description of [`routes`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    router().split_for_parts().1
}

impl From<BookingError> for Problem {
    fn from(e: BookingError) -> Self {
        let detail = e.to_string();
        match e {
            BookingError::UnknownRoom(_) | BookingError::NotFound(_) => Problem::not_found(detail),
            BookingError::Overlap { start, end, .. } => {
                Problem::conflict("booking-overlap", detail)
                    .with_extra(json!({"conflictStart": start, "conflictEnd": end}))
            }
            BookingError::IdempotencyKeyReused => {
                Problem::conflict("idempotency-key-reused", detail)
            }
            BookingError::AlreadyCancelled(_) => Problem::conflict("booking-cancelled", detail),
            BookingError::AlreadyStarted(_) => Problem::conflict("booking-started", detail),
            // Still colliding after its retries: the caller may safely try again.
            BookingError::ChangedConcurrently(_) | BookingError::SlotFreed(_) => {
                Problem::unavailable(detail, 1)
            }
            BookingError::Database(e) => e.into(),
        }
    }
}

/// A room id as JSON number or numeric string (the original clients sent both).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[schema(example = 101)]
enum RoomIdInput {
    #[schema(value_type = i64)]
    Number(RoomId),
    Text(String),
}

impl RoomIdInput {
    fn parse(self) -> Result<RoomId, Problem> {
        match self {
            RoomIdInput::Number(n) => Ok(n),
            RoomIdInput::Text(s) => s
                .trim()
                .parse()
                .map_err(|_| Problem::bad_request(format!("roomId `{s}` is not a room number"))),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreateBookingRequest {
    room_id: RoomIdInput,
    /// RFC 3339, or `yyyyMMddHHmmss` read as UTC; in the future.
    #[schema(example = "2030-12-01T09:00:00Z")]
    use_start_dtm: String,
    /// After `useStartDtm`; same formats.
    #[schema(example = "20301201100000")]
    use_end_dtm: String,
    /// Accepted for the original clients; must be the caller unless the caller is an admin.
    booking_user_id: Option<String>,
}

fn trace_of(headers: &HeaderMap) -> TraceParent {
    TraceParent::from_http(headers)
}

/// Books a room for the caller: the booking starts `BOOKED` and waits for an admin's approval.
#[utoipa::path(
    post,
    operation_id = "createBooking",
    path = "/bookings",
    tag = "bookings",
    request_body = CreateBookingRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "A retried POST with the same key (at most 200 characters) answers the same booking")),
    responses(
        (status = 201, description = "Booked (header `Idempotent-Replayed: true` when answered from an earlier POST with the same key)", body = Booking),
        (status = 400, description = "Bad input: unknown fields' types, a time that does not parse, the end not after the start, or a start in the past"),
        (status = 403, description = "Booking for another user without the admin role"),
        (status = 404, description = "No such room"),
        (status = 409, description = "The slot overlaps a live booking (`booking-overlap`, with `conflictStart` / `conflictEnd`), or the Idempotency-Key was used for a different booking"),
    )
)]
async fn create_booking(
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateBookingRequest>,
) -> Result<Response, Problem> {
    let room_id = req.room_id.parse()?;
    let start = parse_client_time(&req.use_start_dtm)
        .map_err(|e| Problem::bad_request(format!("useStartDtm: {e}")))?;
    let end = parse_client_time(&req.use_end_dtm)
        .map_err(|e| Problem::bad_request(format!("useEndDtm: {e}")))?;
    let slot = TimeSlot::new(start, end).map_err(Problem::bad_request)?;
    if slot.start() <= Utc::now() {
        return Err(Problem::bad_request("useStartDtm is in the past"));
    }
    let (user_id, user_email) = match req.booking_user_id {
        Some(u) if u != who.user_id => {
            who.require_admin()
                .map_err(|_| Problem::forbidden("you can only book for yourself"))?;
            (u, None)
        }
        _ => (who.user_id.clone(), who.email.clone()),
    };
    let idempotency_key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| Problem::bad_request("Idempotency-Key must be visible ASCII"))?
        .filter(|k| !k.is_empty());
    if idempotency_key.as_ref().is_some_and(|k| k.len() > 200) {
        return Err(Problem::bad_request(
            "Idempotency-Key is longer than 200 characters",
        ));
    }
    let created = bookings::create(
        &state.db,
        &state.outbox,
        NewBooking {
            room_id,
            slot,
            user_id,
            user_email,
            idempotency_key,
        },
        &trace_of(&headers),
    )
    .await?;
    let mut response = (StatusCode::CREATED, Json(&created.booking)).into_response();
    if created.replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            "true".parse().expect("static header"),
        );
    }
    Ok(response)
}

/// One booking (another user's: 404).
#[utoipa::path(
    get,
    operation_id = "getBooking",
    path = "/bookings/{id}",
    tag = "bookings",
    params(("id" = Uuid, Path, description = "The booking's id")),
    responses(
        (status = 200, description = "The booking and its status", body = Booking),
        (status = 404, description = "No such booking, or not the caller's"),
    )
)]
async fn get_booking(
    State(state): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = parse_id(&id)?;
    let booking = store::get_booking(&state.db.pool, id)
        .await?
        .filter(|b| who.may_access(&b.booking_user_id))
        .ok_or(BookingError::NotFound(id))?;
    Ok(Json(booking).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `BOOKED`, `CONFIRMED` or `CANCELLED`.
    status: Option<String>,
    #[param(value_type = Option<i64>)]
    room_id: Option<RoomId>,
    /// Whose bookings (admins only; users always see their own).
    booking_user_id: Option<String>,
    /// 1..=1000, default 100.
    limit: Option<i64>,
    /// Default 0.
    offset: Option<i64>,
}

/// The caller's bookings (an admin's: everyone's), newest first.
#[utoipa::path(
    get,
    operation_id = "listBookings",
    path = "/bookings",
    tag = "bookings",
    params(ListQuery),
    responses(
        (status = 200, description = "The bookings", body = [Booking]),
        (status = 400, description = "An unknown status, or limit / offset out of range"),
    )
)]
async fn list_bookings(
    State(state): State<AppState>,
    who: Identity,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, Problem> {
    let status = parse_choice(
        "status",
        q.status.as_deref(),
        BookingStatus::parse,
        &["BOOKED", "CONFIRMED", "CANCELLED"],
    )?;
    let paging = Paging::new(q.limit, q.offset)?;
    let user = if who.is_admin() {
        q.booking_user_id
    } else {
        Some(who.user_id.clone())
    };
    let filter = BookingFilter {
        user,
        room: q.room_id,
        status,
        limit: paging.limit,
        offset: paging.offset,
    };
    Ok(Json(store::list_bookings(&state.db.pool, &filter).await?).into_response())
}

/// Cancels a booking: the slot is freed and its saga closes the approval request.
#[utoipa::path(
    delete,
    operation_id = "cancelBooking",
    path = "/bookings/{id}",
    tag = "bookings",
    params(("id" = Uuid, Path, description = "The booking's id")),
    responses(
        (status = 200, description = "The booking, now `CANCELLED`", body = Booking),
        (status = 404, description = "No such booking, or not the caller's"),
        (status = 409, description = "Already cancelled (`booking-cancelled`) or already started (`booking-started`)"),
    )
)]
async fn cancel_booking(
    State(state): State<AppState>,
    who: Identity,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = parse_id(&id)?;
    let detail = (who.is_admin()).then(|| format!("cancelled by {}", who.user_id));
    let booking = bookings::cancel_by_user(
        &state.db,
        &state.outbox,
        id,
        detail,
        &trace_of(&headers),
        move |b| who.may_access(&b.booking_user_id),
    )
    .await?;
    Ok(Json(booking).into_response())
}

/// Every room.
#[utoipa::path(
    get,
    operation_id = "listRooms",
    path = "/rooms",
    tag = "rooms",
    responses((status = 200, description = "The rooms", body = [Room]))
)]
async fn list_rooms(State(state): State<AppState>) -> Result<Response, Problem> {
    Ok(Json(store::list_rooms(&state.db.pool).await?).into_response())
}

/// One room.
#[utoipa::path(
    get,
    operation_id = "getRoom",
    path = "/rooms/{id}",
    tag = "rooms",
    params(("id" = i64, Path, description = "The room's number")),
    responses(
        (status = 200, description = "The room", body = Room),
        (status = 404, description = "No such room"),
    )
)]
async fn get_room(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = parse_room(&id)?;
    let room = store::get_room(&state.db.pool, id)
        .await?
        .ok_or(BookingError::UnknownRoom(id))?;
    Ok(Json(room).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreateRoomRequest {
    /// The room's number; the next free one when absent.
    #[schema(value_type = Option<i64>)]
    id: Option<RoomId>,
    /// 1 to 100 characters.
    name: String,
    /// 1..=10000 people, default 8.
    capacity: Option<i64>,
}

/// Adds a room (admin).
#[utoipa::path(
    post,
    operation_id = "createRoom",
    path = "/rooms",
    tag = "rooms",
    request_body = CreateRoomRequest,
    responses(
        (status = 201, description = "The new room", body = Room),
        (status = 400, description = "A name, capacity or id out of range"),
        (status = 403, description = "The caller is not an admin"),
        (status = 409, description = "A room with this id exists (`room-exists`)"),
    )
)]
async fn create_room(
    State(state): State<AppState>,
    who: Identity,
    ApiJson(req): ApiJson<CreateRoomRequest>,
) -> Result<Response, Problem> {
    who.require_admin()?;
    let name = req.name.trim().to_string();
    if name.is_empty() || name.len() > 100 {
        return Err(Problem::bad_request("name must be 1 to 100 characters"));
    }
    let capacity = req.capacity.unwrap_or(8);
    if !(1..=10_000).contains(&capacity) {
        return Err(Problem::bad_request("capacity must be between 1 and 10000"));
    }
    if req.id.is_some_and(|id| id <= 0) {
        return Err(Problem::bad_request("id must be a positive number"));
    }
    let mut tx = state.db.begin().await?;
    let id = match req.id {
        Some(id) => id,
        None => store::next_room_id(&mut tx).await?,
    };
    if store::get_room(&mut tx, id).await?.is_some() {
        return Err(Problem::conflict(
            "room-exists",
            format!("room {id} already exists"),
        ));
    }
    let room = Room { id, name, capacity };
    match store::insert_room(&mut tx, &room).await {
        Ok(()) => {}
        // Another admin created the same id a moment ago.
        Err(e) if platform::db::is_conflict(&e) => {
            return Err(Problem::conflict(
                "room-exists",
                format!("room {id} already exists"),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(room)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AvailabilityQuery {
    /// Start of the window (RFC 3339 or yyyyMMddHHmmss); default now.
    from: Option<String>,
    /// End of the window, at most 62 days after `from`; default 24 hours after it.
    to: Option<String>,
}

/// A room's busy and free intervals within `[from, to)`.
#[derive(utoipa::ToSchema)]
#[schema(as = RoomAvailability, rename_all = "camelCase")]
#[allow(dead_code)] // Documents the JSON `availability` builds.
struct Availability {
    #[schema(value_type = i64)]
    room_id: RoomId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// Live bookings, with their status.
    busy: Vec<Interval>,
    /// The gaps between them.
    free: Vec<Interval>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = RoomInterval)]
struct Interval {
    #[serde(with = "platform::contract::rfc3339_utc")]
    start: DateTime<Utc>,
    #[serde(with = "platform::contract::rfc3339_utc")]
    end: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<BookingStatus>,
}

/// Busy and free intervals of a room within `[from, to)` (default: the next 24 hours).
#[utoipa::path(
    get,
    operation_id = "getRoomAvailability",
    path = "/rooms/{id}/availability",
    tag = "rooms",
    params(("id" = i64, Path, description = "The room's number"), AvailabilityQuery),
    responses(
        (status = 200, description = "Busy and free intervals", body = Availability),
        (status = 400, description = "A time that does not parse, or a window that is empty or longer than 62 days"),
        (status = 404, description = "No such room"),
    )
)]
async fn availability(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<AvailabilityQuery>,
) -> Result<Response, Problem> {
    let id = parse_room(&id)?;
    let parse = |s: &Option<String>, name: &str| {
        s.as_deref()
            .map(parse_client_time)
            .transpose()
            .map_err(|e| Problem::bad_request(format!("{name}: {e}")))
    };
    let from = parse(&q.from, "from")?.unwrap_or_else(Utc::now);
    let to = parse(&q.to, "to")?.unwrap_or(from + Duration::hours(24));
    if to <= from || to - from > Duration::days(62) {
        return Err(Problem::bad_request(
            "`to` must be after `from`, at most 62 days later",
        ));
    }
    store::get_room(&state.db.pool, id)
        .await?
        .ok_or(BookingError::UnknownRoom(id))?;
    let busy = store::busy_slots(&state.db.pool, id, from, to).await?;
    let mut free = Vec::new();
    let mut cursor = from;
    for (start, end, _) in &busy {
        if *start > cursor {
            free.push(Interval {
                start: cursor,
                end: *start,
                status: None,
            });
        }
        cursor = cursor.max(*end);
    }
    if cursor < to {
        free.push(Interval {
            start: cursor,
            end: to,
            status: None,
        });
    }
    let busy: Vec<Interval> = busy
        .into_iter()
        .map(|(start, end, status)| Interval {
            start,
            end,
            status: Some(status),
        })
        .collect();
    Ok(Json(json!({
        "roomId": id,
        "from": platform::time::format_utc(from),
        "to": platform::time::format_utc(to),
        "busy": busy,
        "free": free,
    }))
    .into_response())
}

fn parse_id(s: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(s).map_err(|_| Problem::not_found(format!("booking {s} not found")))
}

fn parse_room(s: &str) -> Result<RoomId, Problem> {
    s.parse()
        .map_err(|_| Problem::not_found(format!("room {s} does not exist")))
}
