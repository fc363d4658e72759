use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json, Router,
};
use platform::runtime::RunningService;
use roombook_gateway::{mint_token, Config, JwtConfig};
use serde_json::{json, Value};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "a-test-secret-of-at-least-thirty-two-bytes";

/// An upstream that answers every request with what it received, as JSON. `?status=NNN` picks
/// the status; `?plain=1` answers text instead of JSON; `?sse=1` answers an event stream that
/// sends one event and then stays open. It counts the requests it gets, and can be stopped and
/// started again on the same port.
pub struct Echo {
    pub url: String,
    addr: SocketAddr,
    state: EchoState,
    server: Option<(CancellationToken, JoinHandle<()>)>,
}

#[derive(Clone)]
struct EchoState {
    name: &'static str,
    hits: Arc<AtomicUsize>,
    gate: Option<Gate>,
}

/// Holds every request until opened, reporting each arrival first.
#[derive(Clone)]
struct Gate {
    arrivals: mpsc::UnboundedSender<()>,
    open: watch::Receiver<bool>,
}

/// The test's side of a gated echo.
pub struct GateControl {
    /// One message per request that reached the upstream and is being held.
    pub arrivals: mpsc::UnboundedReceiver<()>,
    open: watch::Sender<bool>,
}

impl GateControl {
    /// Lets every held request, and all later ones, through.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some((cancel, _)) = &self.server {
            cancel.cancel();
        }
    }
}

pub async fn spawn_echo(name: &'static str) -> Echo {
    spawn_echo_with(name, None).await
}

/// An echo that holds every request until the returned control opens it.
pub async fn spawn_gated_echo(name: &'static str) -> (Echo, GateControl) {
    let (arrivals_tx, arrivals) = mpsc::unbounded_channel();
    let (open, open_rx) = watch::channel(false);
    let gate = Gate {
        arrivals: arrivals_tx,
        open: open_rx,
    };
    (
        spawn_echo_with(name, Some(gate)).await,
        GateControl { arrivals, open },
    )
}

async fn spawn_echo_with(name: &'static str, gate: Option<Gate>) -> Echo {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut echo = Echo {
        url: format!("http://{addr}"),
        addr,
        state: EchoState {
            name,
            hits: Arc::default(),
            gate,
        },
        server: None,
    };
    echo.serve(listener);
    echo
}

impl Echo {
    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Stops serving and waits until the port is closed: calls to it are refused.
    pub async fn stop(&mut self) {
        if let Some((cancel, handle)) = self.server.take() {
            cancel.cancel();
            handle.await.unwrap();
        }
    }

    /// Serves again on the same port.
    pub async fn start_again(&mut self) {
        assert!(self.server.is_none(), "still running");
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let router = Router::new().fallback(echo).with_state(self.state.clone());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let handle = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        self.server = Some((cancel, handle));
    }
}

async fn echo(
    State(state): State<EchoState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(gate) = &state.gate {
        let _ = gate.arrivals.send(());
        let mut open = gate.open.clone();
        open.wait_for(|open| *open).await.unwrap();
    }
    let name = state.name;
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
    if param("sse").is_some() {
        let first = futures::stream::once(async {
            Ok::<_, Infallible>(Bytes::from_static(b"event: ready\ndata: {}\n\n"))
        });
        let events = futures::StreamExt::chain(first, futures::stream::pending());
        return (
            [(header::CONTENT_TYPE, "text/event-stream")],
            Body::from_stream(events),
        )
            .into_response();
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
