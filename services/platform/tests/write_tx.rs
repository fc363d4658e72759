//! A write transaction (`Db::begin`) reads and writes as the pool does, on SQLite (where it
//! runs on the process's write connection, without sqlx's worker thread) and PostgreSQL:
//! values of every kind the services bind, rows by position and by name, changes counted,
//! errors recognisable, rollback when dropped, and writers taking turns.

use roombook_platform::{
    db::{self, Db, LogRestart, Migrations},
    testkit::{TestBackend, TestDatabases},
};
use sqlx::Row as _;

async fn open(dbs: &TestDatabases) -> Db {
    let db = Db::connect(
        &dbs.create("writes").await,
        Migrations {
            sqlite: sqlx::migrate!("tests/migrations"),
            postgres: sqlx::migrate!("tests/migrations"),
        },
    )
    .await
    .unwrap();
    sqlx::query(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE, \
         weight DOUBLE PRECISION, note TEXT)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    db
}

async fn reads_and_writes_like_the_pool(backend: TestBackend) {
    let dbs = TestDatabases::new(backend);
    let db = open(&dbs).await;

    let mut tx = db.begin().await.unwrap();
    // `$2` twice, parameters out of order, a NULL, text beyond ASCII.
    let inserted = sqlx::query(
        "INSERT INTO items (name, id, weight, note) VALUES ($2, $1, $3, NULL), ($2 || '-b', $1 + 1, $3 * 2, $4)",
    )
    .bind(7_i64)
    .bind("Zürich ☕")
    .bind(1.5_f64)
    .bind("second")
    .execute(&mut tx)
    .await
    .unwrap();
    assert_eq!(inserted.rows_affected(), 2);

    let rows: Vec<(i64, String, Option<f64>, Option<String>)> =
        sqlx::query_as("SELECT id, name, weight, note FROM items ORDER BY id")
            .fetch_all(&mut tx)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            (7, "Zürich ☕".to_string(), Some(1.5), None),
            (
                8,
                "Zürich ☕-b".to_string(),
                Some(3.0),
                Some("second".to_string())
            ),
        ]
    );

    // Columns by name; `fetch_optional` takes the first row.
    let first = sqlx::query("SELECT name AS label, id FROM items ORDER BY id DESC")
        .fetch_optional(&mut tx)
        .await
        .unwrap()
        .expect("a row");
    assert_eq!(first.get::<String, _>("label"), "Zürich ☕-b");
    assert_eq!(first.get::<i64, _>("id"), 8);
    assert!(sqlx::query("SELECT id FROM items WHERE id = $1")
        .bind(99_i64)
        .fetch_optional(&mut tx)
        .await
        .unwrap()
        .is_none());

    // Changes are counted; RETURNING gives rows.
    let updated = sqlx::query("UPDATE items SET note = $1 WHERE weight > $2")
        .bind("heavy")
        .bind(1.0_f64)
        .execute(&mut tx)
        .await
        .unwrap();
    assert_eq!(updated.rows_affected(), 2);
    let ids: Vec<i64> =
        sqlx::query_scalar("UPDATE items SET weight = NULL WHERE id = $1 RETURNING id")
            .bind(8_i64)
            .fetch_all(&mut tx)
            .await
            .unwrap();
    assert_eq!(ids, [8]);

    // Several statements in one text (unprepared, not cached): each runs, their changes add up.
    let both = sqlx::Executor::execute(
        &mut tx,
        "UPDATE items SET note = 'a'; UPDATE items SET note = 'b' WHERE id = 7",
    )
    .await
    .unwrap();
    assert_eq!(both.rows_affected(), 3);
    let notes: Vec<String> = sqlx::query_scalar("SELECT note FROM items ORDER BY id")
        .persistent(false)
        .fetch_all(&mut tx)
        .await
        .unwrap();
    assert_eq!(notes, ["b", "a"]);

    // A constraint's refusal is recognisable, and the transaction goes on.
    let duplicate = sqlx::query("INSERT INTO items (id, name) VALUES ($1, $2)")
        .bind(9_i64)
        .bind("Zürich ☕")
        .execute(&mut tx)
        .await
        .unwrap_err();
    assert!(db::is_conflict(&duplicate), "{duplicate}");
    if backend == TestBackend::Sqlite {
        // (PostgreSQL aborts the rest of a transaction after an error.)
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
            .fetch_one(&mut tx)
            .await
            .unwrap();
        assert_eq!(count, 2);
    }
    let missing = sqlx::query("SELECT nope FROM items")
        .execute(&mut tx)
        .await
        .unwrap_err();
    assert!(matches!(missing, sqlx::Error::Database(_)), "{missing}");
    drop(tx);

    // Dropped without a commit: nothing was written.
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);

    // Committed: the pool sees it.
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO items (id, name) VALUES ($1, $2)")
        .bind(1_i64)
        .bind("kept")
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let row = sqlx::query("SELECT name, weight FROM items WHERE id = 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "kept");
    assert_eq!(row.get::<Option<f64>, _>(1), None);
}

