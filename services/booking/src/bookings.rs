//! What happens to a booking, each in one transaction with the event it implies (outbox):
//! creating one (the slot check), the owner's cancel, and the orchestrator's commands.

use chrono::{DateTime, Utc};
use platform::{
    contract::{
        Body, BookingCancelled, BookingConfirmed, BookingCreated, CancelReason, Envelope, RoomId,
    },
    db::{self, Db, Tx},
    outbox::{self, OutboxSignal},
    trace::TraceParent,
};
use uuid::Uuid;

use crate::{
    domain::{Booking, BookingStatus, TimeSlot},
    store,
};

/// Why a booking operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum BookingError {
    #[error("room {0} does not exist")]
    UnknownRoom(RoomId),
    #[error("booking {0} not found")]
    NotFound(Uuid),
    #[error("room {room} is already booked from {start} to {end}")]
    Overlap {
        room: RoomId,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    #[error("the Idempotency-Key was already used for a different booking request")]
    IdempotencyKeyReused,
    #[error("booking {0} is already cancelled")]
    AlreadyCancelled(Uuid),
    #[error("booking {0} has already started")]
    AlreadyStarted(Uuid),
    /// Another writer changed the booking between our read and our write (PostgreSQL only:
    /// SQLite has one writer). Reading it again and retrying is safe.
    #[error("booking {0} changed while it was being updated")]
    ChangedConcurrently(Uuid),
    /// The booking that kept a request out of its slot was cancelled before the request could
    /// say which one it was. Trying again is safe.
    #[error("a booking of room {0} changed while the booking was being made")]
    SlotFreed(RoomId),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A validated request for a new booking.
#[derive(Debug, Clone)]
pub struct NewBooking {
    pub room_id: RoomId,
    pub slot: TimeSlot,
    pub user_id: String,
    pub user_email: Option<String>,
    pub idempotency_key: Option<String>,
}

/// The result of a create: the booking, and whether it was an idempotent replay.
pub struct Created {
    pub booking: Booking,
    pub replayed: bool,
}

pub async fn create(
    db: &Db,
    outbox: &OutboxSignal,
    req: NewBooking,
    trace: &TraceParent,
) -> Result<Created, BookingError> {
    retrying("create booking", || create_once(db, outbox, &req, trace)).await
}

/// Runs `attempt` again, up to five times in all, while it fails in a way that a fresh try
/// may not: the database gave up on the transaction (a deadlock, a serialization failure), or
/// another writer changed the booking between our read and our write.
async fn retrying<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, BookingError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BookingError>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(e) if e.is_retryable() && tries < 5 => {
                tracing::debug!(error = %e, tries, "{what}: collided with another writer, trying again");
                tries += 1;
            }
            other => return other,
        }
    }
}

impl BookingError {
    fn is_retryable(&self) -> bool {
        match self {
            BookingError::Database(e) => db::is_transient(e),
            BookingError::ChangedConcurrently(_) | BookingError::SlotFreed(_) => true,
            _ => false,
        }
    }
}

