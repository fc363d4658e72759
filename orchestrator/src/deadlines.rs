//! The durable timer behind approval deadlines. Deadlines are stored with the sagas, so a
//! restart loses none: every tick, sagas whose deadline has passed without a decision get their
//! `ExpireConfirm` (once; the flag is saved with the saga, guarded by its revision, so two
//! replicas never both send it).

use std::{sync::Arc, time::Duration};

use platform::{
    clock::Clock, consumer::HandleError, db::Db, outbox::OutboxSignal, trace::TraceParent,
};
use tokio_util::sync::CancellationToken;

use crate::{handler, saga, store};

/// Checks for due deadlines every `interval` until `cancel` fires.
pub async fn run(
    db: Db,
    outbox: OutboxSignal,
    clock: Arc<dyn Clock>,
    interval: Duration,
    cancel: CancellationToken,
) {
    loop {
        match expire_due(&db, &outbox, clock.as_ref()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sagas = n, "approval deadlines passed"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "checking deadlines failed; will retry")
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Sends `ExpireConfirm` for every saga whose deadline has passed; returns how many.
pub async fn expire_due(
    db: &Db,
    outbox: &OutboxSignal,
    clock: &dyn Clock,
) -> anyhow::Result<usize> {
    let now = clock.now();
    let mut expired = 0;
    for booking_id in store::due_for_expiry(db, now, 256).await? {
        let mut tx = db.begin().await?;
        let Some(stored) = store::load(&mut *tx, booking_id).await? else {
            continue;
        };
        let Some(transition) = saga::on_deadline(&stored.saga, now) else {
            continue;
        };
        let cause = store::Step {
            at: now,
            direction: "timer".into(),
            message_type: "DeadlinePassed".into(),
            message_id: "-".into(),
            state: transition.saga.state.as_str().into(),
            note: transition.note.clone(),
        };
        let correlation = stored.saga.saga_id;
        match handler::persist(
            &mut tx,
            Some(&stored),
            transition,
            cause,
            correlation,
            &TraceParent::new_root(),
        )
        .await
        {
            Ok(()) => {
                tx.commit().await?;
                expired += 1;
            }
            // Another replica got there first; it sent the command.
            Err(HandleError::Retry(_)) => continue,
            Err(HandleError::Park(reason)) => anyhow::bail!(reason),
        }
    }
    if expired > 0 {
        outbox.notify();
    }
    Ok(expired)
}
