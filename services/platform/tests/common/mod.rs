//! What the platform's database tests share.

use roombook_platform::{
    db::{Db, Migrations},
    testkit::{TestBackend, TestDatabases},
};

/// A fresh database on `backend` with the platform's tables and the tests' own; the returned
/// `TestDatabases` keeps it alive.
pub async fn database(backend: TestBackend, name: &str) -> (TestDatabases, Db) {
    let dbs = TestDatabases::new(backend);
    let db = Db::connect(
        &dbs.create(name).await,
        Migrations {
            sqlite: sqlx::migrate!("tests/migrations"),
            postgres: sqlx::migrate!("tests/migrations"),
        },
    )
    .await
    .unwrap();
    (dbs, db)
}
