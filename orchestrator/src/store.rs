//! Persistence of sagas and their timelines (same SQL on SQLite and PostgreSQL).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use platform::{
    appends::Target,
    db::{Db, Tx},
    time::{from_millis, now_millis, to_millis},
};
use serde::Serialize;
use sqlx::{
    any::{AnyArguments, AnyRow},
    Any, Executor, Row as _,
};
use uuid::Uuid;

use crate::saga::{BookingInfo, Saga, SagaState};

/// A saga as stored: the state machine's view plus bookkeeping.
#[derive(Debug, Clone)]
pub struct StoredSaga {
    pub saga: Saga,
    pub revision: i64,
    /// When the pending command is sent again (None: nothing pending, or stuck).
    pub next_retry_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub settled_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "booking_id, saga_id, state, booking_cancelled, room_id, booking_user_id, \
     start_ms, end_ms, confirm_id, outcome, booking_version, confirm_version, version, revision, \
     created_at, updated_at, settled_at, deadline_ms, expiry_requested, pending_command, attempts, \
     next_retry_ms, stuck, announced_state";

fn uuid(r: &AnyRow, col: &str) -> Result<Uuid, sqlx::Error> {
    let s: String = r.try_get(col)?;
    Uuid::parse_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn state_of(name: &str) -> Result<SagaState, sqlx::Error> {
    SagaState::parse(name)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown saga state {name}").into()))
}

fn from_row(r: &AnyRow) -> Result<StoredSaga, sqlx::Error> {
    let state: String = r.try_get("state")?;
    let room: Option<i64> = r.try_get("room_id")?;
    let booking = match room {
        Some(room_id) => Some(BookingInfo {
            room_id,
            booking_user_id: r
                .try_get::<Option<String>, _>("booking_user_id")?
                .unwrap_or_default(),
            use_start_dtm: from_millis(
                r.try_get::<Option<i64>, _>("start_ms")?.unwrap_or_default(),
            ),
            use_end_dtm: from_millis(r.try_get::<Option<i64>, _>("end_ms")?.unwrap_or_default()),
        }),
        None => None,
    };
    let confirm: Option<String> = r.try_get("confirm_id")?;
    let count = |col: &str| -> Result<u64, sqlx::Error> {
        Ok(u64::try_from(r.try_get::<i64, _>(col)?).unwrap_or_default())
    };
    Ok(StoredSaga {
        saga: Saga {
            saga_id: uuid(r, "saga_id")?,
            booking_id: uuid(r, "booking_id")?,
            state: state_of(&state)?,
            booking_cancelled: r.try_get::<i64, _>("booking_cancelled")? != 0,
            booking,
            confirm_id: confirm.and_then(|c| Uuid::parse_str(&c).ok()),
            outcome: r.try_get("outcome")?,
            booking_version: count("booking_version")?,
            confirm_version: count("confirm_version")?,
            version: count("version")?,
            approval_deadline: r.try_get::<Option<i64>, _>("deadline_ms")?.map(from_millis),
            expiry_requested: r.try_get::<i64, _>("expiry_requested")? != 0,
            pending: r
                .try_get::<Option<String>, _>("pending_command")?
                .map(|json| serde_json::from_str(&json))
                .transpose()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or_default(),
            stuck: r.try_get::<i64, _>("stuck")? != 0,
            announced: r
                .try_get::<Option<String>, _>("announced_state")?
                .map(|a| state_of(&a))
                .transpose()?,
        },
        revision: r.try_get("revision")?,
        next_retry_at: r
            .try_get::<Option<i64>, _>("next_retry_ms")?
            .map(from_millis),
        created_at: from_millis(r.try_get("created_at")?),
        updated_at: from_millis(r.try_get("updated_at")?),
        settled_at: r.try_get::<Option<i64>, _>("settled_at")?.map(from_millis),
    })
}

pub async fn load<'c, E: Executor<'c, Database = Any>>(
    db: E,
    booking_id: Uuid,
) -> Result<Option<StoredSaga>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sagas WHERE booking_id = $1"
    ))
    .bind(booking_id.to_string())
    .fetch_optional(db)
    .await?
    .map(|r| from_row(&r))
    .transpose()
}

