//! What the service knows of each booking (`notification_bookings`): the facts `BookingCreated`
//! gave (the booker's address, room and slot, which later events do not carry) and the newest
//! booking-event version already turned into mail.
//!
//! The consumer works on a batch's bookings together ([`BatchBookings`]): one statement makes
//! sure each has a row, one reads and (on PostgreSQL) locks them, and one writes back those the
//! batch changed — three per batch, where an upsert per event cost one or two each. The lock
//! is what keeps two replicas from both taking an event as the newest: the second waits for
//! the first to commit and then sees its version.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use platform::{
    contract::RoomId,
    db::{padded_len, Backend, StatementTexts, Tx},
    time::{from_millis, to_millis},
};
use sqlx::{
    any::{AnyArguments, AnyRow},
    Any, Executor, Row as _,
};
use uuid::Uuid;

use crate::domain::BookingFacts;

const FACT_COLUMNS: &str =
    "created_seen, booking_user_id, booking_user_email, room_id, start_ms, end_ms";

/// What [`BatchBookings::advance`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    /// The newer (or equal) version already mailed, when the event is superseded.
    pub superseded_by: Option<i64>,
    /// What `BookingCreated` said about the booking, if it has arrived.
    pub facts: Option<BookingFacts>,
}

/// One booking's row as the batch sees it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Known {
    last_booking_version: i64,
    facts: Option<BookingFacts>,
}

/// The bookings of one consumer batch, read at its start and written back at its end.
#[derive(Debug, Default)]
pub struct BatchBookings {
    rows: HashMap<Uuid, Known>,
    changed: BTreeSet<Uuid>,
}

