//! The consumer side: each saga event becomes zero or more delivery records, written in the
//! consumer's transaction (which also records the event's `messageId`, so a redelivery adds
//! nothing). Nothing here talks to a mail server: the [`crate::sender`] does that later, so a
//! slow or broken mail system never holds up the bus.
//!
//! | event | mail |
//! |---|---|
//! | `BookingCreated` | BOOKED to the booker |
//! | `BookingConfirmed` | CONFIRMED to the booker |
//! | `BookingCancelled` (DENIED / USER_CANCELLED / EXPIRED) | DENIED / CANCELLED / EXPIRED to the booker |
//! | `ConfirmRequested` | APPROVAL_REQUESTED to each address in `ADMIN_EMAILS` |
//! | anything else | none (the booking events above already tell the booker); the consumer is not even given them ([`platform::topology::ConsumerSpec::notification`]) |
//!
//! Order and gaps: only `BookingCreated` carries the booker's address and the slot, so it is
//! stored per booking. A booker mail whose `BookingCreated` has not been seen yet (it is being
//! redelivered) is recorded WAITING and sent as soon as that arrives; if it never does within
//! the grace period, the record becomes FAILED ("unknown booking"). A booking event older than
//! one already mailed for the same booking (by `version`) is recorded SKIPPED, so a late
//! "received" never follows a "confirmed". Bad addresses are FAILED right away, with the reason.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use platform::{
    consumer::{HandleError, Handler, Incoming},
    contract::{Body, Envelope},
    db::Tx,
};
use uuid::Uuid;

use crate::{
    bookings::{Advance, BatchBookings},
    compose::{self, Facts},
    domain::{BookingFacts, Kind, Notification, Role, Status},
    store, Settings,
};

pub struct NotificationHandler {
    pub settings: Arc<Settings>,
}

impl Handler for NotificationHandler {
    async fn handle(&self, tx: &mut Tx, msg: &Incoming) -> Result<(), HandleError> {
        self.handle_batch(tx, &[msg]).await
    }

    /// The records of the whole batch are written together at its end: nothing in handling an
    /// event reads them.
    async fn handle_batch(&self, tx: &mut Tx, msgs: &[&Incoming]) -> Result<(), HandleError> {
        let booked: Vec<Uuid> = msgs
            .iter()
            .filter(|m| mails_the_booker(&m.envelope.body))
            .map(|m| m.envelope.booking_id)
            .collect();
        let now = self.settings.clock.now();
        let mut bookings = BatchBookings::load(tx, &booked, now).await?;
        let mut records = Vec::new();
        for msg in msgs {
            msg.span()
                .in_scope(|| self.records(&mut bookings, msg, &mut records));
        }
        bookings.save(tx, now).await?;
        store::insert_all(tx, &records).await?;
        Ok(())
    }
}

/// Whether the event mails the booker, and so needs what is known of its booking.
fn mails_the_booker(body: &Body) -> bool {
    matches!(
        body,
        Body::BookingCreated(_) | Body::BookingConfirmed(_) | Body::BookingCancelled(_)
    )
}

impl NotificationHandler {
    /// Updates what is known of the event's booking and adds the delivery records the event
    /// makes to `out`.
    fn records(
        &self,
        bookings: &mut BatchBookings,
        msg: &Incoming,
        out: &mut Vec<store::NewRecord>,
    ) {
        let env = &msg.envelope;
        let now = self.settings.clock.now();
        // The consumer takes only the events below; anything else that reaches it (say, from
        // a consumer declared by an older version) is only recorded as seen.
        match &env.body {
            Body::BookingCreated(b) => {
                let facts = BookingFacts {
                    booking_user_id: b.booking_user_id.clone(),
                    booking_user_email: b.booking_user_email.clone(),
                    room_id: b.room_id,
                    start: b.use_start_dtm,
                    end: b.use_end_dtm,
                };
                bookings.record_created(env.booking_id, facts);
                self.to_booker(bookings, env, Kind::Booked, None, now, out);
            }
            Body::BookingConfirmed(_) => {
                self.to_booker(bookings, env, Kind::Confirmed, None, now, out);
            }
            Body::BookingCancelled(c) => {
                let kind = Kind::of_cancel(c.reason);
                self.to_booker(bookings, env, kind, c.detail.clone(), now, out);
            }
            Body::ConfirmRequested(c) => {
                let facts = BookingFacts {
                    booking_user_id: c.booking_user_id.clone(),
                    booking_user_email: None,
                    room_id: c.room_id,
                    start: c.use_start_dtm,
                    end: c.use_end_dtm,
                };
                self.to_admins(env, &facts, c.confirm_id, c.approval_deadline, now, out);
            }
            _ => {}
        }
    }

