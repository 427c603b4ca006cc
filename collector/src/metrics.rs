//! The collector's own figures, served at `/metrics` in the Prometheus text format.
//!
//! Every error or warning the collector logs increments `tributary_collector_errors_total`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tributary_common::errors::ErrorCounter;

/// Labels of a quarantined record: the rule (or `time`, `fields`, `agent`, `line_protocol`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Labels of an HTTP request: route and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: String,
}

/// Labels of an ingest request's outcome (its HTTP status).
/// Labels of an export's figures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExportLabels {
    pub export: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: String,
}

pub struct Metrics {
    registry: Registry,
    /// Batch requests by answer status.
    pub batches: Family<StatusLabels, Counter>,
    /// Request body bytes received (as sent, compressed).
    pub bytes_received: Counter,
    /// Points newly stored.
    pub points_stored: Counter,
    /// Points skipped because their sequence was at or below the mark (retries).
    pub points_duplicate: Counter,
    /// Rejected payloads from agents stored in the quarantine.
    pub rejects_stored: Counter,
    /// Storage transactions committed.
    pub commits: Counter,
    /// Time per storage transaction.
    pub commit_seconds: Histogram,
    /// Points received (in batches and line protocol), before deduplication and cleaning.
    pub points_received: Counter,
    /// Records put in the quarantine, by reason.
    pub quarantine: Family<ReasonLabels, Counter>,
    /// Batches whose timestamps were shifted by the agent's clock skew.
    pub clock_corrected_batches: Counter,
    /// Time spent folding a transaction's values into the rollups (rollups are built in the
    /// transaction that stores the points, so this is their lag behind the raw data).
    pub rollup_seconds: Histogram,
    /// Rollup windows written.
    pub rollup_windows: Counter,
    /// Rollup windows read back from disk to merge late points (or after a cold start).
    pub rollup_late_windows: Counter,
    /// Chunks of raw values written as new rows.
    pub chunks_written: Counter,
    /// Runs of raw values appended to a series' newest chunk.
    pub chunks_appended: Counter,
    /// Checkpoints that restarted the WAL (it had grown past its bound).
    pub wal_restarts: Counter,
    /// Configuration reloads applied (SIGHUP); refused ones count as errors.
    pub reloads: Counter,
    /// Line protocol lines received.
    pub lines_received: Counter,
    /// HTTP request latency by route, method and status.
    pub requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// Rows deleted by retention, by kind.
    pub retention_deleted: Family<ReasonLabels, Counter>,
    /// Errors and warnings logged, by component and kind.
    pub errors: ErrorCounter,
    /// Per export: samples the receiver took, samples it refused for good, values not sent
    /// yet and the age of the oldest of them.
    pub export_samples: Family<ExportLabels, Counter>,
    pub export_dropped: Family<ExportLabels, Counter>,
    pub export_lag_points: Family<ExportLabels, Gauge>,
    pub export_lag_seconds: Family<ExportLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tributary_collector");
        let batches = Family::default();
        registry.register(
            "batches",
            "Batch requests by answer status",
            batches.clone(),
        );
        let bytes_received = Counter::default();
        registry.register(
            "received_bytes",
            "Request body bytes received, as sent",
            bytes_received.clone(),
        );
        let points_stored = Counter::default();
        registry.register(
            "points_stored",
            "Points newly stored",
            points_stored.clone(),
        );
        let points_duplicate = Counter::default();
        registry.register(
            "points_duplicate",
            "Points skipped as already stored (retries)",
            points_duplicate.clone(),
        );
        let rejects_stored = Counter::default();
        registry.register(
            "rejects_stored",
            "Payloads agents could not decode, stored in the quarantine",
            rejects_stored.clone(),
        );
        let commits = Counter::default();
        registry.register("commits", "Storage transactions committed", commits.clone());
        let commit_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "commit_seconds",
            "Time per storage transaction",
            commit_seconds.clone(),
        );
        let points_received = Counter::default();
        registry.register(
            "points_received",
            "Points received in batches and line protocol, before deduplication and cleaning",
            points_received.clone(),
        );
        let quarantine = Family::default();
        registry.register(
            "quarantined",
            "Records put in the quarantine, by reason (rule name, time, agent, line_protocol)",
            quarantine.clone(),
        );
        let clock_corrected_batches = Counter::default();
        registry.register(
            "clock_corrected_batches",
            "Batches whose timestamps were shifted by their agent's clock skew",
            clock_corrected_batches.clone(),
        );
        let rollup_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "rollup_lag_seconds",
            "Time from storing a transaction's points to its rollups being written (same transaction)",
            rollup_seconds.clone(),
        );
        let rollup_windows = Counter::default();
        registry.register(
            "rollup_windows_written",
            "Rollup windows written",
            rollup_windows.clone(),
        );
        let rollup_late_windows = Counter::default();
        registry.register(
            "rollup_windows_merged_from_disk",
            "Rollup windows read back to fold in late points",
            rollup_late_windows.clone(),
        );
        let chunks_written = Counter::default();
        registry.register(
            "chunks_written",
            "Chunks of raw values written as new rows",
            chunks_written.clone(),
        );
        let chunks_appended = Counter::default();
        registry.register(
            "chunks_appended",
            "Small runs of raw values appended to their series' newest chunk",
            chunks_appended.clone(),
        );
        let wal_restarts = Counter::default();
        registry.register(
            "wal_restarts",
            "Checkpoints that restarted the WAL after it grew past its bound",
            wal_restarts.clone(),
        );
        let reloads = Counter::default();
        registry.register(
            "config_reloads",
            "Configuration reloads applied (SIGHUP)",
            reloads.clone(),
        );
        let lines_received = Counter::default();
        registry.register(
            "lines_received",
            "Line protocol lines received",
            lines_received.clone(),
        );
        let requests: Family<RequestLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18)));
        registry.register(
            "request_seconds",
            "HTTP request latency by route, method and status",
            requests.clone(),
        );
        let retention_deleted = Family::default();
        registry.register(
            "retention_deleted",
            "Rows deleted by retention, by kind (points, windows, quarantine)",
            retention_deleted.clone(),
        );
        let errors = ErrorCounter::default();
        errors.register(&mut registry);
        let export_samples = Family::default();
        registry.register(
            "export_samples",
            "Samples an export's receiver took (2xx)",
            export_samples.clone(),
        );
        let export_dropped = Family::default();
        registry.register(
            "export_dropped_samples",
            "Samples an export's receiver refused for good (a 4xx other than 429)",
            export_dropped.clone(),
        );
        let export_lag_points = Family::default();
        registry.register(
            "export_lag_points",
            "Values stored and not yet sent by the export",
            export_lag_points.clone(),
        );
        let export_lag_seconds = Family::default();
        registry.register(
            "export_lag_seconds",
            "Age of the oldest value the export has not sent yet (0: none)",
            export_lag_seconds.clone(),
        );
        Metrics {
            export_samples,
            export_dropped,
            export_lag_points,
            export_lag_seconds,
            points_received,
            quarantine,
            clock_corrected_batches,
            rollup_seconds,
            rollup_windows,
            rollup_late_windows,
            chunks_written,
            chunks_appended,
            wal_restarts,
            reloads,
            lines_received,
            requests,
            retention_deleted,
            registry,
            batches,
            bytes_received,
            points_stored,
            points_duplicate,
            rejects_stored,
            commits,
            commit_seconds,
            errors,
        }
    }

    /// An export's receiver took `samples`.
    pub fn export_sent(&self, export: &str, samples: u64) {
        self.export_samples
            .get_or_create(&ExportLabels {
                export: export.to_owned(),
            })
            .inc_by(samples);
    }

    /// An export's receiver refused `samples` for good.
    pub fn export_dropped(&self, export: &str, samples: u64) {
        self.export_dropped
            .get_or_create(&ExportLabels {
                export: export.to_owned(),
            })
            .inc_by(samples);
    }

    /// An export's lag: values not sent yet and the age of the oldest.
    pub fn export_lag(&self, export: &str, points: u64, seconds: f64) {
        let labels = ExportLabels {
            export: export.to_owned(),
        };
        self.export_lag_points
            .get_or_create(&labels)
            .set(i64::try_from(points).unwrap_or(i64::MAX));
        self.export_lag_seconds.get_or_create(&labels).set(seconds);
    }

    /// Counts one logged error or warning.
    pub fn error(&self, component: &str, kind: &str) {
        self.errors.count(component, kind);
    }

    /// One line for the service manager's `STATUS=`.
    pub fn status_line(&self) -> String {
        format!(
            "{} points received, {} stored, {} duplicates skipped",
            self.points_received.get(),
            self.points_stored.get(),
            self.points_duplicate.get()
        )
    }

    /// Counts one quarantined record.
    pub fn quarantined(&self, reason: &str) {
        self.quarantine
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one batch request by its answer.
    pub fn batch_status(&self, status: u16) {
        self.batches
            .get_or_create(&StatusLabels {
                status: status.to_string(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Appends the health each agent last reported (and what the collector saw of it) to the
/// rendered registry, before its `# EOF`.
pub fn with_agent_health(
    mut text: String,
    agents: &[crate::storage::AgentRecord],
    now: i64,
) -> String {
    use std::fmt::Write;
    if let Some(body) = text.strip_suffix("# EOF\n") {
        text.truncate(body.len());
    }
    type Figure = fn(&crate::storage::AgentRecord, i64) -> Option<f64>;
    let families: [(&str, &str, &str, Figure); 8] = [
        (
            "agent_last_seen_timestamp_seconds",
            "gauge",
            "When the agent's last batch arrived (Unix seconds)",
            |a, _| a.last_seen.map(|t| t as f64 / 1e9),
        ),
        (
            "agent_backlog_points",
            "gauge",
            "Points the agent reported still buffered",
            |a, _| Some(a.backlog_points as f64),
        ),
        (
            "agent_backlog_bytes",
            "gauge",
            "Buffer bytes the agent reported still in use",
            |a, _| Some(a.backlog_bytes as f64),
        ),
        (
            "agent_oldest_unsent_age_seconds",
            "gauge",
            "Age of the oldest point the agent has not sent yet, as of its last batch",
            |a, now| {
                a.oldest_unsent_ts
                    .map(|t| now.saturating_sub(t) as f64 / 1e9)
            },
        ),
        (
            "agent_clock_skew_seconds",
            "gauge",
            "Collector receive time minus the agent's send time of its last batch",
            |a, _| a.clock_skew_ns.map(|s| s as f64 / 1e9),
        ),
        (
            "agent_points_received",
            "counter",
            "Points stored from the agent",
            |a, _| Some(a.points_received as f64),
        ),
        (
            "agent_quarantined",
            "counter",
            "Records of the agent put in the quarantine",
            |a, _| Some(a.quarantined as f64),
        ),
        (
            "agent_sequence_gaps",
            "counter",
            "Sequences that never arrived and were not explained as dropped",
            |a, _| Some(a.gaps as f64),
        ),
    ];
    for (name, kind, help, figure) in families {
        let _ = writeln!(text, "# HELP tributary_collector_{name} {help}.");
        let _ = writeln!(text, "# TYPE tributary_collector_{name} {kind}");
        let suffix = if kind == "counter" { "_total" } else { "" };
        for agent in agents {
            if let Some(value) = figure(agent, now) {
                let _ = writeln!(
                    text,
                    "tributary_collector_{name}{suffix}{{agent=\"{}\"}} {value}",
                    label(&agent.agent_id)
                );
            }
        }
    }
    text.push_str("# EOF\n");
    text
}
