//! Replaying the whole event history to the orchestrator a second time changes no saga.

mod common;

use common::{future, Caller, Stack};
use platform::{testkit::TestBackend, topology};
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn all_sagas(stack: &Stack) -> Vec<Value> {
    let (status, list) = stack
        .send(
            Method::GET,
            format!("{}/sagas?limit=1000", stack.orchestrator_url),
            Caller::Admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut out = Vec::new();
    for saga in list.as_array().unwrap() {
        let id = saga["bookingId"].as_str().unwrap();
        out.push(stack.saga(id).await.unwrap());
    }
    out
}

async fn replaying_every_event_to_the_orchestrator_changes_no_saga(backend: TestBackend) {
    let mut stack = Stack::start(backend).await;
    stack.book_and_approve("alice", 101, future(3, 9)).await;
    let denied = stack.book("bob", 102, future(3, 9)).await;
    let confirm = stack.wait_confirm(&denied).await;
    assert_eq!(
        stack.decide(&confirm, "DENIED", None).await.0,
        StatusCode::OK
    );
    let cancelled = stack.book("carol", 103, future(3, 9)).await;
    stack.wait_confirm(&cancelled).await;
    assert_eq!(stack.cancel("carol", &cancelled).await.0, StatusCode::OK);
    let pending = stack.book("dave", 201, future(3, 9)).await;
    stack.wait_saga(&denied, "COMPENSATED").await;
    stack.wait_saga(&cancelled, "CANCELLED").await;
    stack.wait_saga(&pending, "AWAITING_APPROVAL").await;
    stack.wait_quiet().await;
    let before = all_sagas(&stack).await;
    assert_eq!(before.len(), 4);

    // Forget where the orchestrator's consumer was: on restart it reads the stream from the start.
    Stack::stop(&mut stack.orchestrator).await;
    let js = stack.jetstream().await;
    let spec = topology::ConsumerSpec::orchestrator();
    js.delete_consumer_from_stream(spec.durable, spec.stream)
        .await
        .unwrap();
    stack.start_orchestrator().await;
    stack.wait_quiet().await;
    let info = js
        .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
            spec.durable,
            spec.stream,
        )
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert!(
        info.delivered.stream_sequence > 0,
        "the history was delivered again"
    );

    assert_eq!(
        all_sagas(&stack).await,
        before,
        "a replayed event changed a saga"
    );
}

on_both_backends!(replaying_every_event_to_the_orchestrator_changes_no_saga);
