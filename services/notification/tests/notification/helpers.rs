//! The service under test with real infrastructure: a nats-server, a SQLite (or PostgreSQL)
//! database and an aiosmtpd SMTP server over TCP. Events are published straight to JetStream,
//! as the booking and confirm services would.

use std::time::Duration;

use async_nats::{header::NATS_MESSAGE_ID, jetstream, HeaderMap};
use chrono::{DateTime, TimeZone as _, Utc};
use platform::{
    config::ServiceConfig,
    contract::{
        Body, BookingCancelled, BookingConfirmed, BookingCreated, CancelReason, ConfirmRequested,
        Envelope,
    },
    http::{USER_ID_HEADER, USER_ROLES_HEADER},
    runtime::RunningService,
    testkit::{eventually, NatsServer, TestBackend, TestDatabases},
    topology,
};
use reqwest::StatusCode;
use roombook_notification::{testkit::SmtpSink, Config};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(30);
pub const ADMINS: [&str; 2] = ["ops@roombook.test", "lead@roombook.test"];

pub struct App {
    pub _nats: NatsServer,
    pub _dbs: TestDatabases,
    pub sink: SmtpSink,
    pub svc: Option<RunningService>,
    pub config: Config,
    pub url: String,
    pub http: reqwest::Client,
    pub js: jetstream::Context,
}

/// The service with two admins, times in Europe/Berlin, and fast retries.
pub async fn spawn_app(backend: TestBackend) -> App {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: TestBackend, adjust: impl FnOnce(&mut Config)) -> App {
    platform::telemetry::init_for_tests();
    let nats = NatsServer::start();
    let dbs = TestDatabases::new(backend);
    let sink = SmtpSink::start();
    let service = ServiceConfig::for_test(&nats.url(), &dbs.create("notification").await);
    let mut config = sink.service_config(service);
    config.admin_emails = ADMINS.iter().map(|a| a.parse().unwrap()).collect();
    config.time_zone = chrono_tz::Europe::Berlin;
    adjust(&mut config);
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut app = App {
        _nats: nats,
        _dbs: dbs,
        sink,
        svc: None,
        config,
        url: String::new(),
        http: reqwest::Client::new(),
        js,
    };
    app.start().await;
    app
}

impl App {
    pub async fn start(&mut self) {
        let svc = roombook_notification::spawn(self.config.clone(), CancellationToken::new())
            .await
            .expect("notification service starts");
        self.url = format!("http://{}", svc.addr);
        self.svc = Some(svc);
    }

    pub async fn stop(&mut self) {
        if let Some(svc) = self.svc.take() {
            svc.stop();
            svc.wait().await.expect("stops cleanly");
        }
    }

    /// Publishes an event as its owner would (the `Nats-Msg-Id` is the message id).
    pub async fn publish(&self, env: &Envelope) {
        self.publish_with_id(env, &env.message_id.to_string()).await;
    }

    /// Publishes the same envelope again as a new JetStream message: a redelivery the
    /// server's duplicate window does not catch.
    pub async fn publish_again(&self, env: &Envelope) {
        self.publish_with_id(env, &Uuid::new_v4().to_string()).await;
    }

