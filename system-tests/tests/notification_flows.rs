//! The notification service beside the whole saga, with a real SMTP server (aiosmtpd over TCP;
//! `pip install aiosmtpd`): mail never holds up a saga, and every expected mail arrives exactly
//! once whether SMTP or the notification service itself was down, or events came twice.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use async_nats::{header::NATS_MESSAGE_ID, jetstream, HeaderMap};
use chrono::{DateTime, Utc};
use common::{future, Stack, WAIT};
use notification::testkit::SmtpSink;
use platform::{
    http::{USER_ID_HEADER, USER_ROLES_HEADER},
    runtime::RunningService,
    testkit::{eventually, TestBackend},
    topology,
};
use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ADMIN: &str = "approver@roombook.test";
/// Long enough for 50 sagas' mail on two cores; polling ends as soon as it is there.
const MAIL_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The notification service of a stack, sending to an SMTP sink.
struct Mailroom {
    sink: SmtpSink,
    config: notification::Config,
    svc: Option<RunningService>,
    url: String,
    http: reqwest::Client,
}

impl Mailroom {
    async fn start(stack: &Stack) -> Mailroom {
        let sink = SmtpSink::start();
        let mut config = sink.service_config(stack.service_config("notification").await);
        config.admin_emails = vec![ADMIN.parse().unwrap()];
        let mut room = Mailroom {
            sink,
            config,
            svc: None,
            url: String::new(),
            http: reqwest::Client::new(),
        };
        room.start_service().await;
        room
    }

    /// Starts the service (again, on the same database).
    async fn start_service(&mut self) {
        let svc = notification::spawn(self.config.clone(), CancellationToken::new())
            .await
            .expect("notification starts");
        self.url = format!("http://{}", svc.addr);
        self.svc = Some(svc);
    }

    async fn stop_service(&mut self) {
        Stack::stop(&mut self.svc).await;
    }

    /// Every delivery record, as an admin sees them.
    async fn records(&self) -> Vec<Value> {
        let resp = self
            .http
            .get(format!("{}/notifications?limit=1000", self.url))
            .header(USER_ID_HEADER, "admin")
            .header(USER_ROLES_HEADER, "user,admin")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json::<Vec<Value>>().await.unwrap()
    }

    /// Waits until there are `count` records and all are SENT.
    async fn wait_all_sent(&self, count: usize) -> Vec<Value> {
        eventually(
            &format!("{count} notifications SENT"),
            MAIL_WAIT,
            || async {
                let records = self.records().await;
                (records.len() == count && records.iter().all(|r| r["status"] == "SENT"))
                    .then_some(records)
            },
        )
        .await
    }

    fn mails(&self) -> Vec<Mail> {
        self.sink
            .received()
            .iter()
            .map(|r| Mail::parse(&r.raw))
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Mail {
    to: String,
    subject: String,
    message_id: String,
    references: String,
    calendar_method: String,
}

impl Mail {
    fn parse(raw: &[u8]) -> Mail {
        use mail_parser::{MessageParser, MimeHeaders as _};
        let msg = MessageParser::default().parse(raw).expect("a mail");
        let calendar = msg
            .parts
            .iter()
            .find_map(|p| {
                p.content_type()
                    .filter(|c| c.ctype() == "text" && c.subtype() == Some("calendar"))
                    .and_then(|c| c.attribute("method"))
                    .map(str::to_string)
            })
            .expect("a text/calendar part with a method");
        Mail {
            to: msg
                .to()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .unwrap_or_default()
                .to_string(),
            subject: msg.subject().unwrap_or_default().to_string(),
            message_id: msg.message_id().unwrap_or_default().to_string(),
            references: msg.header_raw("References").unwrap_or_default().to_string(),
            calendar_method: calendar,
        }
    }

    fn is_about(&self, booking: &str) -> bool {
        self.references.contains(booking)
    }
}

/// How a saga is driven and what it must end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Approved,
    Denied,
    CancelledByOwner,
}

impl Outcome {
    fn of(i: usize) -> Outcome {
        match i % 5 {
            0 => Outcome::Denied,
            1 => Outcome::CancelledByOwner,
            _ => Outcome::Approved,
        }
    }

    fn saga_state(self) -> &'static str {
        match self {
            Outcome::Approved => "COMPLETED",
            Outcome::Denied => "COMPENSATED",
            Outcome::CancelledByOwner => "CANCELLED",
        }
    }

