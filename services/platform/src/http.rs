//! HTTP pieces every service shares: RFC 7807 problem details, JSON extraction that answers bad
//! input with a problem instead of plain text, the identity the gateway passes in headers, the
//! health probes, and serving with graceful shutdown.

use std::{net::SocketAddr, time::Duration};

use axum::{
    extract::{rejection::JsonRejection, FromRequest, FromRequestParts, Query, Request},
    http::{header, request::Parts, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    serve::{ListenerExt as _, TapIo},
    Json, Router,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

/// Headers through which the gateway passes the verified caller to the services.
pub const USER_ID_HEADER: &str = "x-roombook-user-id";
pub const USER_EMAIL_HEADER: &str = "x-roombook-user-email";
pub const USER_ROLES_HEADER: &str = "x-roombook-user-roles";
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// An RFC 7807 problem (`application/problem+json`).
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extra: Option<Value>,
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            extra: None,
            retry_after: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            detail,
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn conflict(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, "Conflict", detail)
    }

    /// A failure the client may retry later; the cause is logged, not shown.
    pub fn unavailable(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut p = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        );
        p.retry_after = Some(retry_after_secs);
        p
    }

    /// An unexpected failure: logged with its whole cause chain, shown as a generic 500.
    pub fn internal(error: &anyhow::Error) -> Self {
        tracing::error!(error = %format!("{error:#}"), "unexpected error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "something went wrong on our side; it has been logged",
        )
    }

    pub fn with_extra(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("/problems/{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let (Some(Value::Object(extra)), Value::Object(map)) = (self.extra, &mut body) {
            map.extend(extra);
        }
        let mut response = (self.status, Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(error = %e, "database unavailable");
                Problem::unavailable("the database is unavailable; try again shortly", 2)
            }
            // A deadlock or serialization failure that outlived our own retries: the caller may
            // safely try again.
            ref db if crate::db::is_transient(db) => {
                tracing::warn!(error = %e, "transaction aborted by the database");
                Problem::unavailable("the request collided with another; try again", 1)
            }
            other => Problem::internal(&other.into()),
        }
    }
}

impl From<anyhow::Error> for Problem {
    fn from(e: anyhow::Error) -> Self {
        Problem::internal(&e)
    }
}

/// `Json<T>` whose rejections (malformed JSON, wrong types, missing fields, wrong content type)
/// are 400 problems naming what was wrong.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(rejection: JsonRejection) -> Problem {
    let status = rejection.status();
    let mut p = Problem::bad_request(rejection.body_text());
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        p = Problem::new(
            status,
            "too-large",
            "Payload too large",
            rejection.body_text(),
        );
    } else if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        p = Problem::new(
            status,
            "unsupported-media-type",
            "Unsupported media type",
            rejection.body_text(),
        );
    }
    p
}

/// `Query<T>` whose rejections (a value of the wrong type, a malformed query) are 400 problems.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e| Problem::bad_request(e.body_text()))
    }
}

/// The `limit` / `offset` of a list request, checked once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub limit: i64,
    pub offset: i64,
}

impl Paging {
    pub const DEFAULT_LIMIT: i64 = 100;
    pub const MAX_LIMIT: i64 = 1000;

    pub fn new(limit: Option<i64>, offset: Option<i64>) -> Result<Self, Problem> {
        let paging = Paging {
            limit: limit.unwrap_or(Self::DEFAULT_LIMIT),
            offset: offset.unwrap_or(0),
        };
        if !(1..=Self::MAX_LIMIT).contains(&paging.limit) || paging.offset < 0 {
            return Err(Problem::bad_request(format!(
                "limit must be 1..={} and offset >= 0",
                Self::MAX_LIMIT
            )));
        }
        Ok(paging)
    }
}

/// Parses an optional query value with `parse`; an unknown one is a 400 naming the allowed ones.
pub fn parse_choice<T>(
    name: &str,
    value: Option<&str>,
    parse: impl Fn(&str) -> Option<T>,
    allowed: &[&str],
) -> Result<Option<T>, Problem> {
    value
        .map(|v| {
            parse(v).ok_or_else(|| {
                Problem::bad_request(format!("{name} `{v}` is not one of {}", allowed.join(", ")))
                    .with_extra(json!({ "parameter": name, "allowed": allowed }))
            })
        })
        .transpose()
}

