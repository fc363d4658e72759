//! The web page served from `WEB_DIR`, and dev tokens only when `DEV_TOKENS` is on.

use roombook_gateway::{Config, JwtConfig, Verifier};
use serde_json::Value;

use crate::helpers::{spawn_app, SECRET};

fn page_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("index.html"),
        "<!doctype html><title>Roombook</title>",
    )
    .unwrap();
    std::fs::write(dir.path().join("app.js"), "console.log('roombook')").unwrap();
    dir
}

#[tokio::test]
async fn the_page_is_served_at_app_and_the_root_leads_there() {
    let dir = page_dir();
    let mut config = Config::for_test(SECRET);
    config.web_dir = Some(dir.path().to_path_buf());
    let app = spawn_app(config).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let root = no_redirects.get(app.url("/")).send().await.unwrap();
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()["location"], "/app/");
    let index = app.client.get(app.url("/app/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    assert!(index.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(index
        .text()
        .await
        .unwrap()
        .contains("<title>Roombook</title>"));
    let script = app.client.get(app.url("/app/app.js")).send().await.unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
    let missing = app
        .client
        .get(app.url("/app/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn without_web_dir_there_is_no_page() {
    let app = spawn_app(Config::for_test(SECRET)).await;
    let resp = app.client.get(app.url("/app/")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn dev_tokens_are_refused_unless_switched_on() {
    let app = spawn_app(Config::for_test(SECRET)).await;
    let resp = app
        .client
        .get(app.url("/dev/token?user=alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn dev_tokens_sign_in_a_user_or_an_admin_when_switched_on() {
    let mut config = Config::for_test(SECRET);
    config.dev_tokens = true;
    let app = spawn_app(config).await;
    let verifier = Verifier::new(&JwtConfig::with_secret(SECRET));

    let body: Value = app
        .client
        .get(app.url("/dev/token?user=alice"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alice = verifier
        .verify(body["token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(alice.user_id, "alice");
    assert_eq!(alice.email.as_deref(), Some("alice@example.com"));
    assert!(!alice.is_admin());

    let body: Value = app
        .client
        .get(app.url("/dev/token?user=root&admin=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(verifier
        .verify(body["token"].as_str().unwrap())
        .await
        .unwrap()
        .is_admin());

    for bad in [
        "/dev/token",
        "/dev/token?user=",
        "/dev/token?user=a%20b",
        "/dev/token?user=x&admin=maybe",
    ] {
        let resp = app.client.get(app.url(bad)).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
    }
}
