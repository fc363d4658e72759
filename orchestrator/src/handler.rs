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
        let env = &msg.envelope;
        let stored = store::load(&mut **tx, env.booking_id).await?;
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
                persist(
                    tx,
                    stored.as_ref(),
                    transition,
                    step,
                    env.correlation_id,
                    &msg.trace,
                    when,
                )
                .await
            }
            Err(ignored) => {
                tracing::info!(reason = %ignored, "message ignored by the saga");
                if let Some(s) = &stored {
                    let step = cause(s.saga.state, Some(format!("ignored: {ignored}")));
                    store::record_steps(tx, env.booking_id, &[step]).await?;
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
    if !store::save(tx, &saga, stored.map(|s| s.revision), next_retry_at).await? {
        return Err(HandleError::Retry(anyhow::anyhow!(
            "saga {} changed concurrently",
            saga.booking_id
        )));
    }
    outbox::enqueue_all(tx, &outputs, trace).await?;
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
    store::record_steps(tx, saga.booking_id, &steps).await?;
    if saga.state.is_settled() && !before.is_some_and(SagaState::is_settled) {
        if let Some(s) = stored {
            let took = (when.now - s.created_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!("roombook_saga_duration_seconds", "state" => saga.state.as_str())
                .record(took);
        }
    }
    if before != Some(saga.state) {
        tracing::info!(
            booking_id = %saga.booking_id,
            from = before.map_or("-", SagaState::as_str),
            to = saga.state.as_str(),
            "saga moved"
        );
    }
    Ok(())
}
