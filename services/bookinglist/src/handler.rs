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
        let env = &msg.envelope;
        if !projection::is_event(&env.body) {
            tracing::warn!(
                kind = env.body.type_name(),
                subject = %msg.subject,
                "not an event; skipped"
            );
            return Ok(());
        }
        let claim = store::claim(tx, 1).await?;
        for table in claim.tables() {
            store::project(tx, table, env, claim.seq).await?;
        }
        Ok(())
    }
}
