//! The notification service's settings, read from environment variables with local defaults.
//!
//! Besides the shared ones (`HTTP_ADDR`, `NATS_URL`, `DATABASE_URL`, `DATA_DIR`, …; see
//! `platform::config`):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SMTP_URL` | unset | the mail server as a URL: `smtp://host:25`, `smtp://user:pass@host:587?tls=required` (STARTTLS), `smtp://host:587?tls=opportunistic`, `smtps://user:pass@host:465` (TLS). Wins over `SMTP_HOST` |
//! | `SMTP_HOST` | unset | the mail server's host, when `SMTP_URL` is unset |
//! | `SMTP_PORT` | by `SMTP_TLS`: 25 / 587 / 465 | its port |
//! | `SMTP_TLS` | `starttls` | `none`, `opportunistic` (STARTTLS if offered), `starttls` (required), `tls` (implicit TLS) |
//! | `SMTP_USERNAME`, `SMTP_PASSWORD` | unset | credentials (keep the password in a Secret) |
//! | `SMTP_TIMEOUT_SECS` | `10` | per SMTP command |
//! | `MAIL_DIR` | `{DATA_DIR}/mail` | with neither `SMTP_URL` nor `SMTP_HOST`: each mail is written here as an `.eml` file |
//! | `MAIL_MBOX` | unset | with neither `SMTP_URL` nor `SMTP_HOST`: each mail is appended to this mbox file instead (the cheapest local store) |
//! | `MAIL_FROM` | `Roombook <roombook@localhost>` | sender; its domain also names Message-IDs and calendar UIDs |
//! | `ADMIN_EMAILS` | empty | comma-separated addresses that get approval requests (none: not mailed) |
//! | `MAIL_TIME_ZONE` | `UTC` | IANA zone the mails write times in, e.g. `Europe/Berlin` |
//! | `MAIL_MAX_ATTEMPTS` | `12` | attempts before a record is FAILED |
//! | `MAIL_RETRY_BASE_MS` | `5000` | first retry delay; doubles per attempt |
//! | `MAIL_RETRY_MAX_MS` | `1800000` | longest retry delay (with the defaults, ~1.7 h of retrying) |
//! | `MAIL_POLL_MS` | `500` | how often the sender looks for due mail |
//! | `MAIL_UNKNOWN_BOOKING_GRACE_SECS` | `600` | how long a mail waits for its booking's `BookingCreated` before it is FAILED |
//! | `MAIL_MAX_EVENT_AGE_HOURS` | `168` | events older than this are recorded SKIPPED, not mailed |

use std::{fmt, path::PathBuf, str::FromStr, sync::Arc, time::Duration};

use anyhow::{anyhow, Context as _};
use chrono_tz::Tz;
use lettre::{message::Mailbox, Address};
use platform::{clock::Clock, config::ServiceConfig};

use crate::DEFAULT_PORT;

#[derive(Debug, Clone)]
pub struct Config {
    pub service: ServiceConfig,
    pub transport: MailTransport,
    pub mail_from: Mailbox,
    /// Who is asked to approve bookings.
    pub admin_emails: Vec<Address>,
    pub time_zone: Tz,
    pub delivery: DeliveryConfig,
    /// Decides "now" for retries, grace periods and event age (tests may move it by hand).
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, Clone)]
pub enum MailTransport {
    Smtp(SmtpConfig),
    /// Write each mail as an `.eml` file into this folder.
    Files(PathBuf),
    /// Append each mail to this mbox file.
    Mbox(PathBuf),
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub server: SmtpServer,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum SmtpServer {
    /// lettre's connection URL (it may carry credentials, hence secret).
    Url(Secret),
    Host {
        host: String,
        port: Option<u16>,
        tls: SmtpTls,
        username: Option<String>,
        password: Option<Secret>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    Opportunistic,
    StartTls,
    Tls,
}

impl FromStr for SmtpTls {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "off" => Ok(SmtpTls::None),
            "opportunistic" => Ok(SmtpTls::Opportunistic),
            "starttls" | "required" => Ok(SmtpTls::StartTls),
            "tls" | "smtps" | "wrapper" => Ok(SmtpTls::Tls),
            other => Err(anyhow!(
                "SMTP_TLS `{other}` is not one of none, opportunistic, starttls, tls"
            )),
        }
    }
}

