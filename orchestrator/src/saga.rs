//! The booking saga as a pure state machine: `apply(saga, message) -> (saga', outputs)`, with no
//! I/O, so every state × message pair is tested directly.
//!
//! ```text
//! BookingCreated ─► STARTED ─ConfirmRequested─► AWAITING_APPROVAL ─ConfirmCompleted─► CONFIRMING
//!      (RequestConfirm)                                │                  (ConfirmBooking)│
//!                                                ConfirmDenied                 BookingConfirmed
//!                                                      ▼                                  ▼
//!                     COMPENSATING ─BookingCancelled─► COMPENSATING ─ConfirmClosed─► COMPENSATED
//!                    (CancelBooking)                  (DeleteConfirm)                COMPLETED
//! BookingCancelled(by the user) from any unsettled state or COMPLETED
//!      ─► CANCELLING (DeleteConfirm) ─ConfirmClosed─► CANCELLED
//! ```
//!
//! Announcements: `SagaStateChanged` is published when the saga moves, except into STARTED,
//! which the booking list learns from `BookingCreated` and which ends as soon as the confirm
//! service answers; a saga held up in it (the reply overdue) is announced by the retry timer.
//!
//! Order tolerance: every participant numbers its events per booking (`version`); the saga keeps
//! the newest version applied from the booking and from the confirm service and ignores anything
//! older, so a late or repeated event can never move a saga backwards.
//!
//! Races, decided by the participant that owns the fact:
//! - **approve vs. user cancel**: the user's cancel wins whenever the booking service accepted
//!   it (until the booking starts). A `ConfirmBooking` reaching a cancelled booking changes
//!   nothing; the saga goes CANCELLING → CANCELLED and closes the confirm, even if it was
//!   CONFIRMED. A decision arriving at a confirm already closed gets 409.
//! - **deny vs. user cancel**: whichever cancel the booking service committed first sets the
//!   booking's cancel reason, and the saga follows it: `USER_CANCELLED` → CANCELLED, `DENIED` →
//!   COMPENSATED. The loser gets 409 (the user's DELETE of a cancelled booking, or the admin's
//!   PATCH of a closed confirm).
//! - **a decision on an already-cancelled booking**: 409 once the confirm is closed; before that
//!   the decision is recorded, the saga ignores it and closes the confirm.
//! - **approve vs. the deadline**: the confirm service decides by its clock. A decision before
//!   the deadline wins (a later `ExpireConfirm` finds it decided and does nothing); at or after
//!   the deadline it gets 409, and the saga compensates like a denial (`ConfirmExpired` →
//!   `CancelBooking(EXPIRED)` → `DeleteConfirm` → COMPENSATED).

use chrono::{DateTime, Duration, Utc};
use platform::contract::{
    Body, CancelBooking, CancelReason, ConfirmBooking, DeleteConfirm, Envelope, ExpireConfirm,
    RequestConfirm, RoomId, SagaStateChanged,
};
use serde::Serialize;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaState {
    /// Booking created, approval requested.
    Started,
    /// The confirm exists; waiting for an admin.
    AwaitingApproval,
    /// Approved; waiting for the booking to be confirmed.
    Confirming,
    /// Booking confirmed (settled; the owner may still cancel it).
    Completed,
    /// Denied (or expired): cancelling the booking, then closing the confirm.
    Compensating,
    /// Cancelled by its owner: closing the confirm.
    Cancelling,
    /// Denied or expired, and undone (settled).
    Compensated,
    /// Cancelled by its owner (settled).
    Cancelled,
}

impl SagaState {
    pub const ALL: [SagaState; 8] = [
        SagaState::Started,
        SagaState::AwaitingApproval,
        SagaState::Confirming,
        SagaState::Completed,
        SagaState::Compensating,
        SagaState::Cancelling,
        SagaState::Compensated,
        SagaState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Started => "STARTED",
            SagaState::AwaitingApproval => "AWAITING_APPROVAL",
            SagaState::Confirming => "CONFIRMING",
            SagaState::Completed => "COMPLETED",
            SagaState::Compensating => "COMPENSATING",
            SagaState::Cancelling => "CANCELLING",
            SagaState::Compensated => "COMPENSATED",
            SagaState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Settled: nothing more will happen unless the owner cancels a COMPLETED booking.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            SagaState::Completed | SagaState::Compensated | SagaState::Cancelled
        )
    }

    /// The states a saga passes through before it settles: the ones worth watching, and few
    /// sagas at a time, whereas settled sagas are kept for good and only grow.
    pub fn in_flight() -> impl Iterator<Item = SagaState> {
        Self::ALL.into_iter().filter(|s| !s.is_settled())
    }

    /// Announced (`SagaStateChanged`) as soon as the saga reaches it: every state but STARTED.
    /// STARTED lasts only until the confirm service has opened the approval request, which
    /// takes milliseconds; it is announced only if that reply is overdue (see [`on_retry_due`]),
    /// so the booking list still hears of a saga held up there.
    pub fn is_announced_at_once(self) -> bool {
        self != SagaState::Started
    }
}

