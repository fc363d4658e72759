//! The pool's connections to PostgreSQL are not checked with a round trip before each use
//! (that would add one to every transaction); a connection left idle for a while is, so that
//! one the server closed meanwhile is replaced instead of failing the next request.

use std::time::Duration;

use roombook_platform::{
    db::Db,
    testkit::{TestBackend, TestDatabases},
};
use sqlx::{Connection as _, PgConnection};

/// A pool on a fresh database whose one connection the server has since closed, with the
/// pid that connection had.
async fn pool_whose_connection_the_server_closed(
    dbs: &TestDatabases,
    check_idle_after: Duration,
) -> (Db, i32) {
    let url = dbs.create("pool").await;
    let db = Db::open_checking_idle_after(&url, check_idle_after)
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&db.pool)
        .await
        .unwrap();

    // From outside the pool: end every other session on the database, and wait until the
    // server has let them go.
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!ended.is_empty() && ended.iter().all(|e| *e), "{ended:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions still open"
        );
        tokio::task::yield_now().await;
    }
    (db, pid)
}

#[tokio::test]
async fn a_connection_idle_beyond_the_limit_is_checked_and_replaced_on_postgres() {
    let dbs = TestDatabases::new(TestBackend::Postgres);
    // Every connection the server closed has been idle beyond a limit of zero.
    let (db, pid_before) = pool_whose_connection_the_server_closed(&dbs, Duration::ZERO).await;
    let pid_after: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&db.pool)
        .await
        .expect("the closed connection is replaced, not handed out");
    assert_ne!(pid_after, pid_before);
}

/// The price of not checking every time: a connection in steady use that the server closed
/// fails the one request that gets it (which the services answer as retryable), and is
/// replaced for the next.
#[tokio::test]
async fn a_connection_in_steady_use_is_not_checked_on_postgres() {
    let dbs = TestDatabases::new(TestBackend::Postgres);
    let (db, pid_before) =
        pool_whose_connection_the_server_closed(&dbs, Duration::from_secs(3600)).await;
    let first = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
        .fetch_one(&db.pool)
        .await;
    assert!(first.is_err(), "handed out unchecked: {first:?}");
    let pid_after: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&db.pool)
        .await
        .expect("a new connection after the failed one");
    assert_ne!(pid_after, pid_before);
}
