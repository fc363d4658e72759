//! The notification service against real infrastructure: nats-server, SQLite, and an SMTP
//! server (aiosmtpd) receiving over TCP. Needs `pip install aiosmtpd`, and for the PostgreSQL
//! variants `ROOMBOOK_TEST_POSTGRES_URL` (scripts/test sets it).

mod api;
mod faults;
mod flows;
mod helpers;

/// Generates a SQLite and a PostgreSQL test for each scenario of a module.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(platform::testkit::TestBackend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(platform::testkit::TestBackend::Postgres).await;
                }
            )*
        }
    };
}
