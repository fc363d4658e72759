//! The siege-style availability run, like the seed's load test: C clients, each sending
//! `POST /bookings` (a distinct slot every time) back to back for D seconds.
//!
//! Reported as siege does — transactions, availability, elapsed time, data transferred,
//! response time, transaction rate, throughput, concurrency, successful / failed transactions,
//! longest / shortest — plus percentiles and the share of calls answered 201. In siege's terms
//! a *failed* transaction is a socket failure (refused, reset, timed out) and availability is
//! answered / attempted; a 4xx/5xx answer is a transaction but not a successful one.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::{
    api::{Api, Failure},
    slots::{rfc3339, SlotPlan},
    stats::{fmt_ms, pct, LatencySummary, Recorder},
    tokens::Tokens,
};

pub struct SiegeConfig {
    pub clients: usize,
    pub duration: Duration,
    pub request_timeout: Duration,
    pub progress_every: Duration,
}

pub const RESPONSE: &str = "response";

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SiegeFigures {
    /// Calls that got an HTTP answer (siege's "transactions").
    pub transactions: u64,
    /// Answered / attempted, in percent (siege's definition).
    pub availability_pct: f64,
    /// Answered 201 / attempted, in percent: every booking made.
    pub created_pct: f64,
    pub elapsed_secs: f64,
    pub data_transferred_mb: f64,
    pub response_time_secs: f64,
    pub transaction_rate: f64,
    pub throughput_mb_per_sec: f64,
    /// Sum of response times over elapsed time: how many calls were open on average.
    pub concurrency: f64,
    /// Answers below 400.
    pub successful_transactions: u64,
    /// Calls with no HTTP answer (socket failures, timeouts).
    pub failed_transactions: u64,
    /// Answers 400 and above.
    pub error_answers: u64,
    pub longest_transaction_secs: f64,
    pub shortest_transaction_secs: f64,
    pub latency_ms: LatencySummary,
}

pub struct Ctx {
    pub api: Api,
    pub stats: Arc<Recorder>,
    pub tokens: Tokens,
    pub plan: SlotPlan,
    pub cfg: SiegeConfig,
}

pub async fn run(ctx: Arc<Ctx>, started: Instant) -> SiegeFigures {
    let stop_at = started + ctx.cfg.duration;
    let hard_stop = stop_at + ctx.cfg.request_timeout + Duration::from_secs(5);
    let next = Arc::new(AtomicU64::new(0));
    let progress = tokio::spawn(progress_lines(ctx.clone(), started));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..ctx.cfg.clients.max(1) {
        let ctx = ctx.clone();
        let next = next.clone();
        clients.spawn(async move {
            while Instant::now() < stop_at {
                let i = next.fetch_add(1, Ordering::Relaxed);
                one_post(&ctx, i).await;
            }
        });
    }
    let all_done = async { while clients.join_next().await.is_some() {} };
    if tokio::time::timeout_at(hard_stop, all_done).await.is_err() {
        clients.abort_all();
    }
    progress.abort();
    figures(&ctx.stats, Instant::now() - started)
}

async fn one_post(ctx: &Ctx, i: u64) {
    let slot = ctx.plan.slot(i);
    let token = &ctx.tokens.users[(i % ctx.tokens.users.len() as u64) as usize];
    let body = json!({
        "roomId": slot.room,
        "useStartDtm": rfc3339(slot.start),
        "useEndDtm": rfc3339(slot.end),
    });
    let t0 = Instant::now();
    let result = ctx
        .api
        .send(Method::POST, "/bookings", token, Some(&body))
        .await;
    let took = t0.elapsed();
    let stats = &ctx.stats;
    match result {
        Ok(reply) => {
            stats.latency(RESPONSE, took);
            stats.count("bytes", reply.body.len() as u64);
            stats.count("responseMicros", took.as_micros() as u64);
            if reply.status == StatusCode::CREATED {
                stats.success(Instant::now().into_std());
            } else {
                let kind = Failure::from_reply(&reply).kind("POST /bookings");
                if reply.status.as_u16() < 400 {
                    stats.count("otherBelow400", 1);
                    stats.error(kind);
                } else {
                    stats.failure(kind);
                }
            }
        }
        Err(f) => {
            stats.count("responseMicros", took.as_micros() as u64);
            stats.failure(f.kind("POST /bookings"));
        }
    }
}

async fn progress_lines(ctx: Arc<Ctx>, started: Instant) {
    let every = ctx.cfg.progress_every.max(Duration::from_millis(200));
    let mut tick = tokio::time::interval_at(started + every, every);
    let mut last = (0u64, started);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let (created, failed, calls, p99) = ctx.stats.progress(RESPONSE);
        eprintln!(
            "[{:>6.1}s] siege: {calls} transactions ({:.1}/s) created {created} not created {failed} | p99 {}",
            (now - started).as_secs_f64(),
            (calls - last.0) as f64 / (now - last.1).as_secs_f64(),
            fmt_ms(p99),
        );
        last = (calls, now);
    }
}

