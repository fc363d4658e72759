//! Database access for every service: SQLite (the embedded default) or PostgreSQL, chosen by the
//! URL, through sqlx's `Any` driver so one set of queries serves both.
//!
//! Queries use `$1`-style parameters (both backends accept them), store ids as text and times
//! as epoch milliseconds. Each backend has its own migrations, because what the databases can
//! enforce differs (e.g. an exclusion constraint on PostgreSQL, a trigger on SQLite).

use std::{
    collections::{HashMap, HashSet},
    fmt,
    str::FromStr,
    sync::Arc,
    sync::Once,
    time::Duration,
};

use anyhow::Context as _;
use futures::{future::BoxFuture, stream::BoxStream, FutureExt as _, StreamExt as _};
use sqlx::{
    any::{AnyConnectOptions, AnyPoolOptions, AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo},
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
    Any, AnyPool, Either, Execute, Executor,
};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use crate::{
    appends::{Appends, Target},
    sqlite_memory,
    sqlite_writer::SqliteWriter,
};

/// How often the SQLite log is checkpointed (see [`checkpoint_regularly`]).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Frames (pages) the write-ahead log may hold before a regular checkpoint makes it start over
/// (about 64 MiB of 4 KiB pages). Starting it over takes the writer's turn for as long as the
/// last frames take to copy and sync, a few to tens of milliseconds that every write waits
/// out, so it is done when the log has grown this far rather than at every checkpoint.
const RESTART_LOG_AT_FRAMES: i64 = 16_384;

/// The size the write-ahead log is cut back to when it starts over (bytes): above what it
/// reaches between two starts, so the file's blocks are reused rather than freed and taken
/// again.
const WAL_SIZE_LIMIT: &str = "134217728";

/// How long a writer waits for its turn (and for a lock another process holds) before giving
/// up.
const WRITE_WAIT: Duration = Duration::from_secs(10);

/// Connections each service process keeps to PostgreSQL (the deployment's `max_connections`
/// budget counts on it).
pub const POSTGRES_POOL_SIZE: u32 = 10;
/// Connections to a SQLite file for reading (WAL lets them run beside the writer), besides
/// the one write connection.
pub const SQLITE_POOL_SIZE: u32 = 4;
/// A pooled PostgreSQL connection idle for longer than this is checked with a round trip
/// before it is handed out (the server may have closed it meanwhile); one in steady use has
/// just shown that it works, and checking it too would add a round trip to every transaction.
pub const POSTGRES_CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The messaging tables (outbox, processed messages) every service has.
pub(crate) fn messaging_migrations(backend: Backend) -> Migrator {
    match backend {
        Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
    }
}

/// A service's migrations for each backend (`sqlx::migrate!` of its two folders).
pub struct Migrations {
    pub sqlite: Migrator,
    pub postgres: Migrator,
}

#[derive(Clone, Debug)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// SQLite: the file's write connection and name.
    sqlite: Option<SqliteFile>,
}

mod grouped;

#[derive(Clone)]
struct SqliteFile {
    /// The one connection that writes, taken in turn by write transactions.
    writer: Arc<Mutex<SqliteWriter>>,
    /// The file's name, which labels its log's metrics.
    name: Arc<str>,
    /// Requests' writes waiting to share the next transaction (see [`Db::write`]).
    queue: grouped::Queue,
}

