//! The gateway's settings, read from the environment. The services behind it form a table
//! ([`Service`]) so that adding one is a new variant plus its routes in [`crate::proxy`].
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `HTTP_ADDR` | `0.0.0.0:8088` | where the gateway listens |
//! | `BOOKING_URL` | `http://127.0.0.1:8081` | booking service |
//! | `CONFIRM_URL` | `http://127.0.0.1:8082` | confirm service |
//! | `ORCHESTRATOR_URL` | `http://127.0.0.1:8083` | saga orchestrator |
//! | `NOTIFICATION_URL` | unset (not deployed) | notification service, e.g. `http://127.0.0.1:8084` |
//! | `BOOKINGLIST_URL` | unset (not deployed) | booking-list read model, e.g. `http://127.0.0.1:8085` |
//! | `UPSTREAM_TIMEOUT_MS` | `10000` | how long one upstream call may take |
//! | `MAX_CONCURRENT_REQUESTS` | `512` | API calls in progress at once; more are refused at once with 503 + `Retry-After` |
//! | `CIRCUIT_BREAKER_FAILURES` | `5` | consecutive failures of one upstream that open its circuit |
//! | `CIRCUIT_BREAKER_OPEN_MS` | `5000` | how long an open circuit refuses calls before one probes the upstream |
//! | `CORS_ALLOWED_ORIGINS` | unset (no CORS) | comma-separated origins browsers may call from (`https://app.example.com`), or `*` |
//! | `JWT_SECRET` | unset | HS256 key shared with whoever mints tokens (`mint-token`, `/dev/token`) |
//! | `JWT_JWKS_URL` | unset | an identity provider's JWK set (`http://` only); RS256 and ES256 tokens are checked with its keys, picked by the token's `kid` |
//! | `JWT_JWKS_REFRESH_SECS` | `300` | how often the JWK set is fetched again |
//! | `JWT_ISSUER` | `roombook` | the `iss` tokens must carry |
//! | `JWT_AUDIENCE` | `roombook-api` | the `aud` tokens must carry |
//!
//! At least one of `JWT_SECRET` and `JWT_JWKS_URL` must be set, or the gateway does not start.
//! With both, HS256 tokens are checked with the secret and RS256/ES256 tokens with the JWK set;
//! with one, tokens of the other kind are refused (401), as are every other algorithm and `none`.
//!
//! The JWK set is fetched at start-up in the background: an unreachable identity provider does
//! not stop the gateway, it is retried (after 1 s, doubling up to the refresh interval). Until a
//! first JWK set has been loaded, RS256/ES256 tokens are answered 503 problem+json with
//! `Retry-After` (the token may be valid: the client should retry, not sign in again); HS256
//! tokens are unaffected. A token naming a `kid` the loaded set lacks makes the gateway fetch the
//! set again at once (at most once per 30 s, so a key rotated in at the provider is picked up
//! without waiting for the refresh), and is answered 401 if the key is still unknown. A fetch
//! that fails or yields no usable key keeps the keys loaded before.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _};
use axum::http::HeaderValue;
use platform::config::env_or;
use reqwest::Url;

/// A service behind the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Booking,
    Confirm,
    Orchestrator,
    Notification,
    BookingList,
}

impl Service {
    pub const ALL: [Service; 5] = [
        Service::Booking,
        Service::Confirm,
        Service::Orchestrator,
        Service::Notification,
        Service::BookingList,
    ];

    /// The name used in logs, problems and `/readyz`.
    pub fn name(self) -> &'static str {
        match self {
            Service::Booking => "booking",
            Service::Confirm => "confirm",
            Service::Orchestrator => "orchestrator",
            Service::Notification => "notification",
            Service::BookingList => "bookinglist",
        }
    }

    /// The variable holding the service's base URL.
    pub fn url_var(self) -> &'static str {
        match self {
            Service::Booking => "BOOKING_URL",
            Service::Confirm => "CONFIRM_URL",
            Service::Orchestrator => "ORCHESTRATOR_URL",
            Service::Notification => "NOTIFICATION_URL",
            Service::BookingList => "BOOKINGLIST_URL",
        }
    }

    /// The local default for the services every deployment has; `None` for those that are
    /// only there when their variable is set.
    pub fn default_url(self) -> Option<&'static str> {
        match self {
            Service::Booking => Some("http://127.0.0.1:8081"),
            Service::Confirm => Some("http://127.0.0.1:8082"),
            Service::Orchestrator => Some("http://127.0.0.1:8083"),
            Service::Notification | Service::BookingList => None,
        }
    }
}

