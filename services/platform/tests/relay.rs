//! The outbox relay against a real nats-server, on both backends: every row is published once
//! and marked published, whether the relay is kept busy (a batch's marks are written with the
//! next batch's read), falls idle (they are written on their own), or is stopped.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use roombook_platform::{
    contract::{Body, BookingConfirmed, Envelope},
    db::Db,
    outbox::{self, OutboxSignal},
    testkit::{eventually, NatsServer, TestBackend},
    topology::{self, EVENTS_STREAM},
    trace::TraceParent,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// Commits one event of a booking of its own to the outbox and wakes the relay, as a service's
/// write does.
async fn commit_event(db: &Db, signal: &OutboxSignal) -> Uuid {
    let booking = Uuid::now_v7();
    let env = Envelope::new(
        booking,
        booking,
        1,
        Body::BookingConfirmed(BookingConfirmed {}),
    );
    let mut tx = db.begin().await.unwrap();
    outbox::enqueue(&mut tx, &env, &TraceParent::continue_or_start(None));
    tx.commit().await.unwrap();
    signal.notify();
    booking
}

async fn unmarked(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn stored(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream(EVENTS_STREAM).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// How many publishes the metrics count for `service`.
fn publishes(service: &str) -> u64 {
    let metrics = roombook_platform::metrics::handle().render();
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("roombook_messages_published_total")
                && l.contains(&format!(r#"service="{service}""#))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn each_row_is_published_once_and_marked(backend: TestBackend) {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    topology::ensure_streams(&js, 1).await.unwrap();
    let (_dbs, db) = common::database(backend, "relay").await;
    // The registry counts only once installed; a label of its own, so that other tests'
    // publishes do not count.
    roombook_platform::metrics::handle();
    let service: &'static str = Box::leak(format!("relay-{}", Uuid::new_v4()).into_boxed_str());
    let signal = OutboxSignal::default();
    let cancel = CancellationToken::new();
    let relay = tokio::spawn(outbox::relay(
        service,
        db.clone(),
        js.clone(),
        signal.clone(),
        cancel.clone(),
    ));

    // Busy: commits follow each other while earlier batches are still being published.
    const BUSY: u64 = 60;
    for _ in 0..BUSY {
        commit_event(&db, &signal).await;
    }
    eventually("every row marked published", WAIT, || async {
        (unmarked(&db).await == 0).then_some(())
    })
    .await;
    assert_eq!(stored(&js).await, BUSY);
    // A relay that read rows it had published but not yet marked would publish them again
    // (the server would drop the repeats; the relay's own count would not).
    assert_eq!(publishes(service), BUSY);

    // Idle: one more row and nothing after it; its mark is written without a next batch.
    commit_event(&db, &signal).await;
    eventually("the last row marked published", WAIT, || async {
        (unmarked(&db).await == 0).then_some(())
    })
    .await;
    assert_eq!(publishes(service), BUSY + 1);

    // Stopped right after a publish: what it published is marked before it returns.
    commit_event(&db, &signal).await;
    eventually("the row published", WAIT, || async {
        (stored(&js).await == BUSY + 2).then_some(())
    })
    .await;
    cancel.cancel();
    relay.await.unwrap();
    assert_eq!(unmarked(&db).await, 0);
    assert_eq!(publishes(service), BUSY + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_is_published_once_and_marked_on_sqlite() {
    each_row_is_published_once_and_marked(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_is_published_once_and_marked_on_postgres() {
    each_row_is_published_once_and_marked(TestBackend::Postgres).await;
}
