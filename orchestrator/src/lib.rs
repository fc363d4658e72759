//! The saga orchestrator. It follows the participants' events (booking, confirm), runs each
//! booking's saga through the pure state machine in [`saga`], and sends the resulting commands
//! through its outbox. It owns no booking data, only the sagas.

pub mod api;
pub mod handler;
pub mod saga;
pub mod store;

use std::{future::Future, sync::Arc};

use platform::{
    config::ServiceConfig,
    db::Migrations,
    runtime::{RunningService, Runtime},
    topology::ConsumerSpec,
};
use tokio_util::sync::CancellationToken;

pub const DEFAULT_PORT: u16 = 8083;

#[derive(Debug, Clone)]
pub struct Config {
    pub service: ServiceConfig,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Config {
            service: ServiceConfig::from_env("orchestrator", DEFAULT_PORT)?,
        })
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
    rt.spawn_consumer(ConsumerSpec::orchestrator(), Arc::new(handler::SagaHandler));
    let routes = api::routes(api::AppState { db: rt.db.clone() });
    rt.serve(config.service.http_addr, routes).await
}

/// Runs the orchestrator until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    spawn(config, CancellationToken::new())
        .await?
        .run_until(shutdown)
        .await
}
