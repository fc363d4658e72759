//! The reverse proxy: which path goes to which service and who may call it, then forwarding
//! the call with the caller's verified identity in headers.
//!
//! Routes are checked against the path as it will be sent (dot segments resolved), so
//! `/bookings/../sagas` cannot slip past the admin check for `/sagas`.
//!
//! Every upstream call goes through that service's circuit breaker ([`crate::breaker`]) and is
//! bounded by the upstream timeout; answers are read whole, except event streams, which are
//! passed on as they arrive once their headers came in time.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, FromRequest, Request, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
    Router,
};
use platform::{
    http::{
        Identity, Problem, REQUEST_ID_HEADER, USER_EMAIL_HEADER, USER_ID_HEADER, USER_ROLES_HEADER,
    },
    trace::{self, TraceParent},
};
use reqwest::Url;

use crate::{
    auth::{AuthError, Verifier},
    breaker::Breakers,
    config::{Config, Service},
};

/// Largest request body the gateway accepts.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What a caller needs, beyond a valid token, to use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Any authenticated caller; the service checks ownership.
    User,
    /// Only admins.
    Admin,
    /// Anyone may read, only admins may change.
    AdminToChange,
}

pub(crate) struct Route {
    /// Matches this path and everything below it.
    prefix: &'static str,
    service: Service,
    access: Access,
}

const ROUTES: &[Route] = &[
    Route {
        prefix: "/bookings",
        service: Service::Booking,
        access: Access::User,
    },
    Route {
        prefix: "/rooms",
        service: Service::Booking,
        access: Access::AdminToChange,
    },
    Route {
        prefix: "/confirms",
        service: Service::Confirm,
        access: Access::Admin,
    },
    Route {
        prefix: "/sagas",
        service: Service::Orchestrator,
        access: Access::Admin,
    },
    Route {
        prefix: "/notifications",
        service: Service::Notification,
        access: Access::User,
    },
    Route {
        prefix: "/bookingLists",
        service: Service::BookingList,
        access: Access::User,
    },
];

pub(crate) fn route_for(path: &str) -> Option<&'static Route> {
    ROUTES.iter().find(|r| {
        path.strip_prefix(r.prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Request headers passed on as they came; everything else (cookies, hop-by-hop headers, the
/// caller's attempts at identity headers) stays behind.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static(REQUEST_ID_HEADER),
];

/// Response headers passed back: the content type, where a created resource lives, the
/// upstream's own retry advice, and whether a retried POST was answered from its first result.
const RETURNED_RESPONSE_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    header::RETRY_AFTER,
    HeaderName::from_static("idempotent-replayed"),
];

/// Seconds a client is told to wait after an upstream failed to answer.
const RETRY_AFTER_SECS: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no route")]
    NoRoute,
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    #[error("{0} needs the admin role")]
    NotAdmin(&'static str),
    #[error("{} is not deployed", .0.name())]
    NotDeployed(Service),
    #[error("the body is larger than {BODY_LIMIT} bytes")]
    TooLarge,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("{} did not answer within {timeout:?}", service.name())]
    Timeout { service: Service, timeout: Duration },
    #[error("the circuit of {} is open", service.name())]
    CircuitOpen { service: Service, retry_after: u64 },
    #[error("{} is unreachable", service.name())]
    Unreachable {
        service: Service,
        #[source]
        source: reqwest::Error,
    },
    #[error("{} failed with {status} and no problem details", service.name())]
    UpstreamFailed {
        service: Service,
        status: StatusCode,
    },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        match self {
            ProxyError::NoRoute => Problem::not_found("no such route").into_response(),
            ProxyError::Unauthenticated(e) => {
                let unauthorized = e.is_unauthorized();
                let mut response = Problem::from(e).into_response();
                if unauthorized {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"roombook\""),
                    );
                }
                response
            }
            ProxyError::NotAdmin(what) => {
                Problem::forbidden(format!("{what} needs the admin role")).into_response()
            }
            ProxyError::NotDeployed(service) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-deployed",
                "Service not deployed",
                format!("the {} service is not deployed here", service.name()),
            )
            .into_response(),
            ProxyError::TooLarge => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                "Payload too large",
                format!("the request body may be at most {BODY_LIMIT} bytes"),
            )
            .into_response(),
            ProxyError::BadRequest(why) => Problem::bad_request(why).into_response(),
            ProxyError::Timeout { service, timeout } => {
                tracing::warn!(service = service.name(), ?timeout, "upstream timed out");
                Problem::unavailable(
                    format!(
                        "the {} service did not answer in time; try again shortly",
                        service.name()
                    ),
                    RETRY_AFTER_SECS,
                )
                .into_response()
            }
            ProxyError::CircuitOpen {
                service,
                retry_after,
            } => {
                let mut problem = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "circuit-open",
                    "Service unavailable",
                    format!(
                        "the {} service keeps failing, so calls to it are paused; try again after {retry_after} s",
                        service.name()
                    ),
                )
                .with_extra(serde_json::json!({ "service": service.name() }));
                problem.retry_after = Some(retry_after);
                problem.into_response()
            }
            ProxyError::Unreachable { service, source } => {
                tracing::warn!(service = service.name(), error = %error_chain(&source), "upstream unreachable");
                Problem::unavailable(
                    format!(
                        "the {} service is unavailable; try again shortly",
                        service.name()
                    ),
                    RETRY_AFTER_SECS,
                )
                .into_response()
            }
            ProxyError::UpstreamFailed { service, status } => {
                tracing::error!(service = service.name(), %status, "upstream failed without problem details");
                Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream-failed",
                    "Upstream failed",
                    format!("the {} service failed; it has been logged", service.name()),
                )
                .into_response()
            }
            ProxyError::Unexpected(e) => Problem::internal(&e).into_response(),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(crate) struct Proxy {
    client: reqwest::Client,
    upstreams: BTreeMap<Service, Url>,
    verifier: Verifier,
    timeout: Duration,
    breakers: Breakers,
}