async fn create_once(
    db: &Db,
    outbox: &OutboxSignal,
    req: &NewBooking,
    trace: &TraceParent,
) -> Result<Created, BookingError> {
    let key = req.idempotency_key.as_deref();
    if let Some(key) = key {
        if let Some(existing) = store::find_by_idempotency_key(&db.pool, &req.user_id, key).await? {
            return replay(existing, req);
        }
    }
    let now = platform::time::now();
    let booking = Booking {
        id: Uuid::now_v7(),
        saga_id: Uuid::now_v7(),
        room_id: req.room_id,
        booking_user_id: req.user_id.clone(),
        booking_user_email: req.user_email.clone(),
        use_start_dtm: req.slot.start(),
        use_end_dtm: req.slot.end(),
        status: BookingStatus::Booked,
        cancel_reason: None,
        cancel_detail: None,
        version: 1,
        created_at: now,
        updated_at: now,
    };
    let event = envelope(
        &booking,
        Body::BookingCreated(BookingCreated {
            room_id: booking.room_id,
            booking_user_id: booking.booking_user_id.clone(),
            booking_user_email: booking.booking_user_email.clone(),
            use_start_dtm: booking.use_start_dtm,
            use_end_dtm: booking.use_end_dtm,
        }),
    );
    let inserted = match db.backend {
        db::Backend::Postgres => {
            let event = outbox::row(&event, trace);
            store::insert_booking_and_event_if_free(&db.pool, &booking, key, event).await
        }
        db::Backend::Sqlite => insert_in_transaction(db, &booking, key, &event, trace).await,
    };
    match inserted {
        Ok(true) => {}
        Ok(false) => return Err(why_not_inserted(&db.pool, req).await?),
        // The database's own guard (trigger / exclusion constraint) caught an overlap: on
        // PostgreSQL, a request that waited for the room behind the booking now in its way.
        Err(e) if db::error_mentions(&e, "booking_overlap") => {
            return Err(
                match store::find_overlap(&db.pool, req.room_id, &req.slot).await? {
                    Some(other) => overlap(&other),
                    None => overlap_of(req),
                },
            );
        }
        // A concurrent retry with the same Idempotency-Key won the race: answer with its booking.
        Err(e) if db::is_conflict(&e) && key.is_some() => {
            let key = key.unwrap_or_default();
            return match store::find_by_idempotency_key(&db.pool, &req.user_id, key).await? {
                Some(existing) => replay(existing, req),
                None => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    }
    outbox.notify();
    Ok(Created {
        booking,
        replayed: false,
    })
}

/// SQLite: the guarded insert and the event's outbox row, in a transaction on the write
/// connection shared with the other requests writing at the same moment ([`Db::write`]).
async fn insert_in_transaction(
    db: &Db,
    booking: &Booking,
    key: Option<&str>,
    event: &Envelope,
    trace: &TraceParent,
) -> Result<bool, sqlx::Error> {
    let (booking, key) = (booking.clone(), key.map(str::to_owned));
    let (event, trace) = (event.clone(), trace.clone());
    db.write(move |tx: &mut Tx| {
        Box::pin(async move {
            if !store::insert_booking_if_free(tx, &booking, key.as_deref()).await? {
                return Ok(false);
            }
            outbox::enqueue(tx, &event, &trace);
            Ok(true)
        })
    })
    .await
}

/// Why a booking was not inserted: the slot is taken, or the room does not exist. Asked only
/// after the fact, so that a request that goes through costs one statement.
async fn why_not_inserted(
    pool: &sqlx::AnyPool,
    req: &NewBooking,
) -> Result<BookingError, sqlx::Error> {
    if let Some(other) = store::find_overlap(pool, req.room_id, &req.slot).await? {
        return Ok(overlap(&other));
    }
    Ok(match store::get_room(pool, req.room_id).await? {
        None => BookingError::UnknownRoom(req.room_id),
        // The booking in the way was cancelled in between: worth another try.
        Some(_) => BookingError::SlotFreed(req.room_id),
    })
}

fn replay(existing: Booking, req: &NewBooking) -> Result<Created, BookingError> {
    if existing.room_id == req.room_id && existing.slot() == req.slot {
        Ok(Created {
            booking: existing,
            replayed: true,
        })
    } else {
        Err(BookingError::IdempotencyKeyReused)
    }
}

fn overlap(other: &Booking) -> BookingError {
    BookingError::Overlap {
        room: other.room_id,
        start: other.use_start_dtm,
        end: other.use_end_dtm,
    }
}

fn overlap_of(req: &NewBooking) -> BookingError {
    BookingError::Overlap {
        room: req.room_id,
        start: req.slot.start(),
        end: req.slot.end(),
    }
}

/// The owner's (or an admin's) cancel. A booking can be cancelled until it starts.
pub async fn cancel_by_user(
    db: &Db,
    outbox: &OutboxSignal,
    id: Uuid,
    detail: Option<String>,
    trace: &TraceParent,
    may_access: impl Fn(&Booking) -> bool + Send + Sync + 'static,
) -> Result<Booking, BookingError> {
    let may_access = std::sync::Arc::new(may_access);
    // A cancel that meets a concurrent change waits for it (PostgreSQL): a booking confirmed
    // meanwhile is still cancelled; one cancelled meanwhile is read again and answered 409.
    let cancelled = retrying("cancel booking", || {
        let (detail, trace, may_access) = (detail.clone(), trace.clone(), may_access.clone());
        db.write(move |tx: &mut Tx| {
            Box::pin(async move { cancel_once(tx, id, detail, &trace, may_access.as_ref()).await })
        })
    })
    .await?;
    outbox.notify();
    Ok(cancelled)
}

async fn cancel_once(
    tx: &mut Tx,
    id: Uuid,
    detail: Option<String>,
    trace: &TraceParent,
    may_access: &(impl Fn(&Booking) -> bool + ?Sized),
) -> Result<Booking, BookingError> {
    let booking = store::get_booking(&mut *tx, id)
        .await?
        .filter(|b| may_access(b))
        .ok_or(BookingError::NotFound(id))?;
    if booking.status == BookingStatus::Cancelled {
        return Err(BookingError::AlreadyCancelled(id));
    }
    if booking.use_start_dtm <= platform::time::now() {
        return Err(BookingError::AlreadyStarted(id));
    }
    // Cancelled by someone else since the read: read again (and answer 409).
    cancel_live(tx, id, CancelReason::UserCancelled, detail, trace)
        .await?
        .ok_or(BookingError::ChangedConcurrently(id))
}

/// Cancels a live booking with `reason` in one conditional statement and announces it; `None`
/// when the booking is unknown or already cancelled. On PostgreSQL it waits for a concurrent
/// writer and judges the booking as that writer left it.
async fn cancel_live(
    tx: &mut Tx,
    id: Uuid,
    reason: CancelReason,
    detail: Option<String>,
    trace: &TraceParent,
) -> Result<Option<Booking>, BookingError> {
    let now = platform::time::now();
    let Some(booking) = store::cancel_if_live(&mut *tx, id, reason, detail.as_deref(), now).await?
    else {
        return Ok(None);
    };
    emit(
        tx,
        &booking,
        Body::BookingCancelled(BookingCancelled { reason, detail }),
        trace,
    );
    Ok(Some(booking))
}

/// `ConfirmBooking` from the orchestrator: BOOKED → CONFIRMED. A booking that was cancelled in
/// the meantime stays cancelled (the cancel already told the orchestrator). The change is one
/// conditional statement, which on PostgreSQL waits for a concurrent writer and then judges
/// the booking as that writer left it.
pub async fn on_confirm_command(
    tx: &mut Tx,
    id: Uuid,
    trace: &TraceParent,
) -> Result<Option<Booking>, BookingError> {
    if let Some(booking) = store::confirm_if_booked(&mut *tx, id, platform::time::now()).await? {
        emit(
            tx,
            &booking,
            Body::BookingConfirmed(BookingConfirmed {}),
            trace,
        );
        return Ok(Some(booking));
    }
    let booking = store::get_booking(&mut *tx, id)
        .await?
        .ok_or(BookingError::NotFound(id))?;
    tracing::info!(
        status = booking.status.as_str(),
        "ConfirmBooking changes nothing: booking is not BOOKED"
    );
    // Nothing to change; answer with the latest fact in case the saga missed it.
    outbox::reannounce_latest(tx, id).await?;
    Ok(None)
}

/// `CancelBooking` from the orchestrator (a compensation): frees the slot. An already
/// cancelled booking is left as it is.
pub async fn on_cancel_command(
    tx: &mut Tx,
    id: Uuid,
    reason: CancelReason,
    detail: Option<String>,
    trace: &TraceParent,
) -> Result<Option<Booking>, BookingError> {
    if let Some(booking) = cancel_live(tx, id, reason, detail, trace).await? {
        return Ok(Some(booking));
    }
    if store::get_booking(&mut *tx, id).await?.is_none() {
        return Err(BookingError::NotFound(id));
    }
    // Nothing to do; answer with the cancel in case the saga missed it.
    tracing::info!("CancelBooking changes nothing: booking is already cancelled");
    outbox::reannounce_latest(tx, id).await?;
    Ok(None)
}

fn emit(tx: &mut Tx, booking: &Booking, body: Body, trace: &TraceParent) {
    outbox::enqueue(tx, &envelope(booking, body), trace);
}

/// The event `body` about `booking`, at its version.
fn envelope(booking: &Booking, body: Body) -> Envelope {
    let version = u64::try_from(booking.version).unwrap_or_default();
    Envelope::new(booking.id, booking.saga_id, version, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use platform::testkit::{
        outbox_event_types, until_a_session_waits_on_a_lock, TestBackend, TestDatabases,
    };

    use crate::domain::Room;

    fn request(room_id: RoomId, from_hour: i64, to_hour: i64) -> NewBooking {
        let day = Utc.with_ymd_and_hms(2031, 5, 6, 0, 0, 0).unwrap();
        NewBooking {
            room_id,
            slot: TimeSlot::new(
                day + Duration::hours(from_hour),
                day + Duration::hours(to_hour),
            )
            .unwrap(),
            user_id: "alice".into(),
            user_email: None,
            idempotency_key: None,
        }
    }

    /// A database with room 7 in it.
    async fn booking_db(backend: TestBackend) -> (TestDatabases, Db) {
        let dbs = TestDatabases::new(backend);
        let db = Db::connect(&dbs.create("booking").await, crate::migrations())
            .await
            .unwrap();
        let room = Room {
            id: 7,
            name: "Seven".into(),
            capacity: 4,
        };
        store::insert_room_if_absent(&db.pool, &room).await.unwrap();
        (dbs, db)
    }

    /// A request the guarded insert turned away is told apart afterwards: the booking in its
    /// way, an unknown room, or — the booking in its way gone since — a reason to try again.
    async fn a_turned_away_request_learns_why(backend: TestBackend) {
        let (_dbs, db) = booking_db(backend).await;
        let outbox = OutboxSignal::default();
        let trace = TraceParent::new_root();
        let held = create(&db, &outbox, request(7, 9, 11), &trace)
            .await
            .unwrap();

        match why_not_inserted(&db.pool, &request(7, 10, 12))
            .await
            .unwrap()
        {
            BookingError::Overlap { room, start, end } => {
                assert_eq!(room, 7);
                assert_eq!(
                    (start, end),
                    (held.booking.use_start_dtm, held.booking.use_end_dtm)
                );
            }
            other => panic!("expected the overlap with the held booking, got {other:?}"),
        }
        assert!(matches!(
            why_not_inserted(&db.pool, &request(8, 10, 12))
                .await
                .unwrap(),
            BookingError::UnknownRoom(8)
        ));
        let freed = why_not_inserted(&db.pool, &request(7, 11, 12))
            .await
            .unwrap();
        assert!(matches!(freed, BookingError::SlotFreed(7)), "{freed:?}");
        assert!(freed.is_retryable());
    }

    /// Runs one orchestrator command in a transaction of its own, as the consumer does.
    async fn command(
        db: &Db,
        id: Uuid,
        cancel: Option<CancelReason>,
    ) -> Result<Option<Booking>, BookingError> {
        let mut tx = db.begin().await.unwrap();
        let trace = TraceParent::new_root();
        let done = match cancel {
            None => on_confirm_command(&mut tx, id, &trace).await,
            Some(reason) => {
                on_cancel_command(&mut tx, id, reason, Some("why".into()), &trace).await
            }
        };
        tx.commit().await.unwrap();
        done
    }

    /// Each command changes a booking only from the states it may change it from, says so
    /// with an event, and otherwise repeats the booking's latest event.
    async fn commands_change_only_what_they_may(backend: TestBackend) {
        let (_dbs, db) = booking_db(backend).await;
        let outbox = OutboxSignal::default();
        let trace = TraceParent::new_root();
        let a = create(&db, &outbox, request(7, 9, 10), &trace)
            .await
            .unwrap()
            .booking;
        let b = create(&db, &outbox, request(7, 10, 11), &trace)
            .await
            .unwrap()
            .booking;
        let state = |b: &Booking| {
            (
                b.status,
                b.version,
                b.cancel_reason,
                b.cancel_detail.clone(),
            )
        };

        let confirmed = command(&db, a.id, None).await.unwrap().expect("confirmed");
        assert_eq!(state(&confirmed), (BookingStatus::Confirmed, 2, None, None));
        assert!(command(&db, a.id, None).await.unwrap().is_none());
        assert_eq!(
            outbox_event_types(&db.pool, a.id).await,
            ["BookingCreated", "BookingConfirmed", "BookingConfirmed"]
        );

        let denied = Some(CancelReason::Denied);
        let cancelled = command(&db, b.id, denied)
            .await
            .unwrap()
            .expect("cancelled");
        let cancelled_state = (
            BookingStatus::Cancelled,
            2,
            Some(CancelReason::Denied),
            Some("why".to_string()),
        );
        assert_eq!(state(&cancelled), cancelled_state);
        assert!(command(&db, b.id, None).await.unwrap().is_none());
        let expired = Some(CancelReason::Expired);
        assert!(command(&db, b.id, expired).await.unwrap().is_none());
        let stored = store::get_booking(&db.pool, b.id).await.unwrap().unwrap();
        assert_eq!(state(&stored), cancelled_state);
        assert_eq!(
            outbox_event_types(&db.pool, b.id).await,
            [
                "BookingCreated",
                "BookingCancelled",
                "BookingCancelled",
                "BookingCancelled"
            ]
        );

        let unknown = Uuid::new_v4();
        for cancel in [None, denied] {
            let err = command(&db, unknown, cancel).await.unwrap_err();
            assert!(
                matches!(err, BookingError::NotFound(id) if id == unknown),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn commands_change_only_what_they_may_on_sqlite() {
        commands_change_only_what_they_may(TestBackend::Sqlite).await;
    }

    #[tokio::test]
    async fn commands_change_only_what_they_may_on_postgres() {
        commands_change_only_what_they_may(TestBackend::Postgres).await;
    }

    /// A confirmation that meets an owner's cancel not yet committed waits for it and then
    /// leaves the booking cancelled, without failing and being tried again.
    #[tokio::test]
    async fn a_confirmation_that_meets_a_concurrent_cancel_leaves_it_cancelled_on_postgres() {
        let (_dbs, db) = booking_db(TestBackend::Postgres).await;
        let trace = TraceParent::new_root();
        let booking = create(&db, &OutboxSignal::default(), request(7, 9, 10), &trace)
            .await
            .unwrap()
            .booking;
        let mut cancelling = db.begin().await.unwrap();
        let cancelled = store::cancel_if_live(
            &mut cancelling,
            booking.id,
            CancelReason::UserCancelled,
            None,
            Utc::now(),
        )
        .await
        .unwrap();
        assert!(cancelled.is_some());

        let confirm = tokio::spawn({
            let db = db.clone();
            async move { command(&db, booking.id, None).await }
        });
        until_a_session_waits_on_a_lock(&db.pool).await;
        cancelling.commit().await.unwrap();
        let confirmed = confirm.await.unwrap();
        assert!(matches!(confirmed, Ok(None)), "{confirmed:?}");
        let stored = store::get_booking(&db.pool, booking.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (stored.status, stored.version),
            (BookingStatus::Cancelled, 2)
        );
    }

    #[tokio::test]
    async fn a_turned_away_request_learns_why_on_sqlite() {
        a_turned_away_request_learns_why(TestBackend::Sqlite).await;
    }

    #[tokio::test]
    async fn a_turned_away_request_learns_why_on_postgres() {
        a_turned_away_request_learns_why(TestBackend::Postgres).await;
    }
}
