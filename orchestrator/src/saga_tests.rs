//! Given a saga in each state, when each input message arrives, then the saga moves (or not)
//! and sends exactly the expected messages.

use super::*;
use chrono::TimeZone;
use platform::contract::*;

fn booking_id() -> Uuid {
    Uuid::from_u128(7)
}

fn saga_id() -> Uuid {
    Uuid::from_u128(8)
}

fn env(version: u64, body: Body) -> Envelope {
    Envelope::new(booking_id(), saga_id(), version, body)
}

fn at(h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 5, 1, h, 0, 0).unwrap()
}

fn created() -> Body {
    Body::BookingCreated(BookingCreated {
        room_id: 101,
        booking_user_id: "alice".into(),
        booking_user_email: None,
        use_start_dtm: at(9),
        use_end_dtm: at(10),
    })
}

fn requested() -> Body {
    Body::ConfirmRequested(ConfirmRequested {
        confirm_id: Uuid::from_u128(9),
        room_id: 101,
        booking_user_id: "alice".into(),
        use_start_dtm: at(9),
        use_end_dtm: at(10),
        approval_deadline: at(8),
    })
}

fn decided() -> ConfirmDecided {
    ConfirmDecided {
        confirm_id: Uuid::from_u128(9),
        confirm_user_id: "admin".into(),
        reason: Some("room under repair".into()),
    }
}

fn cancelled(reason: CancelReason) -> Body {
    Body::BookingCancelled(BookingCancelled {
        reason,
        detail: None,
    })
}

fn closed() -> Body {
    Body::ConfirmClosed(ConfirmClosed {
        confirm_id: Uuid::from_u128(9),
        was_requested: true,
        reason: "x".into(),
    })
}

fn expired() -> Body {
    Body::ConfirmExpired(ConfirmExpired {
        confirm_id: Uuid::from_u128(9),
    })
}

/// The nine inputs, each at a version newer than the saga has seen (booking events are v2+,
/// confirm events v2+), except BookingCreated which is always v1.
fn inputs() -> Vec<(&'static str, Envelope)> {
    vec![
        ("BookingCreated", env(1, created())),
        ("ConfirmRequested", env(2, requested())),
        (
            "ConfirmCompleted",
            env(2, Body::ConfirmCompleted(decided())),
        ),
        ("ConfirmDenied", env(2, Body::ConfirmDenied(decided()))),
        (
            "BookingConfirmed",
            env(2, Body::BookingConfirmed(BookingConfirmed {})),
        ),
        (
            "BookingCancelled(USER)",
            env(2, cancelled(CancelReason::UserCancelled)),
        ),
        (
            "BookingCancelled(DENIED)",
            env(2, cancelled(CancelReason::Denied)),
        ),
        (
            "BookingCancelled(EXPIRED)",
            env(2, cancelled(CancelReason::Expired)),
        ),
        ("ConfirmClosed", env(2, closed())),
        ("ConfirmExpired", env(2, expired())),
    ]
}

fn saga_in(state: SagaState, booking_cancelled: bool) -> Saga {
    Saga {
        saga_id: saga_id(),
        booking_id: booking_id(),
        state,
        booking_cancelled,
        booking: None,
        confirm_id: None,
        outcome: None,
        booking_version: 1,
        confirm_version: 1,
        version: 3,
        approval_deadline: Some(at(8)),
        expiry_requested: false,
        pending: None,
        attempts: 0,
        stuck: false,
        announced: Some(state),
    }
}

fn commands(t: &Transition) -> Vec<&'static str> {
    t.outputs
        .iter()
        .filter(|b| !matches!(b, Body::SagaStateChanged(_)))
        .map(Body::type_name)
        .collect()
}

/// Expected (state after, commands) for one state and input; None means "no effect".
fn expected(
    state: SagaState,
    booking_cancelled: bool,
    input: &str,
) -> Option<(SagaState, Vec<&'static str>)> {
    use SagaState::*;
    let user_cancellable = matches!(state, Started | AwaitingApproval | Confirming | Completed)
        || (state == Compensating && !booking_cancelled);
    match (state, input) {
        (Started, "ConfirmRequested") => Some((AwaitingApproval, vec![])),
        (Started | AwaitingApproval, "ConfirmCompleted") => {
            Some((Confirming, vec!["ConfirmBooking"]))
        }
        (Started | AwaitingApproval, "ConfirmDenied" | "ConfirmExpired") => {
            Some((Compensating, vec!["CancelBooking"]))
        }
        (Confirming, "BookingConfirmed") => Some((Completed, vec![])),
        (_, "BookingCancelled(USER)") if user_cancellable => {
            Some((Cancelling, vec!["DeleteConfirm"]))
        }
        (Compensating, "BookingCancelled(DENIED)" | "BookingCancelled(EXPIRED)")
            if !booking_cancelled =>
        {
            Some((Compensating, vec!["DeleteConfirm"]))
        }
        (Compensating, "ConfirmClosed") if booking_cancelled => Some((Compensated, vec![])),
        (Cancelling, "ConfirmClosed") => Some((Cancelled, vec![])),
        _ => None,
    }
}

