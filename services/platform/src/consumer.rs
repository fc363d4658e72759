//! Durable pull consumers: each message is handled inside one database transaction that also
//! records its `messageId`, and is acknowledged only after that transaction commits.
//!
//! - A redelivered message whose id is already recorded changes nothing and is acknowledged.
//! - A handler failure rolls back and asks for redelivery after a growing delay
//!   ([`topology::redelivery_delay`]); after [`topology::MAX_ATTEMPTS`] deliveries the message
//!   is parked.
//! - A message that does not parse, or that the handler rejects as invalid, is parked at once.
//!
//! Parking copies the message to the dead-letter stream (with the reason in headers) and then
//! terminates it, so the consumer goes on with the next one and nothing is silently dropped.

use std::{future::Future, sync::Arc, time::Duration};

use async_nats::{
    header::{HeaderMap, NATS_MESSAGE_ID},
    jetstream::{self, message::PublishMessage, AckKind},
};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    contract::Envelope,
    db::{self, Db, Tx},
    metrics,
    outbox::OutboxSignal,
    topology::{self, ConsumerSpec},
    trace::{self, TraceParent},
};

/// A delivered, parsed message.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub envelope: Envelope,
    pub subject: String,
    /// The trace this handling belongs to; messages the handler emits continue it.
    pub trace: TraceParent,
    /// How many times the server has delivered this message (1 on first delivery).
    pub delivered: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Something transient failed (database busy, conflict with a concurrent writer): retry.
    #[error("transient failure: {0:#}")]
    Retry(#[from] anyhow::Error),
    /// The message can never be applied: park it.
    #[error("cannot be applied: {0}")]
    Park(String),
}

impl From<sqlx::Error> for HandleError {
    fn from(e: sqlx::Error) -> Self {
        HandleError::Retry(e.into())
    }
}

/// What a service does with one message, inside the transaction the consumer opened.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        tx: &'a mut Tx,
        msg: &'a Incoming,
    ) -> impl Future<Output = Result<(), HandleError>> + Send + 'a;
}

/// Runs the consumer `spec` until `cancel` fires, finishing the message in hand first.
pub async fn run<H: Handler>(
    db: Db,
    js: jetstream::Context,
    outbox: OutboxSignal,
    spec: ConsumerSpec,
    handler: Arc<H>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        let messages = match topology::ensure_consumer(&js, &spec).await {
            Ok(consumer) => consumer.messages().await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        let mut messages = match messages {
            Ok(m) => {
                failures = 0;
                m
            }
            Err(e) => {
                failures += 1;
                let delay = Duration::from_millis(200 * 2u64.pow(failures.min(5)));
                tracing::warn!(consumer = spec.durable, error = %format!("{e:#}"), retry_in = ?delay, "cannot subscribe");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(msg)) => process(&db, &js, &outbox, &spec, handler.as_ref(), msg).await,
                Some(Err(e)) => {
                    tracing::debug!(consumer = spec.durable, error = %e, "pull stream hiccup");
                }
                None => break,
            }
        }
    }
}

