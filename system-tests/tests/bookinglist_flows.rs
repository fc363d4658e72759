//! The booking list following real sagas, on SQLite and on PostgreSQL: each flow (approve, deny,
//! user cancel, expiry) shows the right row through the gateway; a saga held up at its start
//! shows there once its reply is overdue; the list stopped during 100
//! sagas catches up after a restart and agrees with booking, confirm and the orchestrator; a
//! rebuild yields the same rows as the live view; the live feed delivers changes.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{eventually_settled, future, Stack, WAIT};
use gateway::{JwtConfig, Service};
use platform::{
    http::{USER_ID_HEADER, USER_ROLES_HEADER},
    runtime::RunningService,
    testkit::{eventually, TestBackend},
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "a-bookinglist-test-secret-of-32-bytes-or-more";

/// The saga stack plus the booking list and a gateway in front of everything.
struct ListStack {
    stack: Stack,
    list: Option<RunningService>,
    /// Kept so that a restart comes back on the same address, where the gateway expects it.
    list_config: bookinglist::Config,
    list_url: String,
    _gateway: RunningService,
    gateway_url: String,
}

/// Who calls through the gateway (a bearer token) or straight to the list (identity headers).
#[derive(Clone, Copy)]
enum Who<'a> {
    User(&'a str),
    Admin,
}

impl ListStack {
    async fn start(backend: TestBackend) -> ListStack {
        let stack = Stack::start(backend).await;
        let mut list_config =
            bookinglist::Config::with_service(stack.service_config("bookinglist").await);
        list_config.feed_poll = Duration::from_millis(50);
        let list = bookinglist::spawn(list_config.clone(), CancellationToken::new())
            .await
            .expect("bookinglist starts");
        list_config.service.http_addr = list.addr;
        let list_url = format!("http://{}", list.addr);
        let gateway_config = gateway::Config::for_test(SECRET)
            .with_upstream(Service::Booking, &stack.booking_url)
            .with_upstream(Service::Confirm, &stack.confirm_url)
            .with_upstream(Service::Orchestrator, &stack.orchestrator_url)
            .with_upstream(Service::BookingList, &list_url);
        let gateway = gateway::spawn(gateway_config, CancellationToken::new())
            .await
            .expect("gateway starts");
        ListStack {
            stack,
            list: Some(list),
            list_config,
            list_url,
            gateway_url: format!("http://{}", gateway.addr),
            _gateway: gateway,
        }
    }

    async fn stop_list(&mut self) {
        Stack::stop(&mut self.list).await;
    }

    async fn start_list(&mut self) {
        let list = bookinglist::spawn(self.list_config.clone(), CancellationToken::new())
            .await
            .expect("bookinglist restarts");
        assert_eq!(format!("http://{}", list.addr), self.list_url);
        self.list = Some(list);
    }

    fn token(who: Who<'_>) -> String {
        let (user, roles): (&str, &[&str]) = match who {
            Who::User(u) => (u, &["user"]),
            Who::Admin => ("admin", &["user", "admin"]),
        };
        gateway::mint_token(
            SECRET,
            JwtConfig::DEFAULT_ISSUER,
            JwtConfig::DEFAULT_AUDIENCE,
            user,
            Some(&format!("{user}@example.com")),
            roles,
            Duration::from_secs(3600),
        )
    }

    /// A call through the gateway; None if it could not be made (a service restarting).
    async fn via_gateway(
        &self,
        method: Method,
        path: &str,
        who: Who<'_>,
    ) -> Option<(StatusCode, Value)> {
        let resp = self
            .stack
            .http
            .request(method, format!("{}{path}", self.gateway_url))
            .bearer_auth(Self::token(who))
            .send()
            .await
            .ok()?;
        let status = resp.status();
        Some((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn get(&self, path: &str, who: Who<'_>) -> (StatusCode, Value) {
        self.via_gateway(Method::GET, path, who)
            .await
            .expect("the gateway answers")
    }

    /// The booking's row as `who` sees it through the gateway.
    async fn row(&self, booking_id: &str, who: Who<'_>) -> Option<Value> {
        self.via_gateway(Method::GET, &format!("/bookingLists/{booking_id}"), who)
            .await
            .filter(|(status, _)| *status == StatusCode::OK)
            .map(|(_, row)| row)
    }

    async fn wait_row(&self, booking_id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        eventually(what, WAIT, || async {
            self.row(booking_id, Who::Admin).await.filter(|r| pred(r))
        })
        .await
    }

    /// Waits until the list has applied every event in the stream (asking it directly).
    async fn wait_list_caught_up(&self) {
        eventually("the booking list to catch up", WAIT, || async {
            let lag: Value = self
                .stack
                .http
                .get(format!("{}/bookingLists/lag", self.list_url))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (lag["pending"] == 0 && lag["caughtUp"] == true).then_some(())
        })
        .await;
    }

    /// Every row, as an admin sees them through the gateway.
    async fn all_rows(&self) -> Vec<Value> {
        let (status, body) = self
            .get("/bookingLists?size=200&sort=useStartDtm", Who::Admin)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["total"].as_i64().unwrap() <= 200, "one page holds all");
        body["items"].as_array().unwrap().clone()
    }
}

async fn approve_shows_the_booking_and_its_approval_confirmed_in_the_list(backend: TestBackend) {
    let s = ListStack::start(backend).await;
    let (id, confirm_id) = s.stack.book_and_approve("alice", 101, future(3, 9)).await;

    let row = s
        // The saga's events and the participants' arrive by two consumers: wait for both.
        .wait_row(&id, "the approved row", |r| {
            r["sagaState"] == "COMPLETED" && r["bookingStatus"] == "CONFIRMED"
        })
        .await;
    assert_eq!(row["bookingStatus"], "CONFIRMED");
    assert_eq!(row["confirmStatus"], "CONFIRMED");
    assert_eq!(row["confirmId"], json!(confirm_id));
    assert_eq!(row["confirmUserId"], "admin");
    assert!(row["confirmDtm"].is_string());
    assert_eq!(row["confirmClosed"], false);
    assert!(row["cancelReason"].is_null());
    assert_eq!(row["roomId"], 101);
    assert_eq!(row["bookingUserId"], "alice");
    assert_eq!(
        row["useStartDtm"],
        json!(platform::time::format_utc(future(3, 9)))
    );

    // The owner sees it, in her list too; another user does not.
    assert_eq!(s.row(&id, Who::User("alice")).await, Some(row.clone()));
    assert_eq!(s.row(&id, Who::User("bob")).await, None);
    let (status, mine) = s
        .get("/bookingLists?confirmStatus=CONFIRMED", Who::User("alice"))
        .await;
    assert_eq!(status, StatusCode::OK, "{mine}");
    assert_eq!(mine["total"], 1);
    assert_eq!(mine["items"][0]["bookingId"], json!(id));
    let (_, bobs) = s.get("/bookingLists", Who::User("bob")).await;
    assert_eq!(bobs["total"], 0);
}

async fn deny_shows_the_booking_cancelled_with_the_denial_and_its_reason(backend: TestBackend) {
    let s = ListStack::start(backend).await;
    let id = s.stack.book("alice", 102, future(4, 10)).await;
    let confirm_id = s.stack.wait_confirm(&id).await;
    let (status, body) = s
        .stack
        .decide(&confirm_id, "DENIED", Some("room under repair"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let row = s
        .wait_row(&id, "the denied row", |r| {
            r["sagaState"] == "COMPENSATED" && r["confirmClosed"] == true
        })
        .await;
    assert_eq!(row["bookingStatus"], "CANCELLED");
    assert_eq!(row["cancelReason"], "DENIED");
    assert_eq!(row["confirmStatus"], "DENIED");
    assert_eq!(row["denyReason"], "room under repair");
    assert_eq!(row["confirmUserId"], "admin");
    assert_eq!(row["confirmClosed"], true);

    let (_, denied) = s
        .get(
            "/bookingLists?bookingStatus=CANCELLED&confirmStatus=DENIED",
            Who::User("alice"),
        )
        .await;
    assert_eq!(denied["items"][0]["bookingId"], json!(id));
}

async fn user_cancel_shows_the_booking_cancelled_by_its_owner_and_the_confirm_closed(
    backend: TestBackend,
) {
    let s = ListStack::start(backend).await;
    let id = s.stack.book("alice", 103, future(5, 11)).await;
    s.stack.wait_confirm(&id).await;
    let (status, body) = s.stack.cancel("alice", &id).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let row = s
        .wait_row(&id, "the cancelled row", |r| {
            r["sagaState"] == "CANCELLED" && r["confirmClosed"] == true
        })
        .await;
    assert_eq!(row["bookingStatus"], "CANCELLED");
    assert_eq!(row["cancelReason"], "USER_CANCELLED");
    assert_eq!(row["confirmStatus"], "BOOKED", "never decided");
    assert_eq!(row["confirmClosed"], true);
    assert!(row["confirmUserId"].is_null());
}

async fn expiry_shows_the_booking_cancelled_as_expired_and_the_confirm_closed(
    backend: TestBackend,
) {
    let s = ListStack::start(backend).await;
    let id = s.stack.book("alice", 201, future(3, 9)).await;
    s.stack.wait_confirm(&id).await;
    let waiting = s
        .wait_row(&id, "the row awaiting approval", |r| {
            r["sagaState"] == "AWAITING_APPROVAL" && r["approvalDeadline"].is_string()
        })
        .await;
    let deadline: DateTime<Utc> = waiting["approvalDeadline"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    s.stack.clock.set(deadline);
    let row = s
        .wait_row(&id, "the expired row", |r| {
            r["sagaState"] == "COMPENSATED" && r["confirmClosed"] == true
        })
        .await;
    assert_eq!(row["bookingStatus"], "CANCELLED");
    assert_eq!(row["cancelReason"], "EXPIRED");
    assert_eq!(row["confirmStatus"], "BOOKED", "never decided");
    assert_eq!(row["confirmClosed"], true);
    assert_eq!(row["confirmCloseReason"], "EXPIRED");
}

async fn a_saga_held_up_at_its_start_shows_in_the_list_once_its_reply_is_overdue(
    backend: TestBackend,
) {
    let mut s = ListStack::start(backend).await;
    // The confirm service is down: the saga waits in STARTED for the approval request to open.
    Stack::stop(&mut s.stack.confirm).await;
    let id = s.stack.book("alice", 102, future(3, 10)).await;
    let saga = s.stack.wait_saga(&id, "STARTED").await;
    let announced = |saga: &Value| -> Vec<String> {
        let steps = saga["timeline"].as_array().unwrap();
        let sent = steps
            .iter()
            .filter(|t| t["direction"] == "out" && t["type"] == "SagaStateChanged");
        sent.map(|t| t["state"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        announced(&saga).is_empty(),
        "the start is not announced at once: {saga}"
    );
    let row = s
        .wait_row(&id, "the booked row", |r| r["bookingStatus"] == "BOOKED")
        .await;
    assert!(row["sagaState"].is_null(), "{row}");

    // The reply is overdue: the retry announces where the saga is held up.
    s.stack.clock.advance(chrono::Duration::minutes(1));
    s.wait_row(&id, "the row held up in STARTED", |r| {
        r["sagaState"] == "STARTED"
    })
    .await;
    s.stack.start_confirm().await;
    s.wait_row(&id, "the row awaiting approval", |r| {
        r["sagaState"] == "AWAITING_APPROVAL"
    })
    .await;
    let saga = s.stack.saga(&id).await.expect("a saga");
    assert_eq!(announced(&saga), ["STARTED", "AWAITING_APPROVAL"], "{saga}");
}

async fn the_list_stopped_during_100_sagas_catches_up_and_agrees_with_every_service(
    backend: TestBackend,
) {
    let mut s = ListStack::start(backend).await;
    s.stop_list().await;

    let mut ids = Vec::new();
    for i in 0..100i64 {
        let start = future(2 + i / 10, 8 + u32::try_from(i % 10).unwrap());
        ids.push(s.stack.book(&format!("user{}", i % 7), 101, start).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let confirm_id = s.stack.wait_confirm(id).await;
        match i % 3 {
            0 => {
                let (status, body) = s.stack.decide(&confirm_id, "CONFIRMED", None).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
            1 => {
                let (status, body) = s.stack.decide(&confirm_id, "DENIED", Some("no")).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
            _ => {
                let (status, body) = s.stack.cancel(&format!("user{}", i % 7), id).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        }
    }
    for id in &ids {
        eventually_settled(&s.stack, id).await;
    }
    s.stack.wait_quiet().await;

    s.start_list().await;
    s.wait_list_caught_up().await;
    let rows = s.all_rows().await;
    assert_eq!(rows.len(), 100);
    for (i, id) in ids.iter().enumerate() {
        let row = rows
            .iter()
            .find(|r| r["bookingId"] == json!(id))
            .unwrap_or_else(|| panic!("no row for {id}"));
        let booking = s.stack.booking(id).await;
        let confirm = s.stack.confirm_of(id).await.expect("a confirm");
        let saga = s.stack.saga(id).await.expect("a saga");
        assert_eq!(row["bookingStatus"], booking["status"], "{row}");
        assert_eq!(row["cancelReason"], booking["cancelReason"], "{row}");
        assert_eq!(row["confirmStatus"], confirm["status"], "{row}");
        assert_eq!(row["confirmClosed"], confirm["closed"], "{row}");
        assert_eq!(row["sagaState"], saga["state"], "{row}");
        assert_eq!(row["bookingUserId"], format!("user{}", i % 7));
        let expected = ["COMPLETED", "COMPENSATED", "CANCELLED"][i % 3];
        assert_eq!(row["sagaState"], expected, "{row}");
    }
}

async fn a_rebuild_yields_the_same_rows_as_the_live_view(backend: TestBackend) {
    let s = ListStack::start(backend).await;
    let (approved, _) = s.stack.book_and_approve("alice", 101, future(3, 9)).await;
    let denied = s.stack.book("bob", 102, future(3, 9)).await;
    let confirm_id = s.stack.wait_confirm(&denied).await;
    s.stack.decide(&confirm_id, "DENIED", Some("full")).await;
    let cancelled = s.stack.book("carol", 103, future(3, 9)).await;
    s.stack.wait_confirm(&cancelled).await;
    s.stack.cancel("carol", &cancelled).await;
    let waiting = s.stack.book("dave", 201, future(3, 9)).await;
    for id in [&approved, &denied, &cancelled] {
        eventually_settled(&s.stack, id).await;
    }
    s.stack.wait_saga(&waiting, "AWAITING_APPROVAL").await;
    s.stack.wait_quiet().await;
    s.wait_list_caught_up().await;
    let live = s.all_rows().await;
    assert_eq!(live.len(), 4);

    let (status, _) = s
        .via_gateway(Method::POST, "/bookingLists/rebuild", Who::User("alice"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, started) = s
        .via_gateway(Method::POST, "/bookingLists/rebuild", Who::Admin)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let done = eventually("the rebuild to finish", WAIT, || async {
        let (_, status) = s.get("/bookingLists/rebuild", Who::Admin).await;
        (status["state"] != "RUNNING").then_some(status)
    })
    .await;
    assert_eq!(done["state"], "SUCCEEDED", "{done}");
    assert_eq!(done["generation"], 2);
    assert_eq!(s.all_rows().await, live);
}

/// Reads `bookingList` events off a Server-Sent Events response.
struct Feed {
    response: reqwest::Response,
    buffer: String,
}

impl Feed {
    async fn next_row(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                if frame.lines().any(|l| l == "event: bookingList") {
                    let data = frame
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .expect("an event has data");
                    return serde_json::from_str(data).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("a change within the wait")
                .unwrap()
                .expect("the feed stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

async fn the_live_feed_delivers_each_change_of_the_callers_booking(backend: TestBackend) {
    let s = ListStack::start(backend).await;
    // The feed is read from the service itself: the gateway answers with whole bodies.
    let response = s
        .stack
        .http
        .get(format!("{}/bookingLists/stream?roomId=101", s.list_url))
        .header(USER_ID_HEADER, "alice")
        .header(USER_ROLES_HEADER, "user")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut feed = Feed {
        response,
        buffer: String::new(),
    };

    let id = s.stack.book("alice", 101, future(6, 9)).await;
    let first = feed.next_row().await;
    assert_eq!(first["bookingId"], json!(id));
    assert_eq!(first["bookingUserId"], "alice");

    let confirm_id = s.stack.wait_confirm(&id).await;
    s.stack.decide(&confirm_id, "CONFIRMED", None).await;
    // Changes come in order until the saga completes and the booking shows it confirmed (the
    // saga's events and the participants' are applied by two consumers, either may be first).
    loop {
        let row = feed.next_row().await;
        assert_eq!(row["bookingId"], json!(id));
        if row["sagaState"] == "COMPLETED" && row["bookingStatus"] == "CONFIRMED" {
            assert_eq!(row["confirmStatus"], "CONFIRMED");
            break;
        }
    }
}

on_both_backends!(
    approve_shows_the_booking_and_its_approval_confirmed_in_the_list,
    deny_shows_the_booking_cancelled_with_the_denial_and_its_reason,
    user_cancel_shows_the_booking_cancelled_by_its_owner_and_the_confirm_closed,
    expiry_shows_the_booking_cancelled_as_expired_and_the_confirm_closed,
    a_saga_held_up_at_its_start_shows_in_the_list_once_its_reply_is_overdue,
    the_list_stopped_during_100_sagas_catches_up_and_agrees_with_every_service,
    a_rebuild_yields_the_same_rows_as_the_live_view,
    the_live_feed_delivers_each_change_of_the_callers_booking,
);