/// How bearer tokens are checked (and, for dev tokens, minted).
#[derive(Clone)]
pub struct JwtConfig {
    /// The HS256 key; `None` when tokens come only from the JWK set.
    pub secret: Option<String>,
    pub issuer: String,
    pub audience: String,
    /// Where RS256/ES256 keys come from; `None` when only HS256 tokens are accepted.
    pub jwks: Option<JwksConfig>,
}

impl JwtConfig {
    pub const DEFAULT_ISSUER: &'static str = "roombook";
    pub const DEFAULT_AUDIENCE: &'static str = "roombook-api";

    /// Reads `JWT_SECRET`, `JWT_JWKS_URL`, `JWT_JWKS_REFRESH_SECS`, `JWT_ISSUER` and
    /// `JWT_AUDIENCE`; at least one of the first two must be set.
    pub fn from_env() -> anyhow::Result<Self> {
        // Each is optional on its own; the check below wants at least one.
        let secret = std::env::var("JWT_SECRET")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let jwks_url = std::env::var("JWT_JWKS_URL")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let jwks = if let Some(url) = jwks_url {
            let refresh_secs: u64 = env_or("JWT_JWKS_REFRESH_SECS", "300")
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .context("JWT_JWKS_REFRESH_SECS must be a positive number of seconds")?;
            let mut jwks = JwksConfig::new(&url).context("JWT_JWKS_URL")?;
            jwks.refresh_every = Duration::from_secs(refresh_secs);
            Some(jwks)
        } else {
            None
        };
        if secret.is_none() && jwks.is_none() {
            bail!(
                "set JWT_SECRET (the key of HS256 tokens), JWT_JWKS_URL (the identity provider's \
                 keys for RS256/ES256 tokens), or both: without either no token can be checked"
            );
        }
        Ok(JwtConfig {
            secret,
            issuer: env_or("JWT_ISSUER", Self::DEFAULT_ISSUER),
            audience: env_or("JWT_AUDIENCE", Self::DEFAULT_AUDIENCE),
            jwks,
        })
    }

    /// The default issuer and audience with the given secret, and no JWK set.
    pub fn with_secret(secret: &str) -> Self {
        JwtConfig {
            secret: Some(secret.to_string()),
            issuer: Self::DEFAULT_ISSUER.to_string(),
            audience: Self::DEFAULT_AUDIENCE.to_string(),
            jwks: None,
        }
    }

    /// The default issuer and audience with keys from a JWK set only (no HS256).
    pub fn with_jwks(jwks: JwksConfig) -> Self {
        JwtConfig {
            secret: None,
            issuer: Self::DEFAULT_ISSUER.to_string(),
            audience: Self::DEFAULT_AUDIENCE.to_string(),
            jwks: Some(jwks),
        }
    }

    /// The secret that signs dev tokens (`mint-token`, `/dev/token`).
    pub fn minting_secret(&self) -> anyhow::Result<&str> {
        self.secret.as_deref().context(
            "JWT_SECRET must be set to mint tokens: it is the key that signs and verifies them",
        )
    }
}

// The secret must not end up in logs.
impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks", &self.jwks)
            .finish()
    }
}

/// Where the identity provider publishes its signing keys, and how often to look again.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    pub url: Url,
    /// How long after a successful fetch the set is fetched again (`JWT_JWKS_REFRESH_SECS`).
    pub refresh_every: Duration,
    /// The least time between two fetches caused by tokens naming an unknown `kid`: a flood of
    /// made-up key ids costs the identity provider one request per interval.
    pub min_refetch_interval: Duration,
}

impl JwksConfig {
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
    pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

