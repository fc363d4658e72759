//! Every stream, subject and consumer setting in one place.
//!
//! | stream | subjects | retention | holds |
//! |---|---|---|---|
//! | `ROOMBOOK_EVENTS` | `roombook.events.{booking,confirm}.{bookingId}.{Type}` | limits (kept for replay) | the participants' facts |
//! | `ROOMBOOK_SAGA_EVENTS` | `roombook.events.saga.{bookingId}.SagaStateChanged` | limits (kept for replay) | the orchestrator's facts |
//! | `ROOMBOOK_COMMANDS` | `roombook.commands.{participant}.{bookingId}.{Type}` | work queue | requests to `booking` or `confirm` |
//! | `ROOMBOOK_DEAD_LETTERS` | `roombook.dlq.{consumer}` | limits | messages a consumer parked |
//!
//! Each subject carries the booking id, so one booking's history is `roombook.*.*.{bookingId}.>`.
//!
//! The saga's facts have a stream of their own so that the orchestrator and notification, which
//! never read them, are not delivered them: only the booking list reads both event streams.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, stream};

use crate::contract::{Body, Envelope};

pub const EVENTS_STREAM: &str = "ROOMBOOK_EVENTS";
pub const SAGA_EVENTS_STREAM: &str = "ROOMBOOK_SAGA_EVENTS";
/// Every stream of events (facts), in the order a replay reads them.
pub const EVENT_STREAMS: [&str; 2] = [EVENTS_STREAM, SAGA_EVENTS_STREAM];
pub const COMMANDS_STREAM: &str = "ROOMBOOK_COMMANDS";
pub const DEAD_LETTER_STREAM: &str = "ROOMBOOK_DEAD_LETTERS";

pub const EVENTS_PREFIX: &str = "roombook.events";
pub const COMMANDS_PREFIX: &str = "roombook.commands";
pub const DEAD_LETTER_PREFIX: &str = "roombook.dlq";

/// How long the server remembers a `Nats-Msg-Id` to drop a re-published duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a consumer may hold a message before the server redelivers it.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries of one message before its consumer parks it in the dead-letter stream.
pub const MAX_ATTEMPTS: i64 = 8;
/// Delay before redelivering a message whose handler failed, by attempt (the last repeats).
pub const REDELIVERY_BACKOFF: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(15),
];

/// The subject a message is published on, derived from its type and booking.
pub fn subject_for(env: &Envelope) -> String {
    let (prefix, owner) = match &env.body {
        Body::BookingCreated(_) | Body::BookingConfirmed(_) | Body::BookingCancelled(_) => {
            (EVENTS_PREFIX, "booking")
        }
        Body::ConfirmRequested(_)
        | Body::ConfirmCompleted(_)
        | Body::ConfirmDenied(_)
        | Body::ConfirmClosed(_)
        | Body::ConfirmExpired(_) => (EVENTS_PREFIX, "confirm"),
        Body::SagaStateChanged(_) => (EVENTS_PREFIX, "saga"),
        Body::RequestConfirm(_) | Body::DeleteConfirm(_) | Body::ExpireConfirm(_) => {
            (COMMANDS_PREFIX, "confirm")
        }
        Body::ConfirmBooking(_) | Body::CancelBooking(_) => (COMMANDS_PREFIX, "booking"),
    };
    format!(
        "{prefix}.{owner}.{}.{}",
        env.booking_id,
        env.body.type_name()
    )
}

/// A durable pull consumer: its name, its stream, what the server delivers to it and which of
/// those its handler applies.
///
/// Consumers of an event stream are delivered the whole stream (no filter) and pass over
/// (acknowledge unread) what they do not handle. Asking the server to select instead costs it
/// far more: every subject carries a booking id, so the stream holds about one subject per
/// message, and a filtered consumer makes the server search that subject tree on look-ups
/// once it is a few messages behind.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub durable: &'static str,
    pub stream: &'static str,
    /// What the server delivers: empty for the whole stream, else one filter (one
    /// participant's commands).
    pub filter_subject: String,
    /// The subjects the handler applies; every other delivery is acknowledged unread.
    pub handles: Vec<String>,
}