impl fmt::Debug for SqliteFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteFile")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Connects (creating the SQLite file and its folder if needed) and migrates.
    pub async fn connect(url: &str, migrations: Migrations) -> anyhow::Result<Db> {
        let db = Db::open(url).await?;
        db.migrate(migrations).await?;
        Ok(db)
    }

    /// Connects (creating the SQLite file and its folder if needed), without migrating.
    pub async fn open(url: &str) -> anyhow::Result<Db> {
        Db::open_checking_idle_after(url, POSTGRES_CHECK_IDLE_AFTER).await
    }

    /// As [`Db::open`], with PostgreSQL's pooled connections checked before use once they
    /// have been idle for longer than `check_idle_after` (the services use
    /// [`POSTGRES_CHECK_IDLE_AFTER`]).
    pub async fn open_checking_idle_after(
        url: &str,
        check_idle_after: Duration,
    ) -> anyhow::Result<Db> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);

        let (backend, url) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or(path);
            if let Some(dir) = std::path::Path::new(file).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating data directory {}", dir.display()))?;
                }
            }
            let url = if path.contains('?') {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            };
            if let sqlite_memory::Outcome::Refused(code) = sqlite_memory::use_process_allocator() {
                // Only a cost: SQLite keeps glibc's malloc and its statistics.
                tracing::debug!(code, "SQLite had started; it keeps its own allocator");
            }
            (Backend::Sqlite, url)
        } else {
            anyhow::bail!("DATABASE_URL must start with sqlite:// or postgres:// (got {url})");
        };

        let options = AnyConnectOptions::from_str(&url).context("parsing DATABASE_URL")?;
        let pool = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(SQLITE_POOL_SIZE)
                    // A connection to a file does not go stale: no round trip to its thread
                    // to check it before each use.
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets readers run beside the one writer; the busy timeout makes
                            // writers queue for the lock instead of failing.
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(POSTGRES_POOL_SIZE)
                    .acquire_timeout(Duration::from_secs(10))
                    .test_before_acquire(false)
                    .before_acquire(move |conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for > check_idle_after {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_with(options)
                    .await
            }
        }
        .context("connecting to the database")?;

        let sqlite = match backend {
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(&url)
                    .context("parsing DATABASE_URL")?
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    // Statements run on the async runtime's thread: SQLite must never sleep in
                    // its busy handler there. `begin` waits for another process's lock instead.
                    .busy_timeout(Duration::ZERO)
                    .foreign_keys(true)
                    // Nor copy the log into the file on commit (that ends in an fsync): a reader
                    // connection does it in the background, on sqlx's thread.
                    .pragma("wal_autocheckpoint", "0")
                    // A log grown larger (by a burst, or by an earlier version) is cut back to
                    // this when it starts over.
                    .pragma("journal_size_limit", WAL_SIZE_LIMIT)
                    // A statement that may change many rows inside a transaction (a multi-row
                    // insert or upsert) keeps a copy of each page it changes until it ends, so
                    // it can be undone alone. Past 64 KiB SQLite spills that copy to a temporary
                    // file (created, written and deleted per statement); in memory it is a copy.
                    .pragma("temp_store", "memory");
                let writer = SqliteWriter::open(&options)
                    .await
                    .context("opening the database's write connection")?;
                let file = SqliteFile {
                    queue: grouped::Queue::default(),
                    writer: Arc::new(Mutex::new(writer)),
                    name: options
                        .get_filename()
                        .file_name()
                        .map_or_else(|| "sqlite".into(), |name| name.to_string_lossy().into()),
                };
                tokio::spawn(checkpoint_regularly(pool.clone(), file.clone()));
                Some(file)
            }
            Backend::Postgres => None,
        };
        Ok(Db {
            pool,
            backend,
            sqlite,
        })
    }

    /// Runs the messaging migrations and the service's own.
    pub async fn migrate(&self, migrations: Migrations) -> anyhow::Result<()> {
        let mut messaging = messaging_migrations(self.backend);
        let mut own = match self.backend {
            Backend::Sqlite => migrations.sqlite,
            Backend::Postgres => migrations.postgres,
        };
        // Two migration sets share sqlx's bookkeeping table, so each ignores the other's rows.
        messaging.set_ignore_missing(true);
        own.set_ignore_missing(true);
        messaging
            .run(&self.pool)
            .await
            .context("migrating messaging tables")?;
        own.run(&self.pool)
            .await
            .context("migrating service tables")?;
        Ok(())
    }

    /// Begins a transaction that will write. On SQLite it runs on the process's write
    /// connection, which it holds until it ends: writers queue for it first come first served
    /// and go the moment the one before ends (rather than sleeping in SQLite's busy handler),
    /// and `BEGIN IMMEDIATE` takes the file's write lock up front, so a read-then-write inside it
    /// can never be interleaved with another writer. PostgreSQL relies on its constraints and
    /// row locks.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match &self.sqlite {
            Some(SqliteFile { writer, .. }) => Ok(Tx::new(TxInner::Sqlite(SqliteTx(
                begin_on_writer(writer).await?,
            )))),
            None => Ok(Tx::new(TxInner::Postgres(self.pool.begin().await?))),
        }
    }

    /// Runs `work` in a write transaction and commits it: the write of one request (an HTTP
    /// call), where [`Db::begin`] suits a caller that batches its own work (a consumer).
    ///
    /// On SQLite the requests waiting for the write connection at the same moment share one
    /// transaction (group commit), each inside a savepoint of its own: `work` runs alone on
    /// the connection, after the work queued before it, sees what that wrote, and an error it
    /// returns undoes its own writes only (with the rows it held back and its
    /// [`Tx::on_commit`] steps). Its result comes back once the shared transaction has
    /// committed, or as an error if that failed. `work` must not begin another transaction.
    /// On PostgreSQL each request has its own transaction.
    pub async fn write<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        match &self.sqlite {
            Some(file) => grouped::write(file, work).await,
            None => {
                let mut tx = self.begin().await?;
                let value = work(&mut tx).await?;
                tx.commit().await?;
                Ok(value)
            }
        }
    }

    /// SQLite: how many requests' writes wait for the next shared transaction ([`Db::write`]);
    /// 0 on PostgreSQL.
    pub fn queued_writes(&self) -> usize {
        self.sqlite.as_ref().map_or(0, |file| file.queue.len())
    }

    /// SQLite: checkpoints the write-ahead log now, as the background task does regularly,
    /// making the log start over as `restart` says; nothing on PostgreSQL.
    pub async fn checkpoint(&self, restart: LogRestart) -> Result<(), sqlx::Error> {
        match &self.sqlite {
            Some(file) => checkpoint(&self.pool, file, restart).await,
            None => Ok(()),
        }
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// When a checkpoint makes SQLite's write-ahead log start over (see `Db::checkpoint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRestart {
    /// Every time: the log ends wholly copied.
    Always,
    /// Once the log holds at least this many frames.
    Beyond(i64),
}

