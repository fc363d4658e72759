//! The background sender: works the delivery records until the service stops.
//!
//! Each round it (1) fills in WAITING records whose booking has become known, (2) fails WAITING
//! records older than the grace period (their booking never showed up), and (3) sends the
//! PENDING records that are due. A send that fails transiently (connection refused, timeout,
//! an SMTP 4xx reply) is retried with exponential backoff; an SMTP 5xx reply, or the last
//! allowed attempt failing, marks the record FAILED with the reason. Nothing here blocks the
//! consumer or the saga: a dead mail server only makes records wait.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use lettre::{
    transport::smtp::{
        authentication::Credentials,
        client::{Tls, TlsParameters},
        Error as SmtpError,
    },
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
};
use platform::db::{Db, Tx};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{
    bookings, compose,
    config::{MailTransport, SmtpConfig, SmtpServer, SmtpTls},
    domain::Notification,
    handler,
    local_mail::{self, Mbox},
    store, Settings,
};

/// How many due records one round takes, and how many of them are in flight at once.
const BATCH: i64 = 64;
const CONCURRENCY: usize = 4;
/// WAITING records looked at per round.
const RESOLVE_BATCH: i64 = 256;

/// Where mail goes.
pub enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// One `.eml` file per record in this folder (the local default).
    Files(PathBuf),
    /// Every mail appended to one mbox file.
    Mbox(Mbox),
}

/// Why a send failed, and whether trying again may help.
#[derive(Debug)]
pub enum SendError {
    Transient(String),
    Permanent(String),
}

impl Transport {
    pub fn new(config: &MailTransport) -> anyhow::Result<Transport> {
        match config {
            MailTransport::Files(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the mail folder {}", dir.display()))?;
                Ok(Transport::Files(dir.clone()))
            }
            MailTransport::Mbox(path) => Ok(Transport::Mbox(Mbox::open(path)?)),
            MailTransport::Smtp(smtp) => Ok(Transport::Smtp(smtp_transport(smtp)?)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Transport::Smtp(_) => "SMTP".to_string(),
            Transport::Files(dir) => format!("files in {}", dir.display()),
            Transport::Mbox(mbox) => format!("the mbox {}", mbox.path().display()),
        }
    }

    /// Sends one mail; into an mbox it is only staged, and goes with the round's [`Transport::flush`].
    async fn send(&self, n: &Notification, message: Message) -> Result<(), SendError> {
        match self {
            Transport::Smtp(smtp) => smtp.send(message).await.map(|_| ()).map_err(classify),
            Transport::Files(dir) => local_mail::write_eml(dir, n, &message.formatted())
                .map_err(|e| SendError::Transient(format!("{e:#}"))),
            Transport::Mbox(mbox) => {
                let sender = message.envelope().from().map(ToString::to_string);
                mbox.stage(
                    sender.as_deref().unwrap_or(""),
                    Utc::now(),
                    &message.formatted(),
                );
                Ok(())
            }
        }
    }

    /// Writes what the round's sends staged (the mbox's mails); the others have gone already.
    fn flush(&self) -> anyhow::Result<()> {
        match self {
            Transport::Mbox(mbox) => mbox.flush(),
            Transport::Smtp(_) | Transport::Files(_) => Ok(()),
        }
    }
}

fn smtp_transport(c: &SmtpConfig) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let builder = match &c.server {
        SmtpServer::Url(url) => AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
            .context("SMTP_URL is not a valid SMTP URL (smtp://, smtps://, ?tls=required)")?,
        SmtpServer::Host {
            host,
            port,
            tls,
            username,
            password,
        } => {
            let params = || {
                TlsParameters::new(host.clone()).with_context(|| format!("TLS settings for {host}"))
            };
            let mode = match tls {
                SmtpTls::None => Tls::None,
                SmtpTls::Opportunistic => Tls::Opportunistic(params()?),
                SmtpTls::StartTls => Tls::Required(params()?),
                SmtpTls::Tls => Tls::Wrapper(params()?),
            };
            let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
                .port(port.unwrap_or(tls_default_port(*tls)))
                .tls(mode);
            if let Some(user) = username {
                let password = password.as_ref().map(|p| p.expose().to_string());
                b = b.credentials(Credentials::new(user.clone(), password.unwrap_or_default()));
            }
            b
        }
    };
    Ok(builder.timeout(Some(c.timeout)).build())
}

