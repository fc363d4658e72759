//! Durable pull consumers: each message is handled inside a database transaction that also
//! records its `messageId`, and is acknowledged only after that transaction commits.
//!
//! Messages that have already arrived when the consumer is free are applied together, in
//! delivery order, in one transaction (up to [`MAX_BATCH`]): one commit, one outbox wake-up and
//! one round of acks per batch instead of per message. If any of them fails, the batch is rolled
//! back and its messages are applied one transaction each, so one bad message never holds up
//! the others and each gets its own retry or parking.
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
use futures::{FutureExt as _, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    contract::{Body, Envelope},
    db::{self, Db, Tx},
    metrics,
    outbox::OutboxSignal,
    topology::{self, ConsumerSpec},
    trace::{self, TraceParent},
};

/// Most messages applied in one transaction. Large enough that commits stop mattering, small
/// enough that a batch that has to be redone one by one is cheap.
pub const MAX_BATCH: usize = 64;

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

impl Incoming {
    /// The span its handling is logged in (the consumer's name is recorded by whoever knows it).
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "message",
            consumer = tracing::field::Empty,
            kind = self.envelope.body.type_name(),
            booking_id = %self.envelope.booking_id,
            message_id = %self.envelope.message_id,
            trace_id = %self.trace.trace_id,
            delivered = self.delivered,
        )
    }
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

    /// Applies several messages, in delivery order, in one transaction: the result must be the
    /// same as [`Handler::handle`] on each in turn. A handler overrides it when it can do the
    /// work of a whole batch in fewer statements (e.g. read every row the batch touches at once).
    fn handle_batch<'a>(
        &'a self,
        tx: &'a mut Tx,
        msgs: &'a [&'a Incoming],
    ) -> impl Future<Output = Result<(), HandleError>> + Send + 'a {
        async move {
            for msg in msgs {
                self.handle(tx, msg).instrument(msg.span()).await?;
            }
            Ok(())
        }
    }
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
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                next = messages.next() => next,
            };
            let mut ended = false;
            match next {
                Some(Ok(msg)) => batch.push(msg),
                Some(Err(e)) => {
                    tracing::debug!(consumer = spec.durable, error = %e, "pull stream hiccup");
                    continue;
                }
                None => break,
            }
            // Whatever else has already arrived joins the batch; nothing waits for more.
            while batch.len() < MAX_BATCH {
                match messages.next().now_or_never() {
                    Some(Some(Ok(msg))) => batch.push(msg),
                    Some(Some(Err(e))) => {
                        tracing::debug!(consumer = spec.durable, error = %e, "pull stream hiccup");
                        break;
                    }
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    None => break,
                }
            }
            process_batch(&db, &js, &outbox, &spec, handler.as_ref(), &mut batch).await;
            if ended {
                break;
            }
        }
    }
}

/// A delivered message that parsed and may be applied.
struct Ready {
    msg: jetstream::Message,
    incoming: Incoming,
    /// The message's type, for metrics.
    kind: &'static str,
    stream_seq: u64,
    span: tracing::Span,
}

/// Applies `batch` (emptying it): together in one transaction, or one by one if that fails.
async fn process_batch<H: Handler>(
    db: &Db,
    js: &jetstream::Context,
    outbox: &OutboxSignal,
    spec: &ConsumerSpec,
    handler: &H,
    batch: &mut Vec<jetstream::Message>,
) {
    let mut ready = Vec::with_capacity(batch.len());
    for msg in batch.drain(..) {
        if let Some(r) = prepare(js, spec, msg).await {
            ready.push(r);
        }
    }
    if ready.len() > 1 {
        match apply_together(db, spec, handler, &ready).await {
            Ok((applied, committed)) => {
                metrics::batch(spec.durable, ready.len());
                if applied.iter().any(|a| *a) {
                    outbox.after(committed.added_to_outbox);
                }
                for (r, applied) in ready.iter().zip(applied) {
                    acknowledge(spec, r, applied)
                        .instrument(r.span.clone())
                        .await;
                }
                return;
            }
            Err(e) => tracing::debug!(
                consumer = spec.durable,
                messages = ready.len(),
                error = %format!("{e}"),
                "batch rolled back; applying its messages one by one"
            ),
        }
    }
    for r in ready {
        let span = r.span.clone();
        async {
            let result = apply(db, spec, handler, &r.incoming).await;
            metrics::batch(spec.durable, 1);
            finish(js, outbox, spec, &r, result).await;
        }
        .instrument(span)
        .await;
    }
}

