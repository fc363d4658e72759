//! SQL for rooms and bookings (the same statements on SQLite and PostgreSQL).

use chrono::{DateTime, Utc};
use platform::{
    contract::{CancelReason, RoomId},
    db::{AnyQuery, Conditions, Param, StatementTexts},
    time::{from_millis, to_millis},
};
use sqlx::{any::AnyRow, Any, Executor, Row as _};
use uuid::Uuid;

use crate::domain::{Booking, BookingStatus, Room, TimeSlot};

const BOOKING_COLUMNS: &str =
    "id, saga_id, room_id, booking_user_id, booking_user_email, start_ms, \
     end_ms, status, cancel_reason, cancel_detail, version, created_at, updated_at";

fn booking_from_row(row: &AnyRow) -> Result<Booking, sqlx::Error> {
    let uuid = |col: &str| -> Result<Uuid, sqlx::Error> {
        let s: String = row.try_get(col)?;
        Uuid::parse_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    let status: String = row.try_get("status")?;
    let reason: Option<String> = row.try_get("cancel_reason")?;
    Ok(Booking {
        id: uuid("id")?,
        saga_id: uuid("saga_id")?,
        room_id: row.try_get("room_id")?,
        booking_user_id: row.try_get("booking_user_id")?,
        booking_user_email: row.try_get("booking_user_email")?,
        use_start_dtm: from_millis(row.try_get("start_ms")?),
        use_end_dtm: from_millis(row.try_get("end_ms")?),
        status: BookingStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown status {status}").into()))?,
        cancel_reason: reason.as_deref().and_then(CancelReason::parse),
        cancel_detail: row.try_get("cancel_detail")?,
        version: row.try_get("version")?,
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
    })
}

pub async fn get_booking<'c, E: Executor<'c, Database = Any>>(
    db: E,
    id: Uuid,
) -> Result<Option<Booking>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(db)
    .await?
    .map(|r| booking_from_row(&r))
    .transpose()
}

pub async fn find_by_idempotency_key<'c, E: Executor<'c, Database = Any>>(
    db: E,
    user: &str,
    key: &str,
) -> Result<Option<Booking>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings WHERE booking_user_id = $1 AND idempotency_key = $2"
    ))
    .bind(user)
    .bind(key)
    .fetch_optional(db)
    .await?
    .map(|r| booking_from_row(&r))
    .transpose()
}

/// Live bookings of room `$1` overlapping `[$3, $2)`.
const OVERLAPPING: &str =
    "room_id = $1 AND status <> 'CANCELLED' AND $3 < end_ms AND +start_ms < $2";

/// The first live booking of room `$1` to end among those overlapping `[$3, $2)`.
///
/// The order is what keeps it on the index. With a bare `LIMIT 1`, PostgreSQL's generic plan
/// (the one a prepared statement settles on) expects dozens of overlaps and so a match within
/// the first few rows of a sequential scan, and chooses one; but a booking request usually
/// overlaps nothing, so that scan read the whole table on every request. In the index's order
/// the first match is the first index entry that qualifies, and no plan beats that.
fn first_overlap_query() -> String {
    format!("SELECT {BOOKING_COLUMNS} FROM bookings WHERE {OVERLAPPING} ORDER BY end_ms LIMIT 1")
}

/// A live booking of `room` overlapping `slot`, if any. Like every overlap query here it reads
/// the room's bookings ending after the slot starts (index `bookings_room_end`: the calendar
/// from then on, not the room's history); `+start_ms` keeps the planner off the start index.
pub async fn find_overlap<'c, E: Executor<'c, Database = Any>>(
    db: E,
    room: RoomId,
    slot: &TimeSlot,
) -> Result<Option<Booking>, sqlx::Error> {
    sqlx::query(&first_overlap_query())
        .bind(room)
        .bind(to_millis(slot.end()))
        .bind(to_millis(slot.start()))
        .fetch_optional(db)
        .await?
        .map(|r| booking_from_row(&r))
        .transpose()
}