    fn to_booker(
        &self,
        bookings: &mut BatchBookings,
        env: &Envelope,
        kind: Kind,
        detail: Option<String>,
        now: DateTime<Utc>,
        out: &mut Vec<store::NewRecord>,
    ) {
        let version = i64::try_from(env.version).unwrap_or(i64::MAX);
        let Advance {
            superseded_by: newer,
            facts,
        } = bookings.advance(env.booking_id, version);
        let mut n = self.record(env, kind, Role::Booker, None, detail, now);
        if let Some(facts) = &facts {
            describe(&mut n, facts, &self.settings);
        }
        if let Some(newer) = newer {
            n.status = Status::Skipped;
            n.last_error = Some(if newer == version {
                format!("a repeat of booking event version {version}, which was already mailed")
            } else {
                format!(
                    "superseded: booking event version {newer} was already mailed, this is the \
                     older version {version}"
                )
            });
        } else if let Some(reason) = self.too_old(env, now) {
            n.status = Status::Skipped;
            n.last_error = Some(reason);
        } else if let Some(facts) = &facts {
            address_booker(&mut n, facts);
        } else {
            n.status = Status::Waiting;
            n.last_error = Some(WAITING_REASON.to_string());
        }
        out.push((n, store::BOOKER_KEY.to_string()));
    }

    fn to_admins(
        &self,
        env: &Envelope,
        facts: &BookingFacts,
        confirm_id: Uuid,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
        out: &mut Vec<store::NewRecord>,
    ) {
        if self.settings.admin_emails.is_empty() {
            tracing::debug!("no ADMIN_EMAILS configured: approval request not mailed");
            return;
        }
        let too_old = self.too_old(env, now);
        for admin in &self.settings.admin_emails {
            let address = admin.to_string();
            let key = store::admin_key(&address);
            let mut n = self.record(
                env,
                Kind::ApprovalRequested,
                Role::Admin,
                Some(&key),
                None,
                now,
            );
            describe(&mut n, facts, &self.settings);
            n.confirm_id = Some(confirm_id);
            n.approval_deadline = Some(deadline);
            n.recipient = Some(address);
            n.status = Status::Pending;
            if let Some(reason) = &too_old {
                n.status = Status::Skipped;
                n.last_error = Some(reason.clone());
            }
            out.push((n, key));
        }
    }

    /// A fresh record of `env` for one recipient, PENDING and due now.
    fn record(
        &self,
        env: &Envelope,
        kind: Kind,
        role: Role,
        admin_key: Option<&str>,
        detail: Option<String>,
        now: DateTime<Utc>,
    ) -> Notification {
        let key = admin_key.unwrap_or(store::BOOKER_KEY);
        Notification {
            id: Uuid::now_v7(),
            booking_id: env.booking_id,
            event_id: env.message_id,
            event_type: env.body.type_name().to_string(),
            event_version: i64::try_from(env.version).unwrap_or(i64::MAX),
            occurred_at: env.occurred_at,
            kind,
            recipient_role: role,
            recipient: None,
            booking_user_id: None,
            room_id: None,
            use_start_dtm: None,
            use_end_dtm: None,
            detail,
            confirm_id: None,
            approval_deadline: None,
            subject: None,
            mail_message_id: compose::message_id(env.message_id, key, self.settings.mail.domain()),
            status: Status::Pending,
            attempts: 0,
            next_attempt_at: Some(now),
            last_error: None,
            created_at: now,
            updated_at: now,
            sent_at: None,
        }
    }

