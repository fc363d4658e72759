use std::{net::SocketAddr, time::Duration};

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json, Router,
};
use platform::runtime::RunningService;
use roombook_gateway::{mint_token, Config, JwtConfig};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "a-test-secret-of-at-least-thirty-two-bytes";

/// An upstream that answers every request with what it received, as JSON. `?status=NNN` picks
/// the status; `?plain=1` answers text instead of JSON.
pub struct Echo {
    pub url: String,
    cancel: CancellationToken,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub async fn spawn_echo(name: &'static str) -> Echo {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(echo).with_state(name);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
    });
    Echo {
        url: format!("http://{addr}"),
        cancel,
    }
}

async fn echo(
    State(name): State<&'static str>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri.query().unwrap_or("");
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
    };
    let status = param("status")
        .and_then(|s| s.parse().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if param("plain").is_some() {
        return (status, "plain text failure").into_response();
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let received = json!({
        "service": name,
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "bodyLen": body.len(),
        "headers": {
            "userId": header("x-roombook-user-id"),
            "userEmail": header("x-roombook-user-email"),
            "userRoles": header("x-roombook-user-roles"),
            "traceparent": header("traceparent"),
            "requestId": header("x-request-id"),
            "idempotencyKey": header("idempotency-key"),
            "contentType": header("content-type"),
            "authorization": header("authorization"),
            "cookie": header("cookie"),
        },
    });
    let mut response = (status, Json(received)).into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, "/echoed".parse().unwrap());
    response
}

/// A base URL nothing listens on.
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A listener that takes connections (the kernel queues them) but never answers.
pub fn hanging_upstream() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    service: RunningService,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.service.stop();
    }
}

pub async fn spawn_app(config: Config) -> TestApp {
    let service = roombook_gateway::spawn(config, CancellationToken::new())
        .await
        .unwrap();
    TestApp {
        addr: service.addr,
        client: reqwest::Client::builder()
            .no_proxy()
            // Any test that hangs fails instead.
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        service,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(token)
    }

    pub fn post(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path)).bearer_auth(token)
    }
}

pub fn token(user: &str, roles: &[&str]) -> String {
    let jwt = JwtConfig::with_secret(SECRET);
    mint_token(
        SECRET,
        &jwt.issuer,
        &jwt.audience,
        user,
        Some(&format!("{user}@example.com")),
        roles,
        Duration::from_secs(3600),
    )
}

pub fn user_token() -> String {
    token("alice", &["user"])
}

pub fn admin_token() -> String {
    token("root", &["user", "admin"])
}

/// Asserts a problem+json answer with `status` and returns its body.
pub async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("/problems/")),
        "{body}"
    );
    body
}

/// The JSON an echo upstream answered with, after checking the call succeeded.
pub async fn echoed(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}