impl ConsumerSpec {
    /// The orchestrator follows the participants' events (the saga's own events, which an
    /// earlier version kept in the same stream, are passed over).
    pub fn orchestrator() -> Self {
        ConsumerSpec {
            durable: "orchestrator",
            stream: EVENTS_STREAM,
            filter_subject: String::new(),
            handles: vec![
                format!("{EVENTS_PREFIX}.booking.>"),
                format!("{EVENTS_PREFIX}.confirm.>"),
            ],
        }
    }

    /// The notification service takes the events it mails about (the booking's own status
    /// changes, and the approval request for the admins) and no others: the confirm's other
    /// events would only be recorded as seen.
    pub fn notification() -> Self {
        ConsumerSpec {
            durable: "notification",
            stream: EVENTS_STREAM,
            filter_subject: String::new(),
            handles: vec![
                format!("{EVENTS_PREFIX}.booking.>"),
                format!("{EVENTS_PREFIX}.confirm.*.ConfirmRequested"),
            ],
        }
    }

    /// Whether the consumer's handler applies messages published on `subject` (what it handles
    /// lies inside what it is delivered; a unit test keeps it so).
    pub fn takes(&self, subject: &str) -> bool {
        self.handles
            .iter()
            .any(|filter| subject_matches(filter, subject))
    }

    /// Whether the server delivers messages published on `subject` to this consumer.
    pub fn delivers(&self, subject: &str) -> bool {
        if self.filter_subject.is_empty() {
            stream_subjects(self.stream)
                .iter()
                .any(|s| subject_matches(s, subject))
        } else {
            subject_matches(&self.filter_subject, subject)
        }
    }

    /// The booking list follows every event (to keep its read model): the participants' with
    /// this consumer, the saga's with [`ConsumerSpec::bookinglist_saga`].
    pub fn bookinglist() -> Self {
        ConsumerSpec {
            durable: "bookinglist",
            stream: EVENTS_STREAM,
            filter_subject: String::new(),
            handles: vec![format!("{EVENTS_PREFIX}.>")],
        }
    }

    /// The booking list's consumer of the saga's events.
    pub fn bookinglist_saga() -> Self {
        ConsumerSpec {
            durable: "bookinglist-saga",
            stream: SAGA_EVENTS_STREAM,
            filter_subject: String::new(),
            handles: vec![format!("{EVENTS_PREFIX}.saga.>")],
        }
    }

    /// The booking list's consumers, one per event stream (in [`EVENT_STREAMS`] order).
    pub fn bookinglist_all() -> [Self; 2] {
        [Self::bookinglist(), Self::bookinglist_saga()]
    }

    /// The booking service takes the commands addressed to it.
    pub fn booking_commands() -> Self {
        ConsumerSpec {
            durable: "booking",
            stream: COMMANDS_STREAM,
            filter_subject: format!("{COMMANDS_PREFIX}.booking.>"),
            handles: vec![format!("{COMMANDS_PREFIX}.booking.>")],
        }
    }

    /// The confirm service takes the commands addressed to it.
    pub fn confirm_commands() -> Self {
        ConsumerSpec {
            durable: "confirm",
            stream: COMMANDS_STREAM,
            filter_subject: format!("{COMMANDS_PREFIX}.confirm.>"),
            handles: vec![format!("{COMMANDS_PREFIX}.confirm.>")],
        }
    }

    pub fn config(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(self.durable.to_string()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            // The consumer loop parks a message after MAX_ATTEMPTS itself (so nothing is dropped
            // silently); the server's own limit is only a backstop a little above it.
            max_deliver: MAX_ATTEMPTS + 2,
            filter_subject: self.filter_subject.clone(),
            max_ack_pending: 1024,
            ..Default::default()
        }
    }
}

/// The subjects a stream holds.
pub fn stream_subjects(stream: &str) -> Vec<String> {
    match stream {
        EVENTS_STREAM => vec![
            format!("{EVENTS_PREFIX}.booking.>"),
            format!("{EVENTS_PREFIX}.confirm.>"),
        ],
        SAGA_EVENTS_STREAM => vec![format!("{EVENTS_PREFIX}.saga.>")],
        COMMANDS_STREAM => vec![format!("{COMMANDS_PREFIX}.>")],
        DEAD_LETTER_STREAM => vec![format!("{DEAD_LETTER_PREFIX}.>")],
        _ => Vec::new(),
    }
}

