//! How far the list is behind the event streams: each stream's last sequence against what the
//! booking list's durable consumer of it has acknowledged (it acknowledges only after the row's
//! transaction committed, so acknowledged means applied). Served at `GET /bookingLists/lag`
//! and, every [`GAUGE_INTERVAL`], as Prometheus gauges on `/metrics`, labelled by `stream`:
//!
//! | metric | what |
//! |---|---|
//! | `roombook_bookinglist_stream_last_sequence` | the newest event in the stream |
//! | `roombook_bookinglist_applied_sequence` | every event of the stream up to here is in the list |
//! | `roombook_bookinglist_pending_events` | events of the stream not yet applied |

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull};
use platform::topology::ConsumerSpec;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// How often the lag gauges are refreshed.
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// The list's position in one event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamLag {
    pub stream: &'static str,
    pub consumer: &'static str,
    /// The newest event in the stream.
    pub stream_last_sequence: u64,
    /// Every event up to here has been applied.
    pub applied_sequence: u64,
    /// Events not yet applied (waiting, or delivered and in hand).
    pub pending: u64,
}

/// The list's position in every event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lag {
    /// Events not yet applied, over all streams.
    pub pending: u64,
    /// Whether every stream's events up to its newest are applied.
    pub caught_up: bool,
    pub streams: Vec<StreamLag>,
}

/// Reads the streams' and the consumers' positions from the server.
pub async fn measure(js: &jetstream::Context) -> anyhow::Result<Lag> {
    let mut streams = Vec::new();
    for spec in ConsumerSpec::bookinglist_all() {
        streams.push(measure_one(js, &spec).await?);
    }
    Ok(Lag {
        pending: streams.iter().map(|s| s.pending).sum(),
        caught_up: streams
            .iter()
            .all(|s| s.pending == 0 && s.applied_sequence == s.stream_last_sequence),
        streams,
    })
}

async fn measure_one(js: &jetstream::Context, spec: &ConsumerSpec) -> anyhow::Result<StreamLag> {
    let mut stream = js
        .get_stream(spec.stream)
        .await
        .with_context(|| format!("opening {}", spec.stream))?;
    let state = stream
        .info()
        .await
        .with_context(|| format!("reading the state of {}", spec.stream))?
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
    Ok(StreamLag {
        stream: spec.stream,
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
                for s in lag.streams {
                    // Sequences fit an f64 exactly up to 2^53.
                    metrics::gauge!("roombook_bookinglist_stream_last_sequence", "stream" => s.stream)
                        .set(s.stream_last_sequence as f64);
                    metrics::gauge!("roombook_bookinglist_applied_sequence", "stream" => s.stream)
                        .set(s.applied_sequence as f64);
                    metrics::gauge!("roombook_bookinglist_pending_events", "stream" => s.stream)
                        .set(s.pending as f64);
                }
            }
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "cannot measure the lag"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(GAUGE_INTERVAL) => {}
        }
    }
}
