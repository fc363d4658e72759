//! The confirm API's rules over HTTP against the real service: admins only, decisions only,
//! problem details for everything refused.

use platform::{
    config::ServiceConfig,
    http::{USER_ID_HEADER, USER_ROLES_HEADER},
    testkit::{NatsServer, TestBackend, TestDatabases},
};
use reqwest::{Method, StatusCode};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn only_admins_read_the_queue_and_decide_and_bad_decisions_are_refused() {
    platform::telemetry::init_for_tests();
    let nats = NatsServer::start();
    let dbs = TestDatabases::new(TestBackend::Sqlite);
    let config = roombook_confirm::Config::new(ServiceConfig::for_test(
        &nats.url(),
        &dbs.create("confirm").await,
    ));
    let svc = roombook_confirm::spawn(config, CancellationToken::new())
        .await
        .unwrap();
    let url = format!("http://{}", svc.addr);
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, roles: &str, body: Option<&str>| {
        let mut req = http
            .request(method, format!("{url}{path}"))
            .header(USER_ID_HEADER, "someone")
            .header(USER_ROLES_HEADER, roles);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        async move {
            let resp = req.send().await.unwrap();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            (resp.status(), ctype.unwrap_or_default())
        }
    };
    let missing = uuid::Uuid::new_v4();
    let patch = format!("/confirms/{missing}");

    assert_eq!(
        call(Method::GET, "/confirms", "user", None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            Method::PATCH,
            &patch,
            "user",
            Some(r#"{"status":"CONFIRMED"}"#)
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(Method::GET, "/confirms?status=BOOKED", "admin", None)
            .await
            .0,
        StatusCode::OK
    );
    for (body, expected) in [
        (r#"{"status":"CONFIRMED"}"#, StatusCode::NOT_FOUND),
        (r#"{"status":"BOOKED"}"#, StatusCode::BAD_REQUEST),
        (r#"{"status":"MAYBE"}"#, StatusCode::BAD_REQUEST),
        (r#"{"reason":"no status"}"#, StatusCode::BAD_REQUEST),
        (r#"{"status":"#, StatusCode::BAD_REQUEST),
    ] {
        let (status, ctype) = call(Method::PATCH, &patch, "admin", Some(body)).await;
        assert_eq!(status, expected, "{body}");
        assert_eq!(ctype, "application/problem+json", "{body}");
    }
    for query in ["?status=SOMETIMES", "?bookingId=xyz", "?limit=5000"] {
        let (status, _) = call(Method::GET, &format!("/confirms{query}"), "admin", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
    }
    svc.stop();
    svc.wait().await.unwrap();
}
