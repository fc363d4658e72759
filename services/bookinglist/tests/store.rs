//! The list's storage on SQLite and PostgreSQL, without a bus: live writes, queries, and the
//! rebuild's begin / replay / swap steps, checking that the old view serves until the swap.

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use platform::{
    contract::*,
    db::Db,
    testkit::{TestBackend, TestDatabases},
};
use roombook_bookinglist::{
    projection::BookingStatus,
    query::{FeedFilter, ListQuery},
    rebuild::{self, BeginError},
    store,
};
use uuid::Uuid;

async fn database(backend: TestBackend) -> (TestDatabases, Db) {
    platform::telemetry::init_for_tests();
    let dbs = TestDatabases::new(backend);
    let url = dbs.create("bookinglist").await;
    let db = Db::connect(&url, roombook_bookinglist::migrations())
        .await
        .expect("database connects and migrates");
    (dbs, db)
}

fn t(hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, hour, 0, 0).unwrap()
}

fn created(booking: Uuid, user: &str, room: RoomId, hour: u32) -> Envelope {
    let mut e = Envelope::new(
        booking,
        booking,
        1,
        Body::BookingCreated(BookingCreated {
            room_id: room,
            booking_user_id: user.into(),
            booking_user_email: None,
            use_start_dtm: t(hour),
            use_end_dtm: t(hour + 1),
        }),
    );
    e.occurred_at = t(0) + Duration::minutes(i64::from(hour));
    e
}

fn confirmed(booking: Uuid) -> Envelope {
    Envelope::new(
        booking,
        booking,
        2,
        Body::BookingConfirmed(BookingConfirmed {}),
    )
}

