//! The message contract shared by all services: one envelope type for every event and command.
//!
//! On the wire a message is JSON in camelCase:
//! `{messageId, type, bookingId, sagaId, occurredAt, version, correlationId, payload}`.
//! `type` names the payload. Events are facts in the past tense and are published by the service
//! that owns the fact; commands are imperative and addressed to one participant.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A room's identifier (numeric, as in the original walkthrough: `roomId=102`).
pub type RoomId = i64;

/// The envelope around every message on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub message_id: Uuid,
    pub booking_id: Uuid,
    pub saga_id: Uuid,
    #[serde(with = "rfc3339_utc")]
    pub occurred_at: DateTime<Utc>,
    /// Per-booking sequence of the emitting service (booking, confirm or orchestrator): a
    /// consumer that has applied version `n` from a source ignores anything `<= n` from it.
    pub version: u64,
    /// Ties every message of one booking's saga together (the booking's saga id by default).
    pub correlation_id: Uuid,
    #[serde(flatten)]
    pub body: Body,
}

/// The payload of a message, tagged by its `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum Body {
    // Events of the booking service.
    BookingCreated(BookingCreated),
    BookingConfirmed(BookingConfirmed),
    BookingCancelled(BookingCancelled),
    // Events of the confirm service.
    ConfirmRequested(ConfirmRequested),
    ConfirmCompleted(ConfirmDecided),
    ConfirmDenied(ConfirmDecided),
    ConfirmClosed(ConfirmClosed),
    ConfirmExpired(ConfirmExpired),
    // Events of the orchestrator.
    SagaStateChanged(SagaStateChanged),
    // Commands to the confirm service.
    RequestConfirm(RequestConfirm),
    DeleteConfirm(DeleteConfirm),
    ExpireConfirm(ExpireConfirm),
    // Commands to the booking service.
    ConfirmBooking(ConfirmBooking),
    CancelBooking(CancelBooking),
}

impl Body {
    /// Every `type` name, as [`Body::type_name`] gives them.
    pub const TYPE_NAMES: [&'static str; 14] = [
        "BookingCreated",
        "BookingConfirmed",
        "BookingCancelled",
        "ConfirmRequested",
        "ConfirmCompleted",
        "ConfirmDenied",
        "ConfirmClosed",
        "ConfirmExpired",
        "SagaStateChanged",
        "RequestConfirm",
        "DeleteConfirm",
        "ExpireConfirm",
        "ConfirmBooking",
        "CancelBooking",
    ];

    /// The type a subject names (its last token) if it is one of ours, else `"unknown"`: a
    /// label that cannot grow with whatever is published.
    pub fn type_of_subject(subject: &str) -> &'static str {
        let last = subject.rsplit('.').next().unwrap_or_default();
        Self::TYPE_NAMES
            .into_iter()
            .find(|t| *t == last)
            .unwrap_or("unknown")
    }

    /// The `type` name as it appears on the wire and in subjects.
    pub fn type_name(&self) -> &'static str {
        match self {
            Body::BookingCreated(_) => "BookingCreated",
            Body::BookingConfirmed(_) => "BookingConfirmed",
            Body::BookingCancelled(_) => "BookingCancelled",
            Body::ConfirmRequested(_) => "ConfirmRequested",
            Body::ConfirmCompleted(_) => "ConfirmCompleted",
            Body::ConfirmDenied(_) => "ConfirmDenied",
            Body::ConfirmClosed(_) => "ConfirmClosed",
            Body::ConfirmExpired(_) => "ConfirmExpired",
            Body::SagaStateChanged(_) => "SagaStateChanged",
            Body::RequestConfirm(_) => "RequestConfirm",
            Body::DeleteConfirm(_) => "DeleteConfirm",
            Body::ExpireConfirm(_) => "ExpireConfirm",
            Body::ConfirmBooking(_) => "ConfirmBooking",
            Body::CancelBooking(_) => "CancelBooking",
        }
    }
}

/// The booking as it was created: everything downstream services need to describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BookingCreated {
    pub room_id: RoomId,
    pub booking_user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking_user_email: Option<String>,
    #[serde(with = "rfc3339_utc")]
    pub use_start_dtm: DateTime<Utc>,
    #[serde(with = "rfc3339_utc")]
    pub use_end_dtm: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BookingConfirmed {}

