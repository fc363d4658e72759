//! Which room and time each booking of a run asks for.
//!
//! Booking number `i` gets room `rooms[i % R]` and that room's `i / R`-th slot. Slots are laid
//! one `step` apart from a base instant far in the future and each booking lasts `length <
//! step`, so two bookings of one run never overlap (and never even touch), whatever the
//! concurrency: the booking service should answer every create with 201, and a 409 is an error
//! worth counting.

use chrono::{DateTime, Duration, DurationRound as _, Utc};

pub type RoomId = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub room: RoomId,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct SlotPlan {
    rooms: Vec<RoomId>,
    base: DateTime<Utc>,
    step: Duration,
    length: Duration,
}

impl SlotPlan {
    /// Slots one hour apart, each 30 minutes long, from `base`.
    pub fn new(rooms: Vec<RoomId>, base: DateTime<Utc>) -> anyhow::Result<Self> {
        Self::with_step(rooms, base, Duration::hours(1), Duration::minutes(30))
    }

    pub fn with_step(
        rooms: Vec<RoomId>,
        base: DateTime<Utc>,
        step: Duration,
        length: Duration,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!rooms.is_empty(), "no rooms to book");
        anyhow::ensure!(
            length > Duration::zero() && length < step,
            "a booking must be shorter than the step between slots"
        );
        Ok(SlotPlan {
            rooms,
            base,
            step,
            length,
        })
    }

    /// A base instant for a run: on the hour, 3 years ahead plus `offset_days`. Runs with
    /// different offsets reuse the same rooms without meeting each other's bookings.
    pub fn base_for_run(now: DateTime<Utc>, offset_days: u32) -> DateTime<Utc> {
        let hour = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
        hour + Duration::days(3 * 365) + Duration::days(i64::from(offset_days))
    }

    pub fn rooms(&self) -> &[RoomId] {
        &self.rooms
    }

    pub fn slot(&self, i: u64) -> Slot {
        let r = self.rooms.len() as u64;
        let room = self.rooms[(i % r) as usize];
        // A run books far fewer than 2^31 slots per room.
        let n = i32::try_from(i / r).unwrap_or(i32::MAX);
        let start = self.base + self.step * n;
        Slot {
            room,
            start,
            end: start + self.length,
        }
    }
}

/// RFC 3339 with a `Z`, as the API documents it.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn overlaps(a: &Slot, b: &Slot) -> bool {
        a.room == b.room && a.start < b.end && b.start < a.end
    }

    #[test]
    fn no_two_slots_of_a_run_overlap_or_touch() {
        let base = SlotPlan::base_for_run(Utc::now(), 17);
        let plan = SlotPlan::new(vec![101, 102, 103, 7], base).unwrap();
        let mut by_room: HashMap<RoomId, Vec<Slot>> = HashMap::new();
        for i in 0..20_000 {
            let s = plan.slot(i);
            assert!(s.end > s.start);
            by_room.entry(s.room).or_default().push(s);
        }
        for slots in by_room.values_mut() {
            slots.sort_by_key(|s| s.start);
            for pair in slots.windows(2) {
                assert!(!overlaps(&pair[0], &pair[1]), "{pair:?}");
                assert!(pair[0].end < pair[1].start, "touching slots: {pair:?}");
            }
        }
    }

    #[test]
    fn an_exhaustive_check_finds_no_overlap_for_a_small_plan() {
        let plan = SlotPlan::new(vec![1, 2, 3], SlotPlan::base_for_run(Utc::now(), 0)).unwrap();
        let slots: Vec<Slot> = (0..300).map(|i| plan.slot(i)).collect();
        for (a, x) in slots.iter().enumerate() {
            for y in &slots[a + 1..] {
                assert!(!overlaps(x, y), "{x:?} overlaps {y:?}");
            }
        }
    }

    #[test]
    fn rooms_are_used_round_robin_and_slots_are_in_the_future() {
        let now = Utc::now();
        let plan = SlotPlan::new(vec![5, 6], SlotPlan::base_for_run(now, 0)).unwrap();
        assert_eq!(plan.slot(0).room, 5);
        assert_eq!(plan.slot(1).room, 6);
        assert_eq!(plan.slot(2).room, 5);
        assert_eq!(plan.slot(2).start - plan.slot(0).start, Duration::hours(1));
        assert!(plan.slot(0).start > now + Duration::days(365));
    }

    #[test]
    fn different_run_offsets_do_not_meet() {
        let now = Utc::now();
        let a = SlotPlan::new(vec![1], SlotPlan::base_for_run(now, 0)).unwrap();
        let b = SlotPlan::new(vec![1], SlotPlan::base_for_run(now, 1000)).unwrap();
        // 20,000 one-hour slots are ~833 days: run a ends before run b begins.
        assert!(a.slot(19_999).end < b.slot(0).start);
    }

    #[test]
    fn a_plan_needs_rooms_and_a_gap_between_slots() {
        let base = Utc::now();
        assert!(SlotPlan::new(vec![], base).is_err());
        assert!(
            SlotPlan::with_step(vec![1], base, Duration::hours(1), Duration::hours(1)).is_err()
        );
    }

    #[test]
    fn times_are_formatted_as_rfc3339_utc() {
        let t = DateTime::parse_from_rfc3339("2030-12-01T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(rfc3339(t), "2030-12-01T09:00:00Z");
    }
}
