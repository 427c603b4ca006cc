//! The agent's own figures, in the Prometheus text format.
//!
//! Every error or warning the agent logs increments `tributary_agent_errors_total` with the
//! component and a short kind, so nothing that goes wrong is visible only in the logs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tributary_common::errors::ErrorCounter;

/// Labels naming an input.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InputLabels {
    pub input: String,
}

/// Labels naming a collector URL.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UrlLabels {
    pub url: String,
}

/// Labels of a forward attempt's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Every figure the agent keeps.
pub struct Metrics {
    registry: Registry,
    /// Messages or polls received, per input.
    pub received: Family<InputLabels, Counter>,
    /// Points committed to the buffer.
    pub points_buffered: Counter,
    /// Payloads (or parts) quarantined, per input.
    pub rejected: Family<InputLabels, Counter>,
    /// Redelivered MQTT messages recognised as already buffered, per input.
    pub redeliveries: Family<InputLabels, Counter>,
    /// Points discarded by the overflow policy.
    pub dropped: Counter,
    /// Buffer transactions committed.
    pub commits: Counter,
    /// Points in the buffer.
    pub buffer_points: Gauge,
    /// Bytes of points and rejects in the buffer.
    pub buffer_bytes: Gauge,
    /// Forward attempts by outcome (`ok`, `retry`, `unauthorized`, `too_large`, `rejected`).
    pub sends: Family<OutcomeLabels, Counter>,
    /// Points the collector confirmed.
    pub points_sent: Counter,
    /// Unix time of the last confirmed batch.
    pub last_send_success: Gauge<f64, AtomicU64>,
    /// Event time (Unix seconds) of the oldest point buffered behind the batch last sent; 0
    /// when none was.
    pub oldest_unsent: Gauge<f64, AtomicU64>,
    /// 1 while the input's MQTT connection is up.
    pub mqtt_connected: Family<InputLabels, Gauge>,
    /// MQTT inputs connected now (the sum of `mqtt_connected`, for the status line).
    mqtt_up: Gauge,
    /// Scheduled runs skipped because the previous run of the input was still busy.
    pub skipped_runs: Family<InputLabels, Counter>,
    /// Errors and warnings logged by each input (also in `errors` by component and kind).
    pub input_errors: Family<InputLabels, Counter>,
    /// Tailed files found truncated (copytruncate rotation) and read again from the start.
    pub file_truncations: Counter,
    /// Configuration reloads applied (SIGHUP); refused ones count as errors.
    pub reloads: Counter,
    /// Points recovered from a damaged buffer at start.
    pub salvaged_points: Counter,
    /// 1 for the collector URL batches go to now, 0 for the others (`forward.urls`).
    pub collector_active: Family<UrlLabels, Gauge>,
    /// Moves from one collector URL to another (failovers and returns to the first).
    pub failovers: Counter,
    /// Errors and warnings logged, by component and kind.
    pub errors: ErrorCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tributary_agent");
        let received = Family::default();
        registry.register(
            "received",
            "Messages or polls received, per input",
            received.clone(),
        );
        let points_buffered = Counter::default();
        registry.register(
            "points_buffered",
            "Points committed to the buffer",
            points_buffered.clone(),
        );
        let rejected = Family::default();
        registry.register(
            "rejected",
            "Payloads or parts of payloads quarantined",
            rejected.clone(),
        );
        let redeliveries = Family::default();
        registry.register(
            "redeliveries",
            "Redelivered MQTT messages recognised as already buffered",
            redeliveries.clone(),
        );
        let dropped = Counter::default();
        registry.register(
            "dropped",
            "Points discarded by the overflow policy",
            dropped.clone(),
        );
        let commits = Counter::default();
        registry.register("commits", "Buffer transactions committed", commits.clone());
        let buffer_points = Gauge::default();
        registry.register(
            "buffer_points",
            "Points in the buffer",
            buffer_points.clone(),
        );
        let buffer_bytes = Gauge::default();
        registry.register(
            "buffer_bytes",
            "Bytes of points and rejects in the buffer",
            buffer_bytes.clone(),
        );
        let sends = Family::default();
        registry.register("sends", "Forward attempts by outcome", sends.clone());
        let collector_active = Family::default();
        registry.register(
            "collector_active",
            "1 for the collector URL batches go to now, 0 for the other forward.urls",
            collector_active.clone(),
        );
        let failovers = Counter::default();
        registry.register(
            "failovers",
            "Moves from one collector URL to another (failovers and returns to the first)",
            failovers.clone(),
        );
        let points_sent = Counter::default();
        registry.register(
            "points_sent",
            "Points the collector confirmed",
            points_sent.clone(),
        );
        let oldest_unsent = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_unsent_timestamp_seconds",
            "Event time of the oldest point buffered behind the batch last sent (0: none)",
            oldest_unsent.clone(),
        );
        let last_send_success = Gauge::default();
        registry.register(
            "last_send_success_timestamp_seconds",
            "Unix time of the last confirmed batch",
            last_send_success.clone(),
        );
        let mqtt_connected = Family::default();
        registry.register(
            "mqtt_connected",
            "1 while the MQTT connection is up",
            mqtt_connected.clone(),
        );
        let skipped_runs = Family::default();
        registry.register(
            "skipped_runs",
            "Scheduled runs skipped because the previous run was still busy",
            skipped_runs.clone(),
        );
        let file_truncations = Counter::default();
        registry.register(
            "file_truncations",
            "Tailed files found truncated and read again from the start",
            file_truncations.clone(),
        );
        let salvaged_points = Counter::default();
        registry.register(
            "buffer_salvaged_points",
            "Points recovered from a damaged buffer at start",
            salvaged_points.clone(),
        );
        let input_errors = Family::default();
        registry.register(
            "input_errors",
            "Errors and warnings logged by each input",
            input_errors.clone(),
        );
        let reloads = Counter::default();
        registry.register(
            "config_reloads",
            "Configuration reloads applied (SIGHUP)",
            reloads.clone(),
        );
        let errors = ErrorCounter::default();
        errors.register(&mut registry);
        Metrics {
            registry,
            received,
            points_buffered,
            rejected,
            redeliveries,
            dropped,
            commits,
            buffer_points,
            buffer_bytes,
            sends,
            collector_active,
            failovers,
            points_sent,
            last_send_success,
            oldest_unsent,
            mqtt_connected,
            mqtt_up: Gauge::default(),
            skipped_runs,
            file_truncations,
            reloads,
            salvaged_points,
            input_errors,
            errors,
        }
    }

    /// Counts one logged error or warning.
    pub fn error(&self, component: &str, kind: &str) {
        self.errors.count(component, kind);
    }

    /// Records whether the MQTT input `labels` is connected.
    pub fn set_mqtt_connected(&self, labels: &InputLabels, connected: bool) {
        let now = i64::from(connected);
        let before = self.mqtt_connected.get_or_create(labels).set(now);
        self.mqtt_up.inc_by(now - before);
    }

    /// Counts one logged error or warning of the input labelled `input`.
    pub fn input_error(&self, input: &str, component: &str, kind: &str) {
        self.errors.count(component, kind);
        self.input_errors
            .get_or_create(&Metrics::input(input))
            .inc();
    }

    /// One line for the service manager's `STATUS=`: backlog and forwarding.
    pub fn status_line(&self, depth: &crate::buffer::Depth, inputs: usize) -> String {
        let last = self.last_send_success.get();
        let sent = if last > 0.0 {
            let ago = (tributary_wire::time::now_ns() as f64 / 1e9 - last).max(0.0);
            format!("last batch confirmed {ago:.0}s ago")
        } else {
            "no batch confirmed yet".to_owned()
        };
        format!(
            "{inputs} input(s), {} MQTT connected; backlog {} points ({} bytes); {} points sent; {sent}",
            self.mqtt_up.get(),
            depth.points(),
            depth.bytes(),
            self.points_sent.get()
        )
    }

    /// Counts one forward attempt.
    pub fn send_outcome(&self, outcome: &str) {
        self.sends
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// The labels of an input.
    pub fn input(name: &str) -> InputLabels {
        InputLabels {
            input: name.to_owned(),
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
