//! The tower layers the gateway adds to the common ones (request id, trace, timeout, metrics;
//! see `platform::http::with_common_layers`): load shedding, compression and CORS.

use std::time::Duration;

use axum::{
    error_handling::HandleErrorLayer,
    http::{header, HeaderName, Method, StatusCode},
    response::IntoResponse,
    BoxError, Router,
};
use platform::http::{Problem, REQUEST_ID_HEADER};
use tower::{limit::GlobalConcurrencyLimitLayer, load_shed::LoadShedLayer, ServiceBuilder};
use tower_http::{
    compression::CompressionLayer,
    cors::{AllowOrigin, CorsLayer},
};

use crate::config::CorsOrigins;

/// Seconds a shed caller is told to wait: calls are short, so capacity frees up quickly.
pub const OVERLOADED_RETRY_AFTER_SECS: u64 = 1;

/// At most `max` calls of `router` at once, shared by all its routes; one more is answered 503
/// with `Retry-After` at once instead of waiting in an unbounded queue.
pub fn shed_load(router: Router, max: usize) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(overloaded))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::new(max)),
    )
}

async fn overloaded(error: BoxError) -> impl IntoResponse {
    // The routes cannot fail, so the only error here is the load shedder's.
    tracing::warn!(%error, "shedding load: too many calls in progress");
    metrics::counter!("gateway_requests_shed_total").increment(1);
    let mut problem = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "Too busy",
        "the gateway is serving as many calls as it can; try again shortly",
    );
    problem.retry_after = Some(OVERLOADED_RETRY_AFTER_SECS);
    problem
}

/// gzip for callers that accept it (small bodies, images and event streams excepted).
pub fn compression() -> CompressionLayer {
    CompressionLayer::new()
}

/// CORS for the configured origins, or none: then browsers only call from the gateway's own
/// origin. Preflights are answered here, without a token.
pub fn cors(origins: &CorsOrigins) -> Option<CorsLayer> {
    let allow_origin = match origins {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static(REQUEST_ID_HEADER),
                HeaderName::from_static(platform::trace::HEADER),
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                HeaderName::from_static(REQUEST_ID_HEADER),
                HeaderName::from_static("idempotent-replayed"),
            ])
            .max_age(Duration::from_secs(600)),
    )
}
