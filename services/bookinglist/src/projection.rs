//! The projection as a pure fold: `fold(row, event) -> row`, with no I/O, so that its one hard
//! property — the same final row whatever the order and however often each event arrives — is
//! tested directly (`tests/projection.rs`).
//!
//! Events of one booking come from three sources that number them separately (`version`):
//! booking, confirm and the orchestrator. A row is a handful of *registers*, each written by
//! one source and keeping the version of the event that last wrote it; an event writes a
//! register only when its version is newer. So a late or repeated event can never overwrite newer
//! state, and the final value of each register is that of its newest event, whichever order they
//! came in:
//!
//! | register | written by | fields |
//! |---|---|---|
//! | booking status | `BookingCreated`, `BookingConfirmed`, `BookingCancelled` | `bookingStatus`, `cancelReason`, `cancelDetail` |
//! | confirm decision | `ConfirmRequested`, `ConfirmCompleted`, `ConfirmDenied` | `confirmStatus`, `confirmUserId`, `confirmDtm`, `denyReason` |
//! | confirm closure | `ConfirmClosed`, `ConfirmExpired` | `confirmClosed`, `confirmCloseReason` |
//! | confirm id | any confirm event | `confirmId` |
//! | saga state | `SagaStateChanged` | `sagaState` |
//!
//! The closure is a register of its own because `ConfirmClosed` does not repeat the decision: a
//! denial that arrives after the close must still show.
//!
//! What describes the booking (room, user, time slot, `bookingDtm`) never changes, so any event
//! may fill it in: `BookingCreated` is authoritative, `ConfirmRequested` (which copies it) fills
//! the row only while `BookingCreated` has not been seen. An event that arrives before its
//! booking's `BookingCreated` thus makes a partial row that is completed later.
//!
//! `updatedAt` is the newest `occurredAt` among the events folded in — a fact about the events,
//! not about when this service happened to apply them, so a rebuild reproduces it exactly.

use chrono::{DateTime, Utc};
use platform::contract::{Body, CancelReason, Envelope, RoomId};
use serde::{Deserialize, Serialize, Serializer};
use uuid::Uuid;

/// The close reason shown for a confirm that reached its deadline undecided.
pub const EXPIRED: &str = "EXPIRED";

/// The booking's own status, as the booking service reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = BookingListBookingStatus)]
pub enum BookingStatus {
    Booked,
    Confirmed,
    Cancelled,
}

impl BookingStatus {
    pub const ALL: [BookingStatus; 3] = [
        BookingStatus::Booked,
        BookingStatus::Confirmed,
        BookingStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BookingStatus::Booked => "BOOKED",
            BookingStatus::Confirmed => "CONFIRMED",
            BookingStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The approval's status, as the confirm service reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = BookingListConfirmStatus)]
pub enum ConfirmStatus {
    Booked,
    Confirmed,
    Denied,
}

impl ConfirmStatus {
    pub const ALL: [ConfirmStatus; 3] = [
        ConfirmStatus::Booked,
        ConfirmStatus::Confirmed,
        ConfirmStatus::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConfirmStatus::Booked => "BOOKED",
            ConfirmStatus::Confirmed => "CONFIRMED",
            ConfirmStatus::Denied => "DENIED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The newest version applied per register (0: nothing applied yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = BookingListVersions)]
pub struct Versions {
    /// Newest booking-service event applied.
    pub booking: u64,
    /// Newest confirm-service event applied.
    pub confirm: u64,
    /// Newest orchestrator event applied.
    pub saga: u64,
    /// Newest confirm event that wrote the decision register.
    #[serde(skip)]
    pub decision: u64,
    /// The `ConfirmClosed` applied (0 while the confirm is open).
    #[serde(skip)]
    pub closed: u64,
}

/// One booking as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = BookingListRow)]
pub struct BookingRow {
    pub booking_id: Uuid,
    pub saga_id: Option<Uuid>,
    #[schema(value_type = Option<i64>, example = 101)]
    pub room_id: Option<RoomId>,
    pub booking_user_id: Option<String>,
    #[serde(serialize_with = "opt_time")]
    pub use_start_dtm: Option<DateTime<Utc>>,
    #[serde(serialize_with = "opt_time")]
    pub use_end_dtm: Option<DateTime<Utc>>,
    pub booking_status: Option<BookingStatus>,
    /// When the booking was made (`BookingCreated`); None until that event has been seen.
    #[serde(serialize_with = "opt_time")]
    pub booking_dtm: Option<DateTime<Utc>>,
    /// `USER_CANCELLED`, `DENIED` or `EXPIRED`.
    #[schema(value_type = Option<String>)]
    pub cancel_reason: Option<CancelReason>,
    pub cancel_detail: Option<String>,
    pub confirm_id: Option<Uuid>,
    pub confirm_status: Option<ConfirmStatus>,
    /// No decision is accepted from this instant on (from `ConfirmRequested`).
    #[serde(serialize_with = "opt_time")]
    pub approval_deadline: Option<DateTime<Utc>>,
    pub confirm_user_id: Option<String>,
    /// When the admin decided.
    #[serde(serialize_with = "opt_time")]
    pub confirm_dtm: Option<DateTime<Utc>>,
    pub deny_reason: Option<String>,
    /// The approval request was closed (booking cancelled): it can no longer be decided.
    pub confirm_closed: bool,
    pub confirm_close_reason: Option<String>,
    /// The saga's state as the orchestrator announces it; none until the approval request is
    /// open, unless the saga is held up before that (then `STARTED`).
    pub saga_state: Option<String>,
    #[serde(serialize_with = "time")]
    pub updated_at: DateTime<Utc>,
    pub versions: Versions,
}

fn time<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&platform::time::format_utc(*t))
}

fn opt_time<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => time(t, s),
        None => s.serialize_none(),
    }
}

