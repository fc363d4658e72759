//! Inspecting sagas: `GET /sagas?state=&olderThan=` finds, e.g., those waiting too long, and a
//! saga's timeline lists every message in and out with the time it happened.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{future, Caller, Stack, WAIT};
use platform::testkit::{eventually, TestBackend};
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// The booking ids `GET /sagas?{query}` lists.
async fn listed(stack: &Stack, query: &str) -> Vec<String> {
    let (status, body) = stack
        .send(
            Method::GET,
            format!("{}/sagas?{query}", stack.orchestrator_url),
            Caller::Admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body.as_array()
        .expect("a list")
        .iter()
        .map(|s| s["bookingId"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until the wall clock has moved past `t`, so that what happens next is strictly later.
async fn after(t: DateTime<Utc>) {
    eventually("the clock to move on", WAIT, || async {
        (platform::time::now() > t).then_some(())
    })
    .await;
}

async fn sagas_are_listed_by_state_and_by_how_long_they_have_waited(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let waiting_long = stack.book("alice", 101, future(3, 9)).await;
    let since = time(&stack.wait_saga(&waiting_long, "AWAITING_APPROVAL").await["updatedAt"]);
    after(since).await;
    let waiting_briefly = stack.book("bob", 102, future(3, 9)).await;
    let cutoff = time(&stack.wait_saga(&waiting_briefly, "AWAITING_APPROVAL").await["updatedAt"]);
    after(cutoff).await;
    let (done, _) = stack.book_and_approve("carol", 103, future(3, 9)).await;

    let awaiting = listed(&stack, "state=AWAITING_APPROVAL").await;
    assert!(awaiting.contains(&waiting_long) && awaiting.contains(&waiting_briefly));
    assert!(!awaiting.contains(&done));
    assert_eq!(listed(&stack, "state=COMPLETED").await, vec![done.clone()]);

    // Waiting since before the cutoff: only the first.
    let cutoff = cutoff.to_rfc3339();
    let query = format!("state=AWAITING_APPROVAL&olderThan={}", urlencode(&cutoff));
    assert_eq!(listed(&stack, &query).await, vec![waiting_long.clone()]);
    // Without a state: the completed saga changed after the cutoff, so it is not listed either.
    let query = format!("olderThan={}", urlencode(&cutoff));
    assert_eq!(listed(&stack, &query).await, vec![waiting_long]);
    // "Waiting longer than an hour": none yet.
    let an_hour_ago = (Utc::now() - Duration::hours(1)).to_rfc3339();
    let query = format!("olderThan={}", urlencode(&an_hour_ago));
    assert!(listed(&stack, &query).await.is_empty());

    for bad in ["state=WAITING", "olderThan=yesterday", "limit=0"] {
        let (status, body) = stack
            .send(
                Method::GET,
                format!("{}/sagas?{bad}", stack.orchestrator_url),
                Caller::Admin,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _) = stack
        .send(
            Method::GET,
            format!("{}/sagas", stack.orchestrator_url),
            Caller::User("alice"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn the_timeline_gives_every_step_the_time_it_happened(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let began = platform::time::now();
    let id = stack.book("alice", 101, future(3, 9)).await;
    let confirm_id = stack.wait_confirm(&id).await;
    stack.wait_saga(&id, "AWAITING_APPROVAL").await;
    let decided_at = platform::time::now();
    let (status, body) = stack.decide(&confirm_id, "CONFIRMED", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let saga = stack.wait_saga(&id, "COMPLETED").await;
    let ended = platform::time::now();

    let steps = saga["timeline"].as_array().unwrap();
    let times: Vec<DateTime<Utc>> = steps.iter().map(|s| time(&s["at"])).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in order: {times:?}"
    );
    assert!(
        times.iter().all(|t| (began..=ended).contains(t)),
        "{times:?}"
    );
    // The decision's consequences come after it was made; the request for it, before.
    let at = |direction: &str, kind: &str| {
        steps
            .iter()
            .find(|s| s["direction"] == direction && s["type"] == kind)
            .map(|s| time(&s["at"]))
            .unwrap_or_else(|| panic!("no {direction} {kind} in {saga}"))
    };
    assert!(at("out", "RequestConfirm") <= decided_at);
    assert!(at("in", "ConfirmCompleted") >= decided_at);
    assert!(at("out", "ConfirmBooking") >= decided_at);
    assert!(time(&saga["createdAt"]) <= time(&saga["updatedAt"]));
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

on_both_backends!(
    sagas_are_listed_by_state_and_by_how_long_they_have_waited,
    the_timeline_gives_every_step_the_time_it_happened,
);
