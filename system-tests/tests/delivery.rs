//! Delivery faults over a real nats-server: every message delivered twice changes nothing the
//! second time, and garbage on any subject is parked (by each consumer that takes the subject)
//! while later sagas still complete.

mod common;

use std::collections::BTreeSet;

use async_nats::{header::NATS_MESSAGE_ID, jetstream, HeaderMap};
use common::{future, Stack, WAIT};
use futures::StreamExt as _;
use platform::{
    contract::{Body, ConfirmBooking, Envelope, SagaStateChanged},
    testkit::{eventually, TestBackend},
    topology,
};
use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What the services say about a booking: enough to see any second effect.
async fn snapshot(stack: &Stack, ids: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for id in ids {
        let saga = stack.saga(id).await.expect("saga exists");
        out.push(serde_json::json!({
            "booking": stack.booking(id).await,
            "confirm": stack.confirm_of(id).await,
            "saga": {"state": saga["state"], "steps": saga["timeline"].as_array().unwrap().len(), "updatedAt": saga["updatedAt"]},
        }));
    }
    out
}

/// Messages in the event streams, together.
async fn events_in_streams(js: &jetstream::Context) -> u64 {
    let mut total = 0;
    for name in topology::EVENT_STREAMS {
        total += js
            .get_stream(name)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap()
            .state
            .messages;
    }
    total
}

