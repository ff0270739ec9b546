//! Prometheus metrics through the `metrics` facade, rendered by `metrics-exporter-prometheus`.
//!
//! Each [`Metrics`] owns its recorder (nothing is installed globally), so that every server, and
//! every test, counts on its own. Handles are registered once; `/metrics` renders the recorder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram, Key, KeyName, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds of the windows-per-model-call histogram.
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Upper bounds of the tokens-per-model-call histogram.
const BATCH_TOKENS_BUCKETS: &[f64] = &[
    64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];

const REQUESTS: &str = "bertqa_requests_total";
const IN_FLIGHT: &str = "bertqa_requests_in_flight";
const QUEUE_SIZE: &str = "bertqa_queue_size";
const CANCELLED: &str = "bertqa_cancelled_inputs_total";
const BATCHES: &str = "bertqa_batches_total";
const REQUEST_DURATION: &str = "bertqa_request_duration_seconds";
const QUEUE_DURATION: &str = "bertqa_queue_duration_seconds";
const INFERENCE_DURATION: &str = "bertqa_inference_duration_seconds";
const BATCH_SIZE: &str = "bertqa_batch_size";
const BATCH_TOKENS: &str = "bertqa_batch_tokens";

/// Every metric's name, buckets (histograms) and help text.
const HISTOGRAMS: [(&str, &[f64], &str); 5] = [
    (
        REQUEST_DURATION,
        LATENCY_BUCKETS,
        "Question-answering request latency, from arrival to response.",
    ),
    (
        QUEUE_DURATION,
        LATENCY_BUCKETS,
        "Time an input waited before its first model call.",
    ),
    (
        INFERENCE_DURATION,
        LATENCY_BUCKETS,
        "Time from an input's first model call to its last.",
    ),
    (BATCH_SIZE, BATCH_SIZE_BUCKETS, "Windows per model call."),
    (
        BATCH_TOKENS,
        BATCH_TOKENS_BUCKETS,
        "Tokens per model call, as the engine counts them (padded engines: windows x longest \
         window; the fast engine: the sum of window lengths).",
    ),
];
const COUNTERS: [(&str, &str); 3] = [
    (
        REQUESTS,
        "HTTP requests answered, by endpoint and status code.",
    ),
    (
        CANCELLED,
        "Inputs dropped from the queue before compute because their client went away.",
    ),
    (BATCHES, "Model calls made."),
];
const GAUGES: [(&str, &str); 2] = [
    (IN_FLIGHT, "Question-answering requests being handled."),
    (QUEUE_SIZE, "Inputs waiting for or inside a model call."),
];

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// A gauge that can go up and down, never below zero, and that can be read back.
pub struct Gauge {
    value: AtomicU64,
    exported: metrics::Gauge,
}

impl Gauge {
    fn new(exported: metrics::Gauge) -> Self {
        exported.set(0.0);
        Self {
            value: AtomicU64::new(0),
            exported,
        }
    }