    /// The set at `url` (plain `http`, like the upstreams: reqwest is built without TLS) with
    /// the default intervals.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let parsed = Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
        if parsed.scheme() != "http" {
            bail!(
                "{url:?}: only http:// is supported (reach an https identity provider through the \
                 mesh's egress, which originates TLS)"
            );
        }
        Ok(JwksConfig {
            url: parsed,
            refresh_every: Self::DEFAULT_REFRESH,
            min_refetch_interval: Self::DEFAULT_MIN_REFETCH_INTERVAL,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    /// Base URL of each service; a service without one is not deployed and its routes answer
    /// 503.
    pub upstreams: BTreeMap<Service, Url>,
    /// Covers connecting, sending and reading the whole answer (for an event stream: until its
    /// headers). Keep it under the 30 s request timeout of the common layers, or that one answers
    /// first (with an empty 503).
    pub upstream_timeout: Duration,
    pub jwt: JwtConfig,
    /// API calls served at once; the next one is refused with 503 rather than queued, so a
    /// burst cannot pile up unbounded work and memory behind a slow upstream.
    pub max_concurrent_requests: usize,
    pub breaker: BreakerConfig,
    pub cors: CorsOrigins,
    /// The built web page to serve at `/app/` (`WEB_DIR`); none by default.
    pub web_dir: Option<std::path::PathBuf>,
    /// Hand out dev tokens at `/dev/token` (`DEV_TOKENS=true`): local use only.
    pub dev_tokens: bool,
}

/// When an upstream's circuit opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed calls (unreachable, timed out, or a 5xx answer) that open the circuit.
    pub failures: u32,
    /// How long an open circuit answers 503 without calling; the first call after it probes.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

/// Which web origins may call the API from a browser.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CorsOrigins {
    /// No CORS headers: browsers only call from the gateway's own origin.
    #[default]
    None,
    /// Any origin (`*`). Tokens travel in the Authorization header, not cookies, so this exposes
    /// nothing a caller does not already hold.
    Any,
    List(Vec<HeaderValue>),
}

impl CorsOrigins {
    /// Parses `CORS_ALLOWED_ORIGINS`: empty, `*`, or comma-separated `scheme://host[:port]`.
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        let origins: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        if origins.is_empty() {
            return Ok(CorsOrigins::None);
        }
        if origins.contains(&"*") {
            if origins.len() > 1 {
                bail!("`*` allows every origin; list no others beside it");
            }
            return Ok(CorsOrigins::Any);
        }
        let mut list = Vec::with_capacity(origins.len());
        for origin in origins {
            let url = Url::parse(origin).with_context(|| format!("{origin:?} is not an origin"))?;
            // An origin is exactly what a browser sends: scheme, host and port, nothing after.
            if !matches!(url.scheme(), "http" | "https")
                || url.host_str().is_none()
                || origin.trim_end_matches('/') != url.origin().ascii_serialization()
            {
                bail!("{origin:?} is not an origin like https://app.example.com[:port]");
            }
            list.push(HeaderValue::from_str(&url.origin().ascii_serialization())?);
        }
        Ok(CorsOrigins::List(list))
    }
}

