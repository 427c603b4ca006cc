//! Counting errors: every error or warning a program logs is also counted, by component and
//! kind, so `/metrics` shows what the logs say.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Labels of an error: which part of the program, and what kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub component: String,
    pub kind: String,
}

/// `<prefix>_errors_total{component, kind}`.
#[derive(Clone, Debug, Default)]
pub struct ErrorCounter(Family<ErrorLabels, Counter>, Counter);

impl ErrorCounter {
    /// Counts one logged error or warning.
    pub fn count(&self, component: &str, kind: &str) {
        self.1.inc();
        self.0
            .get_or_create(&ErrorLabels {
                component: component.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Errors counted so far, of every component and kind.
    pub fn total(&self) -> u64 {
        self.1.get()
    }

    /// Registers the counter as `errors` in `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "errors",
            "Errors and warnings logged, by component and kind",
            self.0.clone(),
        );
    }
}