/// The proxied routes (without the health probes and common layers), authenticating callers
/// with `verifier`.
pub fn routes(config: &Config, client: reqwest::Client, verifier: Verifier) -> Router {
    let proxy = Arc::new(Proxy {
        client,
        upstreams: config.upstreams.clone(),
        verifier,
        timeout: config.upstream_timeout,
        breakers: Breakers::new(config.breaker),
    });
    let mut router = Router::new();
    for route in ROUTES {
        router = router
            .route(route.prefix, any(forward))
            .route(&format!("{}/{{*rest}}", route.prefix), any(forward));
    }
    router
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(proxy)
}

async fn forward(
    State(proxy): State<Arc<Proxy>>,
    request: Request,
) -> Result<Response, ProxyError> {
    proxy.forward(request).await
}

impl Proxy {
    async fn forward(&self, request: Request) -> Result<Response, ProxyError> {
        let (parts, body) = request.into_parts();
        let target = resolve(&parts.uri)?;
        let route = route_for(target.path()).ok_or(ProxyError::NoRoute)?;
        let identity = self.verifier.authenticate(&parts.headers).await?;
        authorize(route, &parts.method, &identity)?;
        let base = self
            .upstreams
            .get(&route.service)
            .ok_or(ProxyError::NotDeployed(route.service))?;
        let headers = upstream_headers(&parts.headers, &identity);
        let method = parts.method.clone();
        let body = Bytes::from_request(Request::from_parts(parts, body), &())
            .await
            .map_err(|rejection| match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ProxyError::TooLarge,
                _ => ProxyError::BadRequest(rejection.body_text()),
            })?;
        if crate::compat::is_decision_by_booking(&method, target.path()) {
            return crate::compat::decide_by_booking(self, base, headers, &body).await;
        }
        let url = upstream_url(base, &target)?;
        let request = self.client.request(method, url).headers(headers).body(body);
        Ok(self.call(route.service, request).await?.into_response())
    }

    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `request` to `service` through its circuit breaker, within the upstream timeout.
    pub(crate) async fn call(
        &self,
        service: Service,
        request: reqwest::RequestBuilder,
    ) -> Result<Answer, ProxyError> {
        if !self.breakers.permits(service) {
            return Err(ProxyError::CircuitOpen {
                service,
                retry_after: self.breakers.retry_after_secs(),
            });
        }
        let result = self.exchange(service, request).await;
        let healthy = matches!(&result, Ok(answer) if !answer.status.is_server_error());
        self.breakers.record(service, healthy);
        let answer = result?;
        if answer.status.is_server_error() && !is_json(&answer.headers) {
            return Err(ProxyError::UpstreamFailed {
                service,
                status: answer.status,
            });
        }
        Ok(answer)
    }

    async fn exchange(
        &self,
        service: Service,
        request: reqwest::RequestBuilder,
    ) -> Result<Answer, ProxyError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = |_| ProxyError::Timeout {
            service,
            timeout: self.timeout,
        };
        let answer = tokio::time::timeout_at(deadline, request.send())
            .await
            .map_err(timed_out)?
            .map_err(|e| self.upstream_error(service, e))?;
        let status = answer.status();
        let mut headers = HeaderMap::new();
        for name in RETURNED_RESPONSE_HEADERS {
            if let Some(value) = answer.headers().get(&name) {
                headers.insert(name, value.clone());
            }
        }
        // An event stream runs as long as the caller listens: only its start is timed.
        if status.is_success() && is_event_stream(&headers) {
            return Ok(Answer {
                status,
                headers,
                body: AnswerBody::Stream(answer),
            });
        }
        let bytes = tokio::time::timeout_at(deadline, answer.bytes())
            .await
            .map_err(timed_out)?
            .map_err(|e| self.upstream_error(service, e))?;
        Ok(Answer {
            status,
            headers,
            body: AnswerBody::Full(bytes),
        })
    }

    fn upstream_error(&self, service: Service, e: reqwest::Error) -> ProxyError {
        if e.is_timeout() {
            ProxyError::Timeout {
                service,
                timeout: self.timeout,
            }
        } else {
            ProxyError::Unreachable { service, source: e }
        }
    }
}