/// Checkpoints SQLite's write-ahead log every [`CHECKPOINT_EVERY`] (see [`checkpoint`]),
/// starting it over beyond [`RESTART_LOG_AT_FRAMES`], until the pool closes.
async fn checkpoint_regularly(pool: AnyPool, file: SqliteFile) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let restart = LogRestart::Beyond(RESTART_LOG_AT_FRAMES);
    while !pool.is_closed() {
        every.tick().await;
        if let Err(e) = checkpoint(&pool, &file, restart).await {
            if !pool.is_closed() {
                tracing::warn!(error = %e, "SQLite checkpoint failed");
            }
        }
    }
}

/// Copies the write-ahead log into the database file, on a reader connection (sqlx's thread,
/// where its fsync may block): first beside the writer; then, if `restart` asks for it, while
/// the writer waits its turn, the frames written meanwhile. The log is then wholly copied, so
/// the next write transaction starts it over from its beginning. SQLite only does that when a
/// write begins with nothing left to copy, which a checkpoint beside a steady stream of writes
/// never achieves: the log would grow without bound, each write extending the file and each
/// read searching a longer index.
async fn checkpoint(
    pool: &AnyPool,
    file: &SqliteFile,
    restart: LogRestart,
) -> Result<(), sqlx::Error> {
    // PASSIVE: never waits for readers; the write lock is not needed while the writer waits.
    // Its row is (busy, frames in the log, frames copied).
    const CHECKPOINT: &str = "PRAGMA wal_checkpoint(PASSIVE)";
    let frames: i64 = sqlx::Row::try_get(&sqlx::query(CHECKPOINT).fetch_one(pool).await?, 1)?;
    crate::metrics::sqlite_log_frames(&file.name, frames);
    if let LogRestart::Beyond(limit) = restart {
        if frames < limit {
            return Ok(());
        }
    }
    let _turn = file.writer.lock().await;
    sqlx::query(CHECKPOINT).execute(pool).await?;
    crate::metrics::sqlite_log_restarted(&file.name);
    Ok(())
}

