//! The transactional outbox: a state change and the messages it implies are written in one
//! database transaction ([`enqueue`]); the [`relay`] publishes them to JetStream afterwards,
//! waits for each publish ack, and only then marks them published. A crash between publish and
//! mark re-publishes with the same `Nats-Msg-Id`, which the server's duplicate window drops.
//! The marks of one batch are written together with the next batch's read, or after
//! [`MARK_DELAY`] when no next batch comes: one transaction per batch instead of two.
//!
//! Published rows stay as the service's message log: [`reannounce_latest`] publishes a booking's
//! latest event again (same envelope, so consumers that have it skip it; a new `Nats-Msg-Id`, so
//! the server keeps it). Participants answer a repeated command that way, so a saga whose reply
//! was lost on the way gets it again.

use std::{sync::Arc, time::Duration};

use async_nats::{
    header::{HeaderMap, NATS_MESSAGE_ID},
    jetstream::{self, message::PublishMessage},
};
use sqlx::{Any, Executor, Row as _};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    appends::Target,
    contract::Envelope,
    db::{self, Backend, Db, Param, StatementTexts, Tx},
    metrics, topology,
    trace::{self, TraceParent},
};

/// Header naming the message type, so tools can filter without parsing the body.
pub const TYPE_HEADER: &str = "Roombook-Type";
const BATCH: i64 = 256;
/// Polling interval: the relay is woken by every commit that adds to the outbox; this only
/// catches rows left by a crash or written by another replica.
const POLL: Duration = Duration::from_millis(500);
/// How long an idle relay keeps the ids it has published before writing them down on their
/// own. Far inside the server's duplicate window, so a crash meanwhile re-publishes nothing the
/// server keeps.
pub const MARK_DELAY: Duration = Duration::from_millis(50);
/// Published rows older than this are pruned, except each booking's latest event, which a
/// repeated command may still need to announce again (see [`reannounce_latest`]).
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Told after each commit: wakes the relay when the commit added rows to the outbox, and
/// anything else in the process that follows the database (e.g. a live feed) after every one.
/// A commit that added nothing to the outbox leaves the relay asleep: on SQLite its look at
/// an empty outbox would take the write connection from the next writer.
#[derive(Clone, Debug)]
pub struct OutboxSignal {
    /// Bumped after each commit that added outbox rows.
    rows: Arc<watch::Sender<u64>>,
    /// Bumped after every commit.
    commits: Arc<watch::Sender<u64>>,
}

impl Default for OutboxSignal {
    fn default() -> Self {
        OutboxSignal {
            rows: Arc::new(watch::channel(0).0),
            commits: Arc::new(watch::channel(0).0),
        }
    }
}

impl OutboxSignal {
    /// After a commit that added rows to the outbox.
    pub fn notify(&self) {
        self.rows.send_modify(|n| *n = n.wrapping_add(1));
        self.committed();
    }

    /// After a commit that changed the database but added nothing to the outbox.
    fn committed(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// After a commit of `tx`'s work, as it says (see [`Tx::adds_to_outbox`]).
    pub fn after(&self, added_to_outbox: bool) {
        if added_to_outbox {
            self.notify();
        } else {
            self.committed();
        }
    }

    /// Changes after each commit this process reports.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Changes after each commit this process reports as having added outbox rows.
    pub fn outbox_rows(&self) -> watch::Receiver<u64> {
        self.rows.subscribe()
    }
}

/// The outbox's columns an enqueued message fills.
const OUTBOX: Target = Target {
    table: "outbox",
    columns: &[
        "message_id",
        "subject",
        "payload",
        "traceparent",
        "booking_id",
        "created_at",
    ],
};

/// Adds `env` to the outbox inside the caller's transaction; the row is written when it
/// commits (see [`Tx::append`]).
pub fn enqueue(tx: &mut Tx, env: &Envelope, trace: &TraceParent) {
    enqueue_all(tx, std::slice::from_ref(env), trace);
}

/// Adds `envs`, in order, to the outbox inside the caller's transaction.
pub fn enqueue_all(tx: &mut Tx, envs: &[Envelope], trace: &TraceParent) {
    if !envs.is_empty() {
        tx.note_outbox_rows();
    }
    for env in envs {
        tx.append(OUTBOX, row(env, trace));
    }
}

/// The outbox's columns a message fills, in the order of [`row`]: for a statement that writes
/// the message itself, together with the change it announces (`INSERT INTO outbox ({columns})
/// SELECT … FROM <the change>`), where a separate statement would cost a round trip.
pub fn columns() -> String {
    OUTBOX.columns.join(", ")
}

/// `env`'s values for [`columns`].
pub fn row(env: &Envelope, trace: &TraceParent) -> Vec<Param> {
    let payload = String::from_utf8(env.to_json()).expect("JSON is UTF-8");
    vec![
        env.message_id.to_string().into(),
        topology::subject_for(env).into(),
        payload.into(),
        trace.child().to_string().into(),
        env.booking_id.to_string().into(),
        crate::time::now_millis().into(),
    ]
}

/// Publishes the latest event this service emitted about `booking_id` again, inside the
/// caller's transaction. Returns false if it never emitted one.
pub async fn reannounce_latest(tx: &mut Tx, booking_id: uuid::Uuid) -> Result<bool, sqlx::Error> {
    // The latest event may still be held back in this transaction.
    tx.flush().await?;
    let now = crate::time::now_millis();
    let done = sqlx::query(&format!(
        "INSERT INTO outbox (message_id, subject, payload, traceparent, created_at, booking_id, publish_id) \
         SELECT message_id, subject, payload, traceparent, $2, booking_id, message_id || '.' || $3 \
         FROM outbox WHERE booking_id = $1 AND subject LIKE '{}.%' ORDER BY id DESC LIMIT 1",
        topology::EVENTS_PREFIX
    ))
    .bind(booking_id.to_string())
    .bind(now)
    .bind(now.to_string())
    .execute(&mut *tx)
    .await?;
    let added = done.rows_affected() == 1;
    if added {
        tx.note_outbox_rows();
    }
    Ok(added)
}

/// Rows still waiting to be published (for readiness details and metrics).
pub async fn backlog(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&db.pool)
        .await?
        .try_get(0)
}

