//! The HTTP API of the booking service (reached through the gateway, which sets the identity
//! headers): bookings and rooms.

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use chrono::{DateTime, Duration, Utc};
use platform::{
    contract::RoomId,
    db::Db,
    http::{ApiJson, Identity, Problem},
    outbox::OutboxSignal,
    time::parse_client_time,
    trace::{self, TraceParent},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::{
    bookings::{self, BookingError, NewBooking},
    domain::{BookingStatus, Room, TimeSlot},
    store::{self, BookingFilter},
};

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub outbox: OutboxSignal,
}

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/bookings", get(list_bookings).post(create_booking))
        .route("/bookings/{id}", get(get_booking).delete(cancel_booking))
        .route("/rooms", get(list_rooms).post(create_room))
        .route("/rooms/{id}", get(get_room))
        .route("/rooms/{id}/availability", get(availability))
        .with_state(state)
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
            BookingError::Database(e) => e.into(),
        }
    }
}

/// A room id as JSON number or numeric string (the original clients sent both).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RoomIdInput {
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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBookingRequest {
    room_id: RoomIdInput,
    use_start_dtm: String,
    use_end_dtm: String,
    /// Accepted for the original clients; must be the caller unless the caller is an admin.
    booking_user_id: Option<String>,
}

fn trace_of(headers: &HeaderMap) -> TraceParent {
    TraceParent::continue_or_start(headers.get(trace::HEADER).and_then(|v| v.to_str().ok()))
}

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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    status: Option<String>,
    room_id: Option<RoomId>,
    booking_user_id: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn list_bookings(
    State(state): State<AppState>,
    who: Identity,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let status = q
        .status
        .map(|s| {
            BookingStatus::parse(&s).ok_or_else(|| {
                Problem::bad_request(format!(
                    "status `{s}` is not one of BOOKED, CONFIRMED, CANCELLED"
                ))
            })
        })
        .transpose()?;
    let user = if who.is_admin() {
        q.booking_user_id
    } else {
        Some(who.user_id.clone())
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) || q.offset.is_some_and(|o| o < 0) {
        return Err(Problem::bad_request(
            "limit must be 1..=1000 and offset >= 0",
        ));
    }
    let filter = BookingFilter {
        user,
        room: q.room_id,
        status,
        limit,
        offset: q.offset.unwrap_or(0),
    };
    Ok(Json(store::list_bookings(&state.db.pool, &filter).await?).into_response())
}

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
        |b| who.may_access(&b.booking_user_id),
    )
    .await?;
    Ok(Json(booking).into_response())
}

async fn list_rooms(State(state): State<AppState>) -> Result<Response, Problem> {
    Ok(Json(store::list_rooms(&state.db.pool).await?).into_response())
}

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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRoomRequest {
    id: Option<RoomId>,
    name: String,
    capacity: Option<i64>,
}

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
        None => store::next_room_id(&mut *tx).await?,
    };
    if store::get_room(&mut *tx, id).await?.is_some() {
        return Err(Problem::conflict(
            "room-exists",
            format!("room {id} already exists"),
        ));
    }
    let room = Room { id, name, capacity };
    match store::insert_room(&mut *tx, &room).await {
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

#[derive(Debug, Deserialize)]
struct AvailabilityQuery {
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Interval {
    #[serde(with = "platform::contract::rfc3339_utc")]
    start: DateTime<Utc>,
    #[serde(with = "platform::contract::rfc3339_utc")]
    end: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<BookingStatus>,
}

/// Busy and free intervals of a room within `[from, to)` (default: the next 24 hours).
async fn availability(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<AvailabilityQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
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