#[test]
fn every_state_and_message_pair_has_its_defined_outcome() {
    let mut states: Vec<(SagaState, bool)> = SagaState::ALL.iter().map(|s| (*s, false)).collect();
    states.push((SagaState::Compensating, true));
    for (state, booking_cancelled) in states {
        for (name, msg) in inputs() {
            let saga = saga_in(state, booking_cancelled);
            let result = apply(Some(&saga), &msg, &Policy::default());
            let case = format!(
                "{} (booking cancelled: {booking_cancelled}) + {name}",
                state.as_str()
            );
            if name == "BookingCreated" {
                assert!(
                    result.is_err(),
                    "{case}: a second BookingCreated must be stale"
                );
                continue;
            }
            let t = result.unwrap_or_else(|e| panic!("{case}: unexpectedly ignored: {e}"));
            match expected(state, booking_cancelled, name) {
                Some((next, cmds)) => {
                    assert_eq!(t.saga.state, next, "{case}");
                    assert_eq!(commands(&t), cmds, "{case}");
                    assert!(t.note.is_none(), "{case}");
                    let announced = t.outputs.iter().any(
                        |b| matches!(b, Body::SagaStateChanged(c) if c.state == next.as_str()),
                    );
                    assert_eq!(
                        announced,
                        next != state && next.is_announced_at_once(),
                        "{case}: a move is announced at once"
                    );
                }
                None => {
                    assert_eq!(t.saga.state, state, "{case}: must not move");
                    assert!(t.outputs.is_empty(), "{case}: must send nothing");
                    assert!(t.note.is_some(), "{case}: must say why nothing happened");
                }
            }
        }
    }
}

#[test]
fn the_saga_states_are_the_ones_the_contract_names() {
    let mut ours: Vec<&str> = SagaState::ALL.iter().map(|s| s.as_str()).collect();
    let mut contract = SAGA_STATES.to_vec();
    ours.sort_unstable();
    contract.sort_unstable();
    assert_eq!(ours, contract);
    for state in SagaState::ALL {
        let listed = SETTLED_SAGA_STATES.contains(&state.as_str());
        assert_eq!(state.is_settled(), listed, "{state:?}");
    }
}

#[test]
fn booking_created_starts_the_saga_and_requests_approval() {
    let t = apply(None, &env(1, created()), &Policy::default()).unwrap();
    assert_eq!(t.saga.state, SagaState::Started);
    assert_eq!(commands(&t), vec!["RequestConfirm"]);
    assert_eq!(t.saga.booking.as_ref().unwrap().room_id, 101);
    assert_eq!(t.saga.awaiting(), Some("ConfirmRequested"));
}

#[test]
fn messages_for_an_unknown_saga_are_ignored() {
    for (name, msg) in inputs() {
        if name == "BookingCreated" || name == "BookingCancelled(USER)" {
            continue;
        }
        assert!(apply(None, &msg, &Policy::default()).is_err(), "{name}");
    }
}

fn run(history: &[Envelope]) -> Option<Saga> {
    let mut saga: Option<Saga> = None;
    for msg in history {
        if let Ok(t) = apply(saga.as_ref(), msg, &Policy::default()) {
            saga = Some(t.saga);
        }
    }
    saga
}

#[test]
fn approve_path_completes() {
    let s = run(&[
        env(1, created()),
        env(1, requested()),
        env(2, Body::ConfirmCompleted(decided())),
        env(2, Body::BookingConfirmed(BookingConfirmed {})),
    ])
    .unwrap();
    assert_eq!(s.state, SagaState::Completed);
    assert!(s.awaiting().is_none());
}

#[test]
fn deny_path_cancels_the_booking_then_closes_the_confirm() {
    let s = run(&[
        env(1, created()),
        env(1, requested()),
        env(2, Body::ConfirmDenied(decided())),
        env(2, cancelled(CancelReason::Denied)),
        env(3, closed()),
    ])
    .unwrap();
    assert_eq!(s.state, SagaState::Compensated);
    assert!(s.outcome.unwrap().contains("room under repair"));
}

