//! How far the list is behind the event stream: the stream's last sequence against what the
//! durable `bookinglist` consumer has acknowledged (it acknowledges only after the row's
//! transaction committed, so acknowledged means applied). Served at `GET /bookingLists/lag`
//! and, every [`GAUGE_INTERVAL`], as Prometheus gauges on `/metrics`:
//!
//! | metric | what |
//! |---|---|
//! | `roombook_bookinglist_stream_last_sequence` | the newest event in `ROOMBOOK_EVENTS` |
//! | `roombook_bookinglist_applied_sequence` | every event up to here is in the list |
//! | `roombook_bookinglist_pending_events` | events not yet applied |

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull};
use platform::topology::{ConsumerSpec, EVENTS_STREAM};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// How often the lag gauges are refreshed.
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lag {
    pub stream: &'static str,
    pub consumer: &'static str,
    /// The newest event in the stream.
    pub stream_last_sequence: u64,
    /// Every event up to here has been applied.
    pub applied_sequence: u64,
    /// Events not yet applied (waiting, or delivered and in hand).
    pub pending: u64,
}

/// Reads the stream's and the consumer's positions from the server.
pub async fn measure(js: &jetstream::Context) -> anyhow::Result<Lag> {
    let spec = ConsumerSpec::bookinglist();
    let mut stream = js
        .get_stream(EVENTS_STREAM)
        .await
        .context("opening the event stream")?;
    let state = stream
        .info()
        .await
        .context("reading the event stream's state")?
        .state
        .clone();
    let consumer = js
        .get_consumer_from_stream::<pull::Config, _, _>(spec.durable, spec.stream)
        .await;
    let (applied, pending) = match consumer {
        Ok(mut consumer) => {
            let info = consumer
                .info()
                .await
                .context("reading the consumer's state")?;
            (
                info.ack_floor.stream_sequence,
                info.num_pending + info.num_ack_pending as u64,
            )
        }
        // Not declared yet (the service is starting): nothing applied, everything pending.
        Err(e)
            if matches!(
                e.kind(),
                jetstream::stream::ConsumerErrorKind::JetStream(ref js)
                    if js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
            ) =>
        {
            (0, state.messages)
        }
        Err(e) => return Err(e).context("reading the consumer"),
    };
    Ok(Lag {
        stream: EVENTS_STREAM,
        consumer: spec.durable,
        stream_last_sequence: state.last_sequence,
        applied_sequence: applied,
        pending,
    })
}

/// Keeps the lag gauges current until `cancel` fires.
pub async fn report(js: jetstream::Context, cancel: CancellationToken) {
    loop {
        match measure(&js).await {
            Ok(lag) => {
                // Sequences fit an f64 exactly up to 2^53.
                metrics::gauge!("roombook_bookinglist_stream_last_sequence")
                    .set(lag.stream_last_sequence as f64);
                metrics::gauge!("roombook_bookinglist_applied_sequence")
                    .set(lag.applied_sequence as f64);
                metrics::gauge!("roombook_bookinglist_pending_events").set(lag.pending as f64);
            }
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot measure the lag"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(GAUGE_INTERVAL) => {}
        }
    }
}
