//! Applies each participant event to its saga, inside the consumer's transaction: load the saga,
//! run the state machine, save it (guarded by its revision), record the timeline and put the
//! resulting commands and saga events in the outbox — all committed together.

use chrono::Utc;
use platform::{
    consumer::{HandleError, Handler, Incoming},
    contract::Envelope,
    db::Tx,
    outbox,
};

use crate::{
    saga::{self, SagaState},
    store::{self, Step},
};

pub struct SagaHandler;

impl Handler for SagaHandler {
    async fn handle(&self, tx: &mut Tx, msg: &Incoming) -> Result<(), HandleError> {
        let env = &msg.envelope;
        let stored = store::load(&mut **tx, env.booking_id).await?;
        let step_in = |state: &str, note: Option<String>| Step {
            at: Utc::now(),
            direction: "in".into(),
            message_type: env.body.type_name().into(),
            message_id: env.message_id.to_string(),
            state: state.into(),
            note,
        };
        let transition = match saga::apply(stored.as_ref().map(|s| &s.saga), env) {
            Ok(t) => t,
            Err(ignored) => {
                tracing::info!(reason = %ignored, "message ignored by the saga");
                if let Some(s) = &stored {
                    let step = step_in(s.saga.state.as_str(), Some(format!("ignored: {ignored}")));
                    store::record_step(tx, env.booking_id, &step).await?;
                }
                return Ok(());
            }
        };
        let mut saga = transition.saga;
        let before = stored.as_ref().map(|s| s.saga.state);
        let mut outputs = Vec::with_capacity(transition.outputs.len());
        for body in transition.outputs {
            saga.version += 1;
            let mut out = Envelope::new(saga.booking_id, saga.saga_id, saga.version, body);
            out.correlation_id = env.correlation_id;
            outputs.push(out);
        }
        if !store::save(tx, &saga, stored.as_ref().map(|s| s.revision)).await? {
            return Err(HandleError::Retry(anyhow::anyhow!(
                "saga {} changed concurrently",
                saga.booking_id
            )));
        }
        store::record_step(
            tx,
            env.booking_id,
            &step_in(saga.state.as_str(), transition.note),
        )
        .await?;
        for out in &outputs {
            outbox::enqueue(tx, out, &msg.trace).await?;
            let step = Step {
                at: Utc::now(),
                direction: "out".into(),
                message_type: out.body.type_name().into(),
                message_id: out.message_id.to_string(),
                state: saga.state.as_str().into(),
                note: None,
            };
            store::record_step(tx, env.booking_id, &step).await?;
        }
        if before != Some(saga.state) {
            tracing::info!(
                from = before.map_or("-", SagaState::as_str),
                to = saga.state.as_str(),
                "saga moved"
            );
        }
        Ok(())
    }
}