async fn process<H: Handler>(
    db: &Db,
    js: &jetstream::Context,
    outbox: &OutboxSignal,
    spec: &ConsumerSpec,
    handler: &H,
    msg: jetstream::Message,
) {
    let (delivered, stream_seq) = match msg.info() {
        Ok(info) => (info.delivered, info.stream_sequence),
        Err(_) => (1, 0),
    };
    let kind = msg
        .subject
        .rsplit('.')
        .next()
        .unwrap_or("unknown")
        .to_string();
    if delivered > 1 {
        metrics::redelivered(spec.durable, &kind);
    }
    if delivered > topology::MAX_ATTEMPTS {
        park(js, spec, &msg, stream_seq, "delivery attempts exhausted").await;
        return;
    }
    let envelope = match Envelope::from_json(&msg.payload) {
        Ok(env) => env,
        Err(e) => {
            park(
                js,
                spec,
                &msg,
                stream_seq,
                &format!("unparseable message: {e}"),
            )
            .await;
            return;
        }
    };
    let incoming_trace = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(trace::HEADER))
        .map(|v| v.as_str().to_string());
    let incoming = Incoming {
        subject: msg.subject.to_string(),
        trace: TraceParent::continue_or_start(incoming_trace.as_deref()),
        delivered,
        envelope,
    };
    let span = tracing::info_span!(
        "message",
        consumer = spec.durable,
        kind = incoming.envelope.body.type_name(),
        booking_id = %incoming.envelope.booking_id,
        message_id = %incoming.envelope.message_id,
        trace_id = %incoming.trace.trace_id,
        delivered,
    );
    async {
        match apply(db, spec, handler, &incoming).await {
            Ok(applied) => {
                if applied {
                    outbox.notify();
                    metrics::consumed(spec.durable, &kind, "applied");
                } else {
                    tracing::debug!("duplicate delivery, already applied");
                    metrics::consumed(spec.durable, &kind, "duplicate");
                }
                if let Err(e) = msg.ack().await {
                    // The server will redeliver; the recorded message id makes that a no-op.
                    tracing::warn!(error = %e, "ack failed");
                }
            }
            Err(HandleError::Park(reason)) => park(js, spec, &msg, stream_seq, &reason).await,
            Err(HandleError::Retry(e)) if delivered >= topology::MAX_ATTEMPTS => {
                park(js, spec, &msg, stream_seq, &format!("{e:#}")).await;
            }
            Err(HandleError::Retry(e)) => {
                metrics::consumed(spec.durable, &kind, "retried");
                let delay = topology::redelivery_delay(delivered);
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "handler failed, will retry");
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }
    .instrument(span)
    .await;
}

/// Applies the message in one transaction; false when it had been applied before.
async fn apply<H: Handler>(
    db: &Db,
    spec: &ConsumerSpec,
    handler: &H,
    incoming: &Incoming,
) -> Result<bool, HandleError> {
    let mut tx = db.begin().await?;
    let message_id = incoming.envelope.message_id.to_string();
    if !db::mark_processed(&mut tx, spec.durable, &message_id).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    handler.handle(&mut tx, incoming).await?;
    tx.commit().await?;
    Ok(true)
}

/// Copies the message to the dead-letter stream, then terminates it. If the copy cannot be
/// stored the message is left for redelivery rather than lost.
async fn park(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    msg: &jetstream::Message,
    stream_seq: u64,
    reason: &str,
) {
    tracing::error!(consumer = spec.durable, subject = %msg.subject, reason, "parking message in the dead-letter stream");
    metrics::dead_lettered(spec.durable);
    let mut headers = HeaderMap::new();
    headers.insert(
        NATS_MESSAGE_ID,
        format!("{}-{}", spec.stream, stream_seq).as_str(),
    );
    headers.insert("Roombook-Original-Subject", msg.subject.as_str());
    headers.insert("Roombook-Consumer", spec.durable);
    // Header values are single-line.
    headers.insert(
        "Roombook-Reason",
        reason.replace(['\r', '\n'], " ").as_str(),
    );
    let publish = PublishMessage::build()
        .payload(msg.payload.clone())
        .headers(headers);
    let subject = format!("{}.{}", topology::DEAD_LETTER_PREFIX, spec.durable);
    let stored = match js.send_publish(subject, publish).await {
        Ok(ack) => ack.await.map(|_| ()).map_err(anyhow::Error::from),
        Err(e) => Err(e.into()),
    };
    match stored {
        Ok(()) => {
            if let Err(e) = msg.ack_with(AckKind::Term).await {
                tracing::warn!(error = %e, "terminating a parked message failed");
            }
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "dead-letter stream unavailable, will retry");
            let _ = msg
                .ack_with(AckKind::Nak(Some(topology::redelivery_delay(3))))
                .await;
        }
    }
}
