//! Commands whose reply never comes: the orchestrator sends them again with backoff (driven by
//! the injectable clock), marks the saga stuck after the last attempt, and an admin can retry or
//! compensate it.

mod common;

use async_nats::jetstream;
use chrono::Duration;
use common::{future, Caller, Stack, WAIT};
use platform::{
    testkit::{eventually, TestBackend},
    topology,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn commands_waiting(js: &jetstream::Context) -> u64 {
    let stream = js.get_stream(topology::COMMANDS_STREAM).await.unwrap();
    stream.get_info().await.unwrap().state.messages
}

async fn wait_attempts(stack: &Stack, id: &str, attempts: u64) -> Value {
    eventually(&format!("attempt {attempts}"), WAIT, || async {
        stack.saga(id).await.filter(|s| s["attempts"] == attempts)
    })
    .await
}

async fn a_lost_command_is_sent_again_and_the_saga_goes_on(backend: TestBackend) {
    let mut stack = Stack::start(backend).await;
    let js = stack.jetstream().await;
    Stack::stop(&mut stack.confirm).await;
    let id = stack.book("alice", 101, future(3, 9)).await;
    let saga = stack.wait_saga(&id, "STARTED").await;
    assert_eq!(saga["pendingCommand"], "RequestConfirm");
    assert_eq!(saga["attempts"], 1);
    // The request is lost on its way (dropped from the stream before anyone took it).
    eventually("the command to be queued", WAIT, || async {
        (commands_waiting(&js).await > 0).then_some(())
    })
    .await;
    js.get_stream(topology::COMMANDS_STREAM)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    stack.start_confirm().await;

    stack.clock.advance(Duration::minutes(1));
    let saga = stack.wait_saga(&id, "AWAITING_APPROVAL").await;
    assert!(saga.get("pendingCommand").is_none(), "{saga}");
    let timeline = saga["timeline"].as_array().unwrap();
    assert!(
        timeline
            .iter()
            .any(|s| s["direction"] == "timer" && s["type"] == "RetryDue"),
        "{saga}"
    );
    stack.wait_confirm(&id).await;
}

async fn a_lost_reply_is_announced_again_when_the_command_is_repeated(backend: TestBackend) {
    let mut stack = Stack::start(backend).await;
    let js = stack.jetstream().await;
    // The request waits while confirm is down, so the orchestrator can be stopped before the
    // reply exists.
    Stack::stop(&mut stack.confirm).await;
    let id = stack.book("alice", 103, future(3, 9)).await;
    wait_attempts(&stack, &id, 1).await;
    Stack::stop(&mut stack.orchestrator).await;
    stack.start_confirm().await;
    let confirm_id = stack.wait_confirm(&id).await;
    // The reply is lost on its way: removed from the stream before the orchestrator read it.
    let events = js.get_stream(topology::EVENTS_STREAM).await.unwrap();
    let subject = format!("{}.confirm.{id}.ConfirmRequested", topology::EVENTS_PREFIX);
    let reply = eventually("the reply to be published", WAIT, || async {
        events.get_last_raw_message_by_subject(&subject).await.ok()
    })
    .await;
    events.delete_message(reply.sequence).await.unwrap();

    stack.start_orchestrator().await;
    assert_eq!(stack.wait_saga(&id, "STARTED").await["attempts"], 1);
    // The repeated request finds the confirm already open; confirm answers with its latest fact.
    stack.clock.advance(Duration::minutes(1));
    let saga = stack.wait_saga(&id, "AWAITING_APPROVAL").await;
    assert!(saga.get("pendingCommand").is_none(), "{saga}");
    let again = events
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap();
    assert!(
        again.sequence > reply.sequence,
        "a new ConfirmRequested was published"
    );
    let (status, body) = stack.decide(&confirm_id, "CONFIRMED", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    stack.wait_saga(&id, "COMPLETED").await;
}

async fn a_participant_that_never_answers_leaves_the_saga_stuck_until_an_admin_compensates(
    backend: TestBackend,
) {
    let mut stack = Stack::start(backend).await;
    Stack::stop(&mut stack.confirm).await;
    let id = stack.book("alice", 102, future(3, 9)).await;
    let saga = make_stuck(&stack, &id).await;
    assert_eq!(saga["state"], "STARTED");
    let (status, stuck) = stack
        .send(
            Method::GET,
            format!("{}/sagas?stuck=true", stack.orchestrator_url),
            Caller::Admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(stuck
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["bookingId"] == id.as_str()));

    // Users may not, admins may compensate.
    let (status, body) = admin_operation(&stack, &id, "compensate").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "COMPENSATING");
    assert_eq!(body["stuck"], false);
    // The booking is cancelled at once; the confirm is closed when its service returns.
    eventually("the booking to be cancelled", WAIT, || async {
        (stack.booking(&id).await["status"] == "CANCELLED").then_some(())
    })
    .await;
    stack.start_confirm().await;
    stack.wait_saga(&id, "COMPENSATED").await;
    stack.wait_quiet().await;
    assert_eq!(stack.confirm_of(&id).await.unwrap()["closed"], true);
    // A settled saga cannot be compensated again.
    let (status, body) = admin_operation(&stack, &id, "compensate").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

/// `POST /sagas/{id}/{operation}` (retry, compensate): asserts a user is refused, answers what
/// an admin gets.
async fn admin_operation(stack: &Stack, id: &str, operation: &str) -> (StatusCode, Value) {
    let url = format!("{}/sagas/{id}/{operation}", stack.orchestrator_url);
    let (status, _) = stack
        .send(Method::POST, url.clone(), Caller::User("alice"), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{operation} by a user");
    stack.send(Method::POST, url, Caller::Admin, None).await
}

/// Drives a saga whose confirm service is down through every attempt until it is marked stuck.
async fn make_stuck(stack: &Stack, id: &str) -> Value {
    wait_attempts(stack, id, 1).await;
    for attempt in 2..=6 {
        stack.clock.advance(Duration::hours(1));
        wait_attempts(stack, id, attempt).await;
    }
    stack.clock.advance(Duration::hours(1));
    eventually("the saga to be marked stuck", WAIT, || async {
        stack.saga(id).await.filter(|s| s["stuck"] == true)
    })
    .await
}

async fn an_admin_retry_sends_a_stuck_sagas_command_again_and_the_saga_goes_on(
    backend: TestBackend,
) {
    let mut stack = Stack::start(backend).await;
    Stack::stop(&mut stack.confirm).await;
    let id = stack.book("alice", 201, future(4, 9)).await;
    let stuck = make_stuck(&stack, &id).await;
    assert_eq!(stuck["pendingCommand"], "RequestConfirm");
    // Stuck means given up: no further attempt is scheduled.
    assert_eq!(stuck["attempts"], 6);
    assert!(stuck.get("nextRetryAt").is_none(), "{stuck}");
    // The six requests were lost (dropped from the stream before anyone took them): were they
    // still queued, confirm would answer them when it returns, racing the admin's retry.
    let js = stack.jetstream().await;
    eventually("the six requests to be queued", WAIT, || async {
        (commands_waiting(&js).await == 6).then_some(())
    })
    .await;
    js.get_stream(topology::COMMANDS_STREAM)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    stack.start_confirm().await;

    let (status, body) = admin_operation(&stack, &id, "retry").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stuck"], false, "{body}");
    assert_eq!(body["attempts"], 1, "a fresh round of attempts: {body}");
    assert_eq!(body["pendingCommand"], "RequestConfirm");

    // The clock stands still: the admin's retry alone gets the approval requested.
    let saga = stack.wait_saga(&id, "AWAITING_APPROVAL").await;
    assert!(saga.get("pendingCommand").is_none(), "{saga}");
    assert!(
        saga["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["direction"] == "admin" && s["type"] == "Retry"),
        "{saga}"
    );
    let confirm_id = stack.wait_confirm(&id).await;
    let (status, body) = stack.decide(&confirm_id, "CONFIRMED", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    stack.wait_saga(&id, "COMPLETED").await;
    assert_eq!(stack.booking(&id).await["status"], "CONFIRMED");
    // Nothing is pending any more, so there is nothing to retry.
    let (status, body) = admin_operation(&stack, &id, "retry").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["type"], "/problems/saga-not-applicable");
}

on_both_backends!(
    a_lost_command_is_sent_again_and_the_saga_goes_on,
    a_lost_reply_is_announced_again_when_the_command_is_repeated,
    a_participant_that_never_answers_leaves_the_saga_stuck_until_an_admin_compensates,
    an_admin_retry_sends_a_stuck_sagas_command_again_and_the_saga_goes_on,
);
