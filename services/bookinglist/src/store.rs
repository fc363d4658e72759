//! SQL for the list (the same statements on SQLite and PostgreSQL).
//!
//! Rows live in one of two identical tables ([`ViewTable`]); `booking_list_meta` names the
//! active one and, while a rebuild runs, the shadow. Every write of the projection first claims
//! a change number from the meta row ([`claim`]); that takes the row's lock until commit, so
//! writes are serialised with a rebuild's start and swap, and change numbers become visible in
//! the order they were handed out, which lets the live feed read changes with
//! `change_seq > last seen` without missing any.

use std::collections::HashMap;

use platform::{
    contract::{CancelReason, Envelope},
    db::{AnyQuery, StatementTexts, Tx},
    time::{from_millis, to_millis},
};
use sqlx::{any::AnyRow, Any, Executor, Row as _};
use uuid::Uuid;

use crate::{
    projection::{self, BookingRow, BookingStatus, ConfirmStatus, Versions},
    query::{FeedFilter, Filter, ListQuery},
};

/// One of the two tables that hold rows; their names are fixed here, never taken from input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViewTable {
    A,
    B,
}

impl ViewTable {
    pub fn name(self) -> &'static str {
        match self {
            ViewTable::A => "booking_list_a",
            ViewTable::B => "booking_list_b",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "booking_list_a" => Some(ViewTable::A),
            "booking_list_b" => Some(ViewTable::B),
            _ => None,
        }
    }

    pub fn other(self) -> Self {
        match self {
            ViewTable::A => ViewTable::B,
            ViewTable::B => ViewTable::A,
        }
    }
}

fn table_of(row: &AnyRow, col: &str) -> Result<Option<ViewTable>, sqlx::Error> {
    let name: Option<String> = row.try_get(col)?;
    name.map(|n| {
        ViewTable::parse(&n)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown view table {n}").into()))
    })
    .transpose()
}

/// Where a projection write goes, and the change number it carries.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    pub seq: i64,
    pub active: ViewTable,
    pub shadow: Option<ViewTable>,
}

impl Claim {
    /// The active table, and the shadow while a rebuild runs (it must see live events too).
    pub fn tables(&self) -> impl Iterator<Item = ViewTable> {
        std::iter::once(self.active).chain(self.shadow)
    }
}

/// Claims `count` change numbers (the last one is returned) and locks the meta row until the
/// transaction ends.
pub async fn claim(tx: &mut Tx, count: i64) -> Result<Claim, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE booking_list_meta SET change_seq = change_seq + $1 WHERE id = 1 \
         RETURNING change_seq, active_table, shadow_table",
    )
    .bind(count)
    .fetch_one(&mut *tx)
    .await?;
    Ok(Claim {
        seq: row.try_get("change_seq")?,
        active: table_of(&row, "active_table")?
            .ok_or_else(|| sqlx::Error::Decode("no active table".into()))?,
        shadow: table_of(&row, "shadow_table")?,
    })
}

/// The table reads go to.
pub async fn active_table<'c, E: Executor<'c, Database = Any>>(
    db: E,
) -> Result<ViewTable, sqlx::Error> {
    let row = sqlx::query("SELECT active_table FROM booking_list_meta WHERE id = 1")
        .fetch_one(db)
        .await?;
    table_of(&row, "active_table")?.ok_or_else(|| sqlx::Error::Decode("no active table".into()))
}

const COLUMNS: &str = "booking_id, saga_id, room_id, booking_user_id, start_ms, end_ms, \
     booking_status, booking_ms, cancel_reason, cancel_detail, confirm_id, confirm_status, \
     approval_deadline_ms, confirm_user_id, confirm_ms, deny_reason, confirm_close_reason, saga_state, \
     booking_version, confirm_version, decision_version, closed_version, saga_version, \
     updated_ms, change_seq";

fn decode_err(what: &str, value: &str) -> sqlx::Error {
    sqlx::Error::Decode(format!("unknown {what} `{value}`").into())
}

