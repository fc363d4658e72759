//! Approval deadlines, driven by the injectable clock (no test sleeps): expiry compensates like
//! a denial; a decision one tick before the deadline wins; one at it or a tick after gets 409.

mod common;

use chrono::{DateTime, Duration, DurationRound as _, Utc};
use common::{future, Stack};
use platform::testkit::TestBackend;
use reqwest::StatusCode;

async fn deadline_of(stack: &Stack, id: &str) -> DateTime<Utc> {
    let saga = stack.wait_saga(id, "AWAITING_APPROVAL").await;
    DateTime::parse_from_rfc3339(
        saga["approvalDeadline"]
            .as_str()
            .expect("saga has a deadline"),
    )
    .unwrap()
    .with_timezone(&Utc)
}

async fn no_decision_before_the_deadline_cancels_the_booking_as_expired(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let id = stack.book("alice", 101, future(3, 9)).await;
    let confirm_id = stack.wait_confirm(&id).await;
    let deadline = deadline_of(&stack, &id).await;

    stack.clock.set(deadline);
    let saga = stack.wait_saga(&id, "COMPENSATED").await;
    assert!(saga["outcome"].as_str().unwrap().contains("deadline"));
    let booking = stack.booking(&id).await;
    assert_eq!(booking["status"], "CANCELLED");
    assert_eq!(booking["cancelReason"], "EXPIRED");
    let confirm = stack.confirm_of(&id).await.unwrap();
    assert_eq!(confirm["closed"], true);
    assert_eq!(confirm["closeReason"], "EXPIRED");
    // A decision arriving after the expiry is refused.
    let (status, body) = stack.decide(&confirm_id, "CONFIRMED", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "/problems/confirm-expired");
}

async fn an_approval_one_tick_before_the_deadline_wins(backend: TestBackend) {
    let mut stack = Stack::start(backend).await;
    let id = stack.book("alice", 102, future(3, 9)).await;
    let confirm_id = stack.wait_confirm(&id).await;
    let deadline = deadline_of(&stack, &id).await;

    // The orchestrator is down while the approval lands just in time and the deadline passes,
    // so on restart the timer and the approval race: the approval must win either way.
    Stack::stop(&mut stack.orchestrator).await;
    stack.clock.set(deadline - Duration::milliseconds(1));
    let (status, body) = stack.decide(&confirm_id, "CONFIRMED", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    stack.clock.set(deadline + Duration::hours(1));
    stack.start_orchestrator().await;

    stack.wait_saga(&id, "COMPLETED").await;
    stack.wait_quiet().await;
    assert_eq!(stack.booking(&id).await["status"], "CONFIRMED");
    let confirm = stack.confirm_of(&id).await.unwrap();
    assert_eq!(confirm["status"], "CONFIRMED");
    assert_eq!(confirm["closed"], false);
}

async fn an_approval_at_the_deadline_gets_409_and_the_saga_compensates(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let id = stack.book("alice", 103, future(3, 9)).await;
    let confirm_id = stack.wait_confirm(&id).await;
    let deadline = deadline_of(&stack, &id).await;

    stack.clock.set(deadline);
    let (status, body) = stack.decide(&confirm_id, "CONFIRMED", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "/problems/confirm-expired");
    stack.wait_saga(&id, "COMPENSATED").await;
    assert_eq!(stack.booking(&id).await["cancelReason"], "EXPIRED");
}

async fn an_approval_one_tick_after_the_deadline_gets_409_even_before_the_timer_fires(
    backend: TestBackend,
) {
    let mut stack = Stack::start(backend).await;
    let id = stack.book("alice", 201, future(4, 9)).await;
    let confirm_id = stack.wait_confirm(&id).await;
    let deadline = deadline_of(&stack, &id).await;

    // With the orchestrator down nothing has expired the saga yet: the confirm service itself
    // refuses a decision that comes too late.
    Stack::stop(&mut stack.orchestrator).await;
    stack.clock.set(deadline + Duration::milliseconds(1));
    let (status, body) = stack.decide(&confirm_id, "CONFIRMED", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "/problems/confirm-expired");
    let (status, _) = stack.decide(&confirm_id, "DENIED", Some("late")).await;
    assert_eq!(status, StatusCode::CONFLICT);

    stack.start_orchestrator().await;
    stack.wait_saga(&id, "COMPENSATED").await;
    assert_eq!(stack.booking(&id).await["cancelReason"], "EXPIRED");
    assert_eq!(
        stack.confirm_of(&id).await.unwrap()["closeReason"],
        "EXPIRED"
    );
}

async fn the_deadline_never_falls_after_the_booking_starts(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    // Starts in two hours: sooner than the 24 h approval window.
    let start = (Utc::now() + Duration::hours(2))
        .duration_trunc(Duration::hours(1))
        .unwrap();
    let id = stack.book("alice", 201, start).await;
    let deadline = deadline_of(&stack, &id).await;
    assert_eq!(deadline, start);
}

on_both_backends!(
    no_decision_before_the_deadline_cancels_the_booking_as_expired,
    an_approval_one_tick_before_the_deadline_wins,
    an_approval_at_the_deadline_gets_409_and_the_saga_compensates,
    an_approval_one_tick_after_the_deadline_gets_409_even_before_the_timer_fires,
    the_deadline_never_falls_after_the_booking_starts,
);
