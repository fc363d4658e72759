//! The projection's defining property, checked on random histories: for any valid event history
//! of a booking, folding any shuffle of it, with any events repeated, gives the same row as
//! folding it in order.
//!
//! A valid history is one chain of events per source — booking, confirm, orchestrator — each
//! with strictly increasing versions (gaps allowed: the orchestrator counts its commands too),
//! interleaved in some order, with `occurredAt` increasing along that order.

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use platform::contract::*;
use proptest::{prelude::*, sample::Index};
use roombook_bookinglist::projection::{fold, BookingRow, BookingStatus, ConfirmStatus};
use uuid::Uuid;

const BOOKING: Uuid = Uuid::from_u128(0xB00C);
const SAGA: Uuid = Uuid::from_u128(0x5A6A);
const CONFIRM: Uuid = Uuid::from_u128(0xC0);

#[derive(Debug, Clone, Copy)]
enum Source {
    Booking,
    Confirm,
    Saga,
}

fn created() -> Body {
    Body::BookingCreated(BookingCreated {
        room_id: 101,
        booking_user_id: "alice".into(),
        booking_user_email: Some("alice@example.com".into()),
        use_start_dtm: Utc.with_ymd_and_hms(2026, 5, 4, 9, 0, 0).unwrap(),
        use_end_dtm: Utc.with_ymd_and_hms(2026, 5, 4, 10, 0, 0).unwrap(),
    })
}

fn cancelled(reason: CancelReason) -> Body {
    Body::BookingCancelled(BookingCancelled {
        reason,
        detail: Some(format!("because {}", reason.as_str())),
    })
}

fn requested() -> Body {
    Body::ConfirmRequested(ConfirmRequested {
        confirm_id: CONFIRM,
        room_id: 101,
        booking_user_id: "alice".into(),
        use_start_dtm: Utc.with_ymd_and_hms(2026, 5, 4, 9, 0, 0).unwrap(),
        use_end_dtm: Utc.with_ymd_and_hms(2026, 5, 4, 10, 0, 0).unwrap(),
        approval_deadline: Utc.with_ymd_and_hms(2026, 5, 3, 9, 0, 0).unwrap(),
    })
}

fn decided(approve: bool) -> Body {
    let d = ConfirmDecided {
        confirm_id: CONFIRM,
        confirm_user_id: "admin".into(),
        reason: (!approve).then(|| "room under repair".to_string()),
    };
    if approve {
        Body::ConfirmCompleted(d)
    } else {
        Body::ConfirmDenied(d)
    }
}

fn closed(was_requested: bool, reason: &str) -> Body {
    Body::ConfirmClosed(ConfirmClosed {
        confirm_id: CONFIRM,
        was_requested,
        reason: reason.into(),
    })
}

fn expired() -> Body {
    Body::ConfirmExpired(ConfirmExpired {
        confirm_id: CONFIRM,
    })
}

/// The booking service's possible histories of one booking.
fn booking_chains() -> Vec<Vec<Body>> {
    vec![
        vec![],
        vec![created()],
        vec![created(), Body::BookingConfirmed(BookingConfirmed {})],
        vec![created(), cancelled(CancelReason::UserCancelled)],
        vec![created(), cancelled(CancelReason::Denied)],
        vec![created(), cancelled(CancelReason::Expired)],
        vec![
            created(),
            Body::BookingConfirmed(BookingConfirmed {}),
            cancelled(CancelReason::UserCancelled),
        ],
    ]
}

/// The confirm service's possible histories of one booking.
fn confirm_chains() -> Vec<Vec<Body>> {
    vec![
        vec![],
        vec![requested()],
        vec![requested(), decided(true)],
        vec![requested(), decided(false)],
        vec![requested(), closed(true, "USER_CANCELLED")],
        vec![requested(), decided(true), closed(true, "USER_CANCELLED")],
        vec![requested(), decided(false), closed(true, "DENIED")],
        vec![requested(), expired()],
        vec![closed(false, "USER_CANCELLED")],
    ]
}

const SAGA_STATES: [&str; 8] = [
    "STARTED",
    "AWAITING_APPROVAL",
    "CONFIRMING",
    "COMPLETED",
    "COMPENSATING",
    "CANCELLING",
    "COMPENSATED",
    "CANCELLED",
];

