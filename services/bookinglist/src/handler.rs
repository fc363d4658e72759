//! The live projection: the durable `bookinglist` consumer folds every event into its booking's
//! row, inside the transaction in which the platform records the message as processed.

use platform::{
    consumer::{HandleError, Handler, Incoming},
    db::Tx,
};

use crate::{projection, store};

pub struct Projector;

impl Handler for Projector {
    async fn handle(&self, tx: &mut Tx, msg: &Incoming) -> Result<(), HandleError> {
        self.handle_batch(tx, &[msg]).await
    }

    /// One change-number claim, one read of the rows and a few multi-row writes for the whole
    /// batch, instead of a claim, a read and a write per event.
    async fn handle_batch(&self, tx: &mut Tx, msgs: &[&Incoming]) -> Result<(), HandleError> {
        let mut events = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let env = &msg.envelope;
            if projection::is_event(&env.body) {
                events.push(env);
            } else {
                tracing::warn!(
                    kind = env.body.type_name(),
                    subject = %msg.subject,
                    message_id = %env.message_id,
                    "not an event; skipped"
                );
            }
        }
        if events.is_empty() {
            return Ok(());
        }
        let count = i64::try_from(store::distinct_bookings(&events).len()).unwrap_or(i64::MAX);
        let claim = store::claim(tx, count).await?;
        for table in claim.tables() {
            store::project_all(tx, table, &events, claim.seq - count + 1).await?;
        }
        Ok(())
    }
}