/// Takes the SQLite write connection (queueing behind the transaction that holds it, for at
/// most [`WRITE_WAIT`]) and begins a write transaction on it.
async fn begin_on_writer(
    writer: &Arc<Mutex<SqliteWriter>>,
) -> Result<OwnedMutexGuard<SqliteWriter>, sqlx::Error> {
    let deadline = tokio::time::Instant::now() + WRITE_WAIT;
    let writer = lock_writer(writer, deadline).await?;
    begin_immediate(writer, deadline).await
}

async fn lock_writer(
    writer: &Arc<Mutex<SqliteWriter>>,
    deadline: tokio::time::Instant,
) -> Result<OwnedMutexGuard<SqliteWriter>, sqlx::Error> {
    tokio::time::timeout_at(deadline, Arc::clone(writer).lock_owned())
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)
}

/// `BEGIN IMMEDIATE` on the write connection, waiting (until `deadline`) while another
/// connection of the file writes: only one outside this process's writer (the outbox prune, a
/// tool) can.
async fn begin_immediate(
    mut writer: OwnedMutexGuard<SqliteWriter>,
    deadline: tokio::time::Instant,
) -> Result<OwnedMutexGuard<SqliteWriter>, sqlx::Error> {
    let mut pause = Duration::from_millis(1);
    loop {
        match writer.exec("BEGIN IMMEDIATE") {
            Ok(()) => return Ok(writer),
            Err(e) if is_transient(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A write transaction (see [`Db::begin`]). Statements run on it as on a pool
/// (`query.execute(&mut tx)`); rows for log tables can be held back until it commits
/// ([`Tx::append`]). Dropped without [`Tx::commit`], it rolls back.
pub struct Tx {
    inner: TxInner,
    appends: Appends,
    /// Run once the transaction has committed (see [`Tx::on_commit`]).
    committed: Vec<Box<dyn FnOnce() + Send>>,
    /// Whether it adds rows to the outbox (see [`Tx::adds_to_outbox`]).
    outbox_rows: bool,
}

enum TxInner {
    Sqlite(SqliteTx),
    Postgres(sqlx::Transaction<'static, Any>),
}

/// A transaction open on the SQLite writer; rolls back if dropped before it ends.
struct SqliteTx(OwnedMutexGuard<SqliteWriter>);

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.0.in_transaction() {
            if let Err(e) = self.0.exec("ROLLBACK") {
                tracing::warn!(error = %e, "rolling back an abandoned transaction failed");
            }
        }
    }
}

impl Tx {
    fn new(inner: TxInner) -> Tx {
        Tx {
            inner,
            appends: Appends::default(),
            committed: Vec::new(),
            outbox_rows: false,
        }
    }

    /// Runs `f` after the transaction commits, and never if it does not: for what must count
    /// only what was stored, such as metrics of the work done (a consumer batch that rolls back
    /// is applied again message by message, and would otherwise be counted twice).
    pub fn on_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.committed.push(Box::new(f));
    }

    /// Whether the transaction adds rows to the outbox (through [`crate::outbox`]), so that its
    /// commit should wake the relay.
    pub fn adds_to_outbox(&self) -> bool {
        self.outbox_rows
    }

    pub(crate) fn note_outbox_rows(&mut self) {
        self.outbox_rows = true;
    }

    /// The database it runs on, for the few statements whose text differs between the two
    /// (row locks, which SQLite has no need of: its writes take turns anyway).
    pub fn backend(&self) -> Backend {
        match self.inner {
            TxInner::Sqlite(_) => Backend::Sqlite,
            TxInner::Postgres(_) => Backend::Postgres,
        }
    }

    /// Appends a row (values in `target`'s column order) to a log table when the transaction
    /// commits, together with the table's other rows (see [`crate::appends`]).
    pub fn append(&mut self, target: Target, row: Vec<Param>) {
        self.appends.push(target, row);
    }

    /// Writes the rows held back by [`Tx::append`] now, for a statement that reads them.
    pub async fn flush(&mut self) -> Result<(), sqlx::Error> {
        if self.appends.is_empty() {
            return Ok(());
        }
        std::mem::take(&mut self.appends).write(self).await
    }

    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.flush().await?;
        match self.inner {
            TxInner::Sqlite(mut tx) => tx.0.exec("COMMIT")?,
            TxInner::Postgres(tx) => tx.commit().await?,
        }
        for f in self.committed {
            f();
        }
        Ok(())
    }

    /// Runs a statement without arguments or rows on the SQLite write connection (savepoints).
    fn exec_on_writer(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => tx.0.exec(sql),
            TxInner::Postgres(_) => Err(sqlx::Error::Protocol(format!(
                "`{sql}` runs on the SQLite write connection only"
            ))),
        }
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxInner::Sqlite(mut tx) => tx.0.exec("ROLLBACK"),
            TxInner::Postgres(tx) => tx.rollback().await,
        }
    }
}

