//! The orchestrator's commands to the booking service: `ConfirmBooking` and `CancelBooking`.

use platform::{
    consumer::{HandleError, Handler, Incoming},
    contract::Body,
    db::Tx,
};

use crate::bookings::{self, BookingError};

pub struct BookingCommands;

impl Handler for BookingCommands {
    async fn handle(&self, tx: &mut Tx, msg: &Incoming) -> Result<(), HandleError> {
        let id = msg.envelope.booking_id;
        let result = match &msg.envelope.body {
            Body::ConfirmBooking(_) => bookings::on_confirm_command(tx, id, &msg.trace).await,
            Body::CancelBooking(c) => {
                bookings::on_cancel_command(tx, id, c.reason, c.detail.clone(), &msg.trace).await
            }
            other => {
                return Err(HandleError::Park(format!(
                    "{} is not a booking command",
                    other.type_name()
                )))
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(BookingError::NotFound(id)) => {
                Err(HandleError::Park(format!("unknown booking {id}")))
            }
            Err(BookingError::Database(e)) => Err(e.into()),
            Err(other) => Err(HandleError::Retry(anyhow::anyhow!(other))),
        }
    }
}
