//! The web page and, for local use only, dev tokens.
//!
//! - `WEB_DIR` (the built page, `web/dist`): served at `/app/`, with `/` redirecting there. The
//!   page calls the API on the same origin, so no CORS is needed.
//! - `DEV_TOKENS=true`: `GET /dev/token?user=alice&admin=false` answers `{"token": "<JWT>"}`
//!   signed like `roombook-gateway mint-token`, so the page can offer "sign in as". Never enable
//!   it where anyone but the developer can reach the gateway: it hands out admin tokens.

use std::{path::PathBuf, time::Duration};

use axum::{
    extract::{Query, State},
    response::{IntoResponse, Redirect, Response},
    routing::get,
    Json, Router,
};
use platform::http::Problem;
use serde::Deserialize;
use serde_json::json;
use tower_http::services::ServeDir;

use crate::{auth::mint_token, config::JwtConfig};

/// How long a dev token lasts.
const DEV_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// The page's routes (if `web_dir` is set) and the dev-token route (if `dev_tokens` is set).
pub fn routes(web_dir: Option<&PathBuf>, dev_tokens: Option<&JwtConfig>) -> Router {
    let mut router = Router::new();
    if let Some(dir) = web_dir {
        router = router
            .route("/", get(|| async { Redirect::temporary("/app/") }))
            .nest_service(
                "/app",
                ServeDir::new(dir)
                    .append_index_html_on_directories(true)
                    .not_found_service(get(|| async {
                        Problem::not_found("no such page").into_response()
                    })),
            );
    }
    if let Some(jwt) = dev_tokens {
        router = router.route("/dev/token", get(dev_token).with_state(jwt.clone()));
    }
    router
}

#[derive(Deserialize)]
struct DevTokenQuery {
    user: String,
    #[serde(default)]
    admin: bool,
}

async fn dev_token(
    State(jwt): State<JwtConfig>,
    query: Result<Query<DevTokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let valid = (1..=64).contains(&q.user.len())
        && q.user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(Problem::bad_request(
            "user must be 1 to 64 letters, digits, '.', '_' or '-'",
        ));
    }
    let roles: &[&str] = if q.admin {
        &["user", "admin"]
    } else {
        &["user"]
    };
    let email = format!("{}@example.com", q.user);
    // The configuration refuses DEV_TOKENS=true without JWT_SECRET.
    let secret = jwt.minting_secret().map_err(|e| Problem::internal(&e))?;
    let token = mint_token(
        secret,
        &jwt.issuer,
        &jwt.audience,
        &q.user,
        Some(&email),
        roles,
        DEV_TOKEN_TTL,
    );
    Ok(Json(json!({ "token": token })).into_response())
}