async fn every_message_delivered_twice_has_no_second_effect(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let js = stack.jetstream().await;
    let mut tap = stack.tap().await;

    let (approved, _) = stack.book_and_approve("alice", 101, future(3, 9)).await;
    let denied = stack.book("bob", 102, future(3, 9)).await;
    let confirm = stack.wait_confirm(&denied).await;
    assert_eq!(
        stack.decide(&confirm, "DENIED", None).await.0,
        StatusCode::OK
    );
    stack.wait_saga(&denied, "COMPENSATED").await;
    let cancelled = stack.book("carol", 103, future(3, 9)).await;
    stack.wait_confirm(&cancelled).await;
    assert_eq!(stack.cancel("carol", &cancelled).await.0, StatusCode::OK);
    stack.wait_saga(&cancelled, "CANCELLED").await;
    let expired = stack.book("dave", 201, future(3, 9)).await;
    let deadline = stack.wait_saga(&expired, "AWAITING_APPROVAL").await["approvalDeadline"]
        .as_str()
        .expect("a deadline")
        .parse()
        .expect("RFC 3339");
    stack.clock.set(deadline);
    stack.wait_saga(&expired, "COMPENSATED").await;
    stack.wait_quiet().await;

    let ids = vec![approved, denied, cancelled, expired];
    let before = snapshot(&stack, &ids).await;
    let events_before = events_in_streams(&js).await;

    // Everything seen so far, published again as new JetStream messages (new Nats-Msg-Id, so the
    // server keeps them) carrying the same envelope, hence the same messageId.
    let mut seen = Vec::new();
    while let Ok(Some(msg)) =
        tokio::time::timeout(std::time::Duration::from_millis(300), tap.next()).await
    {
        seen.push(msg);
    }
    let mut types = BTreeSet::new();
    let mut events_republished = 0;
    for msg in &seen {
        let env = Envelope::from_json(&msg.payload).expect("the bus carries envelopes");
        types.insert(env.body.type_name());
        if msg.subject.starts_with(topology::EVENTS_PREFIX) {
            events_republished += 1;
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            NATS_MESSAGE_ID,
            format!("again-{}", env.message_id).as_str(),
        );
        js.publish_with_headers(msg.subject.clone(), headers, msg.payload.clone())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    for kind in Body::TYPE_NAMES {
        assert!(types.contains(kind), "{kind} was not exercised: {types:?}");
    }
    stack.wait_quiet().await;

    assert_eq!(
        snapshot(&stack, &ids).await,
        before,
        "a second delivery changed something"
    );
    // No handler emitted anything new: the event streams grew only by what was re-published.
    assert_eq!(
        events_in_streams(&js).await,
        events_before + events_republished
    );
}

async fn garbage_on_every_subject_is_parked_and_later_sagas_complete(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    // The booking list takes every event, the saga's own among them.
    let list_config = bookinglist::Config::with_service(stack.service_config("bookinglist").await);
    let _list = bookinglist::spawn(list_config, CancellationToken::new())
        .await
        .expect("bookinglist starts");
    let js = stack.jetstream().await;
    let unknown = Uuid::new_v4();
    let wrong_type = Envelope::new(
        unknown,
        unknown,
        1,
        Body::SagaStateChanged(SagaStateChanged {
            state: "X".into(),
            previous_state: None,
        }),
    );
    let unknown_booking =
        Envelope::new(unknown, unknown, 1, Body::ConfirmBooking(ConfirmBooking {}));
    let poison: Vec<(String, Vec<u8>)> = vec![
        (
            format!("roombook.events.booking.{unknown}.BookingCreated"),
            b"{not json".to_vec(),
        ),
        (
            format!("roombook.events.confirm.{unknown}.ConfirmRequested"),
            br#"{"type":"Nope"}"#.to_vec(),
        ),
        (
            format!("roombook.commands.booking.{unknown}.ConfirmBooking"),
            b"\x00\x01garbage".to_vec(),
        ),
        (
            format!("roombook.commands.confirm.{unknown}.RequestConfirm"),
            b"[]".to_vec(),
        ),
        (
            format!("roombook.commands.booking.{unknown}.SagaStateChanged"),
            wrong_type.to_json(),
        ),
        (
            format!("roombook.commands.booking.{unknown}.ConfirmBooking"),
            unknown_booking.to_json(),
        ),
        (
            format!("roombook.events.saga.{unknown}.SagaStateChanged"),
            b"{\"state\":".to_vec(),
        ),
    ];
    // Who must park what: each consumer that is delivered the message and takes it.
    let takers = |subject: &str| -> Vec<&'static str> {
        let specs = [
            topology::ConsumerSpec::orchestrator(),
            topology::ConsumerSpec::bookinglist(),
            topology::ConsumerSpec::bookinglist_saga(),
            topology::ConsumerSpec::booking_commands(),
            topology::ConsumerSpec::confirm_commands(),
        ];
        specs
            .into_iter()
            .filter(|c| c.delivers(subject) && c.takes(subject))
            .map(|c| c.durable)
            .collect()
    };
    let mut expected: Vec<(String, String)> = poison
        .iter()
        .flat_map(|(subject, _)| {
            takers(subject)
                .into_iter()
                .map(|c| (c.to_string(), subject.clone()))
        })
        .collect();
    expected.sort();
    assert_eq!(takers(&poison[0].0), ["orchestrator", "bookinglist"]);
    for (subject, payload) in &poison {
        js.publish(subject.clone(), payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // The consumers go on: a saga started after the garbage completes.
    stack.book_and_approve("alice", 101, future(4, 9)).await;
    stack.wait_quiet().await;

    let dlq = js.get_stream(topology::DEAD_LETTER_STREAM).await.unwrap();
    let parked = eventually("every poison message to be parked", WAIT, || async {
        let n = dlq.get_info().await.ok()?.state.messages;
        (n >= expected.len() as u64).then_some(n)
    })
    .await;
    assert_eq!(
        parked,
        expected.len() as u64,
        "every poison message is parked once by each consumer that takes it"
    );
    let mut parked_by = Vec::new();
    for seq in 1..=parked {
        let msg = dlq.get_raw_message(seq).await.unwrap();
        let reason = msg
            .headers
            .get("Roombook-Reason")
            .expect("reason recorded")
            .to_string();
        assert!(!reason.is_empty());
        let header = |name: &str| msg.headers.get(name).expect(name).to_string();
        parked_by.push((
            header("Roombook-Consumer"),
            header("Roombook-Original-Subject"),
        ));
    }
    parked_by.sort();
    assert_eq!(parked_by, expected);
}

on_both_backends!(
    every_message_delivered_twice_has_no_second_effect,
    garbage_on_every_subject_is_parked_and_later_sagas_complete,
);