    /// Why an event is too old to mail about (a consumer catching up on a long history
    /// should not mail people about last month), if it is.
    fn too_old(&self, env: &Envelope, now: DateTime<Utc>) -> Option<String> {
        let age = now - env.occurred_at;
        let max = self.settings.delivery.max_event_age;
        (age.to_std().is_ok_and(|a| a > max)).then(|| {
            format!(
                "the event is from {}, older than the {} h after which no mail is sent",
                platform::time::format_utc(env.occurred_at),
                max.as_secs() / 3600
            )
        })
    }
}

/// The last error of a WAITING record.
pub const WAITING_REASON: &str =
    "waiting for the booking's BookingCreated event, which names the booker's address";

/// Copies the booking's room, slot and owner into the record and renders its subject.
pub fn describe(n: &mut Notification, facts: &BookingFacts, settings: &Settings) {
    n.booking_user_id = Some(facts.booking_user_id.clone());
    n.room_id = Some(facts.room_id);
    n.use_start_dtm = Some(facts.start);
    n.use_end_dtm = Some(facts.end);
    n.subject = Facts::of(n).map(|f| compose::subject(&f, settings.mail.time_zone));
}

/// Addresses a booker's record: PENDING to a valid address, else FAILED with the reason.
pub fn address_booker(n: &mut Notification, facts: &BookingFacts) {
    let email = facts
        .booking_user_email
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    match email {
        None => {
            n.status = Status::Failed;
            n.last_error = Some(format!(
                "the booker {} has no e-mail address",
                facts.booking_user_id
            ));
        }
        Some(email) => {
            n.recipient = Some(email.to_string());
            match compose::parse_address(email) {
                Ok(_) => {
                    n.status = Status::Pending;
                    n.last_error = None;
                }
                Err(reason) => {
                    n.status = Status::Failed;
                    n.last_error = Some(format!("the booker's address is unusable: {reason}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use platform::{
        contract::*,
        topology::{subject_for, ConsumerSpec},
    };
    use uuid::Uuid;

    fn subject(body: Body) -> String {
        let id = Uuid::new_v4();
        subject_for(&Envelope::new(id, id, 1, body))
    }

    #[test]
    fn the_consumer_takes_the_events_that_mail_someone_and_no_others() {
        let spec = ConsumerSpec::notification();
        let at = chrono::Utc::now();
        let mailed = [
            Body::BookingCreated(BookingCreated {
                room_id: 1,
                booking_user_id: "u".into(),
                booking_user_email: None,
                use_start_dtm: at,
                use_end_dtm: at,
            }),
            Body::BookingConfirmed(BookingConfirmed {}),
            Body::BookingCancelled(BookingCancelled {
                reason: CancelReason::Denied,
                detail: None,
            }),
            Body::ConfirmRequested(ConfirmRequested {
                confirm_id: Uuid::new_v4(),
                room_id: 1,
                booking_user_id: "u".into(),
                use_start_dtm: at,
                use_end_dtm: at,
                approval_deadline: at,
            }),
        ];
        for body in mailed {
            let subject = subject(body);
            assert!(spec.takes(&subject), "{subject}");
        }
        let silent = [
            Body::SagaStateChanged(SagaStateChanged {
                state: "CONFIRMED".into(),
                previous_state: None,
            }),
            Body::ConfirmCompleted(ConfirmDecided {
                confirm_id: Uuid::new_v4(),
                confirm_user_id: "admin".into(),
                reason: None,
            }),
            Body::ConfirmExpired(ConfirmExpired {
                confirm_id: Uuid::new_v4(),
            }),
        ];
        for body in silent {
            let subject = subject(body);
            assert!(!spec.takes(&subject), "{subject}");
        }
    }
}
