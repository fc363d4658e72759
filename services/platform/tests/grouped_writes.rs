//! Requests' writes (`Db::write`) return their result once committed; one that fails undoes
//! only its own writes, the rows it held back and its after-commit steps. On SQLite each runs
//! alone and sees the writes before it, and the writes that wait for the write connection at
//! the same moment share one commit; on PostgreSQL each has its own transaction.

mod common;

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use roombook_platform::{
    appends::Target,
    db::{Db, Param, Tx},
    testkit::TestBackend,
};

const LOG: Target = Target {
    table: "grouped_log",
    columns: &["item"],
};

async fn open(backend: TestBackend, name: &str) -> (roombook_platform::testkit::TestDatabases, Db) {
    let (dbs, db) = common::database(backend, name).await;
    for sql in [
        "CREATE TABLE grouped_items (id BIGINT PRIMARY KEY, seen_before BIGINT NOT NULL)",
        "CREATE TABLE grouped_log (item BIGINT NOT NULL)",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    (dbs, db)
}

/// Writes item `id` (recording how many items it saw), holds back a log row and counts a step
/// after the commit; fails after all that when `fail` is set.
async fn write_item(
    db: &Db,
    id: i64,
    fail: bool,
    committed: Arc<AtomicUsize>,
) -> Result<i64, sqlx::Error> {
    db.write(move |tx: &mut Tx| {
        Box::pin(async move {
            let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grouped_items")
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO grouped_items (id, seen_before) VALUES ($1, $2)")
                .bind(id)
                .bind(seen)
                .execute(&mut *tx)
                .await?;
            tx.append(LOG, vec![Param::Int(Some(id))]);
            tx.on_commit(move || {
                committed.fetch_add(1, Ordering::SeqCst);
            });
            if fail {
                return Err(sqlx::Error::RowNotFound);
            }
            Ok(seen)
        })
    })
    .await
}

async fn ids(db: &Db, table: &str, column: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!("SELECT {column} FROM {table} ORDER BY {column}"))
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// The shared transactions of database `name` and the writes they held, as `/metrics` counts
/// them.
fn groups(name: &str) -> (f64, f64) {
    let text = roombook_platform::metrics::handle().render();
    let value = |series: &str| {
        let prefix = format!("roombook_sqlite_grouped_writes_{series}{{database=\"{name}.db\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    (value("count"), value("sum"))
}

async fn a_failed_write_undoes_only_its_own(backend: TestBackend) {
    let (_dbs, db) = open(backend, "grouped").await;
    let committed = Arc::new(AtomicUsize::new(0));
    let writes = (1..=6).map(|id| {
        let (db, committed) = (db.clone(), committed.clone());
        tokio::spawn(async move { write_item(&db, id, id == 3, committed).await })
    });
    let results = futures::future::join_all(writes).await;
    for (id, result) in (1..=6).zip(results) {
        match result.unwrap() {
            Ok(seen) => assert!(id != 3 && (0..6).contains(&seen), "item {id} saw {seen}"),
            Err(e) => assert!(
                id == 3 && matches!(e, sqlx::Error::RowNotFound),
                "item {id}: {e}"
            ),
        }
    }
    assert_eq!(ids(&db, "grouped_items", "id").await, [1, 2, 4, 5, 6]);
    assert_eq!(ids(&db, "grouped_log", "item").await, [1, 2, 4, 5, 6]);
    assert_eq!(
        committed.load(Ordering::SeqCst),
        5,
        "after-commit steps run"
    );
    if matches!(backend, TestBackend::Sqlite) {
        // One at a time: each saw every write that committed or ran before it.
        assert_eq!(
            ids(&db, "grouped_items", "seen_before").await,
            [0, 1, 2, 3, 4]
        );
    }
}

#[tokio::test]
async fn a_failed_write_undoes_only_its_own_on_sqlite() {
    a_failed_write_undoes_only_its_own(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn a_failed_write_undoes_only_its_own_on_postgres() {
    a_failed_write_undoes_only_its_own(TestBackend::Postgres).await;
}

#[tokio::test]
async fn writes_waiting_together_on_sqlite_share_one_commit() {
    roombook_platform::metrics::handle();
    let (_dbs, db) = open(TestBackend::Sqlite, "grouped_commit").await;

    // A consumer's transaction holds the write connection while five requests arrive.
    let held = db.begin().await.unwrap();
    let committed = Arc::new(AtomicUsize::new(0));
    let writes: Vec<_> = (1..=5)
        .map(|id| {
            let (db, committed) = (db.clone(), committed.clone());
            tokio::spawn(async move { write_item(&db, id, id == 2, committed).await })
        })
        .collect();
    // Each request has queued its write (and is waiting for the connection) before it is free.
    roombook_platform::testkit::eventually(
        "five writes queued",
        std::time::Duration::from_secs(10),
        || {
            let db = db.clone();
            async move { (db.queued_writes() >= 5).then_some(()) }
        },
    )
    .await;
    held.commit().await.unwrap();

    let mut results = Vec::new();
    for w in writes {
        results.push(w.await.unwrap().map_err(|e| e.to_string()));
    }
    assert_eq!(
        results,
        [
            Ok(0),
            Err(sqlx::Error::RowNotFound.to_string()),
            Ok(1),
            Ok(2),
            Ok(3)
        ],
        "run in the order they came, the failed one undone"
    );
    assert_eq!(ids(&db, "grouped_items", "id").await, [1, 3, 4, 5]);
    assert_eq!(committed.load(Ordering::SeqCst), 4);
    assert_eq!(
        groups("grouped_commit"),
        (1.0, 5.0),
        "one transaction for the five"
    );
}