/// SQLite: inserts `b` in the caller's transaction unless its room is unknown or its slot
/// overlaps a live booking of the room (see [`insert_if_free_sql`]); true if it was inserted.
pub async fn insert_booking_if_free(
    tx: &mut platform::db::Tx,
    b: &Booking,
    idempotency_key: Option<&str>,
) -> Result<bool, sqlx::Error> {
    static SQL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| insert_if_free_sql(false));
    let inserted = bind_booking(sqlx::query(&SQL), b, idempotency_key)
        .execute(&mut *tx)
        .await?;
    Ok(inserted.rows_affected() == 1)
}

/// PostgreSQL: the guarded insert, locking the room, and the event that announces it
/// (`event`, the outbox's values) in one statement, which is its own transaction — one round
/// trip where a transaction of two statements takes four. The room stays locked until the
/// statement ends.
pub async fn insert_booking_and_event_if_free(
    pool: &sqlx::AnyPool,
    b: &Booking,
    idempotency_key: Option<&str>,
    event: Vec<Param>,
) -> Result<bool, sqlx::Error> {
    static TEXTS: StatementTexts<usize> = StatementTexts::new();
    let sql = TEXTS.get(event.len(), || insert_with_event_sql(event.len()));
    let query = bind_booking(sqlx::query(sql), b, idempotency_key);
    let inserted = event
        .into_iter()
        .fold(query, |q, value| value.bind_to(q))
        .execute(pool)
        .await?;
    Ok(inserted.rows_affected() == 1)
}

fn bind_booking<'q>(
    q: AnyQuery<'q>,
    b: &'q Booking,
    idempotency_key: Option<&'q str>,
) -> AnyQuery<'q> {
    q.bind(b.room_id)
        .bind(to_millis(b.use_end_dtm))
        .bind(to_millis(b.use_start_dtm))
        .bind(b.id.to_string())
        .bind(b.saga_id.to_string())
        .bind(&b.booking_user_id)
        .bind(&b.booking_user_email)
        .bind(b.status.as_str())
        .bind(b.cancel_reason.map(CancelReason::as_str))
        .bind(&b.cancel_detail)
        .bind(b.version)
        .bind(to_millis(b.created_at))
        .bind(to_millis(b.updated_at))
        .bind(idempotency_key)
}

/// The guarded insert (locking the room), then the outbox row of its `event_columns` values
/// (`$15` on) if it inserted.
fn insert_with_event_sql(event_columns: usize) -> String {
    format!(
        "WITH booking AS ({} RETURNING id) INSERT INTO outbox ({}) SELECT {} FROM booking",
        insert_if_free_sql(true),
        platform::outbox::columns(),
        platform::db::params(15, event_columns)
    )
}

/// Inserts a booking unless its room is unknown or its slot overlaps a live booking of the
/// room, in one statement: `$1` room, `$2` end and `$3` start (as in `OVERLAPPING`), then the
/// other columns. With `lock_room` (PostgreSQL) it also locks the room's row until the
/// transaction ends, so bookings of one room are made one at a time: without that, requests
/// that all found the slot free insert together, and the overlap guard makes each wait for
/// another's uncommitted insert — cycles the server breaks one a second by aborting one of them
/// as a deadlock, which then tries again. (SQLite has one writer: they take turns anyway.)
///
/// The overlap check runs on the statement's snapshot, taken before the lock is granted: a
/// request that waited for the room may still insert over the booking it waited for, and the
/// database's own overlap guard then rejects it (`booking_overlap`), with the winner committed,
/// so without waiting on anyone. The check is a scalar subquery, not `NOT EXISTS`, so that it
/// keeps its `ORDER BY end_ms LIMIT 1` and with it the index (see `first_overlap_query`).
fn insert_if_free_sql(lock_room: bool) -> String {
    format!(
        "INSERT INTO bookings (room_id, end_ms, start_ms, id, saga_id, booking_user_id, \
         booking_user_email, status, cancel_reason, cancel_detail, version, created_at, \
         updated_at, idempotency_key) \
         SELECT id, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 FROM rooms \
         WHERE id = $1 AND (SELECT end_ms FROM bookings WHERE {OVERLAPPING} \
         ORDER BY end_ms LIMIT 1) IS NULL{}",
        if lock_room {
            " FOR UPDATE OF rooms"
        } else {
            ""
        }
    )
}

