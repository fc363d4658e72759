//! The saga's durable timers. Deadlines and retry times are stored with the sagas, so a restart
//! loses none; every tick the orchestrator
//! - sends `ExpireConfirm` for sagas whose approval deadline passed without a decision (once:
//!   the flag is saved with the saga, guarded by its revision, so two replicas never both send it),
//! - sends again a command whose reply is overdue, or marks the saga stuck after the last attempt.

use std::{sync::Arc, time::Duration};

use platform::{
    clock::Clock, consumer::HandleError, db::Db, outbox::OutboxSignal, trace::TraceParent,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    handler::{self, Schedule},
    saga::{self, Policy, Saga, Transition},
    store,
};

/// Runs the timers every `interval` until `cancel` fires.
pub async fn run(
    db: Db,
    outbox: OutboxSignal,
    clock: Arc<dyn Clock>,
    policy: Policy,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut tick: u64 = 0;
    loop {
        if tick.is_multiple_of(5) {
            publish_saga_counts(&db).await;
        }
        tick += 1;
        let now = clock.now();
        let when = Schedule {
            now,
            policy: &policy,
        };
        let expired = fire(
            &db,
            store::due_for_expiry(&db, now, 256).await,
            "DeadlinePassed",
            when,
            |s| saga::on_deadline(s, now),
        )
        .await;
        let retried = fire(
            &db,
            store::due_for_retry(&db, now, 256).await,
            "RetryDue",
            when,
            |s| saga::on_retry_due(s, &policy),
        )
        .await;
        if expired + retried > 0 {
            tracing::info!(expired, retried, "saga timers fired");
            outbox.notify();
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Applies `step` to each due saga in its own transaction; returns how many moved.
async fn fire(
    db: &Db,
    due: Result<Vec<Uuid>, sqlx::Error>,
    timer: &str,
    when: Schedule<'_>,
    step: impl Fn(&Saga) -> Option<Transition>,
) -> usize {
    let due = match due {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, timer, "reading due timers failed; will retry");
            return 0;
        }
    };
    let mut fired = 0;
    for booking_id in due {
        match fire_one(db, booking_id, timer, when, &step).await {
            Ok(true) => fired += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), %booking_id, timer, "timer step failed; will retry")
            }
        }
    }
    fired
}

async fn fire_one(
    db: &Db,
    booking_id: Uuid,
    timer: &str,
    when: Schedule<'_>,
    step: &impl Fn(&Saga) -> Option<Transition>,
) -> anyhow::Result<bool> {
    let mut tx = db.begin().await?;
    let Some(stored) = store::load(&mut tx, booking_id).await? else {
        return Ok(false);
    };
    let Some(transition) = step(&stored.saga) else {
        return Ok(false);
    };
    let cause = store::Step {
        // When it fired in real time; `when.now` is the saga clock, which only decides deadlines.
        at: platform::time::now(),
        direction: "timer".into(),
        message_type: timer.into(),
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
        when,
    )
    .await
    {
        Ok(()) => {
            tx.commit().await?;
            Ok(true)
        }
        // Another replica moved the saga first; whatever is still due is seen next tick.
        Err(HandleError::Retry(_)) => Ok(false),
        Err(HandleError::Park(reason)) => anyhow::bail!(reason),
    }
}

/// Sets the `roombook_sagas{state}` gauges, one per state a saga passes through before it
/// settles (settled sagas are counted as they settle, by `roombook_saga_duration_seconds`).
async fn publish_saga_counts(db: &Db) {
    match store::count_in_flight(db).await {
        Ok(counts) => {
            for state in saga::SagaState::in_flight() {
                let n = counts
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!("roombook_sagas", "state" => state.as_str()).set(n as f64);
            }
        }
        Err(e) => tracing::debug!(error = %e, "counting sagas failed"),
    }
}
