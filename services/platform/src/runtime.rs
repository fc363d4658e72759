//! The skeleton every service with a database and a bus is built on: connect and migrate the
//! database, connect to NATS and declare the streams, relay the outbox, run consumers, serve HTTP
//! with health probes, and on shutdown stop taking work, finish what is in hand, and close.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream;
use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::ServiceConfig,
    consumer::{self, Handler},
    db::{Db, Migrations},
    http::{self, Readiness},
    outbox::{self, OutboxSignal},
    retention,
    topology::{self, ConsumerSpec},
};

pub struct Runtime {
    pub name: &'static str,
    pub db: Db,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub outbox: OutboxSignal,
    /// Cancelled when the service stops; background tasks watch it.
    pub cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Runtime {
    /// Connects everything and starts the outbox relay and the hourly pruning.
    pub async fn start(
        name: &'static str,
        config: &ServiceConfig,
        migrations: Migrations,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        // Install the metrics recorder before anything is counted.
        crate::metrics::handle();
        let db = connect_db(name, &config.database_url, migrations).await?;
        let nats = connect_nats(name, &config.nats_url).await?;
        let js = jetstream::new(nats.clone());
        topology::ensure_streams(&js, config.stream_replicas).await?;
        let runtime = Runtime {
            name,
            db,
            nats,
            js,
            outbox: OutboxSignal::default(),
            cancel,
            tasks: TaskTracker::new(),
        };
        runtime.tasks.spawn(outbox::relay(
            name,
            runtime.db.clone(),
            runtime.js.clone(),
            runtime.outbox.clone(),
            runtime.cancel.clone(),
        ));
        runtime.tasks.spawn(retention::prune_regularly(
            runtime.db.clone(),
            runtime.cancel.clone(),
        ));
        Ok(runtime)
    }

    /// Runs a durable consumer in the background until the service stops.
    pub fn spawn_consumer<H: Handler>(&self, spec: ConsumerSpec, handler: Arc<H>) {
        self.tasks.spawn(consumer::run(
            self.db.clone(),
            self.js.clone(),
            self.outbox.clone(),
            spec,
            handler,
            self.cancel.clone(),
        ));
    }

    /// Runs another background task until the service stops.
    pub fn spawn_task<F: Future<Output = ()> + Send + 'static>(&self, task: F) {
        self.tasks.spawn(task);
    }

    /// Serves `routes` plus the health probes on `addr`; the returned handle stops everything.
    pub async fn serve(self, addr: SocketAddr, routes: Router) -> anyhow::Result<RunningService> {
        let readiness = RuntimeReadiness {
            db: self.db.clone(),
            nats: self.nats.clone(),
        };
        let router =
            http::with_common_layers(routes.merge(http::health_routes(readiness)), self.name);
        let (listener, addr) = http::bind(addr).await?;
        tracing::info!(service = self.name, %addr, "listening");
        let cancel = self.cancel.clone();
        let handle = tokio::spawn(async move {
            let served = http::serve(listener, router, self.cancel.clone()).await;
            // Whatever ended the server, stop the background work and let it finish its message.
            self.cancel.cancel();
            self.tasks.close();
            self.tasks.wait().await;
            let _ = self.nats.flush().await;
            self.db.pool.close().await;
            tracing::info!(service = self.name, "stopped");
            served
        });
        Ok(RunningService {
            addr,
            cancel,
            handle,
        })
    }
}

#[derive(Clone)]
struct RuntimeReadiness {
    db: Db,
    nats: async_nats::Client,
}

impl Readiness for RuntimeReadiness {
    async fn checks(&self) -> Vec<(&'static str, bool)> {
        let nats = matches!(
            self.nats.connection_state(),
            async_nats::connection::State::Connected
        );
        vec![("database", self.db.ping().await), ("nats", nats)]
    }
}

/// Connects to the database, retrying for a while so services may start before it is up
/// (as they do in a cluster starting cold), then migrates it.
async fn connect_db(name: &str, url: &str, migrations: Migrations) -> anyhow::Result<Db> {
    let mut attempt = 0u32;
    let db = loop {
        match Db::open(url).await {
            Ok(db) => break db,
            Err(e) if attempt < 30 && is_unreachable(&e) => {
                attempt += 1;
                tracing::warn!(service = name, error = %format!("{e:#}"), attempt, "waiting for the database");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.context(format!("{name}: database"))),
        }
    };
    db.migrate(migrations)
        .await
        .with_context(|| format!("{name}: migrating the database"))?;
    Ok(db)
}

/// True when the database could not be reached at all (as opposed to refusing what we asked).
fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut)
        )
    })
}

/// Connects to NATS, retrying for a while so services may start before the server does; once
/// connected the client reconnects on its own forever.
pub async fn connect_nats(name: &str, url: &str) -> anyhow::Result<async_nats::Client> {
    let mut attempt = 0u32;
    loop {
        match async_nats::ConnectOptions::new()
            .name(name)
            .connect(url)
            .await
        {
            Ok(client) => return Ok(client),
            Err(e) if attempt < 30 => {
                attempt += 1;
                tracing::warn!(%url, error = %e, attempt, "waiting for NATS");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to NATS at {url}")),
        }
    }
}

/// A started service: its address, and the means to stop it and wait for it.
pub struct RunningService {
    pub addr: SocketAddr,
    cancel: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningService {
    pub fn new(
        addr: SocketAddr,
        cancel: CancellationToken,
        handle: JoinHandle<anyhow::Result<()>>,
    ) -> Self {
        RunningService {
            addr,
            cancel,
            handle,
        }
    }

    /// Asks the service to stop (it finishes the work in hand).
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Waits until the service has stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.handle.await.context("service task panicked")?
    }

    /// Runs until `shutdown` completes (or the service fails), then stops cleanly.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let RunningService {
            cancel, mut handle, ..
        } = self;
        tokio::select! {
            () = shutdown => {
                cancel.cancel();
                handle.await.context("service task panicked")?
            }
            result = &mut handle => result.context("service task panicked")?,
        }
    }
}
