//! The server's counters, gauges and histograms, rendered in Prometheus' text format
//! (`GET /metrics`).

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A cumulative histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    inner: Mutex<(Vec<u64>, u64, f64)>,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if h.0.is_empty() {
            h.0 = vec![0; BUCKETS.len()];
        }
        for (count, &le) in h.0.iter_mut().zip(BUCKETS.iter()) {
            if s <= le {
                *count += 1;
            }
        }
        h.1 += 1;
        h.2 += s;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let count = h.0.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.1);
        let _ = writeln!(out, "{name}_sum {}", h.2);
        let _ = writeln!(out, "{name}_count {}", h.1);
    }
}

/// Everything `/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// HTTP requests received on the generation endpoints.
    pub requests: AtomicU64,
    /// Requests rejected with a 4xx (bad input, limits) or 429 (queue full).
    pub rejected: AtomicU64,
    /// Requests being served (queued or in the batch).
    pub in_flight: AtomicI64,
    /// Requests waiting for the engine.
    pub queued: AtomicI64,
    /// Rows in the running decode batch.
    pub batch_rows: AtomicI64,
    /// Positions held per row by the batch's KV cache (its longest sequence plus padding).
    pub cache_positions: AtomicI64,
    /// The most positions the batch's KV cache has held since start.
    pub cache_positions_max: AtomicI64,
    /// Times the batch cache dropped the padding between its rows' positions.
    pub compactions: AtomicU64,
    /// Generated tokens.
    pub tokens: AtomicU64,
    /// Completed requests.
    pub completed: AtomicU64,
    /// Requests whose client went away (cancelled in the engine).
    pub cancelled: AtomicU64,
    /// Requests that failed in the engine.
    pub failed: AtomicU64,
    /// Decode steps.
    pub steps: AtomicU64,
    /// Rows decoded over all steps (mean batch = rows / steps).
    pub step_rows: AtomicU64,
    /// Time to first token.
    pub ttft: Histogram,
    /// Time between two tokens of a request.
    pub token_latency: Histogram,
}

impl Metrics {
    pub(crate) fn observe_step(&self, rows: usize) {
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.step_rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    pub(crate) fn observe_ttft(&self, d: Duration) {
        self.ttft.observe(d);
    }

    pub(crate) fn observe_token_latency(&self, d: Duration) {
        self.token_latency.observe(d);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let u = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        let i = |a: &AtomicI64| a.load(Ordering::Relaxed).to_string();
        metric(
            "glm_requests_total",
            "counter",
            "Generation requests received.",
            u(&self.requests),
        );
        metric(
            "glm_requests_rejected_total",
            "counter",
            "Requests rejected (4xx, 429).",
            u(&self.rejected),
        );
        metric(
            "glm_requests_completed_total",
            "counter",
            "Requests completed.",
            u(&self.completed),
        );
        metric(
            "glm_requests_cancelled_total",
            "counter",
            "Requests cancelled by their client.",
            u(&self.cancelled),
        );
        metric(
            "glm_requests_failed_total",
            "counter",
            "Requests failed in the engine.",
            u(&self.failed),
        );
        metric(
            "glm_requests_in_flight",
            "gauge",
            "Requests queued or being generated.",
            i(&self.in_flight),
        );
        metric(
            "glm_queue_depth",
            "gauge",
            "Requests waiting for the engine.",
            i(&self.queued),
        );
        metric(
            "glm_batch_rows",
            "gauge",
            "Rows in the running decode batch.",
            i(&self.batch_rows),
        );
        metric(
            "glm_batch_cache_positions",
            "gauge",
            "Positions per row in the batch's KV cache.",
            i(&self.cache_positions),
        );
        metric(
            "glm_batch_cache_positions_max",
            "gauge",
            "Most positions per row the batch's KV cache has held.",
            i(&self.cache_positions_max),
        );
        metric(
            "glm_batch_cache_compactions_total",
            "counter",
            "Times the batch cache dropped the padding between its rows' positions.",
            u(&self.compactions),
        );
        metric(
            "glm_tokens_generated_total",
            "counter",
            "Tokens generated.",
            u(&self.tokens),
        );
        metric(
            "glm_decode_steps_total",
            "counter",
            "Batched decode steps.",
            u(&self.steps),
        );
        metric(
            "glm_decode_step_rows_total",
            "counter",
            "Rows over all decode steps.",
            u(&self.step_rows),
        );
        self.ttft.render(
            &mut out,
            "glm_time_to_first_token_seconds",
            "Time to first token.",
        );
        self.token_latency.render(
            &mut out,
            "glm_token_latency_seconds",
            "Time between two tokens of a request.",
        );
        out
    }
}
