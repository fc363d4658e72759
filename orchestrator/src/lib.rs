//! The saga orchestrator. It follows the participants' events (booking, confirm), runs each
//! booking's saga through the pure state machine in [`saga`], and sends the resulting commands
//! through its outbox. It owns no booking data, only the sagas.

pub mod api;
pub mod handler;
pub mod saga;
pub mod store;
pub mod timers;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use platform::{
    clock::Clock,
    config::{env_or, ServiceConfig},
    db::Migrations,
    runtime::{RunningService, Runtime},
    topology::ConsumerSpec,
};
use tokio_util::sync::CancellationToken;

pub const DEFAULT_PORT: u16 = 8083;

#[derive(Debug, Clone)]
pub struct Config {
    pub service: ServiceConfig,
    /// How long an admin has to decide (`APPROVAL_TIMEOUT_SECS`, default 24 h).
    pub policy: saga::Policy,
    /// How often the timers look for due deadlines and retries (`TIMER_INTERVAL_MS`, 1000).
    pub timer_interval: Duration,
    pub clock: Arc<dyn Clock>,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let timeout: i64 = env_or("APPROVAL_TIMEOUT_SECS", "86400")
            .parse()
            .context("APPROVAL_TIMEOUT_SECS must be a number of seconds")?;
        let interval: u64 = env_or("TIMER_INTERVAL_MS", "1000")
            .parse()
            .context("TIMER_INTERVAL_MS must be a number of milliseconds")?;
        let retry_after: i64 = env_or("COMMAND_RETRY_SECS", "30")
            .parse()
            .context("COMMAND_RETRY_SECS must be a number of seconds")?;
        let max_attempts: u32 = env_or("COMMAND_MAX_ATTEMPTS", "6")
            .parse()
            .context("COMMAND_MAX_ATTEMPTS must be a number")?;
        anyhow::ensure!(timeout > 0, "APPROVAL_TIMEOUT_SECS must be positive");
        anyhow::ensure!(
            retry_after > 0 && max_attempts > 0,
            "retries need positive settings"
        );
        Ok(Config {
            service: ServiceConfig::from_env("orchestrator", DEFAULT_PORT)?,
            policy: saga::Policy {
                approval_timeout: chrono::Duration::seconds(timeout),
                retry_after: chrono::Duration::seconds(retry_after),
                max_attempts,
            },
            timer_interval: Duration::from_millis(interval.max(10)),
            clock: platform::clock::system(),
        })
    }

    /// Default settings around the given service settings (tests adjust the rest).
    pub fn new(service: ServiceConfig) -> Self {
        Config {
            service,
            policy: saga::Policy::default(),
            timer_interval: Duration::from_secs(1),
            clock: platform::clock::system(),
        }
    }
}

fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

/// Starts the orchestrator; it runs until `cancel` fires.
pub async fn spawn(config: Config, cancel: CancellationToken) -> anyhow::Result<RunningService> {
    let rt = Runtime::start("orchestrator", &config.service, migrations(), cancel).await?;
    rt.spawn_consumer(
        ConsumerSpec::orchestrator(),
        Arc::new(handler::SagaHandler {
            policy: config.policy,
            clock: config.clock.clone(),
        }),
    );
    rt.spawn_task(timers::run(
        rt.db.clone(),
        rt.outbox.clone(),
        config.clock.clone(),
        config.policy,
        config.timer_interval,
        rt.cancel.clone(),
    ));
    let routes = api::routes(api::AppState {
        db: rt.db.clone(),
        outbox: rt.outbox.clone(),
        clock: config.clock.clone(),
        policy: config.policy,
    });
    rt.serve(config.service.http_addr, routes).await
}

/// The OpenAPI description of this service's routes (served by the gateway).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::openapi()
}

/// Runs the orchestrator until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    spawn(config, CancellationToken::new())
        .await?
        .run_until(shutdown)
        .await
}