/// Applies an event as the live consumer does.
async fn live(db: &Db, env: &Envelope) {
    let mut tx = db.begin().await.unwrap();
    let claim = store::claim(&mut tx, 1).await.unwrap();
    for table in claim.tables() {
        store::project(&mut tx, table, env, claim.seq)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

fn event(booking: Uuid, version: u64, body: Body) -> Envelope {
    Envelope::new(booking, booking, version, body)
}

fn saga(booking: Uuid, version: u64, state: &str) -> Envelope {
    event(
        booking,
        version,
        Body::SagaStateChanged(SagaStateChanged {
            state: state.into(),
            previous_state: None,
        }),
    )
}

/// Applies events as the live consumer does with a batch: one claim for the distinct bookings.
async fn live_batch(db: &Db, events: &[Envelope]) {
    let events: Vec<&Envelope> = events.iter().collect();
    let count = store::distinct_bookings(&events).len() as i64;
    let mut tx = db.begin().await.unwrap();
    let claim = store::claim(&mut tx, count).await.unwrap();
    for table in claim.tables() {
        store::project_all(&mut tx, table, &events, claim.seq - count + 1)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

async fn active_rows(db: &Db) -> Vec<roombook_bookinglist::projection::BookingRow> {
    let table = store::active_table(&db.pool).await.unwrap();
    store::all(&db.pool, table).await.unwrap()
}

async fn filters_sort_and_page_on_the_database(backend: TestBackend) {
    let (_dbs, db) = database(backend).await;
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    live(&db, &created(a, "alice", 101, 9)).await;
    live(&db, &created(b, "alice", 102, 11)).await;
    live(&db, &created(c, "bob", 101, 13)).await;
    live(&db, &confirmed(b)).await;
    // A partial row: only a later event of an unknown booking.
    live(&db, &confirmed(Uuid::new_v4())).await;

    let table = store::active_table(&db.pool).await.unwrap();
    let query = |pairs: &[(&str, &str)]| {
        ListQuery::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    };
    let ids = |rows: &[roombook_bookinglist::projection::BookingRow]| {
        rows.iter().map(|r| r.booking_id).collect::<Vec<_>>()
    };

    let (rows, total) = store::list(&db.pool, table, &query(&[])).await.unwrap();
    assert_eq!(total, 4);
    // Newest booking first; the partial row (no bookingDtm) last.
    assert_eq!(ids(&rows[..3]), vec![c, b, a]);
    assert!(rows[3].booking_dtm.is_none());

    let (rows, total) = store::list(&db.pool, table, &query(&[("bookingUserId", "alice")]))
        .await
        .unwrap();
    assert_eq!((ids(&rows), total), (vec![b, a], 2));

    let (rows, _) = store::list(
        &db.pool,
        table,
        &query(&[("roomId", "101"), ("sort", "useStartDtm")]),
    )
    .await
    .unwrap();
    assert_eq!(ids(&rows), vec![a, c]);

    let (rows, _) = store::list(&db.pool, table, &query(&[("bookingStatus", "CONFIRMED")]))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows
        .iter()
        .all(|r| r.booking_status == Some(BookingStatus::Confirmed)));

    // Time range: slots overlapping [10:30, 13:00) are b's (11-12) only; c starts at 13.
    let (rows, _) = store::list(
        &db.pool,
        table,
        &query(&[("from", "2026-06-01T10:30:00Z"), ("to", "20260601130000")]),
    )
    .await
    .unwrap();
    assert_eq!(ids(&rows), vec![b]);

    let (rows, total) = store::list(
        &db.pool,
        table,
        &query(&[("sort", "useStartDtm"), ("size", "2"), ("page", "2")]),
    )
    .await
    .unwrap();
    assert_eq!(total, 4);
    assert_eq!(rows[0].booking_id, c);
    assert_eq!(rows.len(), 2);

    // The feed query sees changes in order, filtered.
    let changes = store::changes_since(
        &db.pool,
        table,
        0,
        &FeedFilter {
            user: Some("alice".into()),
            ..FeedFilter::default()
        },
        100,
    )
    .await
    .unwrap();
    assert_eq!(
        changes
            .iter()
            .map(|(_, r)| r.booking_id)
            .collect::<Vec<_>>(),
        vec![a, b]
    );
    assert!(changes[0].0 < changes[1].0);

    // By saga state: only rows whose saga is in one of the states asked for.
    live(&db, &saga(a, 1, "AWAITING_APPROVAL")).await;
    live(&db, &saga(b, 2, "COMPLETED")).await;
    live(&db, &saga(c, 1, "STARTED")).await;
    let by_state = |states: &'static [&'static str]| {
        let filter = FeedFilter {
            saga_states: states.to_vec(),
            ..FeedFilter::default()
        };
        let db = db.clone();
        async move {
            store::changes_since(&db.pool, table, 0, &filter, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|(_, r)| r.booking_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        by_state(&["AWAITING_APPROVAL", "COMPLETED"]).await,
        vec![a, b]
    );
    assert_eq!(by_state(&["STARTED"]).await, vec![c]);
    assert!(by_state(&["CANCELLED"]).await.is_empty());
}

async fn a_batch_folds_into_the_rows_that_one_event_at_a_time_gives(backend: TestBackend) {
    let (dbs, one_by_one) = database(backend).await;
    let batched = Db::connect(
        &dbs.create("bookinglist_batched").await,
        roombook_bookinglist::migrations(),
    )
    .await
    .unwrap();
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let cancelled = |booking, version, reason| {
        event(
            booking,
            version,
            Body::BookingCancelled(BookingCancelled {
                reason,
                detail: None,
            }),
        )
    };
    // Bookings interleaved; a later event before its booking's BookingCreated (c); a repeat
    // (a's confirmation); an older event after a newer one (b's saga states).
    let history = vec![
        created(a, "alice", 101, 9),
        saga(b, 2, "CANCELLED"),
        confirmed(c),
        confirmed(a),
        created(b, "bob", 102, 10),
        saga(b, 1, "BOOKED"),
        confirmed(a),
        cancelled(b, 2, CancelReason::Denied),
        created(c, "carol", 103, 11),
        saga(a, 1, "CONFIRMED"),
        cancelled(c, 3, CancelReason::UserCancelled),
    ];
    for e in &history {
        live(&one_by_one, e).await;
    }
    // Batches of several sizes, some holding more than one event of a booking.
    let mut rest = &history[..];
    for size in [3, 1, 4, 3] {
        let (batch, tail) = rest.split_at(size);
        live_batch(&batched, batch).await;
        rest = tail;
    }
    assert!(rest.is_empty());

    let expected = active_rows(&one_by_one).await;
    assert_eq!(expected.len(), 3);
    assert_eq!(active_rows(&batched).await, expected);
    // Every changed row carries a change number of its own, in the order the feed reads them.
    let table = store::active_table(&batched.pool).await.unwrap();
    let changes = store::changes_since(&batched.pool, table, 0, &FeedFilter::default(), 100)
        .await
        .unwrap();
    let mut seqs: Vec<i64> = changes.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs.len(), 3);
    seqs.dedup();
    assert_eq!(seqs.len(), 3, "one change number per row: {seqs:?}");
}

async fn the_old_view_serves_during_a_rebuild_and_the_swap_brings_the_same_rows(
    backend: TestBackend,
) {
    let (_dbs, db) = database(backend).await;
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let history = vec![
        created(a, "alice", 101, 9),
        created(b, "bob", 102, 10),
        confirmed(a),
    ];
    for e in &history {
        live(&db, e).await;
    }
    let before = active_rows(&db).await;
    assert_eq!(before.len(), 2);
    let old_table = store::active_table(&db.pool).await.unwrap();

    let (rebuild, status) = rebuild::begin(&db).await.unwrap();
    assert!(status.is_running());
    assert_eq!(status.generation, 1);
    assert_ne!(rebuild.shadow, old_table);
    // A second request while this one runs is refused.
    assert!(matches!(
        rebuild::begin(&db).await,
        Err(BeginError::AlreadyRunning(_))
    ));

    // Live events during the rebuild reach the old view at once (and the shadow too).
    let late = created(c, "carol", 103, 12);
    live(&db, &late).await;
    assert_eq!(active_rows(&db).await.len(), 3);
    assert_eq!(store::active_table(&db.pool).await.unwrap(), old_table);

    // The replay folds the history, part of it twice, in batches.
    rebuild::apply_batch(&db, &rebuild, &history[..2], Some(2))
        .await
        .unwrap();
    // Still the old view while the shadow fills.
    assert_eq!(store::active_table(&db.pool).await.unwrap(), old_table);
    rebuild::apply_batch(&db, &rebuild, &history[1..], Some(3))
        .await
        .unwrap();
    rebuild::swap(&db, &rebuild).await.unwrap();

    assert_eq!(store::active_table(&db.pool).await.unwrap(), rebuild.shadow);
    let after = active_rows(&db).await;
    let live_view = store::all(&db.pool, old_table).await.unwrap();
    assert_eq!(after, live_view);
    assert_eq!(after.len(), 3);
    let status = rebuild::status(&db).await.unwrap();
    assert_eq!(status.state, "SUCCEEDED");
    assert_eq!(status.generation, 2);
    assert_eq!(status.events, 4);
    assert_eq!(status.replayed_sequence, Some(3));

    // After the swap, live events go to the new view only.
    live(&db, &confirmed(b)).await;
    let b_row = store::get(&db.pool, rebuild.shadow, b)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b_row.booking_status, Some(BookingStatus::Confirmed));
    let stale = store::get(&db.pool, old_table, b).await.unwrap().unwrap();
    assert_eq!(stale.booking_status, Some(BookingStatus::Booked));

    // The next rebuild starts the old table afresh.
    let (next, _) = rebuild::begin(&db).await.unwrap();
    assert_eq!(next.shadow, old_table);
    assert!(store::all(&db.pool, old_table).await.unwrap().is_empty());
}

async fn a_failed_rebuild_leaves_the_view_and_stops_writing_the_shadow(backend: TestBackend) {
    let (_dbs, db) = database(backend).await;
    let a = Uuid::new_v4();
    live(&db, &created(a, "alice", 101, 9)).await;
    let active = store::active_table(&db.pool).await.unwrap();
    let (rebuild, _) = rebuild::begin(&db).await.unwrap();
    rebuild::fail(&db, &rebuild, "the stream is gone")
        .await
        .unwrap();

    let status = rebuild::status(&db).await.unwrap();
    assert_eq!(status.state, "FAILED");
    assert_eq!(status.error.as_deref(), Some("the stream is gone"));
    assert_eq!(status.generation, 1);
    live(&db, &confirmed(a)).await;
    assert!(store::all(&db.pool, rebuild.shadow)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store::active_table(&db.pool).await.unwrap(), active);
    // The failed rebuild can no longer write or swap.
    assert!(rebuild::apply_batch(&db, &rebuild, &[confirmed(a)], None)
        .await
        .is_err());
    assert!(rebuild::swap(&db, &rebuild).await.is_err());
    // And a new one may start.
    assert!(rebuild::begin(&db).await.is_ok());
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(platform::testkit::TestBackend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(platform::testkit::TestBackend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    filters_sort_and_page_on_the_database,
    a_batch_folds_into_the_rows_that_one_event_at_a_time_gives,
    the_old_view_serves_during_a_rebuild_and_the_swap_brings_the_same_rows,
    a_failed_rebuild_leaves_the_view_and_stops_writing_the_shadow,
);
