//! Prometheus metrics, kept in memory and rendered in the text exposition format (version 0.0.4).
//!
//! The set is small and fixed, so the format is written by hand rather than through a registry.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds of the windows-per-model-call histogram.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Upper bounds of the padded-tokens-per-model-call histogram.
const BATCH_TOKENS_BUCKETS: &[f64] = &[
    64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];

/// A cumulative histogram with fixed buckets.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// A gauge that can go up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one (never below zero).
    pub fn dec(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct Histograms {
    request: Histogram,
    queue: Histogram,
    inference: Histogram,
    batch_size: Histogram,
    batch_tokens: Histogram,
}

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    /// Finished HTTP requests by (endpoint, status code).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    histograms: Mutex<Histograms>,
    /// Question-answering requests being handled now.
    pub in_flight: Gauge,
    /// Inputs (question + context) waiting for or inside a model call.
    pub queue_size: Gauge,
    /// Inputs dropped from the queue because their client went away.
    cancelled: AtomicU64,
    /// Model calls made.
    batches: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            histograms: Mutex::new(Histograms {
                request: Histogram::new(LATENCY_BUCKETS),
                queue: Histogram::new(LATENCY_BUCKETS),
                inference: Histogram::new(LATENCY_BUCKETS),
                batch_size: Histogram::new(BATCH_SIZE_BUCKETS),
                batch_tokens: Histogram::new(BATCH_TOKENS_BUCKETS),
            }),
            in_flight: Gauge::default(),
            queue_size: Gauge::default(),
            cancelled: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    fn histograms(&self) -> std::sync::MutexGuard<'_, Histograms> {
        // A panic while holding the lock leaves plain numbers behind: still usable.
        self.histograms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a finished request; `latency` is observed for question-answering endpoints.
    pub fn record_request(&self, endpoint: &'static str, status: u16, latency: Option<Duration>) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((endpoint, status))
            .or_default() += 1;
        if let Some(latency) = latency {
            self.histograms().request.observe(latency.as_secs_f64());
        }
    }

    /// Records one input's time in the queue and in model calls.
    pub fn record_input(&self, queue: Duration, inference: Duration) {
        let mut h = self.histograms();
        h.queue.observe(queue.as_secs_f64());
        h.inference.observe(inference.as_secs_f64());
    }

    /// Records one model call: its number of windows and padded tokens (windows × longest).
    pub fn record_batch(&self, windows: usize, padded_tokens: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let mut h = self.histograms();
        h.batch_size.observe(windows as f64);
        h.batch_tokens.observe(padded_tokens as f64);
    }

    /// Counts an input dropped because its client went away.
    pub fn record_cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP bertqa_requests_total HTTP requests answered, by endpoint and status code.\n",
        );
        out.push_str("# TYPE bertqa_requests_total counter\n");
        for ((endpoint, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "bertqa_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let gauges = [
            (
                "bertqa_requests_in_flight",
                "Question-answering requests being handled.",
                self.in_flight.get(),
            ),
            (
                "bertqa_queue_size",
                "Inputs waiting for or inside a model call.",
                self.queue_size.get(),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let counters = [
            (
                "bertqa_cancelled_inputs_total",
                "Inputs dropped from the queue before compute because their client went away.",
                self.cancelled.load(Ordering::Relaxed),
            ),
            (
                "bertqa_batches_total",
                "Model calls made.",
                self.batches.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let h = self.histograms();
        h.request.render(
            &mut out,
            "bertqa_request_duration_seconds",
            "Question-answering request latency, from arrival to response.",
        );
        h.queue.render(
            &mut out,
            "bertqa_queue_duration_seconds",
            "Time an input waited before its first model call.",
        );
        h.inference.render(
            &mut out,
            "bertqa_inference_duration_seconds",
            "Time from an input's first model call to its last.",
        );
        h.batch_size
            .render(&mut out, "bertqa_batch_size", "Windows per model call.");
        h.batch_tokens.render(
            &mut out,
            "bertqa_batch_tokens",
            "Padded tokens per model call (windows x longest window).",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.record_batch(1, 100);
        m.record_batch(3, 300);
        m.record_batch(1000, 70000);
        let text = m.render();
        assert!(
            text.contains("bertqa_batch_size_bucket{le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("bertqa_batch_size_bucket{le=\"2\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("bertqa_batch_size_bucket{le=\"4\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("bertqa_batch_size_bucket{le=\"512\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("bertqa_batch_size_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("bertqa_batch_size_sum 1004\n"), "{text}");
        assert!(text.contains("bertqa_batch_tokens_count 3\n"), "{text}");
        assert!(text.contains("bertqa_batches_total 3\n"), "{text}");
    }

    #[test]
    fn requests_are_counted_by_endpoint_and_status() {
        let m = Metrics::default();
        m.record_request("/", 200, Some(Duration::from_millis(3)));
        m.record_request("/", 200, Some(Duration::from_millis(30)));
        m.record_request("/", 429, None);
        let text = m.render();
        assert!(text.contains("bertqa_requests_total{endpoint=\"/\",status=\"200\"} 2\n"));
        assert!(text.contains("bertqa_requests_total{endpoint=\"/\",status=\"429\"} 1\n"));
        assert!(text.contains("bertqa_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("bertqa_request_duration_seconds_count 2\n"));
    }

    #[test]
    fn gauge_never_goes_below_zero() {
        let g = Gauge::default();
        g.dec();
        g.inc();
        g.inc();
        g.dec();
        assert_eq!(g.get(), 1);
    }
}
