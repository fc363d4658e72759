//! The booking API's answers to bad input, unknown things, other users and concurrent writers,
//! over HTTP against the real service (real nats-server, real SQLite or PostgreSQL).

use chrono::{Duration, Utc};
use platform::{
    config::ServiceConfig,
    http::{USER_ID_HEADER, USER_ROLES_HEADER},
    runtime::RunningService,
    testkit::{NatsServer, TestBackend, TestDatabases},
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

struct App {
    _nats: NatsServer,
    _dbs: TestDatabases,
    _svc: RunningService,
    url: String,
    database_url: String,
    http: reqwest::Client,
}

async fn spawn_app() -> App {
    spawn_app_on(TestBackend::Sqlite).await
}

async fn spawn_app_on(backend: TestBackend) -> App {
    platform::telemetry::init_for_tests();
    let nats = NatsServer::start();
    let dbs = TestDatabases::new(backend);
    let database_url = dbs.create("booking").await;
    let config = roombook_booking::Config {
        service: ServiceConfig::for_test(&nats.url(), &database_url),
        sample_rooms: true,
    };
    let svc = roombook_booking::spawn(config, CancellationToken::new())
        .await
        .unwrap();
    App {
        url: format!("http://{}", svc.addr),
        _nats: nats,
        _dbs: dbs,
        _svc: svc,
        database_url,
        http: reqwest::Client::new(),
    }
}

impl App {
    async fn call(
        &self,
        method: Method,
        path: &str,
        user: Option<(&str, &str)>,
        body: Option<&str>,
    ) -> (StatusCode, String, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some((id, roles)) = user {
            req = req
                .header(USER_ID_HEADER, id)
                .header(USER_ROLES_HEADER, roles);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        (
            status,
            ctype,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    async fn post_booking(&self, body: &str) -> (StatusCode, String, Value) {
        self.call(
            Method::POST,
            "/bookings",
            Some(("alice", "user")),
            Some(body),
        )
        .await
    }
}

fn tomorrow(hour: i64) -> String {
    let d = (Utc::now() + Duration::days(1))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    (d + Duration::hours(hour)).to_rfc3339()
}

#[tokio::test]
async fn bad_booking_requests_get_400_problem_details() {
    let app = spawn_app().await;
    let (s9, s10) = (tomorrow(9), tomorrow(10));
    let cases = [
        ("malformed JSON", "{\"roomId\": 101,".to_string()),
        ("missing roomId", json!({"useStartDtm": s9, "useEndDtm": s10}).to_string()),
        ("missing useEndDtm", json!({"roomId": 101, "useStartDtm": s9}).to_string()),
        ("roomId of the wrong type", json!({"roomId": [1], "useStartDtm": s9, "useEndDtm": s10}).to_string()),
        ("roomId not a number", json!({"roomId": "big", "useStartDtm": s9, "useEndDtm": s10}).to_string()),
        ("unparseable time", json!({"roomId": 101, "useStartDtm": "next tuesday", "useEndDtm": s10}).to_string()),
        ("truncated compact time", json!({"roomId": 101, "useStartDtm": "2021070817300", "useEndDtm": s10}).to_string()),
        ("end before start", json!({"roomId": 101, "useStartDtm": s10, "useEndDtm": s9}).to_string()),
        ("end equal to start", json!({"roomId": 101, "useStartDtm": s9, "useEndDtm": s9}).to_string()),
        ("in the past", json!({"roomId": 101, "useStartDtm": "2020-01-01T09:00:00Z", "useEndDtm": "2020-01-01T10:00:00Z"}).to_string()),
    ];
    for (what, body) in cases {
        let (status, ctype, problem) = app.post_booking(&body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {problem}");
        assert_eq!(ctype, "application/problem+json", "{what}");
        assert_eq!(problem["status"], 400, "{what}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {problem}"
        );
    }
    // Nothing was created by any of them.
    let (_, _, mine) = app
        .call(Method::GET, "/bookings", Some(("alice", "user")), None)
        .await;
    assert_eq!(mine, json!([]));
}

#[tokio::test]
async fn the_compact_seed_time_format_is_accepted_as_utc() {
    let app = spawn_app().await;
    let day = (Utc::now() + Duration::days(2))
        .format("%Y%m%d")
        .to_string();
    let body = json!({"roomId": "102", "useStartDtm": format!("{day}090000"), "useEndDtm": format!("{day}103000")});
    let (status, _, booking) = app.post_booking(&body.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{booking}");
    assert_eq!(booking["roomId"], 102);
    assert!(booking["useStartDtm"]
        .as_str()
        .unwrap()
        .ends_with("T09:00:00.000Z"));
    assert_eq!(booking["bookingUserId"], "alice");
}

/// A booking of a room that does not exist is 404, and nothing is stored (on SQLite the
/// insert's reference to the room finds none; on PostgreSQL the room's lock does).
async fn a_booking_of_an_unknown_room_is_404(backend: TestBackend) {
    let app = spawn_app_on(backend).await;
    let body = json!({"roomId": 999, "useStartDtm": tomorrow(9), "useEndDtm": tomorrow(10)});
    let (status, ctype, problem) = app.post_booking(&body.to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(ctype, "application/problem+json");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("999"),
        "{problem}"
    );
    let (status, _, list) = app
        .call(Method::GET, "/bookings", Some(("alice", "user")), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn a_booking_of_an_unknown_room_is_404_on_sqlite() {
    a_booking_of_an_unknown_room_is_404(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn a_booking_of_an_unknown_room_is_404_on_postgres() {
    a_booking_of_an_unknown_room_is_404(TestBackend::Postgres).await;
}

/// An owner's cancel that meets another writer's change of the booking (the admin's approval
/// confirming it, say) reads it again and still cancels it, instead of failing.
#[tokio::test]
async fn a_cancel_that_meets_a_concurrent_confirmation_still_cancels_on_postgres() {
    let app = spawn_app_on(TestBackend::Postgres).await;
    let body = json!({"roomId": 101, "useStartDtm": tomorrow(9), "useEndDtm": tomorrow(10)});
    let (status, _, booking) = app.post_booking(&body.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{booking}");
    let id = booking["id"].as_str().unwrap().to_string();

    // The confirmation, written but not yet committed while the cancel runs.
    let db = sqlx::AnyPool::connect(&app.database_url).await.unwrap();
    let mut confirming = db.begin().await.unwrap();
    sqlx::query("UPDATE bookings SET status = 'CONFIRMED', version = version + 1 WHERE id = $1")
        .bind(&id)
        .execute(&mut *confirming)
        .await
        .unwrap();
    let path = format!("/bookings/{id}");
    let cancel = app.call(Method::DELETE, &path, Some(("alice", "user")), None);
    let commit_once_the_cancel_waits = async {
        platform::testkit::until_a_session_waits_on_a_lock(&db).await;
        confirming.commit().await.unwrap();
    };
    let ((status, _, cancelled), ()) = tokio::join!(cancel, commit_once_the_cancel_waits);
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(cancelled["version"], 3, "cancelled after the confirmation");
}

#[tokio::test]
async fn unknown_bookings_and_rooms_are_404() {
    let app = spawn_app().await;
    let missing = uuid::Uuid::new_v4();
    for (method, path) in [
        (Method::GET, format!("/bookings/{missing}")),
        (Method::DELETE, format!("/bookings/{missing}")),
        (Method::GET, "/bookings/not-a-uuid".to_string()),
        (Method::GET, "/rooms/999".to_string()),
        (Method::GET, "/rooms/999/availability".to_string()),
        (Method::GET, "/no/such/route".to_string()),
    ] {
        let (status, ctype, _) = app
            .call(method.clone(), &path, Some(("alice", "user")), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(ctype, "application/problem+json", "{method} {path}");
    }
}

#[tokio::test]
async fn users_see_and_cancel_only_their_own_bookings() {
    let app = spawn_app().await;
    let body = json!({"roomId": 101, "useStartDtm": tomorrow(13), "useEndDtm": tomorrow(14)});
    let (_, _, booking) = app.post_booking(&body.to_string()).await;
    let path = format!("/bookings/{}", booking["id"].as_str().unwrap());
    // Another user cannot tell it exists.
    let (status, _, _) = app
        .call(Method::GET, &path, Some(("mallory", "user")), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = app
        .call(Method::DELETE, &path, Some(("mallory", "user")), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, theirs) = app
        .call(Method::GET, "/bookings", Some(("mallory", "user")), None)
        .await;
    assert_eq!(theirs, json!([]));
    // No identity at all: 401.
    let (status, _, _) = app.call(Method::GET, &path, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A user cannot book for someone else; an admin can.
    let for_bob = json!({"roomId": 103, "useStartDtm": tomorrow(9), "useEndDtm": tomorrow(10), "bookingUserId": "bob"});
    let (status, _, _) = app.post_booking(&for_bob.to_string()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, b) = app
        .call(
            Method::POST,
            "/bookings",
            Some(("admin", "user,admin")),
            Some(&for_bob.to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(b["bookingUserId"], "bob");
    // The admin sees everything.
    let (_, _, all) = app
        .call(Method::GET, "/bookings", Some(("admin", "admin")), None)
        .await;
    assert_eq!(all.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bookings_are_listed_by_room_and_status_in_time_order() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for (room, hour) in [(101, 15), (102, 9), (101, 8)] {
        let body =
            json!({"roomId": room, "useStartDtm": tomorrow(hour), "useEndDtm": tomorrow(hour + 1)});
        let (status, _, b) = app.post_booking(&body.to_string()).await;
        assert_eq!(status, StatusCode::CREATED);
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    let (status, _, _) = app
        .call(
            Method::DELETE,
            &format!("/bookings/{}", ids[0]),
            Some(("alice", "user")),
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    let listed = |path: &'static str, who: (&'static str, &'static str)| {
        let app = &app;
        async move {
            let (status, _, v) = app.call(Method::GET, path, Some(who), None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            v.as_array()
                .unwrap()
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let admin = ("admin", "admin");
    // Room 101's bookings, earliest first.
    assert_eq!(
        listed("/bookings?roomId=101", admin).await,
        [ids[2].clone(), ids[0].clone()]
    );
    assert_eq!(
        listed("/bookings?roomId=101&status=CANCELLED", admin).await,
        [ids[0].clone()]
    );
    assert_eq!(
        listed("/bookings?roomId=102", ("alice", "user")).await,
        [ids[1].clone()]
    );
    assert!(listed("/bookings?roomId=102", ("mallory", "user"))
        .await
        .is_empty());
}

#[tokio::test]
async fn rooms_are_listed_created_by_admins_and_show_availability() {
    let app = spawn_app().await;
    let (status, _, rooms) = app.call(Method::GET, "/rooms", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(rooms.as_array().unwrap().len() >= 4);

    let new_room = json!({"name": "Annapurna", "capacity": 6}).to_string();
    let (status, _, _) = app
        .call(
            Method::POST,
            "/rooms",
            Some(("alice", "user")),
            Some(&new_room),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, room) = app
        .call(
            Method::POST,
            "/rooms",
            Some(("admin", "admin")),
            Some(&new_room),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    let room_id = room["id"].as_i64().unwrap();
    let (status, _, _) = app
        .call(
            Method::POST,
            "/rooms",
            Some(("admin", "admin")),
            Some(&json!({"id": room_id, "name": "Dup"}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _, _) = app
        .call(
            Method::POST,
            "/rooms",
            Some(("admin", "admin")),
            Some(&json!({"name": ""}).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Book 10:00-11:00 in the new room; availability over 09:00-12:00 shows it busy and the rest free.
    let body = json!({"roomId": room_id, "useStartDtm": tomorrow(10), "useEndDtm": tomorrow(11)});
    assert_eq!(
        app.post_booking(&body.to_string()).await.0,
        StatusCode::CREATED
    );
    let path = format!(
        "/rooms/{room_id}/availability?from={}&to={}",
        urlencode(&tomorrow(9)),
        urlencode(&tomorrow(12))
    );
    let (status, _, avail) = app.call(Method::GET, &path, None, None).await;
    assert_eq!(status, StatusCode::OK, "{avail}");
    assert_eq!(avail["busy"].as_array().unwrap().len(), 1);
    assert_eq!(avail["busy"][0]["status"], "BOOKED");
    assert_eq!(avail["free"].as_array().unwrap().len(), 2);
    let (status, _, _) = app
        .call(
            Method::GET,
            &format!("/rooms/{room_id}/availability?from=yesterday"),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn list_filters_reject_unknown_values() {
    let app = spawn_app().await;
    for path in [
        "/bookings?status=MAYBE",
        "/bookings?limit=0",
        "/bookings?roomId=abc",
    ] {
        let (status, ctype, _) = app
            .call(Method::GET, path, Some(("alice", "user")), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(ctype, "application/problem+json");
    }
}
