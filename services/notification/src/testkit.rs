//! A real SMTP server for tests: `aiosmtpd` (PyPI) run by a small script
//! (`testkit/smtp_sink.py`), listening on a free port over TCP and writing each message it
//! accepts to a temp folder. It can be stopped (connection refused) and started again on the
//! same port, and recipient domains provoke failures: `@reject.test` gets 550,
//! `@tempfail.test` always 451, `@tempfail-once.test` 451 once per address.
//!
//! Needs `python3` (or `ROOMBOOK_PYTHON`) with `aiosmtpd` installed: `pip install aiosmtpd`.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    time::Duration,
};

use platform::config::ServiceConfig;
use tempfile::TempDir;

use crate::config::{Config, MailTransport, SmtpConfig, SmtpServer, SmtpTls};

const SCRIPT: &str = include_str!("../testkit/smtp_sink.py");

/// A running (or stopped) aiosmtpd, killed when dropped.
pub struct SmtpSink {
    child: Option<(Child, ChildStdin)>,
    dir: TempDir,
    port: u16,
}

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The SMTP envelope's recipients.
    pub envelope_to: Vec<String>,
    /// The message, starting with the sink's `X-Sink-*` headers.
    pub raw: Vec<u8>,
}

impl SmtpSink {
    /// Starts the server on a free port.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("smtp_sink.py"), SCRIPT).expect("write the sink script");
        let mut sink = SmtpSink {
            child: None,
            dir,
            port: 0,
        };
        sink.spawn(0);
        sink
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server: connections are refused until [`SmtpSink::restart`].
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.child.take() {
            drop(stdin);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, keeping what it received.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn(self.port);
    }

    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// Settings that make the notification service send here (plain SMTP, no auth).
    pub fn smtp_config(&self) -> SmtpConfig {
        SmtpConfig {
            server: SmtpServer::Host {
                host: "127.0.0.1".into(),
                port: Some(self.port),
                tls: SmtpTls::None,
                username: None,
                password: None,
            },
            timeout: Duration::from_secs(10),
        }
    }

    /// A test configuration of the service sending to this server.
    pub fn service_config(&self, service: ServiceConfig) -> Config {
        Config::for_test(service, MailTransport::Smtp(self.smtp_config()))
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.maildir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .filter(|p| {
                        !p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .filter_map(|p| std::fs::read(p).ok())
            .map(|raw| {
                let text = String::from_utf8_lossy(&raw);
                let envelope_to = text
                    .lines()
                    .find_map(|l| l.strip_prefix("X-Sink-Envelope-To: "))
                    .map(|v| v.split(", ").map(|s| s.trim().to_string()).collect())
                    .unwrap_or_default();
                Received { envelope_to, raw }
            })
            .collect()
    }

    fn spawn(&mut self, port: u16) {
        let python = std::env::var("ROOMBOOK_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .arg(self.dir.path().join("smtp_sink.py"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--maildir",
            ])
            .arg(self.maildir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{python}` for the SMTP sink: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let Some(bound) = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the SMTP sink did not start (got {line:?}): it needs `{python}` with aiosmtpd \
                 (`pip install aiosmtpd`)"
            );
        };
        self.port = bound;
        self.child = Some((child, stdin));
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}
