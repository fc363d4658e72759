//! Approval requests: created by the orchestrator's `RequestConfirm`, decided by an admin,
//! closed by `DeleteConfirm`. Each change and its event are written in one transaction.

use chrono::{DateTime, Utc};
use platform::{
    clock::Clock,
    contract::{
        Body, ConfirmClosed, ConfirmDecided, ConfirmExpired, ConfirmRequested, Envelope,
        RequestConfirm, RoomId,
    },
    db::{Backend, Conditions, Db, Param, StatementTexts, Tx},
    outbox::{self, OutboxSignal},
    time::{from_millis, now_millis, to_millis},
    trace::TraceParent,
};
use serde::Serialize;
use sqlx::{any::AnyRow, Any, Executor, Row as _};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConfirmStatus {
    Booked,
    Confirmed,
    Denied,
}

impl ConfirmStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfirmStatus::Booked => "BOOKED",
            ConfirmStatus::Confirmed => "CONFIRMED",
            ConfirmStatus::Denied => "DENIED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "BOOKED" => Some(ConfirmStatus::Booked),
            "CONFIRMED" => Some(ConfirmStatus::Confirmed),
            "DENIED" => Some(ConfirmStatus::Denied),
            _ => None,
        }
    }
}

/// An approval request as the admin sees it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Confirm {
    pub id: Uuid,
    pub booking_id: Uuid,
    pub saga_id: Uuid,
    #[schema(value_type = Option<i64>, example = 101)]
    pub room_id: Option<RoomId>,
    pub booking_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_time")]
    pub use_start_dtm: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_time")]
    pub use_end_dtm: Option<DateTime<Utc>>,
    pub status: ConfirmStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_time")]
    pub confirm_dtm: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// No decision is accepted from this instant on.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_time")]
    pub approval_deadline: Option<DateTime<Utc>>,
    /// Closed confirms (booking cancelled) can no longer be decided.
    pub closed: bool,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_time")]
    pub closed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<String>,
    pub version: i64,
    #[serde(serialize_with = "platform::contract::rfc3339_utc::serialize")]
    pub created_at: DateTime<Utc>,
}

fn opt_time<S: serde::Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => platform::contract::rfc3339_utc::serialize(t, s),
        None => s.serialize_none(),
    }
}

const COLUMNS: &str =
    "id, booking_id, saga_id, room_id, booking_user_id, start_ms, end_ms, status, \
     confirm_user_id, decided_at, reason, requested, closed_at, close_reason, version, created_at, \
     deadline_ms";

fn from_row(r: &AnyRow) -> Result<Confirm, sqlx::Error> {
    let uuid = |col: &str| -> Result<Uuid, sqlx::Error> {
        let s: String = r.try_get(col)?;
        Uuid::parse_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    let time = |col: &str| -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(r.try_get::<Option<i64>, _>(col)?.map(from_millis))
    };
    let status: String = r.try_get("status")?;
    let closed_at = time("closed_at")?;
    Ok(Confirm {
        id: uuid("id")?,
        booking_id: uuid("booking_id")?,
        saga_id: uuid("saga_id")?,
        room_id: r.try_get("room_id")?,
        booking_user_id: r.try_get("booking_user_id")?,
        use_start_dtm: time("start_ms")?,
        use_end_dtm: time("end_ms")?,
        status: ConfirmStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown status {status}").into()))?,
        confirm_user_id: r.try_get("confirm_user_id")?,
        confirm_dtm: time("decided_at")?,
        reason: r.try_get("reason")?,
        approval_deadline: time("deadline_ms")?,
        closed: closed_at.is_some(),
        closed_at,
        close_reason: r.try_get("close_reason")?,
        version: r.try_get("version")?,
        created_at: from_millis(r.try_get("created_at")?),
    })
}

pub async fn get<'c, E: Executor<'c, Database = Any>>(
    db: E,
    id: Uuid,
) -> Result<Option<Confirm>, sqlx::Error> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM confirms WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(db)
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