impl fmt::Debug for Tx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.inner {
            TxInner::Sqlite(_) => "Tx(SQLite)",
            TxInner::Postgres(_) => "Tx(PostgreSQL)",
        })
    }
}

impl<'c> Executor<'c> for &'c mut Tx {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match &mut self.inner {
            TxInner::Postgres(tx) => (&mut **tx).fetch_many(query),
            TxInner::Sqlite(tx) => {
                let mut out = Vec::new();
                let done = run_on_writer(&mut tx.0, query, |row| {
                    out.push(Ok(Either::Right(row)));
                    true
                });
                out.push(done.map(Either::Left));
                futures::stream::iter(out).boxed()
            }
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match &mut self.inner {
            TxInner::Postgres(tx) => (&mut **tx).fetch_optional(query),
            TxInner::Sqlite(tx) => {
                let mut first = None;
                let done = run_on_writer(&mut tx.0, query, |row| {
                    first = Some(row);
                    false
                });
                futures::future::ready(done.map(|_| first)).boxed()
            }
        }
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        match &mut self.inner {
            TxInner::Postgres(tx) => (&mut **tx).prepare_with(sql, parameters),
            TxInner::Sqlite(_) => futures::future::ready(Err(unsupported("prepare"))).boxed(),
        }
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<sqlx_core::describe::Describe<Any>, sqlx::Error>>
    where
        'c: 'e,
    {
        match &mut self.inner {
            TxInner::Postgres(tx) => (&mut **tx).describe(sql),
            TxInner::Sqlite(_) => futures::future::ready(Err(unsupported("describe"))).boxed(),
        }
    }
}

/// Runs `query` on the SQLite writer, handing each row to `on_row` until it answers false.
fn run_on_writer<'q>(
    writer: &mut SqliteWriter,
    mut query: impl Execute<'q, Any>,
    on_row: impl FnMut(AnyRow) -> bool,
) -> Result<AnyQueryResult, sqlx::Error> {
    let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
    writer.run(query.sql(), arguments, query.persistent(), on_row)
}

fn unsupported(what: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!(
        "{what} is not available in a SQLite write transaction; run the query directly"
    ))
}