struct Row {
    id: i64,
    /// The `Nats-Msg-Id`: the message id, or a re-announcement's own id.
    publish_id: String,
    subject: String,
    payload: String,
    traceparent: Option<String>,
}

/// Publishes the outbox until `cancel` fires; the batch in hand is finished first, and what
/// it published is marked before returning.
pub async fn relay(
    service: &'static str,
    db: Db,
    js: jetstream::Context,
    signal: OutboxSignal,
    cancel: CancellationToken,
) {
    let mut rows = signal.outbox_rows();
    let mut failures = 0u32;
    // Acknowledged by the server, not yet marked published.
    let mut published = Vec::new();
    loop {
        match relay_batch(service, &db, &js, &mut published).await {
            // A short batch took every row there was. Rows committed since then have woken the
            // relay (the wake-up is kept until it waits), so it can wait without looking again.
            Ok(sent) if sent < BATCH as usize => {
                failures = 0;
                metrics::outbox_backlog(service, 0);
                if !published.is_empty() {
                    // The next batch will mark these with its read; if none comes soon, mark
                    // them on their own.
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        _ = rows.changed() => continue,
                        () = tokio::time::sleep(MARK_DELAY) => {
                            if let Err(e) = mark_published(&db, &mut published).await {
                                tracing::warn!(error = %format!("{e:#}"), "marking published outbox rows failed");
                            }
                        }
                    }
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    // The sender lives in `signal`, so this cannot end while the relay runs.
                    _ = rows.changed() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            }
            Ok(_) => {
                failures = 0;
                if let Ok(rows) = backlog(&db).await {
                    metrics::outbox_backlog(service, rows);
                }
            }
            Err(e) => {
                failures += 1;
                let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "outbox relay failed");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
        if cancel.is_cancelled() {
            break;
        }
    }
    // Left unmarked, they would be published again at the next start (and dropped there by the
    // server as duplicates, if within its window).
    if let Err(e) = mark_published(&db, &mut published).await {
        tracing::warn!(error = %format!("{e:#}"), "marking published outbox rows at shutdown failed");
    }
}

/// Ids of the outbox looked at per pruning statement, so each holds the write lock briefly.
const PRUNE_SPAN: i64 = 1000;

/// Deletes rows published longer than [`RETENTION`] before `now_millis`, keeping every
/// booking's latest event (run hourly by [`crate::retention`]), until done or `cancel` fires.
/// Returns how many rows went.
///
/// It walks the log upwards in spans of ids, from the oldest row, and stops at the first row
/// published within the retention: the relay publishes in id order, so the rest are younger
/// (one published out of order goes in a later run). Each statement looks at one span, and a
/// row's fate is one index probe (is there a later event of its booking?), so a run costs what
/// the rows it walks cost, never more.
pub async fn prune(
    db: &Db,
    now_millis: i64,
    cancel: &CancellationToken,
) -> Result<u64, sqlx::Error> {
    let cutoff = now_millis - i64::try_from(RETENTION.as_millis()).unwrap_or(i64::MAX);
    let delete = prune_sql();
    let mut total = 0;
    let mut from = 0;
    while !cancel.is_cancelled() {
        let Some(first) = first_row_from(db, from).await? else {
            break;
        };
        if first.1.is_some_and(|published| published >= cutoff) {
            break;
        }
        let mut tx = db.begin().await?;
        let done = sqlx::query(&delete)
            .bind(first.0)
            .bind(first.0 + PRUNE_SPAN)
            .bind(cutoff)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        total += done.rows_affected();
        from = first.0 + PRUNE_SPAN;
        tokio::task::yield_now().await;
    }
    Ok(total)
}

/// The first row at or after id `from`: its id and when it was published.
async fn first_row_from(db: &Db, from: i64) -> Result<Option<(i64, Option<i64>)>, sqlx::Error> {
    sqlx::query("SELECT id, published_at FROM outbox WHERE id >= $1 ORDER BY id LIMIT 1")
        .bind(from)
        .fetch_optional(&db.pool)
        .await?
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .transpose()
}

/// The statement [`prune`] runs for each span (public for plan tests): deletes the rows with
/// ids in `[$1, $2)` published before `$3`, except a booking's latest event — an event stays
/// until a later event of its booking is in the log.
pub fn prune_sql() -> String {
    let events = format!("{}.%", topology::EVENTS_PREFIX);
    format!(
        "DELETE FROM outbox WHERE id >= $1 AND id < $2 \
         AND published_at IS NOT NULL AND published_at < $3 \
         AND (subject NOT LIKE '{events}' OR EXISTS (SELECT 1 FROM outbox later \
              WHERE later.booking_id = outbox.booking_id AND later.id > outbox.id \
              AND later.subject LIKE '{events}'))"
    )
}

/// Marks the rows `published` as published (emptying it), in one transaction.
async fn mark_published(db: &Db, published: &mut Vec<i64>) -> Result<(), sqlx::Error> {
    if published.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    mark_published_sql(&mut tx, published).await?;
    tx.commit().await?;
    published.clear();
    Ok(())
}

/// The statement that marks the rows `ids` as published.
async fn mark_published_sql<'e>(
    ex: impl Executor<'e, Database = Any>,
    ids: &[i64],
) -> Result<(), sqlx::Error> {
    // Repeats of the last id change nothing.
    let padded = db::padded_len(ids.len());
    static TEXTS: StatementTexts<usize> = StatementTexts::new();
    let sql = TEXTS.get(padded, || {
        format!(
            "UPDATE outbox SET published_at = $1 WHERE id IN ({})",
            db::params(2, padded)
        )
    });
    let mut query = sqlx::query(sql).bind(crate::time::now_millis());
    for i in 0..padded {
        query = query.bind(ids[i.min(ids.len() - 1)]);
    }
    query.execute(ex).await?;
    Ok(())
}

