//! SQL for delivery records (the same statements on SQLite and PostgreSQL); what is known of
//! each booking is in [`crate::bookings`].
//!
//! The sender works from `notifications` alone: a row is claimed by moving its
//! `next_attempt_at` into the future with a conditional update (so two replicas never send the
//! same row at once), then marked SENT, FAILED, or rescheduled.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use platform::{
    db::{Conditions, StatementTexts, Tx},
    time::{from_millis, to_millis},
};
use sqlx::{any::AnyRow, Any, AnyPool, Executor, Row as _};
use uuid::Uuid;

use crate::domain::{Kind, Notification, Role, Status};

/// The recipient key of the booker's mail (admins' keys are `admin:{address}`).
pub const BOOKER_KEY: &str = "booker";

pub fn admin_key(address: &str) -> String {
    format!("admin:{}", address.trim().to_ascii_lowercase())
}

const COLUMNS: &str = "id, event_id, event_type, event_version, occurred_at, booking_id, kind, \
     recipient_role, recipient_key, recipient, booking_user_id, room_id, start_ms, end_ms, detail, \
     confirm_id, deadline_ms, subject, mail_message_id, status, attempts, next_attempt_at, \
     last_error, created_at, updated_at, sent_at";

fn decode_err(what: String) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

fn from_row(row: &AnyRow) -> Result<Notification, sqlx::Error> {
    let uuid = |col: &str| -> Result<Uuid, sqlx::Error> {
        let s: String = row.try_get(col)?;
        Uuid::parse_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    };
    let opt_ms = |col: &str| -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(row.try_get::<Option<i64>, _>(col)?.map(from_millis))
    };
    let kind: String = row.try_get("kind")?;
    let role: String = row.try_get("recipient_role")?;
    let status: String = row.try_get("status")?;
    let status =
        Status::parse(&status).ok_or_else(|| decode_err(format!("unknown status {status}")))?;
    let confirm: Option<String> = row.try_get("confirm_id")?;
    Ok(Notification {
        id: uuid("id")?,
        booking_id: uuid("booking_id")?,
        event_id: uuid("event_id")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        occurred_at: from_millis(row.try_get("occurred_at")?),
        kind: Kind::parse(&kind).ok_or_else(|| decode_err(format!("unknown kind {kind}")))?,
        recipient_role: Role::parse(&role)
            .ok_or_else(|| decode_err(format!("unknown role {role}")))?,
        recipient: row.try_get("recipient")?,
        booking_user_id: row.try_get("booking_user_id")?,
        room_id: row.try_get("room_id")?,
        use_start_dtm: opt_ms("start_ms")?,
        use_end_dtm: opt_ms("end_ms")?,
        detail: row.try_get("detail")?,
        confirm_id: confirm.and_then(|c| Uuid::parse_str(&c).ok()),
        approval_deadline: opt_ms("deadline_ms")?,
        subject: row.try_get("subject")?,
        mail_message_id: row.try_get("mail_message_id")?,
        next_attempt_at: (status == Status::Pending)
            .then(|| row.try_get("next_attempt_at").map(from_millis))
            .transpose()?,
        status,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
        sent_at: opt_ms("sent_at")?,
    })
}

/// A delivery record and its recipient key (unique per event with the event id).
pub type NewRecord = (Notification, String);

/// Records deliveries, skipping any (event, recipient) recorded before, in a few statements:
/// chunks of power-of-two sizes (at most [`INSERT_CHUNK`]), so each connection caches a
/// handful of statement shapes.
pub async fn insert_all(tx: &mut Tx, records: &[NewRecord]) -> Result<(), sqlx::Error> {
    let mut rest = records;
    while !rest.is_empty() {
        let size = INSERT_CHUNK.min(1 << rest.len().ilog2());
        let (chunk, tail) = rest.split_at(size);
        insert_chunk(&mut *tx, chunk).await?;
        rest = tail;
    }
    Ok(())
}

/// Most records in one insert (26 parameters each).
pub const INSERT_CHUNK: usize = 32;

