//! Rebuilding the list from the event stream, while the current view keeps serving.
//!
//! 1. **Begin** (one transaction): the inactive table becomes the *shadow*: it is emptied, and
//!    from the commit on the live consumer writes every event to the shadow as well as to the
//!    active table.
//! 2. **Replay**: an ordered consumer reads each event stream (`ROOMBOOK_EVENTS`, then
//!    `ROOMBOOK_SAGA_EVENTS`) from its first message up to the last one at the moment the
//!    rebuild began, and folds each event into the shadow, in batches. Events after that point reach the shadow through the live consumer; events in
//!    both sets are folded twice, which changes nothing (the projection is idempotent and
//!    order-independent).
//! 3. **Swap** (one transaction): the shadow becomes the active table; readers switch with the
//!    next query. The old table is kept untouched until the next rebuild empties it, so a read
//!    that had already picked it still finishes on a whole view.
//!
//! Begin and swap take the meta row's lock that every projection write takes, so no write
//! straddles either step. A rebuild's progress (`rebuild_heartbeat_ms`) is written with every
//! batch; one whose process died stops beating and may be taken over by a new request. A
//! rebuild that fails, or is interrupted by shutdown, drops its shadow and leaves the active view
//! as it was.

use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::StreamExt as _;
use platform::{
    contract::Envelope,
    db::Db,
    time::{from_millis, now_millis},
    topology::EVENT_STREAMS,
};
use serde::Serialize;
use sqlx::Row as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    projection,
    store::{self, ViewTable},
};

/// A running rebuild whose heartbeat is older than this is considered dead.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// How long the replay waits for the next message before writing a heartbeat.
const IDLE: Duration = Duration::from_secs(2);
/// Idle waits in a row after which the replay gives up (the stream stopped delivering).
const MAX_IDLE: u32 = 30;

/// The latest rebuild, as `GET /bookingLists/rebuild` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = BookingListRebuild)]
pub struct RebuildStatus {
    /// `NEVER`, `RUNNING`, `SUCCEEDED` or `FAILED`.
    pub state: String,
    /// Counts the views: 1 for the first, +1 with every completed rebuild.
    pub generation: i64,
    pub rebuild_id: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub heartbeat_at: Option<String>,
    /// Where the replay ends: the event streams' last sequences when the rebuild began, summed.
    pub target_sequence: Option<i64>,
    /// Where the replay is: the sequences it has reached in the event streams, summed.
    pub replayed_sequence: Option<i64>,
    /// Events folded by the replay.
    pub events: i64,
    pub error: Option<String>,
}

impl RebuildStatus {
    pub fn is_running(&self) -> bool {
        self.state == "RUNNING"
    }
}

const STATUS_COLUMNS: &str = "generation, rebuild_id, rebuild_state, rebuild_started_ms, \
     rebuild_finished_ms, rebuild_heartbeat_ms, rebuild_target_seq, rebuild_replayed_seq, \
     rebuild_events, rebuild_error";

fn status_from_row(r: &sqlx::any::AnyRow) -> Result<(RebuildStatus, Option<i64>), sqlx::Error> {
    let time = |col: &str| -> Result<Option<String>, sqlx::Error> {
        Ok(r.try_get::<Option<i64>, _>(col)?
            .map(|ms| platform::time::format_utc(from_millis(ms))))
    };
    let heartbeat: Option<i64> = r.try_get("rebuild_heartbeat_ms")?;
    Ok((
        RebuildStatus {
            state: r.try_get("rebuild_state")?,
            generation: r.try_get("generation")?,
            rebuild_id: r.try_get("rebuild_id")?,
            started_at: time("rebuild_started_ms")?,
            finished_at: time("rebuild_finished_ms")?,
            heartbeat_at: time("rebuild_heartbeat_ms")?,
            target_sequence: r.try_get("rebuild_target_seq")?,
            replayed_sequence: r.try_get("rebuild_replayed_seq")?,
            events: r.try_get("rebuild_events")?,
            error: r.try_get("rebuild_error")?,
        },
        heartbeat,
    ))
}

/// The latest rebuild's status.
pub async fn status(db: &Db) -> Result<RebuildStatus, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {STATUS_COLUMNS} FROM booking_list_meta WHERE id = 1"
    ))
    .fetch_one(&db.pool)
    .await?;
    Ok(status_from_row(&row)?.0)
}

/// A rebuild that has begun: its id and the table it fills.
#[derive(Debug, Clone)]
pub struct Rebuild {
    pub id: String,
    pub shadow: ViewTable,
}

#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    #[error("a rebuild is already running")]
    AlreadyRunning(RebuildStatus),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Step 1: empties the inactive table and makes live writes go to it too.