pub async fn get_by_booking<'c, E: Executor<'c, Database = Any>>(
    db: E,
    booking_id: Uuid,
) -> Result<Option<Confirm>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM confirms WHERE booking_id = $1"
    ))
    .bind(booking_id.to_string())
    .fetch_optional(db)
    .await?
    .map(|r| from_row(&r))
    .transpose()
}

/// Filters of `GET /confirms`; by default only open (not closed) requests are listed.
#[derive(Debug, Default)]
pub struct ConfirmFilter {
    pub status: Option<ConfirmStatus>,
    pub booking_id: Option<Uuid>,
    pub include_closed: bool,
    pub limit: i64,
    pub offset: i64,
}

/// `GET /confirms`'s statement and its arguments, with only the filters in use
/// ([`Conditions`]): the open requests of a status (the approval queue) are read through their
/// index, oldest first.
fn list_query(f: &ConfirmFilter) -> (String, Conditions) {
    let mut c = Conditions::default();
    c.push("requested = 1");
    c.equal("status", f.status.map(ConfirmStatus::as_str));
    c.equal("booking_id", f.booking_id.map(|b| b.to_string()));
    if !f.include_closed {
        c.push("closed_at IS NULL");
    }
    let filter = c.where_clause();
    let (limit, offset) = (c.param(f.limit), c.param(f.offset));
    let sql = format!(
        "SELECT {COLUMNS} FROM confirms{filter} ORDER BY created_at, id \
         LIMIT {limit} OFFSET {offset}"
    );
    (sql, c)
}

pub async fn list(db: &Db, f: &ConfirmFilter) -> Result<Vec<Confirm>, sqlx::Error> {
    let (sql, args) = list_query(f);
    args.bind(sqlx::query(&sql))
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// Inserts `c`; with `if_absent`, only if its booking has no confirm yet (true when inserted).
async fn insert(
    tx: &mut Tx,
    c: &Confirm,
    requested: bool,
    if_absent: bool,
) -> Result<bool, sqlx::Error> {
    static SQL: [std::sync::LazyLock<String>; 2] = [
        std::sync::LazyLock::new(|| insert_sql("")),
        std::sync::LazyLock::new(|| insert_sql(" ON CONFLICT (booking_id) DO NOTHING")),
    ];
    let done = sqlx::query(&SQL[usize::from(if_absent)])
        .bind(c.id.to_string())
        .bind(c.booking_id.to_string())
        .bind(c.saga_id.to_string())
        .bind(c.room_id)
        .bind(&c.booking_user_id)
        .bind(c.use_start_dtm.map(to_millis))
        .bind(c.use_end_dtm.map(to_millis))
        .bind(c.status.as_str())
        .bind(&c.confirm_user_id)
        .bind(c.confirm_dtm.map(to_millis))
        .bind(&c.reason)
        .bind(i64::from(requested))
        .bind(c.closed_at.map(to_millis))
        .bind(&c.close_reason)
        .bind(c.version)
        .bind(to_millis(c.created_at))
        .bind(c.approval_deadline.map(to_millis))
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

fn insert_sql(on_conflict: &str) -> String {
    format!(
        "INSERT INTO confirms ({COLUMNS}, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)\
         {on_conflict}"
    )
}

/// Inserts the new requests `confirms` (no booking twice) in one statement, leaving any
/// booking that has a confirm as it is; returns the bookings inserted.
async fn insert_all_if_absent(
    tx: &mut Tx,
    confirms: &[Confirm],
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    if confirms.is_empty() {
        return Ok(Default::default());
    }
    // Repeats of the last request insert nothing more.
    let padded = platform::db::padded_len(confirms.len());
    static TEXTS: StatementTexts<usize> = StatementTexts::new();
    let sql = TEXTS.get(padded, || {
        let rows = platform::db::param_groups(padded, 18, 1, ", ", |p| format!("({p})"));
        format!(
            "INSERT INTO confirms ({COLUMNS}, updated_at) VALUES {rows} \
             ON CONFLICT (booking_id) DO NOTHING RETURNING booking_id"
        )
    });
    let now = now_millis();
    let mut query = sqlx::query_scalar::<_, String>(sql);
    for i in 0..padded {
        let c = &confirms[i.min(confirms.len() - 1)];
        query = query
            .bind(c.id.to_string())
            .bind(c.booking_id.to_string())
            .bind(c.saga_id.to_string())
            .bind(c.room_id)
            .bind(c.booking_user_id.clone())
            .bind(c.use_start_dtm.map(to_millis))
            .bind(c.use_end_dtm.map(to_millis))
            .bind(c.status.as_str())
            .bind(c.confirm_user_id.clone())
            .bind(c.confirm_dtm.map(to_millis))
            .bind(c.reason.clone())
            .bind(1_i64)
            .bind(c.closed_at.map(to_millis))
            .bind(c.close_reason.clone())
            .bind(c.version)
            .bind(to_millis(c.created_at))
            .bind(c.approval_deadline.map(to_millis))
            .bind(now);
    }
    query
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|id| Uuid::parse_str(id).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .collect()
}

/// An admin's decision on confirm `id`, as asked at `now`.
struct Asked<'a> {
    id: Uuid,
    decision: ConfirmStatus,
    admin: &'a str,
    reason: Option<&'a str>,
    now: DateTime<Utc>,
}

/// The decision `asked` on a request still open to one (BOOKED, not closed, before its
/// deadline at `now`), in one statement: the confirm as decided, or `None` when there is no
/// such request.
async fn decide_if_open(tx: &mut Tx, asked: &Asked<'_>) -> Result<Option<Confirm>, sqlx::Error> {
    let Asked {
        id,
        decision,
        admin,
        reason,
        now,
    } = *asked;
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "UPDATE confirms SET status = $1, confirm_user_id = $2, decided_at = $3, reason = $4, \
             version = version + 1, updated_at = $3 \
             WHERE id = $5 AND status = 'BOOKED' AND closed_at IS NULL AND room_id IS NOT NULL \
             AND (deadline_ms IS NULL OR deadline_ms > $6) RETURNING {COLUMNS}"
        )
    });
    sqlx::query(&SQL)
        .bind(decision.as_str())
        .bind(admin)
        .bind(now_millis())
        .bind(reason)
        .bind(id.to_string())
        .bind(to_millis(now))
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

