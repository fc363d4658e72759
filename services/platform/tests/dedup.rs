//! Marking a batch of messages as processed in one statement, on SQLite and PostgreSQL: each
//! message is fresh once, whether it was seen in an earlier transaction or earlier in the batch;
//! and forgetting the ids applied longer ago than the retention.

mod common;

use roombook_platform::{db, testkit::TestBackend};
use tokio_util::sync::CancellationToken;

async fn fresh_once_per_consumer(backend: TestBackend) {
    let (_dbs, db) = common::database(backend, "dedup").await;
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

async fn ids_past_the_retention_are_forgotten(backend: TestBackend) {
    let (_dbs, db) = common::database(backend, "dedup").await;
    // More old ids than one pruning statement takes, then two recent ones.
    let old: Vec<String> = (0..2500).map(|i| format!("old-{i}")).collect();
    let mut tx = db.begin().await.unwrap();
    for chunk in old.chunks(100) {
        db::mark_all_processed(&mut tx, "booking", chunk)
            .await
            .unwrap();
    }
    let recent = vec!["recent-1".to_string(), "recent-2".to_string()];
    db::mark_all_processed(&mut tx, "orchestrator", &recent)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let now = roombook_platform::time::now_millis();
    let retention = i64::try_from(db::PROCESSED_RETENTION.as_millis()).unwrap();
    sqlx::query("UPDATE processed_messages SET processed_at = $1 WHERE message_id LIKE 'old-%'")
        .bind(now - retention - 60_000)
        .execute(&db.pool)
        .await
        .unwrap();

    // A service stopping stops the pruning before it starts a batch.
    let stopping = CancellationToken::new();
    stopping.cancel();
    assert_eq!(
        db::prune_processed(&db, now - retention, &stopping)
            .await
            .unwrap(),
        0
    );

    let gone = db::prune_processed(&db, now - retention, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(gone, 2500);
    assert_eq!(
        db::prune_processed(&db, now - retention, &CancellationToken::new())
            .await
            .unwrap(),
        0
    );

    let mut tx = db.begin().await.unwrap();
    // A recent id is still remembered: its message comes again as a duplicate.
    assert_eq!(
        db::mark_all_processed(&mut tx, "orchestrator", &recent)
            .await
            .unwrap(),
        [false, false]
    );
    // A forgotten one would be applied again.
    assert!(db::mark_processed(&mut tx, "booking", "old-7")
        .await
        .unwrap());
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn ids_past_the_retention_are_forgotten_on_sqlite() {
    ids_past_the_retention_are_forgotten(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn ids_past_the_retention_are_forgotten_on_postgres() {
    ids_past_the_retention_are_forgotten(TestBackend::Postgres).await;
}
