//! Marking a batch of messages as processed in one statement, on SQLite and PostgreSQL: each
//! message is fresh once, whether it was seen in an earlier transaction or earlier in the batch.

use roombook_platform::{
    db::{self, Db, Migrations},
    testkit::{TestBackend, TestDatabases},
};

async fn fresh_once_per_consumer(backend: TestBackend) {
    let dbs = TestDatabases::new(backend);
    let db = Db::connect(
        &dbs.create("dedup").await,
        Migrations {
            sqlite: sqlx::migrate!("tests/migrations"),
            postgres: sqlx::migrate!("tests/migrations"),
        },
    )
    .await
    .unwrap();
    let ids = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();

    let mut tx = db.begin().await.unwrap();
    assert!(db::mark_processed(&mut tx, "booking", "b").await.unwrap());
    tx.commit().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    let fresh = db::mark_all_processed(&mut tx, "booking", &ids(&["a", "b", "c", "a"]))
        .await
        .unwrap();
    assert_eq!(fresh, [true, false, true, false]);
    // Another consumer has its own record of the same ids.
    let fresh = db::mark_all_processed(&mut tx, "bookinglist", &ids(&["b", "a"]))
        .await
        .unwrap();
    assert_eq!(fresh, [true, true]);
    tx.commit().await.unwrap();

    // A rolled-back batch marks nothing.
    let mut tx = db.begin().await.unwrap();
    assert_eq!(
        db::mark_all_processed(&mut tx, "booking", &ids(&["d", "a"]))
            .await
            .unwrap(),
        [true, false]
    );
    tx.rollback().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert_eq!(
        db::mark_all_processed(&mut tx, "booking", &ids(&["d"]))
            .await
            .unwrap(),
        [true]
    );
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_batch_is_fresh_once_per_consumer_on_sqlite() {
    fresh_once_per_consumer(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn a_batch_is_fresh_once_per_consumer_on_postgres() {
    fresh_once_per_consumer(TestBackend::Postgres).await;
}
