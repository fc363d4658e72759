use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use roombook_gateway::{mint_token, Config, Service};
use serde_json::{json, Value};

use crate::helpers::{assert_problem, echoed, spawn_app, spawn_echo, user_token, TestApp, SECRET};

async fn app() -> (TestApp, crate::helpers::Echo) {
    let booking = spawn_echo("booking").await;
    let app =
        spawn_app(Config::for_test(SECRET).with_upstream(Service::Booking, &booking.url)).await;
    (app, booking)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn signed(claims: Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn claims() -> Value {
    json!({"sub": "alice", "roles": ["user"], "iss": "roombook", "aud": "roombook-api", "exp": now() + 3600})
}

async fn assert_unauthorized(app: &TestApp, token: &str) -> Value {
    let response = app.get("/bookings", token).send().await.unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"roombook\""
    );
    assert_problem(response, 401).await
}

#[tokio::test]
async fn a_request_without_a_token_is_rejected_with_401_problem() {
    let (app, _booking) = app().await;
    let response = app.client.get(app.url("/bookings")).send().await.unwrap();
    let body = assert_problem(response, 401).await;
    assert_eq!(body["type"], "/problems/unauthorized");
}

#[tokio::test]
async fn a_non_bearer_authorization_is_rejected() {
    let (app, _booking) = app().await;
    let response = app
        .client
        .get(app.url("/bookings"))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_problem(response, 401).await;
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_rejected() {
    let (app, _booking) = app().await;
    let body = assert_unauthorized(&app, &signed(claims(), "some-other-secret")).await;
    assert_eq!(body["detail"], "the token's signature is not valid");
}

#[tokio::test]
async fn a_token_from_another_issuer_is_rejected() {
    let (app, _booking) = app().await;
    let token = mint_token(
        SECRET,
        "someone-else",
        "roombook-api",
        "alice",
        None,
        &["user"],
        std::time::Duration::from_secs(60),
    );
    let body = assert_unauthorized(&app, &token).await;
    assert_eq!(body["detail"], "the token was not issued for this API");
}

#[tokio::test]
async fn a_token_for_another_audience_is_rejected() {
    let (app, _booking) = app().await;
    let token = mint_token(
        SECRET,
        "roombook",
        "another-api",
        "alice",
        None,
        &["user"],
        std::time::Duration::from_secs(60),
    );
    let body = assert_unauthorized(&app, &token).await;
    assert_eq!(body["detail"], "the token was not issued for this API");
}

#[tokio::test]
async fn an_expired_token_is_rejected() {
    let (app, _booking) = app().await;
    let mut expired = claims();
    expired["exp"] = json!(now() - 600);
    let body = assert_unauthorized(&app, &signed(expired, SECRET)).await;
    assert_eq!(body["detail"], "the token has expired");
}

#[tokio::test]
async fn a_token_without_exp_is_rejected() {
    let (app, _booking) = app().await;
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_unauthorized(&app, &signed(no_exp, SECRET)).await;
}

#[tokio::test]
async fn a_token_with_the_none_algorithm_is_rejected() {
    let (app, _booking) = app().await;
    // header {"alg":"none","typ":"JWT"}, the valid claims, no signature.
    let valid = signed(claims(), SECRET);
    let payload = valid.split('.').nth(1).unwrap();
    assert_unauthorized(
        &app,
        &format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}."),
    )
    .await;
}

#[tokio::test]
async fn health_probes_need_no_token_and_readyz_checks_the_upstreams() {
    let (app, _booking) = app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"], json!({"booking": "ok"}));
}

#[tokio::test]
async fn readyz_reports_a_down_upstream_but_stays_ready() {
    let booking = spawn_echo("booking").await;
    let app = spawn_app(
        Config::for_test(SECRET)
            .with_upstream(Service::Booking, &booking.url)
            .with_upstream(Service::Confirm, &crate::helpers::dead_url()),
    )
    .await;
    // One service down must not take the whole API out of rotation: its routes answer 503.
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(
        body["checks"],
        json!({"booking": "ok", "confirm": "failing"})
    );
    // The gateway itself is alive all the same.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_valid_token_is_accepted() {
    let (app, _booking) = app().await;
    let body = echoed(app.get("/bookings", &user_token()).send().await.unwrap()).await;
    assert_eq!(body["headers"]["userId"], "alice");
}
