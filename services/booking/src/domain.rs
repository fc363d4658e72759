//! The booking domain: a time slot that cannot be built backwards, statuses, and the booking.

use chrono::{DateTime, Utc};
use platform::contract::{CancelReason, RoomId};
use serde::Serialize;
use uuid::Uuid;

/// A half-open interval `[start, end)` with `end > start`, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSlot {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl TimeSlot {
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Result<Self, String> {
        if end <= start {
            return Err("useEndDtm must be after useStartDtm".into());
        }
        Ok(TimeSlot { start, end })
    }

    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    pub fn end(&self) -> DateTime<Utc> {
        self.end
    }

    pub fn overlaps(&self, other: &TimeSlot) -> bool {
        self.start < other.end && other.start < self.end
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BookingStatus {
    Booked,
    Confirmed,
    Cancelled,
}

impl BookingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BookingStatus::Booked => "BOOKED",
            BookingStatus::Confirmed => "CONFIRMED",
            BookingStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "BOOKED" => Some(BookingStatus::Booked),
            "CONFIRMED" => Some(BookingStatus::Confirmed),
            "CANCELLED" => Some(BookingStatus::Cancelled),
            _ => None,
        }
    }
}

/// A booking as stored and as shown to its owner.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Booking {
    pub id: Uuid,
    pub saga_id: Uuid,
    #[schema(value_type = i64, example = 101)]
    pub room_id: RoomId,
    pub booking_user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booking_user_email: Option<String>,
    #[serde(with = "platform::contract::rfc3339_utc")]
    pub use_start_dtm: DateTime<Utc>,
    #[serde(with = "platform::contract::rfc3339_utc")]
    pub use_end_dtm: DateTime<Utc>,
    pub status: BookingStatus,
    /// Why it was cancelled: `USER_CANCELLED`, `DENIED` or `EXPIRED`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "DENIED")]
    pub cancel_reason: Option<CancelReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_detail: Option<String>,
    /// Per-booking sequence; the version of the last event this booking emitted.
    pub version: i64,
    #[serde(with = "platform::contract::rfc3339_utc")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "platform::contract::rfc3339_utc")]
    pub updated_at: DateTime<Utc>,
}

impl Booking {
    pub fn slot(&self) -> TimeSlot {
        TimeSlot {
            start: self.use_start_dtm,
            end: self.use_end_dtm,
        }
    }
}

/// A room that can be booked.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Room {
    #[schema(value_type = i64, example = 101)]
    pub id: RoomId,
    pub name: String,
    pub capacity: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, h, 0, 0).unwrap()
    }

    #[test]
    fn a_slot_cannot_end_before_or_when_it_starts() {
        assert!(TimeSlot::new(at(10), at(9)).is_err());
        assert!(TimeSlot::new(at(10), at(10)).is_err());
        assert!(TimeSlot::new(at(9), at(10)).is_ok());
    }

    #[test]
    fn touching_slots_do_not_overlap_but_nested_ones_do() {
        let a = TimeSlot::new(at(9), at(10)).unwrap();
        let b = TimeSlot::new(at(10), at(11)).unwrap();
        let c = TimeSlot::new(at(8), at(12)).unwrap();
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&c) && c.overlaps(&b));
    }
}