pub async fn begin(db: &Db) -> Result<(Rebuild, RebuildStatus), BeginError> {
    let mut tx = db.begin().await?;
    // Takes the meta row's lock before reading it.
    let claim = store::claim(&mut tx, 0).await?;
    let row = sqlx::query(&format!(
        "SELECT {STATUS_COLUMNS} FROM booking_list_meta WHERE id = 1"
    ))
    .fetch_one(&mut tx)
    .await?;
    let (current, heartbeat) = status_from_row(&row)?;
    let now = now_millis();
    let stale_ms = i64::try_from(STALE_AFTER.as_millis()).unwrap_or(i64::MAX);
    if current.is_running() && heartbeat.is_some_and(|h| now - h < stale_ms) {
        return Err(BeginError::AlreadyRunning(current));
    }
    if current.is_running() {
        tracing::warn!(
            rebuild_id = ?current.rebuild_id,
            "taking over a rebuild that stopped beating"
        );
    }
    let shadow = claim.active.other();
    store::clear(&mut tx, shadow).await?;
    let id = Uuid::now_v7().to_string();
    sqlx::query(
        "UPDATE booking_list_meta SET shadow_table = $1, rebuild_id = $2, \
         rebuild_state = 'RUNNING', rebuild_started_ms = $3, rebuild_finished_ms = NULL, \
         rebuild_heartbeat_ms = $3, rebuild_target_seq = NULL, rebuild_replayed_seq = 0, \
         rebuild_events = 0, rebuild_error = NULL WHERE id = 1",
    )
    .bind(shadow.name())
    .bind(id.clone())
    .bind(now)
    .execute(&mut tx)
    .await?;
    let row = sqlx::query(&format!(
        "SELECT {STATUS_COLUMNS} FROM booking_list_meta WHERE id = 1"
    ))
    .fetch_one(&mut tx)
    .await?;
    let (started, _) = status_from_row(&row)?;
    tx.commit().await?;
    tracing::info!(rebuild_id = %id, shadow = shadow.name(), "rebuild begun");
    Ok((Rebuild { id, shadow }, started))
}

/// Step 2: folds `events` (with the stream sequence reached) into the shadow in one
/// transaction, and beats. Fails if the rebuild is no longer the current one.
pub async fn apply_batch(
    db: &Db,
    rebuild: &Rebuild,
    events: &[Envelope],
    replayed_sequence: Option<u64>,
) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
    let claimed = sqlx::query(
        "UPDATE booking_list_meta SET change_seq = change_seq + $1, \
         rebuild_events = rebuild_events + $1, rebuild_heartbeat_ms = $2, \
         rebuild_replayed_seq = COALESCE($3, rebuild_replayed_seq) \
         WHERE id = 1 AND rebuild_id = $4 AND rebuild_state = 'RUNNING' \
         RETURNING change_seq",
    )
    .bind(count)
    .bind(now_millis())
    .bind(replayed_sequence.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
    .bind(rebuild.id.clone())
    .fetch_optional(&mut tx)
    .await?;
    let Some(claimed) = claimed else {
        bail!("rebuild {} is no longer the current one", rebuild.id);
    };
    let last: i64 = claimed.try_get("change_seq")?;
    let first = last - count + 1;
    let events: Vec<&Envelope> = events.iter().collect();
    store::project_all(&mut tx, rebuild.shadow, &events, first).await?;
    tx.commit().await?;
    Ok(())
}

/// Step 3: the shadow becomes the active view.
pub async fn swap(db: &Db, rebuild: &Rebuild) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    let done = sqlx::query(
        "UPDATE booking_list_meta SET active_table = shadow_table, shadow_table = NULL, \
         generation = generation + 1, rebuild_state = 'SUCCEEDED', rebuild_finished_ms = $1, \
         rebuild_heartbeat_ms = $1 WHERE id = 1 AND rebuild_id = $2 AND rebuild_state = 'RUNNING' \
         AND shadow_table = $3",
    )
    .bind(now_millis())
    .bind(rebuild.id.clone())
    .bind(rebuild.shadow.name())
    .execute(&mut tx)
    .await?;
    if done.rows_affected() != 1 {
        bail!("rebuild {} is no longer the current one", rebuild.id);
    }
    tx.commit().await?;
    tracing::info!(rebuild_id = %rebuild.id, active = rebuild.shadow.name(), "rebuild swapped in");
    Ok(())
}

