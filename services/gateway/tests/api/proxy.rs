use std::time::Duration;

use roombook_gateway::{proxy::BODY_LIMIT, Config, Service};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    admin_token, assert_problem, dead_url, echoed, hanging_upstream, spawn_app, spawn_echo,
    user_token, Echo, TestApp, SECRET,
};

/// The gateway in front of echo upstreams for the three core services.
struct Stack {
    app: TestApp,
    _upstreams: Vec<Echo>,
}

async fn stack() -> Stack {
    let (booking, confirm, orchestrator) = (
        spawn_echo("booking").await,
        spawn_echo("confirm").await,
        spawn_echo("orchestrator").await,
    );
    let app = spawn_app(
        Config::for_test(SECRET)
            .with_upstream(Service::Booking, &booking.url)
            .with_upstream(Service::Confirm, &confirm.url)
            .with_upstream(Service::Orchestrator, &orchestrator.url),
    )
    .await;
    Stack {
        app,
        _upstreams: vec![booking, confirm, orchestrator],
    }
}

#[tokio::test]
async fn a_user_call_is_forwarded_with_identity_from_the_token_and_spoofed_identity_stripped() {
    let stack = stack().await;
    let app = &stack.app;
    let response = app
        .post("/bookings?roomId=r1&x=a%20b", &user_token())
        .header("x-roombook-user-id", "mallory")
        .header("x-roombook-user-roles", "admin")
        .header("x-roombook-user-email", "mallory@example.com")
        .header("idempotency-key", "key-1")
        .header("x-request-id", "req-1")
        .header("cookie", "session=secret")
        .json(&json!({"roomId": "r1"}))
        .send()
        .await
        .unwrap();
    let body = echoed(response).await;
    assert_eq!(body["service"], "booking");
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/bookings");
    assert_eq!(body["query"], "roomId=r1&x=a%20b");
    assert_eq!(body["bodyLen"], json!({"roomId": "r1"}).to_string().len());
    let headers = &body["headers"];
    assert_eq!(headers["userId"], "alice");
    assert_eq!(headers["userEmail"], "alice@example.com");
    assert_eq!(headers["userRoles"], "user");
    assert_eq!(headers["idempotencyKey"], "key-1");
    assert_eq!(headers["requestId"], "req-1");
    assert_eq!(headers["contentType"], "application/json");
    // The token and cookies stay at the gateway.
    assert_eq!(headers["authorization"], Value::Null);
    assert_eq!(headers["cookie"], Value::Null);
}

#[tokio::test]
async fn a_token_without_email_sends_no_email_header_even_if_the_caller_spoofs_one() {
    let stack = stack().await;
    let app = &stack.app;
    let jwt = roombook_gateway::JwtConfig::with_secret(SECRET);
    let token = roombook_gateway::mint_token(
        SECRET,
        &jwt.issuer,
        &jwt.audience,
        "bob",
        None,
        &[],
        Duration::from_secs(60),
    );
    let response = app
        .get("/bookings/b-1", &token)
        .header("x-roombook-user-email", "mallory@example.com")
        .send()
        .await
        .unwrap();
    let body = echoed(response).await;
    assert_eq!(body["path"], "/bookings/b-1");
    assert_eq!(body["headers"]["userId"], "bob");
    assert_eq!(body["headers"]["userEmail"], Value::Null);
    assert_eq!(body["headers"]["userRoles"], "");
}

#[tokio::test]
async fn a_call_without_traceparent_starts_a_trace_and_one_with_it_continues_the_trace() {
    let stack = stack().await;
    let app = &stack.app;
    let fresh = echoed(app.get("/rooms", &user_token()).send().await.unwrap()).await;
    let started =
        platform::trace::TraceParent::parse(fresh["headers"]["traceparent"].as_str().unwrap())
            .unwrap();
    assert_eq!(started.trace_id.len(), 32);
    // The common layers give every request an id, and it travels on.
    assert!(fresh["headers"]["requestId"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));

    let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let continued = echoed(
        app.get("/rooms", &user_token())
            .header("traceparent", incoming)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let sent =
        platform::trace::TraceParent::parse(continued["headers"]["traceparent"].as_str().unwrap())
            .unwrap();
    assert_eq!(sent.trace_id, "0af7651916cd43dd8448eb211c80319c");
}

#[tokio::test]
async fn upstream_status_content_type_and_location_are_returned() {
    let stack = stack().await;
    let app = &stack.app;
    let response = app
        .post("/bookings?status=201", &user_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["location"], "/echoed");
    let conflict = app
        .post("/bookings?status=409", &user_token())
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), 409);
}

#[tokio::test]
async fn an_upstream_failure_without_problem_details_becomes_a_502_problem() {
    let stack = stack().await;
    let app = &stack.app;
    let response = app
        .get("/bookings?status=500&plain=1", &user_token())
        .send()
        .await
        .unwrap();
    assert_problem(response, 502).await;
}

#[tokio::test]
async fn a_user_may_not_reach_sagas_or_confirms() {
    let stack = stack().await;
    let app = &stack.app;
    for path in [
        "/sagas",
        "/sagas/s-1",
        "/confirms",
        "/confirms/c-1?status=BOOKED",
    ] {
        let response = app.get(path, &user_token()).send().await.unwrap();
        let body = assert_problem(response, 403).await;
        assert_eq!(body["type"], "/problems/forbidden", "{path}");
    }
    let patch = app
        .client
        .patch(app.url("/confirms/c-1"))
        .bearer_auth(user_token())
        .json(&json!({"status": "CONFIRMED"}))
        .send()
        .await
        .unwrap();
    assert_problem(patch, 403).await;
}