/// The event announcing the decision `c` carries.
fn decision_body(c: &Confirm, reason: Option<&str>) -> Body {
    let decided = ConfirmDecided {
        confirm_id: c.id,
        confirm_user_id: c.confirm_user_id.clone().unwrap_or_default(),
        reason: reason.map(str::to_string),
    };
    match c.status {
        ConfirmStatus::Confirmed => Body::ConfirmCompleted(decided),
        _ => Body::ConfirmDenied(decided),
    }
}

/// PostgreSQL: if the request as `read` is open to a decision at `now`, writes the decision and
/// its event in one statement, its own transaction, guarded by the version read as well as by
/// the request being open: with the read, two round trips where a transaction takes four.
/// `None` when the request is not open or has changed since it was read; the caller's general
/// path then decides or says why not.
async fn decide_with_event(
    pool: &sqlx::AnyPool,
    read: &Confirm,
    decision: ConfirmStatus,
    admin: &str,
    reason: Option<&str>,
    now: DateTime<Utc>,
    trace: &TraceParent,
) -> Result<Option<Confirm>, sqlx::Error> {
    let open = read.status == ConfirmStatus::Booked
        && !read.closed
        && read.room_id.is_some()
        && read.approval_deadline.is_none_or(|d| d > now);
    if !open {
        return Ok(None);
    }
    let decided_ms = now_millis();
    let decided = Confirm {
        status: decision,
        confirm_user_id: Some(admin.to_string()),
        confirm_dtm: Some(from_millis(decided_ms)),
        reason: reason.map(str::to_string),
        version: read.version + 1,
        ..read.clone()
    };
    let event = outbox::row(
        &Envelope::new(
            decided.booking_id,
            decided.saga_id,
            u64::try_from(decided.version).unwrap_or_default(),
            decision_body(&decided, reason),
        ),
        trace,
    );
    static TEXTS: StatementTexts<usize> = StatementTexts::new();
    let sql = TEXTS.get(event.len(), || decide_with_event_sql(event.len()));
    let query = sqlx::query(sql)
        .bind(decision.as_str())
        .bind(admin)
        .bind(decided_ms)
        .bind(reason)
        .bind(read.id.to_string())
        .bind(to_millis(now))
        .bind(read.version);
    let written = event
        .into_iter()
        .fold(query, |q, value: Param| value.bind_to(q))
        .execute(pool)
        .await?;
    Ok((written.rows_affected() == 1).then_some(decided))
}