/// `ConfirmBooking`'s change, in one statement: BOOKED → CONFIRMED. The booking as it is now,
/// or `None` when it is unknown or no longer BOOKED.
pub async fn confirm_if_booked<'c, E: Executor<'c, Database = Any>>(
    db: E,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Booking>, sqlx::Error> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "UPDATE bookings SET status = 'CONFIRMED', version = version + 1, updated_at = $2 \
             WHERE id = $1 AND status = 'BOOKED' RETURNING {BOOKING_COLUMNS}"
        )
    });
    sqlx::query(&SQL)
        .bind(id.to_string())
        .bind(to_millis(now))
        .fetch_optional(db)
        .await?
        .map(|r| booking_from_row(&r))
        .transpose()
}

/// A cancel (the owner's, or the orchestrator's `CancelBooking`), in one statement: any live
/// booking → CANCELLED with `reason`.
/// The booking as it is now, or `None` when it is unknown or already cancelled.
pub async fn cancel_if_live<'c, E: Executor<'c, Database = Any>>(
    db: E,
    id: Uuid,
    reason: CancelReason,
    detail: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<Booking>, sqlx::Error> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "UPDATE bookings SET status = 'CANCELLED', cancel_reason = $3, cancel_detail = $4, \
             version = version + 1, updated_at = $2 \
             WHERE id = $1 AND status <> 'CANCELLED' RETURNING {BOOKING_COLUMNS}"
        )
    });
    sqlx::query(&SQL)
        .bind(id.to_string())
        .bind(to_millis(now))
        .bind(reason.as_str())
        .bind(detail)
        .fetch_optional(db)
        .await?
        .map(|r| booking_from_row(&r))
        .transpose()
}

/// Filters of `GET /bookings`.
#[derive(Debug, Default)]
pub struct BookingFilter {
    pub user: Option<String>,
    pub room: Option<RoomId>,
    pub status: Option<BookingStatus>,
    pub limit: i64,
    pub offset: i64,
}

/// `GET /bookings`'s statement and its arguments, with only the filters in use
/// ([`Conditions`]): a user's own bookings, or a room's, are read through their index.
fn list_query(f: &BookingFilter) -> (String, Conditions) {
    let mut c = Conditions::default();
    c.equal("booking_user_id", f.user.as_deref());
    c.equal("room_id", f.room);
    c.equal("status", f.status.map(BookingStatus::as_str));
    let filter = c.where_clause();
    let (limit, offset) = (c.param(f.limit), c.param(f.offset));
    let sql = format!(
        "SELECT {BOOKING_COLUMNS} FROM bookings{filter} ORDER BY start_ms, id \
         LIMIT {limit} OFFSET {offset}"
    );
    (sql, c)
}

pub async fn list_bookings<'c, E: Executor<'c, Database = Any>>(
    db: E,
    f: &BookingFilter,
) -> Result<Vec<Booking>, sqlx::Error> {
    let (sql, args) = list_query(f);
    args.bind(sqlx::query(&sql))
        .fetch_all(db)
        .await?
        .iter()
        .map(booking_from_row)
        .collect()
}

