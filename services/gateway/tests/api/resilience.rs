//! Failing fast: the per-upstream circuit breaker and the global concurrency limit.

use std::time::Duration;

use platform::testkit::eventually;
use roombook_gateway::{BreakerConfig, Config, Service};
use serde_json::Value;

use crate::helpers::{
    admin_token, assert_problem, echoed, spawn_app, spawn_echo, spawn_gated_echo, user_token,
    SECRET,
};

const WAIT: Duration = Duration::from_secs(30);

/// The problem type of a 503 from `/confirms`, or `None` for any other answer.
async fn confirms_503_type(app: &crate::helpers::TestApp) -> Option<String> {
    let response = app.get("/confirms", &admin_token()).send().await.unwrap();
    if response.status() != 503 {
        return None;
    }
    let body: Value = response.json().await.unwrap();
    body["type"].as_str().map(str::to_string)
}

#[tokio::test]
async fn a_failing_upstream_opens_its_circuit_probes_when_half_open_and_closes_once_it_is_back() {
    let booking = spawn_echo("booking").await;
    let mut confirm = spawn_echo("confirm").await;
    let mut config = Config::for_test(SECRET)
        .with_upstream(Service::Booking, &booking.url)
        .with_upstream(Service::Confirm, &confirm.url);
    config.breaker = BreakerConfig {
        failures: 3,
        // Long enough that the open state is seen before it passes, even on a loaded machine;
        // the test waits for its end by polling, never by sleeping.
        open_for: Duration::from_secs(6),
    };
    let app = spawn_app(config).await;
    assert_eq!(
        echoed(app.get("/confirms", &admin_token()).send().await.unwrap()).await["service"],
        "confirm"
    );

    // Closed → open: the upstream goes away; each call tries it and fails, until the third.
    confirm.stop().await;
    for _ in 0..3 {
        let response = app.get("/confirms", &admin_token()).send().await.unwrap();
        let body = assert_problem(response, 503).await;
        assert_eq!(body["type"], "/problems/unavailable");
    }
    let refused = app.get("/confirms", &admin_token()).send().await.unwrap();
    assert_eq!(refused.headers()["retry-after"], "6");
    let body = assert_problem(refused, 503).await;
    assert_eq!(body["type"], "/problems/circuit-open");
    assert_eq!(body["service"], "confirm");
    // Only that service's routes: bookings still work.
    assert_eq!(
        echoed(app.get("/bookings", &user_token()).send().await.unwrap()).await["service"],
        "booking"
    );

    // Open → half-open → open: once the open time has passed, one call probes the upstream,
    // which is still down, so the circuit opens again at once.
    let probed = eventually(
        "a half-open probe of the stopped upstream",
        WAIT,
        || async {
            confirms_503_type(&app)
                .await
                .filter(|t| t == "/problems/unavailable")
        },
    )
    .await;
    assert_eq!(probed, "/problems/unavailable");
    assert_eq!(
        confirms_503_type(&app).await.as_deref(),
        Some("/problems/circuit-open")
    );

    // Back on the same port: the next probe succeeds and the circuit closes by itself.
    let hits_before = confirm.hits();
    confirm.start_again().await;
    eventually("the circuit to close again", WAIT, || async {
        let response = app.get("/confirms", &admin_token()).send().await.unwrap();
        if response.status() == 200 {
            return Some(());
        }
        let body = assert_problem(response, 503).await;
        assert_eq!(body["type"], "/problems/circuit-open");
        None
    })
    .await;
    for _ in 0..3 {
        echoed(app.get("/confirms", &admin_token()).send().await.unwrap()).await;
    }
    // Refused calls never reached it: it saw the successful probe and the three after it.
    assert_eq!(confirm.hits() - hits_before, 4);
}

#[tokio::test]
async fn server_errors_count_as_failures_but_client_errors_do_not() {
    let booking = spawn_echo("booking").await;
    let mut config = Config::for_test(SECRET).with_upstream(Service::Booking, &booking.url);
    config.breaker = BreakerConfig {
        failures: 2,
        open_for: Duration::from_secs(3600),
    };
    let app = spawn_app(config).await;
    for _ in 0..5 {
        let response = app
            .get("/bookings?status=404", &user_token())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }
    for _ in 0..2 {
        let response = app
            .get("/bookings?status=503", &user_token())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
    }
    let body = assert_problem(
        app.get("/bookings", &user_token()).send().await.unwrap(),
        503,
    )
    .await;
    assert_eq!(body["type"], "/problems/circuit-open");
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_shed_with_503_and_retry_after() {
    let (booking, mut gate) = spawn_gated_echo("booking").await;
    let mut config = Config::for_test(SECRET).with_upstream(Service::Booking, &booking.url);
    config.max_concurrent_requests = 2;
    let app = spawn_app(config).await;

    // Two calls take both places and are held by the upstream.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let request = app.get("/bookings", &user_token());
            tokio::spawn(async move { request.send().await.unwrap() })
        })
        .collect();
    for _ in 0..2 {
        gate.arrivals.recv().await.unwrap();
    }

    // A third is refused at once instead of waiting in line.
    let shed = app.get("/rooms", &user_token()).send().await.unwrap();
    assert_eq!(shed.headers()["retry-after"], "1");
    let body = assert_problem(shed, 503).await;
    assert_eq!(body["type"], "/problems/overloaded");
    // The probes are not counted against the limit: the gateway stays alive and ready.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        booking.hits(),
        2,
        "the shed call never reached the upstream"
    );

    // Once the held calls finish, there is room again.
    gate.open();
    for call in held {
        echoed(call.await.unwrap()).await;
    }
    assert_eq!(
        echoed(app.get("/rooms", &user_token()).send().await.unwrap()).await["path"],
        "/rooms"
    );
}

#[tokio::test]
async fn an_event_stream_is_passed_on_as_it_arrives() {
    let bookinglist = spawn_echo("bookinglist").await;
    let mut config = Config::for_test(SECRET).with_upstream(Service::BookingList, &bookinglist.url);
    // The stream stays open far beyond this; only its start is timed.
    config.upstream_timeout = Duration::from_millis(500);
    let app = spawn_app(config).await;
    let mut response = app
        .get("/bookingLists/stream?sse=1", &user_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"event: ready\ndata: {}\n\n");
}