/// [`decide_if_open`]'s update, also guarded by the version read (`$7`), then the outbox row
/// of its `event_columns` values (`$8` on) if it changed the request.
fn decide_with_event_sql(event_columns: usize) -> String {
    format!(
        "WITH decided AS (UPDATE confirms SET status = $1, confirm_user_id = $2, decided_at = $3, \
         reason = $4, version = version + 1, updated_at = $3 \
         WHERE id = $5 AND status = 'BOOKED' AND closed_at IS NULL AND room_id IS NOT NULL \
         AND (deadline_ms IS NULL OR deadline_ms > $6) AND version = $7 RETURNING id) \
         INSERT INTO outbox ({}) SELECT {} FROM decided",
        outbox::columns(),
        platform::db::params(8, event_columns)
    )
}

/// Writes a change guarded by the version it was read at; false if someone changed it first.
async fn update(tx: &mut Tx, c: &Confirm, read_version: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE confirms SET status = $1, confirm_user_id = $2, decided_at = $3, reason = $4, \
         closed_at = $5, close_reason = $6, version = $7, updated_at = $8 \
         WHERE id = $9 AND version = $10",
    )
    .bind(c.status.as_str())
    .bind(&c.confirm_user_id)
    .bind(c.confirm_dtm.map(to_millis))
    .bind(&c.reason)
    .bind(c.closed_at.map(to_millis))
    .bind(&c.close_reason)
    .bind(c.version)
    .bind(now_millis())
    .bind(c.id.to_string())
    .bind(read_version)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

fn emit(tx: &mut Tx, c: &Confirm, body: Body, trace: &TraceParent) {
    let version = u64::try_from(c.version).unwrap_or_default();
    outbox::enqueue(
        tx,
        &Envelope::new(c.booking_id, c.saga_id, version, body),
        trace,
    );
}

/// `RequestConfirm`: opens the approval request (once per booking).
pub async fn on_request(
    tx: &mut Tx,
    booking_id: Uuid,
    saga_id: Uuid,
    req: &RequestConfirm,
    trace: &TraceParent,
) -> Result<(), sqlx::Error> {
    let confirm = requested(booking_id, saga_id, req);
    let inserted = insert(tx, &confirm, true, true).await?;
    announce_request(tx, &confirm, req, inserted, trace).await
}

/// A `RequestConfirm` for each booking in `requests` (no booking twice): the new requests are
/// inserted in one statement, then each is answered in order as [`on_request`] answers it.
pub async fn on_requests(
    tx: &mut Tx,
    requests: &[(Uuid, Uuid, &RequestConfirm, &TraceParent)],
) -> Result<(), sqlx::Error> {
    let confirms: Vec<Confirm> = requests
        .iter()
        .map(|&(booking_id, saga_id, req, _)| requested(booking_id, saga_id, req))
        .collect();
    let inserted = insert_all_if_absent(tx, &confirms).await?;
    for (confirm, &(_, _, req, trace)) in confirms.iter().zip(requests) {
        let new = inserted.contains(&confirm.booking_id);
        announce_request(tx, confirm, req, new, trace).await?;
    }
    Ok(())
}