/// A valid history, in the order it happened.
fn history() -> impl Strategy<Value = Vec<Envelope>> {
    (
        0..booking_chains().len(),
        0..confirm_chains().len(),
        prop::collection::vec(0..SAGA_STATES.len(), 0..6),
        prop::collection::vec(1u64..4, 24),
        prop::collection::vec(0u8..3, 24),
        prop::collection::vec(1i64..5_000, 24),
    )
        .prop_map(|(b, c, saga, gaps, picks, steps)| {
            let mut chains: Vec<(Source, Vec<Body>)> = vec![
                (Source::Booking, booking_chains().swap_remove(b)),
                (Source::Confirm, confirm_chains().swap_remove(c)),
                (
                    Source::Saga,
                    saga.iter()
                        .map(|&i| {
                            Body::SagaStateChanged(SagaStateChanged {
                                state: SAGA_STATES[i].into(),
                                previous_state: None,
                            })
                        })
                        .collect(),
                ),
            ];
            for (_, chain) in &mut chains {
                chain.reverse(); // pop() takes them in order
            }
            let mut versions = [0u64; 3];
            let mut at: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
            let mut out = Vec::new();
            let mut i = 0;
            while chains.iter().any(|(_, c)| !c.is_empty()) {
                // Pick a source with events left, steered by the generated choices.
                let mut k = usize::from(picks[i % picks.len()]) % 3;
                while chains[k].1.is_empty() {
                    k = (k + 1) % 3;
                }
                let (source, chain) = &mut chains[k];
                let body = chain.pop().expect("not empty");
                let slot = match source {
                    Source::Booking => 0,
                    Source::Confirm => 1,
                    Source::Saga => 2,
                };
                versions[slot] += gaps[i % gaps.len()];
                at += Duration::milliseconds(steps[i % steps.len()]);
                let mut env = Envelope::new(BOOKING, SAGA, versions[slot], body);
                env.occurred_at = at;
                out.push(env);
                i += 1;
            }
            out
        })
}

/// A history, and the same events shuffled with some of them delivered again.
fn history_and_redelivery() -> impl Strategy<Value = (Vec<Envelope>, Vec<Envelope>)> {
    history().prop_flat_map(|h| {
        let shuffled = Just(h.clone()).prop_shuffle();
        let repeats = prop::collection::vec((any::<Index>(), any::<Index>()), 0..8);
        (Just(h), shuffled, repeats).prop_map(|(h, mut delivered, repeats)| {
            if !h.is_empty() {
                for (which, at) in repeats {
                    let again = h[which.index(h.len())].clone();
                    let position = at.index(delivered.len() + 1);
                    delivered.insert(position, again);
                }
            }
            (h, delivered)
        })
    })
}

fn fold_all(events: &[Envelope]) -> BookingRow {
    events.iter().fold(BookingRow::empty(BOOKING), fold)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_shuffle_with_duplicates_gives_the_in_order_row(
        (in_order, delivered) in history_and_redelivery()
    ) {
        prop_assert_eq!(fold_all(&delivered), fold_all(&in_order));
    }

    #[test]
    fn the_row_reflects_the_newest_event_of_each_source(
        (in_order, delivered) in history_and_redelivery()
    ) {
        let row = fold_all(&delivered);
        let newest = |pred: fn(&Body) -> bool| {
            in_order.iter().filter(|e| pred(&e.body)).max_by_key(|e| e.version)
        };
        match newest(|b| matches!(
            b,
            Body::BookingCreated(_) | Body::BookingConfirmed(_) | Body::BookingCancelled(_)
        )).map(|e| &e.body) {
            None => prop_assert_eq!(row.booking_status, None),
            Some(Body::BookingCreated(_)) => {
                prop_assert_eq!(row.booking_status, Some(BookingStatus::Booked))
            }
            Some(Body::BookingConfirmed(_)) => {
                prop_assert_eq!(row.booking_status, Some(BookingStatus::Confirmed))
            }
            Some(Body::BookingCancelled(c)) => {
                prop_assert_eq!(row.booking_status, Some(BookingStatus::Cancelled));
                prop_assert_eq!(row.cancel_reason, Some(c.reason));
            }
            Some(other) => prop_assert!(false, "unexpected {other:?}"),
        }
        match newest(|b| matches!(
            b,
            Body::ConfirmRequested(_) | Body::ConfirmCompleted(_) | Body::ConfirmDenied(_)
        )).map(|e| &e.body) {
            None => prop_assert_eq!(row.confirm_status, None),
            Some(Body::ConfirmRequested(_)) => {
                prop_assert_eq!(row.confirm_status, Some(ConfirmStatus::Booked))
            }
            Some(Body::ConfirmCompleted(_)) => {
                prop_assert_eq!(row.confirm_status, Some(ConfirmStatus::Confirmed))
            }
            Some(Body::ConfirmDenied(_)) => {
                prop_assert_eq!(row.confirm_status, Some(ConfirmStatus::Denied));
                prop_assert_eq!(row.deny_reason.as_deref(), Some("room under repair"));
            }
            Some(other) => prop_assert!(false, "unexpected {other:?}"),
        }
        let closes = newest(|b| matches!(b, Body::ConfirmClosed(_) | Body::ConfirmExpired(_)));
        prop_assert_eq!(row.confirm_closed, closes.is_some());
        match newest(|b| matches!(b, Body::SagaStateChanged(_))).map(|e| &e.body) {
            Some(Body::SagaStateChanged(s)) => {
                prop_assert_eq!(row.saga_state.as_deref(), Some(s.state.as_str()))
            }
            _ => prop_assert_eq!(row.saga_state, None),
        }
        // What describes the booking is known as soon as any event that carries it arrived.
        let described = in_order.iter().any(|e| {
            matches!(e.body, Body::BookingCreated(_) | Body::ConfirmRequested(_))
        });
        prop_assert_eq!(row.room_id.is_some(), described);
        prop_assert_eq!(row.booking_user_id.is_some(), described);
        if let Some(last) = in_order.iter().map(|e| e.occurred_at).max() {
            prop_assert_eq!(row.updated_at, last);
        }
    }
}
