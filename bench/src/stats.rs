//! Latency recording and the one-JSON-line result of a run.
//!
//! Owns the shape of what a run reports (`RunResult`, serialised as exactly one
//! line on stdout) and the histogram summary behind it. It never talks to a server.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Largest latency the histogram tracks exactly: one hour, in microseconds.
/// Longer samples are clamped to it rather than dropped.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Per-client latency histogram plus error counters; merged after the run.
#[derive(Debug, Clone)]
pub struct Recorder {
    histogram: Histogram<u64>,
    pub errors: u64,
    pub unsupported: bool,
    pub first_error: Option<String>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        // Three significant digits: 0.1% relative error, ~200 KiB per histogram.
        let histogram = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
            .expect("static histogram bounds are valid");
        Self {
            histogram,
            errors: 0,
            unsupported: false,
            first_error: None,
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
        self.histogram.saturating_record(us);
    }

    pub fn record_error(&mut self, message: String, unsupported: bool) {
        self.errors += 1;
        self.unsupported |= unsupported;
        if self.first_error.is_none() {
            self.first_error = Some(message);
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms have identical bounds, so `add` cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.errors += other.errors;
        self.unsupported |= other.unsupported;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    pub fn ops(&self) -> u64 {
        self.histogram.len()
    }

    pub fn summary(&self) -> Summary {
        Summary::of(&self.histogram)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| round3(us as f64 / 1000.0);
        Self {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: round3(h.mean() / 1000.0),
        }
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `ok`: no errors; `errors`: some requests failed; `unsupported`: the server
/// answered UNIMPLEMENTED (the workload cannot run there); `failed`: nothing succeeded.
pub fn status_of(ops: u64, errors: u64, unsupported: bool) -> &'static str {
    if unsupported {
        "unsupported"
    } else if errors == 0 {
        "ok"
    } else if ops == 0 {
        "failed"
    } else {
        "errors"
    }
}

/// The JSON line a run prints. Field names are the contract with `compare.sh`
/// and `report`; add fields, never rename them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunResult {
    pub workload: String,
    /// Identity of the measured case across systems, e.g. `put/c256`.
    pub case: String,
    /// Who was measured, e.g. `etcd` or `keel`.
    pub label: String,
    pub status: String,
    pub clients: u64,
    pub conns: u64,
    pub ops: u64,
    pub errors: u64,
    pub duration_s: f64,
    pub ops_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// CPU seconds (user + system) all `--server-pids` spent during the measured window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Workload-specific numbers (conflicts, events missing, RSS, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl RunResult {
    pub fn new(workload: &str, case: &str, label: &str, rec: &Recorder, elapsed: Duration) -> Self {
        let s = rec.summary();
        let ops = rec.ops();
        let secs = elapsed.as_secs_f64();
        let ops_per_s = if secs > 0.0 {
            round3(ops as f64 / secs)
        } else {
            0.0
        };
        Self {
            workload: workload.to_string(),
            case: case.to_string(),
            label: label.to_string(),
            status: status_of(ops, rec.errors, rec.unsupported).to_string(),
            clients: 0,
            conns: 0,
            ops,
            errors: rec.errors,
            duration_s: round3(secs),
            ops_per_s,
            p50_ms: s.p50_ms,
            p90_ms: s.p90_ms,
            p99_ms: s.p99_ms,
            max_ms: s.max_ms,
            mean_ms: s.mean_ms,
            server_cpu_s: None,
            first_error: rec.first_error.clone(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("RunResult always serialises")
    }

    /// The human summary, for stderr.
    pub fn human(&self) -> String {
        let mut s = format!(
            "[{}] {} {}: {} ops in {:.2}s = {:.1} ops/s, latency ms p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}, errors {}",
            self.label, self.case, self.status, self.ops, self.duration_s, self.ops_per_s,
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms, self.errors
        );
        if let Some(cpu) = self.server_cpu_s {
            s.push_str(&format!(", server cpu {cpu:.2}s"));
        }
        if let Some(e) = &self.first_error {
            s.push_str(&format!("\n  first error: {e}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder_1_to_100_ms() -> Recorder {
        let mut r = Recorder::new();
        for ms in 1..=100u64 {
            r.record(Duration::from_millis(ms));
        }
        r
    }

    #[test]
    fn summary_percentiles_match_uniform_samples() {
        let s = recorder_1_to_100_ms().summary();
        // hdrhistogram at 3 significant digits: within 0.1% of the exact value.
        assert!((s.p50_ms - 50.0).abs() <= 0.05, "p50 {}", s.p50_ms);
        assert!((s.p90_ms - 90.0).abs() <= 0.09, "p90 {}", s.p90_ms);
        assert!((s.p99_ms - 99.0).abs() <= 0.1, "p99 {}", s.p99_ms);
        assert!((s.max_ms - 100.0).abs() <= 0.1, "max {}", s.max_ms);
        assert!((s.mean_ms - 50.5).abs() <= 0.1, "mean {}", s.mean_ms);
    }

    #[test]
    fn merge_adds_samples_and_errors() {
        let mut a = recorder_1_to_100_ms();
        let mut b = Recorder::new();
        b.record(Duration::from_secs(2));
        b.record_error("boom".into(), false);
        a.merge(&b);
        assert_eq!(a.ops(), 101);
        assert_eq!(a.errors, 1);
        assert_eq!(a.first_error.as_deref(), Some("boom"));
        assert!((a.summary().max_ms - 2000.0).abs() < 2.0);
    }

    #[test]
    fn empty_recorder_reports_zeros_not_nan() {
        let r = RunResult::new("put", "put/c1", "x", &Recorder::new(), Duration::ZERO);
        assert_eq!(r.ops_per_s, 0.0);
        assert_eq!(r.p99_ms, 0.0);
        assert_eq!(r.status, "ok");
    }

    #[test]
    fn status_prefers_unsupported_then_failed() {
        assert_eq!(status_of(10, 0, false), "ok");
        assert_eq!(status_of(10, 1, false), "errors");
        assert_eq!(status_of(0, 5, false), "failed");
        assert_eq!(status_of(0, 5, true), "unsupported");
    }

    #[test]
    fn json_line_is_one_flat_object_with_contract_fields() {
        let mut rec = recorder_1_to_100_ms();
        rec.record_error("deadline".into(), false);
        let mut r = RunResult::new("put", "put/c16", "keel", &rec, Duration::from_secs(2))
            .with("conflicts", 3);
        r.clients = 16;
        r.server_cpu_s = Some(1.5);
        let line = r.json_line();
        assert!(!line.contains('\n'), "must be a single line");
        let v: Value = serde_json::from_str(&line).unwrap();
        let o = v.as_object().unwrap();
        for key in [
            "workload",
            "case",
            "label",
            "status",
            "clients",
            "conns",
            "ops",
            "errors",
            "duration_s",
            "ops_per_s",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
            "mean_ms",
            "server_cpu_s",
            "first_error",
        ] {
            assert!(o.contains_key(key), "missing {key} in {line}");
        }
        assert_eq!(o["workload"], "put");
        assert_eq!(o["clients"], 16);
        assert_eq!(o["ops"], 100);
        assert_eq!(o["ops_per_s"], 50.0);
        assert_eq!(o["status"], "errors");
        // Extras are flattened to the top level, not nested.
        assert_eq!(o["conflicts"], 3);
        let back: RunResult = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }
}