/// Records that `consumer` applied `message_id`, inside the handler's transaction. Returns false
/// when it had already been applied, in which case the caller must change nothing.
pub async fn mark_processed(
    tx: &mut Tx,
    consumer: &str,
    message_id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO processed_messages (consumer, message_id, processed_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(message_id)
    .bind(crate::time::now_millis())
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How long a consumer remembers the ids of the messages it applied. A message comes again
/// within seconds when its ack was lost (redelivered after the ack wait), and rarely later when
/// an outbox row is published again after the server's duplicate window; a week covers both
/// with room to spare. An id older than this is forgotten: the message would be applied again,
/// which the handlers' per-booking versions make a no-op for the state.
pub const PROCESSED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Ids forgotten per statement, so the write lock is held only briefly.
const PRUNE_BATCH: i64 = 1000;
/// Forgets the ids applied before `cutoff_millis`, oldest first, a batch per statement, until
/// none is left or `cancel` fires; returns how many went.
pub async fn prune_processed(
    db: &Db,
    cutoff_millis: i64,
    cancel: &CancellationToken,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    while !cancel.is_cancelled() {
        let gone = prune_processed_batch(db, cutoff_millis).await?;
        total += gone;
        if gone < PRUNE_BATCH as u64 {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(total)
}

async fn prune_processed_batch(db: &Db, cutoff_millis: i64) -> Result<u64, sqlx::Error> {
    use sqlx::Row as _;
    match db.backend {
        // Rows are appended in rowid order, so the oldest are at the start: look at the first
        // batch only and stop at the first id still remembered, instead of searching the whole
        // table (which needs no index on the time, one more per message applied).
        Backend::Sqlite => {
            let head: Vec<(i64, i64)> = sqlx::query(
                "SELECT rowid AS id, processed_at FROM processed_messages ORDER BY rowid LIMIT $1",
            )
            .bind(PRUNE_BATCH)
            .fetch_all(&db.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("processed_at")?)))
            .collect::<Result<_, sqlx::Error>>()?;
            let Some(last) = head
                .iter()
                .take_while(|(_, at)| *at < cutoff_millis)
                .map(|(id, _)| *id)
                .last()
            else {
                return Ok(0);
            };
            let mut tx = db.begin().await?;
            let done = sqlx::query(
                "DELETE FROM processed_messages WHERE rowid <= $1 AND processed_at < $2",
            )
            .bind(last)
            .bind(cutoff_millis)
            .execute(&mut tx)
            .await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        }
        Backend::Postgres => Ok(sqlx::query(
            "DELETE FROM processed_messages WHERE (consumer, message_id) IN              (SELECT consumer, message_id FROM processed_messages WHERE processed_at < $1               ORDER BY processed_at LIMIT $2)",
        )
        .bind(cutoff_millis)
        .bind(PRUNE_BATCH)
        .execute(&db.pool)
        .await?
        .rows_affected()),
    }
}

/// A query on the `Any` driver, with its arguments.
pub type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

/// A value bound to a parameter of a statement built at run time (a list request's filters,
/// the rows of a multi-row insert); `None` binds NULL of its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(Option<String>),
    Int(Option<i64>),
}

impl Param {
    pub fn bind_to(self, query: AnyQuery<'_>) -> AnyQuery<'_> {
        match self {
            Param::Text(v) => query.bind(v),
            Param::Int(v) => query.bind(v),
        }
    }
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Param::Text(Some(v))
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(Some(v.to_string()))
    }
}

impl From<Option<String>> for Param {
    fn from(v: Option<String>) -> Self {
        Param::Text(v)
    }
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Int(Some(v))
    }
}

impl From<Option<i64>> for Param {
    fn from(v: Option<i64>) -> Self {
        Param::Int(v)
    }
}

/// The `WHERE` clause of a list request, made of only the filters it uses, with their values: a
/// predicate such as `($1 IS NULL OR booking_id = $1)`, which keeps one statement for every
/// combination, can use no index, so the database would read the whole table for every page.
/// Each value taken gets the next placeholder, and [`Conditions::bind`] binds them in that
/// order, so the statement and its arguments cannot disagree.
#[derive(Debug, Default)]
pub struct Conditions {
    terms: Vec<String>,
    params: Vec<Param>,
}

impl Conditions {
    /// Takes `value` and returns its placeholder (for a term, or for `LIMIT` and `OFFSET` after
    /// the terms).
    pub fn param(&mut self, value: impl Into<Param>) -> String {
        self.params.push(value.into());
        format!("${}", self.params.len())
    }

    /// Adds a term as it is.
    pub fn push(&mut self, term: impl Into<String>) {
        self.terms.push(term.into());
    }

    /// Adds `column = $n` when a value is given.
    pub fn equal<V: Into<Param>>(&mut self, column: &str, value: Option<V>) {
        if let Some(value) = value {
            let param = self.param(value);
            self.terms.push(format!("{column} = {param}"));
        }
    }

    /// ` WHERE a AND b`, or nothing when no term was added.
    pub fn where_clause(&self) -> String {
        if self.terms.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.terms.join(" AND "))
        }
    }

    /// Binds the values taken, in order.
    pub fn bind(self, query: AnyQuery<'_>) -> AnyQuery<'_> {
        self.params.into_iter().fold(query, |q, p| p.bind_to(q))
    }
}

/// Splits `items` into runs whose lengths are powers of two, largest first, none longer than
/// `max`: statements built per run (multi-row inserts) then come in a few shapes only, which
/// the statement caches of both databases keep prepared, where a statement per length would
/// crowd them out.
pub fn power_of_two_runs<T>(mut items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let max = max.max(1);
    std::iter::from_fn(move || {
        if items.is_empty() {
            return None;
        }
        let (run, rest) = items.split_at((1usize << items.len().ilog2()).min(max));
        items = rest;
        Some(run)
    })
}