#[test]
fn a_duplicate_delivery_is_ignored_the_second_time() {
    let first = apply(None, &env(1, created()), &Policy::default())
        .unwrap()
        .saga;
    let msg = env(1, requested());
    let second = apply(Some(&first), &msg, &Policy::default()).unwrap().saga;
    assert!(apply(Some(&second), &msg, &Policy::default()).is_err());
}

#[test]
fn a_late_confirmation_cannot_undo_a_cancel_that_overtook_it() {
    // The booking was confirmed (v2) and then cancelled by its owner (v3), but v3 arrives first.
    let s = run(&[
        env(1, created()),
        env(1, requested()),
        env(2, Body::ConfirmCompleted(decided())),
        env(3, cancelled(CancelReason::UserCancelled)),
        env(2, Body::BookingConfirmed(BookingConfirmed {})),
        env(3, closed()),
    ])
    .unwrap();
    assert_eq!(s.state, SagaState::Cancelled);
}

#[test]
fn a_cancel_that_overtakes_the_creation_still_closes_the_confirm() {
    let first = apply(
        None,
        &env(2, cancelled(CancelReason::UserCancelled)),
        &Policy::default(),
    )
    .unwrap();
    assert_eq!(first.saga.state, SagaState::Cancelling);
    assert_eq!(commands(&first), vec!["DeleteConfirm"]);
    // The creation, arriving late, must not request an approval.
    assert!(apply(Some(&first.saga), &env(1, created()), &Policy::default()).is_err());
}

#[test]
fn deny_racing_a_user_cancel_follows_the_booking_services_verdict() {
    // The admin denied, but the owner's cancel reached the booking first.
    let s = run(&[
        env(1, created()),
        env(1, requested()),
        env(2, Body::ConfirmDenied(decided())),
        env(2, cancelled(CancelReason::UserCancelled)),
        env(3, closed()),
    ])
    .unwrap();
    assert_eq!(s.state, SagaState::Cancelled);
}

#[test]
fn confirm_events_in_any_order_with_duplicates_end_in_the_same_state() {
    let history = [
        env(1, created()),
        env(1, requested()),
        env(2, Body::ConfirmCompleted(decided())),
        env(2, Body::BookingConfirmed(BookingConfirmed {})),
    ];
    let expected = run(&history).unwrap().state;
    // Every order in which ConfirmRequested and ConfirmCompleted can arrive, each possibly twice.
    let orders: [&[usize]; 4] = [
        &[0, 2, 1, 3],
        &[0, 1, 1, 2, 2, 3],
        &[0, 2, 2, 1, 3, 3],
        &[0, 0, 2, 1, 1, 3],
    ];
    for order in orders {
        let shuffled: Vec<Envelope> = order.iter().map(|i| history[*i].clone()).collect();
        assert_eq!(run(&shuffled).unwrap().state, expected, "order {order:?}");
    }
}

#[test]
fn the_deadline_is_set_from_the_policy_but_never_after_the_start() {
    let created = env(1, created());
    let short = Policy {
        approval_timeout: chrono::Duration::minutes(5),
        ..Policy::default()
    };
    let t = apply(None, &created, &short).unwrap();
    assert_eq!(
        t.saga.approval_deadline,
        Some(created.occurred_at + chrono::Duration::minutes(5)).map(|d| d.min(at(9)))
    );
    let long = Policy {
        approval_timeout: chrono::Duration::days(100_000),
        ..Policy::default()
    };
    let t = apply(None, &created, &long).unwrap();
    assert_eq!(
        t.saga.approval_deadline,
        Some(at(9)),
        "capped by the booking's start"
    );
    match &t.outputs[0] {
        Body::RequestConfirm(r) => assert_eq!(r.approval_deadline, at(9)),
        other => panic!("expected RequestConfirm, got {other:?}"),
    }
}