/// The sagas of `booking_ids` that exist, by booking id, in one statement (for a consumer batch,
/// at most `platform::consumer::MAX_BATCH` ids).
pub async fn load_many(
    tx: &mut Tx,
    booking_ids: &[Uuid],
) -> Result<HashMap<Uuid, StoredSaga>, sqlx::Error> {
    if booking_ids.is_empty() {
        return Ok(HashMap::new());
    }
    // Repeats of the last id change nothing in an IN list.
    let padded = platform::db::padded_len(booking_ids.len());
    static TEXTS: platform::db::StatementTexts<usize> = platform::db::StatementTexts::new();
    let sql = TEXTS.get(padded, || {
        format!(
            "SELECT {COLUMNS} FROM sagas WHERE booking_id IN ({})",
            platform::db::params(1, padded)
        )
    });
    let mut query = sqlx::query(sql);
    for i in 0..padded {
        query = query.bind(booking_ids[i.min(booking_ids.len() - 1)].to_string());
    }
    query
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| from_row(r).map(|s| (s.saga.booking_id, s)))
        .collect()
}

/// Finds a saga by its saga id or its booking id.
pub async fn find(db: &Db, id: Uuid) -> Result<Option<StoredSaga>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM sagas WHERE saga_id = $1 OR booking_id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&db.pool)
    .await?
    .map(|r| from_row(&r))
    .transpose()
}

/// Inserts a new saga (`previous` None) or updates the one read as `previous` if it is still at
/// that revision. Returns false when another writer got there first (the caller retries the
/// message).
pub async fn save(
    tx: &mut Tx,
    saga: &Saga,
    previous: Option<&StoredSaga>,
    next_retry_at: Option<DateTime<Utc>>,
) -> Result<bool, sqlx::Error> {
    let mut saves = HeldSaves::default();
    saves.hold(saga, previous, next_retry_at);
    saves.write(tx).await
}

/// Saga saves held back until the end of a consumer batch, then written together
/// ([`HeldSaves::write`]; [`save`] is a batch of one): each saga once, in its latest state, guarded by the revision it was
/// read at.
#[derive(Default)]
pub struct HeldSaves {
    sagas: HashMap<Uuid, Held>,
}

struct Held {
    /// The saga's latest state; `revision` is the one it was read at (0 for a new saga).
    stored: StoredSaga,
    new: bool,
}

impl HeldSaves {
    /// The saga of `booking_id` as a held save left it.
    pub fn latest(&self, booking_id: Uuid) -> Option<StoredSaga> {
        self.sagas.get(&booking_id).map(|h| h.stored.clone())
    }

    /// Holds `saga`, read as `previous` (None: new), to be written by [`HeldSaves::write`].
    pub fn hold(
        &mut self,
        saga: &Saga,
        previous: Option<&StoredSaga>,
        next_retry_at: Option<DateTime<Utc>>,
    ) {
        let now = from_millis(now_millis());
        // Stamped whenever it is saved settled.
        let settled = |p: Option<&StoredSaga>| {
            saga.state
                .is_settled()
                .then_some(now)
                .or_else(|| p.and_then(|p| p.settled_at))
        };
        match self.sagas.get_mut(&saga.booking_id) {
            Some(held) => {
                held.stored.settled_at = settled(Some(&held.stored));
                held.stored.saga = saga.clone();
                held.stored.next_retry_at = next_retry_at;
                held.stored.updated_at = now;
            }
            None => {
                let held = Held {
                    stored: StoredSaga {
                        saga: saga.clone(),
                        revision: previous.map_or(0, |p| p.revision),
                        next_retry_at,
                        created_at: previous.map_or(now, |p| p.created_at),
                        updated_at: now,
                        settled_at: settled(previous),
                    },
                    new: previous.is_none(),
                };
                self.sagas.insert(saga.booking_id, held);
            }
        }
    }

    /// Writes the held sagas: new ones in one insert, the others in one update. False when
    /// one of them was written by someone else since it was read (nothing is lost: the
    /// caller's transaction is rolled back and the batch retried).
    pub async fn write(self, tx: &mut Tx) -> Result<bool, sqlx::Error> {
        let (new, changed): (Vec<Held>, Vec<Held>) = self.sagas.into_values().partition(|h| h.new);
        Ok(insert_all(tx, &new).await? && update_all(tx, &changed).await?)
    }
}