/// Live bookings of `room` intersecting `[from, to)`, in time order.
pub async fn busy_slots<'c, E: Executor<'c, Database = Any>>(
    db: E,
    room: RoomId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, DateTime<Utc>, BookingStatus)>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT start_ms, end_ms, status FROM bookings WHERE {OVERLAPPING} ORDER BY start_ms"
    ))
    .bind(room)
    .bind(to_millis(to))
    .bind(to_millis(from))
    .fetch_all(db)
    .await?
    .iter()
    .map(|r| {
        let status: String = r.try_get(2)?;
        Ok((
            from_millis(r.try_get(0)?),
            from_millis(r.try_get(1)?),
            BookingStatus::parse(&status).unwrap_or(BookingStatus::Booked),
        ))
    })
    .collect()
}

fn room_from_row(r: &AnyRow) -> Result<Room, sqlx::Error> {
    Ok(Room {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        capacity: r.try_get("capacity")?,
    })
}

pub async fn list_rooms<'c, E: Executor<'c, Database = Any>>(
    db: E,
) -> Result<Vec<Room>, sqlx::Error> {
    sqlx::query("SELECT id, name, capacity FROM rooms ORDER BY id")
        .fetch_all(db)
        .await?
        .iter()
        .map(room_from_row)
        .collect()
}

