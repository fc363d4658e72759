//! Prometheus metrics for every service, served at `/metrics`.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `roombook_http_requests_total` | service, method, route, status | requests answered |
//! | `roombook_http_request_duration_seconds` | service, method, route | latency histogram |
//! | `roombook_messages_consumed_total` | consumer, type, outcome (applied, duplicate, retried, parked) | deliveries handled |
//! | `roombook_consumer_batch_messages` | consumer | messages applied per transaction (histogram) |
//! | `roombook_messages_redelivered_total` | consumer, type | deliveries after the first |
//! | `roombook_messages_dead_lettered_total` | consumer, type | messages parked |
//! | `roombook_messages_published_total` | service, type | outbox rows acknowledged by JetStream |
//! | `roombook_outbox_backlog` | service | outbox rows not yet published |
//! | `roombook_sqlite_log_frames` | database | frames in the SQLite write-ahead log at its last checkpoint |
//! | `roombook_sqlite_log_restarts_total` | database | checkpoints that made the log start over |
//! | `roombook_sqlite_grouped_writes` | database | requests' writes sharing one SQLite transaction (histogram; see `Db::write`) |
//! | `roombook_sagas` | state | sagas in each state before settling (orchestrator) |
//! | `roombook_saga_duration_seconds` | state | booking to settled state (orchestrator); its `_count` counts the sagas settled |
//!
//! Labels carry message types (`unknown` for a subject naming none of ours), never booking ids,
//! so the series stay few.

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::{IntoResponse, Response},
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The process-wide registry (installed on first use; one per process, shared by the services a
/// test runs in-process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    60.0, 600.0, 3600.0, 86400.0,
                ],
            )
            .expect("valid buckets")
            .set_buckets_for_metric(
                Matcher::Full("roombook_consumer_batch_messages".into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            )
            .expect("valid buckets")
            .set_buckets_for_metric(
                Matcher::Full("roombook_sqlite_grouped_writes".into()),
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            )
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed");
        }
        handle
    })
}

/// `GET /metrics` in the Prometheus text format.
pub async fn render() -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        handle().render(),
    )
        .into_response()
}

/// Middleware counting and timing every request by its route template (not its raw path).
pub async fn track_http(service: &'static str, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("roombook_http_requests_total", "service" => service, "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("roombook_http_request_duration_seconds", "service" => service, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

pub fn consumed(consumer: &'static str, kind: &str, outcome: &'static str) {
    metrics::counter!("roombook_messages_consumed_total", "consumer" => consumer, "type" => kind.to_string(), "outcome" => outcome).increment(1);
}

pub fn batch(consumer: &'static str, messages: usize) {
    metrics::histogram!("roombook_consumer_batch_messages", "consumer" => consumer)
        .record(messages as f64);
}

pub fn redelivered(consumer: &'static str, kind: &'static str) {
    metrics::counter!("roombook_messages_redelivered_total", "consumer" => consumer, "type" => kind).increment(1);
}

pub fn dead_lettered(consumer: &'static str, kind: &'static str) {
    metrics::counter!("roombook_messages_dead_lettered_total", "consumer" => consumer, "type" => kind).increment(1);
}

pub fn published(service: &'static str, kind: &str) {
    metrics::counter!("roombook_messages_published_total", "service" => service, "type" => kind.to_string()).increment(1);
}

pub fn outbox_backlog(service: &'static str, rows: i64) {
    metrics::gauge!("roombook_outbox_backlog", "service" => service).set(rows as f64);
}

/// Frames in a SQLite database's write-ahead log (`database`: its file name) when checkpointed.
pub fn sqlite_log_frames(database: &str, frames: i64) {
    metrics::gauge!("roombook_sqlite_log_frames", "database" => database.to_string())
        .set(frames as f64);
}

pub fn grouped_writes(database: &str, writes: usize) {
    metrics::histogram!("roombook_sqlite_grouped_writes", "database" => database.to_string())
        .record(writes as f64);
}

pub fn sqlite_log_restarted(database: &str) {
    metrics::counter!("roombook_sqlite_log_restarts_total", "database" => database.to_string())
        .increment(1);
}
