//! Applies each participant event to its saga, inside the consumer's transaction: load the saga,
//! run the state machine, save it (guarded by its revision), record the timeline and put the
//! resulting commands and saga events in the outbox — all committed together.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use platform::{
    clock::Clock,
    consumer::{HandleError, Handler, Incoming},
    contract::{Body, Envelope},
    db::Tx,
    outbox,
    trace::TraceParent,
};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{
    saga::{self, Policy, SagaState, Transition},
    store::{self, Step, StoredSaga},
};

pub struct SagaHandler {
    pub policy: Policy,
    pub clock: Arc<dyn Clock>,
}

impl Handler for SagaHandler {
    async fn handle(&self, tx: &mut Tx, msg: &Incoming) -> Result<(), HandleError> {
        let stored = store::load(&mut *tx, msg.envelope.booking_id).await?;
        self.apply(tx, msg, stored, Saving::Now).await
    }

    /// Reads the sagas of the whole batch in one statement and writes them back together at
    /// its end (one insert for new sagas, one update for the rest). A booking's later messages
    /// in the batch see its saga as the earlier ones left it.
    async fn handle_batch(&self, tx: &mut Tx, msgs: &[&Incoming]) -> Result<(), HandleError> {
        let mut bookings: Vec<Uuid> = msgs.iter().map(|m| m.envelope.booking_id).collect();
        bookings.sort();
        bookings.dedup();
        let loaded = store::load_many(tx, &bookings).await?;
        let mut saves = store::HeldSaves::default();
        for msg in msgs {
            let booking = msg.envelope.booking_id;
            // As stored, until a message of the batch has changed it (one the saga ignores
            // changes nothing).
            let stored = saves
                .latest(booking)
                .or_else(|| loaded.get(&booking).cloned());
            self.apply(tx, msg, stored, Saving::Held(&mut saves))
                .instrument(msg.span())
                .await?;
        }
        if saves.write(tx).await? {
            Ok(())
        } else {
            Err(changed_concurrently("a saga of the batch"))
        }
    }
}

/// When [`persist`] writes the saga: at once, or with the rest of a consumer batch.
enum Saving<'a> {
    Now,
    Held(&'a mut store::HeldSaves),
}

fn changed_concurrently(what: impl std::fmt::Display) -> HandleError {
    HandleError::Retry(anyhow::anyhow!("{what} changed concurrently"))
}

impl SagaHandler {
    /// Runs the state machine on `msg` against the saga as `stored` (None: no saga yet).
    async fn apply(
        &self,
        tx: &mut Tx,
        msg: &Incoming,
        stored: Option<StoredSaga>,
        saving: Saving<'_>,
    ) -> Result<(), HandleError> {
        let env = &msg.envelope;
        let cause = |state: SagaState, note: Option<String>| Step {
            at: platform::time::now(),
            direction: "in".into(),
            message_type: env.body.type_name().into(),
            message_id: env.message_id.to_string(),
            state: state.as_str().into(),
            note,
        };
        match saga::apply(stored.as_ref().map(|s| &s.saga), env, &self.policy) {
            Ok(transition) => {
                let step = cause(transition.saga.state, transition.note.clone());
                let when = Schedule {
                    now: self.clock.now(),
                    policy: &self.policy,
                };
                let output = Output {
                    correlation_id: env.correlation_id,
                    trace: &msg.trace,
                    when,
                };
                record(tx, stored.as_ref(), transition, step, output, saving).await
            }
            Err(ignored) => {
                tracing::info!(reason = %ignored, "message ignored by the saga");
                if let Some(s) = &stored {
                    let step = cause(s.saga.state, Some(format!("ignored: {ignored}")));
                    store::record_steps(tx, env.booking_id, &[step]);
                }
                Ok(())
            }
        }
    }
}

/// The time of a step and the policy that schedules the next retry of its pending command.
#[derive(Clone, Copy)]
pub struct Schedule<'a> {
    pub now: DateTime<Utc>,
    pub policy: &'a Policy,
}