fn from_row(r: &AnyRow) -> Result<BookingRow, sqlx::Error> {
    let uuid = |col: &str| -> Result<Option<Uuid>, sqlx::Error> {
        r.try_get::<Option<String>, _>(col)?
            .map(|s| Uuid::parse_str(&s).map_err(|e| sqlx::Error::Decode(Box::new(e))))
            .transpose()
    };
    let time = |col: &str| -> Result<Option<_>, sqlx::Error> {
        Ok(r.try_get::<Option<i64>, _>(col)?.map(from_millis))
    };
    let version = |col: &str| -> Result<u64, sqlx::Error> {
        Ok(u64::try_from(r.try_get::<i64, _>(col)?).unwrap_or_default())
    };
    let text = |col: &str| r.try_get::<Option<String>, _>(col);
    let closed = version("closed_version")?;
    Ok(BookingRow {
        booking_id: uuid("booking_id")?
            .ok_or_else(|| sqlx::Error::Decode("booking_id is null".into()))?,
        saga_id: uuid("saga_id")?,
        room_id: r.try_get("room_id")?,
        booking_user_id: text("booking_user_id")?,
        use_start_dtm: time("start_ms")?,
        use_end_dtm: time("end_ms")?,
        booking_status: text("booking_status")?
            .map(|s| BookingStatus::parse(&s).ok_or_else(|| decode_err("booking status", &s)))
            .transpose()?,
        booking_dtm: time("booking_ms")?,
        cancel_reason: text("cancel_reason")?
            .map(|s| CancelReason::parse(&s).ok_or_else(|| decode_err("cancel reason", &s)))
            .transpose()?,
        cancel_detail: text("cancel_detail")?,
        confirm_id: uuid("confirm_id")?,
        confirm_status: text("confirm_status")?
            .map(|s| ConfirmStatus::parse(&s).ok_or_else(|| decode_err("confirm status", &s)))
            .transpose()?,
        approval_deadline: time("approval_deadline_ms")?,
        confirm_user_id: text("confirm_user_id")?,
        confirm_dtm: time("confirm_ms")?,
        deny_reason: text("deny_reason")?,
        confirm_closed: closed > 0,
        confirm_close_reason: text("confirm_close_reason")?,
        saga_state: text("saga_state")?,
        updated_at: from_millis(r.try_get("updated_ms")?),
        versions: Versions {
            booking: version("booking_version")?,
            confirm: version("confirm_version")?,
            saga: version("saga_version")?,
            decision: version("decision_version")?,
            closed,
        },
    })
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One row, by booking id.
pub async fn get<'c, E: Executor<'c, Database = Any>>(
    db: E,
    table: ViewTable,
    booking_id: Uuid,
) -> Result<Option<BookingRow>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM {} WHERE booking_id = $1",
        table.name()
    ))
    .bind(booking_id.to_string())
    .fetch_optional(db)
    .await?
    .map(|r| from_row(&r))
    .transpose()
}

/// The columns an index covers besides `booking_id` and `change_seq`. They are set once, when
/// the booking becomes known; a save that leaves them as they were updates only the others,
/// which spares rewriting those index entries (SQLite rewrites them whenever a statement sets
/// their columns, even to the same values: about 3.5 times the work of the narrower update).
const INDEXED: [&str; 4] = ["room_id", "start_ms", "booking_user_id", "booking_ms"];

/// Whether `new` differs from `before` in a column of [`INDEXED`].
fn indexed_columns_change(before: &BookingRow, new: &BookingRow) -> bool {
    before.room_id != new.room_id
        || before.use_start_dtm != new.use_start_dtm
        || before.booking_user_id != new.booking_user_id
        || before.booking_dtm != new.booking_dtm
}

/// How a row is saved: every column, or only those outside [`INDEXED`] when the row exists and
/// those did not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Save {
    All,
    Unindexed,
}

/// Most rows one statement saves (25 values each).
const ROWS_PER_SAVE: usize = 32;

/// The statement that saves `rows` rows into `table`, as `save` says: an upsert whose conflict
/// branch sets every column, or only those outside [`INDEXED`]. Values go in [`COLUMNS`]
/// order, row after row (see [`bind_columns`]).
fn save_sql(table: ViewTable, save: Save, rows: usize) -> String {
    let columns: Vec<&str> = COLUMNS.split(',').map(str::trim).collect();
    let values = platform::db::param_groups(rows, columns.len(), 1, ", ", |p| format!("({p})"));
    let updates = columns[1..]
        .iter()
        .filter(|c| save == Save::All || !INDEXED.contains(c))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {} ({COLUMNS}) VALUES {values} ON CONFLICT (booking_id) DO UPDATE SET {updates}",
        table.name()
    )
}

