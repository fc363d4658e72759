//! Every stream, subject and consumer setting in one place.
//!
//! | stream | subjects | retention | holds |
//! |---|---|---|---|
//! | `ROOMBOOK_EVENTS` | `roombook.events.{source}.{bookingId}.{Type}` | limits (kept for replay) | facts from `booking`, `confirm`, `saga` |
//! | `ROOMBOOK_COMMANDS` | `roombook.commands.{participant}.{bookingId}.{Type}` | work queue | requests to `booking` or `confirm` |
//! | `ROOMBOOK_DEAD_LETTERS` | `roombook.dlq.{consumer}` | limits | messages a consumer parked |
//!
//! Each subject carries the booking id, so one booking's history is `roombook.*.*.{bookingId}.>`.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, stream};

use crate::contract::{Body, Envelope};

pub const EVENTS_STREAM: &str = "ROOMBOOK_EVENTS";
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
/// Consumers of the event stream are delivered the whole stream and pass over (acknowledge
/// unread) what they do not handle. Asking the server to select instead costs it far more:
/// every subject carries a booking id, so the stream holds about one subject per message, and
/// a consumer with several filters makes the server intersect that whole subject tree with its
/// filters on every look-up once it is a few messages behind.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub durable: &'static str,
    pub stream: &'static str,
    /// What the server delivers: one filter (the whole stream, or one participant's commands).
    pub filter_subject: String,
    /// The subjects the handler applies; every other delivery is acknowledged unread.
    pub handles: Vec<String>,
}

impl ConsumerSpec {
    /// The orchestrator follows the participants' events.
    pub fn orchestrator() -> Self {
        ConsumerSpec {
            durable: "orchestrator",
            stream: EVENTS_STREAM,
            filter_subject: format!("{EVENTS_PREFIX}.>"),
            handles: vec![
                format!("{EVENTS_PREFIX}.booking.>"),
                format!("{EVENTS_PREFIX}.confirm.>"),
            ],
        }
    }

    /// The notification service takes the events it mails about (the booking's own status
    /// changes, and the approval request for the admins) and no others: the saga's and the
    /// confirm's other events would only be recorded as seen.
    pub fn notification() -> Self {
        ConsumerSpec {
            durable: "notification",
            stream: EVENTS_STREAM,
            filter_subject: format!("{EVENTS_PREFIX}.>"),
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

    /// The booking list follows every event (to keep its read model).
    pub fn bookinglist() -> Self {
        ConsumerSpec {
            durable: "bookinglist",
            stream: EVENTS_STREAM,
            filter_subject: format!("{EVENTS_PREFIX}.>"),
            handles: vec![format!("{EVENTS_PREFIX}.>")],
        }
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

/// Declares (or updates) the three streams. Safe to run at every start, from every replica.
pub async fn ensure_streams(js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    let streams = [
        stream::Config {
            name: EVENTS_STREAM.into(),
            subjects: vec![format!("{EVENTS_PREFIX}.>")],
            retention: stream::RetentionPolicy::Limits,
            ..Default::default()
        },
        stream::Config {
            name: COMMANDS_STREAM.into(),
            subjects: vec![format!("{COMMANDS_PREFIX}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        },
        stream::Config {
            name: DEAD_LETTER_STREAM.into(),
            subjects: vec![format!("{DEAD_LETTER_PREFIX}.>")],
            retention: stream::RetentionPolicy::Limits,
            ..Default::default()
        },
    ];
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

    #[test]
    fn event_consumers_are_delivered_the_whole_stream_and_pick_in_the_handler() {
        let all = [
            ConsumerSpec::orchestrator(),
            ConsumerSpec::notification(),
            ConsumerSpec::bookinglist(),
            ConsumerSpec::booking_commands(),
            ConsumerSpec::confirm_commands(),
        ];
        let booking = Uuid::new_v4();
        let saga_event = subject_for(&Envelope::new(
            booking,
            booking,
            1,
            Body::SagaStateChanged(SagaStateChanged {
                state: "STARTED".into(),
                previous_state: None,
            }),
        ));
        for spec in all {
            // One filter each; on the event stream it must be the stream's own subject (several
            // filters, or a narrower one, make the server search its subject index).
            if spec.stream == EVENTS_STREAM {
                assert_eq!(
                    spec.filter_subject,
                    format!("{EVENTS_PREFIX}.>"),
                    "{spec:?}"
                );
            } else {
                assert!(spec.filter_subject.starts_with(COMMANDS_PREFIX), "{spec:?}");
            }
            let picks = spec
                .handles
                .iter()
                .all(|h| subject_matches(&spec.filter_subject, &h.replace(['*', '>'], "x")));
            assert!(picks, "{spec:?} handles subjects it is never delivered");
            assert_eq!(
                spec.takes(&saga_event),
                spec.durable == "bookinglist",
                "{}",
                spec.durable
            );
        }
    }

    #[test]
    fn redelivery_backoff_grows_then_holds() {
        assert_eq!(redelivery_delay(1), REDELIVERY_BACKOFF[0]);
        assert_eq!(redelivery_delay(2), REDELIVERY_BACKOFF[1]);
        assert_eq!(redelivery_delay(100), REDELIVERY_BACKOFF[4]);
        assert_eq!(redelivery_delay(0), REDELIVERY_BACKOFF[0]);
    }
}
