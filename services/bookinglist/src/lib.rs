//! The booking list: the CQRS read model of booking, approval and saga status, one row per
//! booking, for users (their own rows) and admins (all rows).
//!
//! Its durable consumers follow every event, the participants' on `ROOMBOOK_EVENTS` and the
//! saga's on `ROOMBOOK_SAGA_EVENTS`, and fold each into its booking's row ([`projection`], a
//! pure function that tolerates any order and any number of repeats). Around it: the list API with filters, sorting and paging ([`api`], [`query`]),
//! a live feed of row changes over Server-Sent Events ([`feed`]), a rebuild from the streams'
//! start into a shadow table that is swapped in when complete ([`rebuild`]), and the projection's
//! lag behind the streams ([`lag`]).

pub mod api;
pub mod feed;
pub mod handler;
pub mod lag;
pub mod projection;
pub mod query;
pub mod rebuild;
pub mod store;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use platform::{
    config::{env_or, ServiceConfig},
    db::Migrations,
    runtime::{RunningService, Runtime},
    topology::ConsumerSpec,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_PORT: u16 = 8085;

/// Settings: the shared ones (`HTTP_ADDR`, `NATS_URL`, `DATABASE_URL`, ...) plus:
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `FEED_POLL_MS` | `250` | how often the live feed looks for rows other replicas changed (its own changes are sent as soon as they commit) |
/// | `REBUILD_BATCH_SIZE` | `256` | events a rebuild folds per transaction |
#[derive(Debug, Clone)]
pub struct Config {
    pub service: ServiceConfig,
    /// How often the live feed reads changed rows it was not told about (those written by
    /// another replica): their latency, against one small query per interval per replica.
    pub feed_poll: Duration,
    /// Events per rebuild transaction. Larger is faster; each batch holds the lock that live
    /// writes wait on.
    pub rebuild_batch: usize,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let feed_poll_ms: u64 = env_or("FEED_POLL_MS", "250")
            .parse()
            .context("FEED_POLL_MS must be a number of milliseconds")?;
        let rebuild_batch: usize = env_or("REBUILD_BATCH_SIZE", "256")
            .parse()
            .context("REBUILD_BATCH_SIZE must be a number")?;
        anyhow::ensure!(feed_poll_ms > 0, "FEED_POLL_MS must be above 0");
        anyhow::ensure!(rebuild_batch > 0, "REBUILD_BATCH_SIZE must be above 0");
        Ok(Config {
            service: ServiceConfig::from_env("bookinglist", DEFAULT_PORT)?,
            feed_poll: Duration::from_millis(feed_poll_ms),
            rebuild_batch,
        })
    }

    /// The defaults around the given shared settings (for tests).
    pub fn with_service(service: ServiceConfig) -> Self {
        Config {
            service,
            feed_poll: Duration::from_millis(250),
            rebuild_batch: 256,
        }
    }
}

pub fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

/// Starts the service; it runs until `cancel` fires.
pub async fn spawn(config: Config, cancel: CancellationToken) -> anyhow::Result<RunningService> {
    let rt = Runtime::start("bookinglist", &config.service, migrations(), cancel).await?;
    for spec in ConsumerSpec::bookinglist_all() {
        rt.spawn_consumer(spec, Arc::new(handler::Projector));
    }
    let (feed, poller) = feed::Feed::start(
        rt.db.clone(),
        config.feed_poll,
        rt.outbox.commits(),
        rt.cancel.clone(),
    )
    .await
    .context("starting the live feed")?;
    rt.spawn_task(poller);
    rt.spawn_task(lag::report(rt.js.clone(), rt.cancel.clone()));
    let (rebuilds, requests) = mpsc::channel(4);
    rt.spawn_task(rebuild::worker(
        rt.db.clone(),
        rt.js.clone(),
        requests,
        config.rebuild_batch,
        rt.cancel.clone(),
    ));
    let routes = api::routes(api::AppState {
        db: rt.db.clone(),
        js: rt.js.clone(),
        feed,
        rebuilds,
        cancel: rt.cancel.clone(),
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
