//! What a run measured: latency histograms (HdrHistogram, microseconds), error counts by kind,
//! HTTP call counts for availability, and completions per second.
//!
//! One `Recorder` is shared by every worker behind a mutex: a run records at most a few tens of
//! thousands of values a second, far below where the lock would show.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram holds (longer ones are clamped): ten minutes.
const MAX_MICROS: u64 = 600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(micros.clamp(1, MAX_MICROS));
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }

    /// `p50 1.2 ms  p95 3.4 ms  p99 5.6 ms  max 7.8 ms`.
    pub fn line(&self) -> String {
        if self.count == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {}  p95 {}  p99 {}  max {}  (n={})",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p95_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.max_ms),
            self.count
        )
    }
}

pub fn fmt_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// Outcome counts of HTTP calls, for availability.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpCounts {
    /// Calls made.
    pub calls: u64,
    /// Calls answered with a status below 500 (what the caller expected or a client error).
    pub answered: u64,
    /// Calls answered 5xx (including the gateway's 502/503/504 for an upstream).
    pub server_errors: u64,
    /// Calls that got no HTTP answer: refused, reset, timed out.
    pub transport_errors: u64,
}

impl HttpCounts {
    /// Share of calls the system served (no 5xx, no transport failure), in percent.
    pub fn availability_pct(&self) -> f64 {
        pct(self.answered, self.calls)
    }
}

pub fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// How one HTTP call ended, as far as availability is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    Answered,
    ServerError,
    TransportError,
}

pub struct Recorder {
    started: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    histograms: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    http: HttpCounts,
    ok: u64,
    failed: u64,
    /// Successful completions per whole second since `started`.
    per_second: Vec<u64>,
    counters: BTreeMap<&'static str, u64>,
}

/// A copy of the figures so far.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub ok: u64,
    pub failed: u64,
    pub http: HttpCounts,
    pub errors: BTreeMap<String, u64>,
    pub histograms: BTreeMap<&'static str, Histogram<u64>>,
    pub per_second: Vec<u64>,
    pub counters: BTreeMap<&'static str, u64>,
}

