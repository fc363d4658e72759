//! The outbox as the service's message log, on SQLite and PostgreSQL: pruning removes what was
//! published longer than the retention ago, but never a row still waiting to be published nor a
//! booking's latest event, which a repeated command may need announced again.

mod common;

use roombook_platform::{
    contract::{Body, BookingCancelled, BookingConfirmed, CancelBooking, CancelReason, Envelope},
    db::Db,
    outbox,
    testkit::TestBackend,
    time::now_millis,
    trace::TraceParent,
};
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Writes `body` for `booking` to the outbox and returns its message id.
async fn enqueue(db: &Db, booking: Uuid, version: u64, body: Body) -> String {
    let env = Envelope::new(booking, booking, version, body);
    let mut tx = db.begin().await.unwrap();
    outbox::enqueue(&mut tx, &env, &TraceParent::continue_or_start(None));
    tx.commit().await.unwrap();
    env.message_id.to_string()
}

/// Marks a row published at `at` (milliseconds), as the relay would have.
async fn published_at(db: &Db, message_id: &str, at: i64) {
    sqlx::query("UPDATE outbox SET published_at = $1 WHERE message_id = $2")
        .bind(at)
        .bind(message_id)
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn remaining(db: &Db) -> Vec<String> {
    let mut ids: Vec<String> = sqlx::query("SELECT message_id FROM outbox")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    ids.sort();
    ids
}

fn confirmed() -> Body {
    Body::BookingConfirmed(BookingConfirmed {})
}

fn cancelled() -> Body {
    Body::BookingCancelled(BookingCancelled {
        reason: CancelReason::UserCancelled,
        detail: None,
    })
}

async fn prune_keeps_what_may_still_be_needed(backend: TestBackend) {
    let (_dbs, db) = common::database(backend, "outbox").await;
    let now = now_millis();
    let hour = 3_600_000;
    let old = now - i64::try_from(outbox::RETENTION.as_millis()).unwrap() - hour;
    let recent = now - hour;

    // A booking with a long history: two old events and a command between them.
    let a = Uuid::new_v4();
    let a_first = enqueue(&db, a, 1, confirmed()).await;
    let a_command = enqueue(
        &db,
        a,
        2,
        Body::CancelBooking(CancelBooking {
            reason: CancelReason::UserCancelled,
            detail: None,
        }),
    )
    .await;
    let a_latest = enqueue(&db, a, 3, cancelled()).await;
    // A booking whose only event is old.
    let b = Uuid::new_v4();
    let b_only = enqueue(&db, b, 1, confirmed()).await;
    // An old row the relay never got to publish.
    let c = Uuid::new_v4();
    let c_unpublished = enqueue(&db, c, 1, confirmed()).await;
    // A booking published within the retention.
    let d = Uuid::new_v4();
    let d_first = enqueue(&db, d, 1, confirmed()).await;
    let d_latest = enqueue(&db, d, 2, cancelled()).await;

    for id in [&a_first, &a_command, &a_latest, &b_only] {
        published_at(&db, id, old).await;
    }
    for id in [&d_first, &d_latest] {
        published_at(&db, id, recent).await;
    }
    sqlx::query("UPDATE outbox SET created_at = $1 WHERE message_id = $2")
        .bind(old)
        .bind(&c_unpublished)
        .execute(&db.pool)
        .await
        .unwrap();

    assert_eq!(
        outbox::prune(&db, now, &CancellationToken::new())
            .await
            .unwrap(),
        2
    );
    let mut kept = vec![a_latest.clone(), b_only, c_unpublished, d_first, d_latest];
    kept.sort();
    assert_eq!(remaining(&db).await, kept);
    // Pruning again finds nothing more.
    assert_eq!(
        outbox::prune(&db, now, &CancellationToken::new())
            .await
            .unwrap(),
        0
    );

    // The kept latest event can still be announced again: a new row with its envelope.
    let mut tx = db.begin().await.unwrap();
    assert!(outbox::reannounce_latest(&mut tx, a).await.unwrap());
    tx.commit().await.unwrap();
    let again: i64 = sqlx::query("SELECT COUNT(*) FROM outbox WHERE message_id = $1")
        .bind(&a_latest)
        .fetch_one(&db.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, 2);
    assert_eq!(outbox::backlog(&db).await.unwrap(), 2);
}

/// A log several pruning spans long: old bookings with two events and a command between them,
/// then rows published within the retention.
async fn prune_walks_a_long_log(backend: TestBackend) {
    let (_dbs, db) = common::database(backend, "outbox").await;
    let now = now_millis();
    let old = now - i64::try_from(outbox::RETENTION.as_millis()).unwrap() - 3_600_000;
    let trace = TraceParent::continue_or_start(None);
    let old_bookings = 1200;
    let mut tx = db.begin().await.unwrap();
    let mut latest = Vec::new();
    for _ in 0..old_bookings {
        let booking = Uuid::new_v4();
        let last = Envelope::new(booking, booking, 3, cancelled());
        let command = Body::CancelBooking(CancelBooking {
            reason: CancelReason::UserCancelled,
            detail: None,
        });
        let rows = [
            Envelope::new(booking, booking, 1, confirmed()),
            Envelope::new(booking, booking, 2, command),
            last.clone(),
        ];
        outbox::enqueue_all(&mut tx, &rows, &trace);
        latest.push(last.message_id.to_string());
    }
    tx.commit().await.unwrap();
    sqlx::query("UPDATE outbox SET published_at = $1")
        .bind(old)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut recent = Vec::new();
    for _ in 0..300 {
        let booking = Uuid::new_v4();
        recent.push(enqueue(&db, booking, 1, confirmed()).await);
    }
    sqlx::query("UPDATE outbox SET published_at = $1 WHERE published_at IS NULL")
        .bind(now - 60_000)
        .execute(&db.pool)
        .await
        .unwrap();

    let stopping = CancellationToken::new();
    assert_eq!(
        outbox::prune(&db, now, &stopping).await.unwrap(),
        2 * old_bookings
    );
    let mut kept = [latest, recent].concat();
    kept.sort();
    assert_eq!(remaining(&db).await, kept);
}

#[tokio::test]
async fn pruning_walks_a_log_longer_than_one_span_on_sqlite() {
    prune_walks_a_long_log(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn pruning_walks_a_log_longer_than_one_span_on_postgres() {
    prune_walks_a_long_log(TestBackend::Postgres).await;
}

/// Each row's fate is one probe of the booking's later events, whatever the log's size; the
/// statement this replaced compared every row with the list of every booking's latest event,
/// which PostgreSQL, once that list outgrows its memory for hashing, does row by row.
#[tokio::test]
async fn pruning_probes_each_rows_booking_by_index_on_postgres() {
    let (_dbs, db) = common::database(TestBackend::Postgres, "outbox").await;
    for statement in [
        "INSERT INTO outbox (message_id, subject, payload, created_at, booking_id, published_at) \
         SELECT 'm' || g, 'roombook.events.booking.b' || g / 3 || '.BookingConfirmed', '{}', 0, \
         'b' || g / 3, 1 FROM generate_series(1, 60000) g",
        "ANALYZE outbox",
    ] {
        sqlx::query(statement).execute(&db.pool).await.unwrap();
    }
    let plan = roombook_platform::testkit::generic_plan_on_postgres(
        &db,
        &outbox::prune_sql(),
        &["1", "1001", "100"],
    )
    .await;
    assert!(
        plan.iter()
            .any(|l| l.contains("Index Scan using outbox_booking on outbox later")),
        "{plan:#?}"
    );
    assert!(
        plan.iter()
            .all(|l| !l.contains("Materialize") && !l.contains("Seq Scan")),
        "{plan:#?}"
    );
}

#[tokio::test]
async fn pruning_the_log_keeps_unpublished_rows_and_each_bookings_latest_event_on_sqlite() {
    prune_keeps_what_may_still_be_needed(TestBackend::Sqlite).await;
}

#[tokio::test]
async fn pruning_the_log_keeps_unpublished_rows_and_each_bookings_latest_event_on_postgres() {
    prune_keeps_what_may_still_be_needed(TestBackend::Postgres).await;
}