    /// The mails of one saga: (recipient, subject prefix, calendar method).
    fn expected_mails(self, user: &str) -> Vec<(String, &'static str, &'static str)> {
        let booker = format!("{user}@example.com");
        let last = match self {
            Outcome::Approved => ("Booking confirmed:", "REQUEST"),
            Outcome::Denied => ("Booking declined:", "CANCEL"),
            Outcome::CancelledByOwner => ("Booking cancelled:", "CANCEL"),
        };
        vec![
            (booker.clone(), "Booking received:", "REQUEST"),
            (ADMIN.to_string(), "Approval needed:", "PUBLISH"),
            (booker, last.0, last.1),
        ]
    }
}

/// Room and start of saga `i`: four rooms, distinct hours, so no two bookings collide.
fn slot(i: usize) -> (i64, DateTime<Utc>) {
    let rooms = [101, 102, 103, 201];
    let j = i / rooms.len();
    let day = 5 + i64::try_from(j / 10).unwrap();
    let hour = 8 + u32::try_from(j % 10).unwrap();
    (rooms[i % rooms.len()], future(day, hour))
}

/// Runs `n` sagas to their end concurrently; returns (booking id, user, outcome).
async fn run_sagas(stack: &Stack, n: usize, first: usize) -> Vec<(String, String, Outcome)> {
    let runs = (first..first + n).map(|i| async move {
        let user = format!("user{i}");
        let outcome = Outcome::of(i);
        let (room, start) = slot(i);
        let id = stack.book(&user, room, start).await;
        let confirm = stack.wait_confirm(&id).await;
        let (status, body) = match outcome {
            Outcome::Approved => stack.decide(&confirm, "CONFIRMED", None).await,
            Outcome::Denied => {
                stack
                    .decide(&confirm, "DENIED", Some("room needed for an audit"))
                    .await
            }
            Outcome::CancelledByOwner => stack.cancel(&user, &id).await,
        };
        assert_eq!(status, StatusCode::OK, "{body}");
        stack.wait_saga(&id, outcome.saga_state()).await;
        (id, user, outcome)
    });
    futures::future::join_all(runs).await
}

/// Checks that each saga's expected mails arrived exactly once, and nothing else did.
fn assert_each_mail_once(mails: &[Mail], sagas: &[(String, String, Outcome)], records: &[Value]) {
    let ids: BTreeSet<&str> = mails.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids.len(), mails.len(), "a Message-ID arrived twice");
    let recorded: BTreeSet<String> = records
        .iter()
        .map(|r| {
            r["mailMessageId"]
                .as_str()
                .unwrap()
                .trim_matches(['<', '>'])
                .to_string()
        })
        .collect();
    assert_eq!(
        ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        recorded,
        "the mails received are the mails recorded as sent"
    );
    assert_eq!(mails.len(), sagas.len() * 3);
    for (id, user, outcome) in sagas {
        let mut got: Vec<(String, String, String)> = mails
            .iter()
            .filter(|m| m.is_about(id))
            .map(|m| (m.to.clone(), m.subject.clone(), m.calendar_method.clone()))
            .collect();
        got.sort();
        let mut expected = outcome.expected_mails(user);
        expected.sort();
        assert_eq!(
            got.len(),
            expected.len(),
            "mails of {id} ({outcome:?}): {got:#?}"
        );
        for ((to, subject, method), (want_to, prefix, want_method)) in got.iter().zip(&expected) {
            assert_eq!(to, want_to, "{id}");
            assert!(
                subject.starts_with(prefix),
                "{id}: `{subject}` should start with `{prefix}`"
            );
            assert_eq!(method, want_method, "{id}: {subject}");
        }
    }
}