impl BatchBookings {
    /// Reads (and on PostgreSQL locks until commit) the rows of `bookings`, creating those not
    /// seen before. Rows are taken in the order of their ids, so two batches that share
    /// bookings wait for each other instead of deadlocking.
    pub async fn load(
        tx: &mut Tx,
        bookings: &[Uuid],
        now: DateTime<Utc>,
    ) -> Result<BatchBookings, sqlx::Error> {
        let ids: BTreeSet<Uuid> = bookings.iter().copied().collect();
        let Some(last) = ids.last().map(Uuid::to_string) else {
            return Ok(BatchBookings::default());
        };
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        // Padded with repeats of the last id, which change nothing in either statement.
        let padded = padded_len(ids.len());
        let bind_ids = |query: sqlx::query::Query<'static, Any, AnyArguments<'static>>| {
            (0..padded).fold(query, |q, i| q.bind(ids.get(i).unwrap_or(&last).clone()))
        };

        static CREATE: StatementTexts<usize> = StatementTexts::new();
        let create = CREATE.get(padded, || {
            let rows = (0..padded)
                .map(|i| format!("(${}, $1)", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "INSERT INTO notification_bookings (booking_id, updated_at) VALUES {rows} \
                 ON CONFLICT (booking_id) DO NOTHING"
            )
        });
        bind_ids(sqlx::query(create).bind(to_millis(now)))
            .execute(&mut *tx)
            .await?;

        static READ: StatementTexts<(usize, bool)> = StatementTexts::new();
        let lock = tx.backend() == Backend::Postgres;
        let read = READ.get((padded, lock), || {
            format!(
                "SELECT booking_id, last_booking_version, {FACT_COLUMNS} \
                 FROM notification_bookings WHERE booking_id IN ({}) ORDER BY booking_id{}",
                platform::db::params(1, padded),
                if lock { " FOR UPDATE" } else { "" }
            )
        });
        let mut rows = HashMap::with_capacity(ids.len());
        for row in bind_ids(sqlx::query(read)).fetch_all(&mut *tx).await? {
            let id: String = row.try_get("booking_id")?;
            let id = Uuid::parse_str(&id).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            let known = Known {
                last_booking_version: row.try_get("last_booking_version")?,
                facts: seen_facts(&row)?,
            };
            rows.insert(id, known);
        }
        Ok(BatchBookings {
            rows,
            changed: BTreeSet::new(),
        })
    }

    /// Keeps what `BookingCreated` says about the booking.
    pub fn record_created(&mut self, booking: Uuid, facts: BookingFacts) {
        self.row(booking).facts = Some(facts);
        self.changed.insert(booking);
    }

    /// Moves the booking's newest mailed version up to `version`, unless the batch or an
    /// earlier one already mailed that version or a newer one.
    pub fn advance(&mut self, booking: Uuid, version: i64) -> Advance {
        let row = self.row(booking);
        if row.last_booking_version >= version {
            return Advance {
                superseded_by: Some(row.last_booking_version),
                facts: row.facts.clone(),
            };
        }
        row.last_booking_version = version;
        let facts = row.facts.clone();
        self.changed.insert(booking);
        Advance {
            superseded_by: None,
            facts,
        }
    }

    /// The row of `booking`, which [`BatchBookings::load`] must have been given.
    fn row(&mut self, booking: Uuid) -> &mut Known {
        // A booking the batch did not load would be saved to no row: a bug in the caller, and
        // one the batch's tests would show; a fresh row keeps this call from failing.
        debug_assert!(
            self.rows.contains_key(&booking),
            "booking {booking} not loaded"
        );
        self.rows.entry(booking).or_default()
    }

    /// Writes the rows the batch changed, in one statement.
    pub async fn save(self, tx: &mut Tx, now: DateTime<Utc>) -> Result<(), sqlx::Error> {
        let Some(&last) = self.changed.last() else {
            return Ok(());
        };
        let changed: Vec<Uuid> = self.changed.iter().copied().collect();
        let padded = padded_len(changed.len());
        static TEXTS: StatementTexts<usize> = StatementTexts::new();
        let sql = TEXTS.get(padded, || {
            let values = platform::db::param_groups(padded, 8, 2, ", ", |p| format!("({p})"));
            // VALUES names its columns column1, column2, … on both databases.
            format!(
                "UPDATE notification_bookings SET last_booking_version = saved.column2, \
                 created_seen = saved.column3, booking_user_id = saved.column4, \
                 booking_user_email = saved.column5, room_id = saved.column6, \
                 start_ms = saved.column7, end_ms = saved.column8, updated_at = $1 \
                 FROM (VALUES {values}) AS saved \
                 WHERE notification_bookings.booking_id = saved.column1"
            )
        });
        let mut query = sqlx::query(sql).bind(to_millis(now));
        for i in 0..padded {
            // Padded with repeats of the last row, which write the same values again.
            let id = changed.get(i).copied().unwrap_or(last);
            let row = &self.rows[&id];
            let facts = row.facts.as_ref();
            query = query
                .bind(id.to_string())
                .bind(row.last_booking_version)
                .bind(i64::from(facts.is_some()))
                .bind(facts.map(|f| f.booking_user_id.clone()))
                .bind(facts.and_then(|f| f.booking_user_email.clone()))
                .bind(facts.map(|f| f.room_id))
                .bind(facts.map(|f| to_millis(f.start)))
                .bind(facts.map(|f| to_millis(f.end)));
        }
        query.execute(&mut *tx).await?;
        Ok(())
    }
}

/// What `BookingCreated` said about the booking, if it has arrived.
pub async fn booking_facts<'c, E: Executor<'c, Database = Any>>(
    db: E,
    booking: Uuid,
) -> Result<Option<BookingFacts>, sqlx::Error> {
    match sqlx::query(&format!(
        "SELECT {FACT_COLUMNS} FROM notification_bookings WHERE booking_id = $1"
    ))
    .bind(booking.to_string())
    .fetch_optional(db)
    .await?
    {
        Some(row) => seen_facts(&row),
        None => Ok(None),
    }
}

/// The facts in a row of [`FACT_COLUMNS`], if `BookingCreated` has filled them in.
fn seen_facts(r: &AnyRow) -> Result<Option<BookingFacts>, sqlx::Error> {
    if r.try_get::<i64, _>("created_seen")? != 1 {
        return Ok(None);
    }
    Ok(Some(BookingFacts {
        booking_user_id: r.try_get("booking_user_id")?,
        booking_user_email: r.try_get("booking_user_email")?,
        room_id: r.try_get::<RoomId, _>("room_id")?,
        start: from_millis(r.try_get("start_ms")?),
        end: from_millis(r.try_get("end_ms")?),
    }))
}

#[cfg(test)]
mod tests {
    use platform::{db::Db, testkit::TestBackend};

    use super::*;

    async fn database(backend: TestBackend) -> (platform::testkit::TestDatabases, Db) {
        let dbs = platform::testkit::TestDatabases::new(backend);
        let db = Db::connect(&dbs.create("notification").await, crate::migrations())
            .await
            .unwrap();
        (dbs, db)
    }

    fn facts(user: &str) -> BookingFacts {
        let at = from_millis(to_millis(Utc::now()));
        BookingFacts {
            booking_user_id: user.into(),
            booking_user_email: Some(format!("{user}@example.com")),
            room_id: 101,
            start: at,
            end: at + chrono::Duration::hours(1),
        }
    }

    /// What the consumer does with one booking event.
    #[derive(Clone)]
    enum Step {
        Created(Uuid, BookingFacts),
        Later(Uuid, i64),
    }