    /// Adds one.
    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
        self.exported.increment(1.0);
    }

    /// Subtracts one (never below zero).
    pub fn dec(&self) {
        let decremented = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        if decremented.is_ok() {
            self.exported.decrement(1.0);
        }
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Every metric the server exports.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    request_duration: Histogram,
    queue_duration: Histogram,
    inference_duration: Histogram,
    batch_size: Histogram,
    batch_tokens: Histogram,
    cancelled: Counter,
    batches: Counter,
    /// Question-answering requests being handled now.
    pub in_flight: Gauge,
    /// Inputs (question + context) waiting for or inside a model call.
    pub queue_size: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets, _) in HISTOGRAMS {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.into()), buckets)
                .expect("the bucket lists are not empty");
        }
        let recorder = builder.build_recorder();
        for (name, _, help) in HISTOGRAMS {
            recorder.describe_histogram(KeyName::from_const_str(name), None, help.into());
        }
        for (name, help) in COUNTERS {
            recorder.describe_counter(KeyName::from_const_str(name), None, help.into());
        }
        for (name, help) in GAUGES {
            recorder.describe_gauge(KeyName::from_const_str(name), None, help.into());
        }
        let histogram = |name| recorder.register_histogram(&Key::from_static_name(name), &METADATA);
        let counter = |name| recorder.register_counter(&Key::from_static_name(name), &METADATA);
        let gauge =
            |name| Gauge::new(recorder.register_gauge(&Key::from_static_name(name), &METADATA));
        Self {
            handle: recorder.handle(),
            request_duration: histogram(REQUEST_DURATION),
            queue_duration: histogram(QUEUE_DURATION),
            inference_duration: histogram(INFERENCE_DURATION),
            batch_size: histogram(BATCH_SIZE),
            batch_tokens: histogram(BATCH_TOKENS),
            cancelled: counter(CANCELLED),
            batches: counter(BATCHES),
            in_flight: gauge(IN_FLIGHT),
            queue_size: gauge(QUEUE_SIZE),
            recorder,
        }
    }
}

impl Metrics {
    /// Counts a finished request; `latency` is observed for question-answering endpoints.
    pub fn record_request(&self, endpoint: &'static str, status: u16, latency: Option<Duration>) {
        let labels = [
            Label::from_static_parts("endpoint", endpoint),
            Label::new("status", status.to_string()),
        ];
        let key = Key::from_parts(REQUESTS, labels.to_vec());
        self.recorder.register_counter(&key, &METADATA).increment(1);
        if let Some(latency) = latency {
            self.request_duration.record(latency.as_secs_f64());
        }
    }

    /// Records one input's time in the queue and in model calls.
    pub fn record_input(&self, queue: Duration, inference: Duration) {
        self.queue_duration.record(queue.as_secs_f64());
        self.inference_duration.record(inference.as_secs_f64());
    }

    /// Records one model call: its number of windows and its cost in tokens.
    pub fn record_batch(&self, windows: usize, tokens: usize) {
        self.batches.increment(1);
        self.batch_size.record(windows as f64);
        self.batch_tokens.record(tokens as f64);
    }

    /// Counts an input dropped because its client went away.
    pub fn record_cancelled(&self) {
        self.cancelled.increment(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds the histograms' recent samples into their buckets; run it every few seconds, or
    /// samples pile up in memory between scrapes.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
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
        let m = Metrics::default();
        let g = &m.queue_size;
        g.dec();
        g.inc();
        g.inc();
        g.dec();
        assert_eq!(g.get(), 1);
        assert!(m.render().contains("\nbertqa_queue_size 1\n"));
    }

    /// The names, kinds and help texts dashboards rely on, before anything happened.
    #[test]
    fn every_metric_is_exported_with_its_kind_and_help_from_the_start() {
        let text = Metrics::default().render();
        for (name, kind) in [
            (IN_FLIGHT, "gauge"),
            (QUEUE_SIZE, "gauge"),
            (CANCELLED, "counter"),
            (BATCHES, "counter"),
            (REQUEST_DURATION, "histogram"),
            (QUEUE_DURATION, "histogram"),
            (INFERENCE_DURATION, "histogram"),
            (BATCH_SIZE, "histogram"),
            (BATCH_TOKENS, "histogram"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}: {text}");
        }
        assert!(text.contains("\nbertqa_requests_in_flight 0\n"), "{text}");
        assert!(
            text.contains("\nbertqa_cancelled_inputs_total 0\n"),
            "{text}"
        );
        assert!(
            text.contains("bertqa_queue_duration_seconds_bucket{le=\"60\"} 0\n"),
            "{text}"
        );
    }

    /// Two servers (or tests) in one process count apart.
    #[test]
    fn each_instance_counts_on_its_own() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.record_cancelled();
        assert!(a.render().contains("\nbertqa_cancelled_inputs_total 1\n"));
        assert!(b.render().contains("\nbertqa_cancelled_inputs_total 0\n"));
    }
}
