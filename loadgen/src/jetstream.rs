//! The broker's own speed on this machine, so the saga rate can be read as a ratio: publish N
//! messages to a scratch stream (file storage, like the services' streams) once with async acks
//! (many publishes in flight, acks collected behind them) and once awaiting each ack before the
//! next publish, then delete the stream.
//!
//! Also reads the last sequence of every stream before and after a run, which tells how many
//! JetStream publishes one saga costs.

use std::{collections::BTreeMap, collections::VecDeque, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures::TryStreamExt as _;
use serde::Serialize;
use tokio::time::Instant;

pub struct JsConfig {
    pub url: String,
    pub async_messages: u64,
    pub awaited_messages: u64,
    pub payload_bytes: usize,
    /// Each phase stops early after this long (and reports what it managed).
    pub phase_limit: Duration,
}

/// Publishes in flight at once in the async phase.
const WINDOW: usize = 4096;
const SCRATCH_PREFIX: &str = "LOADGEN_SCRATCH_";

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    pub messages: u64,
    pub secs: f64,
    pub msgs_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsReport {
    pub url: String,
    pub stream: String,
    pub storage: &'static str,
    pub payload_bytes: usize,
    pub in_flight_window: usize,
    pub async_acks: Phase,
    pub awaited_acks: Phase,
}

async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .name("roombook-loadgen")
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
}

pub async fn measure(cfg: &JsConfig) -> anyhow::Result<JsReport> {
    let client = connect(&cfg.url).await?;
    let js = jetstream::new(client.clone());
    let nonce = uuid::Uuid::new_v4().simple().to_string()[..12].to_uppercase();
    let name = format!("{SCRATCH_PREFIX}{nonce}");
    let subject = format!("loadgen.scratch.{nonce}");
    let total = cfg.async_messages + cfg.awaited_messages;
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: stream::StorageType::File,
        max_messages: i64::try_from(total + 16).unwrap_or(i64::MAX),
        // Bounded on disk whatever the counts: the oldest go first.
        max_bytes: 1 << 30,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating the scratch stream {name}"))?;

    let payload = Bytes::from(vec![b'x'; cfg.payload_bytes]);
    let phases = async {
        let async_acks = publish_async(&js, &subject, &payload, cfg).await?;
        let awaited_acks = publish_awaited(&js, &subject, &payload, cfg).await?;
        anyhow::Ok((async_acks, awaited_acks))
    }
    .await;
    // Always delete the scratch stream, whatever the phases did.
    let deleted = js.delete_stream(&name).await;
    let (async_acks, awaited_acks) = phases?;
    deleted.with_context(|| format!("deleting the scratch stream {name}"))?;
    client.flush().await.ok();

    Ok(JsReport {
        url: cfg.url.clone(),
        stream: name,
        storage: "file",
        payload_bytes: cfg.payload_bytes,
        in_flight_window: WINDOW,
        async_acks,
        awaited_acks,
    })
}

fn phase(messages: u64, started: Instant) -> Phase {
    let secs = started.elapsed().as_secs_f64();
    Phase {
        messages,
        secs,
        msgs_per_sec: if secs > 0.0 {
            messages as f64 / secs
        } else {
            0.0
        },
    }
}

async fn publish_async(
    js: &jetstream::Context,
    subject: &str,
    payload: &Bytes,
    cfg: &JsConfig,
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(WINDOW);
    let mut sent = 0u64;
    while sent < cfg.async_messages && started.elapsed() < cfg.phase_limit {
        let ack = js
            .publish(subject.to_string(), payload.clone())
            .await
            .context("publishing (async acks)")?;
        pending.push_back(ack);
        sent += 1;
        if pending.len() >= WINDOW {
            if let Some(oldest) = pending.pop_front() {
                oldest.await.context("publish ack (async acks)")?;
            }
        }
    }
    for ack in pending {
        ack.await.context("publish ack (async acks)")?;
    }
    Ok(phase(sent, started))
}

async fn publish_awaited(
    js: &jetstream::Context,
    subject: &str,
    payload: &Bytes,
    cfg: &JsConfig,
) -> anyhow::Result<Phase> {
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < cfg.awaited_messages && started.elapsed() < cfg.phase_limit {
        js.publish(subject.to_string(), payload.clone())
            .await
            .context("publishing (awaited acks)")?
            .await
            .context("publish ack (awaited acks)")?;
        sent += 1;
    }
    Ok(phase(sent, started))
}

/// The last sequence number of every stream but the scratch ones.
pub async fn stream_sequences(url: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let client = connect(url).await?;
    let js = jetstream::new(client);
    let infos: Vec<stream::Info> = js
        .streams()
        .try_collect()
        .await
        .context("listing streams")?;
    Ok(infos
        .into_iter()
        .filter(|i| !i.config.name.starts_with(SCRATCH_PREFIX))
        .map(|i| (i.config.name, i.state.last_sequence))
        .collect())
}

/// Messages published to each stream between two readings, and their total.
pub fn published_between(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> (BTreeMap<String, u64>, u64) {
    let per: BTreeMap<String, u64> = after
        .iter()
        .map(|(name, last)| {
            let first = before.get(name).copied().unwrap_or(0);
            (name.clone(), last.saturating_sub(first))
        })
        .collect();
    let total = per.values().sum();
    (per, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_are_counted_per_stream_including_new_ones() {
        let before = BTreeMap::from([("EVENTS".to_string(), 100), ("COMMANDS".to_string(), 40)]);
        let after = BTreeMap::from([
            ("EVENTS".to_string(), 160),
            ("COMMANDS".to_string(), 70),
            ("DLQ".to_string(), 2),
        ]);
        let (per, total) = published_between(&before, &after);
        assert_eq!(per["EVENTS"], 60);
        assert_eq!(per["COMMANDS"], 30);
        assert_eq!(per["DLQ"], 2);
        assert_eq!(total, 92);
    }
}
