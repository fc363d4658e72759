//! The durable consumer against a real nats-server and SQLite: messages that arrive together are
//! applied together, and one that fails inside such a batch is retried or parked on its own
//! while the others are applied exactly once.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use futures::StreamExt as _;
use roombook_platform::{
    consumer::{self, HandleError, Handler, Incoming},
    contract::{Body, BookingConfirmed, Envelope},
    db::{Db, Migrations, Tx},
    outbox::{self, OutboxSignal},
    testkit::{eventually, NatsServer},
    topology::{self, ConsumerSpec},
};
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);
const POISON: u64 = 5;
const FLAKY: u64 = 7;

/// Notes `msg`'s version in the test's own table; returns it.
async fn record_applied(tx: &mut Tx, msg: &Incoming) -> Result<u64, HandleError> {
    let version = msg.envelope.version;
    sqlx::query("INSERT INTO applied (version) VALUES ($1)")
        .bind(i64::try_from(version).unwrap())
        .execute(&mut *tx)
        .await?;
    Ok(version)
}

/// Records every version it applies; version `POISON` can never be applied, version `FLAKY`
/// fails on its first delivery only.
struct Recorder;

impl Handler for Recorder {
    async fn handle(&self, tx: &mut Tx, msg: &Incoming) -> Result<(), HandleError> {
        // Written before failing, so a rollback that did not happen would show.
        let version = record_applied(tx, msg).await?;
        match version {
            POISON => Err(HandleError::Park("poison".into())),
            FLAKY if msg.delivered == 1 => Err(HandleError::Retry(anyhow::anyhow!("flaky"))),
            _ => Ok(()),
        }
    }
}

/// A fresh SQLite database with the test tables, and JetStream with the streams declared.
async fn connect(dir: &tempfile::TempDir, nats: &NatsServer) -> (Db, jetstream::Context) {
    let db = Db::connect(
        &format!("sqlite://{}", dir.path().join("consumer.db").display()),
        Migrations {
            sqlite: sqlx::migrate!("tests/migrations"),
            postgres: sqlx::migrate!("tests/migrations"),
        },
    )
    .await
    .unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    topology::ensure_streams(&js, 1).await.unwrap();
    (db, js)
}

