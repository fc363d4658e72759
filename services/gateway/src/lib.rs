//! The single public HTTP entry of Roombook. It verifies the caller's bearer token, applies the
//! coarse role rules (admin-only routes), and forwards the call to the service that owns the
//! path with the verified identity in headers; the services apply ownership rules themselves.
//!
//! Around the routes, outermost first: CORS, gzip, the common layers (request id generated or
//! kept and returned, trace span, 30 s request timeout, metrics), and, for the API and its
//! documentation but not the probes, a global concurrency limit that sheds excess calls. Each
//! upstream call has its own timeout and goes through that service's circuit breaker.

pub mod auth;
pub mod breaker;
pub mod cli;
mod compat;
pub mod config;
pub mod docs;
pub mod jwks;
pub mod layers;
pub mod proxy;
pub mod web;

use std::{future::Future, time::Duration};

use anyhow::Context as _;
use platform::{
    http::{self, Readiness},
    runtime::RunningService,
};
use reqwest::Url;
use tokio_util::sync::CancellationToken;

pub use auth::{mint_token, AuthError, Verifier};
pub use config::{BreakerConfig, Config, CorsOrigins, JwksConfig, JwtConfig, Service};

/// Starts the gateway on `config.http_addr`; it runs until `cancel` fires.
pub async fn spawn(config: Config, cancel: CancellationToken) -> anyhow::Result<RunningService> {
    let client = reqwest::Client::builder()
        // Upstreams are reached directly, not through whatever proxy the environment names.
        .no_proxy()
        // A redirect is the client's business.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let readiness = UpstreamsReady {
        client: client.clone(),
        upstreams: config
            .upstreams
            .iter()
            .map(|(s, u)| (*s, u.clone()))
            .collect(),
        timeout: config.upstream_timeout.min(Duration::from_secs(2)),
    };
    let mut verifier = Verifier::new(&config.jwt);
    if let Some(jwks) = &config.jwt.jwks {
        tracing::info!(url = %jwks.url, "RS256/ES256 tokens are checked with the JWK set");
        verifier = verifier
            .with_jwks(jwks::JwksStore::start(jwks.clone(), client.clone(), cancel.clone()).await);
    }
    let api = layers::shed_load(
        proxy::routes(&config, client, verifier).merge(docs::routes()),
        config.max_concurrent_requests,
    );
    let web = web::routes(
        config.web_dir.as_ref(),
        config.dev_tokens.then_some(&config.jwt),
    );
    let mut router = http::with_common_layers(
        api.merge(http::health_routes(readiness)).merge(web),
        "gateway",
    )
    .layer(layers::compression());
    if let Some(cors) = layers::cors(&config.cors) {
        router = router.layer(cors);
    }
    let (listener, addr) = http::bind(config.http_addr).await?;
    for service in Service::ALL {
        match config.upstreams.get(&service) {
            Some(url) => tracing::info!(service = service.name(), %url, "upstream"),
            None => tracing::info!(service = service.name(), "upstream not deployed"),
        }
    }
    tracing::info!(%addr, "gateway listening");
    let handle = tokio::spawn(http::serve(listener, router, cancel.clone()));
    Ok(RunningService::new(addr, cancel, handle))
}

/// Runs the gateway until `shutdown` completes, then lets requests in flight finish.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    spawn(config, CancellationToken::new())
        .await?
        .run_until(shutdown)
        .await
}

/// Ready when every deployed upstream answers its `/healthz`.
#[derive(Clone)]
struct UpstreamsReady {
    client: reqwest::Client,
    upstreams: Vec<(Service, Url)>,
    timeout: Duration,
}

impl Readiness for UpstreamsReady {
    async fn checks(&self) -> Vec<(&'static str, bool)> {
        let checks = self.upstreams.iter().map(|(service, base)| async move {
            let url = format!("{}/healthz", base.as_str().trim_end_matches('/'));
            let ok = self
                .client
                .get(url)
                .timeout(self.timeout)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            (service.name(), ok)
        });
        futures::future::join_all(checks).await
    }

    /// Upstreams are reported, not required: one service being down must not take the gateway
    /// (and every other route) out of service; its own routes answer 503 instead.
    fn required(&self, _check: &str) -> bool {
        false
    }
}