/// The request `RequestConfirm` opens for a booking.
fn requested(booking_id: Uuid, saga_id: Uuid, req: &RequestConfirm) -> Confirm {
    Confirm {
        id: Uuid::now_v7(),
        booking_id,
        saga_id,
        room_id: Some(req.room_id),
        booking_user_id: Some(req.booking_user_id.clone()),
        use_start_dtm: Some(req.use_start_dtm),
        use_end_dtm: Some(req.use_end_dtm),
        status: ConfirmStatus::Booked,
        confirm_user_id: None,
        confirm_dtm: None,
        reason: None,
        approval_deadline: Some(req.approval_deadline),
        closed: false,
        closed_at: None,
        close_reason: None,
        version: 1,
        created_at: platform::time::now(),
    }
}

/// Announces `confirm` if this request `inserted` it; otherwise the booking's confirm existed
/// and nothing changes, but the latest fact is announced again in case the saga missed it.
async fn announce_request(
    tx: &mut Tx,
    confirm: &Confirm,
    req: &RequestConfirm,
    inserted: bool,
    trace: &TraceParent,
) -> Result<(), sqlx::Error> {
    if !inserted {
        tracing::info!(booking_id = %confirm.booking_id, "RequestConfirm changes nothing: the booking's confirm exists");
        outbox::reannounce_latest(tx, confirm.booking_id).await?;
        return Ok(());
    }
    let event = Body::ConfirmRequested(ConfirmRequested {
        confirm_id: confirm.id,
        room_id: req.room_id,
        booking_user_id: req.booking_user_id.clone(),
        use_start_dtm: req.use_start_dtm,
        use_end_dtm: req.use_end_dtm,
        approval_deadline: req.approval_deadline,
    });
    emit(tx, confirm, event, trace);
    Ok(())
}

/// `DeleteConfirm`: closes the request so it can no longer be decided. If it was never
/// requested, a closed tombstone takes its place. The answer is always `ConfirmClosed`, also
/// for a confirm closed earlier (e.g. by expiry), so the saga waiting for it moves on.
pub async fn on_delete(
    tx: &mut Tx,
    booking_id: Uuid,
    saga_id: Uuid,
    reason: &str,
    trace: &TraceParent,
) -> Result<(), sqlx::Error> {
    let c = match get_by_booking(&mut *tx, booking_id).await? {
        Some(c) => c,
        None => insert_tombstone(tx, booking_id, saga_id, reason).await?,
    };
    let closed = close(tx, c, reason).await?;
    let body = Body::ConfirmClosed(ConfirmClosed {
        confirm_id: closed.id,
        was_requested: closed.room_id.is_some(),
        reason: closed
            .close_reason
            .clone()
            .unwrap_or_else(|| reason.to_string()),
    });
    emit(tx, &closed, body, trace);
    Ok(())
}

/// `ExpireConfirm`: the deadline passed. A confirm still waiting for a decision is closed and
/// `ConfirmExpired` announced; one decided in time stays as it is (its decision already went out).
pub async fn on_expire(
    tx: &mut Tx,
    booking_id: Uuid,
    saga_id: Uuid,
    trace: &TraceParent,
) -> Result<(), sqlx::Error> {
    const EXPIRED: &str = "EXPIRED";
    let c = match get_by_booking(&mut *tx, booking_id).await? {
        Some(c) if c.status != ConfirmStatus::Booked || c.closed => {
            tracing::info!(
                status = c.status.as_str(),
                closed = c.closed,
                "ExpireConfirm changes nothing: decided in time or closed"
            );
            outbox::reannounce_latest(tx, booking_id).await?;
            return Ok(());
        }
        Some(c) => c,
        None => insert_tombstone(tx, booking_id, saga_id, EXPIRED).await?,
    };
    let closed = close(tx, c, EXPIRED).await?;
    let body = Body::ConfirmExpired(ConfirmExpired {
        confirm_id: closed.id,
    });
    emit(tx, &closed, body, trace);
    Ok(())
}

