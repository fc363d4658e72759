//! The vocabulary of notifications: what a mail is about ([`Kind`]), who gets it ([`Role`]) and
//! where its delivery stands ([`Status`]), plus the delivery record itself ([`Notification`]).

use chrono::{DateTime, Utc};
use platform::contract::{CancelReason, RoomId};
use serde::Serialize;
use uuid::Uuid;

/// What a mail announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = NotificationKind)]
pub enum Kind {
    /// The booking was made and waits for approval (to the booker).
    Booked,
    /// An admin approved; the booking holds (to the booker).
    Confirmed,
    /// An admin denied; the booking is undone (to the booker).
    Denied,
    /// The owner (or an admin for them) cancelled (to the booker).
    Cancelled,
    /// Nobody decided before the approval deadline; the booking is undone (to the booker).
    Expired,
    /// A booking waits for a decision (to the admins).
    ApprovalRequested,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Booked,
        Kind::Confirmed,
        Kind::Denied,
        Kind::Cancelled,
        Kind::Expired,
        Kind::ApprovalRequested,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Booked => "BOOKED",
            Kind::Confirmed => "CONFIRMED",
            Kind::Denied => "DENIED",
            Kind::Cancelled => "CANCELLED",
            Kind::Expired => "EXPIRED",
            Kind::ApprovalRequested => "APPROVAL_REQUESTED",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The mail a cancellation of this reason gets.
    pub fn of_cancel(reason: CancelReason) -> Kind {
        match reason {
            CancelReason::UserCancelled => Kind::Cancelled,
            CancelReason::Denied => Kind::Denied,
            CancelReason::Expired => Kind::Expired,
        }
    }

    /// Mail to the booker follows the booking; the booking is gone after these.
    pub fn withdraws_the_booking(self) -> bool {
        matches!(self, Kind::Denied | Kind::Cancelled | Kind::Expired)
    }
}

/// Who a mail is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = NotificationRole)]
pub enum Role {
    Booker,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Booker => "BOOKER",
            Role::Admin => "ADMIN",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "BOOKER" => Some(Role::Booker),
            "ADMIN" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schema(as = NotificationStatus)]
pub enum Status {
    /// The event arrived before the booking's `BookingCreated` (which names the booker's
    /// address); it is sent once that arrives, or FAILED after a grace period.
    Waiting,
    /// Ready to send, or being retried after a transient failure (`nextAttemptAt`).
    Pending,
    /// Accepted by the mail server (or written to the mail folder).
    Sent,
    /// Will not be sent; `lastError` says why.
    Failed,
    /// Deliberately not sent (a newer status of the booking was already mailed, or the event
    /// was too old); `lastError` says why.
    Skipped,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Waiting,
        Status::Pending,
        Status::Sent,
        Status::Failed,
        Status::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "WAITING",
            Status::Pending => "PENDING",
            Status::Sent => "SENT",
            Status::Failed => "FAILED",
            Status::Skipped => "SKIPPED",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The booking a mail describes: room, slot and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookingFacts {
    pub booking_user_id: String,
    pub booking_user_email: Option<String>,
    pub room_id: RoomId,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// One delivery record: one event, one recipient. This is also what `GET /notifications`
/// shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: Uuid,
    pub booking_id: Uuid,
    /// The `messageId` of the event that caused this mail.
    pub event_id: Uuid,
    pub event_type: String,
    #[serde(skip)]
    pub event_version: i64,
    #[serde(with = "platform::contract::rfc3339_utc")]
    pub occurred_at: DateTime<Utc>,
    pub kind: Kind,
    pub recipient_role: Role,
    /// The address, once known (a WAITING booker mail has none yet).
    pub recipient: Option<String>,
    pub booking_user_id: Option<String>,
    #[schema(value_type = Option<i64>, example = 101)]
    pub room_id: Option<RoomId>,
    #[serde(with = "optional_utc")]
    pub use_start_dtm: Option<DateTime<Utc>>,
    #[serde(with = "optional_utc")]
    pub use_end_dtm: Option<DateTime<Utc>>,
    /// The reason given with a denial or cancellation.
    pub detail: Option<String>,
    pub confirm_id: Option<Uuid>,
    #[serde(with = "optional_utc")]
    pub approval_deadline: Option<DateTime<Utc>>,
    pub subject: Option<String>,
    /// The `Message-ID` header of the mail: derived from the event and the recipient, so a
    /// resend of the same mail is recognisable.
    pub mail_message_id: String,
    pub status: Status,
    pub attempts: i64,
    #[serde(with = "optional_utc")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    #[serde(with = "platform::contract::rfc3339_utc")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "platform::contract::rfc3339_utc")]
    pub updated_at: DateTime<Utc>,
    #[serde(with = "optional_utc")]
    pub sent_at: Option<DateTime<Utc>>,
}

impl Notification {
    /// The slot, when the booking is known.
    pub fn facts(&self) -> Option<(RoomId, DateTime<Utc>, DateTime<Utc>)> {
        Some((self.room_id?, self.use_start_dtm?, self.use_end_dtm?))
    }
}

mod optional_utc {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&platform::time::format_utc(*t)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("sent"), None);
        assert_eq!(Role::parse(Role::Admin.as_str()), Some(Role::Admin));
    }

    #[test]
    fn each_cancel_reason_has_its_own_mail() {
        assert_eq!(Kind::of_cancel(CancelReason::Denied), Kind::Denied);
        assert_eq!(
            Kind::of_cancel(CancelReason::UserCancelled),
            Kind::Cancelled
        );
        assert_eq!(Kind::of_cancel(CancelReason::Expired), Kind::Expired);
    }
}