/// Inserts `sagas` (none may exist yet); false if one did.
async fn insert_all(tx: &mut Tx, sagas: &[Held]) -> Result<bool, sqlx::Error> {
    let Some(last) = sagas.last() else {
        return Ok(true);
    };
    // Repeats of the last saga insert nothing more.
    let padded = platform::db::padded_len(sagas.len());
    static TEXTS: platform::db::StatementTexts<usize> = platform::db::StatementTexts::new();
    let sql = TEXTS.get(padded, || {
        let width = INSERTED_FIRST.len() + CHANGING.len();
        let values = platform::db::param_groups(padded, width, 1, ", ", |p| format!("({p})"));
        format!(
            "INSERT INTO sagas ({}, {}) VALUES {values} ON CONFLICT DO NOTHING \
             RETURNING booking_id",
            INSERTED_FIRST.join(", "),
            CHANGING.join(", ")
        )
    });
    let mut query = sqlx::query_scalar::<_, String>(sql);
    for i in 0..padded {
        let s = &sagas.get(i).unwrap_or(last).stored;
        let info = s.saga.booking.as_ref();
        query = query
            .bind(s.saga.booking_id.to_string())
            .bind(s.saga.saga_id.to_string())
            .bind(info.map(|b| b.room_id))
            .bind(info.map(|b| b.booking_user_id.clone()))
            .bind(info.map(|b| to_millis(b.use_start_dtm)))
            .bind(info.map(|b| to_millis(b.use_end_dtm)))
            .bind(s.saga.approval_deadline.map(to_millis))
            .bind(1_i64)
            .bind(to_millis(s.created_at))
            .bind(to_millis(s.updated_at));
        query = bind_changing(query, s);
    }
    let inserted: HashSet<String> = query.fetch_all(&mut *tx).await?.into_iter().collect();
    Ok(inserted.len() == sagas.len())
}

/// The columns only an insert writes, in [`insert_all`]'s order; [`CHANGING`] follows them.
const INSERTED_FIRST: [&str; 10] = [
    "booking_id",
    "saga_id",
    "room_id",
    "booking_user_id",
    "start_ms",
    "end_ms",
    "deadline_ms",
    "revision",
    "created_at",
    "updated_at",
];

/// The columns every save writes, in the order [`bind_changing`] binds them.
const CHANGING: [&str; 14] = [
    "state",
    "booking_cancelled",
    "confirm_id",
    "outcome",
    "booking_version",
    "confirm_version",
    "version",
    "settled_at",
    "expiry_requested",
    "pending_command",
    "attempts",
    "next_retry_ms",
    "stuck",
    "announced_state",
];

/// Updates `sagas`, each only if still at the revision it was read at; false if one was not.
async fn update_all(tx: &mut Tx, sagas: &[Held]) -> Result<bool, sqlx::Error> {
    let Some(last) = sagas.last() else {
        return Ok(true);
    };
    // Repeats of the last saga change nothing more.
    let padded = platform::db::padded_len(sagas.len());
    static TEXTS: platform::db::StatementTexts<usize> = platform::db::StatementTexts::new();
    let sql = TEXTS.get(padded, || {
        let values =
            platform::db::param_groups(padded, 2 + CHANGING.len(), 2, ", ", |p| format!("({p})"));
        // VALUES names its columns column1, column2, … on both databases.
        let sets = CHANGING
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = saved.column{}", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "UPDATE sagas SET {sets}, revision = revision + 1, updated_at = $1 \
             FROM (VALUES {values}) AS saved \
             WHERE sagas.booking_id = saved.column1 AND sagas.revision = saved.column2 \
             RETURNING sagas.booking_id"
        )
    });
    let mut query = sqlx::query_scalar::<_, String>(sql).bind(now_millis());
    for i in 0..padded {
        let s = &sagas.get(i).unwrap_or(last).stored;
        query = query.bind(s.saga.booking_id.to_string()).bind(s.revision);
        query = bind_changing(query, s);
    }
    let updated: HashSet<String> = query.fetch_all(&mut *tx).await?.into_iter().collect();
    Ok(updated.len() == sagas.len())
}

