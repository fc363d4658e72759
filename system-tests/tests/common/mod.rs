//! A whole saga stack for a test: a real nats-server, and booking, confirm and orchestrator
//! in-process on port 0, each with its own fresh database (SQLite files or PostgreSQL databases).

#![allow(dead_code)] // each test binary uses its own subset

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use chrono::{DateTime, Duration as Span, Utc};
use platform::{
    clock::ManualClock,
    config::ServiceConfig,
    http::{USER_EMAIL_HEADER, USER_ID_HEADER, USER_ROLES_HEADER},
    runtime::RunningService,
    testkit::{eventually, NatsServer, TestBackend, TestDatabases},
    topology,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Stack {
    /// The time the confirm service and the orchestrator see (deadlines); starts at now.
    pub clock: ManualClock,
    pub nats: NatsServer,
    pub dbs: TestDatabases,
    pub booking: Option<RunningService>,
    pub confirm: Option<RunningService>,
    pub orchestrator: Option<RunningService>,
    pub booking_db: String,
    pub confirm_db: String,
    pub orchestrator_db: String,
    pub http: reqwest::Client,
    pub booking_url: String,
    pub confirm_url: String,
    pub orchestrator_url: String,
}

/// Who is calling: the identity headers the gateway would set.
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    User(&'a str),
    Admin,
}

impl Stack {
    pub async fn start(backend: TestBackend) -> Stack {
        platform::telemetry::init_for_tests();
        let nats = NatsServer::start();
        let dbs = TestDatabases::new(backend);
        let booking_db = dbs.create("booking").await;
        let confirm_db = dbs.create("confirm").await;
        let orchestrator_db = dbs.create("orchestrator").await;
        let mut stack = Stack {
            clock: ManualClock::starting_at(platform::time::now()),
            nats,
            dbs,
            booking: None,
            confirm: None,
            orchestrator: None,
            booking_db,
            confirm_db,
            orchestrator_db,
            http: reqwest::Client::new(),
            booking_url: String::new(),
            confirm_url: String::new(),
            orchestrator_url: String::new(),
        };
        stack.start_booking().await;
        stack.start_confirm().await;
        stack.start_orchestrator().await;
        stack
    }

    fn config(&self, db: &str) -> ServiceConfig {
        ServiceConfig::for_test(&self.nats.url(), db)
    }

    /// Settings for another service joining this stack, with a fresh database of its own.
    pub async fn service_config(&self, service: &str) -> ServiceConfig {
        let db = self.dbs.create(service).await;
        self.config(&db)
    }

    pub async fn start_booking(&mut self) {
        let config = booking::Config {
            service: self.config(&self.booking_db),
            sample_rooms: true,
        };
        let svc = booking::spawn(config, CancellationToken::new())
            .await
            .expect("booking starts");
        self.booking_url = format!("http://{}", svc.addr);
        self.booking = Some(svc);
    }

    pub async fn start_confirm(&mut self) {
        let config = confirm::Config {
            service: self.config(&self.confirm_db),
            clock: Arc::new(self.clock.clone()),
        };
        let svc = confirm::spawn(config, CancellationToken::new())
            .await
            .expect("confirm starts");
        self.confirm_url = format!("http://{}", svc.addr);
        self.confirm = Some(svc);
    }

    pub async fn start_orchestrator(&mut self) {
        let config = orchestrator::Config {
            timer_interval: Duration::from_millis(20),
            clock: Arc::new(self.clock.clone()),
            ..orchestrator::Config::new(self.config(&self.orchestrator_db))
        };
        let svc = orchestrator::spawn(config, CancellationToken::new())
            .await
            .expect("orchestrator starts");
        self.orchestrator_url = format!("http://{}", svc.addr);
        self.orchestrator = Some(svc);
    }

    /// Stops a service cleanly and waits until it has.
    pub async fn stop(svc: &mut Option<RunningService>) {
        if let Some(s) = svc.take() {
            s.stop();
            s.wait().await.expect("service stops cleanly");
        }
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(
            async_nats::connect(self.nats.url())
                .await
                .expect("connect to nats"),
        )
    }

    /// A subscription to everything published on the bus (commands included, which leave the
    /// work queue), known to be in place: a flush only hands the subscription to the socket, so
    /// a probe published after it is awaited first. The probe's subject is in no stream.
    pub async fn tap(&self) -> async_nats::Subscriber {
        use futures::StreamExt as _;
        let client = async_nats::connect(self.nats.url())
            .await
            .expect("connect to nats");
        let mut tap = client.subscribe("roombook.>").await.expect("subscribe");
        let probe = format!("roombook.tap-probe.{}", uuid::Uuid::new_v4());
        client
            .publish(probe.clone(), "".into())
            .await
            .expect("publish the probe");
        tokio::time::timeout(WAIT, async {
            while let Some(msg) = tap.next().await {
                if msg.subject.as_str() == probe {
                    return;
                }
            }
            panic!("the tap ended before its probe arrived");
        })
        .await
        .expect("the tap's probe arrives");
        tap
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: String,
        caller: Caller<'_>,
    ) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, url);
        match caller {
            Caller::User(u) => builder
                .header(USER_ID_HEADER, u)
                .header(USER_EMAIL_HEADER, format!("{u}@example.com"))
                .header(USER_ROLES_HEADER, "user"),
            Caller::Admin => builder
                .header(USER_ID_HEADER, "admin")
                .header(USER_EMAIL_HEADER, "admin@example.com")
                .header(USER_ROLES_HEADER, "user,admin"),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        caller: Caller<'_>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.request(method, url, caller);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body read");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn create_booking(
        &self,
        user: &str,
        room: i64,
        start: DateTime<Utc>,
        hours: i64,
    ) -> (StatusCode, Value) {
        let body = json!({
            "roomId": room,
            "useStartDtm": start.to_rfc3339(),
            "useEndDtm": (start + Span::hours(hours)).to_rfc3339(),
        });
        self.send(
            reqwest::Method::POST,
            format!("{}/bookings", self.booking_url),
            Caller::User(user),
            Some(body),
        )
        .await
    }

    /// Books and asserts 201; returns the booking id.
    pub async fn book(&self, user: &str, room: i64, start: DateTime<Utc>) -> String {
        let (status, body) = self.create_booking(user, room, start, 1).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["status"], "BOOKED");
        body["id"].as_str().expect("booking id").to_string()
    }

    pub async fn booking(&self, id: &str) -> Value {
        let (status, body) = self
            .send(
                reqwest::Method::GET,
                format!("{}/bookings/{id}", self.booking_url),
                Caller::Admin,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    pub async fn cancel(&self, user: &str, id: &str) -> (StatusCode, Value) {
        self.send(
            reqwest::Method::DELETE,
            format!("{}/bookings/{id}", self.booking_url),
            Caller::User(user),
            None,
        )
        .await
    }

    /// The booking's confirm, including a closed one (None if it does not exist yet).
    pub async fn confirm_of(&self, booking_id: &str) -> Option<Value> {
        let (status, body) = self
            .send(
                reqwest::Method::GET,
                format!(
                    "{}/confirms?bookingId={booking_id}&includeClosed=true",
                    self.confirm_url
                ),
                Caller::Admin,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().and_then(|a| a.first().cloned())
    }

    /// Waits for the booking's approval request to appear and returns its id.
    pub async fn wait_confirm(&self, booking_id: &str) -> String {
        eventually("the confirm to be requested", WAIT, || async {
            self.confirm_of(booking_id)
                .await
                .map(|c| c["id"].as_str().unwrap().to_string())
        })
        .await
    }

    pub async fn decide(
        &self,
        confirm_id: &str,
        status: &str,
        reason: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut body = json!({ "status": status });
        if let Some(r) = reason {
            body["reason"] = json!(r);
        }
        self.send(
            reqwest::Method::PATCH,
            format!("{}/confirms/{confirm_id}", self.confirm_url),
            Caller::Admin,
            Some(body),
        )
        .await
    }

    pub async fn saga(&self, booking_id: &str) -> Option<Value> {
        let (status, body) = self
            .send(
                reqwest::Method::GET,
                format!("{}/sagas/{booking_id}", self.orchestrator_url),
                Caller::Admin,
                None,
            )
            .await;
        (status == StatusCode::OK).then_some(body)
    }

    /// Waits until the saga reaches `state` and returns it.
    pub async fn wait_saga(&self, booking_id: &str, state: &str) -> Value {
        eventually(
            &format!("saga of {booking_id} to reach {state}"),
            WAIT,
            || async { self.saga(booking_id).await.filter(|s| s["state"] == state) },
        )
        .await
    }

    /// Books, waits for the approval request and approves; returns (booking id, confirm id).
    pub async fn book_and_approve(
        &self,
        user: &str,
        room: i64,
        start: DateTime<Utc>,
    ) -> (String, String) {
        let id = self.book(user, room, start).await;
        let confirm = self.wait_confirm(&id).await;
        let (status, body) = self.decide(&confirm, "CONFIRMED", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        self.wait_saga(&id, "COMPLETED").await;
        (id, confirm)
    }

    /// Waits until every consumer has nothing pending or unacknowledged and the outboxes are
    /// empty: all work caused so far has been done.
    pub async fn wait_quiet(&self) {
        let js = self.jetstream().await;
        eventually("all consumers to be idle", WAIT, || {
            let js = js.clone();
            async move {
                for spec in [
                    topology::ConsumerSpec::orchestrator(),
                    topology::ConsumerSpec::booking_commands(),
                    topology::ConsumerSpec::confirm_commands(),
                ] {
                    let mut consumer: jetstream::consumer::PullConsumer = js
                        .get_consumer_from_stream(spec.durable, spec.stream)
                        .await
                        .ok()?;
                    let info = consumer.info().await.ok()?;
                    if info.num_pending > 0 || info.num_ack_pending > 0 {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await;
    }
}

/// A start time `days` from now at `hour`:00 UTC, so tests never book in the past.
pub fn future(days: i64, hour: u32) -> DateTime<Utc> {
    (Utc::now() + Span::days(days))
        .date_naive()
        .and_hms_opt(hour, 0, 0)
        .expect("valid hour")
        .and_utc()
}

/// Generates a SQLite and a PostgreSQL test for each scenario.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(platform::testkit::TestBackend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(platform::testkit::TestBackend::Postgres).await;
                }
            )*
        }
    };
}

/// Waits until the saga is settled (COMPLETED, COMPENSATED or CANCELLED) and returns it.
pub async fn eventually_settled(stack: &Stack, booking_id: &str) -> Value {
    eventually(&format!("saga of {booking_id} to settle"), WAIT, || async {
        stack
            .saga(booking_id)
            .await
            .filter(|s| s["settled"] == true)
    })
    .await
}