/// Binds the values of `row` (and its change number `seq`) in [`COLUMNS`] order.
fn bind_columns<'q>(mut q: AnyQuery<'q>, row: &BookingRow, seq: i64) -> AnyQuery<'q> {
    for column in COLUMNS.split(',').map(str::trim) {
        q = match column {
            "booking_id" => q.bind(row.booking_id.to_string()),
            "saga_id" => q.bind(row.saga_id.map(|s| s.to_string())),
            "room_id" => q.bind(row.room_id),
            "booking_user_id" => q.bind(row.booking_user_id.clone()),
            "start_ms" => q.bind(row.use_start_dtm.map(to_millis)),
            "end_ms" => q.bind(row.use_end_dtm.map(to_millis)),
            "booking_status" => q.bind(row.booking_status.map(|s| s.as_str())),
            "booking_ms" => q.bind(row.booking_dtm.map(to_millis)),
            "cancel_reason" => q.bind(row.cancel_reason.map(|r| r.as_str())),
            "cancel_detail" => q.bind(row.cancel_detail.clone()),
            "confirm_id" => q.bind(row.confirm_id.map(|s| s.to_string())),
            "confirm_status" => q.bind(row.confirm_status.map(|s| s.as_str())),
            "approval_deadline_ms" => q.bind(row.approval_deadline.map(to_millis)),
            "confirm_user_id" => q.bind(row.confirm_user_id.clone()),
            "confirm_ms" => q.bind(row.confirm_dtm.map(to_millis)),
            "deny_reason" => q.bind(row.deny_reason.clone()),
            "confirm_close_reason" => q.bind(row.confirm_close_reason.clone()),
            "saga_state" => q.bind(row.saga_state.clone()),
            "booking_version" => q.bind(to_i64(row.versions.booking)),
            "confirm_version" => q.bind(to_i64(row.versions.confirm)),
            "decision_version" => q.bind(to_i64(row.versions.decision)),
            "closed_version" => q.bind(to_i64(row.versions.closed)),
            "saga_version" => q.bind(to_i64(row.versions.saga)),
            "updated_ms" => q.bind(to_millis(row.updated_at)),
            "change_seq" => q.bind(seq),
            other => unreachable!("no value for booking list column {other}"),
        };
    }
    q
}

/// Saves `rows` (each with its change number) into `table` as `save` says, in as few
/// statements as [`platform::db::power_of_two_runs`] allows.
async fn save_all(
    tx: &mut Tx,
    table: ViewTable,
    save: Save,
    rows: &[(i64, BookingRow)],
) -> Result<(), sqlx::Error> {
    for run in platform::db::power_of_two_runs(rows, ROWS_PER_SAVE) {
        static TEXTS: StatementTexts<(ViewTable, Save, usize)> = StatementTexts::new();
        let sql = TEXTS.get((table, save, run.len()), || {
            save_sql(table, save, run.len())
        });
        let query = run
            .iter()
            .fold(sqlx::query(sql), |q, (seq, row)| bind_columns(q, row, *seq));
        query.execute(&mut *tx).await?;
    }
    Ok(())
}

/// Folds `env` into its row in `table`; true when the row changed (and was saved).
pub async fn project(
    tx: &mut Tx,
    table: ViewTable,
    env: &Envelope,
    seq: i64,
) -> Result<bool, sqlx::Error> {
    Ok(project_all(tx, table, &[env], seq).await? == 1)
}

/// Folds `events`, in order, into their rows in `table`: the rows are read in one statement and
/// the changed ones written together (see [`save_all`]). The i-th distinct booking (in order of first appearance)
/// is stamped with change number `first_seq + i`, so the caller claims at least as many
/// numbers as there are distinct bookings. Returns how many rows changed.
pub async fn project_all(
    tx: &mut Tx,
    table: ViewTable,
    events: &[&Envelope],
    first_seq: i64,
) -> Result<usize, sqlx::Error> {
    let bookings = distinct_bookings(events);
    let mut old = get_many(tx, table, &bookings).await?;
    let (mut all, mut unindexed) = (Vec::new(), Vec::new());
    for (seq, booking) in (first_seq..).zip(&bookings) {
        let before = old.remove(booking);
        let base = before
            .clone()
            .unwrap_or_else(|| BookingRow::empty(*booking));
        let new = events
            .iter()
            .filter(|e| e.booking_id == *booking)
            .fold(base, |row, env| projection::fold(row, env));
        let unchanged = match &before {
            Some(before) => *before == new,
            None => new == BookingRow::empty(*booking),
        };
        if unchanged {
            continue;
        }
        match &before {
            Some(before) if !indexed_columns_change(before, &new) => unindexed.push((seq, new)),
            _ => all.push((seq, new)),
        }
    }
    save_all(tx, table, Save::All, &all).await?;
    save_all(tx, table, Save::Unindexed, &unindexed).await?;
    Ok(all.len() + unindexed.len())
}

