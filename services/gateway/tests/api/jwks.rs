//! RS256/ES256 tokens checked with keys from a JWK set served over HTTP, generated in the test.

use std::{
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use roombook_gateway::{Config, JwksConfig, JwtConfig, Service};
use rsa::{pkcs1::EncodeRsaPrivateKey, traits::PublicKeyParts, RsaPrivateKey};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    assert_problem, echoed, spawn_app, spawn_echo, user_token, Echo, TestApp, SECRET,
};

/// A signing key and its public half as a JWK.
struct TestKey {
    kid: &'static str,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn rsa_key(kid: &'static str) -> TestKey {
    let private = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let der = private.to_pkcs1_der().unwrap();
    let public = private.to_public_key();
    TestKey {
        kid,
        algorithm: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(der.as_bytes()),
        jwk: json!({
            "kty": "RSA",
            "kid": kid,
            "use": "sig",
            "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }),
    }
}

fn ec_key(kid: &'static str) -> TestKey {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    // An uncompressed point: 0x04, then x and y.
    let point = pair.public_key().as_ref();
    TestKey {
        kid,
        algorithm: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "EC",
            "kid": kid,
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }),
    }
}

/// RSA keys take a moment to generate, so the tests share them.
struct Keys {
    a: TestKey,
    b: TestKey,
    /// Never published.
    stranger: TestKey,
    ec: TestKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        a: rsa_key("key-a"),
        b: rsa_key("key-b"),
        stranger: rsa_key("stranger"),
        ec: ec_key("key-ec"),
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"sub": "carol", "roles": ["user"], "iss": "roombook", "aud": "roombook-api", "exp": now() + 3600})
}

/// `claims` signed by `key`, naming `kid` as its key.
fn signed_as(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(key.algorithm);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, &key.encoding).unwrap()
}

fn signed(key: &TestKey) -> String {
    signed_as(key, Some(key.kid), &claims())
}

/// Serves `GET /jwks.json` with the keys it is given, counting the requests; while unavailable
/// it answers 500.
struct JwksServer {
    url: String,
    state: JwksState,
    cancel: CancellationToken,
}

#[derive(Clone)]
struct JwksState {
    keys: Arc<Mutex<Vec<Value>>>,
    available: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn jwks_server(keys: &[&TestKey]) -> JwksServer {
    let state = JwksState {
        keys: Arc::default(),
        available: Arc::new(AtomicBool::new(true)),
        hits: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let router = Router::new()
        .route("/jwks.json", get(serve_jwks))
        .with_state(state.clone());
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
    });
    let server = JwksServer { url, state, cancel };
    server.publish(keys);
    server
}

async fn serve_jwks(State(state): State<JwksState>) -> impl IntoResponse {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if !state.available.load(Ordering::SeqCst) {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({}))).into_response();
    }
    let keys = state.keys.lock().unwrap().clone();
    Json(json!({ "keys": keys })).into_response()
}