/// What the saga knows about its booking (from `BookingCreated`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = SagaBooking)]
pub struct BookingInfo {
    #[schema(value_type = i64, example = 101)]
    pub room_id: RoomId,
    pub booking_user_id: String,
    #[serde(with = "platform::contract::rfc3339_utc")]
    pub use_start_dtm: DateTime<Utc>,
    #[serde(with = "platform::contract::rfc3339_utc")]
    pub use_end_dtm: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Saga {
    pub saga_id: Uuid,
    pub booking_id: Uuid,
    pub state: SagaState,
    /// In COMPENSATING: the booking has been cancelled, the confirm is being closed.
    pub booking_cancelled: bool,
    pub booking: Option<BookingInfo>,
    pub confirm_id: Option<Uuid>,
    /// Why the saga ended as it did (deny reason, cancel reason).
    pub outcome: Option<String>,
    pub booking_version: u64,
    pub confirm_version: u64,
    /// The saga's own message sequence.
    pub version: u64,
    /// No decision is accepted from this instant on: the durable timer of the saga.
    pub approval_deadline: Option<DateTime<Utc>>,
    /// The deadline passed and `ExpireConfirm` was sent.
    pub expiry_requested: bool,
    /// The command whose reply the saga waits for; sent again if the reply does not come.
    pub pending: Option<Body>,
    /// How often `pending` has been sent.
    pub attempts: u32,
    /// Gave up retrying `pending`: an admin must retry or compensate.
    pub stuck: bool,
    /// The state last published in `SagaStateChanged` (None: none yet).
    pub announced: Option<SagaState>,
}

/// The saga's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long an admin has to decide, counted from the booking; never past the booking's start.
    pub approval_timeout: Duration,
    /// Wait before sending an unanswered command again; doubles per attempt, up to 16×.
    pub retry_after: Duration,
    /// Sends of one command before the saga is marked stuck.
    pub max_attempts: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            approval_timeout: Duration::hours(24),
            retry_after: Duration::seconds(30),
            max_attempts: 6,
        }
    }
}

impl Policy {
    /// When to send the pending command again after its `attempts`-th send at `sent_at`.
    pub fn next_retry(&self, sent_at: DateTime<Utc>, attempts: u32) -> DateTime<Utc> {
        sent_at + self.retry_after * 2i32.pow(attempts.saturating_sub(1).min(4))
    }
}

impl Saga {
    fn new(env: &Envelope) -> Self {
        Saga {
            saga_id: env.saga_id,
            booking_id: env.booking_id,
            state: SagaState::Started,
            booking_cancelled: false,
            booking: None,
            confirm_id: None,
            outcome: None,
            booking_version: 0,
            confirm_version: 0,
            version: 0,
            approval_deadline: None,
            expiry_requested: false,
            pending: None,
            attempts: 0,
            stuck: false,
            announced: None,
        }
    }

    /// True while the saga waits for an admin's decision.
    pub fn awaits_decision(&self) -> bool {
        matches!(self.state, SagaState::Started | SagaState::AwaitingApproval)
    }

    /// The message the saga waits for next, if any.
    pub fn awaiting(&self) -> Option<&'static str> {
        match self.state {
            SagaState::Started => Some("ConfirmRequested"),
            SagaState::AwaitingApproval => Some("ConfirmCompleted or ConfirmDenied"),
            SagaState::Confirming => Some("BookingConfirmed"),
            SagaState::Compensating if !self.booking_cancelled => Some("BookingCancelled"),
            SagaState::Compensating | SagaState::Cancelling => Some("ConfirmClosed"),
            SagaState::Completed | SagaState::Compensated | SagaState::Cancelled => None,
        }
    }
}

/// The result of applying a message: the new saga and the messages to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub saga: Saga,
    /// Commands and the saga's own events, in order.
    pub outputs: Vec<Body>,
    /// Why the message changed nothing, when it didn't.
    pub note: Option<String>,
}

/// A message that does not apply to this saga at all (no saga for it, or older than what the
/// saga has already seen).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Ignored(pub String);

/// The durable timer: once the approval deadline has passed with no decision, ask the confirm
/// service to expire the confirm (it alone knows whether a decision beat the deadline).
pub fn on_deadline(saga: &Saga, now: DateTime<Utc>) -> Option<Transition> {
    let due = saga.approval_deadline.is_some_and(|d| d <= now);
    if !due || !saga.awaits_decision() || saga.expiry_requested {
        return None;
    }
    let mut s = saga.clone();
    s.expiry_requested = true;
    let outputs = vec![Body::ExpireConfirm(ExpireConfirm {})];
    track_pending(&mut s, &outputs, false);
    Some(Transition {
        saga: s,
        outputs,
        note: Some("approval deadline passed".into()),
    })
}

