use std::{process::Stdio, time::Duration};

use roombook_gateway::{Config, JwtConfig, Service, Verifier};
use tokio::process::Command;

use crate::helpers::{echoed, spawn_app, spawn_echo, SECRET};

fn gateway_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_roombook-gateway"));
    command
        .env_remove("JWT_SECRET")
        .env_remove("JWT_JWKS_URL")
        .env_remove("JWT_JWKS_REFRESH_SECS")
        .env_remove("DEV_TOKENS")
        .env_remove("JWT_ISSUER")
        .env_remove("JWT_AUDIENCE")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn mint_token_prints_only_a_token_that_the_gateway_accepts() {
    let output = gateway_binary()
        .args([
            "mint-token",
            "--user",
            "alice",
            "--email",
            "alice@example.com",
            "--admin",
            "--ttl-hours",
            "1",
        ])
        .env("JWT_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout.trim_end_matches('\n');
    assert_eq!(
        token.lines().count(),
        1,
        "stdout holds only the token: {stdout:?}"
    );

    let identity = Verifier::new(&JwtConfig::with_secret(SECRET))
        .verify(token)
        .await
        .unwrap();
    assert_eq!(identity.user_id, "alice");
    assert_eq!(identity.email.as_deref(), Some("alice@example.com"));
    assert!(identity.is_admin());

    // And the running gateway lets it through to an admin-only route.
    let orchestrator = spawn_echo("orchestrator").await;
    let app =
        spawn_app(Config::for_test(SECRET).with_upstream(Service::Orchestrator, &orchestrator.url))
            .await;
    let body = echoed(app.get("/sagas", token).send().await.unwrap()).await;
    assert_eq!(body["headers"]["userRoles"], "user,admin");
}

#[tokio::test]
async fn mint_token_uses_the_configured_issuer_and_audience() {
    let output = gateway_binary()
        .args(["mint-token", "--user", "bob"])
        .env("JWT_SECRET", SECRET)
        .env("JWT_ISSUER", "corp")
        .env("JWT_AUDIENCE", "rooms")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let jwt = JwtConfig {
        issuer: "corp".into(),
        audience: "rooms".into(),
        ..JwtConfig::with_secret(SECRET)
    };
    let identity = Verifier::new(&jwt).verify(token.trim()).await.unwrap();
    assert_eq!(
        (identity.user_id.as_str(), identity.roles.as_slice()),
        ("bob", &["user".to_string()][..])
    );
    assert!(Verifier::new(&JwtConfig::with_secret(SECRET))
        .verify(token.trim())
        .await
        .is_err());
}

#[tokio::test]
async fn mint_token_without_jwt_secret_fails_and_prints_nothing() {
    let output = gateway_binary()
        .args(["mint-token", "--user", "alice"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("JWT_SECRET"));
}

#[tokio::test]
async fn the_gateway_refuses_to_start_without_jwt_secret() {
    let child = gateway_binary()
        .env("HTTP_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Were it to start, it would serve until killed; the bound turns that into a failure.
    let output = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the gateway started without JWT_SECRET")
        .unwrap();
    assert!(!output.status.success());
    let logs = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("JWT_SECRET"), "{logs}");
}

#[tokio::test]
async fn an_unknown_command_is_a_usage_error() {
    let output = gateway_binary().arg("mint-tokens").output().await.unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage"));
}