/// Parses a delivery; parks it (and returns None) when it can never be applied, and passes over
/// (acknowledges, returns None) one the handler does not take.
async fn prepare(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    msg: jetstream::Message,
) -> Option<Ready> {
    if !spec.takes(&msg.subject) {
        // Delivered because the server sends the whole stream (see `ConsumerSpec`); not ours.
        metrics::consumed(spec.durable, Body::type_of_subject(&msg.subject), "skipped");
        if let Err(e) = msg.ack().await {
            tracing::debug!(consumer = spec.durable, error = %e, "ack of a passed-over message failed");
        }
        return None;
    }
    let (delivered, stream_seq) = match msg.info() {
        Ok(info) => (info.delivered, info.stream_sequence),
        Err(_) => (1, 0),
    };
    if delivered > 1 {
        metrics::redelivered(spec.durable, Body::type_of_subject(&msg.subject));
    }
    if delivered > topology::MAX_ATTEMPTS {
        park(js, spec, &msg, stream_seq, "delivery attempts exhausted").await;
        return None;
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
            return None;
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
    let span = incoming.span();
    span.record("consumer", spec.durable);
    Some(Ready {
        msg,
        kind: incoming.envelope.body.type_name(),
        incoming,
        stream_seq,
        span,
    })
}

/// Acknowledges, retries or parks a message after its own transaction ended with `result`.
async fn finish(
    js: &jetstream::Context,
    outbox: &OutboxSignal,
    spec: &ConsumerSpec,
    r: &Ready,
    result: Result<Option<Committed>, HandleError>,
) {
    let delivered = r.incoming.delivered;
    match result {
        Ok(committed) => {
            if let Some(c) = &committed {
                outbox.after(c.added_to_outbox);
            }
            acknowledge(spec, r, committed.is_some()).await;
        }
        Err(HandleError::Park(reason)) => park(js, spec, &r.msg, r.stream_seq, &reason).await,
        Err(HandleError::Retry(e)) if delivered >= topology::MAX_ATTEMPTS => {
            park(js, spec, &r.msg, r.stream_seq, &format!("{e:#}")).await;
        }
        Err(HandleError::Retry(e)) => {
            metrics::consumed(spec.durable, r.kind, "retried");
            let delay = topology::redelivery_delay(delivered);
            tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "handler failed, will retry");
            let _ = r.msg.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
}

/// Acknowledges a message whose transaction committed (or that had been applied before).
async fn acknowledge(spec: &ConsumerSpec, r: &Ready, applied: bool) {
    if applied {
        metrics::consumed(spec.durable, r.kind, "applied");
    } else {
        tracing::debug!("duplicate delivery, already applied");
        metrics::consumed(spec.durable, r.kind, "duplicate");
    }
    if let Err(e) = r.msg.ack().await {
        // The server will redeliver; the recorded message id makes that a no-op.
        tracing::warn!(error = %e, "ack failed");
    }
}

/// What a consumer's committed transaction did besides applying messages.
struct Committed {
    added_to_outbox: bool,
}

/// Applies several messages in one transaction, in order; for each, false when it had been
/// applied before. Any failure rolls back all of them.
async fn apply_together<H: Handler>(
    db: &Db,
    spec: &ConsumerSpec,
    handler: &H,
    ready: &[Ready],
) -> Result<(Vec<bool>, Committed), HandleError> {
    let mut tx = db.begin().await?;
    let ids: Vec<String> = ready
        .iter()
        .map(|r| r.incoming.envelope.message_id.to_string())
        .collect();
    let fresh = db::mark_all_processed(&mut tx, spec.durable, &ids).await?;
    let new: Vec<&Incoming> = ready
        .iter()
        .zip(&fresh)
        .filter(|(_, &fresh)| fresh)
        .map(|(r, _)| &r.incoming)
        .collect();
    if !new.is_empty() {
        let span = tracing::info_span!("batch", consumer = spec.durable, messages = new.len());
        handler.handle_batch(&mut tx, &new).instrument(span).await?;
    }
    let added_to_outbox = tx.adds_to_outbox();
    tx.commit().await?;
    Ok((fresh, Committed { added_to_outbox }))
}

/// Applies the message in one transaction; None when it had been applied before.
async fn apply<H: Handler>(
    db: &Db,
    spec: &ConsumerSpec,
    handler: &H,
    incoming: &Incoming,
) -> Result<Option<Committed>, HandleError> {
    let mut tx = db.begin().await?;
    let message_id = incoming.envelope.message_id.to_string();
    if !db::mark_processed(&mut tx, spec.durable, &message_id).await? {
        tx.rollback().await?;
        return Ok(None);
    }
    handler.handle(&mut tx, incoming).await?;
    let added_to_outbox = tx.adds_to_outbox();
    tx.commit().await?;
    Ok(Some(Committed { added_to_outbox }))
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
    metrics::dead_lettered(spec.durable, Body::type_of_subject(&msg.subject));
    let mut headers = HeaderMap::new();
    // Idempotent per consumer: a repeated park of this delivery is stored once, while another
    // consumer parking the same stream message keeps its own copy.
    headers.insert(
        NATS_MESSAGE_ID,
        format!("{}-{}-{}", spec.durable, spec.stream, stream_seq).as_str(),
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