/// Placeholders `$first, …` for `count` parameters.
pub fn params(first: usize, count: usize) -> String {
    let mut out = String::with_capacity(count * 5);
    push_params(&mut out, first, count);
    out
}

fn push_params(out: &mut String, first: usize, count: usize) {
    use std::fmt::Write as _;
    for p in first..first + count {
        if p > first {
            out.push_str(", ");
        }
        // Writing into a String cannot fail.
        let _ = write!(out, "${p}");
    }
}

/// `count` groups of `width` parameters numbered from `$first` on, each shaped by `group` from
/// its placeholders and joined with `separator`: the VALUES rows of a multi-row insert, or the
/// terms of a condition.
pub fn param_groups(
    count: usize,
    width: usize,
    first: usize,
    separator: &str,
    group: impl Fn(&str) -> String,
) -> String {
    let mut out = String::with_capacity(count * (width * 5 + separator.len() + 2));
    let mut placeholders = String::with_capacity(width * 5);
    for i in 0..count {
        if i > 0 {
            out.push_str(separator);
        }
        placeholders.clear();
        push_params(&mut placeholders, first + i * width, width);
        out.push_str(&group(&placeholders));
    }
    out
}

/// Statement texts that depend only on a small key (a table, a row count), built once per key
/// and kept for the life of the process. A multi-row statement runs for every batch, and
/// writing it out (a placeholder per value) cost a few per cent of a consumer's CPU; its keys
/// are few, since [`power_of_two_runs`] and [`padded_len`] keep row counts to powers of two.
pub struct StatementTexts<K>(std::sync::LazyLock<std::sync::Mutex<HashMap<K, &'static str>>>);

impl<K: std::hash::Hash + Eq> StatementTexts<K> {
    pub const fn new() -> Self {
        StatementTexts(std::sync::LazyLock::new(Default::default))
    }

    /// The text for `key`, written by `build` the first time.
    pub fn get(&self, key: K, build: impl FnOnce() -> String) -> &'static str {
        let mut texts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Kept for good: one per key, and the keys are bounded by the caller.
        texts
            .entry(key)
            .or_insert_with(|| Box::leak(build().into_boxed_str()))
    }
}

impl<K: std::hash::Hash + Eq> Default for StatementTexts<K> {
    fn default() -> Self {
        Self::new()
    }
}

/// How many rows a statement built for `n` values should have: `n` rounded up to a power of
/// two, the extra rows repeating a value to no effect. Each connection caches its prepared
/// statements, and a few shapes stay cached where one per batch size would push others out.
pub fn padded_len(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// [`mark_processed`] for a batch, in one statement: answers, in order, whether each message is
/// new to `consumer` (false: applied before, or already earlier in this batch).
pub async fn mark_all_processed(
    tx: &mut Tx,
    consumer: &str,
    message_ids: &[String],
) -> Result<Vec<bool>, sqlx::Error> {
    if message_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut unique: Vec<&str> = Vec::with_capacity(message_ids.len());
    for id in message_ids {
        if !unique.contains(&id.as_str()) {
            unique.push(id);
        }
    }
    // Repeats of the last id are no-ops (ON CONFLICT DO NOTHING).
    let padded = padded_len(unique.len());
    static TEXTS: StatementTexts<usize> = StatementTexts::new();
    let sql = TEXTS.get(padded, || {
        // ($1, $2, $3), ($1, $2, $4), …: the consumer and the time once, then the ids.
        let rows = param_groups(padded, 1, 3, ", ", |id| format!("($1, $2, {id})"));
        format!(
            "INSERT INTO processed_messages (consumer, processed_at, message_id) VALUES {rows} \
             ON CONFLICT DO NOTHING RETURNING message_id"
        )
    });
    let mut query = sqlx::query_scalar::<_, String>(sql)
        .bind(consumer)
        .bind(crate::time::now_millis());
    for i in 0..padded {
        query = query.bind(unique[i.min(unique.len() - 1)]);
    }
    let mut new: HashSet<String> = query.fetch_all(&mut *tx).await?.into_iter().collect();
    // The first occurrence of a new id is fresh; any later one in the batch is a duplicate.
    Ok(message_ids.iter().map(|id| new.remove(id)).collect())
}

/// True when the error is a uniqueness or exclusion violation (a conflicting row exists).
pub fn is_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(
                db.code().as_deref(),
                Some("23505" | "23P01" | "2067" | "1555")
            ) || db.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

/// True when the database gave up on the transaction for reasons a retry can overcome: a
/// deadlock, a serialization failure, or (SQLite) a lock it could not get in time.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(
                db.code().as_deref(),
                Some("40P01" | "40001" | "5" | "6" | "517")
            ) || db.message().contains("database is locked")
        }
        _ => false,
    }
}