    async fn publish_with_id(&self, env: &Envelope, id: &str) {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, id);
        self.js
            .publish_with_headers(topology::subject_for(env), headers, env.to_json().into())
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }

    /// Waits until the notification consumer has handled everything published so far.
    pub async fn wait_consumed(&self) {
        let js = self.js.clone();
        eventually("the notification consumer to be idle", WAIT, || {
            let js = js.clone();
            async move {
                let spec = topology::ConsumerSpec::notification();
                let mut consumer: jetstream::consumer::PullConsumer = js
                    .get_consumer_from_stream(spec.durable, spec.stream)
                    .await
                    .ok()?;
                let info = consumer.info().await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
            }
        })
        .await;
    }

    pub async fn get(&self, path: &str, user: &str, roles: &str) -> (StatusCode, String, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .header(USER_ID_HEADER, user)
            .header(USER_ROLES_HEADER, roles)
            .send()
            .await
            .unwrap();
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
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Every record of a booking, as an admin sees them.
    pub async fn records(&self, booking: Uuid) -> Vec<Value> {
        let (status, _, body) = self
            .get(
                &format!("/notifications?bookingId={booking}&limit=1000"),
                "admin",
                "user,admin",
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().unwrap().clone()
    }

    /// Waits until the booking has `count` records and none is WAITING or PENDING.
    pub async fn wait_settled(&self, booking: Uuid, count: usize) -> Vec<Value> {
        eventually(
            &format!("{count} settled notifications of {booking}"),
            WAIT,
            || async {
                let records = self.records(booking).await;
                (records.len() == count
                    && records
                        .iter()
                        .all(|r| !matches!(r["status"].as_str(), Some("WAITING" | "PENDING"))))
                .then_some(records)
            },
        )
        .await
    }

    /// A notification of `booking` still PENDING after at least `attempts` failed attempts.
    /// A claim counts its attempt before the send, so the record must also carry the failure
    /// (`lastError`): without it, the attempt is still under way.
    pub async fn wait_retrying(&self, booking: Uuid, attempts: i64) -> Value {
        eventually(
            &format!("a notification of {booking} pending after {attempts} failed attempts"),
            WAIT,
            || async {
                self.records(booking).await.into_iter().find(|r| {
                    r["status"] == "PENDING"
                        && r["attempts"].as_i64() >= Some(attempts)
                        && r["lastError"].is_string()
                })
            },
        )
        .await
    }

    /// The mails received for a booking (by the `References` thread header).
    pub fn mails_of(&self, booking: Uuid) -> Vec<Mail> {
        self.sink
            .received()
            .iter()
            .map(Mail::parse)
            .filter(|m| m.references.contains(&booking.to_string()))
            .collect()
    }

    /// Waits until `count` mails of the booking have arrived.
    pub async fn wait_mails(&self, booking: Uuid, count: usize) -> Vec<Mail> {
        eventually(&format!("{count} mails about {booking}"), WAIT, || async {
            let mails = self.mails_of(booking);
            (mails.len() >= count).then_some(mails)
        })
        .await
    }
}

/// A received mail, parsed with mail-parser (not with anything of the service's).
#[derive(Debug, Clone)]
pub struct Mail {
    pub envelope_to: Vec<String>,
    pub to: String,
    pub from: String,
    pub subject: String,
    pub message_id: String,
    pub references: String,
    pub text: String,
    pub html: String,
    /// The `text/calendar` part: its `method` parameter and its content.
    pub calendar_method: String,
    pub calendar_filename: Option<String>,
    pub ics: String,
}

impl Mail {
    /// A mail as stored on this machine (an `.eml` file, an mbox entry): no envelope.
    pub fn from_stored(raw: Vec<u8>) -> Mail {
        Mail::parse(&roombook_notification::testkit::Received {
            envelope_to: Vec::new(),
            raw,
        })
    }

    pub fn parse(received: &roombook_notification::testkit::Received) -> Mail {
        use mail_parser::{MessageParser, MimeHeaders as _, PartType};
        let msg = MessageParser::default()
            .parse(&received.raw)
            .expect("a parseable mail");
        let addr = |a: Option<&mail_parser::Address>| {
            a.and_then(|a| a.first())
                .and_then(|a| a.address())
                .unwrap_or_default()
                .to_string()
        };
        let calendar = msg
            .parts
            .iter()
            .find(|p| {
                p.content_type()
                    .is_some_and(|c| c.ctype() == "text" && c.subtype() == Some("calendar"))
            })
            .expect("a text/calendar part");
        let ics = match &calendar.body {
            PartType::Text(t) => t.to_string(),
            _ => String::from_utf8(calendar.contents().to_vec()).unwrap(),
        };
        let references = msg.header_raw("References").unwrap_or_default().to_string();
        Mail {
            envelope_to: received.envelope_to.clone(),
            to: addr(msg.to()),
            from: addr(msg.from()),
            subject: msg.subject().unwrap_or_default().to_string(),
            message_id: msg.message_id().unwrap_or_default().to_string(),
            references,
            text: msg.body_text(0).unwrap_or_default().to_string(),
            html: msg.body_html(0).unwrap_or_default().to_string(),
            calendar_method: calendar
                .content_type()
                .and_then(|c| c.attribute("method"))
                .unwrap_or_default()
                .to_string(),
            calendar_filename: calendar.attachment_name().map(str::to_string),
            ics,
        }
    }

    /// The invitation, parsed with the icalendar crate: (METHOD, the VEVENT).
    pub fn invite(&self) -> Invite {
        use icalendar::Component as _;
        let unfolded = icalendar::parser::unfold(&self.ics);
        let parsed = icalendar::parser::read_calendar(&unfolded)
            .unwrap_or_else(|e| panic!("the ICS does not parse: {e}\n{}", self.ics));
        let method = parsed
            .properties
            .iter()
            .find(|p| p.name == "METHOD")
            .map(|p| p.val.to_string())
            .unwrap_or_default();
        let attendee = parsed
            .components
            .iter()
            .find(|c| c.name == "VEVENT")
            .and_then(|c| c.find_prop("ATTENDEE"))
            .map(|p| p.val.as_str().trim_start_matches("mailto:").to_string());
        let calendar: icalendar::Calendar = parsed.into();
        let event = calendar
            .components
            .iter()
            .find_map(|c| match c {
                icalendar::CalendarComponent::Event(e) => Some(e.clone()),
                _ => None,
            })
            .expect("one VEVENT");
        let utc = |d: Option<icalendar::DatePerhapsTime>| match d {
            Some(icalendar::DatePerhapsTime::DateTime(icalendar::CalendarDateTime::Utc(t))) => t,
            other => panic!("expected a UTC time, got {other:?}"),
        };
        Invite {
            method,
            uid: event.get_uid().unwrap_or_default().to_string(),
            status: event
                .property_value("STATUS")
                .unwrap_or_default()
                .to_string(),
            sequence: event.get_sequence().unwrap_or_default(),
            start: utc(event.get_start()),
            end: utc(event.get_end()),
            summary: event.get_summary().unwrap_or_default().to_string(),
            attendee,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Invite {
    pub method: String,
    pub uid: String,
    pub status: String,
    pub sequence: u32,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub summary: String,
    pub attendee: Option<String>,
}

/// One booking's events, as booking and confirm would publish them.
pub struct Booking {
    pub id: Uuid,
    pub saga: Uuid,
    pub user: String,
    pub email: Option<String>,
    pub room: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Booking {
    /// Alice's booking of room 102, 24 Nov 2026 09:00–10:00 UTC (10:00–11:00 in Berlin).
    pub fn new() -> Booking {
        Booking::of("alice", Some("alice@example.com"))
    }

    pub fn of(user: &str, email: Option<&str>) -> Booking {
        let start = Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap();
        Booking {
            id: Uuid::new_v4(),
            saga: Uuid::new_v4(),
            user: user.into(),
            email: email.map(str::to_string),
            room: 102,
            start,
            end: start + chrono::Duration::hours(1),
        }
    }

    fn env(&self, version: u64, body: Body) -> Envelope {
        Envelope::new(self.id, self.saga, version, body)
    }

    pub fn created(&self) -> Envelope {
        self.env(
            1,
            Body::BookingCreated(BookingCreated {
                room_id: self.room,
                booking_user_id: self.user.clone(),
                booking_user_email: self.email.clone(),
                use_start_dtm: self.start,
                use_end_dtm: self.end,
            }),
        )
    }

    pub fn confirm_requested(&self) -> Envelope {
        self.env(
            1,
            Body::ConfirmRequested(ConfirmRequested {
                confirm_id: Uuid::new_v4(),
                room_id: self.room,
                booking_user_id: self.user.clone(),
                use_start_dtm: self.start,
                use_end_dtm: self.end,
                approval_deadline: self.start - chrono::Duration::hours(1),
            }),
        )
    }

    pub fn confirmed(&self) -> Envelope {
        self.env(2, Body::BookingConfirmed(BookingConfirmed {}))
    }

    pub fn cancelled(&self, version: u64, reason: CancelReason, detail: Option<&str>) -> Envelope {
        self.env(
            version,
            Body::BookingCancelled(BookingCancelled {
                reason,
                detail: detail.map(str::to_string),
            }),
        )
    }
}