#[test]
fn the_timer_fires_once_at_the_deadline_and_only_while_a_decision_is_awaited() {
    let saga = saga_in(SagaState::AwaitingApproval, false);
    let deadline = saga.approval_deadline.unwrap();
    assert!(
        on_deadline(&saga, deadline - chrono::Duration::milliseconds(1)).is_none(),
        "one tick early"
    );
    let fired = on_deadline(&saga, deadline).expect("fires at the deadline");
    assert_eq!(commands(&fired), vec!["ExpireConfirm"]);
    assert!(
        on_deadline(&fired.saga, deadline + chrono::Duration::hours(1)).is_none(),
        "only once"
    );
    for state in [
        SagaState::Confirming,
        SagaState::Completed,
        SagaState::Compensating,
        SagaState::Cancelling,
        SagaState::Compensated,
        SagaState::Cancelled,
    ] {
        assert!(
            on_deadline(&saga_in(state, false), deadline).is_none(),
            "{}",
            state.as_str()
        );
    }
}

#[test]
fn expiry_compensates_like_a_denial() {
    let s = run(&[
        env(1, created()),
        env(1, requested()),
        env(2, expired()),
        env(2, cancelled(CancelReason::Expired)),
        env(3, closed()),
    ])
    .unwrap();
    assert_eq!(s.state, SagaState::Compensated);
    assert!(s.outcome.unwrap().contains("deadline"));
}

#[test]
fn each_command_sent_becomes_the_pending_one_until_its_reply_moves_the_saga() {
    let policy = Policy::default();
    let started = apply(None, &env(1, created()), &policy).unwrap().saga;
    assert_eq!(
        started.pending.as_ref().map(Body::type_name),
        Some("RequestConfirm")
    );
    assert_eq!(started.attempts, 1);
    let awaiting = apply(Some(&started), &env(1, requested()), &policy)
        .unwrap()
        .saga;
    assert!(
        awaiting.pending.is_none(),
        "waiting for a person, not a reply"
    );
    let confirming = apply(
        Some(&awaiting),
        &env(2, Body::ConfirmCompleted(decided())),
        &policy,
    )
    .unwrap()
    .saga;
    assert_eq!(
        confirming.pending.as_ref().map(Body::type_name),
        Some("ConfirmBooking")
    );
    // A message with no effect leaves the pending command alone.
    let same = apply(Some(&confirming), &env(3, requested()), &policy)
        .unwrap()
        .saga;
    assert_eq!(same.pending, confirming.pending);
    let done = apply(
        Some(&confirming),
        &env(2, Body::BookingConfirmed(BookingConfirmed {})),
        &policy,
    )
    .unwrap()
    .saga;
    assert!(done.pending.is_none());
}

#[test]
fn an_unanswered_command_is_sent_again_until_the_saga_is_marked_stuck() {
    let policy = Policy {
        max_attempts: 3,
        ..Policy::default()
    };
    let mut saga = apply(None, &env(1, created()), &policy).unwrap().saga;
    for attempt in 2..=3 {
        let t = on_retry_due(&saga, &policy).expect("retry due");
        assert_eq!(commands(&t), vec!["RequestConfirm"]);
        assert_eq!(t.saga.attempts, attempt);
        saga = t.saga;
    }
    let t = on_retry_due(&saga, &policy).expect("gives up");
    assert!(commands(&t).is_empty());
    assert!(t.saga.stuck);
    assert!(t.note.unwrap().contains("RequestConfirm"));
    assert!(
        on_retry_due(&t.saga, &policy).is_none(),
        "a stuck saga waits for an admin"
    );
    // The admin's retry starts a fresh round.
    let r = retry(&t.saga).unwrap();
    assert_eq!(commands(&r), vec!["RequestConfirm"]);
    assert!(!r.saga.stuck);
    assert_eq!(r.saga.attempts, 1);
}

#[test]
fn retries_back_off_exponentially_and_hold() {
    let policy = Policy::default();
    let t0 = at(9);
    assert_eq!(policy.next_retry(t0, 1), t0 + policy.retry_after);
    assert_eq!(policy.next_retry(t0, 2), t0 + policy.retry_after * 2);
    assert_eq!(policy.next_retry(t0, 5), t0 + policy.retry_after * 16);
    assert_eq!(policy.next_retry(t0, 9), t0 + policy.retry_after * 16);
}

#[test]
fn an_admin_compensation_undoes_an_unsettled_saga_and_nothing_settled() {
    for state in [
        SagaState::Started,
        SagaState::AwaitingApproval,
        SagaState::Confirming,
        SagaState::Completed,
    ] {
        let t = compensate(&saga_in(state, false)).unwrap();
        assert_eq!(t.saga.state, SagaState::Compensating, "{}", state.as_str());
        assert_eq!(commands(&t), vec!["CancelBooking"]);
        assert_eq!(
            t.saga.pending.as_ref().map(Body::type_name),
            Some("CancelBooking")
        );
        assert_eq!(
            announcements(&t.outputs),
            vec![pair("COMPENSATING", Some(state.as_str()))]
        );
    }
    for state in [SagaState::Compensated, SagaState::Cancelled] {
        assert!(
            compensate(&saga_in(state, false)).is_err(),
            "{}",
            state.as_str()
        );
    }
    assert!(
        retry(&saga_in(SagaState::AwaitingApproval, false)).is_err(),
        "nothing pending"
    );
}