async fn insert_chunk(tx: &mut Tx, chunk: &[NewRecord]) -> Result<(), sqlx::Error> {
    static TEXTS: StatementTexts<usize> = StatementTexts::new();
    let sql = TEXTS.get(chunk.len(), || {
        let width = COLUMNS.split(',').count();
        let rows = platform::db::param_groups(chunk.len(), width, 1, ", ", |p| format!("({p})"));
        format!(
            "INSERT INTO notifications ({COLUMNS}) VALUES {rows} \
             ON CONFLICT (event_id, recipient_key) DO NOTHING"
        )
    });
    let mut query = sqlx::query(sql);
    for (n, recipient_key) in chunk {
        query = query
            .bind(n.id.to_string())
            .bind(n.event_id.to_string())
            .bind(n.event_type.clone())
            .bind(n.event_version)
            .bind(to_millis(n.occurred_at))
            .bind(n.booking_id.to_string())
            .bind(n.kind.as_str())
            .bind(n.recipient_role.as_str())
            .bind(recipient_key.clone())
            .bind(n.recipient.clone())
            .bind(n.booking_user_id.clone())
            .bind(n.room_id)
            .bind(n.use_start_dtm.map(to_millis))
            .bind(n.use_end_dtm.map(to_millis))
            .bind(n.detail.clone())
            .bind(n.confirm_id.map(|c| c.to_string()))
            .bind(n.approval_deadline.map(to_millis))
            .bind(n.subject.clone())
            .bind(n.mail_message_id.clone())
            .bind(n.status.as_str())
            .bind(n.attempts)
            .bind(to_millis(n.next_attempt_at.unwrap_or(n.created_at)))
            .bind(n.last_error.clone())
            .bind(to_millis(n.created_at))
            .bind(to_millis(n.updated_at))
            .bind(n.sent_at.map(to_millis));
    }
    query.execute(&mut *tx).await?;
    Ok(())
}

/// WAITING rows whose booking has become known: each looked up by its booking (an `IN (SELECT …)`
/// here would read every booking ever seen, each round).
const RESOLVABLE: &str = "status = 'WAITING' AND EXISTS (SELECT 1 FROM notification_bookings b \
     WHERE b.booking_id = notifications.booking_id AND b.created_seen = 1)";

/// WAITING rows whose booking has become known.
pub async fn resolvable_waiting(tx: &mut Tx, limit: i64) -> Result<Vec<Notification>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE {RESOLVABLE} ORDER BY created_at LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// Fills in a WAITING row once its booking is known (if it is still WAITING).
pub async fn resolve(tx: &mut Tx, n: &Notification) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE notifications SET status = $2, recipient = $3, booking_user_id = $4, room_id = $5, \
         start_ms = $6, end_ms = $7, subject = $8, last_error = $9, next_attempt_at = $10, \
         updated_at = $10 WHERE id = $1 AND status = 'WAITING'",
    )
    .bind(n.id.to_string())
    .bind(n.status.as_str())
    .bind(&n.recipient)
    .bind(&n.booking_user_id)
    .bind(n.room_id)
    .bind(n.use_start_dtm.map(to_millis))
    .bind(n.use_end_dtm.map(to_millis))
    .bind(&n.subject)
    .bind(&n.last_error)
    .bind(to_millis(n.updated_at))
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Fails WAITING rows recorded before `before`: their booking never became known.
pub async fn fail_stale_waiting(
    tx: &mut Tx,
    before: DateTime<Utc>,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE notifications SET status = 'FAILED', last_error = $1, updated_at = $2 \
         WHERE status = 'WAITING' AND created_at < $3",
    )
    .bind(reason)
    .bind(to_millis(now))
    .bind(to_millis(before))
    .execute(&mut *tx)
    .await?
    .rows_affected())
}

