//! The collector's own figures, served at `/metrics` in the Prometheus text format.
//!
//! Every error or warning the collector logs increments `tributary_collector_errors_total`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tributary_common::errors::ErrorCounter;

/// Labels of an ingest request's outcome (its HTTP status).
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
    /// Errors and warnings logged, by component and kind.
    pub errors: ErrorCounter,
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
        let errors = ErrorCounter::default();
        errors.register(&mut registry);
        Metrics {
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

    /// Counts one logged error or warning.
    pub fn error(&self, component: &str, kind: &str) {
        self.errors.count(component, kind);
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
