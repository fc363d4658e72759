//! The notification service: an e-mail, with a calendar invitation, for every status change of
//! a booking, and an approval request to the admins.
//!
//! Two halves that share only the database:
//! - the durable consumer ([`handler`]) turns saga events into delivery records, one per
//!   (event, recipient), in the same transaction that marks the event as seen: exactly-once
//!   recording however often JetStream delivers;
//! - the background sender ([`sender`]) turns due records into mail over SMTP (lettre), or into
//!   `.eml` files when no mail server is configured, with retries and a final FAILED state.
//!
//! Because sending is decoupled from consuming, a dead mail server never slows the bus or the
//! saga; mail simply waits in the database until it can go. `GET /notifications` ([`api`])
//! shows every record and where its delivery stands.

pub mod api;
pub mod bookings;
pub mod compose;
pub mod config;
pub mod domain;
pub mod handler;
pub mod ics;
pub mod local_mail;
pub mod sender;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;

use std::{future::Future, sync::Arc};

use platform::{
    clock::Clock,
    db::Migrations,
    runtime::{RunningService, Runtime},
    topology::ConsumerSpec,
};
use tokio_util::sync::CancellationToken;

pub use crate::config::{Config, DeliveryConfig, MailTransport, SmtpConfig, SmtpServer, SmtpTls};
use crate::{compose::MailSettings, handler::NotificationHandler, sender::Transport};

pub const DEFAULT_PORT: u16 = 8084;

/// What the consumer and the sender share at run time.
#[derive(Debug)]
pub struct Settings {
    pub mail: MailSettings,
    pub admin_emails: Vec<lettre::Address>,
    pub delivery: DeliveryConfig,
    pub clock: Arc<dyn Clock>,
}

fn migrations() -> Migrations {
    Migrations {
        sqlite: sqlx::migrate!("./migrations/sqlite"),
        postgres: sqlx::migrate!("./migrations/postgres"),
    }
}

/// Starts the service; it runs until `cancel` fires.
pub async fn spawn(config: Config, cancel: CancellationToken) -> anyhow::Result<RunningService> {
    let transport = Arc::new(Transport::new(&config.transport)?);
    let rt = Runtime::start("notification", &config.service, migrations(), cancel).await?;
    let settings = Arc::new(Settings {
        mail: MailSettings {
            from: config.mail_from.clone(),
            time_zone: config.time_zone,
        },
        admin_emails: config.admin_emails.clone(),
        delivery: config.delivery.clone(),
        clock: config.clock.clone(),
    });
    match &config.transport {
        MailTransport::Files(dir) => tracing::info!(
            folder = %std::path::absolute(dir).unwrap_or_else(|_| dir.clone()).display(),
            "no SMTP_URL or SMTP_HOST set: mail is written as .eml files"
        ),
        MailTransport::Mbox(path) => tracing::info!(
            file = %std::path::absolute(path).unwrap_or_else(|_| path.clone()).display(),
            "no SMTP_URL or SMTP_HOST set: mail is appended to an mbox file"
        ),
        MailTransport::Smtp(_) => tracing::info!(
            transport = transport.describe(),
            "mail goes to the SMTP server"
        ),
    }
    if config.admin_emails.is_empty() {
        tracing::info!("ADMIN_EMAILS is empty: approval requests are not mailed");
    }
    rt.spawn_consumer(
        ConsumerSpec::notification(),
        Arc::new(NotificationHandler {
            settings: settings.clone(),
        }),
    );
    rt.spawn_task(sender::run(
        rt.db.clone(),
        transport,
        settings,
        rt.cancel.clone(),
    ));
    let routes = api::routes(api::AppState { db: rt.db.clone() });
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
