//! SQLite's write path without a thread hop per statement.
//!
//! sqlx runs every SQLite statement on the connection's own worker thread: each statement is a
//! message to that thread and its rows a message back, i.e. two thread wake-ups per statement.
//! Profiles of the services under load put about a third of their CPU there (the kernel
//! switching threads), not in SQLite. SQLite admits one writer at a time anyway, so each
//! process keeps one connection for writing, locked away from its worker thread with sqlx's
//! own `lock_handle` for as long as the process runs, and runs a write transaction's
//! statements on it directly, in the calling task, one at a time (the [`crate::db::Db`] queues
//! writers). Statements are still written and bound with sqlx (`sqlx::query(…).bind(…)`) and
//! their rows read as `AnyRow`s, exactly as on the pool; only how they reach the file differs.
//! This and [`crate::sqlite_memory`] are the modules where the workspace allows `unsafe`:
//! SQLite's C API.
#![allow(unsafe_code)]

use std::{
    borrow::Cow,
    collections::HashMap,
    ffi::{c_int, CStr, CString},
    fmt,
    ptr::{self, NonNull},
    sync::Arc,
};

use libsqlite3_sys as ffi;
use sqlx::{
    any::{AnyArguments, AnyQueryResult, AnyRow, AnyTypeInfo, AnyTypeInfoKind},
    error::{DatabaseError, ErrorKind},
    sqlite::{LockedSqliteHandle, SqliteConnectOptions, SqliteConnection},
    ConnectOptions as _,
};
use sqlx_core::{
    any::{AnyColumn, AnyValue, AnyValueKind},
    ext::ustr::UStr,
};

/// Prepared statements kept per writer; beyond this the cache starts afresh.
const CACHED_STATEMENTS: usize = 256;

/// The process's SQLite write connection (see the module documentation).
pub struct SqliteWriter {
    db: NonNull<ffi::sqlite3>,
    statements: HashMap<String, Prepared>,
    // Declared before `_connection` so it is dropped first: the worker thread gets the handle
    // back before the connection shuts it down.
    _locked: LockedSqliteHandle<'static>,
    _connection: Box<SqliteConnection>,
}

// SAFETY: the handle is used by one task at a time (the writer sits behind a mutex), SQLite is
// built thread-safe, and the sqlx worker thread that owns it is parked while it is locked away.
unsafe impl Send for SqliteWriter {}

impl fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteWriter")
            .field("cached_statements", &self.statements.len())
            .finish()
    }
}

impl SqliteWriter {
    pub async fn open(options: &SqliteConnectOptions) -> Result<SqliteWriter, sqlx::Error> {
        let mut connection = Box::new(options.connect().await?);
        let locked = connection.lock_handle().await?;
        // SAFETY: the guard points into the connection's heap-allocated shared state, which
        // lives as long as the boxed connection; the fields' order drops the guard first, and
        // the connection is not used again while the guard lives.
        let mut locked: LockedSqliteHandle<'static> = unsafe { std::mem::transmute(locked) };
        let db = locked.as_raw_handle();
        Ok(SqliteWriter {
            db,
            statements: HashMap::new(),
            _locked: locked,
            _connection: connection,
        })
    }

    /// Runs statements that take no arguments and return no rows (`BEGIN IMMEDIATE`, `COMMIT`).
    pub fn exec(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        self.run(sql, None, true, |_| true).map(|_| ())
    }

    /// True while a transaction is open on the connection.
    pub fn in_transaction(&self) -> bool {
        // SAFETY: a valid handle.
        unsafe { ffi::sqlite3_get_autocommit(self.db.as_ptr()) == 0 }
    }

    /// Runs every statement of `sql` with `arguments`, handing each row to `on_row` until it
    /// answers false; returns the changes of the statements that ran.
    pub fn run(
        &mut self,
        sql: &str,
        arguments: Option<AnyArguments<'_>>,
        persistent: bool,
        mut on_row: impl FnMut(AnyRow) -> bool,
    ) -> Result<AnyQueryResult, sqlx::Error> {
        let values = arguments.map(|a| a.values.0).unwrap_or_default();
        let db = self.db;
        if !persistent {
            return Prepared::new(db, sql)?.run(db, &values, &mut on_row);
        }
        if !self.statements.contains_key(sql) {
            if self.statements.len() >= CACHED_STATEMENTS {
                self.statements.clear();
            }
            self.statements
                .insert(sql.to_owned(), Prepared::new(db, sql)?);
        }
        self.statements[sql].run(db, &values, &mut on_row)
    }
}

