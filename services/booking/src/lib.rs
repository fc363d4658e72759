//! The booking service: rooms and bookings, and the one place that decides whether a slot is
//! free. Creating or cancelling a booking writes the booking and its event in one transaction;
//! the orchestrator's `ConfirmBooking` / `CancelBooking` commands arrive over JetStream.

pub mod api;
pub mod bookings;
pub mod commands;
pub mod domain;
pub mod store;

use std::{future::Future, sync::Arc};

use platform::{
    config::{env_or, ServiceConfig},
    db::Migrations,
    runtime::{RunningService, Runtime},
    topology::ConsumerSpec,
};
use tokio_util::sync::CancellationToken;

use crate::domain::Room;

pub const DEFAULT_PORT: u16 = 8081;

#[derive(Debug, Clone)]
pub struct Config {
    pub service: ServiceConfig,
    /// Create a few sample rooms when the database has none (`SAMPLE_ROOMS`, default true).
    pub sample_rooms: bool,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Config {
            service: ServiceConfig::from_env("booking", DEFAULT_PORT)?,
            sample_rooms: env_or("SAMPLE_ROOMS", "true") == "true",
        })
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
    let rt = Runtime::start("booking", &config.service, migrations(), cancel).await?;
    if config.sample_rooms {
        seed_sample_rooms(&rt).await?;
    }
    rt.spawn_consumer(
        ConsumerSpec::booking_commands(),
        Arc::new(commands::BookingCommands),
    );
    let routes = api::routes(api::AppState {
        db: rt.db.clone(),
        outbox: rt.outbox.clone(),
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

async fn seed_sample_rooms(rt: &Runtime) -> anyhow::Result<()> {
    let mut tx = rt.db.begin().await?;
    if store::count_rooms(&mut tx).await? == 0 {
        for (id, name, capacity) in [
            (101, "Everest", 8),
            (102, "Kilimanjaro", 4),
            (103, "Matterhorn", 12),
            (201, "Fuji", 20),
        ] {
            store::insert_room_if_absent(
                &mut tx,
                &Room {
                    id,
                    name: name.into(),
                    capacity,
                },
            )
            .await?;
        }
        tracing::info!("created sample rooms 101, 102, 103, 201");
    }
    tx.commit().await?;
    Ok(())
}