/// The `SagaStateChanged` states among `outputs`, as (state, previousState).
fn announcements(outputs: &[Body]) -> Vec<(String, Option<String>)> {
    outputs
        .iter()
        .filter_map(|b| match b {
            Body::SagaStateChanged(c) => Some((c.state.clone(), c.previous_state.clone())),
            _ => None,
        })
        .collect()
}

fn announced_along(history: &[Envelope]) -> Vec<(String, Option<String>)> {
    let mut saga: Option<Saga> = None;
    let mut all = Vec::new();
    for msg in history {
        let t = apply(saga.as_ref(), msg, &Policy::default()).unwrap();
        all.extend(announcements(&t.outputs));
        saga = Some(t.saga);
    }
    all
}

fn pair(state: &str, previous: Option<&str>) -> (String, Option<String>) {
    (state.into(), previous.map(Into::into))
}

#[test]
fn a_saga_that_runs_through_announces_each_state_after_its_start_as_one_chain() {
    let approved = announced_along(&[
        env(1, created()),
        env(1, requested()),
        env(2, Body::ConfirmCompleted(decided())),
        env(2, Body::BookingConfirmed(BookingConfirmed {})),
    ]);
    assert_eq!(
        approved,
        vec![
            pair("AWAITING_APPROVAL", None),
            pair("CONFIRMING", Some("AWAITING_APPROVAL")),
            pair("COMPLETED", Some("CONFIRMING")),
        ]
    );
    let denied = announced_along(&[
        env(1, created()),
        env(1, requested()),
        env(2, Body::ConfirmDenied(decided())),
        env(2, cancelled(CancelReason::Denied)),
        env(3, closed()),
    ]);
    assert_eq!(
        denied,
        vec![
            pair("AWAITING_APPROVAL", None),
            pair("COMPENSATING", Some("AWAITING_APPROVAL")),
            pair("COMPENSATED", Some("COMPENSATING")),
        ]
    );
}

#[test]
fn a_saga_held_up_at_its_start_is_announced_once_when_the_retry_fires() {
    let policy = Policy {
        max_attempts: 3,
        ..Policy::default()
    };
    let started = apply(None, &env(1, created()), &policy).unwrap();
    assert!(announcements(&started.outputs).is_empty());

    let first = on_retry_due(&started.saga, &policy).unwrap();
    assert_eq!(commands(&first), vec!["RequestConfirm"]);
    assert_eq!(announcements(&first.outputs), vec![pair("STARTED", None)]);
    let second = on_retry_due(&first.saga, &policy).unwrap();
    assert!(
        announcements(&second.outputs).is_empty(),
        "announced once per state"
    );

    // The reply comes at last: the chain goes on from the announced start.
    let awaiting = apply(Some(&second.saga), &env(1, requested()), &policy).unwrap();
    assert_eq!(
        announcements(&awaiting.outputs),
        vec![pair("AWAITING_APPROVAL", Some("STARTED"))]
    );
}

#[test]
fn a_retry_of_a_state_already_announced_announces_nothing() {
    let policy = Policy::default();
    let awaiting = run(&[env(1, created()), env(1, requested())]).unwrap();
    let confirming = apply(
        Some(&awaiting),
        &env(2, Body::ConfirmCompleted(decided())),
        &policy,
    )
    .unwrap();
    let retried = on_retry_due(&confirming.saga, &policy).unwrap();
    assert_eq!(commands(&retried), vec!["ConfirmBooking"]);
    assert!(announcements(&retried.outputs).is_empty());
}

#[test]
fn a_saga_that_gives_up_before_any_retry_still_announces_where_it_stopped() {
    let policy = Policy {
        max_attempts: 1,
        ..Policy::default()
    };
    let started = apply(None, &env(1, created()), &policy).unwrap();
    assert!(announcements(&started.outputs).is_empty());
    let stuck = on_retry_due(&started.saga, &policy).unwrap();
    assert!(stuck.saga.stuck);
    assert!(commands(&stuck).is_empty());
    assert_eq!(announcements(&stuck.outputs), vec![pair("STARTED", None)]);
}