pub async fn get_room<'c, E: Executor<'c, Database = Any>>(
    db: E,
    id: RoomId,
) -> Result<Option<Room>, sqlx::Error> {
    sqlx::query("SELECT id, name, capacity FROM rooms WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?
        .map(|r| room_from_row(&r))
        .transpose()
}

pub async fn next_room_id<'c, E: Executor<'c, Database = Any>>(
    db: E,
) -> Result<RoomId, sqlx::Error> {
    let max: Option<i64> = sqlx::query("SELECT MAX(id) FROM rooms")
        .fetch_one(db)
        .await?
        .try_get(0)?;
    Ok(max.map_or(101, |m| m + 1))
}

pub async fn insert_room<'c, E: Executor<'c, Database = Any>>(
    db: E,
    room: &Room,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO rooms (id, name, capacity, created_at) VALUES ($1, $2, $3, $4)")
        .bind(room.id)
        .bind(&room.name)
        .bind(room.capacity)
        .bind(platform::time::now_millis())
        .execute(db)
        .await?;
    Ok(())
}

/// Inserts the room unless one with its id exists (replicas starting together seed the same rooms).
pub async fn insert_room_if_absent<'c, E: Executor<'c, Database = Any>>(
    db: E,
    room: &Room,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO rooms (id, name, capacity, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(room.id)
    .bind(&room.name)
    .bind(room.capacity)
    .bind(platform::time::now_millis())
    .execute(db)
    .await?;
    Ok(())
}

pub async fn count_rooms<'c, E: Executor<'c, Database = Any>>(db: E) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) FROM rooms")
        .fetch_one(db)
        .await?
        .try_get(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overlap_queries_read_a_rooms_calendar_by_end_time_not_its_history() {
        for sql in [
            format!("SELECT id FROM bookings WHERE {OVERLAPPING}"),
            first_overlap_query(),
        ] {
            let plan = platform::testkit::plan_on_empty_sqlite(crate::migrations(), &sql).await;
            assert_eq!(
                plan,
                ["SEARCH bookings USING INDEX bookings_room_end (room_id=? AND end_ms>?)"],
                "{sql}"
            );
        }
    }

    /// The statement a prepared booking request runs settles on PostgreSQL's generic plan; on a
    /// table of some thousands of bookings that plan must read the room's calendar, not scan.
    #[tokio::test]
    async fn the_overlap_check_reads_the_rooms_calendar_on_postgres() {
        let url = platform::testkit::create_postgres_database("booking").await;
        let db = platform::db::Db::connect(&url, crate::migrations())
            .await
            .unwrap();
        for statement in [
            "INSERT INTO rooms (id, name, capacity, created_at) \
             SELECT r, 'Room ' || r, 8, 0 FROM generate_series(1, 20) r",
            // 20,000 half-hour bookings, one an hour per room, a tenth of them cancelled.
            "INSERT INTO bookings (id, saga_id, room_id, booking_user_id, start_ms, end_ms, \
             status, version, created_at, updated_at) \
             SELECT 'b' || g, 's' || g, 1 + g % 20, 'user' || g % 50, g * 180000, \
             g * 180000 + 1800000, CASE WHEN g % 10 = 0 THEN 'CANCELLED' ELSE 'BOOKED' END, \
             1, 0, 0 FROM generate_series(1::bigint, 20000) g",
            "ANALYZE bookings",
        ] {
            sqlx::query(statement).execute(&db.pool).await.unwrap();
        }
        // Room 3, a slot after every booking: nothing overlaps.
        let slot = ["3", "5000000000", "4000000000"];
        let new_booking = [
            "'b'", "'s'", "'user1'", "NULL", "'BOOKED'", "NULL", "NULL", "1", "0", "0",
        ];
        for (sql, args) in [
            (first_overlap_query(), slot.to_vec()),
            (
                insert_with_event_sql(6),
                [
                    &slot[..],
                    &new_booking,
                    &["NULL", "'m'", "'s'", "'{}'", "'t'", "'b'", "0"],
                ]
                .concat(),
            ),
        ] {
            let plan = platform::testkit::generic_plan_on_postgres(&db, &sql, &args).await;
            assert!(
                plan.iter()
                    .any(|l| l.contains("Index Scan using bookings_room_end on bookings")),
                "{sql}: {plan:#?}"
            );
            assert!(
                plan.iter().all(|l| !l.contains("Seq Scan on bookings")),
                "{sql}: {plan:#?}"
            );
        }
    }

    /// A booking request's one statement: the overlap check by the room's calendar, the room
    /// by its key.
    #[tokio::test]
    async fn the_guarded_insert_reads_the_room_and_its_calendar_by_key_on_sqlite() {
        let sql = insert_if_free_sql(false);
        let plan = platform::testkit::plan_on_empty_sqlite(crate::migrations(), &sql).await;
        assert!(
            plan.iter().any(|l| l.contains(
                "SEARCH bookings USING INDEX bookings_room_end (room_id=? AND end_ms>?)"
            )),
            "{plan:#?}"
        );
        assert!(
            plan.iter()
                .any(|l| l.contains("SEARCH rooms USING INTEGER PRIMARY KEY")),
            "{plan:#?}"
        );
        assert!(plan.iter().all(|l| !l.starts_with("SCAN")), "{plan:#?}");
    }

    #[tokio::test]
    async fn a_users_or_rooms_bookings_are_listed_through_their_index() {
        let cases = [
            (
                BookingFilter {
                    user: Some("alice".into()),
                    ..BookingFilter::default()
                },
                "bookings_user (booking_user_id=?)",
            ),
            (
                BookingFilter {
                    room: Some(7),
                    status: Some(BookingStatus::Booked),
                    ..BookingFilter::default()
                },
                "bookings_room_time (room_id=?)",
            ),
        ];
        for (filter, index) in cases {
            let (sql, _) = list_query(&filter);
            let plan = platform::testkit::plan_on_empty_sqlite(crate::migrations(), &sql).await;
            assert!(
                plan.iter()
                    .any(|step| step == &format!("SEARCH bookings USING INDEX {index}")),
                "{filter:?}: {plan:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_admins_list_is_read_in_its_order_a_page_at_a_time() {
        for filter in [
            BookingFilter::default(),
            BookingFilter {
                status: Some(BookingStatus::Booked),
                ..BookingFilter::default()
            },
        ] {
            let (sql, _) = list_query(&filter);
            let plan = platform::testkit::plan_on_empty_sqlite(crate::migrations(), &sql).await;
            assert_eq!(
                plan,
                ["SCAN bookings USING INDEX bookings_start"],
                "{filter:?}: no sort of the whole table"
            );
        }
    }
}