/// The retry timer: the pending command's reply is overdue. Sends it again, or after
/// `policy.max_attempts` marks the saga stuck; either way the state the saga is held up in is
/// announced, if it was not yet.
pub fn on_retry_due(saga: &Saga, policy: &Policy) -> Option<Transition> {
    let pending = saga.pending.as_ref().filter(|_| !saga.stuck)?;
    let mut s = saga.clone();
    let mut outputs = Vec::new();
    let note = if s.attempts >= policy.max_attempts {
        s.stuck = true;
        format!(
            "stuck: no reply to {} after {} attempts",
            pending.type_name(),
            s.attempts
        )
    } else {
        s.attempts += 1;
        outputs.push(pending.clone());
        format!("attempt {} of {}", s.attempts, pending.type_name())
    };
    announce(&mut s, &mut outputs);
    Some(Transition {
        saga: s,
        outputs,
        note: Some(note),
    })
}

/// Why an admin operation does not apply to a saga.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotApplicable(pub String);

/// Admin: send the pending command again now, starting a fresh round of attempts.
pub fn retry(saga: &Saga) -> Result<Transition, NotApplicable> {
    let pending = saga.pending.clone().ok_or_else(|| {
        NotApplicable(format!(
            "the saga is {} and waits on no command",
            saga.state.as_str()
        ))
    })?;
    let mut s = saga.clone();
    let outputs = vec![pending];
    track_pending(&mut s, &outputs, false);
    Ok(Transition {
        saga: s,
        outputs,
        note: Some("retried by an admin".into()),
    })
}

/// Admin: give up on the booking and undo it like a denial (the booking is cancelled, the
/// confirm closed). A saga already compensating or cancelling is retried instead.
pub fn compensate(saga: &Saga) -> Result<Transition, NotApplicable> {
    use SagaState::*;
    match saga.state {
        Started | AwaitingApproval | Confirming | Completed => {
            let mut s = saga.clone();
            s.state = Compensating;
            s.booking_cancelled = false;
            s.outcome = Some("compensated by an admin".into());
            let mut outputs = vec![Body::CancelBooking(CancelBooking {
                reason: CancelReason::Denied,
                detail: Some("compensated by an admin".into()),
            })];
            track_pending(&mut s, &outputs, true);
            announce(&mut s, &mut outputs);
            Ok(Transition {
                saga: s,
                outputs,
                note: Some("compensation started by an admin".into()),
            })
        }
        Compensating | Cancelling => retry(saga),
        Compensated | Cancelled => Err(NotApplicable(format!(
            "the saga is already {}",
            saga.state.as_str()
        ))),
    }
}

/// Publishes the saga's state unless it was the last one published; `previousState` is the
/// state published before, so a reader of the events sees an unbroken chain.
fn announce(s: &mut Saga, outputs: &mut Vec<Body>) {
    if s.announced == Some(s.state) {
        return;
    }
    outputs.push(Body::SagaStateChanged(SagaStateChanged {
        state: s.state.as_str().into(),
        previous_state: s.announced.map(|a| a.as_str().into()),
    }));
    s.announced = Some(s.state);
}

/// After a step: the last command sent becomes the pending one (first attempt); a step that
/// moved the saga without sending a command means the awaited reply came.
fn track_pending(s: &mut Saga, outputs: &[Body], state_changed: bool) {
    let command = outputs.iter().rev().find(|b| {
        matches!(
            b,
            Body::RequestConfirm(_)
                | Body::DeleteConfirm(_)
                | Body::ExpireConfirm(_)
                | Body::ConfirmBooking(_)
                | Body::CancelBooking(_)
        )
    });
    if let Some(command) = command {
        s.pending = Some(command.clone());
        s.attempts = 1;
        s.stuck = false;
    } else if state_changed {
        s.pending = None;
        s.attempts = 0;
        s.stuck = false;
    }
}

