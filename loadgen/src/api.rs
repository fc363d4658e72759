//! The gateway's HTTP API as the load generator uses it: one keep-alive connection pool, a
//! bearer token per call, and every call counted for availability and classified when it fails.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::stats::{CallEnd, Recorder};

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    stats: Arc<Recorder>,
}

/// An HTTP answer of any status.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Why a step of a saga failed; `kind` names it for the error table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An answer with a status the step did not expect.
    Status {
        status: u16,
        problem: Option<String>,
    },
    Timeout,
    Connect,
    Transport(String),
    /// A 2xx answer whose body is not what the API documents.
    BadBody(String),
    /// Polling gave up before the expected state showed.
    GaveUp(Duration),
    /// The saga settled, but not as its path must.
    WrongOutcome {
        got: String,
        expected: String,
    },
}

impl Failure {
    pub fn from_reply(reply: &Reply) -> Self {
        Failure::Status {
            status: reply.status.as_u16(),
            problem: problem_kind(&reply.body),
        }
    }

    /// `create: HTTP 409 booking-overlap`, `decide: timeout`, …
    pub fn kind(&self, step: &str) -> String {
        match self {
            Failure::Status {
                status,
                problem: Some(p),
            } => format!("{step}: HTTP {status} {p}"),
            Failure::Status {
                status,
                problem: None,
            } => format!("{step}: HTTP {status}"),
            Failure::Timeout => format!("{step}: request timed out"),
            Failure::Connect => format!("{step}: cannot connect"),
            Failure::Transport(what) => format!("{step}: {what}"),
            Failure::BadBody(what) => format!("{step}: unexpected body ({what})"),
            Failure::GaveUp(after) => format!("{step}: not seen within {}s", after.as_secs()),
            Failure::WrongOutcome { got, expected } => {
                format!("{step}: settled {got}, expected {expected}")
            }
        }
    }
}

/// The last path segment of a problem+json `type` (`/problems/booking-overlap` →
/// `booking-overlap`), or its title when it has no type.
pub fn problem_kind(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let kind = v
        .get("type")
        .and_then(Value::as_str)
        .map(|t| t.rsplit('/').next().unwrap_or(t))
        .filter(|t| !t.is_empty() && *t != "about:blank")
        .or_else(|| v.get("title").and_then(Value::as_str))?;
    Some(kind.chars().take(60).collect())
}

fn transport_failure(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_connect() {
        Failure::Connect
    } else {
        // The chain's innermost message says most (reset, broken pipe, closed early).
        let mut source: &dyn std::error::Error = e;
        while let Some(next) = source.source() {
            source = next;
        }
        Failure::Transport(source.to_string().chars().take(80).collect())
    }
}

impl Api {
    pub fn new(
        base: &str,
        request_timeout: Duration,
        pool: usize,
        stats: Arc<Recorder>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_string(),
            stats,
        })
    }

    /// Sends one call; `Err` only when no HTTP answer came. Counts it for availability.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Failure> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            req = req.json(body);
        }
        let result = async {
            let resp = req.send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>(Reply { status, body })
        }
        .await;
        match result {
            Ok(reply) => {
                self.stats.http(if reply.status.is_server_error() {
                    CallEnd::ServerError
                } else {
                    CallEnd::Answered
                });
                Ok(reply)
            }
            Err(e) => {
                self.stats.http(CallEnd::TransportError);
                Err(transport_failure(&e))
            }
        }
    }

    /// Sends one call and expects `want`; any other answer is a failure.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
        want: StatusCode,
    ) -> Result<Reply, Failure> {
        let reply = self.send(method, path, token, body).await?;
        if reply.status == want {
            Ok(reply)
        } else {
            Err(Failure::from_reply(&reply))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_named_by_its_type() {
        let body = br#"{"type":"/problems/booking-overlap","title":"Conflict","status":409}"#;
        assert_eq!(problem_kind(body).as_deref(), Some("booking-overlap"));
        let untyped = br#"{"title":"Service Unavailable","status":503}"#;
        assert_eq!(
            problem_kind(untyped).as_deref(),
            Some("Service Unavailable")
        );
        assert_eq!(problem_kind(b"<html>oops</html>"), None);
    }

    #[test]
    fn failure_kinds_name_the_step_and_the_cause() {
        let f = Failure::Status {
            status: 409,
            problem: Some("confirm-closed".into()),
        };
        assert_eq!(f.kind("decide"), "decide: HTTP 409 confirm-closed");
        let f = Failure::Status {
            status: 503,
            problem: None,
        };
        assert_eq!(f.kind("create"), "create: HTTP 503");
        assert_eq!(Failure::Timeout.kind("create"), "create: request timed out");
        assert_eq!(
            Failure::GaveUp(Duration::from_secs(30)).kind("confirm"),
            "confirm: not seen within 30s"
        );
        let f = Failure::WrongOutcome {
            got: "COMPENSATED".into(),
            expected: "COMPLETED".into(),
        };
        assert_eq!(
            f.kind("settle"),
            "settle: settled COMPENSATED, expected COMPLETED"
        );
    }
}