/// True when the error carries the given message raised by a trigger or constraint name.
pub fn error_mentions(e: &sqlx::Error, needle: &str) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.message().contains(needle)
                || db.constraint().is_some_and(|c| c.contains(needle))
                || db.code().as_deref() == Some("23P01") && needle.contains("overlap")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_powers_of_two_largest_first_and_capped() {
        let runs = |n: usize, max| {
            let items: Vec<usize> = (0..n).collect();
            power_of_two_runs(&items, max)
                .map(<[usize]>::len)
                .collect::<Vec<_>>()
        };
        assert_eq!(runs(0, 64), Vec::<usize>::new());
        assert_eq!(runs(1, 64), [1]);
        assert_eq!(runs(13, 64), [8, 4, 1]);
        assert_eq!(runs(64, 64), [64]);
        assert_eq!(runs(150, 64), [64, 64, 16, 4, 2]);
        assert_eq!(runs(5, 0), [1, 1, 1, 1, 1]);
    }

    #[test]
    fn conditions_hold_only_the_filters_in_use_numbered_in_order() {
        let mut none = Conditions::default();
        none.equal("status", None::<&str>);
        assert_eq!(none.where_clause(), "");
        assert_eq!(none.param(10), "$1");
        assert_eq!(none.params, [Param::from(10)]);

        let mut c = Conditions::default();
        c.push("requested = 1");
        c.equal("status", None::<&str>);
        c.equal("booking_id", Some("b1"));
        let owner = c.param("alice");
        c.push(format!("owner = {owner}"));
        assert_eq!(
            c.where_clause(),
            " WHERE requested = 1 AND booking_id = $1 AND owner = $2"
        );
        assert_eq!(
            (c.param(100), c.param(0)),
            ("$3".to_string(), "$4".to_string())
        );
        assert_eq!(
            c.params,
            [
                Param::from("b1"),
                Param::from("alice"),
                Param::from(100),
                Param::from(0)
            ]
        );
    }

    #[test]
    fn placeholders_are_numbered_on_from_the_first_and_grouped() {
        assert_eq!(params(3, 2), "$3, $4");
        assert_eq!(
            param_groups(2, 2, 2, ", ", |p| format!("($1, {p})")),
            "($1, $2, $3), ($1, $4, $5)"
        );
        assert_eq!(
            param_groups(2, 1, 1, " OR ", |p| format!("id = {p}")),
            "id = $1 OR id = $2"
        );
    }

    #[test]
    fn a_statement_text_is_written_once_per_key() {
        static TEXTS: StatementTexts<usize> = StatementTexts::new();
        let built = std::cell::Cell::new(0);
        let text = |rows: usize| {
            TEXTS.get(rows, || {
                built.set(built.get() + 1);
                format!("VALUES {}", params(1, rows))
            })
        };
        assert_eq!(text(2), "VALUES $1, $2");
        assert_eq!(text(4), "VALUES $1, $2, $3, $4");
        let again = text(2);
        assert_eq!(again, "VALUES $1, $2");
        assert_eq!(
            built.get(),
            2,
            "the second request for 2 rows reuses the first text"
        );
        assert!(std::ptr::eq(again, text(2)));
    }

    #[test]
    fn statement_sizes_round_up_to_a_power_of_two() {
        let sizes: Vec<usize> = [0, 1, 2, 3, 5, 64, 65].map(padded_len).to_vec();
        assert_eq!(sizes, vec![1, 1, 2, 4, 8, 64, 128]);
    }
}
