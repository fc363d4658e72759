//! Configuration every service shares, read from environment variables with local defaults.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `HTTP_ADDR` | `0.0.0.0:{service port}` | where the service listens |
//! | `NATS_URL` | `nats://127.0.0.1:4222` | the NATS server (JetStream enabled) |
//! | `DATABASE_URL` | `sqlite://{DATA_DIR}/{service}.db` | `sqlite://…` or `postgres://…` |
//! | `DATA_DIR` | `./data` | where SQLite files live |
//! | `NATS_STREAM_REPLICAS` | `1` | replicas of each stream (3 in a NATS cluster) |
//! | `LOG_FORMAT` | `text` | `json` for JSON lines |

use std::net::SocketAddr;

use anyhow::Context as _;

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub http_addr: SocketAddr,
    pub nats_url: String,
    pub database_url: String,
    pub stream_replicas: usize,
}

impl ServiceConfig {
    /// Reads the shared settings of service `name`, whose default port is `port`.
    pub fn from_env(name: &str, port: u16) -> anyhow::Result<Self> {
        let data_dir = env_or("DATA_DIR", "./data");
        Ok(ServiceConfig {
            http_addr: env_or("HTTP_ADDR", &format!("0.0.0.0:{port}"))
                .parse()
                .context("HTTP_ADDR must be host:port")?,
            nats_url: env_or("NATS_URL", "nats://127.0.0.1:4222"),
            database_url: env_or("DATABASE_URL", &format!("sqlite://{data_dir}/{name}.db")),
            stream_replicas: env_or("NATS_STREAM_REPLICAS", "1")
                .parse()
                .context("NATS_STREAM_REPLICAS must be a number")?,
        })
    }

    /// Settings for a test: port 0 and the given NATS and database.
    pub fn for_test(nats_url: &str, database_url: &str) -> Self {
        ServiceConfig {
            http_addr: "127.0.0.1:0".parse().expect("valid address"),
            nats_url: nats_url.to_string(),
            database_url: database_url.to_string(),
            stream_replicas: 1,
        }
    }
}

/// The variable's value, or `default` when it is unset or empty.
pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}
