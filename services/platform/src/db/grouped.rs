//! Group commit on SQLite: writes that wait for the write connection at the same time share
//! one transaction, each inside a savepoint of its own.
//!
//! A request that writes alone (a booking, an admin's decision) commits a handful of pages for
//! a row or two: the tables' and indexes' last leaves, written again by the next request a
//! millisecond later. Requests that arrive together commit those pages once between them (five
//! to a group under load). What each request sees and decides is unchanged: its work runs
//! alone on the write connection, after the work queued before it, and a failure undoes only
//! its own writes. No request waits for others to come: a group is what has queued by the time
//! the write connection is taken.
//!
//! The group runs on a task of its own, so a request that goes away (its client disconnected)
//! never cuts short the others' work; its own work may still be committed, as it could be had
//! it gone away just after its commit.

use std::sync::{Arc, Mutex as SyncMutex};

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::{begin_immediate, lock_writer, SqliteFile, SqliteTx, Tx, TxInner, WRITE_WAIT};

/// Work queued for the next group.
#[derive(Clone, Default)]
pub(super) struct Queue(Arc<SyncMutex<Vec<Box<dyn Job>>>>);

impl Queue {
    fn push(&self, job: Box<dyn Job>) {
        self.0.lock().expect("write queue lock").push(job);
    }

    pub(super) fn len(&self) -> usize {
        self.0.lock().expect("write queue lock").len()
    }

    fn take(&self) -> Vec<Box<dyn Job>> {
        std::mem::take(&mut *self.0.lock().expect("write queue lock"))
    }
}

/// One request's work and the way back to it.
pub(super) trait Job: Send {
    /// Runs the work inside the group's transaction; what it returns is handed back once the
    /// group has committed (or failed to).
    fn run<'t>(self: Box<Self>, tx: &'t mut Tx) -> BoxFuture<'t, Ran>;
    /// The work never ran: the group could not start.
    fn abandon(self: Box<Self>, error: &sqlx::Error);
}

/// Hands a job's result back, given how the shared transaction ended.
type Deliver = Box<dyn FnOnce(Result<(), &sqlx::Error>) + Send>;

/// A job that ran: whether its work succeeded (its savepoint is kept) and the hand-back.
pub(super) struct Ran {
    ok: bool,
    deliver: Deliver,
}

struct Work<F, T, E> {
    work: F,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> Job for Work<F, T, E>
where
    F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    fn run<'t>(self: Box<Self>, tx: &'t mut Tx) -> BoxFuture<'t, Ran> {
        let Work { work, reply } = *self;
        Box::pin(async move {
            let result = work(tx).await;
            Ran {
                ok: result.is_ok(),
                deliver: Box::new(move |committed| {
                    let _ = reply.send(match (result, committed) {
                        (Ok(value), Ok(())) => Ok(value),
                        (Ok(_), Err(e)) => Err(E::from(group_failed(e))),
                        (Err(e), _) => Err(e),
                    });
                }),
            }
        })
    }

    fn abandon(self: Box<Self>, error: &sqlx::Error) {
        let _ = self.reply.send(Err(E::from(group_failed(error))));
    }
}

/// The error each request of a failed group gets (the group's own is logged once). Waiting
/// too long for the write connection stays that error, which callers answer as "busy".
fn group_failed(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        other => sqlx::Error::Protocol(format!("the shared write transaction failed: {other}")),
    }
}

/// Queues `work` and has the next group run it; see [`super::Db::write`].
pub(super) async fn write<T, E, F>(file: &SqliteFile, work: F) -> Result<T, E>
where
    F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    let (reply, answer) = oneshot::channel();
    file.queue.push(Box::new(Work { work, reply }));
    tokio::spawn(run_queued(file.clone()));
    match answer.await {
        Ok(result) => result,
        // Only a panic in some work of the group drops the reply unsent.
        Err(_) => Err(E::from(sqlx::Error::Protocol(
            "the shared write transaction was abandoned".into(),
        ))),
    }
}

/// Takes the write connection and runs every job queued by then in one transaction; finds
/// nothing to do when an earlier task has already taken this task's job into its group.
async fn run_queued(file: SqliteFile) {
    // Requests arrive together (a burst read off the connections at once): the ones already
    // runnable go first and queue their writes, so one group takes them all. Without this the
    // task that spawned this one is followed by it at once, and groups hold one write each.
    tokio::task::yield_now().await;
    let deadline = tokio::time::Instant::now() + WRITE_WAIT;
    let writer = match lock_writer(&file.writer, deadline).await {
        Ok(writer) => writer,
        // This task's own job (unless a group took it meanwhile) and any queued since.
        Err(e) => return abandon(file.queue.take(), &e),
    };
    let jobs = file.queue.take();
    if jobs.is_empty() {
        return;
    }
    let writer = match begin_immediate(writer, deadline).await {
        Ok(writer) => writer,
        Err(e) => return abandon(jobs, &e),
    };
    crate::metrics::grouped_writes(&file.name, jobs.len());
    let mut tx = Tx::new(TxInner::Sqlite(SqliteTx(writer)));
    let mut ran = Vec::with_capacity(jobs.len());
    let mut failure = None;
    let mut jobs = jobs.into_iter();
    for job in jobs.by_ref() {
        match run_one(&mut tx, job).await {
            Ok(done) => ran.push(done),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let outcome = match failure {
        None => tx.commit().await,
        Some(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    };
    if let Err(e) = &outcome {
        tracing::warn!(error = %e, writes = ran.len(), "a shared write transaction failed");
    }
    let committed = outcome.as_ref().map(|_| ());
    for done in ran {
        (done.deliver)(committed);
    }
    if let Err(e) = &outcome {
        // The jobs after the one whose savepoint failed never ran.
        for job in jobs {
            job.abandon(e);
        }
    }
}

fn abandon(jobs: Vec<Box<dyn Job>>, error: &sqlx::Error) {
    if !jobs.is_empty() {
        tracing::warn!(error = %error, writes = jobs.len(), "cannot begin a shared write transaction");
    }
    for job in jobs {
        job.abandon(error);
    }
}

/// Runs one job in a savepoint: kept if its work succeeded, undone (with the rows and
/// after-commit steps it held back) if not. An error here is the group's, not the job's.
async fn run_one(tx: &mut Tx, job: Box<dyn Job>) -> Result<Ran, sqlx::Error> {
    // Rows held back by the jobs before are written first, so undoing this job's savepoint
    // can only undo this job's rows.
    tx.flush().await?;
    let hooks = tx.committed.len();
    let outbox_rows = tx.outbox_rows;
    tx.exec_on_writer("SAVEPOINT grouped_write")?;
    let ran = job.run(tx).await;
    if ran.ok {
        tx.exec_on_writer("RELEASE grouped_write")?;
    } else {
        tx.appends = Default::default();
        tx.committed.truncate(hooks);
        tx.outbox_rows = outbox_rows;
        tx.exec_on_writer("ROLLBACK TO grouped_write")?;
        tx.exec_on_writer("RELEASE grouped_write")?;
    }
    Ok(ran)
}