impl JwksServer {
    fn publish(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn set_available(&self, available: bool) {
        self.state.available.store(available, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

/// The gateway in front of a booking echo, checking tokens with `jwt`.
async fn app_with(jwt: JwtConfig) -> (TestApp, Echo) {
    let booking = spawn_echo("booking").await;
    let mut config = Config::for_test(SECRET).with_upstream(Service::Booking, &booking.url);
    config.jwt = jwt;
    (spawn_app(config).await, booking)
}

async fn jwks_only(jwks: &JwksServer) -> (TestApp, Echo) {
    app_with(JwtConfig::with_jwks(JwksConfig::new(&jwks.url).unwrap())).await
}

async fn assert_refused(app: &TestApp, token: &str) -> Value {
    let response = app.get("/bookings", token).send().await.unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"roombook\""
    );
    assert_problem(response, 401).await
}

#[tokio::test]
async fn rs256_and_es256_tokens_signed_with_a_published_key_are_accepted() {
    let keys = keys();
    let jwks = jwks_server(&[&keys.a, &keys.ec]).await;
    let (app, _booking) = jwks_only(&jwks).await;

    for key in [&keys.a, &keys.ec] {
        let body = echoed(app.get("/bookings", &signed(key)).send().await.unwrap()).await;
        assert_eq!(body["headers"]["userId"], "carol", "{:?}", key.algorithm);
        assert_eq!(body["headers"]["userRoles"], "user");
    }
}

#[tokio::test]
async fn tokens_with_a_wrong_key_signature_issuer_or_expiry_are_refused() {
    let keys = keys();
    let jwks = jwks_server(&[&keys.a, &keys.ec]).await;
    let (app, _booking) = jwks_only(&jwks).await;

    // A kid the set does not have.
    let body = assert_refused(&app, &signed(&keys.stranger)).await;
    assert_eq!(body["detail"], "the token's signing key is not known");
    // No kid at all.
    let body = assert_refused(&app, &signed_as(&keys.a, None, &claims())).await;
    assert_eq!(
        body["detail"],
        "the token does not name its signing key (`kid`)"
    );
    // A published kid, but signed by another key.
    let body = assert_refused(&app, &signed_as(&keys.stranger, Some("key-a"), &claims())).await;
    assert_eq!(body["detail"], "the token's signature is not valid");
    // A valid token whose claims were changed afterwards.
    let valid = signed(&keys.a);
    let parts: Vec<&str> = valid.split('.').collect();
    let mut admin = claims();
    admin["roles"] = json!(["user", "admin"]);
    let forged_payload = URL_SAFE_NO_PAD.encode(admin.to_string());
    let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    let body = assert_refused(&app, &tampered).await;
    assert_eq!(body["detail"], "the token's signature is not valid");
    // An RS256 key named by an ES256 token.
    let body = assert_refused(&app, &signed_as(&keys.ec, Some("key-a"), &claims())).await;
    assert_eq!(
        body["detail"],
        "the token's algorithm does not match its signing key"
    );
    // Another issuer.
    let mut foreign = claims();
    foreign["iss"] = json!("someone-else");
    let body = assert_refused(&app, &signed_as(&keys.a, Some("key-a"), &foreign)).await;
    assert_eq!(body["detail"], "the token was not issued for this API");
    // Expired.
    let mut expired = claims();
    expired["exp"] = json!(now() - 600);
    let body = assert_refused(&app, &signed_as(&keys.a, Some("key-a"), &expired)).await;
    assert_eq!(body["detail"], "the token has expired");
}

#[tokio::test]
async fn hs256_tokens_are_refused_when_only_the_jwk_set_is_configured() {
    let keys = keys();
    let jwks = jwks_server(&[&keys.a]).await;
    let (app, _booking) = jwks_only(&jwks).await;

    let body = assert_refused(&app, &user_token()).await;
    assert_eq!(
        body["detail"],
        "tokens signed with HS256 are not accepted here"
    );
    // Nor can the public key be turned into an HS256 secret.
    let n = keys.a.jwk["n"].as_str().unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("key-a".into());
    let confused = encode(&header, &claims(), &EncodingKey::from_secret(n.as_bytes())).unwrap();
    assert_refused(&app, &confused).await;
    // And `none` stays refused.
    let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"key-a"}"#);
    let payload = signed(&keys.a).split('.').nth(1).unwrap().to_string();
    assert_refused(&app, &format!("{none}.{payload}.")).await;
}

#[tokio::test]
async fn with_both_configured_hs256_and_rs256_tokens_are_accepted() {
    let keys = keys();
    let jwks = jwks_server(&[&keys.a]).await;
    let mut jwt = JwtConfig::with_secret(SECRET);
    jwt.jwks = Some(JwksConfig::new(&jwks.url).unwrap());
    let (app, _booking) = app_with(jwt).await;

    let body = echoed(app.get("/bookings", &user_token()).send().await.unwrap()).await;
    assert_eq!(body["headers"]["userId"], "alice");
    let body = echoed(app.get("/bookings", &signed(&keys.a)).send().await.unwrap()).await;
    assert_eq!(body["headers"]["userId"], "carol");
    // An RS256 token is still checked against the set, not the secret.
    assert_refused(&app, &signed(&keys.stranger)).await;
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_when_a_token_names_it() {
    let keys = keys();
    let jwks = jwks_server(&[&keys.a]).await;
    let (app, _booking) = jwks_only(&jwks).await;
    echoed(app.get("/bookings", &signed(&keys.a)).send().await.unwrap()).await;
    assert_eq!(jwks.hits(), 1, "fetched once at start-up");

    // The provider rotates: it now signs with B and no longer publishes A.
    jwks.publish(&[&keys.b]);
    let body = echoed(app.get("/bookings", &signed(&keys.b)).send().await.unwrap()).await;
    assert_eq!(body["headers"]["userId"], "carol");
    assert_eq!(jwks.hits(), 2, "fetched again for the unknown kid");

    // A is gone with the set it came in.
    let body = assert_refused(&app, &signed(&keys.a)).await;
    assert_eq!(body["detail"], "the token's signing key is not known");
    // Unknown kids within 30 s of that fetch do not cause another one.
    assert_refused(&app, &signed(&keys.stranger)).await;
    assert_eq!(jwks.hits(), 2, "refetching is rate-limited");
}

#[tokio::test]
async fn until_the_jwk_set_is_loaded_rs256_tokens_get_503_and_hs256_tokens_pass() {
    let keys = keys();
    let jwks = jwks_server(&[&keys.a]).await;
    jwks.set_available(false);
    let mut jwks_config = JwksConfig::new(&jwks.url).unwrap();
    // Every request may fetch again, so the test need not wait out the interval.
    jwks_config.min_refetch_interval = Duration::ZERO;
    let mut jwt = JwtConfig::with_secret(SECRET);
    jwt.jwks = Some(jwks_config);
    let (app, _booking) = app_with(jwt).await;

    let response = app.get("/bookings", &signed(&keys.a)).send().await.unwrap();
    assert!(response.headers().get("www-authenticate").is_none());
    assert_eq!(response.headers()["retry-after"], "5");
    let body = assert_problem(response, 503).await;
    assert_eq!(
        body["detail"],
        "the keys that check this token are not loaded yet; try again shortly"
    );
    echoed(app.get("/bookings", &user_token()).send().await.unwrap()).await;

    jwks.set_available(true);
    let body = echoed(app.get("/bookings", &signed(&keys.a)).send().await.unwrap()).await;
    assert_eq!(body["headers"]["userId"], "carol");
}

#[tokio::test]
async fn a_failed_refetch_keeps_the_keys_loaded_before() {
    let keys = keys();
    let jwks = jwks_server(&[&keys.a]).await;
    let mut jwks_config = JwksConfig::new(&jwks.url).unwrap();
    jwks_config.min_refetch_interval = Duration::ZERO;
    let (app, _booking) = app_with(JwtConfig::with_jwks(jwks_config)).await;
    echoed(app.get("/bookings", &signed(&keys.a)).send().await.unwrap()).await;

    jwks.set_available(false);
    // An unknown kid makes the gateway fetch again, which fails...
    assert_refused(&app, &signed(&keys.stranger)).await;
    assert_eq!(jwks.hits(), 2);
    // ...and A's tokens still pass.
    echoed(app.get("/bookings", &signed(&keys.a)).send().await.unwrap()).await;
}

fn gateway_binary() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_roombook-gateway"));
    command
        .env_remove("JWT_SECRET")
        .env_remove("JWT_JWKS_URL")
        .env_remove("JWT_JWKS_REFRESH_SECS")
        .env_remove("DEV_TOKENS")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the gateway with `env` and returns its logs, asserting it refused to start.
async fn refused_start(env: &[(&str, &str)]) -> String {
    let child = gateway_binary().envs(env.iter().copied()).spawn().unwrap();
    // Were it to start, it would serve until killed; the bound turns that into a failure.
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the gateway started with {env:?}"))
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

#[tokio::test]
async fn the_gateway_refuses_to_start_with_a_bad_token_configuration() {
    // Neither a secret nor a JWK set.
    let logs = refused_start(&[]).await;
    assert!(
        logs.contains("JWT_SECRET") && logs.contains("JWT_JWKS_URL"),
        "{logs}"
    );
    // A JWK set URL that is not plain http.
    let logs = refused_start(&[("JWT_JWKS_URL", "https://idp.example.com/jwks.json")]).await;
    assert!(logs.contains("only http://"), "{logs}");
    // A refresh interval that is not a positive number.
    let logs = refused_start(&[
        ("JWT_JWKS_URL", "http://127.0.0.1:9/jwks.json"),
        ("JWT_JWKS_REFRESH_SECS", "0"),
    ])
    .await;
    assert!(logs.contains("JWT_JWKS_REFRESH_SECS"), "{logs}");
    // Dev tokens need the secret that signs them.
    let logs = refused_start(&[
        ("JWT_JWKS_URL", "http://127.0.0.1:9/jwks.json"),
        ("DEV_TOKENS", "true"),
    ])
    .await;
    assert!(
        logs.contains("DEV_TOKENS") && logs.contains("JWT_SECRET"),
        "{logs}"
    );
}

#[tokio::test]
async fn mint_token_needs_jwt_secret_even_with_a_jwk_set() {
    let output = gateway_binary()
        .args(["mint-token", "--user", "alice"])
        .env("JWT_JWKS_URL", "http://127.0.0.1:9/jwks.json")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("JWT_SECRET"));
}

#[tokio::test]
async fn an_unreachable_jwk_set_does_not_stop_the_gateway_from_starting() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut child = gateway_binary()
        .env(
            "JWT_JWKS_URL",
            format!("{}/jwks.json", crate::helpers::dead_url()),
        )
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if event["message"] == "gateway listening" {
                return event["addr"].as_str().unwrap().to_string();
            }
        }
        panic!("the gateway exited without listening");
    })
    .await
    .expect("the gateway did not start");

    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Authentication comes before the upstream is called.
    let response = client
        .get(format!("http://{addr}/bookings"))
        .bearer_auth(signed(&keys().a))
        .send()
        .await
        .unwrap();
    let body = assert_problem(response, 503).await;
    assert_eq!(
        body["detail"],
        "the keys that check this token are not loaded yet; try again shortly"
    );
}