impl BookingRow {
    /// A row that knows nothing yet but its booking id.
    pub fn empty(booking_id: Uuid) -> Self {
        BookingRow {
            booking_id,
            saga_id: None,
            room_id: None,
            booking_user_id: None,
            use_start_dtm: None,
            use_end_dtm: None,
            booking_status: None,
            booking_dtm: None,
            cancel_reason: None,
            cancel_detail: None,
            confirm_id: None,
            confirm_status: None,
            approval_deadline: None,
            confirm_user_id: None,
            confirm_dtm: None,
            deny_reason: None,
            confirm_closed: false,
            confirm_close_reason: None,
            saga_state: None,
            updated_at: DateTime::<Utc>::MIN_UTC,
            versions: Versions::default(),
        }
    }

    /// True once the booking's own `BookingCreated` has been folded in.
    pub fn has_booking(&self) -> bool {
        self.booking_dtm.is_some()
    }

    fn describe(&mut self, room_id: RoomId, user: &str, start: DateTime<Utc>, end: DateTime<Utc>) {
        self.room_id = Some(room_id);
        self.booking_user_id = Some(user.to_string());
        self.use_start_dtm = Some(start);
        self.use_end_dtm = Some(end);
    }

    fn set_booking_status(
        &mut self,
        version: u64,
        status: BookingStatus,
        reason: Option<CancelReason>,
        detail: Option<&String>,
    ) {
        if version > self.versions.booking {
            self.versions.booking = version;
            self.booking_status = Some(status);
            self.cancel_reason = reason;
            self.cancel_detail = detail.cloned();
        }
    }

    fn set_decision(
        &mut self,
        version: u64,
        status: ConfirmStatus,
        decided: Option<(&str, DateTime<Utc>)>,
        deny_reason: Option<&String>,
    ) {
        if version > self.versions.decision {
            self.versions.decision = version;
            self.confirm_status = Some(status);
            self.confirm_user_id = decided.map(|(user, _)| user.to_string());
            self.confirm_dtm = decided.map(|(_, at)| at);
            self.deny_reason = deny_reason.cloned();
        }
    }

    fn set_closed(&mut self, version: u64, reason: &str) {
        if version > self.versions.closed {
            self.versions.closed = version;
            self.confirm_closed = true;
            self.confirm_close_reason = Some(reason.to_string());
        }
    }

    fn saw_confirm(&mut self, version: u64, confirm_id: Uuid) {
        if version > self.versions.confirm {
            self.versions.confirm = version;
            self.confirm_id = Some(confirm_id);
        }
    }
}

/// True for the events the list follows; commands (which never travel on the events stream)
/// are not.
pub fn is_event(body: &Body) -> bool {
    match body {
        Body::BookingCreated(_)
        | Body::BookingConfirmed(_)
        | Body::BookingCancelled(_)
        | Body::ConfirmRequested(_)
        | Body::ConfirmCompleted(_)
        | Body::ConfirmDenied(_)
        | Body::ConfirmClosed(_)
        | Body::ConfirmExpired(_)
        | Body::SagaStateChanged(_) => true,
        Body::RequestConfirm(_)
        | Body::DeleteConfirm(_)
        | Body::ExpireConfirm(_)
        | Body::ConfirmBooking(_)
        | Body::CancelBooking(_) => false,
    }
}

