//! The confirm service: approval requests. The orchestrator opens one per booking
//! (`RequestConfirm`) and closes it when the booking is cancelled (`DeleteConfirm`); an admin
//! approves or denies it through `PATCH /confirms/{id}`.

pub mod api;
pub mod commands;
pub mod confirms;

use std::{future::Future, sync::Arc};

use platform::{
    clock::Clock,
    config::ServiceConfig,
    db::Migrations,
    runtime::{RunningService, Runtime},
    topology::ConsumerSpec,
};
use tokio_util::sync::CancellationToken;

pub const DEFAULT_PORT: u16 = 8082;

#[derive(Debug, Clone)]
pub struct Config {
    pub service: ServiceConfig,
    /// Decides whether a decision came before the approval deadline.
    pub clock: Arc<dyn Clock>,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Config {
            service: ServiceConfig::from_env("confirm", DEFAULT_PORT)?,
            clock: platform::clock::system(),
        })
    }

    /// Settings for a test: the given service settings and the system clock.
    pub fn new(service: ServiceConfig) -> Self {
        Config {
            service,
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

/// Starts the service; it runs until `cancel` fires.
pub async fn spawn(config: Config, cancel: CancellationToken) -> anyhow::Result<RunningService> {
    let rt = Runtime::start("confirm", &config.service, migrations(), cancel).await?;
    rt.spawn_consumer(
        ConsumerSpec::confirm_commands(),
        Arc::new(commands::ConfirmCommands),
    );
    let routes = api::routes(api::AppState {
        db: rt.db.clone(),
        outbox: rt.outbox.clone(),
        clock: config.clock.clone(),
    });
    rt.serve(config.service.http_addr, routes).await
}

/// The OpenAPI description of this service's routes (served by the gateway).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::openapi()
}

/// Runs the service until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    spawn(config, CancellationToken::new())
        .await?
        .run_until(shutdown)
        .await
}
