//! Rows appended to a write transaction (`Tx::append`, used by the outbox) are held back until
//! it commits and then written in order, NULLs included, also beyond one statement's worth;
//! nothing is written when it rolls back; `Tx::flush` writes them early for a statement that
//! reads them, such as the outbox's announcing a booking's latest event again.

use roombook_platform::{
    appends::Target,
    contract::{Body, BookingConfirmed, Envelope},
    db::{Db, Migrations, Param},
    outbox,
    testkit::{TestBackend, TestDatabases},
    trace::TraceParent,
};
use sqlx::Row as _;
use uuid::Uuid;

const LOG: Target = Target {
    table: "entries",
    columns: &["position", "note"],
};

async fn open(dbs: &TestDatabases) -> Db {
    let db = Db::connect(
        &dbs.create("appends").await,
        Migrations {
            sqlite: sqlx::migrate!("tests/migrations"),
            postgres: sqlx::migrate!("tests/migrations"),
        },
    )
    .await
    .unwrap();
    sqlx::query("CREATE TABLE entries (id BIGINT, position BIGINT NOT NULL, note TEXT)")
        .execute(&db.pool)
        .await
        .unwrap();
    db
}

async fn entries(db: &Db) -> Vec<(i64, Option<String>)> {
    sqlx::query("SELECT position, note FROM entries ORDER BY position")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn entry(position: i64) -> Vec<Param> {
    let note = (position % 3 != 0).then(|| format!("entry {position}"));
    vec![position.into(), note.into()]
}

async fn appended_rows_are_written_at_commit(backend: TestBackend) {
    let dbs = TestDatabases::new(backend);
    let db = open(&dbs).await;

    // More rows than one statement takes (64), in a count that is no power of two.
    let mut tx = db.begin().await.unwrap();
    for position in 1..=150 {
        tx.append(LOG, entry(position));
    }
    let before: i64 = sqlx::query("SELECT COUNT(*) FROM entries")
        .fetch_one(&mut tx)
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, 0, "held back until the commit");
    tx.commit().await.unwrap();
    let written = entries(&db).await;
    let expected: Vec<(i64, Option<String>)> = (1..=150)
        .map(|p| (p, (p % 3 != 0).then(|| format!("entry {p}"))))
        .collect();
    assert_eq!(written, expected);

    // Rolled back, or dropped: nothing written.
    let mut tx = db.begin().await.unwrap();
    tx.append(LOG, entry(1000));
    tx.rollback().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.append(LOG, entry(1001));
    drop(tx);
    assert_eq!(entries(&db).await.len(), 150);

    // Flushed: visible inside the transaction, and written once.
    let mut tx = db.begin().await.unwrap();
    tx.append(LOG, entry(2000));
    tx.flush().await.unwrap();
    let seen: i64 = sqlx::query("SELECT COUNT(*) FROM entries WHERE position = 2000")
        .fetch_one(&mut tx)
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 1);
    tx.commit().await.unwrap();
    assert_eq!(entries(&db).await.len(), 151);
}

async fn a_booking_s_latest_event_is_announced_again_in_the_transaction_that_enqueued_it(
    backend: TestBackend,
) {
    let dbs = TestDatabases::new(backend);
    let db = open(&dbs).await;
    let booking = Uuid::new_v4();
    let env = Envelope::new(
        booking,
        booking,
        1,
        Body::BookingConfirmed(BookingConfirmed {}),
    );

    let mut tx = db.begin().await.unwrap();
    outbox::enqueue(&mut tx, &env, &TraceParent::continue_or_start(None));
    assert!(outbox::reannounce_latest(&mut tx, booking).await.unwrap());
    tx.commit().await.unwrap();

    let rows: Vec<(String, Option<String>)> =
        sqlx::query("SELECT message_id, publish_id FROM outbox WHERE booking_id = $1 ORDER BY id")
            .bind(booking.to_string())
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    let id = env.message_id.to_string();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0], (id.clone(), None));
    assert_eq!(rows[1].0, id);
    assert!(
        rows[1].1.is_some(),
        "announced again under a new publish id"
    );
}

#[tokio::test]
async fn appended_rows_are_written_at_commit_on_sqlite() {
    appended_rows_are_written_at_commit(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn appended_rows_are_written_at_commit_on_postgres() {
    appended_rows_are_written_at_commit(TestBackend::Postgres).await;
}

#[tokio::test]
async fn a_latest_event_enqueued_in_the_same_transaction_is_announced_again_on_sqlite() {
    a_booking_s_latest_event_is_announced_again_in_the_transaction_that_enqueued_it(
        TestBackend::Sqlite,
    )
    .await;
}

#[tokio::test]
async fn a_latest_event_enqueued_in_the_same_transaction_is_announced_again_on_postgres() {
    a_booking_s_latest_event_is_announced_again_in_the_transaction_that_enqueued_it(
        TestBackend::Postgres,
    )
    .await;
}