#[tokio::test]
async fn an_admin_reaches_sagas_and_confirms_on_their_own_services() {
    let stack = stack().await;
    let app = &stack.app;
    let saga = echoed(app.get("/sagas/s-1", &admin_token()).send().await.unwrap()).await;
    assert_eq!(
        (saga["service"].as_str(), saga["path"].as_str()),
        (Some("orchestrator"), Some("/sagas/s-1"))
    );
    assert_eq!(saga["headers"]["userRoles"], "user,admin");
    let confirms = echoed(
        app.get("/confirms?status=BOOKED", &admin_token())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(confirms["service"], "confirm");
    assert_eq!(confirms["query"], "status=BOOKED");
}

#[tokio::test]
async fn only_an_admin_may_create_rooms_but_anyone_may_read_them() {
    let stack = stack().await;
    let app = &stack.app;
    let by_user = app
        .post("/rooms", &user_token())
        .json(&json!({"name": "Alpha"}))
        .send()
        .await
        .unwrap();
    assert_problem(by_user, 403).await;
    let read = echoed(
        app.get("/rooms/r1/availability", &user_token())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (read["service"].as_str(), read["path"].as_str()),
        (Some("booking"), Some("/rooms/r1/availability"))
    );
    let by_admin = echoed(
        app.post("/rooms", &admin_token())
            .json(&json!({"name": "Alpha"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(by_admin["method"], "POST");
}

#[tokio::test]
async fn a_dot_segment_path_cannot_slip_past_the_admin_check() {
    let stack = stack().await;
    let app = &stack.app;
    // Sent raw: an HTTP client would resolve the dots itself.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "GET /bookings/%2e%2e/sagas HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        user_token()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}

#[tokio::test]
async fn a_body_at_the_limit_is_forwarded_and_one_over_it_is_rejected_with_413() {
    let stack = stack().await;
    let app = &stack.app;
    let at_limit = app
        .post("/bookings", &user_token())
        .body(vec![b'x'; BODY_LIMIT])
        .send()
        .await
        .unwrap();
    assert_eq!(echoed(at_limit).await["bodyLen"], BODY_LIMIT);
    let over = app
        .post("/bookings", &user_token())
        .body(vec![b'x'; BODY_LIMIT + 1])
        .send()
        .await
        .unwrap();
    let body = assert_problem(over, 413).await;
    assert_eq!(body["type"], "/problems/too-large");
}

#[tokio::test]
async fn an_unreachable_upstream_answers_503_with_retry_after_while_other_upstreams_still_work() {
    let booking = spawn_echo("booking").await;
    let app = spawn_app(
        Config::for_test(SECRET)
            .with_upstream(Service::Booking, &booking.url)
            .with_upstream(Service::Confirm, &dead_url()),
    )
    .await;
    let down = app.get("/confirms", &admin_token()).send().await.unwrap();
    assert_eq!(down.headers()["retry-after"], "2");
    let body = assert_problem(down, 503).await;
    assert_eq!(body["type"], "/problems/unavailable");
    assert_eq!(
        echoed(app.get("/bookings", &user_token()).send().await.unwrap()).await["service"],
        "booking"
    );
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_in_time_gives_503_with_retry_after() {
    let booking = spawn_echo("booking").await;
    let (_listener, hanging) = hanging_upstream();
    let mut config = Config::for_test(SECRET)
        .with_upstream(Service::Booking, &booking.url)
        .with_upstream(Service::Orchestrator, &hanging);
    config.upstream_timeout = Duration::from_millis(200);
    let app = spawn_app(config).await;
    // The test client gives up after 20 s, far beyond the gateway's 200 ms.
    let slow = app.get("/sagas", &admin_token()).send().await.unwrap();
    assert!(slow.headers().contains_key("retry-after"));
    let body = assert_problem(slow, 503).await;
    assert!(body["detail"].as_str().unwrap().contains("orchestrator"));
    assert_eq!(
        echoed(app.get("/bookings", &user_token()).send().await.unwrap()).await["service"],
        "booking"
    );
}

#[tokio::test]
async fn a_service_that_is_not_deployed_answers_503_not_deployed() {
    let stack = stack().await;
    let app = &stack.app;
    for path in ["/notifications", "/bookingLists/b-1"] {
        let response = app.get(path, &user_token()).send().await.unwrap();
        assert!(!response.headers().contains_key("retry-after"), "{path}");
        let body = assert_problem(response, 503).await;
        assert_eq!(body["type"], "/problems/not-deployed");
    }
}

#[tokio::test]
async fn a_later_service_is_reached_once_its_url_is_configured() {
    let notification = spawn_echo("notification").await;
    let app =
        spawn_app(Config::for_test(SECRET).with_upstream(Service::Notification, &notification.url))
            .await;
    let body = echoed(
        app.get("/notifications?bookingId=b-1", &user_token())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body["service"], "notification");
}

#[tokio::test]
async fn an_unknown_route_answers_404_problem() {
    let stack = stack().await;
    let app = &stack.app;
    for path in ["/nope", "/bookingsX", "/"] {
        let response = app.get(path, &user_token()).send().await.unwrap();
        let body = assert_problem(response, 404).await;
        assert_eq!(body["type"], "/problems/not-found", "{path}");
    }
    // Even without a token: nothing is behind it to protect.
    let anonymous = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_problem(anonymous, 404).await;
}