/// Ends a rebuild that cannot finish: live writes stop going to its shadow; the view stays.
pub async fn fail(db: &Db, rebuild: &Rebuild, error: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE booking_list_meta SET shadow_table = NULL, rebuild_state = 'FAILED', \
         rebuild_error = $1, rebuild_finished_ms = $2 \
         WHERE id = 1 AND rebuild_id = $3 AND rebuild_state = 'RUNNING'",
    )
    .bind(error)
    .bind(now_millis())
    .bind(rebuild.id.clone())
    .execute(&mut tx)
    .await?;
    tx.commit().await
}

/// Runs each rebuild it is sent, one at a time, until the service stops.
pub async fn worker(
    db: Db,
    js: jetstream::Context,
    mut requests: mpsc::Receiver<Rebuild>,
    batch: usize,
    cancel: CancellationToken,
) {
    loop {
        let rebuild = tokio::select! {
            () = cancel.cancelled() => return,
            r = requests.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let result = tokio::select! {
            // Shutdown drops the replay at once; the rebuild is marked failed below.
            () = cancel.cancelled() => Err(anyhow::anyhow!("interrupted: the service stopped")),
            r = replay_and_swap(&db, &js, &rebuild, batch) => r,
        };
        if let Err(e) = result {
            let error = format!("{e:#}");
            tracing::error!(rebuild_id = %rebuild.id, %error, "rebuild failed");
            if let Err(e) = fail(&db, &rebuild, &error).await {
                tracing::error!(error = %e, "cannot record the failed rebuild");
            }
        }
    }
}

/// Steps 2 and 3.
pub async fn replay_and_swap(
    db: &Db,
    js: &jetstream::Context,
    rebuild: &Rebuild,
    batch: usize,
) -> anyhow::Result<()> {
    let mut streams = Vec::new();
    for name in EVENT_STREAMS {
        let mut stream = js
            .get_stream(name)
            .await
            .with_context(|| format!("opening {name}"))?;
        let state = stream
            .info()
            .await
            .with_context(|| format!("reading the state of {name}"))?
            .state
            .clone();
        streams.push((stream, state));
    }
    let target: u64 = streams.iter().map(|(_, state)| state.last_sequence).sum();
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE booking_list_meta SET rebuild_target_seq = $1 WHERE id = 1 AND rebuild_id = $2",
    )
    .bind(i64::try_from(target).unwrap_or(i64::MAX))
    .bind(rebuild.id.clone())
    .execute(&mut tx)
    .await?;
    tx.commit().await?;
    // Progress is the sum of the positions reached: the streams before this one are done.
    let mut done_before = 0;
    for (stream, state) in streams {
        if state.messages > 0 {
            replay_stream(
                db,
                rebuild,
                &stream,
                state.last_sequence,
                done_before,
                batch,
            )
            .await?;
        }
        done_before += state.last_sequence;
    }
    swap(db, rebuild).await
}

/// Folds one stream's events up to `target` into the shadow.
async fn replay_stream(
    db: &Db,
    rebuild: &Rebuild,
    stream: &jetstream::stream::Stream,
    target: u64,
    done_before: u64,
    batch: usize,
) -> anyhow::Result<()> {
    let name = stream.cached_info().config.name.clone();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating the replay consumer of {name}"))?;
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("reading {name}"))?;
    let mut events = Vec::with_capacity(batch);
    let mut idle = 0;
    loop {
        let next = match tokio::time::timeout(IDLE, messages.next()).await {
            Ok(next) => next,
            Err(_) if idle < MAX_IDLE => {
                // Nothing for a while: flush what there is, which also beats.
                idle += 1;
                apply_batch(db, rebuild, &events, None).await?;
                events.clear();
                continue;
            }
            Err(_) => bail!("{name} stopped delivering before the replay was complete"),
        };
        idle = 0;
        let message = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {name}")),
            None => bail!("{name} ended before the replay was complete"),
        };
        let (sequence, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(e) => bail!("a replayed message has no stream position: {e}"),
        };
        match Envelope::from_json(&message.payload) {
            Ok(env) if projection::is_event(&env.body) => events.push(env),
            Ok(env) => tracing::warn!(
                stream = %name,
                sequence,
                kind = env.body.type_name(),
                "not an event; skipped"
            ),
            Err(e) => tracing::warn!(
                stream = %name,
                sequence,
                subject = %message.subject,
                error = %e,
                "unreadable or unknown event; skipped"
            ),
        }
        // Pending 0: the stream holds nothing more (the target may have been removed).
        let done = sequence >= target || pending == 0;
        if events.len() >= batch || done {
            apply_batch(db, rebuild, &events, Some(done_before + sequence)).await?;
            events.clear();
        }
        if done {
            return Ok(());
        }
    }
}