/// The caller, as verified by the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub email: Option<String>,
    pub roles: Vec<String>,
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }

    /// Admins may act on anything; users only on what they own.
    pub fn may_access(&self, owner: &str) -> bool {
        self.is_admin() || self.user_id == owner
    }

    pub fn require_admin(&self) -> Result<(), Problem> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Problem::forbidden("this operation needs the admin role"))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let get = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let user_id =
            get(USER_ID_HEADER).ok_or_else(|| Problem::unauthorized("no authenticated caller"))?;
        let roles = get(USER_ROLES_HEADER)
            .map(|r| {
                r.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Identity {
            user_id,
            email: get(USER_EMAIL_HEADER),
            roles,
        })
    }
}

/// Answers unknown routes with a 404 problem instead of an empty body.
pub async fn not_found_fallback() -> Problem {
    Problem::not_found("no such route")
}

/// Wraps a service's routes with what every service has: `/metrics`, request metrics, request
/// id, trace, timeout, the JSON 404 fallback.
pub fn with_common_layers(router: Router, service: &'static str) -> Router {
    crate::metrics::handle();
    router
        .route("/metrics", get(crate::metrics::render))
        .fallback(not_found_fallback)
        .layer(axum::middleware::from_fn(move |req, next| {
            crate::metrics::track_http(service, req, next)
        }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        ))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let request_id = req
                    .headers()
                    .get(REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// What `/readyz` checks.
pub trait Readiness: Clone + Send + Sync + 'static {
    /// Named checks and whether each passed.
    fn checks(&self) -> impl std::future::Future<Output = Vec<(&'static str, bool)>> + Send;

    /// Whether a failing check makes the service unready (else it is only reported).
    fn required(&self, _check: &str) -> bool {
        true
    }
}

/// `/healthz` (the process is alive) and `/readyz` (its dependencies answer).
pub fn health_routes<R: Readiness>(readiness: R) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    let checks = readiness.checks().await;
                    let ready = checks.iter().all(|(name, ok)| *ok || !readiness.required(name));
                    let details: serde_json::Map<String, Value> = checks
                        .into_iter()
                        .map(|(name, ok)| (name.to_string(), json!(if ok { "ok" } else { "failing" })))
                        .collect();
                    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    (status, Json(json!({"status": if ready {"ready"} else {"not ready"}, "checks": details})))
                }
            }),
        )
}

/// Binds `addr` (port 0 picks a free port) and reports the bound address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Sets `TCP_NODELAY` on every accepted connection (`axum::serve` leaves Nagle's algorithm on).
/// A streamed answer (the live feeds, an event stream passed on by the gateway) is many small
/// writes on one connection: with Nagle on, each waits until the previous one is acknowledged,
/// and the peer holds that acknowledgement back for up to 40 ms when it has nothing to send.
pub fn without_nagle(listener: TcpListener) -> TapIo<TcpListener, fn(&mut TcpStream)> {
    listener.tap_io(set_nodelay)
}

fn set_nodelay(tcp: &mut TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
    }
}

/// Serves `router` until `cancel` fires, then lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(
        without_nagle(listener),
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { cancel.cancelled().await })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener as _;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_writes_without_waiting() {
        let (listener, addr) = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let mut listener = without_nagle(listener);
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn paging_defaults_and_bounds() {
        assert_eq!(
            Paging::new(None, None).unwrap(),
            Paging {
                limit: 100,
                offset: 0
            }
        );
        assert_eq!(
            Paging::new(Some(5), Some(10)).unwrap(),
            Paging {
                limit: 5,
                offset: 10
            }
        );
        for (limit, offset) in [(Some(0), None), (Some(1001), None), (None, Some(-1))] {
            assert_eq!(
                Paging::new(limit, offset).unwrap_err().status,
                StatusCode::BAD_REQUEST
            );
        }
    }

    #[test]
    fn an_unknown_choice_names_the_allowed_values() {
        let parse = |s: &str| (s == "A").then_some(1);
        assert_eq!(
            parse_choice("status", Some("A"), parse, &["A"]).unwrap(),
            Some(1)
        );
        assert_eq!(parse_choice("status", None, parse, &["A"]).unwrap(), None);
        let problem = parse_choice("status", Some("B"), parse, &["A", "C"]).unwrap_err();
        assert_eq!(problem.status, StatusCode::BAD_REQUEST);
        assert!(problem.detail.contains("A, C"));
    }
}
