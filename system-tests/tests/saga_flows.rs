//! The saga end to end over a real nats-server, on SQLite and on PostgreSQL: approve, deny,
//! user cancel, the races between them, and no double booking under concurrency.

mod common;

use common::{future, Caller, Stack};
use platform::testkit::TestBackend;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn approve_confirms_the_booking_and_completes_the_saga(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let id = stack.book("alice", 101, future(3, 9)).await;
    let confirm_id = stack.wait_confirm(&id).await;
    stack.wait_saga(&id, "AWAITING_APPROVAL").await;

    let (status, confirm) = stack.decide(&confirm_id, "CONFIRMED", None).await;
    assert_eq!(status, StatusCode::OK, "{confirm}");
    assert_eq!(confirm["status"], "CONFIRMED");
    assert_eq!(confirm["confirmUserId"], "admin");

    let saga = stack.wait_saga(&id, "COMPLETED").await;
    assert_eq!(saga["settled"], true);
    assert_eq!(stack.booking(&id).await["status"], "CONFIRMED");
    let confirm = stack.confirm_of(&id).await.unwrap();
    assert_eq!(confirm["status"], "CONFIRMED");
    assert_eq!(confirm["closed"], false);
    // The timeline shows the whole path, in and out.
    let steps: Vec<String> = saga["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["direction"].as_str().unwrap(),
                s["type"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "in BookingCreated",
        "out RequestConfirm",
        "in ConfirmRequested",
        "in ConfirmCompleted",
        "out ConfirmBooking",
        "in BookingConfirmed",
    ] {
        assert!(
            steps.iter().any(|s| s == expected),
            "missing {expected} in {steps:?}"
        );
    }
}

async fn deny_cancels_the_booking_frees_the_slot_and_closes_the_confirm(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let start = future(4, 10);
    let id = stack.book("alice", 102, start).await;
    let confirm_id = stack.wait_confirm(&id).await;
    let (status, body) = stack
        .decide(&confirm_id, "DENIED", Some("room under repair"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let saga = stack.wait_saga(&id, "COMPENSATED").await;
    assert!(saga["outcome"]
        .as_str()
        .unwrap()
        .contains("room under repair"));
    let booking = stack.booking(&id).await;
    assert_eq!(booking["status"], "CANCELLED");
    assert_eq!(booking["cancelReason"], "DENIED");
    let confirm = stack.confirm_of(&id).await.unwrap();
    assert_eq!(confirm["status"], "DENIED");
    assert_eq!(confirm["closed"], true);

    // The slot is free again.
    let again = stack.book("bob", 102, start).await;
    assert_ne!(again, id);
}

async fn user_cancel_closes_the_confirm_and_ends_cancelled(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let id = stack.book("alice", 103, future(5, 11)).await;
    let confirm_id = stack.wait_confirm(&id).await;

    let (status, body) = stack.cancel("alice", &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "CANCELLED");
    assert_eq!(body["cancelReason"], "USER_CANCELLED");

    stack.wait_saga(&id, "CANCELLED").await;
    let confirm = stack.confirm_of(&id).await.unwrap();
    assert_eq!(confirm["closed"], true);
    // A decision on the closed confirm is refused, and changes nothing.
    let (status, body) = stack.decide(&confirm_id, "CONFIRMED", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "/problems/confirm-closed");
    // Cancelling twice is refused too.
    let (status, _) = stack.cancel("alice", &id).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // The closed confirm has left the approval queue.
    let (_, queue) = stack
        .send(
            Method::GET,
            format!("{}/confirms?status=BOOKED", stack.confirm_url),
            Caller::Admin,
            None,
        )
        .await;
    assert!(queue
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["bookingId"] != id.as_str()));
}

async fn a_confirmed_booking_cancelled_by_its_owner_ends_cancelled(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let (id, _) = stack.book_and_approve("alice", 101, future(6, 9)).await;
    let (status, _) = stack.cancel("alice", &id).await;
    assert_eq!(status, StatusCode::OK);
    stack.wait_saga(&id, "CANCELLED").await;
    let confirm = stack.confirm_of(&id).await.unwrap();
    assert_eq!(confirm["status"], "CONFIRMED");
    assert_eq!(
        confirm["closed"], true,
        "a cancelled booking's confirm is closed"
    );
}

async fn approve_racing_a_user_cancel_ends_cancelled_with_the_confirm_closed(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let id = stack.book("alice", 201, future(7, 14)).await;
    let confirm_id = stack.wait_confirm(&id).await;
    // Both at once: the booking service's order decides; the cancel always wins.
    let (approve, cancel) = tokio::join!(
        stack.decide(&confirm_id, "CONFIRMED", None),
        stack.cancel("alice", &id)
    );
    assert_eq!(cancel.0, StatusCode::OK, "{}", cancel.1);
    assert!(
        approve.0 == StatusCode::OK || approve.0 == StatusCode::CONFLICT,
        "approval answered {} {}",
        approve.0,
        approve.1
    );
    stack.wait_saga(&id, "CANCELLED").await;
    stack.wait_quiet().await;
    assert_eq!(stack.booking(&id).await["status"], "CANCELLED");
    assert_eq!(stack.confirm_of(&id).await.unwrap()["closed"], true);
}

async fn deny_racing_a_user_cancel_settles_by_the_booking_services_order(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let id = stack.book("alice", 201, future(8, 14)).await;
    let confirm_id = stack.wait_confirm(&id).await;
    let (deny, cancel) = tokio::join!(
        stack.decide(&confirm_id, "DENIED", None),
        stack.cancel("alice", &id)
    );
    let saga = common::eventually_settled(&stack, &id).await;
    stack.wait_quiet().await;
    let booking = stack.booking(&id).await;
    assert_eq!(booking["status"], "CANCELLED");
    // The saga ends as the booking's cancel reason says.
    match booking["cancelReason"].as_str().unwrap() {
        "USER_CANCELLED" => {
            assert_eq!(cancel.0, StatusCode::OK);
            // The denial is refused only if the cancel closed the confirm before it landed.
            assert!(
                deny.0 == StatusCode::OK || deny.0 == StatusCode::CONFLICT,
                "{} {}",
                deny.0,
                deny.1
            );
            assert_eq!(saga["state"], "CANCELLED");
        }
        "DENIED" => {
            assert_eq!(deny.0, StatusCode::OK, "{}", deny.1);
            assert_eq!(cancel.0, StatusCode::CONFLICT, "{}", cancel.1);
            assert_eq!(saga["state"], "COMPENSATED");
        }
        other => panic!("unexpected cancel reason {other}"),
    }
    assert_eq!(stack.confirm_of(&id).await.unwrap()["closed"], true);
}

async fn twenty_concurrent_requests_for_one_slot_yield_exactly_one_booking(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let start = future(9, 9);
    let attempts = (0..20).map(|i| {
        let stack = &stack;
        async move {
            stack
                .create_booking(&format!("user{i}"), 101, start, 2)
                .await
        }
    });
    let results = futures::future::join_all(attempts).await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let conflicts = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CONFLICT)
        .count();
    assert_eq!(created, 1, "{results:?}");
    assert_eq!(conflicts, 19, "{results:?}");
    // An overlapping (not identical) slot is refused as well; an adjacent one is fine.
    let (status, body) = stack
        .create_booking("late", 101, start + chrono::Duration::minutes(90), 1)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "/problems/booking-overlap");
    let (status, _) = stack
        .create_booking("late", 101, start + chrono::Duration::hours(2), 1)
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

async fn a_retried_post_with_the_same_idempotency_key_creates_one_booking(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let body = json!({"roomId": 102, "useStartDtm": future(10, 9).to_rfc3339(), "useEndDtm": future(10, 10).to_rfc3339()});
    let post = || {
        stack
            .http
            .post(format!("{}/bookings", stack.booking_url))
            .header(platform::http::USER_ID_HEADER, "alice")
            .header("Idempotency-Key", "retry-me-1")
            .json(&body)
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: serde_json::Value = first.json().await.unwrap();
    let second = post().await.unwrap();
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: serde_json::Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    let (_, mine) = stack
        .send(
            Method::GET,
            format!("{}/bookings", stack.booking_url),
            Caller::User("alice"),
            None,
        )
        .await;
    assert_eq!(mine.as_array().unwrap().len(), 1);
    stack
        .wait_saga(first["id"].as_str().unwrap(), "AWAITING_APPROVAL")
        .await;
}

async fn stopped_services_catch_up_when_they_return_and_nothing_is_lost(backend: TestBackend) {
    let mut stack = Stack::start(backend).await;
    // With the orchestrator down, users can still book: the events wait in JetStream.
    Stack::stop(&mut stack.orchestrator).await;
    let mut ids = Vec::new();
    for hour in 8..13 {
        ids.push(stack.book("alice", 103, future(11, hour)).await);
    }
    stack.start_orchestrator().await;
    let mut confirms = Vec::new();
    for id in &ids {
        stack.wait_saga(id, "AWAITING_APPROVAL").await;
        confirms.push(stack.wait_confirm(id).await);
    }
    // With the booking service down, admins can still approve: the commands wait.
    Stack::stop(&mut stack.booking).await;
    for confirm in &confirms {
        assert_eq!(
            stack.decide(confirm, "CONFIRMED", None).await.0,
            StatusCode::OK
        );
    }
    for id in &ids {
        stack.wait_saga(id, "CONFIRMING").await;
    }
    stack.start_booking().await;
    for id in &ids {
        stack.wait_saga(id, "COMPLETED").await;
        assert_eq!(stack.booking(id).await["status"], "CONFIRMED");
    }
}

on_both_backends!(
    stopped_services_catch_up_when_they_return_and_nothing_is_lost,
    approve_confirms_the_booking_and_completes_the_saga,
    deny_cancels_the_booking_frees_the_slot_and_closes_the_confirm,
    user_cancel_closes_the_confirm_and_ends_cancelled,
    a_confirmed_booking_cancelled_by_its_owner_ends_cancelled,
    approve_racing_a_user_cancel_ends_cancelled_with_the_confirm_closed,
    deny_racing_a_user_cancel_settles_by_the_booking_services_order,
    twenty_concurrent_requests_for_one_slot_yield_exactly_one_booking,
    a_retried_post_with_the_same_idempotency_key_creates_one_booking,
);
