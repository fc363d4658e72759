//! What operators see: Prometheus metrics on every service, and one trace id along a booking's
//! whole path through HTTP and NATS headers.

mod common;

use common::{future, Stack};
use futures::StreamExt as _;
use platform::{
    testkit::{has_series as has, TestBackend},
    trace::TraceParent,
};
use reqwest::StatusCode;
use serde_json::json;

async fn metrics_of(stack: &Stack, base: &str) -> String {
    let resp = stack
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_prometheus_metrics_of_its_work() {
    let stack = Stack::start(TestBackend::Sqlite).await;
    let (id, _) = stack.book_and_approve("alice", 101, future(3, 9)).await;
    stack.wait_quiet().await;
    assert!(!id.is_empty());

    let booking = metrics_of(&stack, &stack.booking_url).await;
    assert!(
        has(
            &booking,
            "roombook_http_requests_total",
            &[r#"route="/bookings""#, r#"status="201""#]
        ),
        "{booking}"
    );
    assert!(has(
        &booking,
        "roombook_http_request_duration_seconds_bucket",
        &[r#"route="/bookings""#]
    ));
    assert!(has(
        &booking,
        "roombook_messages_published_total",
        &[r#"type="BookingCreated""#]
    ));
    assert!(has(
        &booking,
        "roombook_messages_consumed_total",
        &[
            r#"consumer="booking""#,
            r#"type="ConfirmBooking""#,
            r#"outcome="applied""#
        ]
    ));
    assert!(has(
        &booking,
        "roombook_outbox_backlog",
        &[r#"service="booking""#]
    ));

    let orchestrator = metrics_of(&stack, &stack.orchestrator_url).await;
    assert!(
        has(
            &orchestrator,
            "roombook_saga_duration_seconds_count",
            &[r#"state="COMPLETED""#]
        ),
        "{orchestrator}"
    );
    // Sagas in flight are counted per state; settled ones by the duration histogram above.
    assert!(has(
        &orchestrator,
        "roombook_sagas",
        &[r#"state="AWAITING_APPROVAL""#]
    ));
    assert!(!has(
        &orchestrator,
        "roombook_sagas",
        &[r#"state="COMPLETED""#]
    ));
    let confirm = metrics_of(&stack, &stack.confirm_url).await;
    assert!(has(
        &confirm,
        "roombook_messages_consumed_total",
        &[r#"consumer="confirm""#, r#"type="RequestConfirm""#]
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_id_follows_a_booking_from_http_through_every_message() {
    let stack = Stack::start(TestBackend::Sqlite).await;
    let mut tap = stack.tap().await;

    let root = TraceParent::new_root();
    let start = future(4, 9);
    let resp = stack
        .http
        .post(format!("{}/bookings", stack.booking_url))
        .header(platform::http::USER_ID_HEADER, "alice")
        .header("traceparent", root.to_string())
        .json(&json!({"roomId": 101, "useStartDtm": start.to_rfc3339(), "useEndDtm": (start + chrono::Duration::hours(1)).to_rfc3339()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    stack.wait_saga(&id, "AWAITING_APPROVAL").await;

    let mut seen = Vec::new();
    while let Ok(Some(msg)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), tap.next()).await
    {
        if !msg.subject.contains(id.as_str()) {
            continue;
        }
        let header = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.to_string());
        let trace = header
            .as_deref()
            .and_then(TraceParent::parse)
            .expect("every message carries traceparent");
        seen.push((msg.subject.to_string(), trace.trace_id));
        if seen.len() >= 4 {
            break;
        }
    }
    let kinds: Vec<&str> = seen
        .iter()
        .map(|(s, _)| s.rsplit('.').next().unwrap())
        .collect();
    for kind in ["BookingCreated", "RequestConfirm", "ConfirmRequested"] {
        assert!(kinds.contains(&kind), "{kind} not seen in {kinds:?}");
    }
    for (subject, trace_id) in &seen {
        assert_eq!(trace_id, &root.trace_id, "{subject} left the trace");
    }
}
