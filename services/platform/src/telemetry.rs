//! Logging: `tracing` with `RUST_LOG` filtering, human-readable by default, JSON lines when
//! `LOG_FORMAT=json` (what a log collector wants).

use tracing_subscriber::{fmt, EnvFilter};

pub fn init(service: &str) {
    init_with_default(service, "info,sqlx=warn,async_nats=warn");
}

/// Like [`init`], but quiet unless `RUST_LOG` asks for more: for tests, whose services log from
/// threads the test harness does not capture.
pub fn init_for_tests() {
    init_with_default("test", "warn,sqlx=error,async_nats=error");
}

fn init_with_default(service: &str, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    // A second init (tests start several services in one process) is harmless.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    tracing::debug!(service, "logging initialised");
}
