//! The real system behind the gateway: a nats-server, and booking, confirm, orchestrator,
//! notification (mail written as files) and booking list in-process on port 0, each with its
//! own SQLite database.

use std::{net::SocketAddr, time::Duration};

use chrono::{DateTime, Duration as Span, Utc};
use platform::{
    config::ServiceConfig,
    runtime::RunningService,
    testkit::{eventually, NatsServer, TestBackend, TestDatabases},
};
use roombook_gateway::{Config, Service};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::{spawn_app, TestApp, SECRET};

pub const WAIT: Duration = Duration::from_secs(30);

pub struct Stack {
    pub gateway: TestApp,
    services: Vec<(Service, RunningService)>,
    confirm_db: String,
    nats: NatsServer,
    /// Holds the databases' (and the mail files') temporary folder while the stack lives.
    _dbs: TestDatabases,
}

impl Stack {
    /// Everything running; `adjust` may change the gateway's settings.
    pub async fn start(adjust: impl FnOnce(&mut Config)) -> Stack {
        platform::telemetry::init_for_tests();
        let nats = NatsServer::start();
        let dbs = TestDatabases::new(TestBackend::Sqlite);
        let service = |db: String| ServiceConfig::for_test(&nats.url(), &db);
        let confirm_db = dbs.create("confirm").await;
        let never = CancellationToken::new;
        let booking = booking::spawn(
            booking::Config {
                service: service(dbs.create("booking").await),
                sample_rooms: true,
            },
            never(),
        )
        .await
        .expect("booking starts");
        let confirm = spawn_confirm(service(confirm_db.clone())).await;
        let orchestrator = orchestrator::spawn(
            orchestrator::Config::new(service(dbs.create("orchestrator").await)),
            never(),
        )
        .await
        .expect("orchestrator starts");
        let notification = notification::spawn(
            notification::Config::for_test(
                service(dbs.create("notification").await),
                notification::MailTransport::Files(dbs.dir().join("mail")),
            ),
            never(),
        )
        .await
        .expect("notification starts");
        let bookinglist = bookinglist::spawn(
            bookinglist::Config::with_service(service(dbs.create("bookinglist").await)),
            never(),
        )
        .await
        .expect("bookinglist starts");
        let services = vec![
            (Service::Booking, booking),
            (Service::Confirm, confirm),
            (Service::Orchestrator, orchestrator),
            (Service::Notification, notification),
            (Service::BookingList, bookinglist),
        ];
        let mut config = Config::for_test(SECRET);
        for (name, svc) in &services {
            config = config.with_upstream(*name, &format!("http://{}", svc.addr));
        }
        adjust(&mut config);
        let gateway = spawn_app(config).await;
        Stack {
            gateway,
            services,
            confirm_db,
            nats,
            _dbs: dbs,
        }
    }

    fn confirm_addr(&self) -> SocketAddr {
        self.services
            .iter()
            .find(|(s, _)| *s == Service::Confirm)
            .map(|(_, svc)| svc.addr)
            .expect("confirm started")
    }

    /// Stops the confirm service and waits until it has (its port refuses connections).
    pub async fn stop_confirm(&mut self) -> SocketAddr {
        let addr = self.confirm_addr();
        let at = self
            .services
            .iter()
            .position(|(s, _)| *s == Service::Confirm)
            .unwrap();
        let (_, svc) = self.services.remove(at);
        svc.stop();
        svc.wait().await.expect("confirm stops cleanly");
        addr
    }

    /// Starts the confirm service again on `addr`, with its database as it was.
    pub async fn restart_confirm(&mut self, addr: SocketAddr) {
        let mut config = ServiceConfig::for_test(&self.nats.url(), &self.confirm_db);
        config.http_addr = addr;
        let svc = spawn_confirm(config).await;
        self.services.push((Service::Confirm, svc));
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let request = self.gateway.client.request(method, self.gateway.url(path));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends and returns the status and the body (JSON, or the text as a JSON string).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self.request(method, path, token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body read");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Books `room` for the token's user at `start` for an hour; returns the booking.
    pub async fn book(&self, token: &str, room: i64, start: DateTime<Utc>) -> Value {
        let body = json!({
            "roomId": room,
            "useStartDtm": start.to_rfc3339(),
            "useEndDtm": (start + Span::hours(1)).to_rfc3339(),
        });
        let (status, booking) = self
            .call(reqwest::Method::POST, "/bookings", Some(token), Some(&body))
            .await;
        assert_eq!(status, 201, "{booking}");
        booking
    }

    /// Waits for the booking's approval request (seen by an admin) and returns it.
    pub async fn wait_confirm(&self, admin: &str, booking_id: &str) -> Value {
        eventually("the approval request", WAIT, || async {
            let (status, list) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/confirms?bookingId={booking_id}"),
                    Some(admin),
                    None,
                )
                .await;
            // Not yet there, or the confirm service still being waited for.
            if status != 200 {
                return None;
            }
            list.as_array().and_then(|l| l.first().cloned())
        })
        .await
    }

    /// Waits until the booking's saga reaches `state`.
    pub async fn wait_saga(&self, admin: &str, booking_id: &str, state: &str) -> Value {
        eventually(&format!("the saga to reach {state}"), WAIT, || async {
            let (status, saga) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/sagas/{booking_id}"),
                    Some(admin),
                    None,
                )
                .await;
            (status == 200 && saga["state"] == state).then_some(saga)
        })
        .await
    }
}

async fn spawn_confirm(service: ServiceConfig) -> RunningService {
    confirm::spawn(confirm::Config::new(service), CancellationToken::new())
        .await
        .expect("confirm starts")
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, svc) in &self.services {
            svc.stop();
        }
    }
}

/// A start time `days` from now at `hour`:00 UTC, so bookings are never in the past.
pub fn future(days: i64, hour: u32) -> DateTime<Utc> {
    (Utc::now() + Span::days(days))
        .date_naive()
        .and_hms_opt(hour, 0, 0)
        .expect("valid hour")
        .and_utc()
}