pub fn figures(stats: &Recorder, elapsed: Duration) -> SiegeFigures {
    let s = stats.snapshot();
    let elapsed_secs = elapsed.as_secs_f64().max(1e-9);
    let latency = s.latency(RESPONSE);
    let transactions = s.http.answered + s.http.server_errors;
    let error_answers = s.failed - s.http.transport_errors.min(s.failed);
    let mb = s.counter("bytes") as f64 / (1024.0 * 1024.0);
    SiegeFigures {
        transactions,
        availability_pct: pct(transactions, s.http.calls),
        created_pct: pct(s.ok, s.http.calls),
        elapsed_secs,
        data_transferred_mb: mb,
        response_time_secs: if transactions > 0 {
            latency.mean_ms / 1000.0
        } else {
            0.0
        },
        transaction_rate: transactions as f64 / elapsed_secs,
        throughput_mb_per_sec: mb / elapsed_secs,
        concurrency: s.counter("responseMicros") as f64 / 1e6 / elapsed_secs,
        successful_transactions: s.ok + s.counter("otherBelow400"),
        failed_transactions: s.http.transport_errors,
        error_answers,
        longest_transaction_secs: latency.max_ms / 1000.0,
        shortest_transaction_secs: latency.min_ms / 1000.0,
        latency_ms: latency,
    }
}

/// siege's closing block, then the extra lines.
pub fn summary(f: &SiegeFigures) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        out.push_str(&format!("{label:<26}{value:>14}\n"));
    };
    line("Transactions:", format!("{} hits", f.transactions));
    line("Availability:", format!("{:.2} %", f.availability_pct));
    line("Elapsed time:", format!("{:.2} secs", f.elapsed_secs));
    line(
        "Data transferred:",
        format!("{:.2} MB", f.data_transferred_mb),
    );
    line(
        "Response time:",
        format!("{:.3} secs", f.response_time_secs),
    );
    line(
        "Transaction rate:",
        format!("{:.2} trans/sec", f.transaction_rate),
    );
    line(
        "Throughput:",
        format!("{:.2} MB/sec", f.throughput_mb_per_sec),
    );
    line("Concurrency:", format!("{:.2}", f.concurrency));
    line(
        "Successful transactions:",
        f.successful_transactions.to_string(),
    );
    line("Failed transactions:", f.failed_transactions.to_string());
    line(
        "Longest transaction:",
        format!("{:.3}", f.longest_transaction_secs),
    );
    line(
        "Shortest transaction:",
        format!("{:.3}", f.shortest_transaction_secs),
    );
    line("Answered 201 Created:", format!("{:.2} %", f.created_pct));
    line("Answered 4xx/5xx:", f.error_answers.to_string());
    out.push_str(&format!(
        "Response time percentiles: {}\n",
        f.latency_ms.line()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::CallEnd;

    #[test]
    fn figures_follow_siege_definitions() {
        let t0 = std::time::Instant::now();
        let r = Recorder::new(t0);
        // 8 created, 1 answered 503, 1 connection reset.
        for _ in 0..8 {
            r.http(CallEnd::Answered);
            r.latency(RESPONSE, Duration::from_millis(100));
            r.count("responseMicros", 100_000);
            r.count("bytes", 1024 * 1024 / 8);
            r.success(t0);
        }
        r.http(CallEnd::ServerError);
        r.latency(RESPONSE, Duration::from_millis(300));
        r.count("responseMicros", 300_000);
        r.failure("POST /bookings: HTTP 503".into());
        r.http(CallEnd::TransportError);
        r.failure("POST /bookings: cannot connect".into());

        let f = figures(&r, Duration::from_secs(2));
        assert_eq!(f.transactions, 9);
        assert!((f.availability_pct - 90.0).abs() < 1e-9);
        assert!((f.created_pct - 80.0).abs() < 1e-9);
        assert_eq!(f.successful_transactions, 8);
        assert_eq!(f.failed_transactions, 1);
        assert_eq!(f.error_answers, 1);
        assert!((f.transaction_rate - 4.5).abs() < 1e-9);
        assert!((f.data_transferred_mb - 1.0).abs() < 1e-9);
        assert!((f.concurrency - 0.55).abs() < 1e-9);
        assert!((f.longest_transaction_secs - 0.3).abs() < 0.001);
        assert!(summary(&f).contains("Availability:"));
    }
}