/// Declares (or updates) the streams. Safe to run at every start, from every replica.
///
/// `ROOMBOOK_EVENTS` is declared first: a stream declared by an earlier version took every
/// event subject, and must give up the saga's before `ROOMBOOK_SAGA_EVENTS` may take them (the
/// saga events it already holds stay there and are still replayed).
pub async fn ensure_streams(js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    let streams = [
        (EVENTS_STREAM, stream::RetentionPolicy::Limits),
        (SAGA_EVENTS_STREAM, stream::RetentionPolicy::Limits),
        (COMMANDS_STREAM, stream::RetentionPolicy::WorkQueue),
        (DEAD_LETTER_STREAM, stream::RetentionPolicy::Limits),
    ]
    .map(|(name, retention)| stream::Config {
        name: name.into(),
        subjects: stream_subjects(name),
        retention,
        ..Default::default()
    });
    for config in streams {
        let name = config.name.clone();
        let config = stream::Config {
            storage: stream::StorageType::File,
            num_replicas: replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..config
        };
        js.create_or_update_stream(config)
            .await
            .with_context(|| format!("declaring stream {name}"))?;
    }
    Ok(())
}

/// Declares (or updates) a durable consumer and returns it.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> anyhow::Result<jetstream::consumer::Consumer<pull::Config>> {
    js.create_consumer_on_stream(spec.config(), spec.stream)
        .await
        .with_context(|| format!("declaring consumer {}", spec.durable))
}