/// Publishes version `version` of `booking`'s confirmation and waits for the stream to store it.
async fn publish_confirmed(js: &jetstream::Context, booking: Uuid, version: u64) {
    let env = Envelope::new(
        booking,
        booking,
        version,
        Body::BookingConfirmed(BookingConfirmed {}),
    );
    js.publish(topology::subject_for(&env), env.to_json().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn applied(db: &Db) -> Vec<i64> {
    sqlx::query("SELECT version FROM applied ORDER BY version")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_failing_message_in_a_batch_is_handled_alone_and_the_rest_apply_once() {
    roombook_platform::metrics::handle(); // record from the start
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (db, js) = connect(&dir, &nats).await;

    // Everything is in the stream before the consumer starts, so it arrives in batches.
    let booking = Uuid::new_v4();
    for version in 1..=20 {
        publish_confirmed(&js, booking, version).await;
    }

    let cancel = CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        db.clone(),
        js.clone(),
        OutboxSignal::default(),
        ConsumerSpec::bookinglist(),
        Arc::new(Recorder),
        cancel.clone(),
    ));
    let expected: Vec<i64> = (1..=20).filter(|v| *v != POISON as i64).collect();
    eventually(
        "every message but the poisoned one applied",
        WAIT,
        || async { (applied(&db).await == expected).then_some(()) },
    )
    .await;

    let dead = js
        .get_stream(topology::DEAD_LETTER_STREAM)
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut parked = dead.messages().await.unwrap();
    let parked = tokio::time::timeout(WAIT, parked.next())
        .await
        .expect("a parked message")
        .unwrap()
        .unwrap();
    let parked_env = Envelope::from_json(&parked.payload).unwrap();
    assert_eq!(parked_env.version, POISON);
    assert_eq!(
        parked
            .headers
            .as_ref()
            .unwrap()
            .get("Roombook-Reason")
            .unwrap()
            .as_str(),
        "poison"
    );

    // Operators see both: the flaky message delivered again, the poisoned one parked.
    let metrics = roombook_platform::metrics::handle().render();
    let counted = |name: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains(r#"consumer="bookinglist""#)
                    && l.contains(r#"type="BookingConfirmed""#)
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(
        counted("roombook_messages_redelivered_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        counted("roombook_messages_dead_lettered_total"),
        Some(1.0),
        "{metrics}"
    );

    // Nothing is left unacknowledged, so nothing will be applied again.
    let mut consumer = js
        .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
            "bookinglist",
            topology::EVENTS_STREAM,
        )
        .await
        .unwrap();
    let info = consumer.info().await.unwrap().clone();
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    assert_eq!(info.num_pending, 0, "{info:?}");
    assert_eq!(applied(&db).await, expected);

    cancel.cancel();
    task.await.unwrap();
}

/// A rolling upgrade from a version that kept every event in one stream and gave the
/// notification consumer two filters: declaring the streams again moves the saga's subjects to
/// their own stream (what the old stream holds stays), declaring the consumer again moves it to
/// the whole stream, and the consumer applies what its handler takes and acknowledges the rest
/// unread, the saga event left in the old stream among them.
#[tokio::test]
async fn an_earlier_single_event_stream_and_filtered_consumer_are_moved_and_read_through() {
    roombook_platform::metrics::handle(); // record from the start
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (db, js) = connect(&dir, &nats).await;
    for stream in [topology::SAGA_EVENTS_STREAM, topology::EVENTS_STREAM] {
        js.delete_stream(stream).await.unwrap();
    }
    js.create_stream(jetstream::stream::Config {
        name: topology::EVENTS_STREAM.into(),
        subjects: vec![format!("{}.>", topology::EVENTS_PREFIX)],
        ..Default::default()
    })
    .await
    .unwrap();
    let current = ConsumerSpec::notification();
    let earlier = jetstream::consumer::pull::Config {
        filter_subject: String::new(),
        filter_subjects: vec![
            format!("{}.booking.>", topology::EVENTS_PREFIX),
            format!("{}.confirm.*.ConfirmRequested", topology::EVENTS_PREFIX),
        ],
        ..current.config()
    };
    js.create_consumer_on_stream(earlier, topology::EVENTS_STREAM)
        .await
        .unwrap();

    let booking = Uuid::new_v4();
    let publish = |version, body| {
        let js = js.clone();
        async move {
            let env = Envelope::new(booking, booking, version, body);
            js.publish(topology::subject_for(&env), env.to_json().into())
                .await
                .unwrap()
                .await
                .unwrap()
                .stream
        }
    };
    let saga_event = |state: &str| {
        Body::SagaStateChanged(roombook_platform::contract::SagaStateChanged {
            state: state.into(),
            previous_state: None,
        })
    };
    // Before the upgrade, the saga's event lands in the one event stream.
    publish(1, Body::BookingConfirmed(BookingConfirmed {})).await;
    assert_eq!(
        publish(2, saga_event("CONFIRMING")).await,
        topology::EVENTS_STREAM
    );

    topology::ensure_streams(&js, 1).await.unwrap();
    let mut consumer = topology::ensure_consumer(&js, &current).await.unwrap();
    let info = consumer.info().await.unwrap().clone();
    assert_eq!(info.config.filter_subject, "");
    assert!(info.config.filter_subjects.is_empty(), "{info:?}");
    // After it, the saga's events have their own stream.
    assert_eq!(
        publish(3, saga_event("COMPLETED")).await,
        topology::SAGA_EVENTS_STREAM
    );
    let confirm_completed = Body::ConfirmCompleted(roombook_platform::contract::ConfirmDecided {
        confirm_id: Uuid::new_v4(),
        confirm_user_id: "admin".into(),
        reason: None,
    });
    assert_eq!(publish(4, confirm_completed).await, topology::EVENTS_STREAM);
    publish(6, Body::BookingConfirmed(BookingConfirmed {})).await;

    let cancel = CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        db.clone(),
        js.clone(),
        OutboxSignal::default(),
        current,
        Arc::new(Recorder),
        cancel.clone(),
    ));
    eventually("the consumer to settle", WAIT, || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.ok()?.clone();
            (info.ack_floor.stream_sequence == 4 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
    assert_eq!(applied(&db).await, [1, 6]);
    let metrics = roombook_platform::metrics::handle().render();
    for skipped_type in ["SagaStateChanged", "ConfirmCompleted"] {
        let skipped = metrics.lines().find(|l| {
            l.starts_with("roombook_messages_consumed_total")
                && l.contains(r#"consumer="notification""#)
                && l.contains(r#"outcome="skipped""#)
                && l.contains(&format!(r#"type="{skipped_type}""#))
        });
        assert!(skipped.is_some_and(|l| l.ends_with(" 1")), "{metrics}");
    }

    cancel.cancel();
    task.await.unwrap();
}

/// Puts even versions in the outbox (as a participant announcing what it did) and records
/// odd ones only in its own table.
struct EvenAnnouncer;

impl Handler for EvenAnnouncer {
    async fn handle(&self, tx: &mut Tx, msg: &Incoming) -> Result<(), HandleError> {
        if record_applied(tx, msg).await?.is_multiple_of(2) {
            outbox::enqueue(tx, &msg.envelope, &msg.trace);
        }
        Ok(())
    }
}

#[tokio::test]
async fn only_a_commit_that_adds_to_the_outbox_wakes_the_relay() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (db, js) = connect(&dir, &nats).await;
    let signal = OutboxSignal::default();
    let (mut commits, mut rows) = (signal.commits(), signal.outbox_rows());
    let cancel = CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        db.clone(),
        js.clone(),
        signal.clone(),
        ConsumerSpec::bookinglist(),
        Arc::new(EvenAnnouncer),
        cancel.clone(),
    ));
    let booking = Uuid::new_v4();
    let publish = |version: u64| publish_confirmed(&js, booking, version);

    // Applied, so the feed is told; nothing for the relay to publish, so it is not woken.
    publish(1).await;
    tokio::time::timeout(WAIT, commits.changed())
        .await
        .expect("the commit reported")
        .unwrap();
    assert_eq!(applied(&db).await, [1]);
    assert!(
        !rows.has_changed().unwrap(),
        "the relay was woken for nothing"
    );

    publish(2).await;
    tokio::time::timeout(WAIT, rows.changed())
        .await
        .expect("the relay woken")
        .unwrap();
    assert!(commits.has_changed().unwrap());
    assert_eq!(applied(&db).await, [1, 2]);
    let queued: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, 1);

    cancel.cancel();
    task.await.unwrap();
}