/// Marks the confirm closed (keeping an earlier close as it was) and bumps its version for the
/// event the caller is about to emit.
async fn close(tx: &mut Tx, mut c: Confirm, reason: &str) -> Result<Confirm, sqlx::Error> {
    let read_version = c.version;
    if !c.closed {
        c.closed = true;
        c.closed_at = Some(platform::time::now());
        c.close_reason = Some(reason.to_string());
    }
    c.version += 1;
    if !update(tx, &c, read_version).await? {
        return Err(sqlx::Error::RowNotFound);
    }
    Ok(c)
}

/// A closed confirm standing in for one that was never requested, so a late `RequestConfirm`
/// is a no-op.
async fn insert_tombstone(
    tx: &mut Tx,
    booking_id: Uuid,
    saga_id: Uuid,
    reason: &str,
) -> Result<Confirm, sqlx::Error> {
    let now = platform::time::now();
    let tombstone = Confirm {
        id: Uuid::now_v7(),
        booking_id,
        saga_id,
        room_id: None,
        booking_user_id: None,
        use_start_dtm: None,
        use_end_dtm: None,
        status: ConfirmStatus::Booked,
        confirm_user_id: None,
        confirm_dtm: None,
        reason: None,
        approval_deadline: None,
        closed: true,
        closed_at: Some(now),
        close_reason: Some(reason.to_string()),
        version: 0,
        created_at: now,
    };
    insert(tx, &tombstone, false, false).await?;
    Ok(tombstone)
}

