//! The orchestrator's commands to the confirm service: `RequestConfirm` and `DeleteConfirm`.

use platform::{
    consumer::{HandleError, Handler, Incoming},
    contract::Body,
    db::Tx,
};

use crate::confirms;

pub struct ConfirmCommands;

impl Handler for ConfirmCommands {
    async fn handle(&self, tx: &mut Tx, msg: &Incoming) -> Result<(), HandleError> {
        let env = &msg.envelope;
        match &env.body {
            Body::RequestConfirm(req) => {
                confirms::on_request(tx, env.booking_id, env.saga_id, req, &msg.trace).await?
            }
            Body::ExpireConfirm(_) => {
                confirms::on_expire(tx, env.booking_id, env.saga_id, &msg.trace).await?
            }
            Body::DeleteConfirm(del) => {
                confirms::on_delete(tx, env.booking_id, env.saga_id, &del.reason, &msg.trace)
                    .await?
            }
            other => {
                return Err(HandleError::Park(format!(
                    "{} is not a confirm command",
                    other.type_name()
                )))
            }
        }
        Ok(())
    }
}