/// Folds one event into its booking's row. Idempotent, and commutative with every other event
/// of the same booking: the result depends only on the set of events folded in.
pub fn fold(mut row: BookingRow, env: &Envelope) -> BookingRow {
    if env.booking_id != row.booking_id || !is_event(&env.body) {
        return row;
    }
    let v = env.version;
    let at = env.occurred_at;
    row.saga_id = Some(env.saga_id);
    row.updated_at = row.updated_at.max(at);
    match &env.body {
        Body::BookingCreated(e) => {
            row.describe(
                e.room_id,
                &e.booking_user_id,
                e.use_start_dtm,
                e.use_end_dtm,
            );
            row.booking_dtm = Some(at);
            row.set_booking_status(v, BookingStatus::Booked, None, None);
        }
        Body::BookingConfirmed(_) => {
            row.set_booking_status(v, BookingStatus::Confirmed, None, None);
        }
        Body::BookingCancelled(e) => {
            row.set_booking_status(
                v,
                BookingStatus::Cancelled,
                Some(e.reason),
                e.detail.as_ref(),
            );
        }
        Body::ConfirmRequested(e) => {
            if !row.has_booking() {
                row.describe(
                    e.room_id,
                    &e.booking_user_id,
                    e.use_start_dtm,
                    e.use_end_dtm,
                );
            }
            row.saw_confirm(v, e.confirm_id);
            // One request per booking: its deadline never changes.
            row.approval_deadline = Some(e.approval_deadline);
            row.set_decision(v, ConfirmStatus::Booked, None, None);
        }
        Body::ConfirmCompleted(e) => {
            row.saw_confirm(v, e.confirm_id);
            row.set_decision(
                v,
                ConfirmStatus::Confirmed,
                Some((&e.confirm_user_id, at)),
                None,
            );
        }
        Body::ConfirmDenied(e) => {
            row.saw_confirm(v, e.confirm_id);
            row.set_decision(
                v,
                ConfirmStatus::Denied,
                Some((&e.confirm_user_id, at)),
                e.reason.as_ref(),
            );
        }
        Body::ConfirmClosed(e) => {
            row.saw_confirm(v, e.confirm_id);
            row.set_closed(v, &e.reason);
        }
        Body::ConfirmExpired(e) => {
            // The confirm service closes an undecided confirm at its deadline.
            row.saw_confirm(v, e.confirm_id);
            row.set_closed(v, EXPIRED);
        }
        Body::SagaStateChanged(e) => {
            if v > row.versions.saga {
                row.versions.saga = v;
                row.saga_state = Some(e.state.clone());
            }
        }
        Body::RequestConfirm(_)
        | Body::DeleteConfirm(_)
        | Body::ExpireConfirm(_)
        | Body::ConfirmBooking(_)
        | Body::CancelBooking(_) => {}
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;
    use platform::contract::*;

    fn booking() -> Uuid {
        Uuid::from_u128(7)
    }

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 8, minute, 0).unwrap()
    }

    fn env(version: u64, minute: u32, body: Body) -> Envelope {
        let mut e = Envelope::new(booking(), Uuid::from_u128(9), version, body);
        e.occurred_at = at(minute);
        e
    }

    fn created() -> Envelope {
        env(
            1,
            0,
            Body::BookingCreated(BookingCreated {
                room_id: 101,
                booking_user_id: "alice".into(),
                booking_user_email: None,
                use_start_dtm: at(30),
                use_end_dtm: at(45),
            }),
        )
    }

    fn requested() -> Envelope {
        env(
            1,
            1,
            Body::ConfirmRequested(ConfirmRequested {
                confirm_id: Uuid::from_u128(5),
                room_id: 101,
                booking_user_id: "alice".into(),
                use_start_dtm: at(30),
                use_end_dtm: at(45),
                approval_deadline: at(20),
            }),
        )
    }

    fn denied() -> Envelope {
        env(
            2,
            2,
            Body::ConfirmDenied(ConfirmDecided {
                confirm_id: Uuid::from_u128(5),
                confirm_user_id: "admin".into(),
                reason: Some("repairs".into()),
            }),
        )
    }

    fn closed(version: u64) -> Envelope {
        env(
            version,
            4,
            Body::ConfirmClosed(ConfirmClosed {
                confirm_id: Uuid::from_u128(5),
                was_requested: true,
                reason: "DENIED".into(),
            }),
        )
    }

    fn fold_all(events: &[Envelope]) -> BookingRow {
        events.iter().fold(BookingRow::empty(booking()), fold)
    }

    #[test]
    fn a_denied_booking_shows_the_denial_its_reason_and_the_closed_confirm() {
        let cancelled = env(
            2,
            3,
            Body::BookingCancelled(BookingCancelled {
                reason: CancelReason::Denied,
                detail: Some("repairs".into()),
            }),
        );
        let row = fold_all(&[created(), requested(), denied(), cancelled, closed(3)]);
        assert_eq!(row.booking_status, Some(BookingStatus::Cancelled));
        assert_eq!(row.cancel_reason, Some(CancelReason::Denied));
        assert_eq!(row.confirm_status, Some(ConfirmStatus::Denied));
        assert_eq!(row.confirm_user_id.as_deref(), Some("admin"));
        assert_eq!(row.confirm_dtm, Some(at(2)));
        assert_eq!(row.deny_reason.as_deref(), Some("repairs"));
        assert!(row.confirm_closed);
        assert_eq!(row.updated_at, at(4));
        assert_eq!(row.versions.booking, 2);
        assert_eq!(row.versions.confirm, 3);
    }

    #[test]
    fn a_close_arriving_before_the_denial_still_shows_the_denial() {
        let row = fold_all(&[requested(), closed(3), denied()]);
        assert_eq!(row.confirm_status, Some(ConfirmStatus::Denied));
        assert!(row.confirm_closed);
        assert_eq!(row.versions.confirm, 3);
    }

    #[test]
    fn an_event_before_booking_created_makes_a_partial_row_that_is_filled_in_later() {
        let confirmed = env(2, 5, Body::BookingConfirmed(BookingConfirmed {}));
        let partial = fold_all(std::slice::from_ref(&confirmed));
        assert_eq!(partial.booking_status, Some(BookingStatus::Confirmed));
        assert_eq!(partial.room_id, None);
        assert!(!partial.has_booking());

        let full = fold(partial, &created());
        assert_eq!(full.room_id, Some(101));
        assert_eq!(full.booking_user_id.as_deref(), Some("alice"));
        assert_eq!(full.booking_dtm, Some(at(0)));
        // The late BookingCreated (v1) does not take the status back to BOOKED.
        assert_eq!(full.booking_status, Some(BookingStatus::Confirmed));
        assert_eq!(full.versions.booking, 2);
    }

    #[test]
    fn a_stale_saga_state_does_not_overwrite_a_newer_one() {
        let state = |v, s: &str| {
            env(
                v,
                v as u32,
                Body::SagaStateChanged(SagaStateChanged {
                    state: s.into(),
                    previous_state: None,
                }),
            )
        };
        let row = fold_all(&[state(6, "COMPLETED"), state(2, "STARTED")]);
        assert_eq!(row.saga_state.as_deref(), Some("COMPLETED"));
        assert_eq!(row.versions.saga, 6);
    }

    #[test]
    fn a_repeated_event_changes_nothing() {
        let once = fold_all(&[created(), requested()]);
        assert_eq!(fold(once.clone(), &requested()), once);
        assert_eq!(fold(once.clone(), &created()), once);
    }

    #[test]
    fn commands_and_other_bookings_events_are_ignored() {
        let row = fold_all(&[created()]);
        let command = env(
            5,
            9,
            Body::CancelBooking(CancelBooking {
                reason: CancelReason::Denied,
                detail: None,
            }),
        );
        assert_eq!(fold(row.clone(), &command), row);
        let mut other = created();
        other.booking_id = Uuid::from_u128(8);
        assert_eq!(fold(row.clone(), &other), row);
    }

    #[test]
    fn the_row_serialises_in_camel_case_with_nulls_for_what_is_unknown() {
        let json = serde_json::to_value(fold_all(&[created()])).unwrap();
        assert_eq!(json["bookingStatus"], "BOOKED");
        assert_eq!(json["roomId"], 101);
        assert_eq!(json["useStartDtm"], "2026-03-01T08:30:00.000Z");
        assert_eq!(json["bookingDtm"], "2026-03-01T08:00:00.000Z");
        assert!(json["confirmStatus"].is_null());
        assert_eq!(json["confirmClosed"], false);
        assert_eq!(
            json["versions"],
            serde_json::json!({"booking": 1, "confirm": 0, "saga": 0})
        );
    }
}