/// The bookings `events` are about, each once, in order of first appearance: the rows
/// [`project_all`] may change, one change number each.
pub fn distinct_bookings(events: &[&Envelope]) -> Vec<Uuid> {
    let mut bookings: Vec<Uuid> = Vec::with_capacity(events.len());
    for env in events {
        if !bookings.contains(&env.booking_id) {
            bookings.push(env.booking_id);
        }
    }
    bookings
}

/// The rows of `bookings` that exist, by booking id.
async fn get_many(
    tx: &mut Tx,
    table: ViewTable,
    bookings: &[Uuid],
) -> Result<HashMap<Uuid, BookingRow>, sqlx::Error> {
    // Well under both databases' limits on bound parameters.
    const CHUNK: usize = 500;
    let mut rows = HashMap::with_capacity(bookings.len());
    for chunk in bookings.chunks(CHUNK) {
        // Padded with repeats of the last id, which change nothing in an IN list.
        let padded = platform::db::padded_len(chunk.len());
        static TEXTS: StatementTexts<(ViewTable, usize)> = StatementTexts::new();
        let sql = TEXTS.get((table, padded), || {
            format!(
                "SELECT {COLUMNS} FROM {} WHERE booking_id IN ({})",
                table.name(),
                platform::db::params(1, padded)
            )
        });
        let mut query = sqlx::query(sql);
        for i in 0..padded {
            query = query.bind(chunk[i.min(chunk.len() - 1)].to_string());
        }
        for r in query.fetch_all(&mut *tx).await? {
            let row = from_row(&r)?;
            rows.insert(row.booking_id, row);
        }
    }
    Ok(rows)
}

/// A value bound to a dynamically built query.
enum Arg {
    Text(String),
    Int(i64),
}

fn where_clause(filter: &Filter, args: &mut Vec<Arg>) -> String {
    let mut conditions = Vec::new();
    let mut push = |sql: &str, arg: Arg| {
        args.push(arg);
        conditions.push(sql.replace('?', &format!("${}", args.len())));
    };
    if let Some(u) = &filter.user {
        push("booking_user_id = ?", Arg::Text(u.clone()));
    }
    if let Some(r) = filter.room {
        push("room_id = ?", Arg::Int(r));
    }
    if let Some(s) = filter.booking_status {
        push("booking_status = ?", Arg::Text(s.as_str().into()));
    }
    if let Some(s) = filter.confirm_status {
        push("confirm_status = ?", Arg::Text(s.as_str().into()));
    }
    if let Some(from) = filter.from {
        push("end_ms > ?", Arg::Int(to_millis(from)));
    }
    if let Some(to) = filter.to {
        push("start_ms < ?", Arg::Int(to_millis(to)));
    }
    if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    }
}

fn bind_all<'q>(mut q: AnyQuery<'q>, args: &[Arg]) -> AnyQuery<'q> {
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s.clone()),
            Arg::Int(i) => q.bind(*i),
        };
    }
    q
}

/// One page of rows matching the query, and how many match in all.
pub async fn list<'c, E>(
    db: E,
    table: ViewTable,
    query: &ListQuery,
) -> Result<(Vec<BookingRow>, i64), sqlx::Error>
where
    E: Executor<'c, Database = Any> + Copy,
{
    let mut args = Vec::new();
    let clause = where_clause(&query.filter, &mut args);
    let count_sql = format!("SELECT COUNT(*) AS n FROM {} {clause}", table.name());
    let total: i64 = bind_all(sqlx::query(&count_sql), &args)
        .fetch_one(db)
        .await?
        .try_get("n")?;
    let column = query.sort.key.column();
    let direction = if query.sort.descending { "DESC" } else { "ASC" };
    // Rows that lack the sort value (partial rows) go last either way, on both databases.
    let page_sql = format!(
        "SELECT {COLUMNS} FROM {} {clause} \
         ORDER BY ({column} IS NULL), {column} {direction}, booking_id ASC \
         LIMIT {} OFFSET {}",
        table.name(),
        query.page.size,
        query.page.offset()
    );
    let rows = bind_all(sqlx::query(&page_sql), &args)
        .fetch_all(db)
        .await?
        .iter()
        .map(from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rows, total))
}

