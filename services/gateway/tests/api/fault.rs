//! One real service stopped and started again behind a running gateway.

use std::time::Duration;

use platform::testkit::eventually;
use reqwest::Method;
use roombook_gateway::BreakerConfig;
use serde_json::{json, Value};

use crate::{
    helpers::{admin_token, token},
    stack::{future, Stack, WAIT},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_fails_fast_while_the_others_work_and_recovers_without_a_gateway_restart()
{
    let mut stack = Stack::start(|config| {
        config.breaker = BreakerConfig {
            failures: 2,
            open_for: Duration::from_secs(6),
        }
    })
    .await;
    let alice = token("alice", &["user"]);
    let admin = admin_token();
    let (status, _) = stack
        .call(Method::GET, "/confirms", Some(&admin), None)
        .await;
    assert_eq!(status, 200);

    let addr = stack.stop_confirm().await;
    let problem_type = |body: &Value| body["type"].as_str().unwrap_or_default().to_string();
    for _ in 0..2 {
        let (status, body) = stack
            .call(Method::GET, "/confirms", Some(&admin), None)
            .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(problem_type(&body), "/problems/unavailable");
    }
    // Now it is not even tried.
    let (status, body) = stack
        .call(Method::GET, "/confirms", Some(&admin), None)
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(problem_type(&body), "/problems/circuit-open");

    // Bookings keep working meanwhile; the saga waits for the confirm service.
    let booking = stack.book(&alice, 103, future(2, 10)).await;
    let booking_id = booking["id"].as_str().unwrap().to_string();
    let (status, mine) = stack
        .call(
            Method::GET,
            &format!("/bookings/{booking_id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!((status, mine["status"].as_str()), (200, Some("BOOKED")));

    // Started again on the same address: the route recovers by itself, and the saga goes on.
    stack.restart_confirm(addr).await;
    let confirm = stack.wait_confirm(&admin, &booking_id).await;
    let (status, decided) = stack
        .call(
            Method::PATCH,
            &format!("/confirms/{}", confirm["id"].as_str().unwrap()),
            Some(&admin),
            Some(&json!({"status": "CONFIRMED"})),
        )
        .await;
    assert_eq!(status, 200, "{decided}");
    stack.wait_saga(&admin, &booking_id, "COMPLETED").await;
    eventually("the booking to be confirmed", WAIT, || async {
        let (_, mine) = stack
            .call(
                Method::GET,
                &format!("/bookings/{booking_id}"),
                Some(&alice),
                None,
            )
            .await;
        (mine["status"] == "CONFIRMED").then_some(())
    })
    .await;
}
