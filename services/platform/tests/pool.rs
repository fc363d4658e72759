//! The pool's connections to PostgreSQL are not checked with a round trip before each use
//! (that would add one to every transaction); a connection left idle for a while is, so that
//! one the server closed meanwhile is replaced instead of failing the next request.

use std::time::Duration;

use roombook_platform::{
    db::{Db, Migrations, POSTGRES_CHECK_IDLE_AFTER},
    testkit::{TestBackend, TestDatabases},
};
use sqlx::{Connection as _, PgConnection};

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_replaced_before_use_on_postgres() {
    let dbs = TestDatabases::new(TestBackend::Postgres);
    let url = dbs.create("pool").await;
    let migrations = Migrations {
        sqlite: sqlx::migrate!("tests/migrations"),
        postgres: sqlx::migrate!("tests/migrations"),
    };
    let db = Db::connect(&url, migrations).await.unwrap();
    let pid_before: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&db.pool)
        .await
        .unwrap();

    // From outside the pool: end every other session on the service's database, and wait
    // until the server has let them go.
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!ended.is_empty() && ended.iter().all(|e| *e), "{ended:?}");
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
        tokio::task::yield_now().await;
    }

    // The check is by idle time: the pool's connections must have sat unused beyond it.
    tokio::time::sleep(POSTGRES_CHECK_IDLE_AFTER + Duration::from_millis(200)).await;

    let pid_after: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&db.pool)
        .await
        .expect("the closed connection is replaced, not handed out");
    assert_ne!(pid_after, pid_before);
}
