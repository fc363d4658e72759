//! The saga run's figures: one serialisable report (the JSON file) and its human summary.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    jetstream::JsReport,
    procstat::CpuReport,
    stats::{pct, HttpCounts, LatencySummary},
};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunConfig {
    pub gateway: String,
    pub concurrency: usize,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub max_sagas: Option<u64>,
    pub mix: String,
    pub users: usize,
    pub rooms: usize,
    pub terminal_source: String,
    pub terminal_source_why: String,
    pub saga_timeout_secs: f64,
    pub request_timeout_secs: f64,
    pub poll_min_ms: f64,
    pub poll_max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaCounts {
    /// Sagas begun (warm-up included).
    pub started: u64,
    /// Measured sagas that settled as their path must.
    pub ok: u64,
    pub ok_by_action: BTreeMap<&'static str, u64>,
    /// Sagas that failed at any step (warm-up included).
    pub failed: u64,
    /// Successful sagas started during the warm-up (not in the rate or the latencies).
    pub warmup_ok: u64,
    /// Measured successes over the measured time.
    pub rate_per_sec: f64,
    /// Successes completed in each second of the run, from its start.
    pub per_second: Vec<u64>,
    /// Lowest and highest whole second of the steady window (measured, pipeline full).
    pub per_second_min: u64,
    pub per_second_max: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Availability {
    /// Successful sagas / finished sagas.
    pub sagas_pct: f64,
    /// HTTP calls answered without 5xx or a transport failure / calls made.
    pub http_pct: f64,
    pub http: HttpCounts,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerRatio {
    /// JetStream publishes (all streams) during the run, per finished saga.
    pub publishes_per_saga: f64,
    pub publishes_by_stream: BTreeMap<String, u64>,
    /// Saga rate × publishes per saga: the broker load the run caused.
    pub publishes_per_sec: f64,
    /// That load as a share of the raw async-ack publish rate.
    pub pct_of_async_publish_rate: Option<f64>,
    /// That load as a share of the awaited-ack (one at a time) publish rate.
    pub pct_of_awaited_publish_rate: Option<f64>,
    /// Sagas/s the broker alone would allow at each raw rate.
    pub saga_ceiling_async: Option<f64>,
    pub saga_ceiling_awaited: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaReport {
    pub kind: &'static str,
    pub label: Option<String>,
    pub started_at: String,
    pub config: RunConfig,
    pub elapsed_secs: f64,
    pub measured_secs: f64,
    pub sagas: SagaCounts,
    /// create, confirmVisible, decide, settleVisible, saga.
    pub latency_ms: BTreeMap<&'static str, LatencySummary>,
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    pub availability: Availability,
    pub polls_per_saga: BTreeMap<&'static str, f64>,
    /// Rows the live feed sent per saga, when sagas were watched through it.
    pub feed_events_per_saga: Option<f64>,
    pub abandoned: u64,
    pub jetstream: Option<JsReport>,
    pub jetstream_error: Option<String>,
    pub broker: Option<BrokerRatio>,
    pub cpu: Option<CpuReport>,
}

impl SagaReport {
    pub fn availability_of(ok: u64, failed: u64, http: HttpCounts) -> Availability {
        Availability {
            sagas_pct: pct(ok, ok + failed),
            http_pct: http.availability_pct(),
            http,
        }
    }

    pub fn summary(&self) -> String {
        let mut o = String::new();
        let c = &self.config;
        o.push_str(&format!(
            "Saga run: {} workers for {:.0}s (+{:.0}s warm-up), mix {}, {} users, {} rooms, settled via {}\n",
            c.concurrency, c.duration_secs, c.warmup_secs, c.mix, c.users, c.rooms, c.terminal_source
        ));
        let s = &self.sagas;
        o.push_str(&format!(
            "  sagas/s sustained         {:.1}  ({} ok in {:.1}s; per second min {} max {})\n",
            s.rate_per_sec, s.ok, self.measured_secs, s.per_second_min, s.per_second_max
        ));
        let by: Vec<String> = s
            .ok_by_action
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        o.push_str(&format!(
            "  sagas                     started {}  ok {} ({})  failed {}  warm-up ok {}\n",
            s.started,
            s.ok,
            by.join(", "),
            s.failed,
            s.warmup_ok
        ));
        for (name, label) in [
            ("create", "create (POST /bookings)"),
            ("saga", "whole saga"),
            ("confirmVisible", "  book → confirm seen"),
            ("decide", "  decide call"),
            ("settleVisible", "  decide → settled seen"),
        ] {
            if let Some(l) = self.latency_ms.get(name) {
                o.push_str(&format!("  {label:<26}{}\n", l.line()));
            }
        }
        let a = &self.availability;
        o.push_str(&format!(
            "  availability              sagas {:.2} %  http {:.2} %  ({} calls, {} 5xx, {} no answer)\n",
            a.sagas_pct, a.http_pct, a.http.calls, a.http.server_errors, a.http.transport_errors
        ));
        if self.errors.is_empty() {
            o.push_str("  errors                    none\n");
        } else {
            o.push_str(&format!(
                "  errors                    {} in all\n",
                self.errors_total
            ));
            for (kind, n) in &self.errors {
                o.push_str(&format!("    {n:>8}  {kind}\n"));
            }
        }
        let polls: Vec<String> = self
            .polls_per_saga
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        if !polls.is_empty() {
            o.push_str(&format!(
                "  polls per saga            {}\n",
                polls.join(", ")
            ));
        }
        if let Some(n) = self.feed_events_per_saga {
            o.push_str(&format!("  feed events per saga      {n:.1}\n"));
        }
        match (&self.jetstream, &self.jetstream_error) {
            (Some(js), _) => o.push_str(&format!(
                "  JetStream raw publish     {:.0} msg/s async acks, {:.0} msg/s awaited acks ({} B, file storage)\n",
                js.async_acks.msgs_per_sec, js.awaited_acks.msgs_per_sec, js.payload_bytes
            )),
            (None, Some(e)) => o.push_str(&format!("  JetStream raw publish     not measured: {e}\n")),
            (None, None) => {}
        }
        if let Some(b) = &self.broker {
            o.push_str(&format!(
                "  broker load               {:.1} publishes/saga → {:.0} publishes/s",
                b.publishes_per_saga, b.publishes_per_sec
            ));
            if let (Some(a), Some(w)) = (b.pct_of_async_publish_rate, b.pct_of_awaited_publish_rate)
            {
                o.push_str(&format!(
                    " = {a:.1} % of the async-ack rate, {w:.1} % of the awaited-ack rate"
                ));
            }
            o.push('\n');
            if let (Some(a), Some(w)) = (b.saga_ceiling_async, b.saga_ceiling_awaited) {
                o.push_str(&format!(
                    "  broker-only ceiling       {a:.0} sagas/s (async acks), {w:.0} sagas/s (every publish awaited in turn)\n"
                ));
            }
        }
        if let Some(cpu) = &self.cpu {
            o.push_str(&format!(
                "  {:<26}machine busy {}\n",
                format!("CPU ({} cores, {:.0} s)", cpu.cores, cpu.wall_secs),
                cpu.machine_busy_pct
                    .map_or("n/a".into(), |p| format!("{p:.0} %"))
            ));
            if let Some(other) = cpu.other_cpu_secs {
                o.push_str(&format!(
                    "    {:<14}{other:>7.1} CPU-s  (processes outside the run sharing the machine)\n",
                    "others"
                ));
            }
            let mut procs = cpu.processes.clone();
            procs.sort_by(|a, b| b.cpu_secs.total_cmp(&a.cpu_secs));
            let sagas = (self.sagas.ok + self.sagas.warmup_ok + self.sagas.failed).max(1) as f64;
            for p in procs {
                let switches = p.context_switches.map_or(String::new(), |n| {
                    format!("  {:>6.0} context switches/saga", n as f64 / sagas)
                });
                o.push_str(&format!(
                    "    {:<14}{:>7.1} CPU-s  {:>5.0} % of one core  {:>6.2} ms CPU/saga{switches}\n",
                    p.name,
                    p.cpu_secs,
                    p.pct_of_one_core,
                    p.cpu_secs * 1000.0 / sagas
                ));
            }
        }
        o
    }
}

/// `per_second` buckets fully inside `[from, to)` seconds: their min and max.
pub fn steady_min_max(per_second: &[u64], from_sec: f64, to_sec: f64) -> (u64, u64) {
    let first = from_sec.ceil() as usize;
    let last = to_sec.floor() as usize; // exclusive
    let inside: Vec<u64> = (first..last)
        .map(|k| per_second.get(k).copied().unwrap_or(0))
        .collect();
    (
        inside.iter().copied().min().unwrap_or(0),
        inside.iter().copied().max().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_window_leaves_out_partial_seconds() {
        let per = [5, 100, 110, 90, 3];
        // Measured from 0.5 s to 4.2 s: whole seconds 1, 2, 3.
        assert_eq!(steady_min_max(&per, 0.5, 4.2), (90, 110));
        assert_eq!(steady_min_max(&per, 0.0, 0.5), (0, 0));
        // Seconds with no completions count as zero.
        assert_eq!(steady_min_max(&[7], 0.0, 3.0), (0, 7));
    }

    #[test]
    fn saga_availability_is_ok_over_finished() {
        let a = SagaReport::availability_of(99, 1, HttpCounts::default());
        assert!((a.sagas_pct - 99.0).abs() < 1e-9);
        assert_eq!(a.http_pct, 100.0);
    }
}