impl Drop for SqliteWriter {
    fn drop(&mut self) {
        if self.in_transaction() {
            let _ = self.exec("ROLLBACK");
        }
        // Finalized before the handle goes back to sqlx, which will close it.
        self.statements.clear();
    }
}

/// The statements of one SQL text, prepared, with where each parameter's value comes from.
struct Prepared {
    statements: Vec<Statement>,
}

struct Statement {
    handle: NonNull<ffi::sqlite3_stmt>,
    /// For each parameter position (1-based in SQLite), the argument it takes (`$3` → 2).
    arguments: Vec<usize>,
    columns: Arc<Columns>,
}

struct Columns {
    names: Arc<sqlx_core::HashMap<UStr, usize>>,
    list: Vec<UStr>,
}

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: prepared by us and finalized once.
        unsafe { ffi::sqlite3_finalize(self.handle.as_ptr()) };
    }
}

impl Prepared {
    fn new(db: NonNull<ffi::sqlite3>, sql: &str) -> Result<Prepared, sqlx::Error> {
        let text = CString::new(sql)
            .map_err(|_| sqlx::Error::Protocol("SQL contains a NUL character".into()))?;
        let mut statements = Vec::new();
        let mut rest = text.as_ptr();
        let mut anonymous = 0;
        loop {
            let mut handle = ptr::null_mut();
            let mut tail = ptr::null();
            // SAFETY: `rest` points into `text`, NUL-terminated.
            let code = unsafe {
                ffi::sqlite3_prepare_v3(
                    db.as_ptr(),
                    rest,
                    -1,
                    ffi::SQLITE_PREPARE_PERSISTENT,
                    &mut handle,
                    &mut tail,
                )
            };
            if code != ffi::SQLITE_OK {
                return Err(error(db, code));
            }
            rest = tail;
            // Whitespace or a comment after the last statement prepares to nothing.
            let Some(handle) = NonNull::new(handle) else {
                break;
            };
            let statement = Statement::new(handle, &mut anonymous)?;
            statements.push(statement);
            // SAFETY: `tail` points into `text`.
            if unsafe { *rest } == 0 {
                break;
            }
        }
        Ok(Prepared { statements })
    }

    fn run(
        &self,
        db: NonNull<ffi::sqlite3>,
        values: &[AnyValueKind<'_>],
        on_row: &mut impl FnMut(AnyRow) -> bool,
    ) -> Result<AnyQueryResult, sqlx::Error> {
        let mut result = AnyQueryResult::default();
        let mut wanted = true;
        for statement in &self.statements {
            let outcome = statement.run(db, values, &mut wanted, on_row);
            // SAFETY: a valid statement; resetting makes it reusable and ends its read.
            unsafe {
                ffi::sqlite3_reset(statement.handle.as_ptr());
                ffi::sqlite3_clear_bindings(statement.handle.as_ptr());
            }
            let changes = outcome?;
            result.rows_affected += changes;
            // SAFETY: a valid handle.
            result.last_insert_id = Some(unsafe { ffi::sqlite3_last_insert_rowid(db.as_ptr()) });
            if !wanted {
                break;
            }
        }
        Ok(result)
    }
}

impl Statement {
    fn new(
        handle: NonNull<ffi::sqlite3_stmt>,
        anonymous: &mut usize,
    ) -> Result<Statement, sqlx::Error> {
        let statement = handle.as_ptr();
        // SAFETY (this function): `statement` is a valid prepared statement.
        let count = unsafe { ffi::sqlite3_bind_parameter_count(statement) };
        let mut arguments = Vec::with_capacity(count as usize);
        for position in 1..=count {
            let name = unsafe { ffi::sqlite3_bind_parameter_name(statement, position) };
            let argument = if name.is_null() {
                // A bare `?` takes the next argument in order.
                *anonymous += 1;
                *anonymous - 1
            } else {
                let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
                name.strip_prefix(['$', '?'])
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n >= 1)
                    .map(|n| n - 1)
                    .ok_or_else(|| {
                        sqlx::Error::Protocol(format!("unsupported query parameter {name}"))
                    })?
            };
            arguments.push(argument);
        }
        let width = unsafe { ffi::sqlite3_column_count(statement) };
        let mut names = sqlx_core::HashMap::new();
        let mut list = Vec::with_capacity(width as usize);
        for i in 0..width {
            let name = unsafe { ffi::sqlite3_column_name(statement, i) };
            let name = if name.is_null() {
                UStr::new("")
            } else {
                UStr::from(
                    unsafe { CStr::from_ptr(name) }
                        .to_string_lossy()
                        .into_owned(),
                )
            };
            names.insert(name.clone(), i as usize);
            list.push(name);
        }
        Ok(Statement {
            handle,
            arguments,
            columns: Arc::new(Columns {
                names: Arc::new(names),
                list,
            }),
        })
    }