/// Why a booking was cancelled; decides how its saga ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CancelReason {
    /// The owner (or an admin on their behalf) cancelled: the saga ends CANCELLED.
    UserCancelled,
    /// The admin denied the approval: the saga ends COMPENSATED.
    Denied,
    /// No decision came before the deadline: the saga ends COMPENSATED.
    Expired,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::UserCancelled => "USER_CANCELLED",
            CancelReason::Denied => "DENIED",
            CancelReason::Expired => "EXPIRED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "USER_CANCELLED" => Some(CancelReason::UserCancelled),
            "DENIED" => Some(CancelReason::Denied),
            "EXPIRED" => Some(CancelReason::Expired),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BookingCancelled {
    pub reason: CancelReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmRequested {
    pub confirm_id: Uuid,
    pub room_id: RoomId,
    pub booking_user_id: String,
    #[serde(with = "rfc3339_utc")]
    pub use_start_dtm: DateTime<Utc>,
    #[serde(with = "rfc3339_utc")]
    pub use_end_dtm: DateTime<Utc>,
    /// No decision is accepted from this instant on.
    #[serde(with = "rfc3339_utc")]
    pub approval_deadline: DateTime<Utc>,
}

/// An admin's decision (`ConfirmCompleted` approves, `ConfirmDenied` denies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmDecided {
    pub confirm_id: Uuid,
    pub confirm_user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmClosed {
    pub confirm_id: Uuid,
    /// False when the confirm was closed before it was ever requested (a tombstone that makes
    /// a late `RequestConfirm` a no-op).
    pub was_requested: bool,
    pub reason: String,
}

/// The approval deadline passed with no decision; the confirm is closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmExpired {
    pub confirm_id: Uuid,
}

/// The approval deadline passed: close the confirm unless it was decided in time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpireConfirm {}

/// Every state a saga can be in, as [`SagaStateChanged`] names them (the orchestrator's own
/// type is checked against this list).
pub const SAGA_STATES: [&str; 8] = [
    "STARTED",
    "AWAITING_APPROVAL",
    "CONFIRMING",
    "COMPENSATING",
    "CANCELLING",
    "COMPLETED",
    "COMPENSATED",
    "CANCELLED",
];

/// The states a saga ends in.
pub const SETTLED_SAGA_STATES: [&str; 3] = ["COMPLETED", "COMPENSATED", "CANCELLED"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaStateChanged {
    /// One of [`SAGA_STATES`].
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_state: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestConfirm {
    pub room_id: RoomId,
    pub booking_user_id: String,
    #[serde(with = "rfc3339_utc")]
    pub use_start_dtm: DateTime<Utc>,
    #[serde(with = "rfc3339_utc")]
    pub use_end_dtm: DateTime<Utc>,
    /// No decision is accepted from this instant on.
    #[serde(with = "rfc3339_utc")]
    pub approval_deadline: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteConfirm {
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmBooking {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelBooking {
    pub reason: CancelReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Envelope {
    /// A new message about `booking_id` in saga `saga_id`, stamped now.
    pub fn new(booking_id: Uuid, saga_id: Uuid, version: u64, body: Body) -> Self {
        Envelope {
            message_id: Uuid::now_v7(),
            booking_id,
            saga_id,
            occurred_at: crate::time::now(),
            version,
            correlation_id: saga_id,
            body,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// RFC 3339 in UTC with millisecond precision (`2026-11-22T09:00:00.000Z`), the one time format
/// on the bus.
pub mod rfc3339_utc {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::time::format_utc(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_with_camel_case_fields_and_type_tag() {
        let env = Envelope::new(
            Uuid::new_v4(),
            Uuid::new_v4(),
            3,
            Body::CancelBooking(CancelBooking {
                reason: CancelReason::Denied,
                detail: Some("room closed".into()),
            }),
        );
        let json: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
        assert_eq!(json["type"], "CancelBooking");
        assert_eq!(json["payload"]["reason"], "DENIED");
        assert_eq!(json["version"], 3);
        assert!(json["occurredAt"].as_str().unwrap().ends_with('Z'));
        for key in ["messageId", "bookingId", "sagaId", "correlationId"] {
            assert!(json[key].is_string(), "{key} missing in {json}");
        }
        assert_eq!(Envelope::from_json(&env.to_json()).unwrap(), env);
    }

    #[test]
    fn subjects_name_their_type_or_unknown() {
        for name in Body::TYPE_NAMES {
            // Each is a type the wire knows (a payload error, never an unknown variant).
            let parsed =
                serde_json::from_value::<Body>(serde_json::json!({"type": name, "payload": 1}));
            assert!(
                !parsed.unwrap_err().to_string().contains("unknown variant"),
                "{name}"
            );
            let subject = format!("roombook.events.booking.{}.{name}", Uuid::new_v4());
            assert_eq!(Body::type_of_subject(&subject), name);
        }
        let env = Envelope::new(
            Uuid::new_v4(),
            Uuid::new_v4(),
            1,
            Body::ConfirmBooking(ConfirmBooking {}),
        );
        assert_eq!(
            Body::type_of_subject(&crate::topology::subject_for(&env)),
            "ConfirmBooking"
        );
        for garbage in ["roombook.events.booking.x.Nope", "", "roombook.dlq.booking"] {
            assert_eq!(Body::type_of_subject(garbage), "unknown");
        }
    }

    #[test]
    fn unknown_type_and_garbage_do_not_parse() {
        assert!(Envelope::from_json(b"not json").is_err());
        let mut json: serde_json::Value = serde_json::from_slice(
            &Envelope::new(
                Uuid::new_v4(),
                Uuid::new_v4(),
                1,
                Body::ConfirmBooking(ConfirmBooking {}),
            )
            .to_json(),
        )
        .unwrap();
        json["type"] = "SomethingElse".into();
        assert!(Envelope::from_json(json.to_string().as_bytes()).is_err());
    }
}