/// PENDING rows whose next attempt is due, oldest first.
pub async fn due(
    tx: &mut Tx,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Notification>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE status = 'PENDING' AND next_attempt_at <= $1 \
         ORDER BY next_attempt_at, id LIMIT $2"
    ))
    .bind(to_millis(now))
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// Takes the `due` records for one attempt each, in one statement: a record is taken only while
/// it is still PENDING at the due time this sender read, so two senders never take the same
/// one. Its due time moves to `lease_until` (if this sender dies, the record is due again
/// then). Returns the ids taken.
pub async fn claim_all<'e>(
    ex: impl Executor<'e, Database = Any>,
    due: &[Notification],
    lease_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if due.is_empty() {
        return Ok(HashSet::new());
    }
    // Repeats of the last record change nothing.
    let padded = platform::db::padded_len(due.len());
    static TEXTS: StatementTexts<usize> = StatementTexts::new();
    let sql = TEXTS.get(padded, || claim_sql(padded));
    let mut query = sqlx::query_scalar::<_, String>(sql)
        .bind(to_millis(lease_until))
        .bind(to_millis(now));
    for i in 0..padded {
        let n = &due[i.min(due.len() - 1)];
        query = query
            .bind(n.id.to_string())
            .bind(n.next_attempt_at.map(to_millis).unwrap_or_default());
    }
    query
        .fetch_all(ex)
        .await?
        .iter()
        .map(|id| Uuid::parse_str(id).map_err(|e| sqlx::Error::Decode(Box::new(e))))
        .collect()
}

/// The claim of `rows` records: `$1` the lease's end, `$2` now, then each record's id and the
/// due time it was read with. The statement is driven by those keys, each looked up by id: a
/// plain `WHERE` with one term per record lets SQLite read every PENDING record through the
/// status index instead, and compare each against every term.
fn claim_sql(rows: usize) -> String {
    let keys = platform::db::param_groups(rows, 2, 3, ", ", |p| format!("({p})"));
    format!(
        "UPDATE notifications SET attempts = attempts + 1, next_attempt_at = $1, updated_at = $2 \
         FROM (VALUES {keys}) AS due \
         WHERE notifications.id = due.column1 AND notifications.next_attempt_at = due.column2 \
         AND notifications.status = 'PENDING' RETURNING notifications.id"
    )
}

/// Marks the records `ids` SENT, in one statement.
pub async fn mark_all_sent<'e>(
    ex: impl Executor<'e, Database = Any>,
    ids: &[Uuid],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    // Repeats of the last id change nothing.
    let padded = platform::db::padded_len(ids.len());
    let sql = format!(
        "UPDATE notifications SET status = 'SENT', sent_at = $1, updated_at = $1, \
         last_error = NULL WHERE id IN ({})",
        platform::db::params(2, padded)
    );
    let mut query = sqlx::query(&sql).bind(to_millis(now));
    for i in 0..padded {
        query = query.bind(ids[i.min(ids.len() - 1)].to_string());
    }
    query.execute(ex).await?;
    Ok(())
}

pub async fn mark_failed<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: Uuid,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET status = 'FAILED', last_error = $2, updated_at = $3 WHERE id = $1",
    )
    .bind(id.to_string())
    .bind(reason)
    .bind(to_millis(now))
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn reschedule<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: Uuid,
    at: DateTime<Utc>,
    error: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notifications SET next_attempt_at = $2, last_error = $3, updated_at = $4 \
         WHERE id = $1 AND status = 'PENDING'",
    )
    .bind(id.to_string())
    .bind(to_millis(at))
    .bind(error)
    .bind(to_millis(now))
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn get(pool: &AnyPool, id: Uuid) -> Result<Option<Notification>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM notifications WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?
    .map(|r| from_row(&r))
    .transpose()
}

/// What `GET /notifications` asks for.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only the booker's mails of this user (set for callers who are not admins).
    pub owner: Option<String>,
    pub booking: Option<Uuid>,
    pub status: Option<Status>,
    pub kind: Option<Kind>,
    pub limit: i64,
    pub offset: i64,
}