/// Saves a transition with its cause and outputs in the caller's transaction. Fails (for a
/// retry) if the saga changed since it was loaded.
pub async fn persist(
    tx: &mut Tx,
    stored: Option<&StoredSaga>,
    transition: Transition,
    cause: Step,
    correlation_id: Uuid,
    trace: &TraceParent,
    when: Schedule<'_>,
) -> Result<(), HandleError> {
    let output = Output {
        correlation_id,
        trace,
        when,
    };
    record(tx, stored, transition, cause, output, Saving::Now).await
}

/// What the messages a transition sends carry, and when it happened.
struct Output<'a> {
    correlation_id: Uuid,
    trace: &'a TraceParent,
    when: Schedule<'a>,
}

/// [`persist`], with the saga written as `saving` says.
async fn record(
    tx: &mut Tx,
    stored: Option<&StoredSaga>,
    transition: Transition,
    cause: Step,
    output: Output<'_>,
    saving: Saving<'_>,
) -> Result<(), HandleError> {
    let Output {
        correlation_id,
        trace,
        when,
    } = output;
    let mut saga = transition.saga;
    let before = stored.map(|s| s.saga.state);
    let mut outputs = Vec::with_capacity(transition.outputs.len());
    for body in transition.outputs {
        saga.version += 1;
        let mut out = Envelope::new(saga.booking_id, saga.saga_id, saga.version, body);
        out.correlation_id = correlation_id;
        outputs.push(out);
    }
    // A command sent now is retried later; an unchanged pending command keeps its schedule.
    let sent_command = outputs
        .iter()
        .any(|o| !matches!(o.body, Body::SagaStateChanged(_)));
    let next_retry_at = match (&saga.pending, saga.stuck) {
        (Some(_), false) if sent_command => Some(when.policy.next_retry(when.now, saga.attempts)),
        (Some(_), false) => stored.and_then(|s| s.next_retry_at),
        _ => None,
    };
    match saving {
        Saving::Now => {
            if !store::save(tx, &saga, stored, next_retry_at).await? {
                return Err(changed_concurrently(format_args!(
                    "saga {}",
                    saga.booking_id
                )));
            }
        }
        Saving::Held(saves) => saves.hold(&saga, stored, next_retry_at),
    }
    outbox::enqueue_all(tx, &outputs, trace);
    let mut steps = Vec::with_capacity(1 + outputs.len());
    steps.push(cause);
    steps.extend(outputs.iter().map(|out| Step {
        at: platform::time::now(),
        direction: "out".into(),
        message_type: out.body.type_name().into(),
        message_id: out.message_id.to_string(),
        state: saga.state.as_str().into(),
        note: None,
    }));
    store::record_steps(tx, saga.booking_id, &steps);
    if saga.state.is_settled() && !before.is_some_and(SagaState::is_settled) {
        if let Some(s) = stored {
            let took = (when.now - s.created_at).num_milliseconds().max(0) as f64 / 1000.0;
            let state = saga.state.as_str();
            tx.on_commit(move || {
                metrics::histogram!("roombook_saga_duration_seconds", "state" => state)
                    .record(took);
            });
        }
    }
    if before != Some(saga.state) {
        // Logged once stored, in the span of the message that moved it.
        let (span, booking_id) = (tracing::Span::current(), saga.booking_id);
        let (from, to) = (before.map_or("-", SagaState::as_str), saga.state.as_str());
        tx.on_commit(move || {
            span.in_scope(|| tracing::info!(%booking_id, from, to, "saga moved"));
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use platform::{
        clock::ManualClock,
        contract::*,
        db::Db,
        testkit::{TestBackend, TestDatabases},
        trace::TraceParent,
    };
    use sqlx::Row as _;

    use super::*;

    fn incoming(env: Envelope) -> Incoming {
        Incoming {
            subject: platform::topology::subject_for(&env),
            trace: TraceParent::continue_or_start(None),
            delivered: 1,
            envelope: env,
        }
    }

    /// A booking's events as its participants publish them on the way to CONFIRMED.
    fn approved_path(booking: Uuid) -> Vec<Envelope> {
        let at = |h| Utc.with_ymd_and_hms(2030, 5, 1, h, 0, 0).unwrap();
        let confirm_id = Uuid::new_v4();
        let env = |version, body| Envelope::new(booking, booking, version, body);
        vec![
            env(
                1,
                Body::BookingCreated(BookingCreated {
                    room_id: 101,
                    booking_user_id: "alice".into(),
                    booking_user_email: None,
                    use_start_dtm: at(9),
                    use_end_dtm: at(10),
                }),
            ),
            env(
                1,
                Body::ConfirmRequested(ConfirmRequested {
                    confirm_id,
                    room_id: 101,
                    booking_user_id: "alice".into(),
                    use_start_dtm: at(9),
                    use_end_dtm: at(10),
                    approval_deadline: at(8),
                }),
            ),
            env(
                2,
                Body::ConfirmCompleted(ConfirmDecided {
                    confirm_id,
                    confirm_user_id: "admin".into(),
                    reason: None,
                }),
            ),
            env(2, Body::BookingConfirmed(BookingConfirmed {})),
        ]
    }

    /// What a booking's saga became: the saga, its timeline and the types it put in the outbox.
    async fn outcome(db: &Db, booking: Uuid) -> (saga::Saga, Vec<String>, Vec<String>) {
        let saga = store::find(db, booking).await.unwrap().unwrap().saga;
        let timeline = store::timeline(db, booking)
            .await
            .unwrap()
            .into_iter()
            .map(|s| {
                format!(
                    "{} {} {} {:?}",
                    s.direction, s.message_type, s.state, s.note
                )
            })
            .collect();
        let outbox = sqlx::query("SELECT subject FROM outbox WHERE booking_id = $1 ORDER BY id")
            .bind(booking.to_string())
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| Body::type_of_subject(&r.get::<String, _>(0)).to_string())
            .collect();
        (saga, timeline, outbox)
    }

    /// Applies `messages` one at a time, each in its own transaction.
    async fn one_at_a_time(handler: &SagaHandler, db: &Db, messages: &[Incoming]) {
        for msg in messages {
            let mut tx = db.begin().await.unwrap();
            handler.handle(&mut tx, msg).await.unwrap();
            tx.commit().await.unwrap();
        }
    }

    /// Applies `messages` as one consumer batch.
    async fn as_a_batch(handler: &SagaHandler, db: &Db, messages: &[Incoming]) {
        let mut tx = db.begin().await.unwrap();
        let refs: Vec<&Incoming> = messages.iter().collect();
        handler.handle_batch(&mut tx, &refs).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn a_batch_moves_each_saga_as_its_messages_one_at_a_time_do(backend: TestBackend) {
        let dbs = TestDatabases::new(backend);
        let connect = |name: &'static str| {
            let dbs = &dbs;
            async move {
                Db::connect(&dbs.create(name).await, crate::migrations())
                    .await
                    .unwrap()
            }
        };
        let (one_by_one, batched) = (connect("one").await, connect("batch").await);
        let clock = ManualClock::starting_at(Utc.with_ymd_and_hms(2030, 5, 1, 7, 0, 0).unwrap());
        let handler = SagaHandler {
            policy: Policy::default(),
            clock: Arc::new(clock),
        };
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (path_a, path_b) = (approved_path(a), approved_path(b));
        // Interleaved; all four of a's messages and the first two of b's in one batch, so a
        // booking's later messages build on what its earlier ones did within the batch; then
        // the rest of b's, which finds its saga stored, after a message it ignores.
        let batches: Vec<Vec<Incoming>> = vec![
            vec![
                &path_a[0], &path_b[0], &path_a[1], &path_a[2], &path_b[1], &path_a[3],
            ],
            // b's request again (the saga passes over it), then the rest of b's path.
            vec![&path_b[1], &path_b[2], &path_b[3]],
        ]
        .into_iter()
        .map(|batch| batch.into_iter().map(|e| incoming(e.clone())).collect())
        .collect();

        for batch in &batches {
            one_at_a_time(&handler, &one_by_one, batch).await;
            as_a_batch(&handler, &batched, batch).await;
        }

        for booking in [a, b] {
            let expected = outcome(&one_by_one, booking).await;
            assert_eq!(outcome(&batched, booking).await, expected);
            assert_eq!(expected.0.state, SagaState::Completed);
        }
        // Each saga written once per batch it had messages in.
        let revisions: Vec<i64> = sqlx::query_scalar(
            "SELECT revision FROM sagas WHERE booking_id IN ($1, $2) ORDER BY booking_id = $2",
        )
        .bind(a.to_string())
        .bind(b.to_string())
        .fetch_all(&batched.pool)
        .await
        .unwrap();
        assert_eq!(revisions, [1, 2]);
    }

    async fn held_saves_lose_to_a_write_made_since_their_sagas_were_read(backend: TestBackend) {
        let dbs = TestDatabases::new(backend);
        let db = Db::connect(&dbs.create("sagas").await, crate::migrations())
            .await
            .unwrap();
        let handler = SagaHandler {
            policy: Policy::default(),
            clock: Arc::new(ManualClock::starting_at(
                Utc.with_ymd_and_hms(2030, 5, 1, 7, 0, 0).unwrap(),
            )),
        };
        let a = Uuid::new_v4();
        one_at_a_time(&handler, &db, &[incoming(approved_path(a)[0].clone())]).await;
        let before = outcome(&db, a).await;

        let mut tx = db.begin().await.unwrap();
        let stored = store::load(&mut tx, a).await.unwrap().unwrap();
        let mut moved = stored.saga.clone();
        moved.version += 1;
        // Someone else writes the saga after the batch read it.
        sqlx::query("UPDATE sagas SET revision = revision + 1 WHERE booking_id = $1")
            .bind(a.to_string())
            .execute(&mut tx)
            .await
            .unwrap();
        let mut saves = store::HeldSaves::default();
        saves.hold(&moved, Some(&stored), None);
        assert!(
            !saves.write(&mut tx).await.unwrap(),
            "an update of a stale read"
        );
        // Nor may a saga held as new replace one that exists.
        let mut saves = store::HeldSaves::default();
        saves.hold(&moved, None, None);
        assert!(
            !saves.write(&mut tx).await.unwrap(),
            "an insert over a saga"
        );
        tx.rollback().await.unwrap();
        assert_eq!(outcome(&db, a).await, before);

        // Read now, the same save goes through.
        let mut tx = db.begin().await.unwrap();
        let stored = store::load(&mut tx, a).await.unwrap().unwrap();
        let mut saves = store::HeldSaves::default();
        saves.hold(&moved, Some(&stored), None);
        assert!(saves.write(&mut tx).await.unwrap());
        tx.commit().await.unwrap();
        let after = store::load(&db.pool, a).await.unwrap().unwrap();
        assert_eq!(after.saga.version, moved.version);
        assert_eq!(after.revision, stored.revision + 1);
    }

    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $(#[tokio::test]
                async fn $name() {
                    super::$name(platform::testkit::TestBackend::Sqlite).await;
                })*
            }
            mod postgres {
                $(#[tokio::test]
                async fn $name() {
                    super::$name(platform::testkit::TestBackend::Postgres).await;
                })*
            }
        };
    }

    on_both_backends!(
        a_batch_moves_each_saga_as_its_messages_one_at_a_time_do,
        held_saves_lose_to_a_write_made_since_their_sagas_were_read,
    );
}