/// The oldest rows not yet published, in id order.
async fn unpublished<'e>(ex: impl Executor<'e, Database = Any>) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query(
        "SELECT id, COALESCE(publish_id, message_id), subject, payload, traceparent FROM outbox \
         WHERE published_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(ex)
    .await?
    .into_iter()
    .map(|r| {
        Ok(Row {
            id: r.try_get(0)?,
            publish_id: r.try_get(1)?,
            subject: r.try_get(2)?,
            payload: r.try_get(3)?,
            traceparent: r.try_get(4)?,
        })
    })
    .collect()
}

/// Marks the rows `published` (the previous batch's) and reads the next batch, publishes that
/// batch, and adds what the server acknowledged to `published`; returns how many were sent.
async fn relay_batch(
    service: &'static str,
    db: &Db,
    js: &jetstream::Context,
    published: &mut Vec<i64>,
) -> anyhow::Result<usize> {
    let rows = match db.backend {
        // Each statement its own transaction: around both, one would add two round trips.
        Backend::Postgres => {
            if !published.is_empty() {
                mark_published_sql(&db.pool, published).await?;
            }
            unpublished(&db.pool).await?
        }
        // On the write connection, which the marks need: on SQLite reading there is no thread
        // hop either (this runs after every commit that adds to the outbox).
        Backend::Sqlite => {
            let mut tx = db.begin().await?;
            if !published.is_empty() {
                mark_published_sql(&mut tx, published).await?;
            }
            let rows = unpublished(&mut tx).await?;
            tx.commit().await?;
            rows
        }
    };
    published.clear();
    if rows.is_empty() {
        return Ok(0);
    }

    // Send the whole batch, then collect the acks: one round trip's latency per batch, not per row.
    let mut pending = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MESSAGE_ID, row.publish_id.as_str());
        if let Some(tp) = &row.traceparent {
            headers.insert(trace::HEADER, tp.as_str());
        }
        if let Some(kind) = row.subject.rsplit('.').next() {
            headers.insert(TYPE_HEADER, kind);
        }
        let publish = PublishMessage::build()
            .payload(row.payload.clone().into_bytes().into())
            .headers(headers);
        pending.push(js.send_publish(row.subject.clone(), publish).await?);
    }
    let mut first_error = None;
    for (row, ack) in rows.iter().zip(pending) {
        match ack.await {
            Ok(_) => {
                published.push(row.id);
                metrics::published(service, row.subject.rsplit('.').next().unwrap_or("unknown"));
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(anyhow::Error::new(e).context("publish not acknowledged")),
        None => Ok(published.len()),
    }
}
