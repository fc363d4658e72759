//! The orchestrator's commands to the confirm service: `RequestConfirm` and `DeleteConfirm`.

use platform::{
    consumer::{HandleError, Handler, Incoming},
    contract::Body,
    db::Tx,
};
use tracing::Instrument as _;

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

    /// Runs of `RequestConfirm` for different bookings (what most batches hold: one per new
    /// saga) are inserted in one statement; every other command, and a request for a booking
    /// already in the run, is applied on its own, in order.
    async fn handle_batch(&self, tx: &mut Tx, msgs: &[&Incoming]) -> Result<(), HandleError> {
        let mut run: Vec<&Incoming> = Vec::new();
        for &msg in msgs {
            let env = &msg.envelope;
            let joins = matches!(env.body, Body::RequestConfirm(_))
                && !run.iter().any(|m| m.envelope.booking_id == env.booking_id);
            if !joins {
                self.apply_requests(tx, &run).await?;
                run.clear();
            }
            if matches!(env.body, Body::RequestConfirm(_)) {
                run.push(msg);
            } else {
                self.handle(tx, msg).instrument(msg.span()).await?;
            }
        }
        self.apply_requests(tx, &run).await
    }
}

impl ConfirmCommands {
    /// `RequestConfirm` messages for different bookings, together.
    async fn apply_requests(&self, tx: &mut Tx, run: &[&Incoming]) -> Result<(), HandleError> {
        if let [msg] = run {
            return self.handle(tx, msg).instrument(msg.span()).await;
        }
        let requests: Vec<_> = run
            .iter()
            .filter_map(|m| match &m.envelope.body {
                Body::RequestConfirm(req) => {
                    Some((m.envelope.booking_id, m.envelope.saga_id, req, &m.trace))
                }
                _ => None,
            })
            .collect();
        confirms::on_requests(tx, &requests).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use platform::{
        contract::{DeleteConfirm, Envelope, RequestConfirm},
        db::Db,
        testkit::{outbox_event_types, TestBackend, TestDatabases},
        trace::TraceParent,
    };
    use uuid::Uuid;

    use super::*;

    fn incoming(booking: Uuid, body: Body) -> Incoming {
        Incoming {
            envelope: Envelope::new(booking, booking, 1, body),
            subject: String::new(),
            trace: TraceParent::new_root(),
            delivered: 1,
        }
    }

    fn request() -> Body {
        let start = platform::time::now() + chrono::Duration::hours(2);
        Body::RequestConfirm(RequestConfirm {
            room_id: 101,
            booking_user_id: "alice".into(),
            use_start_dtm: start,
            use_end_dtm: start + chrono::Duration::hours(1),
            approval_deadline: start,
        })
    }

    /// Each booking's confirm (status, closed, version), the types of its events, and how many
    /// of them are distinct messages (an answer to a repeated request repeats the latest).
    async fn outcome(
        db: &Db,
        booking: Uuid,
    ) -> (Option<(&'static str, bool, i64)>, Vec<String>, i64) {
        let confirm = confirms::get_by_booking(&db.pool, booking)
            .await
            .unwrap()
            .map(|c| (c.status.as_str(), c.closed, c.version));
        let distinct: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT message_id) FROM outbox WHERE booking_id = $1",
        )
        .bind(booking.to_string())
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (
            confirm,
            outbox_event_types(&db.pool, booking).await,
            distinct,
        )
    }

    async fn a_batch_of_commands_ends_as_they_do_one_at_a_time(backend: TestBackend) {
        let dbs = TestDatabases::new(backend);
        let mut dbs_ = Vec::new();
        for name in ["confirm_batch", "confirm_single"] {
            dbs_.push(
                Db::connect(&dbs.create(name).await, crate::migrations())
                    .await
                    .unwrap(),
            );
        }
        let (batched, single) = (&dbs_[0], &dbs_[1]);
        let [a, b, c, d] = [(); 4].map(|()| Uuid::now_v7());
        let delete = || {
            Body::DeleteConfirm(DeleteConfirm {
                reason: "CANCELLED".into(),
            })
        };
        // `c` has its request already; `a` is requested and closed within the batch; `d` is
        // requested twice in it.
        let earlier = incoming(c, request());
        let msgs = [
            incoming(a, request()),
            incoming(b, request()),
            incoming(a, delete()),
            incoming(c, request()),
            incoming(d, request()),
            incoming(d, request()),
        ];
        let msgs: Vec<&Incoming> = msgs.iter().collect();
        for db in [batched, single] {
            let mut tx = db.begin().await.unwrap();
            ConfirmCommands.handle(&mut tx, &earlier).await.unwrap();
            tx.commit().await.unwrap();
        }

        let mut tx = batched.begin().await.unwrap();
        ConfirmCommands.handle_batch(&mut tx, &msgs).await.unwrap();
        tx.commit().await.unwrap();
        let mut tx = single.begin().await.unwrap();
        for msg in &msgs {
            ConfirmCommands.handle(&mut tx, msg).await.unwrap();
        }
        tx.commit().await.unwrap();

        for booking in [a, b, c, d] {
            assert_eq!(
                outcome(batched, booking).await,
                outcome(single, booking).await
            );
        }
        let requested = || "ConfirmRequested".to_string();
        assert_eq!(
            outcome(batched, a).await,
            (
                Some(("BOOKED", true, 2)),
                vec![requested(), "ConfirmClosed".into()],
                2
            )
        );
        for repeated in [c, d] {
            assert_eq!(
                outcome(batched, repeated).await,
                (
                    Some(("BOOKED", false, 1)),
                    vec![requested(), requested()],
                    1
                )
            );
        }
    }

    #[tokio::test]
    async fn a_batch_of_commands_ends_as_they_do_one_at_a_time_on_sqlite() {
        a_batch_of_commands_ends_as_they_do_one_at_a_time(TestBackend::Sqlite).await;
    }

    #[tokio::test]
    async fn a_batch_of_commands_ends_as_they_do_one_at_a_time_on_postgres() {
        a_batch_of_commands_ends_as_they_do_one_at_a_time(TestBackend::Postgres).await;
    }
}