/// Applies `env` to `saga` (None: no saga for this booking yet).
pub fn apply(saga: Option<&Saga>, env: &Envelope, policy: &Policy) -> Result<Transition, Ignored> {
    use SagaState::*;

    let mut s = match (saga, &env.body) {
        (Some(s), _) => s.clone(),
        (None, Body::BookingCreated(_)) => Saga::new(env),
        // The owner cancelled so fast that the cancel overtook the creation.
        (None, Body::BookingCancelled(c)) if c.reason == CancelReason::UserCancelled => {
            Saga::new(env)
        }
        (None, _) => return Err(Ignored(format!("no saga for booking {}", env.booking_id))),
    };
    let before = saga.map(|s| s.state);

    // Per-source ordering: a message older than what was applied from its source is stale.
    match &env.body {
        Body::BookingCreated(_) | Body::BookingConfirmed(_) | Body::BookingCancelled(_) => {
            if env.version <= s.booking_version {
                return Err(Ignored(format!(
                    "stale booking event v{} (have v{})",
                    env.version, s.booking_version
                )));
            }
            s.booking_version = env.version;
        }
        Body::ConfirmRequested(_)
        | Body::ConfirmCompleted(_)
        | Body::ConfirmDenied(_)
        | Body::ConfirmClosed(_)
        | Body::ConfirmExpired(_) => {
            if env.version <= s.confirm_version {
                return Err(Ignored(format!(
                    "stale confirm event v{} (have v{})",
                    env.version, s.confirm_version
                )));
            }
            s.confirm_version = env.version;
        }
        other => {
            return Err(Ignored(format!(
                "{} is not an input of the saga",
                other.type_name()
            )))
        }
    }

    let mut outputs = Vec::new();
    let mut note = None;
    match (&env.body, s.state) {
        (Body::BookingCreated(b), _) if before.is_none() => {
            let deadline = (env.occurred_at + policy.approval_timeout).min(b.use_start_dtm);
            s.approval_deadline = Some(deadline);
            s.booking = Some(BookingInfo {
                room_id: b.room_id,
                booking_user_id: b.booking_user_id.clone(),
                use_start_dtm: b.use_start_dtm,
                use_end_dtm: b.use_end_dtm,
            });
            outputs.push(Body::RequestConfirm(RequestConfirm {
                room_id: b.room_id,
                booking_user_id: b.booking_user_id.clone(),
                use_start_dtm: b.use_start_dtm,
                use_end_dtm: b.use_end_dtm,
                approval_deadline: deadline,
            }));
        }
        (Body::ConfirmRequested(c), Started) => {
            s.confirm_id = Some(c.confirm_id);
            s.state = AwaitingApproval;
        }
        (Body::ConfirmCompleted(c), Started | AwaitingApproval) => {
            s.confirm_id = Some(c.confirm_id);
            s.state = Confirming;
            outputs.push(Body::ConfirmBooking(ConfirmBooking {}));
        }
        (Body::ConfirmDenied(c), Started | AwaitingApproval) => {
            s.confirm_id = Some(c.confirm_id);
            s.state = Compensating;
            s.outcome = Some(match &c.reason {
                Some(r) => format!("denied by {}: {r}", c.confirm_user_id),
                None => format!("denied by {}", c.confirm_user_id),
            });
            outputs.push(Body::CancelBooking(CancelBooking {
                reason: CancelReason::Denied,
                detail: c.reason.clone(),
            }));
        }
        (Body::ConfirmExpired(c), Started | AwaitingApproval) => {
            s.confirm_id = Some(c.confirm_id);
            s.state = Compensating;
            s.outcome = Some("no decision before the approval deadline".into());
            outputs.push(Body::CancelBooking(CancelBooking {
                reason: CancelReason::Expired,
                detail: None,
            }));
        }
        (Body::BookingConfirmed(_), Confirming) => s.state = Completed,
        (Body::BookingCancelled(c), Compensating) if !s.booking_cancelled => {
            if c.reason == CancelReason::UserCancelled {
                // The owner's cancel reached the booking before the compensation did.
                s.state = Cancelling;
                s.outcome = Some("cancelled by the owner".into());
            } else {
                s.booking_cancelled = true;
            }
            outputs.push(delete_confirm(c.reason));
        }
        (Body::BookingCancelled(c), Started | AwaitingApproval | Confirming | Completed)
            if c.reason == CancelReason::UserCancelled =>
        {
            s.state = Cancelling;
            s.outcome = Some("cancelled by the owner".into());
            outputs.push(delete_confirm(c.reason));
        }
        (Body::ConfirmClosed(_), Cancelling) => s.state = Cancelled,
        (Body::ConfirmClosed(_), Compensating) if s.booking_cancelled => s.state = Compensated,
        (body, state) => {
            note = Some(format!(
                "{} has no effect in state {}",
                body.type_name(),
                state.as_str()
            ));
        }
    }

    let moved = before != Some(s.state);
    track_pending(&mut s, &outputs, moved);
    if moved && s.state.is_announced_at_once() {
        announce(&mut s, &mut outputs);
    }
    Ok(Transition {
        saga: s,
        outputs,
        note,
    })
}

fn delete_confirm(reason: CancelReason) -> Body {
    Body::DeleteConfirm(DeleteConfirm {
        reason: reason.as_str().into(),
    })
}

#[cfg(test)]
#[path = "saga_tests.rs"]
mod tests;