/// A value that must not appear in logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How hard and how often the sender tries.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub poll_interval: Duration,
    pub unknown_booking_grace: Duration,
    pub max_event_age: Duration,
    /// How long a claimed record stays hidden from other senders: longer than any one send,
    /// short enough that a crash mid-send only delays the mail.
    pub claim_lease: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_attempts: 12,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(30 * 60),
            poll_interval: Duration::from_millis(500),
            unknown_booking_grace: Duration::from_secs(600),
            max_event_age: Duration::from_secs(168 * 3600),
            claim_lease: Duration::from_secs(300),
        }
    }
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the settings through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |key: &str| {
            get(key)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let number = |key: &str, default: u64| -> anyhow::Result<u64> {
            get(key).map_or(Ok(default), |v| {
                v.parse()
                    .with_context(|| format!("{key} must be a whole number (got `{v}`)"))
            })
        };
        let data_dir = get("DATA_DIR").unwrap_or_else(|| "./data".into());
        let timeout = Duration::from_secs(number("SMTP_TIMEOUT_SECS", 10)?);
        let transport = if let Some(url) = get("SMTP_URL") {
            MailTransport::Smtp(SmtpConfig {
                server: SmtpServer::Url(Secret::new(url)),
                timeout,
            })
        } else if let Some(host) = get("SMTP_HOST") {
            let port = get("SMTP_PORT")
                .map(|p| p.parse::<u16>())
                .transpose()
                .context("SMTP_PORT must be a port number")?;
            MailTransport::Smtp(SmtpConfig {
                server: SmtpServer::Host {
                    host,
                    port,
                    tls: get("SMTP_TLS").as_deref().unwrap_or("starttls").parse()?,
                    username: get("SMTP_USERNAME"),
                    password: get("SMTP_PASSWORD").map(Secret::new),
                },
                timeout,
            })
        } else if let Some(mbox) = get("MAIL_MBOX") {
            MailTransport::Mbox(PathBuf::from(mbox))
        } else {
            MailTransport::Files(
                get("MAIL_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(&data_dir).join("mail")),
            )
        };
        let mail_from: Mailbox = get("MAIL_FROM")
            .as_deref()
            .unwrap_or("Roombook <roombook@localhost>")
            .parse()
            .context("MAIL_FROM must be an address like `Roombook <roombook@example.com>`")?;
        let admin_emails = get("ADMIN_EMAILS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse::<Address>()
                    .with_context(|| format!("ADMIN_EMAILS: `{a}` is not an e-mail address"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let time_zone = get("MAIL_TIME_ZONE")
            .as_deref()
            .unwrap_or("UTC")
            .parse::<Tz>()
            .map_err(|e| anyhow!("MAIL_TIME_ZONE must be an IANA zone like Europe/Berlin: {e}"))?;
        let defaults = DeliveryConfig::default();
        let max_attempts = number("MAIL_MAX_ATTEMPTS", defaults.max_attempts.into())?;
        let delivery = DeliveryConfig {
            max_attempts: u32::try_from(max_attempts)
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| anyhow!("MAIL_MAX_ATTEMPTS must be at least 1"))?,
            retry_base: Duration::from_millis(number("MAIL_RETRY_BASE_MS", 5000)?),
            retry_max: Duration::from_millis(number("MAIL_RETRY_MAX_MS", 1_800_000)?),
            poll_interval: Duration::from_millis(number("MAIL_POLL_MS", 500)?.max(10)),
            unknown_booking_grace: Duration::from_secs(number(
                "MAIL_UNKNOWN_BOOKING_GRACE_SECS",
                600,
            )?),
            max_event_age: Duration::from_secs(number("MAIL_MAX_EVENT_AGE_HOURS", 168)? * 3600),
            ..defaults
        };
        Ok(Config {
            service: ServiceConfig::from_env("notification", DEFAULT_PORT)?,
            transport,
            mail_from,
            admin_emails,
            time_zone,
            delivery,
            clock: platform::clock::system(),
        })
    }

    /// Settings for a test: the given service settings and transport, no admins, UTC, and
    /// retries fast enough to watch (50 ms doubling up to 500 ms, many attempts).
    pub fn for_test(service: ServiceConfig, transport: MailTransport) -> Self {
        Config {
            service,
            transport,
            mail_from: "Roombook <roombook@roombook.test>"
                .parse()
                .expect("valid address"),
            admin_emails: Vec::new(),
            time_zone: Tz::UTC,
            delivery: DeliveryConfig {
                max_attempts: 1000,
                retry_base: Duration::from_millis(50),
                retry_max: Duration::from_millis(500),
                poll_interval: Duration::from_millis(50),
                ..DeliveryConfig::default()
            },
            clock: platform::clock::system(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn without_a_mail_server_mail_goes_to_files_under_the_data_dir() {
        let c = config(&[("DATA_DIR", "/tmp/rb")]).unwrap();
        assert!(
            matches!(c.transport, MailTransport::Files(ref d) if d == &PathBuf::from("/tmp/rb/mail"))
        );
        assert!(c.admin_emails.is_empty());
        assert_eq!(c.time_zone, Tz::UTC);
        assert_eq!(c.delivery.max_attempts, 12);
        let c = config(&[("MAIL_DIR", "/srv/mail")]).unwrap();
        assert!(
            matches!(c.transport, MailTransport::Files(ref d) if d == &PathBuf::from("/srv/mail"))
        );
        let c = config(&[("MAIL_DIR", "/srv/mail"), ("MAIL_MBOX", "/srv/mail.mbox")]).unwrap();
        assert!(
            matches!(c.transport, MailTransport::Mbox(ref f) if f == &PathBuf::from("/srv/mail.mbox"))
        );
        let c = config(&[("SMTP_HOST", "mail.example.com"), ("MAIL_MBOX", "/srv/m")]).unwrap();
        assert!(matches!(c.transport, MailTransport::Smtp(_)));
    }

    #[test]
    fn smtp_host_settings_are_read_and_the_password_is_not_printed() {
        let c = config(&[
            ("SMTP_HOST", "mail.example.com"),
            ("SMTP_TLS", "tls"),
            ("SMTP_USERNAME", "roombook"),
            ("SMTP_PASSWORD", "hunter2"),
            ("ADMIN_EMAILS", "ops@example.com, boss@example.com"),
            ("MAIL_TIME_ZONE", "Europe/Berlin"),
        ])
        .unwrap();
        match &c.transport {
            MailTransport::Smtp(SmtpConfig {
                server: SmtpServer::Host {
                    host, tls, port, ..
                },
                ..
            }) => {
                assert_eq!(host, "mail.example.com");
                assert_eq!(*tls, SmtpTls::Tls);
                assert_eq!(*port, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.admin_emails.len(), 2);
        assert_eq!(c.time_zone, chrono_tz::Europe::Berlin);
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = config(&[("SMTP_URL", "smtps://u:secret@mail.example.com")]).unwrap();
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn bad_settings_are_refused_at_start() {
        assert!(config(&[("ADMIN_EMAILS", "ops@example.com, nonsense")]).is_err());
        assert!(config(&[("MAIL_TIME_ZONE", "Mars/Olympus")]).is_err());
        assert!(config(&[("SMTP_HOST", "h"), ("SMTP_TLS", "maybe")]).is_err());
        assert!(config(&[("MAIL_MAX_ATTEMPTS", "0")]).is_err());
        assert!(config(&[("MAIL_FROM", "not an address")]).is_err());
    }
}