impl Snapshot {
    pub fn latency(&self, name: &str) -> LatencySummary {
        self.histograms
            .get(name)
            .map(LatencySummary::of)
            .unwrap_or_default()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

impl Recorder {
    pub fn new(started: Instant) -> Self {
        Recorder {
            started,
            inner: Mutex::new(Inner {
                histograms: BTreeMap::new(),
                errors: BTreeMap::new(),
                http: HttpCounts::default(),
                ok: 0,
                failed: 0,
                per_second: Vec::new(),
                counters: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicking worker leaves plain counters behind, still worth reporting.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn latency(&self, name: &'static str, d: Duration) {
        let mut inner = self.lock();
        record(
            inner.histograms.entry(name).or_insert_with(new_histogram),
            d,
        );
    }

    pub fn http(&self, end: CallEnd) {
        let mut inner = self.lock();
        inner.http.calls += 1;
        match end {
            CallEnd::Answered => inner.http.answered += 1,
            CallEnd::ServerError => inner.http.server_errors += 1,
            CallEnd::TransportError => inner.http.transport_errors += 1,
        }
    }

    pub fn count(&self, name: &'static str, n: u64) {
        *self.lock().counters.entry(name).or_insert(0) += n;
    }

    pub fn success(&self, at: Instant) {
        let second = at.saturating_duration_since(self.started).as_secs() as usize;
        let mut inner = self.lock();
        inner.ok += 1;
        if inner.per_second.len() <= second {
            inner.per_second.resize(second + 1, 0);
        }
        inner.per_second[second] += 1;
    }

    /// A saga (or siege transaction) that failed, counted under `kind`.
    pub fn failure(&self, kind: String) {
        let mut inner = self.lock();
        inner.failed += 1;
        *inner.errors.entry(kind).or_insert(0) += 1;
    }

    /// An error that did not end the saga (a poll answered 5xx and was retried).
    pub fn error(&self, kind: String) {
        *self.lock().errors.entry(kind).or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            ok: inner.ok,
            failed: inner.failed,
            http: inner.http,
            errors: inner.errors.clone(),
            histograms: inner.histograms.clone(),
            per_second: inner.per_second.clone(),
            counters: inner.counters.clone(),
        }
    }

    /// `(ok, failed, p99 of `name`)` without copying histograms, for progress lines.
    pub fn progress(&self, name: &str) -> (u64, u64, u64, f64) {
        let inner = self.lock();
        let p99 = inner
            .histograms
            .get(name)
            .filter(|h| !h.is_empty())
            .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
            .unwrap_or(0.0);
        (inner.ok, inner.failed, inner.http.calls, p99)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        // 1 ms .. 100 ms, one sample each.
        for ms in 1..=100u64 {
            record(&mut h, Duration::from_millis(ms));
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 100);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002 + 0.001;
        assert!(close(s.p50_ms, 50.0), "{s:?}");
        assert!(close(s.p95_ms, 95.0), "{s:?}");
        assert!(close(s.p99_ms, 99.0), "{s:?}");
        assert!(close(s.max_ms, 100.0), "{s:?}");
        assert!(close(s.min_ms, 1.0), "{s:?}");
        assert!(close(s.mean_ms, 50.5), "{s:?}");
    }

    #[test]
    fn a_tail_shows_in_p99_and_max_but_not_p50() {
        let mut h = new_histogram();
        for _ in 0..980 {
            record(&mut h, Duration::from_millis(2));
        }
        for _ in 0..20 {
            record(&mut h, Duration::from_millis(400));
        }
        let s = LatencySummary::of(&h);
        assert!((s.p50_ms - 2.0).abs() < 0.01, "{s:?}");
        assert!((s.p95_ms - 2.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 400.0).abs() < 0.5, "{s:?}");
        assert!((s.max_ms - 400.0).abs() < 0.5, "{s:?}");
    }

    #[test]
    fn an_empty_histogram_reports_zeroes_and_says_so() {
        let s = LatencySummary::of(&new_histogram());
        assert_eq!(s, LatencySummary::default());
        assert_eq!(s.line(), "no samples");
    }

    #[test]
    fn extreme_latencies_are_clamped_not_lost() {
        let mut h = new_histogram();
        record(&mut h, Duration::ZERO);
        record(&mut h, Duration::from_secs(100_000));
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 2);
        assert!(s.max_ms >= 599_000.0);
    }

    #[test]
    fn availability_counts_answers_not_failures() {
        let r = Recorder::new(Instant::now());
        for _ in 0..97 {
            r.http(CallEnd::Answered);
        }
        r.http(CallEnd::ServerError);
        r.http(CallEnd::TransportError);
        r.http(CallEnd::TransportError);
        let http = r.snapshot().http;
        assert_eq!(http.calls, 100);
        assert!((http.availability_pct() - 97.0).abs() < 1e-9);
        assert_eq!(HttpCounts::default().availability_pct(), 100.0);
    }

    #[test]
    fn successes_are_bucketed_by_second_and_errors_by_kind() {
        let t0 = Instant::now();
        let r = Recorder::new(t0);
        r.success(t0);
        r.success(t0 + Duration::from_millis(2500));
        r.success(t0 + Duration::from_millis(2999));
        r.failure("create: HTTP 409 booking-overlap".into());
        r.failure("create: HTTP 409 booking-overlap".into());
        r.failure("terminal: timeout".into());
        let s = r.snapshot();
        assert_eq!(s.per_second, vec![1, 0, 2]);
        assert_eq!((s.ok, s.failed), (3, 3));
        assert_eq!(s.errors["create: HTTP 409 booking-overlap"], 2);
        assert_eq!(s.errors["terminal: timeout"], 1);
    }

    #[test]
    fn milliseconds_are_printed_with_sensible_precision() {
        assert_eq!(fmt_ms(1.234), "1.23 ms");
        assert_eq!(fmt_ms(12.34), "12.3 ms");
        assert_eq!(fmt_ms(123.4), "123 ms");
        assert_eq!(fmt_ms(12_345.0), "12.3 s");
    }
}