/// `GET /notifications`'s statement and its arguments, with only the filters in use
/// ([`Conditions`]): a booker's or a booking's records are read through their index, newest
/// first.
fn list_query(f: &Filter) -> (String, Conditions) {
    let mut c = Conditions::default();
    if let Some(owner) = f.owner.as_deref() {
        let owner = c.param(owner);
        c.push(format!(
            "booking_user_id = {owner} AND recipient_role = 'BOOKER'"
        ));
    }
    c.equal("booking_id", f.booking.map(|b| b.to_string()));
    c.equal("status", f.status.map(Status::as_str));
    c.equal("kind", f.kind.map(Kind::as_str));
    let filter = c.where_clause();
    let (limit, offset) = (c.param(f.limit), c.param(f.offset));
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications{filter} ORDER BY created_at DESC, id DESC \
         LIMIT {limit} OFFSET {offset}"
    );
    (sql, c)
}

/// Newest first.
pub async fn list(pool: &AnyPool, f: &Filter) -> Result<Vec<Notification>, sqlx::Error> {
    let (sql, args) = list_query(f);
    args.bind(sqlx::query(&sql))
        .fetch_all(pool)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PENDING mail to admin `i` about `event`, due at `now`.
    fn pending(event: Uuid, i: usize, now: DateTime<Utc>) -> Notification {
        Notification {
            id: Uuid::now_v7(),
            booking_id: Uuid::new_v4(),
            event_id: event,
            event_type: "ConfirmRequested".into(),
            event_version: 1,
            occurred_at: now,
            kind: Kind::ApprovalRequested,
            recipient_role: Role::Admin,
            recipient: Some(format!("admin{i}@example.com")),
            booking_user_id: Some("alice".into()),
            room_id: Some(101),
            use_start_dtm: Some(now),
            use_end_dtm: Some(now),
            detail: None,
            confirm_id: Some(Uuid::new_v4()),
            approval_deadline: Some(now),
            subject: Some(format!("Approval needed {i}")),
            mail_message_id: format!("<{i}@example.com>"),
            status: Status::Pending,
            attempts: 0,
            next_attempt_at: Some(now),
            last_error: None,
            created_at: now,
            updated_at: now,
            sent_at: None,
        }
    }

    /// Two senders that read the same due records: the first takes those still PENDING, the
    /// second (reading before the first claimed) gets none of them.
    async fn each_due_record_is_claimed_once(backend: platform::testkit::TestBackend) {
        let dbs = platform::testkit::TestDatabases::new(backend);
        let db = platform::db::Db::connect(&dbs.create("notification").await, crate::migrations())
            .await
            .unwrap();
        let now = from_millis(to_millis(Utc::now()));
        let event = Uuid::new_v4();
        let due: Vec<Notification> = (0..5).map(|i| pending(event, i, now)).collect();
        let records: Vec<NewRecord> = due
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), admin_key(&format!("admin{i}@example.com"))))
            .collect();
        let mut tx = db.begin().await.unwrap();
        insert_all(&mut tx, &records).await.unwrap();
        mark_all_sent(&mut tx, &[due[4].id], now).await.unwrap();
        tx.commit().await.unwrap();

        let lease = now + chrono::Duration::minutes(5);
        let mut tx = db.begin().await.unwrap();
        let first = claim_all(&mut tx, &due, lease, now).await.unwrap();
        tx.commit().await.unwrap();
        let expected: HashSet<Uuid> = due[..4].iter().map(|n| n.id).collect();
        assert_eq!(first, expected);

        let mut tx = db.begin().await.unwrap();
        let second = claim_all(&mut tx, &due, lease, now).await.unwrap();
        tx.commit().await.unwrap();
        assert!(second.is_empty(), "claimed twice: {second:?}");

        for n in &due[..4] {
            let stored = get(&db.pool, n.id).await.unwrap().unwrap();
            assert_eq!((stored.attempts, stored.next_attempt_at), (1, Some(lease)));
        }
        let sent = get(&db.pool, due[4].id).await.unwrap().unwrap();
        assert_eq!((sent.status, sent.attempts), (Status::Sent, 0));
    }

    #[tokio::test]
    async fn each_due_record_is_claimed_once_on_sqlite() {
        each_due_record_is_claimed_once(platform::testkit::TestBackend::Sqlite).await;
    }

    #[tokio::test]
    async fn each_due_record_is_claimed_once_on_postgres() {
        each_due_record_is_claimed_once(platform::testkit::TestBackend::Postgres).await;
    }

    #[tokio::test]
    async fn records_are_written_in_chunks_and_one_recorded_before_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("notification.db").display());
        let db = platform::db::Db::connect(&url, crate::migrations())
            .await
            .unwrap();
        let now = from_millis(to_millis(Utc::now()));
        let event = Uuid::new_v4();
        let record = |i: usize| pending(event, i, now);
        // 37 records: chunks of 32, 4 and 1; the first two were recorded before (other ids).
        let records: Vec<NewRecord> = (0..37)
            .map(|i| (record(i), admin_key(&format!("admin{i}@example.com"))))
            .collect();
        let earlier: Vec<NewRecord> = records[..2]
            .iter()
            .map(|(n, key)| {
                let mut n = n.clone();
                n.id = Uuid::now_v7();
                (n, key.clone())
            })
            .collect();
        let mut tx = db.begin().await.unwrap();
        insert_all(&mut tx, &earlier).await.unwrap();
        insert_all(&mut tx, &records).await.unwrap();
        tx.commit().await.unwrap();

        let json = |n: &Notification| serde_json::to_value(n).unwrap();
        for (n, _) in &records[..2] {
            assert!(get(&db.pool, n.id).await.unwrap().is_none());
        }
        for (n, _) in &records[2..] {
            let stored = get(&db.pool, n.id).await.unwrap().expect("recorded");
            assert_eq!(json(&stored), json(n));
        }
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notifications")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(total, 37);
    }

    #[tokio::test]
    async fn a_round_claims_its_records_by_key_not_by_reading_the_table() {
        let rows = 64;
        let plan =
            platform::testkit::plan_on_empty_sqlite(crate::migrations(), &claim_sql(rows)).await;
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH notifications") && step.contains("(id=?)")),
            "{plan:?}"
        );
        assert!(
            plan.iter()
                .all(|step| !step.starts_with("SCAN notifications")
                    && !step.contains("notifications_due")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn waiting_mail_is_matched_to_its_booking_by_key_not_by_reading_every_booking() {
        let sql = format!("SELECT id FROM notifications WHERE {RESOLVABLE}");
        let plan = platform::testkit::plan_on_empty_sqlite(crate::migrations(), &sql).await;
        assert!(
            plan.iter().all(|step| !step.starts_with("SCAN")),
            "{plan:?}"
        );
        assert!(
            plan.iter()
                .any(|step| step.contains("notification_bookings")
                    && step.contains("(booking_id=?)")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn a_list_by_booker_or_booking_reads_only_their_records() {
        let cases = [
            (
                Filter {
                    owner: Some("alice".into()),
                    ..Filter::default()
                },
                "notifications_user",
            ),
            (
                Filter {
                    owner: Some("alice".into()),
                    booking: Some(Uuid::now_v7()),
                    ..Filter::default()
                },
                // Either index narrows it to a few records.
                "USING INDEX notifications_",
            ),
            (
                Filter {
                    booking: Some(Uuid::now_v7()),
                    kind: Some(Kind::Booked),
                    ..Filter::default()
                },
                "notifications_booking",
            ),
        ];
        for (filter, index) in cases {
            let (sql, _) = list_query(&filter);
            let plan = platform::testkit::plan_on_empty_sqlite(crate::migrations(), &sql).await;
            assert!(
                plan.iter()
                    .any(|step| step.starts_with("SEARCH notifications") && step.contains(index)),
                "{filter:?}: {plan:?}"
            );
            assert!(
                plan.iter()
                    .all(|step| !step.starts_with("SCAN notifications")),
                "{filter:?}: {plan:?}"
            );
        }
    }
}