    /// Binds, steps through the rows and returns the statement's changes.
    fn run(
        &self,
        db: NonNull<ffi::sqlite3>,
        values: &[AnyValueKind<'_>],
        wanted: &mut bool,
        on_row: &mut impl FnMut(AnyRow) -> bool,
    ) -> Result<u64, sqlx::Error> {
        let statement = self.handle.as_ptr();
        for (i, &argument) in self.arguments.iter().enumerate() {
            let value = values.get(argument).ok_or_else(|| {
                sqlx::Error::Protocol(format!(
                    "the query takes ${} but only {} argument(s) were bound",
                    argument + 1,
                    values.len()
                ))
            })?;
            bind(db, statement, i as c_int + 1, value)?;
        }
        loop {
            // SAFETY: a valid, bound statement.
            match unsafe { ffi::sqlite3_step(statement) } {
                ffi::SQLITE_ROW => {
                    if *wanted {
                        *wanted = on_row(self.row());
                    }
                    if !*wanted {
                        return Ok(0);
                    }
                }
                ffi::SQLITE_DONE => break,
                code => return Err(error(db, code)),
            }
        }
        // SAFETY: valid handles.
        let writes = unsafe { ffi::sqlite3_stmt_readonly(statement) } == 0;
        Ok(if writes {
            unsafe { ffi::sqlite3_changes64(db.as_ptr()) as u64 }
        } else {
            0
        })
    }

    /// The current row, copied out (as sqlx's SQLite driver maps values: by their storage class).
    fn row(&self) -> AnyRow {
        let statement = self.handle.as_ptr();
        let columns = &self.columns;
        let mut row = AnyRow {
            column_names: Arc::clone(&columns.names),
            columns: Vec::with_capacity(columns.list.len()),
            values: Vec::with_capacity(columns.list.len()),
        };
        for (i, name) in columns.list.iter().enumerate() {
            let i = i as c_int;
            // SAFETY (this loop): the statement has a row and `i` is one of its columns; text
            // and blob pointers are copied before the next call on the statement.
            let kind = match unsafe { ffi::sqlite3_column_type(statement, i) } {
                ffi::SQLITE_INTEGER => {
                    AnyValueKind::BigInt(unsafe { ffi::sqlite3_column_int64(statement, i) })
                }
                ffi::SQLITE_FLOAT => {
                    AnyValueKind::Double(unsafe { ffi::sqlite3_column_double(statement, i) })
                }
                ffi::SQLITE_TEXT => {
                    let text = unsafe { ffi::sqlite3_column_text(statement, i) };
                    let len = unsafe { ffi::sqlite3_column_bytes(statement, i) } as usize;
                    let bytes = if text.is_null() {
                        &[][..]
                    } else {
                        unsafe { std::slice::from_raw_parts(text, len) }
                    };
                    AnyValueKind::Text(Cow::Owned(String::from_utf8_lossy(bytes).into_owned()))
                }
                ffi::SQLITE_BLOB => {
                    let blob = unsafe { ffi::sqlite3_column_blob(statement, i) };
                    let len = unsafe { ffi::sqlite3_column_bytes(statement, i) } as usize;
                    let bytes = if blob.is_null() {
                        Vec::new()
                    } else {
                        unsafe { std::slice::from_raw_parts(blob.cast::<u8>(), len) }.to_vec()
                    };
                    AnyValueKind::Blob(Cow::Owned(bytes))
                }
                _ => AnyValueKind::Null(AnyTypeInfoKind::Null),
            };
            row.columns.push(AnyColumn {
                ordinal: i as usize,
                name: name.clone(),
                type_info: AnyTypeInfo {
                    kind: kind_of(&kind),
                },
            });
            row.values.push(AnyValue { kind });
        }
        row
    }
}

fn kind_of(value: &AnyValueKind<'_>) -> AnyTypeInfoKind {
    match value {
        AnyValueKind::BigInt(_) => AnyTypeInfoKind::BigInt,
        AnyValueKind::Double(_) => AnyTypeInfoKind::Double,
        AnyValueKind::Text(_) => AnyTypeInfoKind::Text,
        AnyValueKind::Blob(_) => AnyTypeInfoKind::Blob,
        _ => AnyTypeInfoKind::Null,
    }
}

fn bind(
    db: NonNull<ffi::sqlite3>,
    statement: *mut ffi::sqlite3_stmt,
    position: c_int,
    value: &AnyValueKind<'_>,
) -> Result<(), sqlx::Error> {
    // SAFETY: a valid statement and position; text and blobs are copied by SQLite (TRANSIENT).
    let code = unsafe {
        match value {
            AnyValueKind::Null(_) => ffi::sqlite3_bind_null(statement, position),
            AnyValueKind::Bool(b) => ffi::sqlite3_bind_int64(statement, position, i64::from(*b)),
            AnyValueKind::SmallInt(i) => {
                ffi::sqlite3_bind_int64(statement, position, i64::from(*i))
            }
            AnyValueKind::Integer(i) => ffi::sqlite3_bind_int64(statement, position, i64::from(*i)),
            AnyValueKind::BigInt(i) => ffi::sqlite3_bind_int64(statement, position, *i),
            AnyValueKind::Real(f) => ffi::sqlite3_bind_double(statement, position, f64::from(*f)),
            AnyValueKind::Double(f) => ffi::sqlite3_bind_double(statement, position, *f),
            AnyValueKind::Text(t) => ffi::sqlite3_bind_text64(
                statement,
                position,
                t.as_ptr().cast(),
                t.len() as u64,
                ffi::SQLITE_TRANSIENT(),
                ffi::SQLITE_UTF8 as u8,
            ),
            AnyValueKind::Blob(b) => ffi::sqlite3_bind_blob64(
                statement,
                position,
                b.as_ptr().cast(),
                b.len() as u64,
                ffi::SQLITE_TRANSIENT(),
            ),
            other => {
                return Err(sqlx::Error::Protocol(format!(
                    "cannot bind {other:?} to a SQLite statement"
                )))
            }
        }
    };
    if code == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(error(db, code))
    }
}

/// The connection's last error, as sqlx's SQLite driver reports it (the extended result code
/// as the error code, SQLite's message).
fn error(db: NonNull<ffi::sqlite3>, code: c_int) -> sqlx::Error {
    // SAFETY: a valid handle; the message is copied at once.
    let (extended, message) = unsafe {
        let extended = ffi::sqlite3_extended_errcode(db.as_ptr());
        let message = ffi::sqlite3_errmsg(db.as_ptr());
        let message = if message.is_null() {
            format!("SQLite error {code}")
        } else {
            CStr::from_ptr(message).to_string_lossy().into_owned()
        };
        (extended, message)
    };
    sqlx::Error::Database(Box::new(SqliteWriteError {
        code: extended,
        message,
    }))
}

#[derive(Debug)]
pub struct SqliteWriteError {
    code: c_int,
    message: String,
}

impl fmt::Display for SqliteWriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqliteWriteError {}

impl DatabaseError for SqliteWriteError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}
