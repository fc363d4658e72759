//! The layers around the routes: request id, CORS, compression.

use std::io::Read as _;

use axum::http::HeaderValue;
use platform::testkit::has_series;
use roombook_gateway::{Config, CorsOrigins, Service};
use serde_json::Value;

use crate::helpers::{echoed, spawn_app, spawn_echo, user_token, Echo, TestApp, SECRET};

const APP_ORIGIN: &str = "https://app.example.com";

async fn with_cors(origins: CorsOrigins) -> (TestApp, Echo) {
    let booking = spawn_echo("booking").await;
    let mut config = Config::for_test(SECRET).with_upstream(Service::Booking, &booking.url);
    config.cors = origins;
    (spawn_app(config).await, booking)
}

fn preflight(app: &TestApp, origin: &str) -> reqwest::RequestBuilder {
    app.client
        .request(reqwest::Method::OPTIONS, app.url("/bookings"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type,idempotency-key",
        )
}

fn header<'r>(response: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn the_request_id_is_generated_forwarded_and_returned_or_kept_when_given() {
    let booking = spawn_echo("booking").await;
    let app =
        spawn_app(Config::for_test(SECRET).with_upstream(Service::Booking, &booking.url)).await;

    let response = app.get("/bookings", &user_token()).send().await.unwrap();
    let returned = header(&response, "x-request-id").unwrap().to_string();
    let forwarded = echoed(response).await["headers"]["requestId"].clone();
    assert!(!returned.is_empty());
    assert_eq!(forwarded, returned.as_str());

    let response = app
        .get("/bookings", &user_token())
        .header("x-request-id", "client-chosen-id")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "x-request-id"), Some("client-chosen-id"));
    assert_eq!(
        echoed(response).await["headers"]["requestId"],
        "client-chosen-id"
    );

    // Answers the gateway gives itself carry one too.
    let refused = app.client.get(app.url("/bookings")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(header(&refused, "x-request-id").is_some());
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_without_a_token() {
    let (app, booking) = with_cors(CorsOrigins::List(vec![HeaderValue::from_static(
        APP_ORIGIN,
    )]))
    .await;
    let response = preflight(&app, APP_ORIGIN).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(APP_ORIGIN)
    );
    let methods = header(&response, "access-control-allow-methods").unwrap();
    assert!(
        methods.contains("POST") && methods.contains("PATCH"),
        "{methods}"
    );
    let headers = header(&response, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    for needed in ["authorization", "content-type", "idempotency-key"] {
        assert!(headers.contains(needed), "{headers}");
    }
    assert_eq!(booking.hits(), 0, "a preflight is answered by the gateway");

    // The real call then carries the CORS headers a browser needs to read the answer.
    let response = app
        .get("/bookings", &user_token())
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(APP_ORIGIN)
    );
    let exposed = header(&response, "access-control-expose-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("x-request-id") && exposed.contains("location"),
        "{exposed}"
    );
    echoed(response).await;
}

#[tokio::test]
async fn an_origin_that_is_not_listed_gets_no_cors_permission() {
    let (app, _booking) = with_cors(CorsOrigins::List(vec![HeaderValue::from_static(
        APP_ORIGIN,
    )]))
    .await;
    let response = preflight(&app, "https://elsewhere.example.org")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn without_configured_origins_there_are_no_cors_headers() {
    let (app, _booking) = with_cors(CorsOrigins::None).await;
    let response = preflight(&app, APP_ORIGIN).send().await.unwrap();
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    // The preflight is just an unauthenticated call then.
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn any_origin_may_be_allowed_with_a_star() {
    let (app, _booking) = with_cors(CorsOrigins::Any).await;
    let response = preflight(&app, "https://whoever.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&response, "access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn answers_are_gzipped_only_for_callers_that_accept_it() {
    let booking = spawn_echo("booking").await;
    let app =
        spawn_app(Config::for_test(SECRET).with_upstream(Service::Booking, &booking.url)).await;

    let gzipped = app
        .get("/bookings?x=1", &user_token())
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status(), 200);
    assert_eq!(header(&gzipped, "content-encoding"), Some("gzip"));
    let compressed = gzipped.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut text)
        .unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["query"], "x=1");

    let plain = app.get("/bookings", &user_token()).send().await.unwrap();
    assert_eq!(header(&plain, "content-encoding"), None);
    echoed(plain).await;
}

#[tokio::test]
async fn the_gateway_counts_and_times_what_it_answers_on_metrics() {
    let booking = spawn_echo("booking").await;
    let app =
        spawn_app(Config::for_test(SECRET).with_upstream(Service::Booking, &booking.url)).await;
    let passed = app.get("/bookings", &user_token()).send().await.unwrap();
    assert_eq!(passed.status(), 200);
    let refused = app.client.get(app.url("/bookings")).send().await.unwrap();
    assert_eq!(refused.status(), 401);

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gateway = r#"service="gateway""#;
    let route = r#"route="/bookings""#;
    for status in ["200", "401"] {
        let status = format!(r#"status="{status}""#);
        assert!(
            has_series(
                &metrics,
                "roombook_http_requests_total",
                &[gateway, route, &status]
            ),
            "{status} on /bookings is counted:\n{metrics}"
        );
    }
    assert!(has_series(
        &metrics,
        "roombook_http_request_duration_seconds_bucket",
        &[gateway, route]
    ));
}