async fn with_smtp_down_fifty_sagas_complete_and_each_mail_arrives_once_smtp_is_back(
    backend: TestBackend,
) {
    let stack = Stack::start(backend).await;
    let mut mailroom = Mailroom::start(&stack).await;
    mailroom.sink.stop();

    let sagas = run_sagas(&stack, 50, 0).await;
    // Every saga has settled (run_sagas waited for each) while no mail could go out; the mail
    // is recorded and being retried.
    let records = eventually(
        "150 records, each tried, failed and still pending",
        MAIL_WAIT,
        || async {
            let records = mailroom.records().await;
            (records.len() == 150
                && records
                    .iter()
                    // A failed attempt leaves its error (one in flight has none yet).
                    .all(|r| r["status"] == "PENDING" && r["lastError"].is_string()))
            .then_some(records)
        },
    )
    .await;
    assert!(records.iter().all(|r| r["lastError"]
        .as_str()
        .unwrap()
        .contains("cannot reach the mail server")));
    assert!(mailroom.sink.received().is_empty());

    mailroom.sink.restart();
    let records = mailroom.wait_all_sent(150).await;
    assert_each_mail_once(&mailroom.mails(), &sagas, &records);
}

async fn a_notification_service_down_while_sagas_run_catches_up_when_restarted(
    backend: TestBackend,
) {
    let stack = Stack::start(backend).await;
    let mut mailroom = Mailroom::start(&stack).await;
    mailroom.stop_service().await;

    let sagas = run_sagas(&stack, 5, 100).await;
    assert!(mailroom.sink.received().is_empty());

    mailroom.start_service().await;
    let records = mailroom.wait_all_sent(15).await;
    assert_each_mail_once(&mailroom.mails(), &sagas, &records);
}

/// Re-publishes every event in the stream as a new JetStream message (new `Nats-Msg-Id`, so
/// the server keeps it) with the same envelope, hence the same `messageId`.
async fn publish_every_event_again(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream(topology::EVENTS_STREAM).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    for seq in state.first_sequence..=state.last_sequence {
        let msg = stream.get_raw_message(seq).await.unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, Uuid::new_v4().to_string().as_str());
        js.publish_with_headers(msg.subject.to_string(), headers, msg.payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    state.messages
}

async fn notification_consumer_idle(js: &jetstream::Context) {
    eventually("the notification consumer to be idle", WAIT, || async {
        let spec = topology::ConsumerSpec::notification();
        let mut consumer: jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream(spec.durable, spec.stream)
            .await
            .ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
}

async fn every_event_delivered_twice_sends_no_second_mail(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let mailroom = Mailroom::start(&stack).await;
    let sagas = run_sagas(&stack, 3, 200).await;
    mailroom.wait_all_sent(9).await;
    stack.wait_quiet().await;
    let js = stack.jetstream().await;
    notification_consumer_idle(&js).await;

    let republished = publish_every_event_again(&js).await;
    assert!(republished >= 9);
    notification_consumer_idle(&js).await;
    stack.wait_quiet().await;

    let records = mailroom.wait_all_sent(9).await;
    let mails = mailroom.mails();
    assert_each_mail_once(&mails, &sagas, &records);
    let per_booking: BTreeMap<&str, usize> = sagas
        .iter()
        .map(|(id, _, _)| (id.as_str(), mails.iter().filter(|m| m.is_about(id)).count()))
        .collect();
    assert!(per_booking.values().all(|n| *n == 3), "{per_booking:?}");
}

async fn an_expired_approval_mails_the_booker_and_withdraws_the_invitation(backend: TestBackend) {
    let stack = Stack::start(backend).await;
    let mailroom = Mailroom::start(&stack).await;
    let id = stack.book("grace", 101, future(4, 9)).await;
    stack.wait_confirm(&id).await;
    let saga = stack.wait_saga(&id, "AWAITING_APPROVAL").await;
    let deadline = DateTime::parse_from_rfc3339(saga["approvalDeadline"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc);
    stack.clock.set(deadline);
    stack.wait_saga(&id, "COMPENSATED").await;

    mailroom.wait_all_sent(3).await;
    let mails = mailroom.mails();
    let expired = mails
        .iter()
        .find(|m| m.subject.starts_with("Booking expired without approval:"))
        .unwrap_or_else(|| panic!("no expiry mail in {mails:#?}"));
    assert_eq!(expired.to, "grace@example.com");
    assert_eq!(expired.calendar_method, "CANCEL");
}

on_both_backends!(
    with_smtp_down_fifty_sagas_complete_and_each_mail_arrives_once_smtp_is_back,
    a_notification_service_down_while_sagas_run_catches_up_when_restarted,
    every_event_delivered_twice_sends_no_second_mail,
    an_expired_approval_mails_the_booker_and_withdraws_the_invitation,
);