impl Config {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    pub fn from_env() -> anyhow::Result<Self> {
        let mut upstreams = BTreeMap::new();
        for service in Service::ALL {
            let url = env_or(service.url_var(), service.default_url().unwrap_or(""));
            if !url.is_empty() {
                let url = parse_upstream(&url).context(service.url_var())?;
                upstreams.insert(service, url);
            }
        }
        let timeout_ms: u64 = env_or("UPSTREAM_TIMEOUT_MS", "10000")
            .parse()
            .context("UPSTREAM_TIMEOUT_MS must be a number of milliseconds")?;
        let max_concurrent_requests: usize = env_or("MAX_CONCURRENT_REQUESTS", "512")
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .context("MAX_CONCURRENT_REQUESTS must be a positive number")?;
        let failures: u32 = env_or("CIRCUIT_BREAKER_FAILURES", "5")
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .context("CIRCUIT_BREAKER_FAILURES must be a positive number")?;
        let open_ms: u64 = env_or("CIRCUIT_BREAKER_OPEN_MS", "5000")
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .context("CIRCUIT_BREAKER_OPEN_MS must be a positive number of milliseconds")?;
        let jwt = JwtConfig::from_env()?;
        let dev_tokens = env_or("DEV_TOKENS", "false") == "true";
        if dev_tokens {
            jwt.minting_secret().context("DEV_TOKENS=true")?;
        }
        Ok(Config {
            http_addr: env_or("HTTP_ADDR", "0.0.0.0:8088")
                .parse()
                .context("HTTP_ADDR must be host:port")?,
            upstreams,
            upstream_timeout: Duration::from_millis(timeout_ms),
            jwt,
            max_concurrent_requests,
            breaker: BreakerConfig {
                failures,
                open_for: Duration::from_millis(open_ms),
            },
            // Optional: unset or empty means no CORS.
            cors: CorsOrigins::parse(&std::env::var("CORS_ALLOWED_ORIGINS").unwrap_or_default())
                .context("CORS_ALLOWED_ORIGINS")?,
            web_dir: web_dir()?,
            dev_tokens,
        })
    }

    pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 512;

    /// Port 0 on localhost, no upstreams, no CORS, and the defaults for the rest.
    pub fn for_test(secret: &str) -> Self {
        Config {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstreams: BTreeMap::new(),
            upstream_timeout: Self::DEFAULT_TIMEOUT,
            jwt: JwtConfig::with_secret(secret),
            max_concurrent_requests: Self::DEFAULT_MAX_CONCURRENT_REQUESTS,
            breaker: BreakerConfig::default(),
            cors: CorsOrigins::None,
            web_dir: None,
            dev_tokens: false,
        }
    }

    /// Routes `service` to `url`. Panics on an invalid URL: meant for tests and literals.
    pub fn with_upstream(mut self, service: Service, url: &str) -> Self {
        let url = parse_upstream(url).unwrap_or_else(|e| panic!("{url}: {e:#}"));
        self.upstreams.insert(service, url);
        self
    }
}

/// An upstream base URL: plain `http` (inside the mesh, TLS is the sidecar's job, and reqwest is
/// built without it), optionally with a path prefix, no query.
pub fn parse_upstream(url: &str) -> anyhow::Result<Url> {
    let parsed = Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
    if parsed.scheme() != "http" {
        bail!("{url:?}: only http:// upstreams are supported");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        bail!("{url:?}: an upstream URL has no query or fragment");
    }
    Ok(parsed)
}

/// `WEB_DIR`, which must hold the built page (`index.html`) when set.
fn web_dir() -> anyhow::Result<Option<std::path::PathBuf>> {
    // Optional: unset or empty means no page.
    let Some(dir) = std::env::var("WEB_DIR")
        .ok()
        .filter(|d| !d.trim().is_empty())
    else {
        return Ok(None);
    };
    let dir = std::path::PathBuf::from(dir);
    if !dir.join("index.html").is_file() {
        bail!(
            "WEB_DIR={} has no index.html: build the page first (cd web && npm ci && npm run build)",
            dir.display()
        );
    }
    Ok(Some(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_are_none_any_or_a_list_of_exact_origins() {
        assert_eq!(CorsOrigins::parse("").unwrap(), CorsOrigins::None);
        assert_eq!(CorsOrigins::parse(" , ").unwrap(), CorsOrigins::None);
        assert_eq!(CorsOrigins::parse("*").unwrap(), CorsOrigins::Any);
        assert_eq!(
            CorsOrigins::parse("https://app.example.com, http://localhost:5173/").unwrap(),
            CorsOrigins::List(vec![
                HeaderValue::from_static("https://app.example.com"),
                HeaderValue::from_static("http://localhost:5173"),
            ])
        );
    }

    #[test]
    fn a_cors_origin_with_a_path_or_beside_a_star_is_refused() {
        assert!(CorsOrigins::parse("https://app.example.com/ui").is_err());
        assert!(CorsOrigins::parse("app.example.com").is_err());
        assert!(CorsOrigins::parse("*, https://app.example.com").is_err());
    }
}