    fn apply(batch: &mut BatchBookings, step: &Step) -> Advance {
        match step {
            Step::Created(id, facts) => {
                batch.record_created(*id, facts.clone());
                batch.advance(*id, 1)
            }
            Step::Later(id, version) => batch.advance(*id, *version),
        }
    }

    fn booking_of(step: &Step) -> Uuid {
        match step {
            Step::Created(id, _) | Step::Later(id, _) => *id,
        }
    }

    async fn run_batch(db: &Db, steps: &[Step]) -> Vec<Advance> {
        let ids: Vec<Uuid> = steps.iter().map(booking_of).collect();
        let mut tx = db.begin().await.unwrap();
        let mut batch = BatchBookings::load(&mut tx, &ids, Utc::now())
            .await
            .unwrap();
        let found = steps.iter().map(|s| apply(&mut batch, s)).collect();
        batch.save(&mut tx, Utc::now()).await.unwrap();
        tx.commit().await.unwrap();
        found
    }

    /// Each event of a batch sees the booking as the events before it (in the batch or in an
    /// earlier one) left it, and the rows end as one event per transaction leaves them.
    async fn a_batch_ends_as_its_events_one_at_a_time_would(backend: TestBackend) {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (fa, fb) = (facts("alice"), facts("bob"));
        let steps = vec![
            // A's confirmation overtakes its creation, which is then superseded.
            Step::Later(a, 2),
            Step::Created(a, fa.clone()),
            Step::Later(a, 2),
            Step::Created(b, fb.clone()),
            Step::Later(b, 3),
            Step::Later(b, 2),
            // C's creation never arrives.
            Step::Later(c, 2),
        ];
        let expected = |superseded_by: Option<i64>, facts: Option<&BookingFacts>| Advance {
            superseded_by,
            facts: facts.cloned(),
        };
        let wanted = vec![
            expected(None, None),
            expected(Some(2), Some(&fa)),
            expected(Some(2), Some(&fa)),
            expected(None, Some(&fb)),
            expected(None, Some(&fb)),
            expected(Some(3), Some(&fb)),
            expected(None, None),
        ];

        let (_dbs, together) = database(backend).await;
        assert_eq!(run_batch(&together, &steps).await, wanted);
        let (_dbs2, apart) = database(backend).await;
        let mut one_by_one = Vec::new();
        for step in &steps {
            one_by_one.extend(run_batch(&apart, std::slice::from_ref(step)).await);
        }
        assert_eq!(one_by_one, wanted);

        for (id, version, facts) in [(a, 2, Some(&fa)), (b, 3, Some(&fb)), (c, 2, None)] {
            for db in [&together, &apart] {
                let after = run_batch(db, &[Step::Later(id, version)]).await;
                assert_eq!(after, vec![expected(Some(version), facts)], "{id}");
                assert_eq!(booking_facts(&db.pool, id).await.unwrap().as_ref(), facts);
            }
        }
    }

    #[tokio::test]
    async fn a_batch_ends_as_its_events_one_at_a_time_would_on_sqlite() {
        a_batch_ends_as_its_events_one_at_a_time_would(TestBackend::Sqlite).await;
    }

    #[tokio::test]
    async fn a_batch_ends_as_its_events_one_at_a_time_would_on_postgres() {
        a_batch_ends_as_its_events_one_at_a_time_would(TestBackend::Postgres).await;
    }

    /// Two replicas' batches with the same booking, new or known: the second, starting while
    /// the first is under way, waits for it to commit and then finds its version, so the older event is not mailed after the
    /// newer one (nor its version written over the newer).
    #[tokio::test]
    async fn a_batch_waits_for_another_that_has_the_same_booking_on_postgres() {
        let (_dbs, db) = database(TestBackend::Postgres).await;
        let known = Uuid::new_v4();
        run_batch(&db, &[Step::Created(known, facts("alice"))]).await;
        for booking in [Uuid::new_v4(), known] {
            let mut first = db.begin().await.unwrap();
            let mut batch = BatchBookings::load(&mut first, &[booking], Utc::now())
                .await
                .unwrap();
            assert_eq!(batch.advance(booking, 3).superseded_by, None);

            let second = tokio::spawn({
                let db = db.clone();
                async move { run_batch(&db, &[Step::Later(booking, 2)]).await }
            });
            platform::testkit::until_a_session_waits_on_a_lock(&db.pool).await;
            batch.save(&mut first, Utc::now()).await.unwrap();
            first.commit().await.unwrap();
            assert_eq!(second.await.unwrap()[0].superseded_by, Some(3), "{booking}");
        }
    }
}