#[tokio::test]
async fn a_write_transaction_reads_and_writes_like_the_pool_on_sqlite() {
    reads_and_writes_like_the_pool(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn a_write_transaction_reads_and_writes_like_the_pool_on_postgres() {
    reads_and_writes_like_the_pool(TestBackend::Postgres).await;
}

/// `Tx::on_commit` runs its work once the transaction has committed, and never for one that
/// rolls back, is dropped, or fails to commit.
async fn work_on_commit_runs_only_after_a_commit(backend: TestBackend) {
    use std::sync::{Arc, Mutex};
    let dbs = TestDatabases::new(backend);
    let db = open(&dbs).await;
    // A deferred foreign key is checked at COMMIT, so a commit can be made to fail.
    for ddl in [
        "CREATE TABLE parents (id BIGINT PRIMARY KEY)",
        "CREATE TABLE children (parent BIGINT REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)",
    ] {
        sqlx::query(ddl).execute(&db.pool).await.unwrap();
    }
    let ran = Arc::new(Mutex::new(Vec::new()));
    let note = |tx: &mut db::Tx, what: &'static str| {
        let ran = Arc::clone(&ran);
        tx.on_commit(move || ran.lock().unwrap().push(what));
    };

    let mut tx = db.begin().await.unwrap();
    note(&mut tx, "rolled back");
    tx.rollback().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    note(&mut tx, "dropped");
    drop(tx);

    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO children (parent) VALUES (404)")
        .execute(&mut tx)
        .await
        .unwrap();
    note(&mut tx, "failed to commit");
    assert!(tx.commit().await.is_err(), "the deferred key is missing");

    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO parents (id) VALUES (1)")
        .execute(&mut tx)
        .await
        .unwrap();
    note(&mut tx, "first");
    note(&mut tx, "second");
    assert!(
        ran.lock().unwrap().is_empty(),
        "nothing runs before the commit"
    );
    tx.commit().await.unwrap();

    assert_eq!(*ran.lock().unwrap(), ["first", "second"]);
}

#[tokio::test]
async fn work_on_commit_runs_only_after_a_commit_on_sqlite() {
    work_on_commit_runs_only_after_a_commit(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn work_on_commit_runs_only_after_a_commit_on_postgres() {
    work_on_commit_runs_only_after_a_commit(TestBackend::Postgres).await;
}

#[tokio::test]
async fn sqlite_writers_take_turns_and_the_next_goes_when_the_first_ends() {
    let dbs = TestDatabases::new(TestBackend::Sqlite);
    let db = open(&dbs).await;

    let mut first = db.begin().await.unwrap();
    sqlx::query("INSERT INTO items (id, name) VALUES (1, 'first')")
        .execute(&mut first)
        .await
        .unwrap();
    let second = db.begin();
    tokio::pin!(second);
    assert!(
        futures::poll!(&mut second).is_pending(),
        "a second writer must wait for the first"
    );
    first.commit().await.unwrap();
    let mut second = second.await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM items")
        .fetch_all(&mut second)
        .await
        .unwrap();
    assert_eq!(names, ["first"]);
    second.rollback().await.unwrap();

    // A writer that is dropped mid-way hands its turn on, its changes undone.
    let mut abandoned = db.begin().await.unwrap();
    sqlx::query("DELETE FROM items")
        .execute(&mut abandoned)
        .await
        .unwrap();
    drop(abandoned);
    let mut next = db.begin().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
        .fetch_one(&mut next)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_lock_held_by_another_connection_is_waited_for_without_blocking_the_task() {
    use sqlx::{Connection as _, Executor as _};
    let dbs = TestDatabases::new(TestBackend::Sqlite);
    let url = dbs.create("writes").await;
    let db = open(&dbs).await;

    // Another process's connection (a tool on the same file) holds the write lock.
    let mut other = sqlx::SqliteConnection::connect(&url).await.unwrap();
    other.execute("BEGIN IMMEDIATE").await.unwrap();
    other
        .execute("INSERT INTO items (id, name) VALUES (5, 'other')")
        .await
        .unwrap();

    let begin = db.begin();
    tokio::pin!(begin);
    // Pending (not blocked in SQLite's busy handler, not failed) while the lock is held.
    let polled = futures::poll!(&mut begin);
    assert!(polled.is_pending(), "{polled:?}");
    other.execute("COMMIT").await.unwrap();

    let mut tx = begin.await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM items")
        .fetch_all(&mut tx)
        .await
        .unwrap();
    assert_eq!(names, ["other"]);
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn committed_writes_reach_the_sqlite_file_in_the_background() {
    let dbs = TestDatabases::new(TestBackend::Sqlite);
    let db = open(&dbs).await;
    let file = dbs.dir().join("writes.db");
    let before = std::fs::metadata(&file).unwrap().len();

    // 2 MB: below SQLite's own automatic checkpoint (about 4 MB of log), which the write
    // connection has switched off anyway.
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO items (id, name, note) VALUES (1, 'big', $1)")
        .bind("x".repeat(2 << 20))
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    roombook_platform::testkit::eventually(
        "the log checkpointed into the database file",
        std::time::Duration::from_secs(10),
        || {
            let size = std::fs::metadata(&file).unwrap().len();
            async move { (size >= before + (2 << 20)).then_some(()) }
        },
    )
    .await;
}

/// A multi-row statement inside a transaction keeps the pages it changes until it ends; with
/// temporary storage in memory that copy never goes to a temporary file.
#[tokio::test]
async fn the_sqlite_write_connection_keeps_temporary_data_in_memory() {
    let dbs = TestDatabases::new(TestBackend::Sqlite);
    let db = open(&dbs).await;
    let mut tx = db.begin().await.unwrap();
    // 2 = MEMORY (0 = the library's default, 1 = FILE).
    let store: i64 = sqlx::query_scalar("PRAGMA temp_store")
        .fetch_one(&mut tx)
        .await
        .unwrap();
    assert_eq!(store, 2, "temp_store on the write connection");
    // A statement whose undo copy is far beyond SQLite's 64 KiB spill threshold still works.
    let inserted = sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) \
         INSERT INTO items (id, name, note) SELECT i, 'item ' || i, printf('%.500c', 'x') FROM n",
    )
    .execute(&mut tx)
    .await
    .unwrap();
    assert_eq!(inserted.rows_affected(), 2000);
    tx.commit().await.unwrap();
}

/// Frames in the SQLite log (a passive checkpoint reports them).
async fn frames_in_log(db: &Db) -> i64 {
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&db.pool)
        .await
        .unwrap()
        .get(1)
}

/// A database with one row, rewritten `times` times (a log of at least as many frames).
async fn counter_written(dbs: &TestDatabases, times: usize) -> Db {
    let db = open(dbs).await;
    sqlx::query("INSERT INTO items (id, name) VALUES (1, 'counter')")
        .execute(&db.pool)
        .await
        .unwrap();
    for n in 0..times {
        write_once(&db, n).await;
    }
    db
}

async fn write_once(db: &Db, n: usize) {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("UPDATE items SET note = $1 WHERE id = 1")
        .bind("x".repeat(1000 + n % 100))
        .execute(&mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// A checkpoint taken while writes go on still lets the log start over from its beginning, so
/// it holds only what was written since instead of growing with every write (SQLite starts it
/// over only when a write begins with the whole log copied, which a checkpoint beside the
/// writer alone never achieves under a steady stream of writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_log_starts_over_after_a_checkpoint_taken_while_writes_go_on() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    const BEFORE: usize = 1000;
    let dbs = TestDatabases::new(TestBackend::Sqlite);
    let db = counter_written(&dbs, BEFORE).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writes = tokio::spawn({
        let (db, stop) = (db.clone(), stop.clone());
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                write_once(&db, n).await;
                n += 1;
                tokio::task::yield_now().await;
            }
            n
        }
    });
    db.checkpoint(LogRestart::Always).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let during = writes.await.unwrap();
    write_once(&db, 0).await;

    let frames = frames_in_log(&db).await;
    assert!(
        frames < BEFORE as i64,
        "{frames} frames in the log after {BEFORE} writes, a checkpoint beside {during} more, \
         and one more write"
    );
}

/// A regular checkpoint takes the writer's turn (to make the log start over) only once the log
/// holds its limit of frames: below it, an open write transaction does not hold it up, so
/// writers are not kept waiting at every checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_waits_for_the_writer_only_when_the_log_is_beyond_its_limit() {
    use std::time::Duration;
    let dbs = TestDatabases::new(TestBackend::Sqlite);
    let db = counter_written(&dbs, 50).await;

    let open_tx = db.begin().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        db.checkpoint(LogRestart::Beyond(1_000_000)),
    )
    .await
    .expect("below its limit the checkpoint does not wait for the open write transaction")
    .unwrap();

    let mut beyond = tokio::spawn({
        let db = db.clone();
        async move { db.checkpoint(LogRestart::Beyond(1)).await }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut beyond)
            .await
            .is_err(),
        "beyond its limit the checkpoint waits for the open write transaction"
    );
    drop(open_tx);
    beyond.await.unwrap().unwrap();
}

/// Operators see in `/metrics` how large each database's log was at its last checkpoint and how
/// often it started over.
#[tokio::test]
async fn each_checkpoint_reports_the_log_in_the_metrics() {
    let metrics = roombook_platform::metrics::handle();
    let dbs = TestDatabases::new(TestBackend::Sqlite);
    let db = counter_written(&dbs, 10).await;
    db.checkpoint(LogRestart::Always).await.unwrap();

    let text = metrics.render();
    let value = |name: &str| {
        let prefix = format!("{name}{{database=\"writes.db\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|v| v.parse::<f64>().unwrap())
    };
    assert!(
        value("roombook_sqlite_log_frames").is_some(),
        "no log size in\n{text}"
    );
    assert!(
        value("roombook_sqlite_log_restarts_total").is_some_and(|n| n >= 1.0),
        "no restart counted in\n{text}"
    );
}
