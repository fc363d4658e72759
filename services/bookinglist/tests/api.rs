//! The booking list over HTTP against the real service (real nats-server, real SQLite), fed with
//! events published straight to the stream — late, repeated, out of order, unknown — as the
//! participants might deliver them.

use std::time::Duration;

use async_nats::{header::NATS_MESSAGE_ID, jetstream, HeaderMap};
use chrono::{DateTime, TimeZone as _, Utc};
use platform::{
    contract::*,
    http::{USER_ID_HEADER, USER_ROLES_HEADER},
    runtime::RunningService,
    testkit::{eventually, NatsServer, TestBackend, TestDatabases},
    topology,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

struct App {
    _nats: NatsServer,
    _dbs: TestDatabases,
    svc: RunningService,
    url: String,
    http: reqwest::Client,
    js: jetstream::Context,
}

#[derive(Clone, Copy)]
enum Caller<'a> {
    User(&'a str),
    Admin,
    Nobody,
}

async fn spawn_app() -> App {
    platform::telemetry::init_for_tests();
    let nats = NatsServer::start();
    let dbs = TestDatabases::new(TestBackend::Sqlite);
    let mut config = roombook_bookinglist::Config::with_service(
        platform::config::ServiceConfig::for_test(&nats.url(), &dbs.create("bookinglist").await),
    );
    config.feed_poll = Duration::from_millis(50);
    config.rebuild_batch = 3;
    let svc = roombook_bookinglist::spawn(config, CancellationToken::new())
        .await
        .expect("bookinglist starts");
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    App {
        url: format!("http://{}", svc.addr),
        _nats: nats,
        _dbs: dbs,
        svc,
        http: reqwest::Client::new(),
        js,
    }
}

impl App {
    fn request(&self, method: Method, path: &str, caller: Caller<'_>) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.url));
        match caller {
            Caller::User(u) => req
                .header(USER_ID_HEADER, u)
                .header(USER_ROLES_HEADER, "user"),
            Caller::Admin => req
                .header(USER_ID_HEADER, "admin")
                .header(USER_ROLES_HEADER, "user,admin"),
            Caller::Nobody => req,
        }
    }

    async fn call(&self, method: Method, path: &str, caller: Caller<'_>) -> (StatusCode, Value) {
        let resp = self.request(method, path, caller).send().await.unwrap();
        let status = resp.status();
        let problem = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap() == "application/problem+json");
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_client_error() || status.is_server_error() {
            assert!(problem, "{status} without problem details: {body}");
        }
        (status, body)
    }

    async fn get(&self, path: &str, caller: Caller<'_>) -> (StatusCode, Value) {
        self.call(Method::GET, path, caller).await
    }

    /// Publishes as a participant's outbox relay would; `copy` gives a redelivered duplicate a
    /// `Nats-Msg-Id` of its own, so that the server keeps it and the consumer must drop it.
    async fn publish_as(&self, env: &Envelope, copy: Option<u32>) {
        let mut headers = HeaderMap::new();
        let id = match copy {
            Some(n) => format!("{}.{n}", env.message_id),
            None => env.message_id.to_string(),
        };
        headers.insert(NATS_MESSAGE_ID, id.as_str());
        self.js
            .publish_with_headers(topology::subject_for(env), headers, env.to_json().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn publish(&self, env: &Envelope) {
        self.publish_as(env, None).await;
    }

    async fn publish_raw(&self, subject: String, payload: &str) {
        self.js
            .publish(subject, payload.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn row(&self, id: Uuid) -> Option<Value> {
        let (status, body) = self
            .get(&format!("/bookingLists/{id}"), Caller::Admin)
            .await;
        (status == StatusCode::OK).then_some(body)
    }

    async fn wait_row(&self, id: Uuid, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        eventually(what, WAIT, || async {
            self.row(id).await.filter(|r| pred(r))
        })
        .await
    }

    /// Waits until the consumers have applied everything in the event streams.
    async fn wait_caught_up(&self) -> Value {
        eventually("the list to catch up with the streams", WAIT, || async {
            let (status, lag) = self.get("/bookingLists/lag", Caller::Nobody).await;
            let streams = lag["streams"].as_array()?;
            let each_applied = streams
                .iter()
                .all(|s| s["pending"] == 0 && s["appliedSequence"] == s["streamLastSequence"]);
            (status == StatusCode::OK && lag["pending"] == 0 && lag["caughtUp"] == true)
                .then_some(())?;
            assert!(each_applied, "caught up, yet a stream is behind: {lag}");
            Some(lag)
        })
        .await
    }

    async fn all_rows(&self) -> Vec<Value> {
        let (status, body) = self
            .get("/bookingLists?size=200&sort=useStartDtm", Caller::Admin)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["items"].as_array().unwrap().clone()
    }
}

fn t(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 9, day, hour, 0, 0).unwrap()
}

fn at(env: Envelope, when: DateTime<Utc>) -> Envelope {
    Envelope {
        occurred_at: when,
        ..env
    }
}

/// The events of one booking's life, from the three sources, as builders.
struct Booking {
    id: Uuid,
    confirm: Uuid,
    user: String,
    room: RoomId,
    day: u32,
}

impl Booking {
    fn new(user: &str, room: RoomId, day: u32) -> Self {
        Booking {
            id: Uuid::new_v4(),
            confirm: Uuid::new_v4(),
            user: user.into(),
            room,
            day,
        }
    }

    fn env(&self, version: u64, minute: u32, body: Body) -> Envelope {
        at(
            Envelope::new(self.id, self.id, version, body),
            t(1, 8) + chrono::Duration::minutes(i64::from(minute)),
        )
    }

    fn created(&self) -> Envelope {
        self.env(
            1,
            0,
            Body::BookingCreated(BookingCreated {
                room_id: self.room,
                booking_user_id: self.user.clone(),
                booking_user_email: None,
                use_start_dtm: t(self.day, 9),
                use_end_dtm: t(self.day, 10),
            }),
        )
    }

    fn requested(&self) -> Envelope {
        self.env(
            1,
            1,
            Body::ConfirmRequested(ConfirmRequested {
                confirm_id: self.confirm,
                room_id: self.room,
                booking_user_id: self.user.clone(),
                use_start_dtm: t(self.day, 9),
                use_end_dtm: t(self.day, 10),
                approval_deadline: t(self.day, 8),
            }),
        )
    }

    fn denied(&self) -> Envelope {
        self.env(
            2,
            2,
            Body::ConfirmDenied(ConfirmDecided {
                confirm_id: self.confirm,
                confirm_user_id: "admin".into(),
                reason: Some("room under repair".into()),
            }),
        )
    }

    fn cancelled(&self, reason: CancelReason) -> Envelope {
        self.env(
            2,
            3,
            Body::BookingCancelled(BookingCancelled {
                reason,
                detail: None,
            }),
        )
    }

    fn confirmed(&self) -> Envelope {
        self.env(2, 3, Body::BookingConfirmed(BookingConfirmed {}))
    }

    fn closed(&self, version: u64, reason: &str) -> Envelope {
        self.env(
            version,
            4,
            Body::ConfirmClosed(ConfirmClosed {
                confirm_id: self.confirm,
                was_requested: true,
                reason: reason.into(),
            }),
        )
    }

    fn saga(&self, version: u64, state: &str) -> Envelope {
        self.env(
            version,
            u32::try_from(version).unwrap(),
            Body::SagaStateChanged(SagaStateChanged {
                state: state.into(),
                previous_state: None,
            }),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arriving_late_repeated_and_out_of_order_end_in_the_latest_row() {
    let app = spawn_app().await;
    let b = Booking::new("alice", 101, 10);
    let history = [
        b.created(),
        b.saga(1, "STARTED"),
        b.requested(),
        b.saga(3, "AWAITING_APPROVAL"),
        b.denied(),
        b.saga(5, "COMPENSATING"),
        b.cancelled(CancelReason::Denied),
        b.closed(3, "DENIED"),
        b.saga(9, "COMPENSATED"),
    ];
    // Newest first, and every other event delivered twice.
    for (i, env) in history.iter().rev().enumerate() {
        app.publish(env).await;
        if i % 2 == 0 {
            app.publish_as(env, Some(1)).await;
        }
    }
    app.wait_caught_up().await;
    let row = app.row(b.id).await.expect("the row exists");
    assert_eq!(
        row,
        json!({
            "bookingId": b.id,
            "sagaId": b.id,
            "roomId": 101,
            "bookingUserId": "alice",
            "useStartDtm": "2026-09-10T09:00:00.000Z",
            "useEndDtm": "2026-09-10T10:00:00.000Z",
            "bookingStatus": "CANCELLED",
            "bookingDtm": "2026-09-01T08:00:00.000Z",
            "cancelReason": "DENIED",
            "cancelDetail": null,
            "confirmId": b.confirm,
            "confirmStatus": "DENIED",
            "approvalDeadline": "2026-09-10T08:00:00.000Z",
            "confirmUserId": "admin",
            "confirmDtm": "2026-09-01T08:02:00.000Z",
            "denyReason": "room under repair",
            "confirmClosed": true,
            "confirmCloseReason": "DENIED",
            "sagaState": "COMPENSATED",
            "updatedAt": "2026-09-01T08:09:00.000Z",
            "versions": {"booking": 2, "confirm": 3, "saga": 9},
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_started_by_a_later_event_is_completed_when_booking_created_arrives() {
    let app = spawn_app().await;
    let b = Booking::new("alice", 102, 11);
    app.publish(&b.confirmed()).await;
    let partial = app
        .wait_row(b.id, "the partial row", |r| {
            r["bookingStatus"] == "CONFIRMED"
        })
        .await;
    assert!(partial["roomId"].is_null());
    assert!(partial["bookingUserId"].is_null());
    // Nobody owns it yet, so only admins see it.
    let (status, _) = app
        .get(&format!("/bookingLists/{}", b.id), Caller::User("alice"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    app.publish(&b.created()).await;
    let full = app
        .wait_row(b.id, "the row to be completed", |r| r["roomId"] == 102)
        .await;
    assert_eq!(full["bookingUserId"], "alice");
    assert_eq!(full["bookingStatus"], "CONFIRMED", "the late v1 is stale");
    assert_eq!(full["bookingDtm"], "2026-09-01T08:00:00.000Z");
    let (status, mine) = app
        .get(&format!("/bookingLists/{}", b.id), Caller::User("alice"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mine, full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_their_own_rows_and_admins_see_all() {
    let app = spawn_app().await;
    let alices = Booking::new("alice", 101, 12);
    let bobs = Booking::new("bob", 101, 13);
    app.publish(&alices.created()).await;
    app.publish(&bobs.created()).await;
    app.wait_caught_up().await;

    let (status, list) = app.get("/bookingLists", Caller::User("alice")).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["bookingId"], json!(alices.id));
    assert_eq!(list["page"], 1);
    assert_eq!(list["size"], 20);
    assert_eq!(list["totalPages"], 1);
    assert_eq!(list["sort"], "-bookingDtm");

    let (status, _) = app
        .get("/bookingLists?bookingUserId=bob", Caller::User("alice"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app
        .get("/bookingLists?bookingUserId=alice", Caller::User("alice"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .get(&format!("/bookingLists/{}", bobs.id), Caller::User("alice"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get("/bookingLists/not-a-uuid", Caller::Admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, all) = app.get("/bookingLists", Caller::Admin).await;
    assert_eq!(all["total"], 2);
    let (_, bobs_only) = app
        .get("/bookingLists?bookingUserId=bob", Caller::Admin)
        .await;
    assert_eq!(bobs_only["items"][0]["bookingId"], json!(bobs.id));

    let (status, _) = app.get("/bookingLists", Caller::Nobody).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_and_paging_are_refused_with_the_allowed_values() {
    let app = spawn_app().await;
    let (status, body) = app
        .get("/bookingLists?bookingStatus=DONE", Caller::Admin)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["parameter"], "bookingStatus");
    assert_eq!(body["allowed"], json!(["BOOKED", "CONFIRMED", "CANCELLED"]));
    assert_eq!(body["type"], "/problems/bad-request");

    let (status, body) = app
        .get(
            "/bookingLists?confirmStatus=APPROVED",
            Caller::User("alice"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["allowed"], json!(["BOOKED", "CONFIRMED", "DENIED"]));

    let (status, body) = app.get("/bookingLists?sort=price", Caller::Admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["allowed"]
        .as_array()
        .unwrap()
        .contains(&json!("-useStartDtm")));

    for (query, parameter) in [
        ("size=0", "size"),
        ("size=1000", "size"),
        ("page=0", "page"),
        ("page=first", "page"),
        ("roomId=big", "roomId"),
        ("from=yesterday", "from"),
        ("status=BOOKED", "status"),
    ] {
        let (status, body) = app
            .get(&format!("/bookingLists?{query}"), Caller::Admin)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["parameter"], parameter, "{query}: {body}");
        assert!(!body["allowed"].is_null(), "{query}: {body}");
    }

    let (status, body) = app
        .get("/bookingLists/stream?confirmStatus=BOOKED", Caller::Admin)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["allowed"],
        json!(["bookingUserId", "roomId", "sagaState"])
    );
    let (status, body) = app
        .get("/bookingLists/stream?sagaState=DONE", Caller::Admin)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["parameter"], "sagaState");
    assert!(body["allowed"]
        .as_array()
        .unwrap()
        .contains(&json!("AWAITING_APPROVAL")));

    let (status, _) = app
        .call(Method::POST, "/bookingLists/rebuild", Caller::User("alice"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_unreadable_events_are_skipped_and_the_list_goes_on() {
    let app = spawn_app().await;
    let b = Booking::new("alice", 103, 14);
    let unknown = json!({
        "messageId": Uuid::new_v4(), "bookingId": b.id, "sagaId": b.id,
        "occurredAt": "2026-09-01T08:00:00.000Z", "version": 7, "correlationId": b.id,
        "type": "BookingTeleported", "payload": {"to": "Mars"},
    });
    app.publish_raw(
        format!("roombook.events.booking.{}.BookingTeleported", b.id),
        &unknown.to_string(),
    )
    .await;
    app.publish_raw(
        format!("roombook.events.booking.{}.Garbage", b.id),
        "not json",
    )
    .await;
    app.publish(&b.created()).await;

    let row = app
        .wait_row(b.id, "the event after the unknown ones", |r| {
            r["bookingStatus"] == "BOOKED"
        })
        .await;
    assert_eq!(row["versions"]["booking"], 1);
    let lag = app.wait_caught_up().await;
    let streams = lag["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 2, "{lag}");
    assert_eq!(streams[0]["stream"], "ROOMBOOK_EVENTS");
    assert_eq!(streams[0]["consumer"], "bookinglist");
    assert_eq!(streams[0]["streamLastSequence"], 3);
    assert_eq!(streams[1]["stream"], "ROOMBOOK_SAGA_EVENTS");
    assert_eq!(streams[1]["consumer"], "bookinglist-saga");
    // The same figures as Prometheus gauges (their values are process-wide, and this test
    // process runs several services at once, so only their presence is checked).
    eventually("the lag gauges", WAIT, || async {
        let text = app
            .http
            .get(format!("{}/metrics", app.url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (text.contains("roombook_bookinglist_pending_events")
            && text.contains("roombook_bookinglist_applied_sequence")
            && text.contains("roombook_bookinglist_stream_last_sequence"))
        .then_some(())
    })
    .await;
}

/// A Server-Sent Events client reading one event at a time.
struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

#[derive(Debug)]
struct SseEvent {
    event: String,
    id: String,
    data: Value,
}

impl SseClient {
    async fn open(app: &App, path: &str, caller: Caller<'_>, last_id: Option<&str>) -> Self {
        let mut req = app.request(Method::GET, path, caller);
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseClient {
            response,
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim_start().to_string())
                };
                // Frames with only comments are keep-alives.
                if let Some(data) = field("data:") {
                    return SseEvent {
                        event: field("event:").unwrap_or_default(),
                        id: field("id:").unwrap_or_default(),
                        data: serde_json::from_str(&data).unwrap(),
                    };
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("an event within the wait")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_sends_the_callers_changed_rows_and_resumes_after_the_last_event_id() {
    let app = spawn_app().await;
    let mut feed = SseClient::open(
        &app,
        "/bookingLists/stream?roomId=101",
        Caller::User("alice"),
        None,
    )
    .await;
    let ready = feed.next().await;
    assert_eq!(ready.event, "ready");

    let bobs = Booking::new("bob", 101, 15);
    let other_room = Booking::new("alice", 102, 15);
    let mine = Booking::new("alice", 101, 16);
    app.publish(&bobs.created()).await;
    app.publish(&other_room.created()).await;
    app.publish(&mine.created()).await;

    let change = feed.next().await;
    assert_eq!(change.event, "bookingList");
    assert_eq!(change.data["bookingId"], json!(mine.id), "{change:?}");
    assert_eq!(change.data["bookingStatus"], "BOOKED");
    drop(feed);

    // While disconnected, the booking is confirmed; a reconnect names the last event it saw.
    app.publish(&mine.confirmed()).await;
    app.wait_row(mine.id, "the confirmation", |r| {
        r["bookingStatus"] == "CONFIRMED"
    })
    .await;
    let mut feed = SseClient::open(
        &app,
        "/bookingLists/stream?roomId=101",
        Caller::User("alice"),
        Some(&change.id),
    )
    .await;
    assert_eq!(feed.next().await.event, "ready");
    let missed = feed.next().await;
    assert_eq!(missed.data["bookingId"], json!(mine.id));
    assert_eq!(missed.data["bookingStatus"], "CONFIRMED");
    assert!(missed.id.parse::<i64>().unwrap() > change.id.parse::<i64>().unwrap());

    // An admin's unfiltered feed sees everyone's changes.
    let mut admin = SseClient::open(&app, "/bookingLists/stream", Caller::Admin, None).await;
    assert_eq!(admin.next().await.event, "ready");
    app.publish(&bobs.cancelled(CancelReason::UserCancelled))
        .await;
    // (The confirmation above may still be on its way to this new connection.)
    let change = loop {
        let change = admin.next().await;
        if change.data["bookingId"] == json!(bobs.id) {
            break change;
        }
    };
    assert_eq!(change.data["bookingUserId"], "bob");
    assert_eq!(change.data["cancelReason"], "USER_CANCELLED");

    let (status, _) = app
        .get(
            "/bookingLists/stream?bookingUserId=bob",
            Caller::User("alice"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_by_saga_state_sends_rows_only_while_their_saga_is_in_those_states() {
    let app = spawn_app().await;
    let mut feed = SseClient::open(
        &app,
        "/bookingLists/stream?sagaState=AWAITING_APPROVAL,COMPLETED",
        Caller::Admin,
        None,
    )
    .await;
    assert_eq!(feed.next().await.event, "ready");

    // Rows are sent in change order, so a row sent against the filter would come first.
    let starting = Booking::new("bob", 101, 9);
    let waiting = Booking::new("alice", 102, 9);
    app.publish(&starting.created()).await;
    app.publish(&starting.saga(1, "STARTED")).await;
    app.wait_row(starting.id, "the saga to start", |r| {
        r["sagaState"] == "STARTED"
    })
    .await;
    app.publish(&waiting.created()).await;
    app.publish(&waiting.saga(2, "AWAITING_APPROVAL")).await;
    let first = feed.next().await;
    assert_eq!(first.data["bookingId"], json!(waiting.id), "{first:?}");
    assert_eq!(first.data["sagaState"], "AWAITING_APPROVAL");

    // A row that changes while its saga stays in a chosen state is sent again (the booking's
    // own event may land after the saga's, and be sent on its own too).
    app.publish(&waiting.requested()).await;
    loop {
        let change = feed.next().await;
        assert_eq!(change.data["bookingId"], json!(waiting.id), "{change:?}");
        assert_eq!(change.data["sagaState"], "AWAITING_APPROVAL");
        if change.data["confirmId"].is_string() {
            break;
        }
    }

    // Leaving the chosen states is not sent; reaching one again is.
    app.publish(&waiting.saga(3, "CONFIRMING")).await;
    app.wait_row(waiting.id, "the approval", |r| {
        r["sagaState"] == "CONFIRMING"
    })
    .await;
    app.publish(&starting.saga(4, "COMPLETED")).await;
    let settled = feed.next().await;
    assert_eq!(settled.data["bookingId"], json!(starting.id), "{settled:?}");
    assert_eq!(settled.data["sagaState"], "COMPLETED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_replays_the_stream_into_the_same_rows_and_swaps_them_in() {
    let app = spawn_app().await;
    let (status, never) = app.get("/bookingLists/rebuild", Caller::Admin).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(never["state"], "NEVER");
    assert_eq!(never["generation"], 1);

    let denied = Booking::new("alice", 101, 17);
    let approved = Booking::new("bob", 102, 18);
    for env in [
        denied.created(),
        denied.requested(),
        denied.denied(),
        denied.cancelled(CancelReason::Denied),
        denied.closed(3, "DENIED"),
        approved.confirmed(),
        approved.created(),
        approved.saga(4, "COMPLETED"),
    ] {
        app.publish(&env).await;
    }
    app.publish_raw(
        format!("roombook.events.saga.{}.Unknown", approved.id),
        "{}",
    )
    .await;
    app.wait_caught_up().await;
    let live = app.all_rows().await;
    assert_eq!(live.len(), 2);
    let mut feed = SseClient::open(&app, "/bookingLists/stream", Caller::Admin, None).await;
    assert_eq!(feed.next().await.event, "ready");

    let (status, started) = app
        .call(Method::POST, "/bookingLists/rebuild", Caller::Admin)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["state"], "RUNNING");
    let done = eventually("the rebuild to finish", WAIT, || async {
        let (_, s) = app.get("/bookingLists/rebuild", Caller::Admin).await;
        (s["state"] != "RUNNING").then_some(s)
    })
    .await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["generation"], 2);
    // Seven events in the participants' stream, two in the saga's.
    assert_eq!(done["targetSequence"], 9);
    assert_eq!(done["replayedSequence"], 9);
    assert_eq!(done["events"], 8, "the unknown message is skipped");
    assert_eq!(app.all_rows().await, live);

    // The live feed follows the swap: a booking made after it is in the new table only.
    let later = Booking::new("carol", 103, 19);
    app.publish(&later.created()).await;
    let change = tokio::time::timeout(WAIT, async {
        loop {
            let change = feed.next().await;
            if change.data["bookingId"] == json!(later.id) {
                break change;
            }
        }
    })
    .await
    .expect("the feed sends the booking made after the swap");
    assert_eq!(change.data["bookingStatus"], "BOOKED");
    let live = app.all_rows().await;

    // And again, into the first table, emptied first.
    let (status, _) = app
        .call(Method::POST, "/bookingLists/rebuild", Caller::Admin)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    eventually("the second rebuild to finish", WAIT, || async {
        let (_, s) = app.get("/bookingLists/rebuild", Caller::Admin).await;
        (s["state"] == "SUCCEEDED" && s["generation"] == 3).then_some(())
    })
    .await;
    assert_eq!(app.all_rows().await, live);
    let (_, lag) = app.get("/bookingLists/lag", Caller::Nobody).await;
    assert_eq!(lag["generation"], 3);
    assert_eq!(lag["rebuilding"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_service_ends_open_feeds_and_stops_cleanly() {
    let app = spawn_app().await;
    let mut feed = SseClient::open(&app, "/bookingLists/stream", Caller::Admin, None).await;
    assert_eq!(feed.next().await.event, "ready");

    let App {
        svc, _nats, _dbs, ..
    } = app;
    svc.stop();
    tokio::time::timeout(WAIT, svc.wait())
        .await
        .expect("the service stops although a feed is open")
        .expect("it stops cleanly");
    let end = tokio::time::timeout(WAIT, feed.response.chunk())
        .await
        .expect("the feed ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
}
