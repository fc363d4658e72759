//! Real infrastructure for tests: a `nats-server` with JetStream on a free port and a private
//! store directory, and throwaway databases (a SQLite file, or a fresh PostgreSQL database on the
//! cluster named by `ROOMBOOK_TEST_POSTGRES_URL`).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

/// A nats-server child process, killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
}

impl NatsServer {
    /// Starts `nats-server -js` (from `NATS_SERVER_BIN` or `PATH`) on a free port.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = NatsServer {
            child: None,
            dir,
            port: 0,
        };
        server.spawn(None);
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts it again on the same port and store (a broker restart).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(Some(self.port));
    }

    fn spawn(&mut self, port: Option<u16>) {
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(port.map_or("-1".to_string(), |p| p.to_string()))
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{bin}` ({e}): install nats-server or set NATS_SERVER_BIN")
            });
        self.child = Some(child);
        self.port = wait_for_port(&ports_dir);
        wait_for_tcp(self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for_port(dir: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(port) = std::fs::read_dir(dir)
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .filter_map(|v| v["nats"][0].as_str().map(str::to_string))
            .filter_map(|url| url.rsplit(':').next().and_then(|p| p.parse().ok()))
            .next()
        {
            return port;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nats-server did not report its port within 20 s");
}

fn wait_for_tcp(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server not accepting connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    Postgres,
}

/// A place for throwaway databases, one per service per test.
pub struct TestDatabases {
    backend: TestBackend,
    dir: TempDir,
}

impl TestDatabases {
    pub fn new(backend: TestBackend) -> Self {
        TestDatabases {
            backend,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A URL for a new, empty database named after `service`.
    pub async fn create(&self, service: &str) -> String {
        match self.backend {
            TestBackend::Sqlite => format!("sqlite://{}/{service}.db", self.dir.path().display()),
            TestBackend::Postgres => create_postgres_database(service).await,
        }
    }
}

/// Creates a uniquely named database on the test cluster and returns its URL.
pub async fn create_postgres_database(service: &str) -> String {
    use sqlx::Connection as _;
    let admin = std::env::var("ROOMBOOK_TEST_POSTGRES_URL").expect(
        "ROOMBOOK_TEST_POSTGRES_URL is not set: run the suite with scripts/test, which starts a \
         throwaway PostgreSQL cluster",
    );
    let name = format!("{service}_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL cluster");
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (admin.as_str(), String::new()),
    };
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    format!("{base}/{name}{query}")
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// SQLite's plan for `sql` (the `detail` of each `EXPLAIN QUERY PLAN` step), with `binds` as its
/// integer parameters: for tests that pin which index a query uses.
pub async fn query_plan(db: &crate::db::Db, sql: &str, binds: &[i64]) -> Vec<String> {
    use sqlx::Row as _;
    let explain = format!("EXPLAIN QUERY PLAN {sql}");
    let mut query = sqlx::query(&explain);
    for value in binds {
        query = query.bind(*value);
    }
    query
        .fetch_all(&db.pool)
        .await
        .expect("the query plan")
        .iter()
        .map(|r| r.get::<String, _>(3))
        .collect()
}

/// [`query_plan`] on a new, empty SQLite database with `migrations` applied, with 0 bound to each
/// of the statement's `$n` parameters.
pub async fn plan_on_empty_sqlite(migrations: crate::db::Migrations, sql: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/plan.db", dir.path().display());
    let db = crate::db::Db::connect(&url, migrations)
        .await
        .expect("a SQLite database");
    let params = (1..).take_while(|n| sql.contains(&format!("${n}"))).count();
    query_plan(&db, sql, &vec![0; params]).await
}

/// PostgreSQL's generic plan for `sql` (the plan a statement prepared by sqlx settles on after
/// a few runs, made without its parameters' values), with `args` (SQL literals) as the values
/// to explain it with: one line of `EXPLAIN` each. For tests that pin which index a query uses
/// on a table that holds rows and has been analysed.
pub async fn generic_plan_on_postgres(db: &crate::db::Db, sql: &str, args: &[&str]) -> Vec<String> {
    use sqlx::Row as _;
    let mut conn = db.pool.acquire().await.expect("a PostgreSQL connection");
    for statement in [
        "SET plan_cache_mode = force_generic_plan".to_string(),
        format!("PREPARE plan_probe AS {sql}"),
    ] {
        sqlx::query(&statement)
            .execute(&mut *conn)
            .await
            .expect("preparing the statement");
    }
    let plan = sqlx::query(&format!("EXPLAIN EXECUTE plan_probe({})", args.join(", ")))
        .fetch_all(&mut *conn)
        .await
        .expect("the query plan")
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
    for statement in ["DEALLOCATE plan_probe", "RESET plan_cache_mode"] {
        sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .expect("cleaning up");
    }
    plan
}

/// Waits until a session of the PostgreSQL database behind `pool` waits on a lock: for tests
/// that start a second writer and must know it has met the first one's lock before that one
/// commits.
pub async fn until_a_session_waits_on_a_lock(pool: &sqlx::AnyPool) {
    eventually(
        "a session to wait on a lock",
        Duration::from_secs(10),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(pool)
            .await
            .expect("reading pg_stat_activity");
            (waiting > 0).then_some(())
        },
    )
    .await;
}

/// The types of the events a service has put in its outbox about `booking`, oldest first.
pub async fn outbox_event_types(pool: &sqlx::AnyPool, booking: uuid::Uuid) -> Vec<String> {
    let subjects: Vec<String> =
        sqlx::query_scalar("SELECT subject FROM outbox WHERE booking_id = $1 ORDER BY id")
            .bind(booking.to_string())
            .fetch_all(pool)
            .await
            .expect("reading the outbox");
    // Subjects end in the event's type (see `topology::subject_for`).
    subjects
        .iter()
        .map(|s| s.rsplit('.').next().unwrap_or_default().to_string())
        .collect()
}

/// Whether a Prometheus text exposition has a line of the metric `name` carrying every one of
/// `labels` (each written as `key="value"`).
pub fn has_series(metrics: &str, name: &str, labels: &[&str]) -> bool {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .any(|l| labels.iter().all(|label| l.contains(label)))
}
