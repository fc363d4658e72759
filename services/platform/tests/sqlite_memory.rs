//! Once a service has opened its SQLite database, SQLite allocates from mimalloc and keeps no
//! memory statistics (no process-wide lock per allocation). Its own test binary: SQLite takes
//! the setting only before its first use in a process.
#![allow(unsafe_code)]

use libmimalloc_sys as mi;
use libsqlite3_sys as ffi;
use roombook_platform::{db::Db, sqlite_memory};

#[tokio::test]
async fn sqlite_allocates_from_mimalloc_and_keeps_no_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/memory.db", dir.path().display());
    let db = Db::open(&url).await.unwrap();
    // SQLite at work: a table, rows and a read, through the pool and the write connection.
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    for i in 0..100 {
        sqlx::query("INSERT INTO t (id, body) VALUES ($1, $2)")
            .bind(i)
            .bind("x".repeat(200))
            .execute(&mut tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 100);

    assert_eq!(
        sqlite_memory::use_process_allocator(),
        sqlite_memory::Outcome::Applied
    );
    // SAFETY: SQLite's and mimalloc's documented calls on a block SQLite handed out.
    unsafe {
        let block = ffi::sqlite3_malloc(100);
        assert!(!block.is_null());
        assert!(
            mi::mi_is_in_heap_region(block),
            "SQLite's block is not from mimalloc"
        );
        assert!(ffi::sqlite3_msize(block) >= 100);
        ffi::sqlite3_free(block);
        // With statistics kept, a database open with its cache filled counts hundreds of KiB.
        assert_eq!(ffi::sqlite3_memory_used(), 0);
    }
}