/// Every row, in booking id order (for comparing views).
pub async fn all<'c, E: Executor<'c, Database = Any>>(
    db: E,
    table: ViewTable,
) -> Result<Vec<BookingRow>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM {} ORDER BY booking_id",
        table.name()
    ))
    .fetch_all(db)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// Rows changed after change number `after`, oldest change first, with their change numbers.
pub async fn changes_since<'c, E: Executor<'c, Database = Any>>(
    db: E,
    table: ViewTable,
    after: i64,
    filter: &FeedFilter,
    limit: i64,
) -> Result<Vec<(i64, BookingRow)>, sqlx::Error> {
    let mut args = vec![Arg::Int(after)];
    let mut sql = format!(
        "SELECT {COLUMNS} FROM {} WHERE change_seq > $1",
        table.name()
    );
    if let Some(u) = &filter.user {
        args.push(Arg::Text(u.clone()));
        sql.push_str(&format!(" AND booking_user_id = ${}", args.len()));
    }
    if let Some(r) = filter.room {
        args.push(Arg::Int(r));
        sql.push_str(&format!(" AND room_id = ${}", args.len()));
    }
    if !filter.saga_states.is_empty() {
        let first = args.len() + 1;
        args.extend(filter.saga_states.iter().map(|s| Arg::Text(s.to_string())));
        let placeholders: Vec<String> = (first..=args.len()).map(|i| format!("${i}")).collect();
        sql.push_str(&format!(" AND saga_state IN ({})", placeholders.join(", ")));
    }
    sql.push_str(&format!(" ORDER BY change_seq LIMIT {limit}"));
    bind_all(sqlx::query(&sql), &args)
        .fetch_all(db)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("change_seq")?, from_row(r)?)))
        .collect()
}

/// The newest change number handed out so far.
pub async fn last_change<'c, E: Executor<'c, Database = Any>>(db: E) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT change_seq FROM booking_list_meta WHERE id = 1")
        .fetch_one(db)
        .await?
        .try_get("change_seq")
}

/// Deletes every row of `table` (the shadow, before a rebuild fills it).
pub async fn clear(tx: &mut Tx, table: ViewTable) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("DELETE FROM {}", table.name()))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict_sets(sql: &str) -> Vec<&str> {
        let (_, sets) = sql
            .split_once(" ON CONFLICT (booking_id) DO UPDATE SET ")
            .expect(sql);
        sets.split(", ").collect()
    }

    #[test]
    fn a_save_of_rows_binds_every_column_of_each_row_in_turn() {
        let sql = save_sql(ViewTable::A, Save::Unindexed, 2);
        let (head, _) = sql.split_once(" ON CONFLICT").expect(&sql);
        assert_eq!(
            head,
            format!(
                "INSERT INTO booking_list_a ({COLUMNS}) VALUES ({}), ({})",
                platform::db::params(1, 25),
                platform::db::params(26, 25)
            )
        );
    }

    #[test]
    fn the_narrow_save_sets_every_column_but_the_key_and_the_indexed_ones() {
        let sql = save_sql(ViewTable::B, Save::Unindexed, 1);
        let sets = conflict_sets(&sql);
        // 25 columns: the key and the four indexed ones are left alone.
        assert_eq!(sets.len(), 20, "{sets:?}");
        assert_eq!(sets[0], "saga_id = excluded.saga_id");
        assert_eq!(sets[19], "change_seq = excluded.change_seq");
        for indexed in INDEXED {
            assert!(
                sets.iter().all(|s| !s.starts_with(&format!("{indexed} "))),
                "{indexed} in {sets:?}"
            );
        }
    }

    #[test]
    fn the_full_save_sets_every_column_but_the_key() {
        let sql = save_sql(ViewTable::A, Save::All, 1);
        let sets = conflict_sets(&sql);
        assert_eq!(sets.len(), 24, "{sets:?}");
        assert_eq!(sets[1], "room_id = excluded.room_id");
    }
}