/// NATS subject matching: `*` stands for one token, a final `>` for one or more.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in filter.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (token, Some(s)) if token == s => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Delay before the next delivery after `delivered` failed attempts.
pub fn redelivery_delay(delivered: i64) -> Duration {
    let index = usize::try_from(delivered.max(1) - 1).unwrap_or(0);
    REDELIVERY_BACKOFF[index.min(REDELIVERY_BACKOFF.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::*;
    use uuid::Uuid;

    #[test]
    fn subjects_match_filters_token_by_token() {
        let cases = [
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("a.*.c", "a.b.c.d", false),
            ("a.b", "a.b", true),
            ("a.b", "a.bc", false),
        ];
        for (filter, subject, matches) in cases {
            assert_eq!(
                subject_matches(filter, subject),
                matches,
                "{filter} ~ {subject}"
            );
        }
    }

    #[test]
    fn events_and_commands_go_to_their_owners_subjects() {
        let booking = Uuid::new_v4();
        let env = |body| Envelope::new(booking, Uuid::new_v4(), 1, body);
        assert_eq!(
            subject_for(&env(Body::BookingConfirmed(BookingConfirmed {}))),
            format!("roombook.events.booking.{booking}.BookingConfirmed")
        );
        assert_eq!(
            subject_for(&env(Body::DeleteConfirm(DeleteConfirm {
                reason: "x".into()
            }))),
            format!("roombook.commands.confirm.{booking}.DeleteConfirm")
        );
        assert_eq!(
            subject_for(&env(Body::ConfirmBooking(ConfirmBooking {}))),
            format!("roombook.commands.booking.{booking}.ConfirmBooking")
        );
    }

    /// One subject per message type, as `subject_for` names them.
    fn sample_subjects() -> Vec<String> {
        let owners = [
            (
                "events.booking",
                &["BookingCreated", "BookingConfirmed", "BookingCancelled"][..],
            ),
            (
                "events.confirm",
                &[
                    "ConfirmRequested",
                    "ConfirmCompleted",
                    "ConfirmDenied",
                    "ConfirmClosed",
                    "ConfirmExpired",
                ][..],
            ),
            ("events.saga", &["SagaStateChanged"][..]),
            (
                "commands.confirm",
                &["RequestConfirm", "DeleteConfirm", "ExpireConfirm"][..],
            ),
            ("commands.booking", &["ConfirmBooking", "CancelBooking"][..]),
        ];
        let booking = Uuid::new_v4();
        let subjects: Vec<String> = owners
            .iter()
            .flat_map(|(owner, types)| {
                types
                    .iter()
                    .map(move |t| format!("roombook.{owner}.{booking}.{t}"))
            })
            .collect();
        let mut covered: Vec<&str> = subjects.iter().map(|s| Body::type_of_subject(s)).collect();
        covered.sort_unstable();
        let mut all = Body::TYPE_NAMES.to_vec();
        all.sort_unstable();
        assert_eq!(covered, all, "one sample subject per message type");
        subjects
    }

    #[test]
    fn every_subject_belongs_to_exactly_one_stream() {
        let streams = [
            EVENTS_STREAM,
            SAGA_EVENTS_STREAM,
            COMMANDS_STREAM,
            DEAD_LETTER_STREAM,
        ];
        for subject in sample_subjects() {
            let holders: Vec<_> = streams
                .iter()
                .filter(|s| {
                    stream_subjects(s)
                        .iter()
                        .any(|f| subject_matches(f, &subject))
                })
                .collect();
            assert_eq!(holders.len(), 1, "{subject}: {holders:?}");
            let expected = if subject.contains(".events.saga.") {
                SAGA_EVENTS_STREAM
            } else if subject.contains(".events.") {
                EVENTS_STREAM
            } else {
                COMMANDS_STREAM
            };
            assert_eq!(*holders[0], expected, "{subject}");
        }
    }

    #[test]
    fn event_consumers_are_delivered_whole_streams_and_pick_in_the_handler() {
        let subjects = sample_subjects();
        let taken_by = |spec: &ConsumerSpec| -> Vec<&'static str> {
            subjects
                .iter()
                .filter(|s| spec.takes(s))
                .map(|s| Body::type_of_subject(s))
                .collect()
        };
        let all = [
            ConsumerSpec::orchestrator(),
            ConsumerSpec::notification(),
            ConsumerSpec::bookinglist(),
            ConsumerSpec::bookinglist_saga(),
            ConsumerSpec::booking_commands(),
            ConsumerSpec::confirm_commands(),
        ];
        for spec in &all {
            // A filter on an event stream makes the server search its subject index.
            if EVENT_STREAMS.contains(&spec.stream) {
                assert_eq!(spec.filter_subject, "", "{spec:?}");
            }
            // No handled pattern is dead: each takes something the consumer is delivered.
            for handle in &spec.handles {
                assert!(
                    subjects
                        .iter()
                        .any(|s| spec.delivers(s) && subject_matches(handle, s)),
                    "{} handles {handle}, which it is never delivered",
                    spec.durable
                );
            }
        }
        let participants_events: Vec<&str> = subjects
            .iter()
            .filter(|s| s.contains(".events.booking.") || s.contains(".events.confirm."))
            .map(|s| Body::type_of_subject(s))
            .collect();
        assert_eq!(participants_events.len(), 8);
        assert_eq!(taken_by(&all[0]), participants_events);
        assert_eq!(
            taken_by(&all[1]),
            [
                "BookingCreated",
                "BookingConfirmed",
                "BookingCancelled",
                "ConfirmRequested"
            ]
        );
        // The booking list's two consumers are delivered every event once between them.
        for subject in subjects.iter().filter(|s| s.contains(".events.")) {
            let delivered = ConsumerSpec::bookinglist_all()
                .iter()
                .filter(|spec| spec.delivers(subject) && spec.takes(subject))
                .count();
            assert_eq!(delivered, 1, "{subject}");
        }
        assert_eq!(taken_by(&all[4]), ["ConfirmBooking", "CancelBooking"]);
        assert_eq!(
            taken_by(&all[5]),
            ["RequestConfirm", "DeleteConfirm", "ExpireConfirm"]
        );
    }

    #[test]
    fn redelivery_backoff_grows_then_holds() {
        assert_eq!(redelivery_delay(1), REDELIVERY_BACKOFF[0]);
        assert_eq!(redelivery_delay(2), REDELIVERY_BACKOFF[1]);
        assert_eq!(redelivery_delay(100), REDELIVERY_BACKOFF[4]);
        assert_eq!(redelivery_delay(0), REDELIVERY_BACKOFF[0]);
    }
}