fn tls_default_port(tls: SmtpTls) -> u16 {
    match tls {
        SmtpTls::None => 25,
        SmtpTls::Opportunistic | SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
    }
}

/// SMTP 5xx is final for that recipient; 4xx, network trouble and timeouts may pass.
fn classify(e: SmtpError) -> SendError {
    // lettre's message already includes its source (the server's reply or the I/O error).
    let text = e.to_string();
    if e.is_permanent() {
        SendError::Permanent(format!("the mail server refused the mail: {text}"))
    } else if e.is_transient() {
        SendError::Transient(format!("the mail server deferred the mail: {text}"))
    } else {
        SendError::Transient(format!("cannot reach the mail server: {text}"))
    }
}

/// Delay before attempt `attempts + 1`, after `attempts` failures: base · 2^(attempts-1),
/// capped.
pub fn backoff(attempts: i64, base: Duration, max: Duration) -> Duration {
    let exp = u32::try_from((attempts - 1).clamp(0, 30)).unwrap_or(30);
    base.checked_mul(2u32.saturating_pow(exp))
        .unwrap_or(max)
        .min(max)
}

/// Runs until `cancel` fires; the sends in hand are finished first.
pub async fn run(
    db: Db,
    transport: Arc<Transport>,
    settings: Arc<Settings>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let busy = match round(&db, &transport, &settings).await {
            Ok(busy) => {
                failures = 0;
                busy
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %format!("{e:#}"), "notification sender round failed");
                false
            }
        };
        if busy {
            if cancel.is_cancelled() {
                return;
            }
            continue;
        }
        let pause = settings.delivery.poll_interval * 2u32.pow(failures.min(4));
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One round; true when there may be more work right away. The round is planned in one
/// transaction (records whose booking became known are completed, stale ones failed, due ones
/// claimed); the mails go out with no transaction open, and their outcomes are recorded in a
/// second one.
async fn round(db: &Db, transport: &Transport, settings: &Settings) -> anyhow::Result<bool> {
    let now = settings.clock.now();
    let grace = chrono::Duration::from_std(settings.delivery.unknown_booking_grace)
        .unwrap_or(chrono::Duration::MAX);
    let mut tx = db.begin().await?;
    let resolved = resolve_waiting(&mut tx, settings).await?;
    let failed = store::fail_stale_waiting(
        &mut tx,
        now - grace,
        &format!(
            "unknown booking: no BookingCreated event for it arrived within {} s, so the \
             recipient and the booking's details are unknown",
            settings.delivery.unknown_booking_grace.as_secs()
        ),
        now,
    )
    .await
    .context("failing stale waiting records")?;
    let due = store::due(&mut tx, now, BATCH)
        .await
        .context("loading due notifications")?;
    let count = due.len();
    let claimed = claim(&mut tx, settings, due).await?;
    tx.commit().await?;
    if failed > 0 {
        tracing::warn!(
            count = failed,
            "notifications for unknown bookings marked FAILED"
        );
    }
    if !claimed.is_empty() {
        let mut outcomes: Vec<(Notification, Outcome)> = futures::stream::iter(claimed)
            .map(|n| async move {
                let outcome = attempt(transport, settings, &n).await;
                (n, outcome)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        if let Err(e) = transport.flush() {
            // None of the round's staged mails reached the file: each is tried again later.
            let reason = format!("{e:#}");
            tracing::warn!(%reason, "the round's mails could not be written to the mbox");
            for (n, outcome) in &mut outcomes {
                if matches!(outcome, Outcome::Sent) {
                    *outcome = not_sent(settings, n, reason.clone());
                }
            }
        }
        record(db, settings, &outcomes)
            .await
            .context("recording delivery outcomes")?;
    }
    Ok(count as i64 == BATCH || resolved as i64 == RESOLVE_BATCH)
}

async fn resolve_waiting(tx: &mut Tx, settings: &Settings) -> anyhow::Result<usize> {
    let waiting = store::resolvable_waiting(tx, RESOLVE_BATCH)
        .await
        .context("loading waiting notifications")?;
    let count = waiting.len();
    for mut n in waiting {
        let Some(facts) = bookings::booking_facts(&mut *tx, n.booking_id).await? else {
            continue;
        };
        handler::describe(&mut n, &facts, settings);
        handler::address_booker(&mut n, &facts);
        n.updated_at = settings.clock.now();
        if store::resolve(tx, &n).await? {
            tracing::debug!(id = %n.id, status = n.status.as_str(), "waiting notification resolved");
        }
    }
    Ok(count)
}

/// Takes the due records for one attempt each, in one statement; returns those this sender
/// got (another replica may have taken some first).
async fn claim(
    tx: &mut Tx,
    settings: &Settings,
    due: Vec<Notification>,
) -> anyhow::Result<Vec<Notification>> {
    if due.is_empty() {
        return Ok(due);
    }
    let now = settings.clock.now();
    let lease =
        chrono::Duration::from_std(settings.delivery.claim_lease).unwrap_or(chrono::Duration::MAX);
    let taken = store::claim_all(&mut *tx, &due, now + lease, now)
        .await
        .context("claiming due notifications")?;
    Ok(due.into_iter().filter(|n| taken.contains(&n.id)).collect())
}

/// What became of one attempt.
enum Outcome {
    Sent,
    Failed(String),
    RetryAt(DateTime<Utc>, String),
}

/// Composes and sends one claimed record.
async fn attempt(transport: &Transport, settings: &Settings, n: &Notification) -> Outcome {
    let attempts = n.attempts + 1;
    let span = tracing::info_span!("mail", id = %n.id, kind = n.kind.as_str(), booking_id = %n.booking_id, attempts);
    async {
        let sent = match compose::build(n, &settings.mail) {
            Ok(message) => transport.send(n, message).await,
            // The record cannot become a mail (no usable address, unknown booking): no retry
            // will change that.
            Err(e) => Err(SendError::Permanent(e.to_string())),
        };
        match sent {
            Ok(()) => {
                tracing::info!(to = n.recipient.as_deref().unwrap_or("-"), "mail sent");
                Outcome::Sent
            }
            Err(SendError::Permanent(reason)) => {
                tracing::warn!(%reason, "mail failed permanently");
                Outcome::Failed(reason)
            }
            Err(SendError::Transient(reason)) => not_sent(settings, n, reason),
        }
    }
    .instrument(span)
    .await
}

/// The outcome of an attempt that failed in a way a later one may not: retried after a
/// backoff, or FAILED once the record has no attempts left.
fn not_sent(settings: &Settings, n: &Notification, reason: String) -> Outcome {
    let d = &settings.delivery;
    let attempts = n.attempts + 1;
    if attempts >= i64::from(d.max_attempts) {
        tracing::warn!(id = %n.id, %reason, "mail failed, no attempts left");
        return Outcome::Failed(format!(
            "gave up after {attempts} attempts; last error: {reason}"
        ));
    }
    let delay = backoff(attempts, d.retry_base, d.retry_max);
    tracing::info!(id = %n.id, %reason, retry_in = ?delay, "mail deferred, will retry");
    let at =
        settings.clock.now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    Outcome::RetryAt(at, reason)
}

/// Writes a round's outcomes in one transaction. Should it fail, the claims' leases expire and
/// the records are attempted again (a mail resent keeps its `Message-ID`).
async fn record(
    db: &Db,
    settings: &Settings,
    outcomes: &[(Notification, Outcome)],
) -> Result<(), sqlx::Error> {
    let now = settings.clock.now();
    let mut tx = db.begin().await?;
    let sent: Vec<Uuid> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Sent))
        .map(|(n, _)| n.id)
        .collect();
    store::mark_all_sent(&mut tx, &sent, now).await?;
    for (n, outcome) in outcomes {
        match outcome {
            Outcome::Sent => {}
            Outcome::Failed(reason) => store::mark_failed(&mut tx, n.id, reason, now).await?,
            Outcome::RetryAt(at, reason) => {
                store::reschedule(&mut tx, n.id, *at, reason, now).await?;
            }
        }
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let (base, max) = (Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(backoff(1, base, max), Duration::from_secs(5));
        assert_eq!(backoff(2, base, max), Duration::from_secs(10));
        assert_eq!(backoff(4, base, max), Duration::from_secs(40));
        assert_eq!(backoff(5, base, max), max);
        assert_eq!(backoff(500, base, max), max);
        assert_eq!(backoff(0, base, max), base);
    }
}