/// What an upstream answered, with the headers that are passed back.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: AnswerBody,
}

pub(crate) enum AnswerBody {
    Full(Bytes),
    /// Passed on as it arrives (server-sent events).
    Stream(reqwest::Response),
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let body = match self.body {
            AnswerBody::Full(bytes) => Body::from(bytes),
            AnswerBody::Stream(answer) => Body::from_stream(answer.bytes_stream()),
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// The request's path and query as they will be sent, with dot segments resolved.
fn resolve(uri: &axum::http::Uri) -> Result<Url, ProxyError> {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    Url::parse(&format!("http://gateway.invalid{path_and_query}"))
        .map_err(|e| ProxyError::BadRequest(format!("cannot parse the request path: {e}")))
}

fn upstream_url(base: &Url, target: &Url) -> Result<Url, ProxyError> {
    let mut url = format!("{}{}", base.as_str().trim_end_matches('/'), target.path());
    if let Some(query) = target.query() {
        url.push('?');
        url.push_str(query);
    }
    Url::parse(&url)
        .with_context(|| format!("building the upstream URL {url:?}"))
        .map_err(ProxyError::Unexpected)
}

fn authorize(route: &Route, method: &Method, identity: &Identity) -> Result<(), ProxyError> {
    let needs_admin = match route.access {
        Access::User => false,
        Access::Admin => true,
        Access::AdminToChange => !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS),
    };
    if needs_admin && !identity.is_admin() {
        return Err(ProxyError::NotAdmin(route.prefix));
    }
    Ok(())
}

/// The headers sent upstream: the allowed ones as they came, a trace context (continued or
/// new), and the identity from the verified token, never from the caller.
fn upstream_headers(incoming: &HeaderMap, identity: &Identity) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in FORWARDED_REQUEST_HEADERS {
        for value in incoming.get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let traceparent = TraceParent::from_http(incoming);
    insert(&mut headers, trace::HEADER, &traceparent.to_string());
    insert(&mut headers, USER_ID_HEADER, &identity.user_id);
    if let Some(email) = &identity.email {
        insert(&mut headers, USER_EMAIL_HEADER, email);
    }
    insert(&mut headers, USER_ROLES_HEADER, &identity.roles.join(","));
    headers
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    // The verifier only lets header-safe claims through, and a traceparent is hex.
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.insert(HeaderName::from_static(name), value);
        }
        Err(_) => tracing::error!(header = name, "value not allowed in a header; dropped"),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    content_type(headers).is_some_and(|ct| ct.contains("json"))
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    content_type(headers).is_some_and(|ct| ct.starts_with("text/event-stream"))
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_whole_segments_only() {
        assert_eq!(
            route_for("/bookings").map(|r| r.service),
            Some(Service::Booking)
        );
        assert_eq!(
            route_for("/bookings/42").map(|r| r.service),
            Some(Service::Booking)
        );
        assert_eq!(
            route_for("/bookingLists/7").map(|r| r.service),
            Some(Service::BookingList)
        );
        assert!(route_for("/bookingsX").is_none());
        assert!(route_for("/").is_none());
    }

    #[test]
    fn dot_segments_are_resolved_before_routing() {
        let target = resolve(&"/bookings/../sagas?state=x".parse().unwrap()).unwrap();
        assert_eq!(target.path(), "/sagas");
        assert_eq!(
            route_for(target.path()).map(|r| r.access),
            Some(Access::Admin)
        );
        let encoded = resolve(&"/rooms/%2e%2e/sagas".parse().unwrap()).unwrap();
        assert_eq!(encoded.path(), "/sagas");
    }

    #[test]
    fn the_upstream_url_keeps_a_base_path_and_the_query() {
        let base = Url::parse("http://booking:8081/api/").unwrap();
        let target = resolve(&"/rooms/1/availability?day=2025-01-01".parse().unwrap()).unwrap();
        assert_eq!(
            upstream_url(&base, &target).unwrap().as_str(),
            "http://booking:8081/api/rooms/1/availability?day=2025-01-01"
        );
    }
}