/// Why an admin's decision was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("confirm {0} not found")]
    NotFound(Uuid),
    #[error("status must be CONFIRMED or DENIED")]
    NotADecision,
    #[error("the booking was cancelled; confirm {0} is closed")]
    Closed(Uuid),
    #[error("the approval deadline of confirm {0} has passed")]
    Expired(Uuid),
    #[error("confirm {id} was already {status}")]
    AlreadyDecided { id: Uuid, status: &'static str },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An admin approves or denies. Repeating the same decision is answered with the confirm as
/// it is; a different decision, or any decision on a closed confirm, is refused.
#[allow(clippy::too_many_arguments)]
pub async fn decide(
    db: &Db,
    outbox: &OutboxSignal,
    clock: &dyn Clock,
    id: Uuid,
    decision: ConfirmStatus,
    admin: &str,
    reason: Option<String>,
    trace: &TraceParent,
) -> Result<Confirm, DecisionError> {
    if decision == ConfirmStatus::Booked {
        return Err(DecisionError::NotADecision);
    }
    if db.backend == Backend::Postgres {
        if let Some(read) = get(&db.pool, id).await? {
            let decided = decide_with_event(
                &db.pool,
                &read,
                decision,
                admin,
                reason.as_deref(),
                clock.now(),
                trace,
            )
            .await?;
            if let Some(c) = decided {
                outbox.notify();
                return Ok(c);
            }
        }
    }
    // The decision is one conditional update; on PostgreSQL it waits for a concurrent writer
    // (a DeleteConfirm closing the request) and is judged against what that left. Only a
    // refused decision reads the confirm, to say why.
    for _ in 0..5 {
        let now = clock.now();
        let (admin, reason, trace) = (admin.to_owned(), reason.clone(), trace.clone());
        let outcome = db
            .write(move |tx: &mut Tx| {
                Box::pin(async move {
                    let asked = Asked {
                        id,
                        decision,
                        admin: &admin,
                        reason: reason.as_deref(),
                        now,
                    };
                    decide_or_say_why_not(tx, &asked, &trace).await
                })
            })
            .await?;
        match outcome {
            Some(Decided::Now(c)) => {
                outbox.notify();
                return Ok(c);
            }
            Some(Decided::Before(c)) => return Ok(c),
            // Open after all: it was written between the update and the read. Try again.
            None => {}
        }
    }
    Err(sqlx::Error::RowNotFound.into())
}

/// What became of a decision that was not refused.
enum Decided {
    /// Written now, with its event.
    Now(Confirm),
    /// The same decision had been made already: nothing to write.
    Before(Confirm),
}

/// The decision, if the request is open to it at `now`; otherwise why not, read in the same
/// transaction. `None`: it was open after all (written between the update and the read).
async fn decide_or_say_why_not(
    tx: &mut Tx,
    asked: &Asked<'_>,
    trace: &TraceParent,
) -> Result<Option<Decided>, DecisionError> {
    let Asked {
        id, decision, now, ..
    } = *asked;
    if let Some(c) = decide_if_open(tx, asked).await? {
        emit(tx, &c, decision_body(&c, asked.reason), trace);
        return Ok(Some(Decided::Now(c)));
    }
    let c = get(&mut *tx, id)
        .await?
        .filter(|c| c.room_id.is_some())
        .ok_or(DecisionError::NotFound(id))?;
    if c.status == decision {
        return Ok(Some(Decided::Before(c)));
    }
    if c.closed && c.close_reason.as_deref() == Some("EXPIRED") {
        return Err(DecisionError::Expired(id));
    }
    if c.closed {
        return Err(DecisionError::Closed(id));
    }
    // The deadline is this service's to enforce: a decision at or after it loses, whether or
    // not the expiry has been processed yet.
    if c.status == ConfirmStatus::Booked && c.approval_deadline.is_some_and(|d| now >= d) {
        return Err(DecisionError::Expired(id));
    }
    if c.status != ConfirmStatus::Booked {
        return Err(DecisionError::AlreadyDecided {
            id,
            status: c.status.as_str(),
        });
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use platform::{
        clock::ManualClock,
        testkit::{outbox_event_types, TestBackend, TestDatabases},
    };

    use super::*;

    /// Opens a request for a new booking, as the `RequestConfirm` consumer does.
    async fn request(db: &Db, booking: Uuid, deadline: DateTime<Utc>) -> Confirm {
        let req = RequestConfirm {
            room_id: 101,
            booking_user_id: "alice".into(),
            use_start_dtm: deadline,
            use_end_dtm: deadline + chrono::Duration::hours(1),
            approval_deadline: deadline,
        };
        let mut tx = db.begin().await.unwrap();
        on_request(&mut tx, booking, booking, &req, &TraceParent::new_root())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        get_by_booking(&db.pool, booking).await.unwrap().unwrap()
    }

    /// A decision is taken while the request is open, answered as it stands when repeated,
    /// and refused with the reason otherwise; a repeated request adds no second confirm.
    async fn decisions_are_taken_only_while_the_request_is_open(backend: TestBackend) {
        let dbs = TestDatabases::new(backend);
        let db = Db::connect(&dbs.create("confirm").await, crate::migrations())
            .await
            .unwrap();
        let start = platform::time::now();
        let clock = ManualClock::starting_at(start);
        let outbox = OutboxSignal::default();
        let trace = TraceParent::new_root();
        let decide = |id, decision| {
            let (db, outbox, clock, trace) = (&db, &outbox, &clock, &trace);
            async move { super::decide(db, outbox, clock, id, decision, "root", None, trace).await }
        };
        let hour = chrono::Duration::hours(1);
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let open = request(&db, a, start + hour).await;
        let closing = request(&db, b, start + hour).await;
        let expiring = request(&db, c, start + chrono::Duration::minutes(1)).await;

        let approved = decide(open.id, ConfirmStatus::Confirmed).await.unwrap();
        assert_eq!(
            (
                approved.status,
                approved.version,
                approved.confirm_user_id.as_deref()
            ),
            (ConfirmStatus::Confirmed, 2, Some("root"))
        );
        let repeated = decide(open.id, ConfirmStatus::Confirmed).await.unwrap();
        assert_eq!(repeated, approved);
        let changed = decide(open.id, ConfirmStatus::Denied).await.unwrap_err();
        assert!(
            matches!(changed, DecisionError::AlreadyDecided { .. }),
            "{changed:?}"
        );

        assert_eq!(request(&db, a, start + hour).await, approved);
        assert_eq!(
            outbox_event_types(&db.pool, a).await,
            ["ConfirmRequested", "ConfirmCompleted", "ConfirmCompleted"]
        );

        let mut tx = db.begin().await.unwrap();
        on_delete(&mut tx, b, b, "CANCELLED", &trace).await.unwrap();
        tx.commit().await.unwrap();
        let closed = decide(closing.id, ConfirmStatus::Confirmed)
            .await
            .unwrap_err();
        assert!(matches!(closed, DecisionError::Closed(_)), "{closed:?}");

        clock.advance(chrono::Duration::minutes(1));
        let late = decide(expiring.id, ConfirmStatus::Denied)
            .await
            .unwrap_err();
        assert!(matches!(late, DecisionError::Expired(_)), "{late:?}");
        let unknown = decide(Uuid::now_v7(), ConfirmStatus::Denied)
            .await
            .unwrap_err();
        assert!(matches!(unknown, DecisionError::NotFound(_)), "{unknown:?}");
        for (id, version) in [(closing.id, 2), (expiring.id, 1)] {
            let stored = get(&db.pool, id).await.unwrap().unwrap();
            assert_eq!(
                (stored.status, stored.version),
                (ConfirmStatus::Booked, version)
            );
        }
    }

    #[tokio::test]
    async fn decisions_are_taken_only_while_the_request_is_open_on_sqlite() {
        decisions_are_taken_only_while_the_request_is_open(TestBackend::Sqlite).await;
    }

    #[tokio::test]
    async fn decisions_are_taken_only_while_the_request_is_open_on_postgres() {
        decisions_are_taken_only_while_the_request_is_open(TestBackend::Postgres).await;
    }

    /// PostgreSQL's decision in one statement writes nothing when the request changed after it
    /// was read, even while it is still open: the answer and the event come from that read.
    #[tokio::test]
    async fn a_decision_from_a_stale_read_writes_nothing_on_postgres() {
        let dbs = TestDatabases::new(TestBackend::Postgres);
        let db = Db::connect(&dbs.create("confirm").await, crate::migrations())
            .await
            .unwrap();
        let now = platform::time::now();
        let booking = Uuid::now_v7();
        let read = request(&db, booking, now + chrono::Duration::hours(1)).await;
        let trace = TraceParent::new_root();
        let decide = |read| {
            let (db, trace) = (&db, &trace);
            async move {
                decide_with_event(
                    &db.pool,
                    read,
                    ConfirmStatus::Confirmed,
                    "root",
                    None,
                    now,
                    trace,
                )
                .await
                .unwrap()
            }
        };

        // Another writer, leaving the request open.
        sqlx::query("UPDATE confirms SET version = version + 1 WHERE id = $1")
            .bind(read.id.to_string())
            .execute(&db.pool)
            .await
            .unwrap();
        assert_eq!(decide(&read).await, None);
        let stored = get(&db.pool, read.id).await.unwrap().unwrap();
        assert_eq!((stored.status, stored.version), (ConfirmStatus::Booked, 2));
        assert_eq!(
            outbox_event_types(&db.pool, booking).await,
            ["ConfirmRequested"]
        );

        // Read again, it is decided, and the answer is the request as stored.
        let decided = decide(&stored).await.unwrap();
        assert_eq!(get(&db.pool, read.id).await.unwrap().unwrap(), decided);
        assert_eq!(decided.version, 3);
        assert_eq!(
            outbox_event_types(&db.pool, booking).await,
            ["ConfirmRequested", "ConfirmCompleted"]
        );
    }

    #[tokio::test]
    async fn the_approval_queue_is_listed_through_its_index() {
        let queue = ConfirmFilter {
            status: Some(ConfirmStatus::Booked),
            ..ConfirmFilter::default()
        };
        let (sql, _) = list_query(&queue);
        let plan = platform::testkit::plan_on_empty_sqlite(crate::migrations(), &sql).await;
        assert!(
            plan.iter().any(|step| step.starts_with(
                "SEARCH confirms USING INDEX confirms_queue (status=? AND closed_at=?)"
            )),
            "{plan:?}"
        );
    }
}