/// Binds `s`'s values of [`CHANGING`], in its order.
fn bind_changing<'q>(
    query: sqlx::query::QueryScalar<'q, Any, String, AnyArguments<'q>>,
    s: &StoredSaga,
) -> sqlx::query::QueryScalar<'q, Any, String, AnyArguments<'q>> {
    query
        .bind(s.saga.state.as_str())
        .bind(i64::from(s.saga.booking_cancelled))
        .bind(s.saga.confirm_id.map(|c| c.to_string()))
        .bind(s.saga.outcome.clone())
        .bind(count(s.saga.booking_version))
        .bind(count(s.saga.confirm_version))
        .bind(count(s.saga.version))
        .bind(s.settled_at.map(to_millis))
        .bind(i64::from(s.saga.expiry_requested))
        .bind(pending_json(&s.saga))
        .bind(i64::from(s.saga.attempts))
        .bind(s.next_retry_at.map(to_millis))
        .bind(i64::from(s.saga.stuck))
        .bind(s.saga.announced.map(SagaState::as_str))
}

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn pending_json(saga: &Saga) -> Option<String> {
    saga.pending
        .as_ref()
        .map(|b| serde_json::to_string(b).expect("a message body always serialises"))
}

/// One entry of a saga's timeline.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = SagaStep)]
pub struct Step {
    #[serde(with = "platform::contract::rfc3339_utc")]
    pub at: DateTime<Utc>,
    /// `in` (a message the saga received) or `out` (a message it sent).
    pub direction: String,
    #[serde(rename = "type")]
    pub message_type: String,
    pub message_id: String,
    /// The saga's state after this step.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The timeline's columns a step fills.
const SAGA_STEPS: Target = Target {
    table: "saga_steps",
    columns: &[
        "booking_id",
        "at",
        "direction",
        "message_type",
        "message_id",
        "state",
        "note",
    ],
};

/// Appends `steps`, in order, to the saga's timeline; written when the transaction commits,
/// with the other sagas' steps (see [`Tx::append`]).
pub fn record_steps(tx: &mut Tx, booking_id: Uuid, steps: &[Step]) {
    for step in steps {
        tx.append(
            SAGA_STEPS,
            vec![
                booking_id.to_string().into(),
                to_millis(step.at).into(),
                step.direction.clone().into(),
                step.message_type.clone().into(),
                step.message_id.clone().into(),
                step.state.clone().into(),
                step.note.clone().into(),
            ],
        );
    }
}

pub async fn timeline(db: &Db, booking_id: Uuid) -> Result<Vec<Step>, sqlx::Error> {
    sqlx::query(
        "SELECT at, direction, message_type, message_id, state, note FROM saga_steps \
         WHERE booking_id = $1 ORDER BY id",
    )
    .bind(booking_id.to_string())
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(|r| {
        Ok(Step {
            at: from_millis(r.try_get(0)?),
            direction: r.try_get(1)?,
            message_type: r.try_get(2)?,
            message_id: r.try_get(3)?,
            state: r.try_get(4)?,
            note: r.try_get(5)?,
        })
    })
    .collect()
}

/// Filters of `GET /sagas`.
#[derive(Debug, Default)]
pub struct SagaFilter {
    pub state: Option<SagaState>,
    /// Only sagas not updated since then.
    pub older_than: Option<DateTime<Utc>>,
    pub stuck: Option<bool>,
}

/// `GET /sagas`'s statement and its arguments, with only the filters in use
/// ([`platform::db::Conditions`]): the sagas in a state are read through their index, oldest
/// update first.
fn list_query(f: &SagaFilter, limit: i64, offset: i64) -> (String, platform::db::Conditions) {
    let mut c = platform::db::Conditions::default();
    c.equal("state", f.state.map(SagaState::as_str));
    if let Some(before) = f.older_than {
        let before = c.param(to_millis(before));
        c.push(format!("updated_at < {before}"));
    }
    c.equal("stuck", f.stuck.map(i64::from));
    let filter = c.where_clause();
    let (limit, offset) = (c.param(limit), c.param(offset));
    let sql = format!(
        "SELECT {COLUMNS} FROM sagas{filter} ORDER BY updated_at, booking_id \
         LIMIT {limit} OFFSET {offset}"
    );
    (sql, c)
}

/// Sagas matching `f`, oldest update first.
pub async fn list(
    db: &Db,
    f: &SagaFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<StoredSaga>, sqlx::Error> {
    let (sql, args) = list_query(f, limit, offset);
    args.bind(sqlx::query(&sql))
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// Bookings whose saga's pending command is due to be sent again.
pub async fn due_for_retry(
    db: &Db,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    due(
        db,
        "SELECT booking_id FROM sagas WHERE stuck = 0 AND next_retry_ms <= $1 \
         ORDER BY next_retry_ms LIMIT $2",
        now,
        limit,
    )
    .await
}

/// The booking ids a timer query (`$1` now, `$2` the most to return) finds due.
async fn due(db: &Db, sql: &str, now: DateTime<Utc>, limit: i64) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query(sql)
        .bind(to_millis(now))
        .bind(limit)
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(|r| uuid(r, "booking_id"))
        .collect()
}

/// The waiting sagas whose deadline is `$1` or earlier, earliest first, at most `$2`: read from
/// the index of the sagas that can still expire (its condition is repeated here, which is what
/// lets a database use it), so neither settled sagas, whose deadlines stay behind them for
/// good, nor waiting ones not yet due are read.
const DUE_FOR_EXPIRY: &str = "SELECT booking_id FROM sagas WHERE deadline_ms <= $1 \
     AND expiry_requested = 0 AND state IN ('STARTED', 'AWAITING_APPROVAL') \
     ORDER BY deadline_ms LIMIT $2";

/// Bookings whose saga still awaits a decision although its deadline has passed.
pub async fn due_for_expiry(
    db: &Db,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Uuid>, sqlx::Error> {
    due(db, DUE_FOR_EXPIRY, now, limit).await
}

/// How many sagas are in each state that is not settled. It reads the state index for those
/// states only, so it costs what the sagas in flight cost, not the whole history.
pub async fn count_in_flight(db: &Db) -> Result<Vec<(SagaState, i64)>, sqlx::Error> {
    let (sql, states) = count_in_flight_query();
    let mut query = sqlx::query(&sql);
    for state in states {
        query = query.bind(state.as_str());
    }
    query
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(|r| Ok((state_of(&r.try_get::<String, _>(0)?)?, r.try_get(1)?)))
        .collect()
}

fn count_in_flight_query() -> (String, Vec<SagaState>) {
    let states: Vec<SagaState> = SagaState::in_flight().collect();
    let sql = format!(
        "SELECT state, COUNT(*) FROM sagas WHERE state IN ({}) GROUP BY state",
        platform::db::params(1, states.len())
    );
    (sql, states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::testkit::{TestBackend, TestDatabases};

    fn saga_in(state: SagaState) -> Saga {
        Saga {
            saga_id: Uuid::new_v4(),
            booking_id: Uuid::new_v4(),
            state,
            booking_cancelled: false,
            booking: None,
            confirm_id: None,
            outcome: None,
            booking_version: 1,
            confirm_version: 1,
            version: 1,
            approval_deadline: None,
            expiry_requested: false,
            pending: None,
            attempts: 0,
            stuck: false,
            announced: Some(state),
        }
    }

    /// Sagas past their deadline: many settled (their deadline stays in the past) and a few
    /// still waiting, which are the only ones due.
    /// (The databases are handed back with the connection: dropping them deletes SQLite's file.)
    async fn only_waiting_sagas_are_due_for_expiry(backend: TestBackend) -> (TestDatabases, Db) {
        let dbs = TestDatabases::new(backend);
        let db = Db::connect(&dbs.create("orchestrator").await, crate::migrations())
            .await
            .unwrap();
        let now = from_millis(now_millis());
        let past = |minutes| Some(now - chrono::Duration::minutes(minutes));
        let mut tx = db.begin().await.unwrap();
        for i in 0..2000 {
            let state = [SagaState::Completed, SagaState::Compensated][i % 2];
            let saga = Saga {
                approval_deadline: past(60 + i as i64),
                ..saga_in(state)
            };
            assert!(save(&mut tx, &saga, None, None).await.unwrap());
        }
        let mut waiting = Vec::new();
        for (minutes, state) in [(3, SagaState::AwaitingApproval), (5, SagaState::Started)] {
            let saga = Saga {
                approval_deadline: past(minutes),
                ..saga_in(state)
            };
            waiting.push(saga.booking_id);
            assert!(save(&mut tx, &saga, None, None).await.unwrap());
        }
        let later = Saga {
            approval_deadline: Some(now + chrono::Duration::minutes(5)),
            ..saga_in(SagaState::AwaitingApproval)
        };
        assert!(save(&mut tx, &later, None, None).await.unwrap());
        tx.commit().await.unwrap();

        waiting.reverse(); // earliest deadline first
        assert_eq!(due_for_expiry(&db, now, 256).await.unwrap(), waiting);
        (dbs, db)
    }

    #[tokio::test]
    async fn only_waiting_sagas_are_due_for_expiry_on_sqlite() {
        let (_dbs, db) = only_waiting_sagas_are_due_for_expiry(TestBackend::Sqlite).await;
        // SQLite, without statistics, prefers the state index: it reads the waiting sagas
        // and sorts those; either index keeps the settled ones out of the read.
        let plan = platform::testkit::query_plan(&db, DUE_FOR_EXPIRY, &[now_millis(), 256]).await;
        assert!(
            [
                "SEARCH sagas USING INDEX sagas_waiting_deadline (deadline_ms<?)",
                "SEARCH sagas USING INDEX sagas_state (state=?)"
            ]
            .contains(&plan[0].as_str()),
            "{plan:?}"
        );
    }

    /// PostgreSQL reads only the due sagas' index entries: no settled saga, and no waiting one
    /// whose deadline is still ahead, is read and filtered out.
    #[tokio::test]
    async fn only_waiting_sagas_are_due_for_expiry_on_postgres() {
        let (_dbs, db) = only_waiting_sagas_are_due_for_expiry(TestBackend::Postgres).await;
        sqlx::query("ANALYZE sagas")
            .execute(&db.pool)
            .await
            .unwrap();
        let plan: Vec<String> =
            sqlx::query(&format!("EXPLAIN (ANALYZE, COSTS OFF) {DUE_FOR_EXPIRY}"))
                .bind(now_millis())
                .bind(256_i64)
                .fetch_all(&db.pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect();
        assert!(
            plan.iter()
                .any(|l| l.contains("Index Scan using sagas_waiting_deadline")),
            "{plan:#?}"
        );
        assert!(
            plan.iter().all(|l| !l.contains("Rows Removed by Filter")),
            "{plan:#?}"
        );
    }

    async fn only_the_sagas_in_flight_are_counted(backend: TestBackend) {
        let dbs = TestDatabases::new(backend);
        let db = Db::connect(&dbs.create("orchestrator").await, crate::migrations())
            .await
            .unwrap();
        let stored = [
            (SagaState::AwaitingApproval, 3),
            (SagaState::Compensating, 1),
            (SagaState::Completed, 4),
            (SagaState::Cancelled, 2),
        ];
        let mut tx = db.begin().await.unwrap();
        for (state, n) in stored {
            for _ in 0..n {
                assert!(save(&mut tx, &saga_in(state), None, None).await.unwrap());
            }
        }
        tx.commit().await.unwrap();

        let mut counts = count_in_flight(&db).await.unwrap();
        counts.sort_by_key(|(s, _)| s.as_str());
        assert_eq!(
            counts,
            [
                (SagaState::AwaitingApproval, 3),
                (SagaState::Compensating, 1)
            ]
        );
    }

    #[tokio::test]
    async fn only_the_sagas_in_flight_are_counted_on_sqlite() {
        only_the_sagas_in_flight_are_counted(TestBackend::Sqlite).await;
    }

    #[tokio::test]
    async fn only_the_sagas_in_flight_are_counted_on_postgres() {
        only_the_sagas_in_flight_are_counted(TestBackend::Postgres).await;
    }

    #[tokio::test]
    async fn the_sagas_in_flight_are_counted_through_the_state_index() {
        let (sql, _) = count_in_flight_query();
        let plan = platform::testkit::plan_on_empty_sqlite(crate::migrations(), &sql).await;
        assert_eq!(
            plan,
            ["SEARCH sagas USING COVERING INDEX sagas_state (state=?)"],
            "{sql}"
        );
    }

    #[tokio::test]
    async fn the_sagas_in_a_state_are_listed_through_their_index() {
        let waiting = SagaFilter {
            state: Some(SagaState::AwaitingApproval),
            older_than: Some(Utc::now()),
            ..SagaFilter::default()
        };
        let (sql, _) = list_query(&waiting, 100, 0);
        let plan = platform::testkit::plan_on_empty_sqlite(crate::migrations(), &sql).await;
        // (Rows updated in the same millisecond are put in booking order apart.)
        assert_eq!(
            plan,
            [
                "SEARCH sagas USING INDEX sagas_state (state=? AND updated_at<?)",
                "USE TEMP B-TREE FOR LAST TERM OF ORDER BY"
            ]
        );
    }

    #[test]
    fn an_insert_writes_every_column_a_saga_is_read_from() {
        let mut written: Vec<&str> = INSERTED_FIRST.iter().chain(&CHANGING).copied().collect();
        let mut read: Vec<&str> = COLUMNS.split(',').map(str::trim).collect();
        written.sort_unstable();
        read.sort_unstable();
        assert_eq!(written, read);
    }
}
